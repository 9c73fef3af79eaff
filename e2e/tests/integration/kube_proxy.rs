//! The agent's `Host` dataplane beside a REAL kube-proxy (iptables mode, v1.33 on the build
//! machine) in the same network namespace, with real traffic (docs/node-agent.md, `Host`).
//!
//! Topology (the node agent's real-kernel kit, node-agent/tests/support): client netns -> node
//! netns (kube-proxy and two agents) -> backend netns. kube-proxy reaches the test API server
//! (127.0.0.1 of the root netns) through an in-test TCP relay on 127.0.0.1 of the node netns.
//! The Services are what Portway serves in a cluster: dual-stack (`RequireDualStack`, a cluster
//! IP of each family) type LoadBalancer with fixed nodePorts and the node's IPv4 and IPv6
//! addresses published in `status.loadBalancer.ingress` with `ipMode: VIP`, so kube-proxy
//! programs its own rules for those addresses on the very ports the agents forward; one Service
//! has externalTrafficPolicy Cluster, one Local (a second agent). Each Service has a TCP and a
//! UDP port (own nodePort, own host port; the backends run a TCP and a UDP whoami server).
//! kube-proxy is dual-stack (a cluster CIDR of each family, its Node has an InternalIP of each),
//! the agents have both node addresses, and every check below is made over IPv4 and over IPv6,
//! for TCP and for UDP.
//!
//! Checked, once with kube-proxy on iptables-nft and once on iptables-legacy (its `PATH`
//! decides; the agents use the variant kube-proxy's rules are found in):
//! - before the agents, kube-proxy serves the four NodePorts and the four host ports (TCP and
//!   UDP of both Services);
//! - with the agents, the host ports are served through Portway's DNAT rules (their packet
//!   counters, in iptables and ip6tables, grow by one per TCP connection and per UDP exchange)
//!   and the NodePorts still by kube-proxy; Local keeps the client's address on both; this holds
//!   through 5 forced full kube-proxy resyncs and an endpoint change (a second backend in each
//!   family, then back), with each agent's rules present once;
//! - UDP: every exchange (datagram and reply) comes from a client source port never used before
//!   in the test ([`udp_whoami_from`]), so it makes a new conntrack entry and meets the nat rules
//!   of that moment (an entry made before the agents started would keep kube-proxy's DNAT for
//!   ~30 s); an exchange sends at most 3 datagrams from its port, 250 ms each, and every exchange
//!   must be answered (no loss is tolerated: the paths are local veths);
//! - kube-proxy's lines (every `iptables-save` and `ip6tables-save` rule and chain not mentioning
//!   Portway, counters ignored; see [`rules::kube_proxy_lines`] for the order) are identical
//!   before, during and after the agents, and kube-proxy never finds its canary chain flushed;
//! - after SIGTERM no Portway line is left in either family and all sixteen paths are served
//!   (by kube-proxy).
//!
//! Needs `KUBEBUILDER_ASSETS` with a `kube-proxy` next to `kube-apiserver`, root, `ip` and the
//! iptables tools; otherwise one `SKIP` line. The agent binary is within the workspace's reach, so
//! the test builds it (`cargo build -p portway-node-agent`, same target folder and profile) and
//! fails when it cannot.

#[path = "../../../node-agent/tests/support/mod.rs"]
mod support;

mod cluster;
mod plumbing;
mod rules;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use portway_e2e::envtest::{ASSETS_ENV, Assets};
use portway_e2e::{TestEnv, report};
use support::{
    AgentOpts, AgentProc, NodeForwarding, TcpServer, Topology, UdpServer, addr, agent_bin,
    eventually, ip, spec_dir, tcp_whoami,
};

use plumbing::{KubeProxy, Relay};

