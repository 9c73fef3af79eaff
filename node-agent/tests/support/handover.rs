//! Agent replacement kit (issue 15): traffic that must not notice a replacement, and the two
//! replacements themselves.
//!
//! - Traffic from the client netns, every loop bounded in count and time: [`Prober`] (new TCP
//!   connections back to back), [`LongLived`] (one TCP connection echoing), [`UdpFlow`] (one UDP
//!   socket, so one conntrack entry, exchanging numbered datagrams with [`UdpEcho`]).
//! - [`host_handover`]: a Host-dataplane agent replaced by a new one for the same Service on the
//!   same node, in the three orders a cluster produces ([`Order`]).
//! - [`PodNode`]: the Pod dataplane's replacement as kubelet and the CNI portmap plugin do it,
//!   simulated: the old pod's netns and its host-port DNAT go, a new pod netns (new address) and
//!   its DNAT come, and the new agent starts in it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;

/// Longest a traffic loop runs, whatever happens.
pub const TRAFFIC_LIMIT: Duration = Duration::from_secs(60);

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(super::ip(ip), port)
}

/// Enters netns `ns` on the current thread (for threads that live there).
fn enter(ns: &str) -> Result<(), String> {
    let path = PathBuf::from("/run/netns").join(ns);
    let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {}: {e}", path.display()))
}

/// The results of a [`Prober`]: each request's start and outcome.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    pub results: Vec<(Instant, bool)>,
    pub errors: Vec<String>,
}

impl Probes {
    pub fn ok(&self) -> usize {
        self.results.iter().filter(|(_, ok)| *ok).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.ok()
    }

    /// The longest time the port did not answer: from the first failed request after a success
    /// to the next success (0 when nothing failed between two successes).
    pub fn longest_gap(&self) -> Duration {
        let mut longest = Duration::ZERO;
        let mut down_since: Option<Instant> = None;
        let mut seen_ok = false;
        for (at, ok) in &self.results {
            match (ok, down_since) {
                (true, Some(since)) => {
                    longest = longest.max(at.duration_since(since));
                    down_since = None;
                    seen_ok = true;
                }
                (true, None) => seen_ok = true,
                (false, None) if seen_ok => down_since = Some(*at),
                (false, _) => {}
            }
        }
        longest
    }
}

/// New TCP connections from `src` in the client netns to `dst`, one after the other, each
/// reading the server's greeting; `pause` between them. Bounded by `max` requests and
/// [`TRAFFIC_LIMIT`].
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Probes>>,
}

