//! The `portway-agent` command line: `run` (cluster or local mode), `probe`, `cleanup`, `rules`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::mpsc;

use crate::agent::{self, Agent, AgentConfig, KernelNet, Stopped};
use crate::dataplane::Dataplane;
use crate::dataplane::iptables::mode::{self, ModeChoice};
use crate::dataplane::iptables::render::{self, ChainNames, DEFAULT_PREFIX};
use crate::dataplane::iptables::{Config, IptablesDataplane, RetryPolicy, save};
use crate::handover::lookup::{ExitLookup, FileLookup, KubeLookup};
use crate::handover::{self, KeepReason};
use crate::metrics::Metrics;
use crate::net::{self, Netlink};
use crate::rules::{self, Context, is_dns_label};
use crate::source::{self, SpecState};
use crate::state::{self, StateDir};
use crate::status::{FileStatus, KubeStatus, StatusSink};

/// Portway node agent: forwards a LoadBalancer Service's host ports to the Service.
#[derive(Parser, Debug)]
#[command(name = "portway-agent", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PORTWAY_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Forward the Service's ports until SIGTERM, then leave the rules to the next agent on this
    /// node (the node is still a target) or remove every rule.
    Run(Box<RunArgs>),
    /// Exec probe: `ready` (rules applied) or `live` (watch loop alive).
    Probe(ProbeArgs),
    /// Remove Portway rules from the current network namespace (every agent's by default).
    Cleanup(CleanupArgs),
    /// Print the rules a spec gives, without touching the kernel.
    Rules(RulesArgs),
}

/// `run`: watches the Service's ServiceLoadBalancer (cluster mode), or reads it from a file
/// (local mode, `--spec-file`).
#[derive(Args, Debug)]
struct RunArgs {
    /// Namespace of the Service (cluster mode; in local mode it names the rules, default `local`).
    #[arg(long)]
    namespace: Option<String>,
    /// Name of the Service (cluster mode; in local mode default: the spec file's stem).
    #[arg(long)]
    service: Option<String>,
    /// Local mode: a ServiceLoadBalancer (object or spec) in YAML, re-read on change and SIGHUP.
    #[arg(long)]
    spec_file: Option<PathBuf>,
    /// Local mode: the Service's EndpointSlices in YAML (Host mode), re-read on change and SIGHUP.
    #[arg(long, requires = "spec_file")]
    endpoints_file: Option<PathBuf>,
    /// This node's name.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The pod's addresses (downward API `status.podIPs`, comma-separated).
    #[arg(long, env = "POD_IPS", value_delimiter = ',')]
    pod_ips: Vec<String>,
    /// The node's addresses (downward API `status.hostIPs`, comma-separated).
    #[arg(long, env = "HOST_IPS", value_delimiter = ',')]
    host_ips: Vec<String>,
    /// The pod's name (logged).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// The pod's namespace (logged).
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Serve Prometheus metrics on this address (`/metrics`, `/healthz`).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// iptables variant; `auto` detects it like Kubernetes' iptables wrapper.
    #[arg(long, value_enum, default_value = "auto")]
    iptables: ModeChoice,
    /// Directory of the probe files (`ready`, `heartbeat`) and, in local mode, `status.json`.
    #[arg(long, default_value = "/run/portway")]
    state_dir: PathBuf,
    /// Seconds between full reconciles (re-read the kernel's rules, repair drift).
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// Seconds `iptables-restore --wait` waits for the xtables lock.
    #[arg(long, default_value_t = 5)]
    xtables_wait_seconds: u32,
    /// Local mode: milliseconds between checks of the files.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
    /// Chain prefix (tests only; production chains are `PORTWAY-...`).
    #[arg(long, default_value = DEFAULT_PREFIX, hide = true)]
    chain_prefix: String,
    /// Root of the sysctl tree (tests only).
    #[arg(long, default_value = "/proc/sys", hide = true)]
    proc_sys: PathBuf,
    /// The dataplane this agent's pod was built for (the operator sets it): the kind of network
    /// namespace it runs in. Default: the dataplane of the first rules it applies.
    #[arg(long, value_enum)]
    dataplane: Option<NetnsArg>,
    /// Host dataplane: at SIGTERM, how long to keep trying to read the ServiceLoadBalancer when
    /// the API server does not answer (the rules stay if it never does).
    #[arg(long, default_value_t = 10)]
    exit_decision_seconds: u64,
    /// Host dataplane: at SIGTERM, the ServiceLoadBalancer that leaves the rules to the next
    /// agent must be read at least this long after the signal (the operator may be removing
    /// this node right then).
    #[arg(long, default_value_t = 2000)]
    handover_confirm_ms: u64,
}