const NODE: &str = "kp-node";
/// The externalTrafficPolicy Cluster Service.
const SERVICE: &str = "web";
const CLUSTER_IP: &str = "10.43.0.80";
const CLUSTER_IP6: &str = "fd00:10:43::80";
const PORT: u16 = 80;
const NODE_PORT: u16 = 30080;
/// The externalTrafficPolicy Local Service (its backend is on this node).
const LOCAL_SERVICE: &str = "web-local";
const LOCAL_CLUSTER_IP: &str = "10.43.0.81";
const LOCAL_CLUSTER_IP6: &str = "fd00:10:43::81";
const LOCAL_PORT: u16 = 81;
const LOCAL_NODE_PORT: u16 = 30081;
/// The UDP ports (port = the agent's host port) and nodePorts of the Cluster and Local Services.
const UDP_PORT: u16 = 53;
const UDP_NODE_PORT: u16 = 30053;
const LOCAL_UDP_PORT: u16 = 54;
const LOCAL_UDP_NODE_PORT: u16 = 30054;
/// Where the backends listen (TCP).
const TARGET_PORT: u16 = 8080;
/// Where the backends listen (UDP).
const UDP_TARGET_PORT: u16 = 5353;
/// The second backend addresses (added to the backend netns for the endpoint change).
const BACKEND4_B: &str = "10.71.2.3";
const BACKEND6_B: &str = "fd71:2::3";
/// kube-proxy's `--cluster-cidr`, dual-stack.
const CLUSTER_CIDR: &str = "10.244.0.0/16,fd00:10:244::/56";
/// kube-proxy's `--iptables-sync-period`: in v1.33 how often it checks its canary chain (a
/// flush triggers a full resync); rules are resynced on changes, and in full when its Node's
/// labels change.
const SYNC_PERIOD: Duration = Duration::from_secs(1);
/// Full kube-proxy resyncs forced (a Node label change each) while the agents run.
const RESYNCS: usize = 5;
const T: Duration = Duration::from_secs(20);
const SHORT: Duration = Duration::from_millis(800);
/// New connections (TCP) or exchanges (UDP, each from a new source port) per path per check,
/// every one of which must be served.
const CONNECTIONS: usize = 5;
/// Datagrams one UDP exchange may send (same source port) before it counts as unanswered.
const UDP_TRIES: u32 = 3;
/// How long one UDP datagram waits for its reply.
const UDP_WAIT: Duration = Duration::from_millis(250);

#[tokio::test]
async fn kube_proxy_iptables_nft_and_host_mode_agent_coexist() {
    coexist("kube_proxy_iptables_nft_and_host_mode_agent_coexist", "nft").await;
}

#[tokio::test]
async fn kube_proxy_iptables_legacy_and_host_mode_agent_coexist() {
    coexist(
        "kube_proxy_iptables_legacy_and_host_mode_agent_coexist",
        "legacy",
    )
    .await;
}

/// Why the test cannot run here; `Ok(dir)` is the assets folder holding `kube-proxy`.
fn assets_or_skip_reason(variant: &str) -> Result<std::path::PathBuf, String> {
    let dir = match Assets::from_env() {
        Ok(Some(assets)) => assets.dir,
        Ok(None) => return Err(format!("{ASSETS_ENV} is not set; see docs/testing.md")),
        // A misconfiguration must not look like a skip (as in every integration test).
        Err(e) => panic!("{e}"),
    };
    if !dir.join("kube-proxy").is_file() {
        return Err(format!(
            "no `kube-proxy` in {ASSETS_ENV}={}: put one of the API server's version there (from \
             a Kubernetes release's server binaries, kubernetes-server-linux-amd64.tar.gz, or \
             built from the same tree; docs/testing.md)",
            dir.display()
        ));
    }
    if let Some(reason) = support::skip_reason() {
        return Err(reason);
    }
    if !support::backends().contains(&variant) {
        return Err(format!("the iptables-{variant} tools do not work here"));
    }
    // Everything else is here: the agent binary is within reach, so build it (a no-op when it is
    // up to date) rather than skip. A test that cannot do its check must not pass.
    if let Err(e) = build_agent() {
        panic!("{e}");
    }
    Ok(dir)
}

