//! Real traffic through the agent in network namespaces: client -> node/pod netns (the agent,
//! run as the real binary in local mode) -> backend netns acting as the Service. Runs once per
//! iptables variant that works here. Skips with a printed reason when not root.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(600);

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(support::ip(ip), port)
}

const POD_SPEC: &str = "pool: p
ports:
- {name: http, protocol: TCP, port: 8080, hostPort: 80}
- {name: dns, protocol: UDP, port: 5353, hostPort: 53}
clusterIPs: [10.71.2.2, 'fd71:2::2']
ipFamilies: [IPv4, IPv6]
";

fn backend_servers(topo: &Topology) -> Vec<Box<dyn std::any::Any>> {
    vec![
        Box::new(TcpServer::start(
            &topo.backend.name,
            sa(addr::BACKEND4, 8080),
        )),
        Box::new(TcpServer::start(
            &topo.backend.name,
            sa(addr::BACKEND6, 8080),
        )),
        Box::new(UdpServer::start(
            &topo.backend.name,
            sa(addr::BACKEND4, 5353),
        )),
        Box::new(UdpServer::start(
            &topo.backend.name,
            sa(addr::BACKEND6, 5353),
        )),
    ]
}

/// Pod mode, dual-stack, TCP and UDP: traffic to the pod's host ports reaches the Service; the
/// pod netns starts with forwarding off and the agent turns it on. The backend sees the pod's
/// address, not the client's: pod mode masquerades (documented; use Host mode with
/// externalTrafficPolicy Local to keep client addresses).
#[test]
fn pod_mode_forwards_tcp_and_udp_over_ipv4_and_ipv6() {
    if skip("pod_mode_forwards_tcp_and_udp_over_ipv4_and_ipv6") {
        return;
    }
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::Off);
        let _servers = backend_servers(&topo);
        let mut agent =
            AgentProc::start_in(&topo.node, spec_dir(POD_SPEC, None), &AgentOpts::pod(mode));
        agent.wait_ready(T).expect("ready");
        let c = &topo.client.name;
        for (node, client, inner) in [
            (addr::NODE4, addr::CLIENT4, addr::NODE4_INNER),
            (addr::NODE6, addr::CLIENT6, addr::NODE6_INNER),
        ] {
            let seen = eventually(T, || tcp_whoami(c, None, sa(node, 80), SHORT))
                .unwrap_or_else(|e| panic!("{mode} TCP via {node}: {e}\n{}", agent.log_text()));
            assert_eq!(
                seen, inner,
                "{mode}: pod mode masquerades, so the backend sees the pod"
            );
            assert_ne!(seen, client);
            let seen = eventually(T, || udp_whoami(c, None, sa(node, 53), SHORT))
                .unwrap_or_else(|e| panic!("{mode} UDP via {node}: {e}"));
            assert_eq!(seen, inner);
        }
        // Nothing else is forwarded.
        assert!(tcp_whoami(c, None, sa(addr::NODE4, 81), SHORT).is_err());
        let status = agent.wait_reason("RulesApplied", T).expect("status");
        assert_eq!(status["conditions"][0]["status"], "True");
        assert_eq!(
            status["addresses"],
            serde_json::json!([addr::NODE4, addr::NODE6])
        );
        let want = expected(
            POD_SPEC,
            &context(&[addr::NODE4, addr::NODE6], &["192.0.2.10"], None),
        );
        assert_eq!(
            installed(&topo.node.name, mode),
            want,
            "{mode}: exactly the desired rules"
        );
        println!("pod mode over iptables-{mode}: TCP+UDP, IPv4+IPv6 forwarded");
    }
}

fn host_spec(policy: &str) -> String {
    format!(
        "pool: p
dataplane: Host
externalTrafficPolicy: {policy}
ports:
- {{name: http, protocol: TCP, port: 80, hostPort: 80, nodePort: 30080}}
- {{name: dns, protocol: UDP, port: 53, hostPort: 53, nodePort: 30053}}
clusterIPs: [10.96.0.10, 'fd00:96::10']
ipFamilies: [IPv4, IPv6]
"
    )
}

fn endpoints(node: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-v4, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints:
- {{addresses: [{b4}], nodeName: {node}, conditions: {{ready: true}}}}
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-v6, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv6
endpoints:
- {{addresses: ['{b6}'], nodeName: {node}, conditions: {{ready: true}}}}
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: dns, port: 5353, protocol: UDP}}
",
        b4 = addr::BACKEND4,
        b6 = addr::BACKEND6
    )
}