impl Prober {
    pub fn start(
        ns: &str,
        src: &str,
        dst: SocketAddr,
        timeout: Duration,
        pause: Duration,
        max: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let ns = ns.to_owned();
        let src = super::ip(src);
        let thread = std::thread::spawn(move || {
            let mut probes = Probes::default();
            if let Err(e) = enter(&ns) {
                probes.errors.push(e);
                return probes;
            }
            let started = Instant::now();
            while !s.load(Ordering::SeqCst)
                && probes.results.len() < max
                && started.elapsed() < TRAFFIC_LIMIT
            {
                let at = Instant::now();
                let outcome = greeting(src, dst, timeout);
                if let Err(e) = &outcome
                    && probes.errors.len() < 20
                {
                    probes.errors.push(e.clone());
                }
                probes.results.push((at, outcome.is_ok()));
                std::thread::sleep(pause);
            }
            probes
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Probes {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection (on the calling thread's netns) that must bring the server's greeting.
fn greeting(src: std::net::IpAddr, dst: SocketAddr, timeout: Duration) -> Result<(), String> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(|e| e.to_string())?;
    sock.bind(&SocketAddr::new(src, 0).into())
        .map_err(|e| format!("bind: {e}"))?;
    sock.connect_timeout(&dst.into(), timeout)
        .map_err(|e| format!("connect {dst}: {e}"))?;
    let mut stream: TcpStream = sock.into();
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    let mut got = 0;
    while got < 64 {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return Ok(()),
            Ok(1) => got += 1,
            Ok(_) => return Err(format!("{dst}: closed before the greeting")),
            Err(e) => return Err(format!("{dst}: greeting: {e}")),
        }
    }
    Err(format!("{dst}: no greeting line"))
}

/// What a [`LongLived`] connection or a [`UdpFlow`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowReport {
    pub exchanges: usize,
    pub failed: usize,
    /// First failure, if any.
    pub error: Option<String>,
}

/// One TCP connection through the node (opened now), echoing a numbered line every `pause`
/// until stopped; stops at the first failure. Bounded by [`TRAFFIC_LIMIT`].
pub struct LongLived {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(FlowReport, TcpStream)>>,
}

impl LongLived {
    pub fn open(ns: &str, src: &str, dst: SocketAddr, pause: Duration) -> Result<Self, String> {
        let (mut stream, _) = tcp_connect(ns, Some(super::ip(src)), dst, Duration::from_secs(2))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut report = FlowReport::default();
            let started = Instant::now();
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) && started.elapsed() < TRAFFIC_LIMIT {
                n += 1;
                match tcp_echo(&mut stream, format!("line {n}\n").as_bytes()) {
                    Ok(()) => report.exchanges += 1,
                    Err(e) => {
                        report.failed += 1;
                        report.error = Some(e);
                        break;
                    }
                }
                std::thread::sleep(pause);
            }
            (report, stream)
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the echo loop, then checks the connection once more.
    pub fn stop(mut self) -> FlowReport {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok((mut report, mut stream))) => {
                if report.failed == 0 {
                    match tcp_echo(&mut stream, b"last\n") {
                        Ok(()) => report.exchanges += 1,
                        Err(e) => {
                            report.failed += 1;
                            report.error = Some(format!("after the replacement: {e}"));
                        }
                    }
                }
                report
            }
            _ => FlowReport {
                failed: 1,
                error: Some("the echo thread panicked".into()),
                ..FlowReport::default()
            },
        }
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP server in a netns echoing every datagram. Stops on drop.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(ns: &str, addr: SocketAddr) -> Self {
        let sock = in_netns(ns, move || {
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"))
        });
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One UDP socket (one source port, one conntrack entry) sending a numbered datagram every
/// `pause` and waiting up to 1 s for its echo; a datagram not echoed in time is lost. Bounded by
/// [`TRAFFIC_LIMIT`].
pub struct UdpFlow {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<FlowReport>>,
}

impl UdpFlow {
    pub fn start(ns: &str, src: &str, dst: SocketAddr, pause: Duration) -> Result<Self, String> {
        let src = super::ip(src);
        let sock = in_netns(ns, move || UdpSocket::bind(SocketAddr::new(src, 0)))
            .map_err(|e| format!("udp bind: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut report = FlowReport::default();
            let started = Instant::now();
            let mut buf = [0u8; 64];
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) && started.elapsed() < TRAFFIC_LIMIT {
                n += 1;
                let msg = n.to_be_bytes();
                if let Err(e) = sock.send_to(&msg, dst) {
                    report.failed += 1;
                    report.error.get_or_insert(format!("send: {e}"));
                    std::thread::sleep(pause);
                    continue;
                }
                // Skip late echoes of earlier datagrams.
                let answered = loop {
                    match sock.recv_from(&mut buf) {
                        Ok((8, _)) if buf[..8] == msg => break Ok(()),
                        Ok(_) => continue,
                        Err(e) => break Err(e.to_string()),
                    }
                };
                match answered {
                    Ok(()) => report.exchanges += 1,
                    Err(e) => {
                        report.failed += 1;
                        report.error.get_or_insert(format!("datagram {n}: {e}"));
                    }
                }
                std::thread::sleep(pause);
            }
            report
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) -> FlowReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(FlowReport {
                failed: 1,
                error: Some("the UDP thread panicked".into()),
                ..FlowReport::default()
            })
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A Host-dataplane `ServiceLoadBalancer` of `shop/web` as the API server would hand it to the
/// agent: TCP 80 and UDP 53 to the Service, `status.targetNodes` as given, `meta` added to the
/// metadata (e.g. `, deletionTimestamp: '2026-01-01T00:00:00Z'`).
pub fn host_object(targets: &[&str], dataplane: &str, meta: &str) -> String {
    format!(
        "apiVersion: portway.dev/v1alpha1
kind: ServiceLoadBalancer
metadata: {{name: web, namespace: shop, generation: 1{meta}}}
spec:
  pool: p
  dataplane: {dataplane}
  externalTrafficPolicy: Cluster
  ports:
  - {{name: http, protocol: TCP, port: 80, hostPort: 80}}
  - {{name: dns, protocol: UDP, port: 53, hostPort: 53}}
  clusterIPs: [10.96.0.10]
  ipFamilies: [IPv4]
status:
  targetNodes: [{}]
",
        targets.join(", ")
    )
}

/// The Service's one endpoint, on node-a (the backend netns).
pub const HOST_ENDPOINTS: &str = "addressType: IPv4
metadata: {name: a}
endpoints: [{addresses: [10.71.2.2], nodeName: node-a}]
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
";

/// A Host-dataplane agent as the operator runs it (`--dataplane host`), with a short confirm
/// wait at exit.
pub fn host_agent_opts(mode: &str, confirm_ms: u64) -> AgentOpts {
    AgentOpts {
        extra_args: vec![
            "--dataplane".into(),
            "host".into(),
            "--handover-confirm-ms".into(),
            confirm_ms.to_string(),
        ],
        ..AgentOpts::host(mode)
    }
}

/// Packets counted by the agent's nat rules (`iptables-save -c -t nat`, its own chains): rule
/// counters restart at 0 when a chain is rewritten, so they only grow while the rules stay.
pub fn nat_packets(ns: &str, mode: &str) -> u64 {
    let owned = render::ChainNames::new("PORTWAY", "shop/web").owned_prefix();
    save_text_with(ns, mode, false, &["-c", "-t", "nat"])
        .lines()
        .filter(|l| l.contains(&format!("-A {owned}")))
        .filter_map(|l| {
            let rest = l.strip_prefix('[')?;
            rest.split_once(':')?.0.parse::<u64>().ok()
        })
        .sum()
}

/// In which order an old agent makes way for a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The new agent starts, then the old one gets SIGTERM (a surge).
    NewThenOld,
    /// The old agent gets SIGTERM and exits, then the new one starts (a DaemonSet's rolling
    /// update, a deleted pod).
    OldThenNew,
    /// The old agent is killed (SIGKILL, OOM), then the new one starts.
    KillThenNew,
}

impl Order {
    pub const ALL: [Order; 3] = [Order::NewThenOld, Order::OldThenNew, Order::KillThenNew];

    pub fn name(self) -> &'static str {
        match self {
            Order::NewThenOld => "new starts, then SIGTERM to the old",
            Order::OldThenNew => "SIGTERM to the old, then the new starts",
            Order::KillThenNew => "SIGKILL to the old, then the new starts",
        }
    }
}

/// What a Host-dataplane replacement did.
#[derive(Clone, Debug)]
pub struct HandoverOutcome {
    pub probes: Probes,
    pub long_lived: FlowReport,
    pub udp: FlowReport,
    /// The old agent's exit (`None` after SIGKILL).
    pub old_exit: Option<std::process::ExitStatus>,
    /// The old agent's last status reason.
    pub old_reason: String,
    /// The agent's rules before and after the replacement.
    pub rules_before: BTreeMap<String, usize>,
    pub rules_after: BTreeMap<String, usize>,
    /// Rules right after the old agent stopped, before a new one ran (`OldThenNew`, `KillThenNew`).
    pub rules_between: Option<BTreeMap<String, usize>>,
    /// nat rule packet counters just before the new agent started, and once it was ready.
    pub packets_before: u64,
    pub packets_after: u64,
    /// Batches the new agent wrote (its debug log's `iptables-restore batch` lines).
    pub new_agent_batches: usize,
    pub new_agent_log: String,
}

/// Replaces a Host-dataplane agent under traffic: the old agent forwards TCP 80 and UDP 53 of
/// node-a (listed in `targetNodes`) to the backend; a prober, a long-lived TCP connection and a
/// UDP flow run; the replacement happens in `order`; traffic goes on for `settle` afterwards.
pub fn host_handover(
    mode: &str,
    order: Order,
    settle: Duration,
) -> Result<HandoverOutcome, String> {
    let t = Duration::from_secs(15);
    let topo = Topology::new(NodeForwarding::On);
    let _tcp = TcpServer::start(&topo.backend.name, sa(addr::BACKEND4, 8080));
    let _udp = UdpEcho::start(&topo.backend.name, sa(addr::BACKEND4, 5353));
    let spec = host_object(&["node-a"], "Host", "");
    let opts = host_agent_opts(mode, 300);
    let mut old = AgentProc::start_in(&topo.node, spec_dir(&spec, Some(HOST_ENDPOINTS)), &opts);
    old.wait_ready(t)?;
    let c = topo.client.name.clone();
    let node = topo.node.name.clone();
    let port80 = sa(addr::NODE4, 80);
    eventually(t, || tcp_whoami(&c, Some(ip(addr::CLIENT4)), port80, t))?;
    let rules_before = installed(&node, mode);
    if rules_before.is_empty() {
        return Err("the old agent installed nothing".into());
    }

    let long_lived = LongLived::open(&c, addr::CLIENT4, port80, Duration::from_millis(20))?;
    let udp = UdpFlow::start(
        &c,
        addr::CLIENT4,
        sa(addr::NODE4, 53),
        Duration::from_millis(20),
    )?;
    let prober = Prober::start(
        &c,
        addr::CLIENT4,
        port80,
        Duration::from_millis(500),
        Duration::from_millis(3),
        20_000,
    );
    std::thread::sleep(Duration::from_millis(400));

    let mut rules_between = None;
    let mut old_exit = None;
    let new_dir = spec_dir(&spec, Some(HOST_ENDPOINTS));
    let start_new = |dir: tempfile::TempDir| -> Result<(AgentProc, u64, u64), String> {
        let before = nat_packets(&node, mode);
        let mut new = AgentProc::start_in(&topo.node, dir, &opts);
        new.wait_ready(t)?;
        let after = nat_packets(&node, mode);
        Ok((new, before, after))
    };
    let (new, packets_before, packets_after) = match order {
        Order::NewThenOld => {
            let started = start_new(new_dir)?;
            old_exit = old.sigterm(t);
            started
        }
        Order::OldThenNew => {
            old_exit = old.sigterm(t);
            rules_between = Some(installed(&node, mode));
            start_new(new_dir)?
        }
        Order::KillThenNew => {
            old.sigkill();
            rules_between = Some(installed(&node, mode));
            start_new(new_dir)?
        }
    };
    std::thread::sleep(settle);
    let probes = prober.stop();
    let long_lived = long_lived.stop();
    let udp = udp.stop();
    let rules_after = installed(&node, mode);
    let new_agent_log = new.log_text();
    let new_agent_batches = new_agent_log
        .lines()
        .filter(|l| l.contains("iptables-restore batch"))
        .count();
    Ok(HandoverOutcome {
        probes,
        long_lived,
        udp,
        old_exit,
        old_reason: old.reason(),
        rules_before,
        rules_after,
        rules_between,
        packets_before,
        packets_after,
        new_agent_batches,
        new_agent_log,
    })
}

/// Addresses of the simulated pods: a pod netns hangs off the node netns by a veth.
pub mod pod_addr {
    /// The node side of every pod's veth.
    pub const GATEWAY: &str = "10.71.3.1";
    /// Pod addresses, alternating from one pod to the next (IPAM gives a new pod a new one).
    pub const PODS: [&str; 2] = ["10.71.3.2", "10.71.3.3"];
}

/// A node (the [`Topology`]'s node netns, standing for the host) running one Pod-dataplane
/// agent pod at a time, replaced the way kubelet and the CNI portmap plugin do it.
pub struct PodNode {
    // Field order = drop order: the server goes before its netns.
    _server: TcpServer,
    pub topo: Topology,
    pub mode: String,
    generation: usize,
    pod: Option<(Netns, AgentProc, String)>,
    spec: String,
}

/// What one simulated replacement took.
#[derive(Clone, Debug)]
pub struct PodReplacement {
    /// SIGTERM to the old agent's exit.
    pub old_exit: Duration,
    /// Rules of the old agent still in its netns after it exited (before the teardown).
    pub old_rules_after_exit: usize,
    /// Teardown of the old sandbox (DNAT, netns) to the new agent forwarding.
    pub teardown_to_ready: Duration,
}

impl PodNode {
    /// The node, its first pod and that pod's agent, forwarding TCP host port 80 to the
    /// backend (standing for the Service's cluster IP) on 8080.
    pub fn start(mode: &str) -> Result<Self, String> {
        let topo = Topology::new(NodeForwarding::On);
        let spec = "apiVersion: portway.dev/v1alpha1
kind: ServiceLoadBalancer
metadata: {name: web, namespace: shop, generation: 1}
spec:
  pool: p
  dataplane: Pod
  ports: [{name: http, protocol: TCP, port: 8080, hostPort: 80}]
  clusterIPs: [10.71.2.2]
  ipFamilies: [IPv4]
status:
  targetNodes: [node-a]
"
        .to_owned();
        // Pods hang off the node by one veth each (routed by /32, like ptp CNI plugins).
        let server = TcpServer::start(&topo.backend.name, sa(addr::BACKEND4, 8080));
        let mut node = Self {
            _server: server,
            topo,
            mode: mode.to_owned(),
            generation: 0,
            pod: None,
            spec,
        };
        node.create_pod()?;
        Ok(node)
    }

    fn pod_ip(&self) -> &'static str {
        pod_addr::PODS[self.generation % 2]
    }

    fn iptables(&self, args: &[&str]) -> Result<(), String> {
        let out = self
            .topo
            .node
            .exec(&format!("iptables-{}", self.mode), args);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "iptables {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn portmap(&self, op: &str, pod_ip: &str) -> Result<(), String> {
        let to = format!("{pod_ip}:80");
        self.iptables(&[
            "-w",
            "-t",
            "nat",
            op,
            "PREROUTING",
            "-d",
            addr::NODE4,
            "-p",
            "tcp",
            "--dport",
            "80",
            "-m",
            "comment",
            "--comment",
            "pwa-portmap",
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ])
    }

    /// RunPodSandbox (netns, veth, address, routes), CNI ADD of portmap (the host-port DNAT),
    /// then the agent container.
    fn create_pod(&mut self) -> Result<(), String> {
        let name = format!("{}p{}", self.topo.tag, self.generation);
        let pod_ip = self.pod_ip();
        let ns = Netns::new(&name);
        let host_if = format!("vp{}", self.generation);
        ns.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &host_if,
            "netns",
            &self.topo.node.name,
        ]);
        ns.ip(&["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        let node = &self.topo.node;
        node.ip(&[
            "addr",
            "add",
            &format!("{}/32", pod_addr::GATEWAY),
            "dev",
            &host_if,
        ]);
        node.ip(&["link", "set", &host_if, "up"]);
        node.ip(&["route", "add", &format!("{pod_ip}/32"), "dev", &host_if]);
        node.sysctl(&format!("net.ipv4.conf.{host_if}.forwarding"), "1");
        node.sysctl(&format!("net.ipv4.conf.{host_if}.rp_filter"), "0");
        ns.ip(&[
            "route",
            "add",
            &format!("{}/32", pod_addr::GATEWAY),
            "dev",
            "eth0",
        ]);
        ns.ip(&["route", "add", "default", "via", pod_addr::GATEWAY]);
        // A fresh pod netns: forwarding off, as a runtime creates it (the agent turns it on).
        ns.sysctl("net.ipv4.conf.all.forwarding", "0");
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
        ns.sysctl("net.ipv4.conf.eth0.rp_filter", "0");
        self.portmap("-A", pod_ip)?;
        let opts = AgentOpts {
            pod_ips: vec![pod_ip.into()],
            extra_args: vec!["--dataplane".into(), "pod".into()],
            ..AgentOpts::pod(&self.mode)
        };
        let agent = AgentProc::start_in(&ns, spec_dir(&self.spec, None), &opts);
        self.pod = Some((ns, agent, pod_ip.to_owned()));
        Ok(())
    }

    /// Waits until the current pod's agent is ready.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        match self.pod.as_mut() {
            Some((_, agent, _)) => agent.wait_ready(timeout),
            None => Err("no pod".into()),
        }
    }

    /// The current pod's netns name.
    pub fn pod_netns(&self) -> Option<String> {
        self.pod.as_ref().map(|(ns, _, _)| ns.name.clone())
    }

    /// Replaces the pod as kubelet does: SIGTERM to the agent and wait for its exit
    /// (KillContainer), then StopPodSandbox (CNI DEL: the portmap DNAT goes; the netns goes),
    /// then a new pod. Only the kernel and process parts are simulated; the API round trips of a
    /// real replacement (the DaemonSet controller deleting and creating the pod, binding,
    /// kubelet's sync) are not.
    pub fn replace(&mut self, timeout: Duration) -> Result<PodReplacement, String> {
        let Some((ns, mut agent, pod_ip)) = self.pod.take() else {
            return Err("no pod".into());
        };
        let t0 = Instant::now();
        let status = agent.sigterm(timeout);
        let old_exit = t0.elapsed();
        if !status.is_some_and(|s| s.success()) {
            return Err(format!(
                "the old agent did not exit cleanly: {status:?}\n{}",
                agent.log_text()
            ));
        }
        let old_rules_after_exit = portway_lines(&ns.name, &self.mode).len();
        let teardown = Instant::now();
        self.portmap("-D", &pod_ip)?;
        drop(agent);
        drop(ns);
        self.generation += 1;
        self.create_pod()?;
        self.wait_ready(timeout)?;
        Ok(PodReplacement {
            old_exit,
            old_rules_after_exit,
            teardown_to_ready: teardown.elapsed(),
        })
    }
}

/// Runs `f` with a [`Prober`] on `dst` and returns its probes.
pub fn probed<T>(
    ns: &str,
    dst: SocketAddr,
    pause: Duration,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<(T, Probes), String> {
    let prober = Prober::start(
        ns,
        addr::CLIENT4,
        dst,
        Duration::from_millis(100),
        pause,
        50_000,
    );
    std::thread::sleep(Duration::from_millis(100));
    let out = f();
    std::thread::sleep(Duration::from_millis(200));
    let probes = prober.stop();
    Ok((out?, probes))
}
