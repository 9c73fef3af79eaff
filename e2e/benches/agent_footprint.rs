//! `cargo bench -p portway-e2e --bench agent_footprint`: the node agent's resident memory (P8),
//! printed as
//!
//! ```text
//! P8 agent_rss_mb=<x> (goal <= 6)
//! ```
//!
//! The agent measured is the binary the image ships: `scripts/build-static.sh` (static musl,
//! cargo profile `image`) for this machine's architecture. It runs in cluster mode as in a pod: in
//! its own network namespace (its iptables-nft rules go there), against a real kube-apiserver and
//! etcd (the envtest harness, `KUBEBUILDER_ASSETS`) reached through a TCP relay into that
//! namespace, over TLS with a bearer token, for one ServiceLoadBalancer (two ports) and one
//! EndpointSlice. Its resident set (`VmRSS` of `/proc/<pid>/status`, which counts the pages of the
//! binary it touched as well as its heap and stacks) is read
//! - at start: 3 s after it reported its status entry for the first generation;
//! - after 1000 spec updates: merge patches of a port's `hostPort`, each of which the agent turns
//!   into an `iptables-restore` batch and a status write (the bench waits for the entry's
//!   `observedGeneration` after each one, so every update is handled, none coalesced).
//!
//! P8 is the larger of the two; the peak (`VmHWM`) and the split into the binary's pages
//! (`RssFile`, shared by every agent pod of the same image on a node) and anonymous memory
//! (`RssAnon`, each agent's own) are printed alongside. More binaries can be
//! measured the same way for comparison with `PORTWAY_P8_EXTRA=label=/path/to/portway-agent,...`
//! (e.g. a glibc build), printed as `P8 agent_rss_mb[label]=...` lines.
//!
//! Needs root (network namespaces, iptables), iproute2, iptables-nft and `KUBEBUILDER_ASSETS`;
//! prints one `SKIP` line with the reason otherwise.

#[path = "../../node-agent/tests/support/mod.rs"]
#[allow(dead_code, clippy::all)]
mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use portway_crds::ServiceLoadBalancer;
use portway_e2e::envtest::{self, TestEnv};
use serde_json::json;

const BENCH: &str = "agent_footprint";
const NODE: &str = "node-a";
const POD_IP: &str = "10.73.0.2";
const UPDATES: i64 = 1000;
const GOAL_MB: f64 = 6.0;

fn main() {
    if let Some(reason) = unavailable() {
        println!("SKIP {BENCH}: {reason}");
        println!("P8 agent_rss_mb=unmeasured (goal <= {GOAL_MB}): {reason}");
        return;
    }
    let image_agent = match build_image_agent() {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("{BENCH}: {e}");
            std::process::exit(1);
        }
    };
    let mut agents = vec![(String::new(), image_agent)];
    if let Ok(extra) = std::env::var("PORTWAY_P8_EXTRA") {
        for item in extra.split(',').filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((label, path)) => agents.push((label.to_owned(), PathBuf::from(path))),
                None => eprintln!("{BENCH}: ignoring PORTWAY_P8_EXTRA item {item:?} (label=path)"),
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{BENCH}: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let Some(env) = runtime.block_on(TestEnv::start_or_skip(BENCH)) else {
        println!("P8 agent_rss_mb=unmeasured (goal <= {GOAL_MB}): no API server");
        return;
    };
    for (label, bin) in agents {
        let key = if label.is_empty() {
            "agent_rss_mb".to_owned()
        } else {
            format!("agent_rss_mb[{label}]")
        };
        match runtime.block_on(measure(&env, &bin)) {
            Ok(m) => {
                let mb = |m: &Memory| {
                    format!(
                        "{:.2} MB (binary pages {:.2}, anonymous {:.2}; {} threads)",
                        m.rss_mb, m.file_mb, m.anon_mb, m.threads
                    )
                };
                println!(
                    "{BENCH}: {}: {} bytes; RSS at start {}, after {UPDATES} spec updates {}, peak {:.2} MB; {UPDATES} updates handled in {:.1} s",
                    bin.display(),
                    std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0),
                    mb(&m.start),
                    mb(&m.after),
                    m.after.hwm_mb,
                    m.updates_s
                );
                println!(
                    "P8 {key}={:.2} (goal <= {GOAL_MB})",
                    m.start.rss_mb.max(m.after.rss_mb)
                );
            }
            Err(e) => {
                eprintln!("{BENCH}: {}: {e}", bin.display());
                std::process::exit(1);
            }
        }
    }
}

