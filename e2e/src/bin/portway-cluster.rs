//! `portway-cluster`: a real multi-node Kubernetes cluster on this machine, without Docker or
//! kind, for Portway's end-to-end suite (see `portway_e2e::cluster` and docs/e2e.md).
//!
//!   portway-cluster up [--variant ipv4|ipv6|dual-stack] [--name N]
//!   portway-cluster down [--name N]
//!   portway-cluster status [--name N]
//!   portway-cluster exec <node> sh -c <script>      (the suite's PORTWAY_E2E_NODE_EXEC hook)
//!   portway-cluster load [--name N] <image>...       (like `kind load docker-image`)
//!   portway-cluster kubelet stop|start <node>
//!   portway-cluster kubeconfig [--name N]
//!   portway-cluster images [--seed]                  (build the harness images; --seed: also the
//!                                                    registry mirror's nginx stand-in)

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use portway_e2e::cluster::spec::default_name;
use portway_e2e::cluster::{
    ClusterError, K8S_BIN_ENV, Result, down, images, netd, process, registry, seed, state, status,
    up,
};
use portway_e2e::kind::Variant;

const AFTER_HELP: &str = "\
Images: the nodes pull through a registry mirror that `up` starts on the bridge \
(http://10.111.0.1:5001; every node's containerd mirrors docker.io and registry.k8s.io to it). \
No registry is reachable from this machine, so `images --seed` builds stand-ins from Debian's \
packages and seeds the mirror with them: docker.io/library/nginx:latest is Debian's nginx-light \
serving its default page on port 80, not the official image. On a machine with internet the \
nodes still cannot pull (the node network is closed by design): the mirror, and `load`, are how \
the cluster gets images.";

#[derive(Parser)]
#[command(
    name = "portway-cluster",
    about = "A local multi-node Kubernetes cluster for Portway's e2e suite",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum VariantArg {
    Ipv4,
    Ipv6,
    DualStack,
}