/// `cargo build -p portway-node-agent --bin portway-agent` into this test's own target folder and
/// profile, so [`agent_bin`] is the agent of this checkout, never a stale or missing one.
fn build_agent() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // <target>/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", exe.display()))?;
    let target = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no target folder", profile_dir.display()))?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => return Err(format!("{}: no profile name", profile_dir.display())),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(&cargo)
        .args([
            "build",
            "-p",
            "portway-node-agent",
            "--bin",
            "portway-agent",
        ])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target)
        .current_dir(portway_e2e::envtest::workspace_root())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    if !out.status.success() || !agent_bin().is_file() {
        return Err(format!(
            "building the agent for the kube-proxy test failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The whole scenario with kube-proxy on iptables-`forced`.
async fn coexist(test: &'static str, forced: &'static str) {
    let assets = match assets_or_skip_reason(forced) {
        Ok(dir) => dir,
        Err(reason) => return report::skip(test, &reason),
    };
    let started = Instant::now();
    let Some(env) = TestEnv::start_or_skip(test).await else {
        return;
    };
    let kube_proxy_bin = assets.join("kube-proxy");
    let version = kube_proxy_version(&kube_proxy_bin);
    let client = env.client();
    let ns = env.namespace("kp").await.expect("namespace");
    let slices = cluster::create(&client, &ns).await;
    let slice_api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);

    // Namespaces, backends, the relay to the API server, kube-proxy.
    let topo = Topology::new(NodeForwarding::On);
    topo.backend
        .ip(&["addr", "add", &format!("{BACKEND4_B}/24"), "dev", "b0"]);
    topo.backend.ip(&[
        "addr",
        "add",
        &format!("{BACKEND6_B}/64"),
        "dev",
        "b0",
        "nodad",
    ]);
    let backends = [addr::BACKEND4, BACKEND4_B, addr::BACKEND6, BACKEND6_B];
    let _servers = backends.map(|b| TcpServer::start(&topo.backend.name, sa(b, TARGET_PORT)));
    let _udp_servers =
        backends.map(|b| UdpServer::start(&topo.backend.name, sa(b, UDP_TARGET_PORT)));
    let relay = Relay::start(&topo.node.name, api_addr(env.url()));
    let dir = env.dir().expect("env dir");
    let kubeconfig = dir.join("kube-proxy.kubeconfig");
    let admin = std::fs::read_to_string(env.kubeconfig_path().expect("kubeconfig"))
        .expect("read kubeconfig");
    let relayed = admin.replace(env.url(), &format!("https://127.0.0.1:{}", relay.port));
    std::fs::write(&kubeconfig, relayed).expect("write kube-proxy's kubeconfig");
    let mut kube_proxy = KubeProxy::start(
        test,
        &topo.node.name,
        &kube_proxy_bin,
        &kubeconfig,
        &plumbing::iptables_tools(dir, forced),
        &dir.join("kube-proxy.log"),
    );
    let node = topo.node.name.as_str();
    let variant = wait_programmed(&mut kube_proxy, node);
    assert_eq!(
        variant, forced,
        "kube-proxy's rules are not in its PATH's variant"
    );
    let mut paths = Paths {
        client: &topo.client.name,
        node,
        variant,
        kube_proxy: &kube_proxy,
        via_portway: [0, 0],
        udp_via_portway: [0, 0],
    };

    // (a) kube-proxy alone serves all sixteen paths.
    for (node_addr, client_addr) in [(addr::NODE4, addr::CLIENT4), (addr::NODE6, addr::CLIENT6)] {
        let first = sa(node_addr, NODE_PORT);
        eventually(T, || {
            tcp_whoami(paths.client, Some(ip(client_addr)), first, SHORT)
        })
        .unwrap_or_else(|e| {
            panic!(
                "NodePort {first} via kube-proxy: {e}\n{}",
                kube_proxy.tail()
            )
        });
        let first_udp = sa(node_addr, UDP_NODE_PORT);
        eventually(T, || {
            udp_whoami_from(paths.client, ip(client_addr), first_udp)
        })
        .unwrap_or_else(|e| {
            panic!(
                "UDP NodePort {first_udp} via kube-proxy: {e}\n{}",
                kube_proxy.tail()
            )
        });
    }
    paths.check("before the agents", false);
    let before = rules::settled_lines(node, variant);
    let syncs_before = kube_proxy.syncs();

    // (b) The agents start beside it.
    let spec = cluster::agent_spec(
        "Cluster",
        (PORT, NODE_PORT),
        (UDP_PORT, UDP_NODE_PORT),
        [CLUSTER_IP, CLUSTER_IP6],
    );
    let local_spec = cluster::agent_spec(
        "Local",
        (LOCAL_PORT, LOCAL_NODE_PORT),
        (LOCAL_UDP_PORT, LOCAL_UDP_NODE_PORT),
        [LOCAL_CLUSTER_IP, LOCAL_CLUSTER_IP6],
    );
    let mut agent = start_agent(&topo, variant, SERVICE, &spec, &slices.one_backend);
    let mut local_agent = start_agent(&topo, variant, LOCAL_SERVICE, &local_spec, &slices.local);
    let want = support::expected(&spec, &cluster::context(&slices.one_backend));
    converged(node, variant, &want, &agent);
    local_agent
        .wait_reason("RulesApplied", T)
        .expect("the Local agent's rules");
    let local_rules = support::installed_for(node, variant, LOCAL_SERVICE);
    assert!(
        !local_rules.is_empty() && support::duplicates(&local_rules) == 0,
        "{local_rules:#?}"
    );
    paths.check("with the agents", true);
    rules::assert_same(
        &before,
        &rules::settled_lines(node, variant),
        "kube-proxy's lines once the agents' rules are in",
    );

    // (c) kube-proxy resyncs in full, several times, while the agents run.
    let full_before = kube_proxy.full_syncs();
    for round in 0..RESYNCS {
        let full = kube_proxy.full_syncs();
        cluster::relabel_node(&client, &round.to_string()).await;
        // Both families resync in full, and finish.
        eventually(T, || {
            (kube_proxy.full_syncs() >= full + 2 && kube_proxy.idle())
                .then_some(())
                .ok_or_else(|| "no full resync yet".to_owned())
        })
        .unwrap_or_else(|e| panic!("full resync {round}: {e}\n{}", kube_proxy.tail()));
        for a in [&mut agent, &mut local_agent] {
            let status = a.child.try_wait().expect("agent status");
            assert!(status.is_none(), "an agent exited\n{}", a.log_text());
        }
        paths.check(&format!("after full resync {round}"), true);
        tokio::time::sleep(SYNC_PERIOD).await;
    }
    let full_syncs = kube_proxy.full_syncs() - full_before;
    converged(node, variant, &want, &agent);
    rules::assert_same(
        &before,
        &rules::settled_lines(node, variant),
        "kube-proxy's lines after its full resyncs",
    );

    // An endpoint change, and back: kube-proxy resyncs, the agent follows its endpoints file.
    cluster::replace_slices(&slice_api, &slices.two_backends).await;
    cluster::write_endpoints(&agent, &slices.two_backends);
    for b in [BACKEND4_B, BACKEND6_B] {
        eventually(T, || rules::kube_proxy_has_endpoint(node, variant, b))
            .unwrap_or_else(|e| panic!("kube-proxy never added {b}: {e}"));
    }
    let want_two = support::expected(&spec, &cluster::context(&slices.two_backends));
    converged(node, variant, &want_two, &agent);
    paths.check("with two backends", true);
    cluster::replace_slices(&slice_api, &slices.one_backend).await;
    cluster::write_endpoints(&agent, &slices.one_backend);
    for b in [BACKEND4_B, BACKEND6_B] {
        eventually(T, || {
            match rules::kube_proxy_has_endpoint(node, variant, b) {
                Ok(()) => Err(format!("{b} still programmed")),
                Err(_) => Ok(()),
            }
        })
        .unwrap_or_else(|e| panic!("kube-proxy kept {b}: {e}"));
    }
    converged(node, variant, &want, &agent);
    rules::assert_same(
        &before,
        &rules::settled_lines(node, variant),
        "kube-proxy's lines after the endpoint change and back",
    );
    paths.check("after the endpoint change", true);
    let syncs = kube_proxy.syncs() - syncs_before;
    assert!(
        !kube_proxy.saw_flush(),
        "kube-proxy found its canary chain flushed\n{}",
        kube_proxy.tail()
    );

    // (e) SIGTERM: no Portway line is left, kube-proxy's are as before, all paths served.
    for a in [&mut agent, &mut local_agent] {
        let status = a.sigterm(T).expect("the agent exits after SIGTERM");
        assert!(status.success(), "agent exit {status}\n{}", a.log_text());
    }
    // Both families (iptables-save and ip6tables-save).
    let left = support::portway_lines(node, variant);
    assert!(
        left.is_empty(),
        "Portway lines left after SIGTERM: {left:#?}"
    );
    rules::assert_same(
        &before,
        &rules::settled_lines(node, variant),
        "kube-proxy's lines after the agents stopped",
    );
    paths.check("after the agents", false);
    let [via4, via6] = paths.via_portway;
    let [udp4, udp6] = paths.udp_via_portway;
    let total_syncs = kube_proxy.syncs();
    drop((agent, local_agent, kube_proxy, relay));

    let compared6 = before.iter().filter(|l| l.starts_with("v6 ")).count();
    report::line(&format!(
        "kube-proxy coexistence: kube-proxy {version} (iptables-{variant}, dual-stack), {syncs} \
         syncs while the agents ran ({full_syncs} full, {total_syncs} in all); eTP Cluster and \
         Local host ports and NodePorts, TCP and UDP, all served over IPv4 and IPv6 \
         before/during/after ({via4} IPv4 + {via6} IPv6 TCP connections and {udp4} IPv4 + \
         {udp6} IPv6 UDP exchanges, each from a new source port, through Portway's DNAT while it \
         ran; Local kept the client address in both families), 0 kube-proxy lines changed ({} \
         iptables + {compared6} ip6tables compared), 0 PORTWAY lines left in either family; \
         {:.1}s",
        before.len() - compared6,
        started.elapsed().as_secs_f64()
    ));
}

fn sa(host: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(host), port)
}

fn kube_proxy_version(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .expect("kube-proxy --version");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("Kubernetes ")
        .to_owned()
}

fn api_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("https://")
        .parse()
        .unwrap_or_else(|e| panic!("API server URL {url}: {e}"))
}

