//! `cargo bench -p portway-node-agent --bench dataplane`: the agent's dataplane figures, each
//! measured against its baseline in the same run, printed as
//!
//! ```text
//! P1 throughput_ratio=<x> (goal >= 0.95)
//! P2 batch_speedup=<x> (goal >= 50)
//! P3 start_to_forwarding_50ports_ms=<x> (goal < 50)
//! P7 host_handover_failed_requests=<n> (goal 0)
//! P7 pod_replace_gap_ms=<x> (goal <= 300)
//! ```
//!
//! - P1: TCP bulk throughput client -> backend through the agent's forwarding (pod mode: DNAT +
//!   masquerade in the middle netns) divided by the direct routed path through the same
//!   namespaces, while the agent runs (so both paths pay for conntrack): two long-lived
//!   connections, one per path, take turns in 120 adjacent 0.1 s slices; median of the per-pair
//!   ratios.
//! - P2: time to install 1000 port rules with one `iptables` process per rule, klipper-lb's way
//!   (driven through the `iptables` crate, which works exactly like that), divided by the time
//!   of the agent's batch apply of a 1000-port rule set (dump, diff, one `iptables-restore`),
//!   same iptables variant, same netns; median of five back-to-back pairs.
//! - P3: from spawning `portway-agent run` (local mode, 50 TCP ports, default `--iptables auto`)
//!   to all 50 host ports forwarding, observed by a client connecting to each port; median of 9.
//! - P7 host: failed requests of a loop of new TCP connections (one every ~3 ms) through a
//!   Host-dataplane node while its agent is replaced by a new one for the same Service (the
//!   three orders of `tests/support/handover.rs` in turn), with a long-lived TCP connection and
//!   a UDP flow running too; median of 9 replacements.
//! - P7 pod: how long a node's host port does not answer while a Pod-dataplane agent pod is
//!   replaced, **simulated in netns** the way kubelet and the CNI portmap plugin do it (SIGTERM
//!   and exit of the old agent; the old pod's host-port DNAT and netns removed; a new pod netns
//!   with a new address, its DNAT, the new agent started), observed by a client connecting every
//!   ~1 ms; median of 9. The API round trips of a real replacement (the DaemonSet controller,
//!   binding, kubelet's sync, the container runtime) are not in it.
//!
//! Needs root (network namespaces, iptables); prints a skip line otherwise.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portway_crds::{DataplaneMode, IpFamily, Protocol};
use portway_node_agent::dataplane::Dataplane;
use portway_node_agent::dataplane::iptables::mode::Mode;
use portway_node_agent::dataplane::iptables::{Config, IptablesDataplane, RetryPolicy};
use portway_node_agent::rules::{FamilyRules, Forward, RuleSet};
use support::handover::{Order, PodNode, host_handover, probed};
use support::*;

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(support::ip(ip), port)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The variant `iptables` (what the `iptables` crate runs) points at.
fn system_variant() -> &'static str {
    let out = Command::new("iptables").arg("--version").output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("legacy") => "legacy",
        _ => "nft",
    }
}

// ---------------------------------------------------------------- P1

/// A sink in the backend netns: reads every connection to the end.
struct Sink {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start(ns: &str, addr: SocketAddr) -> Self {
        let listener = in_netns(ns, move || TcpListener::bind(addr).expect("bind sink"));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 1 << 20];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A long-lived bulk TCP connection from the client netns.
fn connect(ns: &str, dst: SocketAddr) -> TcpStream {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect")
    })
}

/// Bytes per second written into `s` for `secs`.
fn send_for(s: &mut TcpStream, secs: f64) -> f64 {
    let buf = vec![0x5au8; 256 << 10];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        s.write_all(&buf).expect("write");
        sent += buf.len() as u64;
    }
    sent as f64 / start.elapsed().as_secs_f64()
}