/// Host mode, externalTrafficPolicy Local: DNAT straight to this node's endpoint with no SNAT,
/// so the backend sees the client's own address (TCP and UDP, IPv4 and IPv6).
#[test]
fn host_mode_local_keeps_the_client_address() {
    if skip("host_mode_local_keeps_the_client_address") {
        return;
    }
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::On);
        let _servers = backend_servers(&topo);
        let spec = host_spec("Local");
        let eps = endpoints("node-a");
        let mut agent = AgentProc::start_in(
            &topo.node,
            spec_dir(&spec, Some(&eps)),
            &AgentOpts::host(mode),
        );
        agent.wait_ready(T).expect("ready");
        let c = &topo.client.name;
        for (node, client) in [(addr::NODE4, addr::CLIENT4), (addr::NODE6, addr::CLIENT6)] {
            let from = Some(ip(client));
            let seen = eventually(T, || tcp_whoami(c, from, sa(node, 80), SHORT))
                .unwrap_or_else(|e| panic!("{mode} TCP {node}: {e}\n{}", agent.log_text()));
            assert_eq!(seen, client, "{mode}: Local must keep the client address");
            let seen = eventually(T, || udp_whoami(c, from, sa(node, 53), SHORT))
                .unwrap_or_else(|e| panic!("{mode} UDP {node}: {e}"));
            assert_eq!(seen, client);
        }
        agent.wait_reason("RulesApplied", T).expect("status");
        let want = expected(
            &spec,
            &context(
                &[addr::NODE4, addr::NODE6],
                &[addr::NODE4, addr::NODE6],
                Some(&eps),
            ),
        );
        assert_eq!(installed(&topo.node.name, mode), want);
        println!("host mode Local over iptables-{mode}: client address preserved");
    }
}

/// Host mode, Local, with the only endpoint on another node: ports are rejected and the status
/// says NoEndpoints; Cluster sends to it and masquerades (the reply must come back through
/// this node), without touching any chain but Portway's.
#[test]
fn host_mode_cluster_masquerades_and_local_without_endpoints_rejects() {
    if skip("host_mode_cluster_masquerades_and_local_without_endpoints_rejects") {
        return;
    }
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::On);
        let _servers = backend_servers(&topo);
        let eps = endpoints("node-b");
        let local = AgentProc::start_in(
            &topo.node,
            spec_dir(&host_spec("Local"), Some(&eps)),
            &AgentOpts::host(mode),
        );
        let status = local.wait_reason("NoEndpoints", T).expect("NoEndpoints");
        assert_eq!(status["conditions"][0]["status"], "False");
        let c = &topo.client.name;
        let err = tcp_whoami(c, None, sa(addr::NODE4, 80), SHORT).expect_err("rejected");
        assert!(
            err.contains("refused"),
            "{mode}: REJECT answers at once: {err}"
        );
        drop(local);

        // A foreign rule in the node's table must survive everything the agent does.
        let foreign = topo.node.exec(
            &format!("iptables-{mode}"),
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                "9999",
                "-j",
                "RETURN",
            ],
        );
        assert!(foreign.status.success());
        let mut cluster = AgentProc::start_in(
            &topo.node,
            spec_dir(&host_spec("Cluster"), Some(&eps)),
            &AgentOpts::host(mode),
        );
        cluster.wait_ready(T).expect("ready");
        for (node, inner) in [
            (addr::NODE4, addr::NODE4_INNER),
            (addr::NODE6, addr::NODE6_INNER),
        ] {
            let seen = eventually(T, || tcp_whoami(c, None, sa(node, 80), SHORT))
                .unwrap_or_else(|e| panic!("{mode} {node}: {e}\n{}", cluster.log_text()));
            assert_eq!(seen, inner, "{mode}: Cluster masquerades");
        }
        assert_eq!(cluster.sigterm(T).map(|s| s.success()), Some(true));
        let left = save_text(&topo.node.name, mode, false);
        assert!(
            left.contains("--dport 9999 -j RETURN"),
            "{mode}: foreign rule kept"
        );
        assert!(!left.contains("PORTWAY"), "{mode}: {left}");
    }
}

