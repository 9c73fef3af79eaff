//! The iptables backend driven directly (library level) in a real netns: a stale start-up dump
//! still converges exactly, and `--iptables auto` picks a working variant. Skips when not root.

mod support;

use std::time::Duration;

use portway_crds::{DataplaneMode, IpFamily, Protocol};
use portway_node_agent::dataplane::Dataplane;
use portway_node_agent::dataplane::iptables::mode::{Dumps, Mode};
use portway_node_agent::dataplane::iptables::{Config, IptablesDataplane, RetryPolicy, render};
use portway_node_agent::rules::{FamilyRules, Forward, RuleSet};
use support::*;

fn rules() -> RuleSet {
    RuleSet {
        service: "shop/web".into(),
        mode: DataplaneMode::Pod,
        families: vec![FamilyRules {
            family: IpFamily::IPv4,
            forwards: vec![Forward {
                name: "http".into(),
                protocol: Protocol::TCP,
                port: 80,
                destinations: vec![ip(addr::NODE4)],
                targets: vec!["10.71.2.2:8080".parse().expect("sa")],
                masquerade: true,
            }],
            allowed_sources: Some(vec!["10.71.0.0/16".parse().expect("net")]),
            shared_netns: false,
        }],
        notes: vec![],
    }
}

fn dataplane(mode: Mode) -> IptablesDataplane {
    IptablesDataplane::new(Config {
        mode,
        prefix: "PORTWAY".into(),
        service: "shop/web".into(),
        lock_wait_secs: 5,
        retry: RetryPolicy::default(),
    })
}

/// The agent's first apply may start from the dumps variant detection just took. If another
/// writer installed the same rules in between, the seeded batch duplicates the jumps; the
/// fresh re-read that follows every seeded batch must remove them before apply returns.
#[test]
fn a_stale_start_up_dump_still_converges_exactly() {
    if skip("a_stale_start_up_dump_still_converges_exactly") {
        return;
    }
    for variant in backends() {
        let ns = Netns::new(&format!("{}d", unique_tag()));
        let mode = if variant == "legacy" {
            Mode::Legacy
        } else {
            Mode::Nft
        };
        let empty = Dumps {
            v4: Some(save_text(&ns.name, variant, false)),
            v6: Some(save_text(&ns.name, variant, true)),
        };
        let name = ns.name.clone();
        let rs = rules();
        in_netns(&name, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut other = dataplane(mode);
                other.apply(&rs).await.expect("first writer");
                let mut seeded = dataplane(mode).with_seed(&empty);
                let report = seeded.apply(&rs).await.expect("seeded apply");
                assert!(report.changed());
                let again = seeded.apply(&rs).await.expect("second apply");
                assert!(!again.changed(), "{variant}: converged by the first apply");
            });
        });
        let names = render::ChainNames::new("PORTWAY", "shop/web");
        let want: usize = render::desired_all(&rules(), &names)
            .values()
            .map(|d| d.rule_count())
            .sum();
        let have = installed(&ns.name, variant);
        assert_eq!(duplicates(&have), 0, "{variant}: {have:?}");
        assert_eq!(have.values().sum::<usize>(), want, "{variant}: {have:?}");
    }
}

/// `--iptables auto` in a fresh netns (no kubelet chains, no rules): the default variant, and
/// forwarding within the usual time.
#[test]
fn auto_detection_picks_a_working_variant() {
    if skip("auto_detection_picks_a_working_variant") {
        return;
    }
    let topo = Topology::new(NodeForwarding::On);
    let _server = TcpServer::start(&topo.backend.name, "10.71.2.2:8080".parse().expect("sa"));
    let spec = "pool: p\nports: [{name: http, protocol: TCP, port: 8080, hostPort: 80}]\nclusterIPs: [10.71.2.2]\nipFamilies: [IPv4]\n";
    let mut agent = AgentProc::start_in(&topo.node, spec_dir(spec, None), &AgentOpts::pod("auto"));
    agent.wait_ready(Duration::from_secs(10)).expect("ready");
    let log = agent.log_text();
    let chosen = if log.contains("iptables=nft") {
        "nft"
    } else if log.contains("iptables=legacy") {
        "legacy"
    } else {
        panic!("no variant logged:\n{log}")
    };
    assert!(
        !installed(&topo.node.name, chosen).is_empty(),
        "rules are in the {chosen} tables"
    );
    eventually(Duration::from_secs(10), || {
        tcp_whoami(
            &topo.client.name,
            Some(ip(addr::CLIENT4)),
            "10.71.1.1:80".parse().expect("sa"),
            Duration::from_millis(600),
        )
    })
    .expect("forwarding");
    println!("auto detection chose iptables-{chosen}");
}