/// Why this machine cannot run the bench, if it cannot.
fn unavailable() -> Option<String> {
    if let Some(reason) = support::skip_reason() {
        return Some(reason);
    }
    if !support::backends().contains(&"nft") {
        return Some("iptables-nft tools do not work here".into());
    }
    match envtest::Assets::from_env() {
        Ok(Some(_)) => None,
        Ok(None) => Some(format!(
            "{} is not set; see docs/testing.md",
            envtest::ASSETS_ENV
        )),
        Err(e) => Some(e.to_string()),
    }
}

/// `scripts/build-static.sh <this machine's arch>` into this bench's target folder: the image's
/// agent binary.
fn build_image_agent() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // <target>/<profile>/deps/<bench binary>
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", exe.display()))?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => return Err(format!("no image for {other}")),
    };
    let out = Command::new("bash")
        .arg("scripts/build-static.sh")
        .arg(arch)
        .current_dir(envtest::workspace_root())
        .env("CARGO_TARGET_DIR", target)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("scripts/build-static.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("scripts/build-static.sh {arch} failed"));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{arch} ")))
        .ok_or_else(|| format!("scripts/build-static.sh printed no folder: {stdout}"))?;
    Ok(Path::new(dir.trim()).join("portway-agent"))
}

struct Measured {
    start: Memory,
    after: Memory,
    updates_s: f64,
}

fn spec(host_port: u16) -> serde_json::Value {
    json!({
        "pool": "default",
        "dataplane": "Pod",
        "clusterIPs": ["10.96.7.7"],
        "ipFamilies": ["IPv4"],
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "hostPort": host_port},
            {"name": "dns", "protocol": "UDP", "port": 53, "hostPort": 5353},
        ],
    })
}

async fn measure(env: &TestEnv, bin: &Path) -> Result<Measured, String> {
    let client = env.client();
    let ns = env.namespace("p8").await.map_err(|e| e.to_string())?;
    let slbs: Api<ServiceLoadBalancer> = Api::namespaced(client.clone(), &ns);
    let slb: ServiceLoadBalancer = serde_json::from_value(json!({
        "apiVersion": "portway.dev/v1alpha1", "kind": "ServiceLoadBalancer",
        "metadata": {"name": "web", "namespace": ns},
        "spec": spec(20000),
    }))
    .map_err(|e| format!("ServiceLoadBalancer: {e}"))?;
    slbs.create(&PostParams::default(), &slb)
        .await
        .map_err(|e| format!("creating the ServiceLoadBalancer: {e}"))?;
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.73.1.5"], "nodeName": NODE,
                       "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .map_err(|e| format!("EndpointSlice: {e}"))?;
    Api::<EndpointSlice>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &slice)
        .await
        .map_err(|e| format!("creating the EndpointSlice: {e}"))?;

    let netns = support::Netns::new(&format!("pwf{}", std::process::id() % 100_000));
    // The pod's address, on a veth pair inside the namespace (no dummy module needed).
    netns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    netns.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "p0"]);
    netns.ip(&["link", "set", "p0", "up"]);
    netns.ip(&["link", "set", "p1", "up"]);
    let upstream = env
        .url()
        .trim_start_matches("https://")
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("API server address {}", env.url()))?;
    let relay = Relay::start(&netns.name, upstream);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let admin = std::fs::read_to_string(env.kubeconfig_path().map_err(|e| e.to_string())?)
        .map_err(|e| format!("kubeconfig: {e}"))?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        admin.replace(env.url(), &format!("https://127.0.0.1:{}", relay.port)),
    )
    .map_err(|e| format!("kubeconfig: {e}"))?;

    let log = dir.path().join("agent.log");
    let mut agent = AgentChild::start(&netns.name, bin, &kubeconfig, &ns, dir.path(), &log)?;
    let fail = |what: String, agent: &AgentChild| {
        format!(
            "{what}; agent log tail:\n{}",
            tail(&std::fs::read_to_string(&log).unwrap_or_default(), 20)
        ) + &agent.exit_note()
    };

    wait_generation(&slbs, 1, Duration::from_secs(60))
        .await
        .map_err(|e| fail(e, &agent))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start = agent.memory().map_err(|e| fail(e, &agent))?;

    let began = Instant::now();
    for i in 1..=UPDATES {
        let host_port = 20000 + (i % 100) as u16 + 1;
        slbs.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec(host_port)})),
        )
        .await
        .map_err(|e| format!("update {i}: {e}"))?;
        wait_generation(&slbs, 1 + i, Duration::from_secs(20))
            .await
            .map_err(|e| fail(format!("update {i}: {e}"), &agent))?;
    }
    let updates_s = began.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = agent.memory().map_err(|e| fail(e, &agent))?;
    agent.stop();
    Ok(Measured {
        start,
        after,
        updates_s,
    })
}