/// `--dataplane`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum NetnsArg {
    Pod,
    Host,
}

impl From<NetnsArg> for portway_crds::DataplaneMode {
    fn from(a: NetnsArg) -> Self {
        match a {
            NetnsArg::Pod => Self::Pod,
            NetnsArg::Host => Self::Host,
        }
    }
}

#[derive(Args, Debug)]
struct ProbeArgs {
    #[arg(value_enum)]
    what: ProbeKind,
    #[arg(long, default_value = "/run/portway")]
    state_dir: PathBuf,
    /// `live`: the heartbeat may be at most this many seconds old.
    #[arg(long, default_value_t = 60)]
    max_age_seconds: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProbeKind {
    Ready,
    Live,
}

#[derive(Args, Debug)]
struct CleanupArgs {
    /// Only this Service's agent (with `--service`); default: every Portway agent.
    #[arg(long, requires = "service")]
    namespace: Option<String>,
    #[arg(long, requires = "namespace")]
    service: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    iptables: ModeChoice,
    #[arg(long, default_value = DEFAULT_PREFIX, hide = true)]
    chain_prefix: String,
}

#[derive(Args, Debug)]
struct RulesArgs {
    /// A ServiceLoadBalancer (object or spec) in YAML.
    #[arg(long)]
    spec_file: PathBuf,
    /// EndpointSlices in YAML (Host mode).
    #[arg(long)]
    endpoints_file: Option<PathBuf>,
    #[arg(long, default_value = "local")]
    namespace: String,
    #[arg(long, default_value = "service")]
    service: String,
    #[arg(long, default_value = "node")]
    node: String,
    /// Addresses traffic arrives on (the pod's or the node's).
    #[arg(long, value_delimiter = ',')]
    local_addresses: Vec<String>,
    /// The node's addresses (DNAT targets for `Local` in `Pod` mode).
    #[arg(long, value_delimiter = ',')]
    host_ips: Vec<String>,
}

fn parse_ips(field: &str, raw: &[String]) -> Result<Vec<IpAddr>, String> {
    raw.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|e| format!("{field}: {s:?} is not an IP address ({e})"))
        })
        .collect()
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: container logs are files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portway-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Probe(args) => probe(args),
            Command::Cleanup(args) => cleanup(args).await,
            Command::Rules(args) => print_rules(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portway-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(args: ProbeArgs) -> Result<(), String> {
    match args.what {
        ProbeKind::Ready => state::probe_ready(&args.state_dir),
        ProbeKind::Live => {
            state::probe_live(&args.state_dir, Duration::from_secs(args.max_age_seconds))
        }
    }
}

async fn cleanup(args: CleanupArgs) -> Result<(), String> {
    let detection = mode::resolve(args.iptables).await;
    let service = match (&args.namespace, &args.service) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => "-/-".to_owned(),
    };
    let mut dp = IptablesDataplane::new(Config {
        mode: detection.mode,
        prefix: args.chain_prefix.clone(),
        service,
        lock_wait_secs: 5,
        retry: RetryPolicy::default(),
    });
    let report = if args.namespace.is_some() {
        dp.cleanup().await
    } else {
        dp.cleanup_every_agent().await
    }
    .map_err(|e| e.to_string())?;
    let written: usize = report.families.iter().filter(|f| f.changed).count();
    println!(
        "removed Portway rules with iptables-{} ({} famil{} changed)",
        detection.mode,
        written,
        if written == 1 { "y" } else { "ies" }
    );
    Ok(())
}