impl From<VariantArg> for Variant {
    fn from(v: VariantArg) -> Variant {
        match v {
            VariantArg::Ipv4 => Variant::Ipv4,
            VariantArg::Ipv6 => Variant::Ipv6,
            VariantArg::DualStack => Variant::DualStack,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum KubeletAction {
    Stop,
    Start,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster from e2e/kind/<variant>.yaml.
    Up {
        #[arg(long, value_enum, default_value = "ipv4")]
        variant: VariantArg,
        /// Default: portway-e2e-<variant>.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, env = K8S_BIN_ENV)]
        k8s_bin: PathBuf,
        /// Static test programs (pause, agnhost, dns); default:
        /// <target>/x86_64-unknown-linux-musl/release.
        #[arg(long)]
        testbins: Option<PathBuf>,
        /// Rebuild the harness images even if they exist.
        #[arg(long)]
        rebuild_images: bool,
        /// Bound of each wait of `up`.
        #[arg(long, default_value_t = 180)]
        timeout_secs: u64,
    },
    /// Stop a cluster and remove everything it made; fails when something is left.
    Down {
        #[arg(long)]
        name: Option<String>,
    },
    /// Nodes, their processes and readiness.
    Status {
        #[arg(long)]
        name: Option<String>,
    },
    /// Run a command in a node's network namespace (e.g. `exec <node> sh -c 'iptables-save'`).
    Exec {
        node: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Import podman images into every node's containerd (they are used where a pod's pull policy
    /// lets the kubelet use a present image; `Always`, e.g. a `:latest` tag, pulls from the mirror).
    Load {
        #[arg(long)]
        name: Option<String>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Stop or start a node's kubelet (the node turns NotReady / Ready).
    Kubelet {
        #[arg(value_enum)]
        action: KubeletAction,
        node: String,
    },
    /// Print the admin kubeconfig's path.
    Kubeconfig {
        #[arg(long)]
        name: Option<String>,
    },
    /// Build the harness images (pause, agnhost netexec and DNS stand-ins, kube-controller-manager).
    #[command(after_help = AFTER_HELP)]
    Images {
        #[arg(long, env = K8S_BIN_ENV)]
        k8s_bin: PathBuf,
        #[arg(long)]
        testbins: Option<PathBuf>,
        /// Also build the workload stand-ins from Debian's packages (docker.io/library/nginx:latest
        /// is Debian's nginx-light on debian:bookworm-slim, not the official image) and put them in
        /// the seed store that `up` copies into every new cluster's registry mirror (and into the
        /// mirrors of clusters that are up).
        #[arg(long)]
        seed: bool,
    },
    /// The cluster's network daemon (started by `up`).
    #[command(hide = true)]
    Netd {
        #[arg(long)]
        name: String,
    },
}

fn default_testbins() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || portway_e2e::envtest::workspace_root().join("target"),
        PathBuf::from,
    );
    target.join(images::MUSL_TARGET).join("release")
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Up {
            variant,
            name,
            k8s_bin,
            testbins,
            rebuild_images,
            timeout_secs,
        } => {
            let variant = Variant::from(variant);
            let start = Instant::now();
            let opts = up::UpOptions {
                name: name.unwrap_or_else(|| default_name(variant)),
                variant,
                k8s_bin: k8s_bin.clone(),
                testbins: testbins.unwrap_or_else(default_testbins),
                rebuild_images,
                timeout: Duration::from_secs(timeout_secs),
            };
            let record = up::up(&opts).await?;
            let spec = &record.spec;
            println!(
                "portway-cluster: {} ({}) up in {:.1} s",
                spec.name,
                variant.name(),
                start.elapsed().as_secs_f64()
            );
            for v in up::versions(&k8s_bin) {
                println!("  {v}");
            }
            println!(
                "  nodes: {}",
                spec.nodes
                    .iter()
                    .map(|n| format!("{} {}", n.name, n.node_ip_arg()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let seeded = seed::stored(&seed::store());
            println!(
                "  registry mirror: {} for {}; holds {}",
                registry::base_url(registry::addr(spec)?),
                registry::MIRRORED
                    .iter()
                    .map(|(h, _)| *h)
                    .collect::<Vec<_>>()
                    .join(", "),
                if seeded.is_empty() {
                    "nothing (portway-cluster images --seed)".to_owned()
                } else {
                    format!("{} (stand-ins)", seeded.join(" "))
                }
            );
            println!("export KUBECONFIG={}", spec.admin_kubeconfig().display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { name } => {
            let record = state::find(name.as_deref())?;
            let left = down::down(&record);
            if left.is_empty() {
                println!(
                    "portway-cluster: {} is down; nothing of it is left",
                    record.spec.name
                );
                Ok(ExitCode::SUCCESS)
            } else {
                for l in &left {
                    eprintln!("portway-cluster: left behind: {l}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        Cmd::Status { name } => {
            let records = match name {
                Some(n) => vec![state::find(Some(&n))?],
                None => state::all(),
            };
            if records.is_empty() {
                println!("no local cluster");
            }
            for r in records {
                print!("{}", status::status(&r).await);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { node, command } => {
            let (_, n) = state::find_node(&node)?;
            let (program, args) = command
                .split_first()
                .ok_or_else(|| ClusterError::State("exec: no command".into()))?;
            let err = portway_e2e::cluster::sys::in_netns(&n.netns_path(), program, args).exec();
            Err(ClusterError::io(format!("exec in {node}"))(err))
        }
        Cmd::Load { name, images: list } => {
            let record = state::find(name.as_deref())?;
            let nodes: Vec<_> = record.spec.nodes.iter().collect();
            up::load_images(&record.spec, &list, &nodes)?;
            println!(
                "portway-cluster: loaded {} into {} nodes",
                list.join(" "),
                nodes.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kubelet { action, node } => {
            let (record, _) = state::find_node(&node)?;
            let name = format!("{node}.kubelet");
            let c = record
                .component(&name)
                .ok_or_else(|| ClusterError::State(format!("no component {name}")))?;
            match action {
                KubeletAction::Stop => process::stop(&record.spec, c, process::STOP_GRACE)?,
                KubeletAction::Start => {
                    if process::running(&record.spec, c).is_none() {
                        process::start(&record.spec, c)?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kubeconfig { name } => {
            println!(
                "{}",
                state::find(name.as_deref())?
                    .spec
                    .admin_kubeconfig()
                    .display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Images {
            k8s_bin,
            testbins,
            seed: with_seed,
        } => {
            up::ensure_images(&testbins.unwrap_or_else(default_testbins), &k8s_bin, true)?;
            if with_seed {
                let store = seed::store();
                let held = seed::seed_store(&store)?;
                println!(
                    "portway-cluster: seed store {} holds {} (stand-ins built from Debian's packages)",
                    store.display(),
                    held.join(" ")
                );
                for r in state::all() {
                    let running = r
                        .component("registry")
                        .and_then(|c| process::running(&r.spec, c));
                    if running.is_some() {
                        registry::fill_from(
                            &seed::store_registry(&store),
                            &registry::data_dir(&r.spec),
                        )?;
                        println!("portway-cluster: and in the mirror of {}", r.spec.name);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Netd { name } => {
            netd::run(state::find(Some(&name))?).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portway-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}