/// loadBalancerSourceRanges: an allowed client gets in, a denied one (another source address
/// of the same client netns) does not, for TCP and UDP over both families.
#[test]
fn source_ranges_let_allowed_clients_in_and_keep_others_out() {
    if skip("source_ranges_let_allowed_clients_in_and_keep_others_out") {
        return;
    }
    let spec = format!(
        "{POD_SPEC}sourceRanges: ['{}/32', '{}/128']\n",
        addr::CLIENT4,
        addr::CLIENT6
    );
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::Off);
        let _servers = backend_servers(&topo);
        let mut agent =
            AgentProc::start_in(&topo.node, spec_dir(&spec, None), &AgentOpts::pod(mode));
        agent.wait_ready(T).expect("ready");
        let c = &topo.client.name;
        for (node, ok, denied) in [
            (addr::NODE4, addr::CLIENT4, addr::CLIENT4_DENIED),
            (addr::NODE6, addr::CLIENT6, addr::CLIENT6_DENIED),
        ] {
            eventually(T, || tcp_whoami(c, Some(ip(ok)), sa(node, 80), SHORT))
                .unwrap_or_else(|e| panic!("{mode}: allowed {ok} -> {node}: {e}"));
            eventually(T, || udp_whoami(c, Some(ip(ok)), sa(node, 53), SHORT))
                .unwrap_or_else(|e| panic!("{mode}: allowed udp {ok}: {e}"));
            let err = tcp_whoami(c, Some(ip(denied)), sa(node, 80), SHORT)
                .expect_err("a denied client must not connect");
            assert!(
                !err.contains("refused"),
                "{mode}: dropped, not refused: {err}"
            );
            assert!(udp_whoami(c, Some(ip(denied)), sa(node, 53), SHORT).is_err());
        }
        println!("source ranges over iptables-{mode}: allowed in, denied dropped");
    }
}

/// IPv4 forwarding off and /proc/sys read-only (as in a container): the agent turns on
/// per-interface IPv4 forwarding over rtnetlink, and reports ForwardingDisabled naming
/// net.ipv6.conf.all.forwarding for IPv6, which has no netlink switch.
#[test]
fn forwarding_over_rtnetlink_with_a_read_only_proc_sys() {
    if skip("forwarding_over_rtnetlink_with_a_read_only_proc_sys") {
        return;
    }
    if !std::path::Path::new("/usr/bin/unshare").exists() {
        note("SKIP forwarding_over_rtnetlink_with_a_read_only_proc_sys: unshare(1) missing");
        return;
    }
    let mode = backends()[0];
    let topo = Topology::new(NodeForwarding::Off);
    let _servers = backend_servers(&topo);
    let opts = AgentOpts {
        readonly_proc_sys: true,
        ..AgentOpts::pod(mode)
    };
    let agent = AgentProc::start_in(&topo.node, spec_dir(POD_SPEC, None), &opts);
    let status = agent
        .wait_reason("ForwardingDisabled", T)
        .expect("ForwardingDisabled");
    let message = status["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("net.ipv6.conf.all.forwarding"),
        "{message}"
    );
    assert!(!message.contains("IPv4 not forwarded"), "{message}");
    let v4 = topo
        .node
        .exec("sysctl", &["-n", "net.ipv4.conf.n0.forwarding"]);
    assert_eq!(
        String::from_utf8_lossy(&v4.stdout).trim(),
        "1",
        "set over rtnetlink"
    );
    let all = topo
        .node
        .exec("sysctl", &["-n", "net.ipv4.conf.all.forwarding"]);
    assert_eq!(
        String::from_utf8_lossy(&all.stdout).trim(),
        "0",
        "only per interface"
    );
    let seen = eventually(T, || {
        tcp_whoami(&topo.client.name, None, sa(addr::NODE4, 80), SHORT)
    })
    .unwrap_or_else(|e| {
        panic!(
            "IPv4 through netlink-enabled forwarding: {e}\n{}",
            agent.log_text()
        )
    });
    assert_eq!(seen, addr::NODE4_INNER);
    assert!(
        tcp_whoami(&topo.client.name, None, sa(addr::NODE6, 80), SHORT).is_err(),
        "IPv6 cannot be forwarded, as reported"
    );
}

/// SCTP: the rules are installed (and round-trip through iptables-save) in every run; traffic
/// is tested where the kernel can open SCTP sockets, and skipped with the reason otherwise.
#[test]
fn sctp_rules_install_and_traffic_where_the_kernel_has_sctp() {
    if skip("sctp_rules_install_and_traffic_where_the_kernel_has_sctp") {
        return;
    }
    let spec = "pool: p
ports:
- {name: sig, protocol: SCTP, port: 3868, hostPort: 3868}
clusterIPs: [10.71.2.2]
ipFamilies: [IPv4]
";
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::On);
        let mut agent =
            AgentProc::start_in(&topo.node, spec_dir(spec, None), &AgentOpts::pod(mode));
        agent.wait_ready(T).expect("ready");
        let want = expected(spec, &context(&[addr::NODE4, addr::NODE6], &[], None));
        wait_converged(&topo.node.name, mode, &want, T).expect("SCTP rules installed as rendered");
        assert!(save_text(&topo.node.name, mode, false).contains("-p sctp -m sctp --dport 3868"));
        match sctp_available() {
            Ok(()) => {
                let _server = SctpServer::start(&topo.backend.name, sa(addr::BACKEND4, 3868));
                let seen = eventually(T, || {
                    sctp_whoami(&topo.client.name, sa(addr::NODE4, 3868), SHORT)
                })
                .unwrap_or_else(|e| panic!("{mode} SCTP: {e}"));
                assert_eq!(seen, addr::NODE4_INNER);
                println!("SCTP over iptables-{mode}: forwarded");
            }
            Err(reason) => note(&format!("SKIP SCTP traffic over iptables-{mode}: {reason}")),
        }
    }
}