/// Waits until kube-proxy has programmed the Service's cluster IP and, in both families, its
/// cluster IP and rule for the published address (the overlap with the agent's host port);
/// returns the variant it wrote.
fn wait_programmed(kube_proxy: &mut KubeProxy, node: &str) -> &'static str {
    let variant = eventually(T, || {
        kube_proxy.running()?;
        rules::programmed_variant(node, CLUSTER_IP)
    })
    .unwrap_or_else(|e| {
        panic!(
            "kube-proxy never programmed {CLUSTER_IP}: {e}\n{}",
            kube_proxy.tail()
        )
    });
    for (v6, cluster_ip, published) in [
        (
            false,
            format!("-d {CLUSTER_IP}/32"),
            format!("-d {}/32", addr::NODE4),
        ),
        (
            true,
            format!("-d {CLUSTER_IP6}/128"),
            format!("-d {}/128", addr::NODE6),
        ),
    ] {
        eventually(T, || {
            let nat = support::save_text_with(node, variant, v6, &["-t", "nat"]);
            let services = || nat.lines().filter(|l| l.starts_with("-A KUBE-SERVICES"));
            if !services().any(|l| l.contains(&cluster_ip)) {
                return Err(format!("no rule for the cluster IP ({cluster_ip}) yet"));
            }
            services()
                .any(|l| l.contains(&published) && l.contains("loadbalancer IP"))
                .then_some(())
                .ok_or_else(|| format!("no rule for the published address ({published}) yet"))
        })
        .unwrap_or_else(|e| panic!("kube-proxy: {e}\n{}", kube_proxy.tail()));
    }
    variant
}

