//! The agent's life in a real netns: SIGTERM removes everything, SIGKILL + restart converges
//! with exactly one copy of each rule, live spec changes keep untouched ports working, a
//! reconcile that finds its rules writes nothing, agents of different Services share a netns,
//! and `portway-agent cleanup` removes every agent's rules. Skips when not root.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::*;

const T: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(600);

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(support::ip(ip), port)
}

const SPEC: &str = "pool: p
ports:
- {name: http, protocol: TCP, port: 8080, hostPort: 80}
- {name: dns, protocol: UDP, port: 5353, hostPort: 53}
clusterIPs: [10.71.2.2, 'fd71:2::2']
ipFamilies: [IPv4, IPv6]
sourceRanges: [10.71.0.0/16, 'fd71::/16']
";

fn pod_ctx() -> portway_node_agent::rules::Context {
    context(&[addr::NODE4, addr::NODE6], &["192.0.2.10"], None)
}

#[test]
fn sigterm_removes_every_rule_and_reports_shutting_down() {
    if skip("sigterm_removes_every_rule_and_reports_shutting_down") {
        return;
    }
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::On);
        let mut agent =
            AgentProc::start_in(&topo.node, spec_dir(SPEC, None), &AgentOpts::pod(mode));
        agent.wait_ready(T).expect("ready");
        assert!(!portway_lines(&topo.node.name, mode).is_empty());
        let status = agent.sigterm(T).expect("exits after SIGTERM");
        assert!(status.success(), "{mode}: clean exit\n{}", agent.log_text());
        for v6 in [false, true] {
            let dump = save_text(&topo.node.name, mode, v6);
            assert!(
                !dump.to_lowercase().contains("portway"),
                "{mode} v6={v6}: nothing of Portway's may stay:\n{dump}"
            );
        }
        assert_eq!(agent.reason(), "ShuttingDown");
        assert_eq!(agent.status()["conditions"][0]["status"], "False");
        assert!(!agent.state_dir().join("ready").exists());
        println!("iptables-{mode}: SIGTERM left no Portway rule in either family");
    }
}

#[test]
fn sigkill_and_restart_leave_exactly_one_copy_of_each_rule() {
    if skip("sigkill_and_restart_leave_exactly_one_copy_of_each_rule") {
        return;
    }
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::On);
        let _server = TcpServer::start(&topo.backend.name, sa(addr::BACKEND4, 8080));
        let want = expected(SPEC, &pod_ctx());
        let mut dir = spec_dir(SPEC, None);
        for round in 0..3 {
            let mut agent = AgentProc::start_in(&topo.node, dir, &AgentOpts::pod(mode));
            agent.wait_ready(T).expect("ready");
            wait_converged(&topo.node.name, mode, &want, T)
                .unwrap_or_else(|e| panic!("{mode} round {round}: {e}"));
            assert_eq!(duplicates(&installed(&topo.node.name, mode)), 0);
            eventually(T, || {
                tcp_whoami(
                    &topo.client.name,
                    Some(ip(addr::CLIENT4)),
                    sa(addr::NODE4, 80),
                    SHORT,
                )
            })
            .unwrap_or_else(|e| panic!("{mode} round {round}: {e}"));
            dir = agent.into_dir(); // SIGKILL: rules stay behind
            assert_eq!(
                installed(&topo.node.name, mode),
                want,
                "{mode}: SIGKILL leaves the rules"
            );
        }
        println!("iptables-{mode}: 3 SIGKILL+restart rounds, one copy of each rule");
    }
}