fn p1(mode: &str) -> Result<f64, String> {
    let topo = Topology::new(NodeForwarding::On);
    // Idle connections keep their congestion window (they take turns below).
    topo.client
        .sysctl("net.ipv4.tcp_slow_start_after_idle", "0");
    let _sink = Sink::start(&topo.backend.name, sa(addr::BACKEND4, 8080));
    let c = topo.client.name.clone();
    let spec = "pool: p\nports: [{name: bulk, protocol: TCP, port: 8080, hostPort: 80}]\nclusterIPs: [10.71.2.2]\nipFamilies: [IPv4]\n";
    let mut agent = AgentProc::start_in(&topo.node, spec_dir(spec, None), &AgentOpts::pod(mode));
    agent.wait_ready(Duration::from_secs(10))?;
    // Two long-lived connections, one per path, taking turns in short adjacent slices: machine
    // load drifts (a shared 2-core builder) but a pair of slices sees the same load, so the
    // median of per-pair ratios is steady; no connection set-up or slow start is measured.
    let mut direct = connect(&c, sa(addr::BACKEND4, 8080));
    let mut via = connect(&c, sa(addr::NODE4, 80));
    let _ = send_for(&mut direct, 0.3);
    let _ = send_for(&mut via, 0.3);
    let (mut base, mut subject, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    const PAIRS: usize = 120;
    for round in 0..PAIRS {
        let (b, s) = if round % 2 == 0 {
            let b = send_for(&mut direct, 0.1);
            (b, send_for(&mut via, 0.1))
        } else {
            let s = send_for(&mut via, 0.1);
            (send_for(&mut direct, 0.1), s)
        };
        base.push(b);
        subject.push(s);
        ratios.push(s / b);
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let ratio = median(ratios);
    println!(
        "  P1 detail: direct {:.2} Gbit/s, through the agent {:.2} Gbit/s (medians of {PAIRS} interleaved 0.1 s slices on two long-lived connections; iptables-{mode}); per-pair ratio median {ratio:.3}, quartiles {:.3}..{:.3}",
        median(base) * 8e-9,
        median(subject) * 8e-9,
        sorted[PAIRS / 4],
        sorted[3 * PAIRS / 4],
    );
    Ok(ratio)
}

// ---------------------------------------------------------------- P2

fn thousand_ports() -> RuleSet {
    let forwards = (0..1000u16)
        .map(|i| Forward {
            name: String::new(),
            protocol: Protocol::TCP,
            port: 10000 + i,
            destinations: vec![support::ip(addr::NODE4)],
            targets: vec![sa(addr::BACKEND4, 20000 + i)],
            masquerade: true,
        })
        .collect();
    RuleSet {
        service: "bench/p2".into(),
        mode: DataplaneMode::Pod,
        families: vec![FamilyRules {
            family: IpFamily::IPv4,
            forwards,
            allowed_sources: None,
            shared_netns: false,
        }],
        notes: vec![],
    }
}

/// Baseline: klipper-style, one `iptables` process per rule, through the iptables crate.
fn klipper_style(name: &str) -> Result<Duration, String> {
    in_netns(name, || -> Result<Duration, String> {
        let ipt = iptables::new(false).map_err(|e| e.to_string())?;
        ipt.new_chain("nat", "PWA-KLIPPER")
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        for i in 0..1000u16 {
            let rule = format!(
                "-d {}/32 -p tcp --dport {} -j DNAT --to-destination {}:{}",
                addr::NODE4,
                10000 + i,
                addr::BACKEND4,
                20000 + i
            );
            ipt.append("nat", "PWA-KLIPPER", &rule)
                .map_err(|e| e.to_string())?;
        }
        let took = start.elapsed();
        let n = ipt
            .list("nat", "PWA-KLIPPER")
            .map_err(|e| e.to_string())?
            .len();
        if n != 1001 {
            return Err(format!("baseline installed {n} lines, expected 1001"));
        }
        ipt.flush_chain("nat", "PWA-KLIPPER")
            .map_err(|e| e.to_string())?;
        ipt.delete_chain("nat", "PWA-KLIPPER")
            .map_err(|e| e.to_string())?;
        Ok(took)
    })
}

/// Subject: the agent's batch apply of 1000 ports onto a clean netns (then removed again).
fn agent_batch(name: &str, mode: Mode) -> Result<(Duration, usize), String> {
    in_netns(name, move || -> Result<(Duration, usize), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let mut dp = IptablesDataplane::new(Config {
                mode,
                prefix: "PORTWAY".into(),
                service: "bench/p2".into(),
                lock_wait_secs: 5,
                retry: RetryPolicy::default(),
            });
            let rules = thousand_ports();
            let start = Instant::now();
            let report = dp.apply(&rules).await.map_err(|e| e.to_string())?;
            let took = start.elapsed();
            if !report.changed() {
                return Err("the batch apply wrote nothing".into());
            }
            dp.cleanup().await.map_err(|e| e.to_string())?;
            Ok((took, report.rules_installed()))
        })
    })
}