/// An agent for `service` in `Host` mode in the node netns (both node addresses), on `variant`,
/// ready.
fn start_agent(
    topo: &Topology,
    variant: &str,
    service: &str,
    spec: &str,
    slices: &[EndpointSlice],
) -> AgentProc {
    let mut agent = AgentProc::start_in(
        &topo.node,
        spec_dir(spec, Some(&cluster::endpoints_file(slices))),
        &AgentOpts {
            node: NODE.into(),
            host_ips: vec![addr::NODE4.into(), addr::NODE6.into()],
            service: service.into(),
            ..AgentOpts::host(variant)
        },
    );
    agent.wait_ready(T).expect("agent ready");
    agent
}

/// The Cluster agent's rules are exactly `want`, one copy each.
fn converged(node: &str, variant: &str, want: &BTreeMap<String, usize>, agent: &AgentProc) {
    support::wait_converged(node, variant, want, T)
        .unwrap_or_else(|e| panic!("the agent's rules: {e}\n{}", agent.log_text()));
    let installed = support::installed_for(node, variant, SERVICE);
    assert_eq!(support::duplicates(&installed), 0, "{installed:#?}");
}

/// The sixteen paths from the client to the node's addresses: both Services' NodePorts and host
/// ports, TCP and UDP, over IPv4 and over IPv6.
struct Paths<'a> {
    client: &'a str,
    node: &'a str,
    variant: &'a str,
    kube_proxy: &'a KubeProxy,
    /// TCP connections Portway's DNAT rules counted during the checks, IPv4 and IPv6.
    via_portway: [u64; 2],
    /// UDP exchanges Portway's DNAT rules counted during the checks, IPv4 and IPv6.
    udp_via_portway: [u64; 2],
}