/// Pod mode with externalTrafficPolicy Local: traffic goes to the node's address (HOST_IPS)
/// and the NodePort, where kube-proxy would send it only to local endpoints. The backend netns
/// stands in for the node serving the NodePort.
#[test]
fn pod_mode_local_sends_to_the_node_address_and_node_port() {
    if skip("pod_mode_local_sends_to_the_node_address_and_node_port") {
        return;
    }
    let spec = "pool: p
externalTrafficPolicy: Local
ports:
- {name: http, protocol: TCP, port: 80, hostPort: 80, nodePort: 30080}
clusterIPs: [10.96.0.10, 'fd00:96::10']
ipFamilies: [IPv4, IPv6]
";
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::Off);
        let _s4 = TcpServer::start(&topo.backend.name, sa(addr::BACKEND4, 30080));
        let _s6 = TcpServer::start(&topo.backend.name, sa(addr::BACKEND6, 30080));
        let opts = AgentOpts {
            host_ips: vec![addr::BACKEND4.into(), addr::BACKEND6.into()],
            ..AgentOpts::pod(mode)
        };
        let mut agent = AgentProc::start_in(&topo.node, spec_dir(spec, None), &opts);
        agent.wait_ready(T).expect("ready");
        for (node, client) in [(addr::NODE4, addr::CLIENT4), (addr::NODE6, addr::CLIENT6)] {
            eventually(T, || {
                tcp_whoami(&topo.client.name, Some(ip(client)), sa(node, 80), SHORT)
            })
            .unwrap_or_else(|e| panic!("{mode} {node}: {e}\n{}", agent.log_text()));
        }
        let want = expected(
            spec,
            &context(
                &[addr::NODE4, addr::NODE6],
                &[addr::BACKEND4, addr::BACKEND6],
                None,
            ),
        );
        assert_eq!(installed(&topo.node.name, mode), want);
    }
}

/// Host mode Cluster with several endpoints: connections are spread over all of them.
#[test]
fn host_mode_spreads_connections_over_every_endpoint() {
    if skip("host_mode_spreads_connections_over_every_endpoint") {
        return;
    }
    let spec = "pool: p
dataplane: Host
ports: [{name: http, protocol: TCP, port: 80, hostPort: 80}]
clusterIPs: [10.96.0.10]
ipFamilies: [IPv4]
";
    let eps = "addressType: IPv4
metadata: {name: a}
endpoints:
- {addresses: [10.71.2.2], nodeName: node-a}
- {addresses: [10.71.2.3], nodeName: node-b}
- {addresses: [10.71.2.4], nodeName: node-c}
ports: [{name: http, port: 8080, protocol: TCP}]
";
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::On);
        for extra in ["10.71.2.3/24", "10.71.2.4/24"] {
            topo.backend.ip(&["addr", "add", extra, "dev", "b0"]);
        }
        // One server on the wildcard address; the address the client reached is the
        // connection's local address on the backend.
        let listener = in_netns(&topo.backend.name, || {
            std::net::TcpListener::bind("0.0.0.0:8080").expect("bind")
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let mut agent = AgentProc::start_in(
            &topo.node,
            spec_dir(spec, Some(eps)),
            &AgentOpts::host(mode),
        );
        agent.wait_ready(T).expect("ready");
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..60 {
            let dst = sa(addr::NODE4, 80);
            let stream = in_netns(&topo.client.name, move || {
                std::net::TcpStream::connect_timeout(&dst, SHORT)
            });
            assert!(stream.is_ok(), "{mode}: {stream:?}");
            let accepted = eventually(T, || {
                listener.accept().map(|(c, _)| c).map_err(|e| e.to_string())
            })
            .expect("accepted");
            let local = accepted.local_addr().expect("local").ip().to_string();
            *seen.entry(local).or_default() += 1;
        }
        assert_eq!(
            seen.len(),
            3,
            "{mode}: every endpoint gets connections: {seen:?}"
        );
        assert!(
            seen.values().all(|n| *n >= 5),
            "{mode}: roughly even: {seen:?}"
        );
        println!("iptables-{mode}: 60 connections spread as {seen:?}");
    }
}