async fn print_rules(args: RulesArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(&args.spec_file)
        .map_err(|e| format!("{}: {e}", args.spec_file.display()))?;
    let slb = match source::parse_spec_file(&text, &args.namespace, &args.service) {
        SpecState::Present(slb) => slb,
        SpecState::Unreadable { error, .. } => return Err(error),
        SpecState::Missing | SpecState::Unknown => return Err("no spec".into()),
    };
    let slices = match &args.endpoints_file {
        Some(p) => source::parse_endpoints_file(
            &std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )?,
        None => Vec::new(),
    };
    let ctx = Context {
        namespace: args.namespace.clone(),
        name: args.service.clone(),
        node_name: args.node.clone(),
        local_addresses: parse_ips("--local-addresses", &args.local_addresses)?,
        host_ips: parse_ips("--host-ips", &args.host_ips)?,
        endpoint_slices: slices,
    };
    let rules = rules::build(&slb.spec, &ctx).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&rules).map_err(|e| e.to_string())?;
    println!("{json}");
    let names = ChainNames::new(DEFAULT_PREFIX, &rules.service);
    for (family, desired) in render::desired_all(&rules, &names) {
        if let Some(batch) = render::diff(
            &save::SavedState::default(),
            &desired,
            &names.owned_prefix(),
        ) {
            println!(
                "# {} (iptables-restore --noflush input on a clean netns)",
                family.as_str()
            );
            print!("{}", batch.script);
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM"),
                _ = i.recv() => tracing::info!("SIGINT"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stopping only on ctrl-c");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Checks the agent's API permissions with SelfSubjectAccessReviews and logs each missing one.
async fn check_permissions(client: kube::Client, namespace: String) {
    let api: Api<SelfSubjectAccessReview> = Api::all(client);
    for (group, resource, subresource, verb) in crate::permissions::access_checks() {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_owned()),
                    resource: Some(resource.to_owned()),
                    subresource: subresource.map(str::to_owned),
                    verb: Some(verb.to_owned()),
                    namespace: Some(namespace.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => tracing::error!(
                group,
                resource,
                subresource,
                verb,
                namespace,
                "missing API permission; see the portway-agent ClusterRoles"
            ),
            Err(e) => {
                tracing::debug!(error = %e, "cannot check permissions");
                return;
            }
        }
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    let pod_ips = parse_ips("POD_IPS", &args.pod_ips)?;
    let host_ips = parse_ips("HOST_IPS", &args.host_ips)?;
    let local = args.spec_file.is_some();
    let (namespace, name) = match (&args.namespace, &args.service, &args.spec_file) {
        (Some(ns), Some(svc), _) => (ns.clone(), svc.clone()),
        (ns, svc, Some(file)) => {
            let stem: String = file
                .file_stem()
                .map(|s| s.to_string_lossy().to_lowercase())
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let stem = stem.trim_matches('-').to_owned();
            (
                ns.clone().unwrap_or_else(|| "local".to_owned()),
                svc.clone().unwrap_or(stem),
            )
        }
        _ => return Err("run needs --namespace and --service, or --spec-file (local mode)".into()),
    };
    for (field, value) in [("namespace", &namespace), ("service", &name)] {
        if !is_dns_label(value) {
            return Err(format!("--{field} {value:?} is not a DNS label"));
        }
    }
    if args.node.trim().is_empty() {
        return Err("the node name is empty (set NODE_NAME or --node)".into());
    }
    tracing::info!(
        service = %format!("{namespace}/{name}"),
        node = %args.node,
        pod = args.pod_name.as_deref().unwrap_or(""),
        pod_namespace = args.pod_namespace.as_deref().unwrap_or(""),
        mode = if local { "local" } else { "cluster" },
        "starting"
    );

    let state = StateDir::new(&args.state_dir);
    state
        .create()
        .map_err(|e| format!("creating {}: {e}", args.state_dir.display()))?;
    state
        .set_ready(false)
        .map_err(|e| format!("{}: {e}", args.state_dir.display()))?;

    let metrics = Arc::new(Metrics::new().map_err(|e| e.to_string())?);
    if let Some(addr) = args.metrics_addr {
        let m = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m).await {
                tracing::error!(%addr, error = %e, "metrics server failed");
            }
        });
    }

    let detection = mode::resolve(args.iptables).await;
    tracing::info!(iptables = %detection.mode, reason = %detection.reason, "iptables variant");
    let dataplane = IptablesDataplane::new(Config {
        mode: detection.mode,
        prefix: args.chain_prefix.clone(),
        service: format!("{namespace}/{name}"),
        lock_wait_secs: args.xtables_wait_seconds,
        retry: RetryPolicy::default(),
    })
    .with_seed(&detection.dumps);
    let netlink = Netlink::connect().map_err(|e| e.to_string())?;
    let net_events = match net::monitor() {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(error = %e, "no netlink notifications; address changes are seen at resync");
            None
        }
    };
    let cfg = AgentConfig {
        namespace: namespace.clone(),
        name: name.clone(),
        node: args.node.clone(),
        pod_ips,
        host_ips,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        heartbeat: Duration::from_secs(10),
        dataplane: args.dataplane.map(Into::into),
        exit: handover::Policy {
            deadline: Duration::from_secs(args.exit_decision_seconds),
            confirm: Duration::from_millis(args.handover_confirm_ms),
            ..handover::Policy::default()
        },
    };
    let net_env = KernelNet::new(netlink, args.proc_sys.clone());
    let (tx, rx) = mpsc::channel(64);
    let refresh = args.metrics_addr.is_some();

    let stopped = if let Some(spec_file) = &args.spec_file {
        source::file_source(
            spec_file.clone(),
            args.endpoints_file.clone(),
            namespace.clone(),
            name.clone(),
            Duration::from_millis(args.poll_ms.max(10)),
            tx,
        );
        let sink = FileStatus {
            path: args.state_dir.join(state::STATUS_FILE),
        };
        let lookup = FileLookup {
            path: spec_file.clone(),
        };
        run_agent(
            cfg, dataplane, sink, net_env, state, metrics, rx, net_events, lookup, refresh,
        )
        .await
    } else {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("connecting to the API server: {e}"))?;
        tokio::spawn(check_permissions(client.clone(), namespace.clone()));
        source::kube_source(client.clone(), &namespace, &name, tx);
        let lookup = KubeLookup::new(client.clone(), &namespace, &name);
        let sink = KubeStatus::new(client, &namespace, &name, &args.node);
        run_agent(
            cfg, dataplane, sink, net_env, state, metrics, rx, net_events, lookup, refresh,
        )
        .await
    };
    match stopped {
        Stopped::Kept(KeepReason::Successor) => {
            tracing::info!("stopped; the rules stay for the next agent on this node");
            Ok(())
        }
        Stopped::Kept(_) => {
            tracing::warn!(
                "stopped without knowing whether this node still serves; the rules stay"
            );
            Ok(())
        }
        Stopped::Removed(_) => {
            tracing::info!("stopped; every rule removed");
            Ok(())
        }
        Stopped::RemoveFailed(_) => Err(
            "stopped, but removing the rules failed (see the log); run `portway-agent cleanup`"
                .into(),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_agent<D: Dataplane, S: StatusSink, L: ExitLookup>(
    cfg: AgentConfig,
    dataplane: D,
    sink: S,
    net_env: KernelNet,
    state: StateDir,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<source::Update>,
    net_events: Option<futures::channel::mpsc::UnboundedReceiver<()>>,
    lookup: L,
    refresh_counters: bool,
) -> Stopped {
    let agent = Agent::new(cfg, dataplane, sink, net_env, Some(state), metrics);
    agent::run(
        agent,
        rx,
        net_events,
        shutdown_signal(),
        lookup,
        refresh_counters,
    )
    .await
}