impl Paths<'_> {
    /// [`CONNECTIONS`] new connections (TCP) or exchanges (UDP, each from a new source port) on
    /// each path, every one answered by a backend that saw the node (Cluster masquerades) or the
    /// client itself (Local). With `agents`, the host ports must be served through Portway's DNAT
    /// rules of that family, whose packet counters must grow by one per connection or exchange
    /// (the nat table sees only a conntrack entry's first packet; else kube-proxy's rule for the
    /// published address serves them).
    fn check(&mut self, what: &str, agents: bool) {
        let families = [
            (false, addr::NODE4, addr::CLIENT4, addr::NODE4_INNER),
            (true, addr::NODE6, addr::CLIENT6, addr::NODE6_INNER),
        ];
        for (v6, node_addr, client, node_inner) in families {
            for (udp, node_port, host_port, source) in [
                (false, NODE_PORT, PORT, node_inner),
                (false, LOCAL_NODE_PORT, LOCAL_PORT, client),
                (true, UDP_NODE_PORT, UDP_PORT, node_inner),
                (true, LOCAL_UDP_NODE_PORT, LOCAL_UDP_PORT, client),
            ] {
                self.served(udp, client, sa(node_addr, node_port), source, what);
                let counted = rules::portway_dnat_packets(self.node, self.variant, v6);
                let dst = sa(node_addr, host_port);
                self.served(udp, client, dst, source, what);
                if agents {
                    let now = rules::portway_dnat_packets(self.node, self.variant, v6);
                    let grown = now - counted;
                    let proto = if udp { "UDP exchanges" } else { "connections" };
                    assert!(
                        grown >= CONNECTIONS as u64,
                        "{what}: only {grown} of {CONNECTIONS} {proto} to {dst} went through \
                         Portway's DNAT"
                    );
                    let via = if udp {
                        &mut self.udp_via_portway
                    } else {
                        &mut self.via_portway
                    };
                    via[usize::from(v6)] += grown;
                }
            }
        }
    }

    fn served(&self, udp: bool, client: &str, dst: SocketAddr, source: &str, what: &str) {
        for n in 0..CONNECTIONS {
            let seen = if udp {
                udp_whoami_from(self.client, ip(client), dst)
            } else {
                tcp_whoami(self.client, Some(ip(client)), dst, SHORT)
            };
            let seen = seen.unwrap_or_else(|e| {
                panic!(
                    "{what}: {} {n} to {dst}: {e}\n{}",
                    if udp { "UDP exchange" } else { "connection" },
                    self.kube_proxy.tail()
                )
            });
            assert_eq!(seen, source, "{what}: the address {dst}'s backend saw");
        }
    }
}

/// The next client source port for a UDP exchange: never used before by this test binary (both
/// variants share the counter), so each exchange makes its own conntrack entry.
fn fresh_udp_port() -> u16 {
    /// 20000..40000: below the ephemeral range; ~400 exchanges per variant.
    static NEXT: AtomicU16 = AtomicU16::new(20_000);
    let port = NEXT.fetch_add(1, Ordering::SeqCst);
    assert!(port < 40_000, "out of fresh UDP source ports");
    port
}

/// One UDP exchange from netns `ns`, from `src` and a fresh source port ([`fresh_udp_port`]):
/// up to [`UDP_TRIES`] datagrams from that port, [`UDP_WAIT`] each; the address the backend saw.
fn udp_whoami_from(ns: &str, src: IpAddr, dst: SocketAddr) -> Result<String, String> {
    let from = SocketAddr::new(src, fresh_udp_port());
    support::in_netns(ns, move || {
        let sock = UdpSocket::bind(from).map_err(|e| format!("bind {from}: {e}"))?;
        sock.set_read_timeout(Some(UDP_WAIT))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let mut last = String::from("no reply");
        for _ in 0..UDP_TRIES {
            sock.send_to(b"who", dst)
                .map_err(|e| format!("udp {from} -> {dst}: {e}"))?;
            match sock.recv_from(&mut buf) {
                Ok((n, peer)) if peer == dst => {
                    return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                Ok((_, peer)) => last = format!("reply from {peer}"),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("udp {from} -> {dst}: {last}"))
    })
}