/// Waits until the agent's entry in `status.nodes` reports `generation`.
async fn wait_generation(
    slbs: &Api<ServiceLoadBalancer>,
    generation: i64,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(slb) = slbs.get_status("web").await {
            last = slb
                .status
                .as_ref()
                .and_then(|s| s.nodes.iter().find(|n| n.node == NODE))
                .and_then(|n| n.observed_generation);
            if last.is_some_and(|g| g >= generation) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!(
        "the agent did not report generation {generation} within {timeout:?} (last: {last:?})"
    ))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

struct Memory {
    rss_mb: f64,
    hwm_mb: f64,
    /// Of the RSS: the binary's pages (shared by every agent of the same image on a node).
    file_mb: f64,
    /// Of the RSS: heap, stacks and relocated data (each agent's own).
    anon_mb: f64,
    threads: u32,
}

/// The agent in cluster mode in `ns`; killed on drop.
struct AgentChild {
    child: Child,
}

impl AgentChild {
    fn start(
        ns: &str,
        bin: &Path,
        kubeconfig: &Path,
        namespace: &str,
        dir: &Path,
        log: &Path,
    ) -> Result<Self, String> {
        let logf = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let errf = logf.try_clone().map_err(|e| e.to_string())?;
        // `ip netns exec` execs the agent: the child's pid is the agent's.
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .args(["run", "--namespace", namespace, "--service", "web"])
            .args(["--node", NODE, "--pod-ips", POD_IP, "--iptables", "nft"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(errf)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        Ok(Self { child })
    }

    fn memory(&self) -> Result<Memory, String> {
        let path = format!("/proc/{}/status", self.child.id());
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let kb = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .ok_or_else(|| format!("{path} has no {key}"))
        };
        Ok(Memory {
            rss_mb: kb("VmRSS:")? / 1024.0,
            hwm_mb: kb("VmHWM:")? / 1024.0,
            file_mb: kb("RssFile:")? / 1024.0,
            anon_mb: kb("RssAnon:")? / 1024.0,
            threads: kb("Threads:")? as u32,
        })
    }

    fn exit_note(&self) -> String {
        let path = format!("/proc/{}/status", self.child.id());
        if std::fs::metadata(path).is_ok() {
            String::new()
        } else {
            "\n(the agent has exited)".into()
        }
    }

    /// SIGTERM (the agent removes its rules), then SIGKILL after 10 s.
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentChild {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TCP relay from 127.0.0.1:`port` in a network namespace to `upstream` in the root one.
struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(ns: &str, upstream: SocketAddr) -> Self {
        let listener = support::in_netns(ns, || {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("relay bind in the netns")
        });
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let _ = listener.set_nonblocking(true);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        // Spawned from a root-netns thread: the upstream connections are made there.
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
                        else {
                            continue;
                        };
                        let _ = down.set_nonblocking(false);
                        pipe(&down, &up);
                        pipe(&up, &down);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread until EOF or an error, then shuts `to`'s write side.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