fn p2() -> Result<f64, String> {
    let variant = system_variant();
    let ns = Netns::new(&format!("{}p2", unique_tag()));
    let mode = if variant == "legacy" {
        Mode::Legacy
    } else {
        Mode::Nft
    };
    // Five interleaved pairs (machine load drifts; each pair is measured back to back); the
    // figure is the median of the per-pair ratios.
    let (mut base, mut subject, mut ratios, mut installed) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for _ in 0..5 {
        let b = klipper_style(&ns.name)?.as_secs_f64();
        let (s, n) = agent_batch(&ns.name, mode)?;
        installed = n;
        base.push(b);
        subject.push(s.as_secs_f64());
        ratios.push(b / s.as_secs_f64());
    }
    println!(
        "  P2 detail: 1000 rules one process each: median {:.0} ms; agent batch of 1000 ports ({installed} rules, one iptables-save + one iptables-restore): median {:.1} ms; per-pair ratios {:?}; iptables-{variant}",
        median(base) * 1e3,
        median(subject.clone()) * 1e3,
        ratios
            .iter()
            .map(|r| (r * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    Ok(median(ratios))
}

// ---------------------------------------------------------------- P3

fn p3_once(topo: &Topology, dir: &tempfile::TempDir, extra: &[&str]) -> Result<f64, String> {
    let netns = File::open(topo.node.path()).map_err(|e| e.to_string())?;
    let state = dir.path().join("state");
    let _ = std::fs::remove_dir_all(&state);
    let spec = dir.path().join("spec.yaml");
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "run",
        "--spec-file",
        &spec.display().to_string(),
        "--namespace",
        "bench",
        "--service",
        "p3",
        "--node",
        "node-a",
        "--pod-ips",
        addr::NODE4,
        "--state-dir",
        &state.display().to_string(),
    ])
    .args(extra)
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: setns(2) only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    let client = topo.client.name.clone();
    // The client thread is in its netns before the clock starts.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let prober = std::thread::spawn(move || {
        in_netns(&client, move || -> Result<Instant, String> {
            let start = go_rx.recv().map_err(|e| e.to_string())?;
            for i in 0..50u16 {
                let dst = sa(addr::NODE4, 10000 + i);
                loop {
                    if start.elapsed() > Duration::from_secs(10) {
                        return Err(format!("port {} never forwarded", 10000 + i));
                    }
                    if TcpStream::connect_timeout(&dst, Duration::from_millis(50)).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            Ok(Instant::now())
        })
    });
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    go_tx.send(start).map_err(|e| e.to_string())?;
    let done = prober.join().map_err(|_| "prober panicked".to_owned())?;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let waited = Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if waited.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the agent did not stop".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(done?.duration_since(start).as_secs_f64() * 1e3)
}

fn p3(mode: &str) -> Result<f64, String> {
    let topo = Topology::new(NodeForwarding::Off);
    let mut servers = Vec::new();
    for i in 0..50u16 {
        servers.push(TcpServer::start(
            &topo.backend.name,
            sa(addr::BACKEND4, 8000 + i),
        ));
    }
    let mut spec = String::from("pool: p\nports:\n");
    for i in 0..50u16 {
        let _ = writeln!(
            spec,
            "- {{name: p{i}, protocol: TCP, port: {}, hostPort: {}}}",
            8000 + i,
            10000 + i
        );
    }
    spec.push_str("clusterIPs: [10.71.2.2]\nipFamilies: [IPv4]\n");
    let dir = spec_dir(&spec, None);
    let mut auto = Vec::new();
    let mut explicit = Vec::new();
    let flag = format!("--iptables={mode}");
    for round in 0..9 {
        auto.push(p3_once(&topo, &dir, &[])?);
        if round % 2 == 0 {
            explicit.push(p3_once(&topo, &dir, &[flag.as_str()])?);
        }
    }
    let runs: Vec<String> = auto.iter().map(|v| format!("{v:.1}")).collect();
    println!(
        "  P3 detail: runs with --iptables auto (default): [{}] ms; with --iptables {mode}: median {:.1} ms",
        runs.join(", "),
        median(explicit)
    );
    Ok(median(auto))
}

// ---------------------------------------------------------------- P7

/// Replacements per P7 figure (odd: the median is one of them).
const P7_RUNS: usize = 9;

fn p7_host(mode: &str) -> Result<f64, String> {
    let mut failed = Vec::new();
    let mut runs = Vec::new();
    let (mut requests, mut tcp, mut udp, mut udp_lost) = (0, 0, 0, 0);
    for run in 0..P7_RUNS {
        let order = Order::ALL[run % Order::ALL.len()];
        let o = host_handover(mode, order, Duration::from_millis(300))?;
        if o.long_lived.failed > 0 {
            return Err(format!(
                "{}: the long-lived connection broke: {:?}",
                order.name(),
                o.long_lived.error
            ));
        }
        failed.push(o.probes.failed() as f64);
        runs.push(format!("{}/{}", o.probes.failed(), o.probes.results.len()));
        requests += o.probes.results.len();
        tcp += o.long_lived.exchanges;
        udp += o.udp.exchanges;
        udp_lost += o.udp.failed;
    }
    println!(
        "  P7 host detail: failed/requests per replacement [{}] (orders in turn: new first, SIGTERM first, SIGKILL); {requests} requests; long-lived TCP kept in every run ({tcp} echoes); UDP flow {udp} exchanges, {udp_lost} lost; iptables-{mode}",
        runs.join(", ")
    );
    Ok(median(failed))
}

fn p7_pod(mode: &str) -> Result<f64, String> {
    let t = Duration::from_secs(15);
    let mut node = PodNode::start(mode)?;
    node.wait_ready(t)?;
    let client = node.topo.client.name.clone();
    let port80 = sa(addr::NODE4, 80);
    eventually(t, || {
        tcp_whoami(&client, Some(support::ip(addr::CLIENT4)), port80, t)
    })?;
    let mut gaps = Vec::new();
    let mut exits = Vec::new();
    let mut spans = Vec::new();
    for _ in 0..P7_RUNS {
        let (r, probes) = probed(&client, port80, Duration::from_millis(1), || {
            node.replace(t)
        })?;
        if !probes.results.last().is_some_and(|(_, ok)| *ok) {
            return Err("the port did not answer again after the replacement".into());
        }
        if r.old_rules_after_exit == 0 {
            return Err("the old agent removed its rules before its pod went".into());
        }
        gaps.push(probes.longest_gap().as_secs_f64() * 1e3);
        exits.push(r.old_exit.as_secs_f64() * 1e3);
        spans.push(r.teardown_to_ready.as_secs_f64() * 1e3);
    }
    let runs: Vec<String> = gaps.iter().map(|g| format!("{g:.0}")).collect();
    println!(
        "  P7 pod detail (simulated in netns: kubelet's SIGTERM and sandbox teardown, portmap's DNAT, a new pod netns with a new address, the new agent; no API round trips): gaps [{}] ms; old agent SIGTERM to exit median {:.1} ms (its rules stay in the pod netns until the teardown); teardown to new agent ready median {:.1} ms; iptables-{mode}",
        runs.join(", "),
        median(exits),
        median(spans)
    );
    Ok(median(gaps))
}

fn main() {
    if let Some(reason) = skip_reason() {
        println!("SKIP dataplane bench: {reason}");
        println!("P1 throughput_ratio=skipped (goal >= 0.95)");
        println!("P2 batch_speedup=skipped (goal >= 50)");
        println!("P3 start_to_forwarding_50ports_ms=skipped (goal < 50)");
        println!("P7 host_handover_failed_requests=skipped (goal 0)");
        println!("P7 pod_replace_gap_ms=skipped (goal <= 300)");
        return;
    }
    // `cargo bench` passes --bench; a filter argument selects figures (p1, p2, p3, p7).
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.to_lowercase())
        .collect();
    let run = |p: &str| wanted.is_empty() || wanted.iter().any(|w| w == p);
    let variant = system_variant();
    println!(
        "dataplane bench: iptables-{variant} (the system's `iptables`), agent binary {}",
        agent_bin().display()
    );
    let mut failed = false;
    if run("p1") {
        match p1(variant) {
            Ok(x) => println!("P1 throughput_ratio={x:.3} (goal >= 0.95)"),
            Err(e) => {
                failed = true;
                println!("P1 throughput_ratio=error (goal >= 0.95): {e}");
            }
        }
    }
    if run("p2") {
        match p2() {
            Ok(x) => println!("P2 batch_speedup={x:.1} (goal >= 50)"),
            Err(e) => {
                failed = true;
                println!("P2 batch_speedup=error (goal >= 50): {e}");
            }
        }
    }
    if run("p3") {
        match p3(variant) {
            Ok(x) => println!("P3 start_to_forwarding_50ports_ms={x:.1} (goal < 50)"),
            Err(e) => {
                failed = true;
                println!("P3 start_to_forwarding_50ports_ms=error (goal < 50): {e}");
            }
        }
    }
    if run("p7") {
        match p7_host(variant) {
            Ok(x) => println!("P7 host_handover_failed_requests={x:.0} (goal 0)"),
            Err(e) => {
                failed = true;
                println!("P7 host_handover_failed_requests=error (goal 0): {e}");
            }
        }
        match p7_pod(variant) {
            Ok(x) => println!("P7 pod_replace_gap_ms={x:.0} (goal <= 300)"),
            Err(e) => {
                failed = true;
                println!("P7 pod_replace_gap_ms=error (goal <= 300): {e}");
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