/// New port, removed port, changed destination, applied live from the watched file, while an
/// established connection and new connections to an untouched port keep working.
#[test]
fn live_spec_changes_keep_untouched_ports_working() {
    if skip("live_spec_changes_keep_untouched_ports_working") {
        return;
    }
    let before = "pool: p
ports:
- {name: keep, protocol: TCP, port: 8080, hostPort: 80}
- {name: gone, protocol: TCP, port: 8081, hostPort: 81}
- {name: moved, protocol: TCP, port: 8082, hostPort: 82}
clusterIPs: [10.71.2.2]
ipFamilies: [IPv4]
";
    let after = "pool: p
ports:
- {name: keep, protocol: TCP, port: 8080, hostPort: 80}
- {name: moved, protocol: TCP, port: 9082, hostPort: 82}
- {name: new, protocol: TCP, port: 8083, hostPort: 83}
clusterIPs: [10.71.2.2]
ipFamilies: [IPv4]
";
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::On);
        let b = &topo.backend.name;
        let _s80 = TcpServer::start(b, sa(addr::BACKEND4, 8080));
        let _s81 = TcpServer::start(b, sa(addr::BACKEND4, 8081));
        let s82 = TcpServer::start(b, sa(addr::BACKEND4, 8082));
        let _s9082 = TcpServer::start(b, sa(addr::BACKEND4, 9082));
        let _s83 = TcpServer::start(b, sa(addr::BACKEND4, 8083));
        let mut agent =
            AgentProc::start_in(&topo.node, spec_dir(before, None), &AgentOpts::pod(mode));
        agent.wait_ready(T).expect("ready");
        let c = topo.client.name.clone();
        let from = Some(ip(addr::CLIENT4));
        for port in [80, 81, 82] {
            eventually(T, || tcp_whoami(&c, from, sa(addr::NODE4, port), SHORT))
                .unwrap_or_else(|e| panic!("{mode} before, port {port}: {e}"));
        }
        let (mut established, _) =
            tcp_connect(&c, from, sa(addr::NODE4, 80), SHORT).expect("long-lived connection");
        tcp_echo(&mut established, b"before").expect("echo before");

        // New connections to the untouched port, all through the change.
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let prober = {
            let (stop, ok, failed, c) = (stop.clone(), ok.clone(), failed.clone(), c.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match tcp_whoami(&c, from, sa(addr::NODE4, 80), SHORT) {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        drop(s82); // the old destination of port 82 goes away
        write_atomic(&agent.dir.path().join("spec.yaml"), after);
        let want = expected(after, &pod_ctx());
        wait_converged(&topo.node.name, mode, &want, T).unwrap_or_else(|e| panic!("{mode}: {e}"));
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        prober.join().expect("prober");

        assert_eq!(
            failed.load(Ordering::SeqCst),
            0,
            "{mode}: port 80 never failed"
        );
        assert!(ok.load(Ordering::SeqCst) > 5, "{mode}: the prober ran");
        tcp_echo(&mut established, b"after").expect("the established connection survived");
        eventually(T, || tcp_whoami(&c, from, sa(addr::NODE4, 83), SHORT)).expect("new port 83");
        eventually(T, || tcp_whoami(&c, from, sa(addr::NODE4, 82), SHORT)).expect("82 -> 9082");
        assert!(
            tcp_whoami(&c, from, sa(addr::NODE4, 81), SHORT).is_err(),
            "81 removed"
        );
        let status = agent.wait_reason("RulesApplied", T).expect("status");
        let message = status["conditions"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("TCP 83") && !message.contains("TCP 81"),
            "{message}"
        );
        println!(
            "iptables-{mode}: live change applied; port 80 answered {} new connections, 0 failures",
            ok.load(Ordering::SeqCst)
        );
    }
}

const HOST_SPEC: &str = "pool: p
dataplane: Host
externalTrafficPolicy: Cluster
ports:
- {name: http, protocol: TCP, port: 80, hostPort: 80}
- {name: none, protocol: TCP, port: 81, hostPort: 81}
- {name: sig, protocol: SCTP, port: 82, hostPort: 82}
clusterIPs: [10.96.0.10, 'fd00:96::10']
ipFamilies: [IPv4, IPv6]
sourceRanges: [0.0.0.0/0, '2001:db8::/32', 'fd71::/16']
";

const HOST_ENDPOINTS: &str = "addressType: IPv4
metadata: {name: a}
endpoints:
- {addresses: [10.71.2.2], nodeName: node-a}
- {addresses: [10.71.2.3], nodeName: node-b}
- {addresses: [10.71.2.4], nodeName: node-c}
ports: [{name: http, port: 8080, protocol: TCP}, {name: sig, port: 8082, protocol: SCTP}]
---
addressType: IPv6
metadata: {name: b}
endpoints:
- {addresses: ['fd71:2::2'], nodeName: node-a}
- {addresses: ['fd71:2::3'], nodeName: node-b}
ports: [{name: http, port: 8080, protocol: TCP}]
";

/// A reconcile that finds the right rules writes nothing: after several resyncs the metrics
/// still count one changing apply per family. Covers every rule shape (statistic spreading,
/// REJECT, SCTP, source ranges with `0.0.0.0/0`, OUTPUT hooks) so a rendering that differs from
/// what iptables-save prints would show up as a rewrite on every resync.
#[test]
fn resyncs_that_find_the_rules_in_place_write_nothing() {
    if skip("resyncs_that_find_the_rules_in_place_write_nothing") {
        return;
    }
    for mode in backends() {
        for (what, spec, eps, opts) in [
            ("pod", SPEC, None, AgentOpts::pod(mode)),
            (
                "host",
                HOST_SPEC,
                Some(HOST_ENDPOINTS),
                AgentOpts::host(mode),
            ),
        ] {
            let topo = Topology::new(NodeForwarding::On);
            let opts = AgentOpts {
                extra_args: vec!["--metrics-addr".into(), "127.0.0.1:9464".into()],
                ..opts
            };
            let mut agent = AgentProc::start_in(&topo.node, spec_dir(spec, eps), &opts);
            agent.wait_ready(T).expect("ready");
            let url = sa("127.0.0.1", 9464);
            let unchanged = r#"portway_agent_applies_total{family="IPv4",result="unchanged"}"#;
            let text = eventually(T, || {
                let text = http_get(&topo.node.name, url, "/metrics")?;
                match metric(&text, unchanged) {
                    Some(n) if n >= 3.0 => Ok(text),
                    other => Err(format!("unchanged applies: {other:?}")),
                }
            })
            .unwrap_or_else(|e| panic!("{mode} {what}: {e}\n{}", agent.log_text()));
            for family in ["IPv4", "IPv6"] {
                let changed =
                    format!(r#"portway_agent_applies_total{{family="{family}",result="changed"}}"#);
                assert_eq!(
                    metric(&text, &changed),
                    Some(1.0),
                    "{mode} {what} {family}:\n{text}"
                );
            }
            let ctx = context(
                &[addr::NODE4, addr::NODE6],
                &opts.host_ips.iter().map(String::as_str).collect::<Vec<_>>(),
                eps,
            );
            let want = expected(spec, &ctx);
            assert_eq!(installed(&topo.node.name, mode), want, "{mode} {what}");
            let want_v4 = want.keys().filter(|k| k.starts_with("4 ")).count();
            assert_eq!(
                metric(&text, r#"portway_agent_rules_installed{family="IPv4"}"#),
                Some(want_v4 as f64)
            );
            assert!(text.contains("portway_agent_apply_duration_seconds_bucket"));
            assert_eq!(
                http_get(&topo.node.name, url, "/healthz")
                    .expect("healthz")
                    .trim(),
                "ok"
            );
            println!("iptables-{mode} {what} mode: 1 write, then only no-op resyncs");
        }
    }
}

/// Two Services' agents in one netns (Host mode on one node): each owns only its chains, and
/// SIGTERM of one leaves the other forwarding.
#[test]
fn agents_of_different_services_share_a_netns() {
    if skip("agents_of_different_services_share_a_netns") {
        return;
    }
    let web = "pool: p
ports: [{name: http, protocol: TCP, port: 8080, hostPort: 80}]
clusterIPs: [10.71.2.2]
ipFamilies: [IPv4]
";
    let api = "pool: p
ports: [{name: http, protocol: TCP, port: 8081, hostPort: 81}]
clusterIPs: [10.71.2.2]
ipFamilies: [IPv4]
";
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::On);
        let _a = TcpServer::start(&topo.backend.name, sa(addr::BACKEND4, 8080));
        let _b = TcpServer::start(&topo.backend.name, sa(addr::BACKEND4, 8081));
        let mut one = AgentProc::start_in(&topo.node, spec_dir(web, None), &AgentOpts::pod(mode));
        let opts = AgentOpts {
            service: "api".into(),
            ..AgentOpts::pod(mode)
        };
        let mut two = AgentProc::start_in(&topo.node, spec_dir(api, None), &opts);
        one.wait_ready(T).expect("one ready");
        two.wait_ready(T).expect("two ready");
        let c = &topo.client.name;
        let from = Some(ip(addr::CLIENT4));
        eventually(T, || tcp_whoami(c, from, sa(addr::NODE4, 80), SHORT)).expect("web");
        eventually(T, || tcp_whoami(c, from, sa(addr::NODE4, 81), SHORT)).expect("api");
        let api_rules = installed_for(&topo.node.name, mode, "api");
        assert!(one.sigterm(T).is_some_and(|s| s.success()));
        assert!(
            installed(&topo.node.name, mode).is_empty(),
            "web's rules are gone"
        );
        assert_eq!(
            installed_for(&topo.node.name, mode, "api"),
            api_rules,
            "api's are untouched"
        );
        eventually(T, || tcp_whoami(c, from, sa(addr::NODE4, 81), SHORT))
            .expect("api still forwards");
        drop(two);
    }
}

/// `portway-agent cleanup` removes every agent's rules (after SIGKILL), nothing else.
#[test]
fn cleanup_command_removes_every_agents_rules_only() {
    if skip("cleanup_command_removes_every_agents_rules_only") {
        return;
    }
    for mode in backends() {
        let topo = Topology::new(NodeForwarding::On);
        let foreign = topo.node.exec(
            &format!("iptables-{mode}"),
            &["-t", "nat", "-A", "POSTROUTING", "-o", "n1", "-j", "RETURN"],
        );
        assert!(foreign.status.success());
        let mut a = AgentProc::start_in(&topo.node, spec_dir(SPEC, None), &AgentOpts::pod(mode));
        let mut b = AgentProc::start_in(
            &topo.node,
            spec_dir(SPEC, None),
            &AgentOpts {
                service: "other".into(),
                ..AgentOpts::pod(mode)
            },
        );
        a.wait_ready(T).expect("a");
        b.wait_ready(T).expect("b");
        a.sigkill();
        b.sigkill();
        assert!(!portway_lines(&topo.node.name, mode).is_empty());
        let bin = agent_bin().display().to_string();
        let out = topo.node.exec(&bin, &["cleanup", "--iptables", mode]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            portway_lines(&topo.node.name, mode).is_empty(),
            "{:?}",
            portway_lines(&topo.node.name, mode)
        );
        assert!(save_text(&topo.node.name, mode, false).contains("-A POSTROUTING -o n1 -j RETURN"));
    }
}
