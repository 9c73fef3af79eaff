use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use portway_crds::{DataplaneMode, IpFamily, Protocol};

use super::super::save::{SavedRule, SavedState, SavedTable, parse};
use super::*;
use crate::rules::{FamilyRules, Forward, RuleSet};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn names() -> ChainNames {
    ChainNames::new("PORTWAY", "shop/web")
}

fn fw(protocol: Protocol, port: u16, targets: &[&str], masquerade: bool) -> Forward {
    Forward {
        name: if port == 80 {
            "http".into()
        } else {
            String::new()
        },
        protocol,
        port,
        destinations: vec![ip("10.0.0.7")],
        targets: targets.iter().map(|t| sa(t)).collect(),
        masquerade,
    }
}

fn v4(forwards: Vec<Forward>, allowed: Option<Vec<&str>>, shared_netns: bool) -> FamilyRules {
    FamilyRules {
        family: IpFamily::IPv4,
        forwards,
        allowed_sources: allowed.map(|a| a.iter().map(|n| n.parse().expect("net")).collect()),
        shared_netns,
    }
}

/// The dump a kernel would print after applying `d` onto an empty netns, plus foreign rules.
fn as_saved(d: &DesiredFamily, foreign: &[(&str, &str, &str)]) -> SavedState {
    let mut state = SavedState::default();
    for table in TABLES {
        let t = state
            .tables
            .entry(table.to_owned())
            .or_insert_with(SavedTable::default);
        for builtin in ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"] {
            t.chains.push(builtin.to_owned());
        }
        for (tb, chain, spec) in foreign {
            if *tb == table {
                t.rules
                    .entry((*chain).to_owned())
                    .or_default()
                    .push(SavedRule {
                        spec: (*spec).to_owned(),
                        counters: None,
                    });
            }
        }
        if let Some(dt) = d.tables.get(table) {
            for j in &dt.jumps {
                t.rules.entry(j.from.to_owned()).or_default().insert(
                    0,
                    SavedRule {
                        spec: j.spec.clone(),
                        counters: None,
                    },
                );
            }
            for (chain, rules) in &dt.chains {
                t.chains.push(chain.clone());
                t.rules.insert(
                    chain.clone(),
                    rules
                        .iter()
                        .map(|r| SavedRule {
                            spec: r.clone(),
                            counters: None,
                        })
                        .collect(),
                );
            }
        }
    }
    state
}

#[test]
fn chain_names_are_short_distinct_and_stable() {
    let n = names();
    assert_eq!(n.owned_prefix().len(), "PORTWAY-".len() + 11);
    assert!(n.port(Protocol::SCTP, 65535).len() <= 28);
    assert_eq!(n.dnat(), ChainNames::new("PORTWAY", "shop/web").dnat());
    assert_ne!(n.dnat(), ChainNames::new("PORTWAY", "shop/web2").dnat());
    assert!(n.dnat().starts_with("PORTWAY-"));
    let weird = ChainNames::new("pw\" x", "a\"b c/d");
    assert_eq!(weird.family_prefix(), "PORTWAY-");
    assert_eq!(weird.jump_comment(), "portway:abc/d");
    assert_eq!(ChainNames::new("PWT1", "a/b").family_prefix(), "PWT1-");
}

#[test]
fn renders_pod_mode_like_iptables_save_prints_it() {
    let rules = v4(
        vec![
            fw(Protocol::TCP, 80, &["10.96.0.10:8080"], true),
            fw(Protocol::UDP, 53, &["10.96.0.10:53"], true),
        ],
        None,
        false,
    );
    let n = names();
    let d = desired(Some(&rules), &n);
    let nat = d.tables.get("nat").expect("nat");
    let id = n.owned_prefix();
    assert_eq!(
        nat.chains.get(&n.dnat()).expect("dnat"),
        &vec![
            "-d 10.0.0.7/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.96.0.10:8080"
                .to_owned(),
            "-d 10.0.0.7/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.96.0.10:53"
                .to_owned(),
        ],
        "single targets are DNATed in the entry rule"
    );
    assert!(!nat.chains.contains_key(&n.port(Protocol::TCP, 80)));
    assert_eq!(
        nat.chains.get(&n.snat()).expect("snat"),
        &vec![
            "-m conntrack --ctstate DNAT --ctorigdst 10.0.0.7 -j MASQUERADE --random-fully"
                .to_owned()
        ],
        "the pod's own netns: one masquerade rule per address"
    );
    let froms: Vec<&str> = nat.jumps.iter().map(|j| j.from).collect();
    assert_eq!(froms, vec!["PREROUTING", "POSTROUTING"]);
    assert_eq!(
        nat.jumps[0].spec,
        format!("-m comment --comment \"portway:shop/web\" -j {id}DNAT")
    );
    assert!(
        !d.tables.contains_key("filter"),
        "no ranges, all ports have targets"
    );
    assert_eq!(d.rule_count(), 2 + 1 + 2);
}

#[test]
fn shared_netns_masquerades_each_address_and_port_exactly() {
    let rules = v4(
        vec![
            fw(Protocol::TCP, 80, &["10.244.1.2:80"], true),
            fw(Protocol::UDP, 53, &["10.244.1.2:53"], true),
        ],
        None,
        true,
    );
    let n = names();
    let d = desired(Some(&rules), &n);
    assert_eq!(
        d.tables["nat"].chains.get(&n.snat()).expect("snat"),
        &vec![
            "-p tcp -m conntrack --ctstate DNAT --ctorigdst 10.0.0.7 --ctorigdstport 80 -j MASQUERADE --random-fully".to_owned(),
            "-p udp -m conntrack --ctstate DNAT --ctorigdst 10.0.0.7 --ctorigdstport 53 -j MASQUERADE --random-fully".to_owned(),
        ]
    );
}

#[test]
fn host_mode_hooks_output_spreads_and_rejects_ports_without_endpoints() {
    let rules = v4(
        vec![
            fw(
                Protocol::TCP,
                80,
                &["10.244.1.2:80", "10.244.1.3:80", "10.244.1.4:80"],
                false,
            ),
            fw(Protocol::TCP, 443, &[], false),
        ],
        Some(vec!["192.0.2.0/24", "0.0.0.0/0"]),
        true,
    );
    let n = names();
    let d = desired(Some(&rules), &n);
    let nat = d.tables.get("nat").expect("nat");
    assert_eq!(
        nat.chains.get(&n.port(Protocol::TCP, 80)).expect("port"),
        &vec![
            "-p tcp -m statistic --mode random --probability 0.33333333349 -j DNAT --to-destination 10.244.1.2:80".to_owned(),
            "-p tcp -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.244.1.3:80".to_owned(),
            "-p tcp -j DNAT --to-destination 10.244.1.4:80".to_owned(),
        ]
    );
    assert!(!nat.chains.contains_key(&n.snat()), "Local: no SNAT");
    assert!(!nat.chains.contains_key(&n.port(Protocol::TCP, 443)));
    assert_eq!(
        nat.jumps.iter().map(|j| j.from).collect::<Vec<_>>(),
        vec!["PREROUTING", "OUTPUT"]
    );
    let filter = d.tables.get("filter").expect("filter");
    let fwc = filter.chains.get(&n.fw()).expect("fw");
    assert_eq!(fwc.len(), 3, "{fwc:?}");
    assert!(fwc[2].ends_with("-j REJECT --reject-with icmp-port-unreachable"));
    assert!(fwc[2].contains("--comment \"shop/web:tcp/443 has no endpoints\""));
    assert_eq!(
        filter.chains.get(&n.src()).expect("src"),
        &vec![
            "-s 192.0.2.0/24 -j RETURN".to_owned(),
            "-j RETURN".to_owned(),
            "-j DROP".to_owned()
        ]
    );
    assert_eq!(
        filter.jumps.iter().map(|j| j.from).collect::<Vec<_>>(),
        vec!["INPUT", "FORWARD"]
    );
    assert!(
        filter.jumps[0]
            .spec
            .starts_with("-m conntrack --ctstate NEW ")
    );
}

#[test]
fn ipv6_rules_use_brackets_128_and_icmp6() {
    let rules = FamilyRules {
        family: IpFamily::IPv6,
        forwards: vec![
            Forward {
                name: String::new(),
                protocol: Protocol::SCTP,
                port: 9,
                destinations: vec![ip("fd00::7")],
                targets: vec![sa("[fd00:96::10]:9")],
                masquerade: true,
            },
            Forward {
                name: String::new(),
                protocol: Protocol::UDP,
                port: 10,
                destinations: vec![ip("fd00::7")],
                targets: vec![],
                masquerade: true,
            },
        ],
        allowed_sources: None,
        shared_netns: false,
    };
    let d = desired(Some(&rules), &names());
    let text = format!("{d:?}");
    assert!(text.contains("-d fd00::7/128 -p sctp -m sctp --dport 9"));
    assert!(text.contains("--to-destination [fd00:96::10]:9"));
    assert!(text.contains("--reject-with icmp6-port-unreachable"));
}

#[test]
fn empty_rules_render_nothing() {
    assert_eq!(desired(None, &names()), DesiredFamily::default());
    let none = v4(vec![], None, false);
    assert_eq!(desired(Some(&none), &names()), DesiredFamily::default());
}

#[test]
fn diff_against_a_clean_netns_declares_appends_and_inserts() {
    let n = names();
    let d = desired(
        Some(&v4(
            vec![fw(Protocol::TCP, 80, &["10.96.0.10:8080"], true)],
            Some(vec!["192.0.2.0/24"]),
            false,
        )),
        &n,
    );
    let batch = diff(&SavedState::default(), &d, &n.owned_prefix()).expect("changes");
    let s = &batch.script;
    assert!(s.starts_with("*nat\n"));
    assert!(s.contains(&format!(":{} - [0:0]\n", n.dnat())));
    assert!(s.contains(&format!(
        "-I PREROUTING 1 -m comment --comment \"portway:shop/web\" -j {}\n",
        n.dnat()
    )));
    assert!(s.contains("*filter\n"));
    assert_eq!(s.matches("COMMIT\n").count(), 2);
    assert_eq!(batch.summary.jumps_inserted, 4);
    assert_eq!(batch.summary.chains_deleted, 0);
    // Every ":" declaration precedes every rule line of its table.
    for table in s.split("COMMIT\n").filter(|t| !t.is_empty()) {
        let lines: Vec<&str> = table.lines().collect();
        let last_decl = lines.iter().rposition(|l| l.starts_with(':'));
        let first_rule = lines.iter().position(|l| l.starts_with('-'));
        assert!(last_decl < first_rule, "{table}");
    }
}

#[test]
fn diff_is_empty_when_the_kernel_holds_exactly_the_desired_rules() {
    let n = names();
    let d = desired(
        Some(&v4(
            vec![fw(
                Protocol::TCP,
                80,
                &["10.96.0.10:8080", "10.96.0.11:8080"],
                true,
            )],
            Some(vec!["192.0.2.0/24"]),
            true,
        )),
        &n,
    );
    let foreign = [
        ("nat", "PREROUTING", "-j KUBE-SERVICES"),
        ("filter", "INPUT", "-p tcp -m tcp --dport 22 -j ACCEPT"),
    ];
    let current = as_saved(&d, &foreign);
    assert_eq!(diff(&current, &d, &n.owned_prefix()), None);
    assert_eq!(
        owned_rules(&current, &n.owned_prefix()).len(),
        d.rule_count()
    );
}

#[test]
fn duplicate_jumps_from_a_crash_are_deleted_and_foreign_rules_kept() {
    let n = names();
    let d = desired(
        Some(&v4(
            vec![fw(Protocol::TCP, 80, &["10.96.0.10:8080"], true)],
            None,
            false,
        )),
        &n,
    );
    let mut current = as_saved(&d, &[("nat", "PREROUTING", "-j KUBE-SERVICES")]);
    let jump = d.tables["nat"].jumps[0].spec.clone();
    current
        .tables
        .get_mut("nat")
        .expect("nat")
        .rules
        .get_mut("PREROUTING")
        .expect("prerouting")
        .push(SavedRule {
            spec: jump.clone(),
            counters: None,
        });
    let batch = diff(&current, &d, &n.owned_prefix()).expect("fix duplicates");
    assert_eq!(
        batch.script,
        format!("*nat\n-D PREROUTING {jump}\nCOMMIT\n")
    );
    assert!(!batch.script.contains("KUBE-SERVICES"));
}

#[test]
fn a_changed_port_chain_is_rewritten_alone_and_stale_chains_are_deleted() {
    let n = names();
    let two = ["10.96.0.10:8080", "10.96.0.11:8080"];
    let before = desired(
        Some(&v4(
            vec![
                fw(Protocol::TCP, 80, &two, true),
                fw(Protocol::TCP, 81, &["10.96.0.10:81", "10.96.0.11:81"], true),
            ],
            None,
            false,
        )),
        &n,
    );
    let current = as_saved(&before, &[]);
    // Change one of port 80's endpoints: only its chain is rewritten.
    let changed = desired(
        Some(&v4(
            vec![
                fw(
                    Protocol::TCP,
                    80,
                    &["10.96.0.10:8080", "10.96.0.99:8080"],
                    true,
                ),
                fw(Protocol::TCP, 81, &["10.96.0.10:81", "10.96.0.11:81"], true),
            ],
            None,
            false,
        )),
        &n,
    );
    let batch = diff(&current, &changed, &n.owned_prefix()).expect("changes");
    assert_eq!(
        batch.script,
        format!(
            "*nat\n:{c} - [0:0]\n-A {c} -p tcp -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.96.0.10:8080\n-A {c} -p tcp -j DNAT --to-destination 10.96.0.99:8080\nCOMMIT\n",
            c = n.port(Protocol::TCP, 80)
        )
    );
    // A single-target port's new destination rewrites the entry chain and nothing else.
    let single = desired(
        Some(&v4(
            vec![fw(Protocol::TCP, 90, &["10.96.0.10:90"], true)],
            None,
            false,
        )),
        &n,
    );
    let moved = desired(
        Some(&v4(
            vec![fw(Protocol::TCP, 90, &["10.96.0.12:90"], true)],
            None,
            false,
        )),
        &n,
    );
    let batch = diff(&as_saved(&single, &[]), &moved, &n.owned_prefix()).expect("changes");
    assert_eq!(batch.summary.chains_written, 1);
    assert!(batch.script.contains(&format!(":{} - [0:0]", n.dnat())));
    // Remove port 81: the entry chain is rewritten, its port chain flushed and deleted.
    let removed = desired(
        Some(&v4(vec![fw(Protocol::TCP, 80, &two, true)], None, false)),
        &n,
    );
    let batch = diff(&current, &removed, &n.owned_prefix()).expect("changes");
    let c81 = n.port(Protocol::TCP, 81);
    assert!(batch.script.contains(&format!(":{c81} - [0:0]\n")));
    assert!(batch.script.ends_with(&format!("-X {c81}\nCOMMIT\n")));
    assert!(
        !batch
            .script
            .contains(&format!(":{} ", n.port(Protocol::TCP, 80)))
    );
    assert_eq!(batch.summary.chains_deleted, 1);
}

#[test]
fn cleanup_removes_every_owned_chain_and_jump_only() {
    let n = names();
    let other = ChainNames::new("PORTWAY", "shop/other");
    let mine = desired(
        Some(&v4(
            vec![fw(Protocol::TCP, 80, &["10.96.0.10:8080"], true)],
            Some(vec!["192.0.2.0/24"]),
            false,
        )),
        &n,
    );
    let theirs = desired(
        Some(&v4(
            vec![fw(Protocol::TCP, 90, &["10.96.0.20:90"], true)],
            None,
            false,
        )),
        &other,
    );
    let mut current = as_saved(&mine, &[("nat", "PREROUTING", "-j KUBE-SERVICES")]);
    let t = as_saved(&theirs, &[]);
    for (name, table) in t.tables {
        let c = current.tables.entry(name).or_default();
        for (chain, rules) in table.rules {
            c.rules.entry(chain.clone()).or_default().extend(rules);
            if !c.chains.contains(&chain) {
                c.chains.push(chain);
            }
        }
    }
    let batch = diff(&current, &DesiredFamily::default(), &n.owned_prefix()).expect("cleanup");
    assert!(
        !batch.script.contains(&other.owned_prefix()),
        "{}",
        batch.script
    );
    assert!(!batch.script.contains("KUBE-SERVICES"));
    assert_eq!(
        batch.summary.chains_deleted, 4,
        "DNAT, SNAT, FW, SRC: one target, no port chain"
    );
    assert_eq!(batch.summary.jumps_deleted, 4);
    // With the family prefix every agent's rules go, foreign ones still stay.
    let all = diff(&current, &DesiredFamily::default(), &n.family_prefix()).expect("cleanup");
    assert!(all.script.contains(&other.dnat()));
    assert!(!all.script.contains("KUBE-SERVICES"));
    // Applying the batch to the model leaves nothing owned (checked through the parser).
    let after = parse("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n");
    assert!(owned_rules(&after, &n.family_prefix()).is_empty());
}

#[test]
fn ipv6_formatting_matches_glibc_inet_ntop() {
    let cases = [
        ("::", "::"),
        ("::1", "::1"),
        ("::1.2.3.4", "::1.2.3.4"),
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4"),
        ("::ffff:0:0", "::ffff:0.0.0.0"),
        ("2001:db8::1:0:0:1", "2001:db8::1:0:0:1"),
        ("2001:db8:0:1::", "2001:db8:0:1::"),
        ("fd00:0:0:1::", "fd00:0:0:1::"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:6"),
        ("2001:0:1:2:3:4:5:6", "2001:0:1:2:3:4:5:6"),
        ("fe80::", "fe80::"),
        ("0:0:0:1::", "0:0:0:1::"),
        ("1::", "1::"),
    ];
    for (input, want) in cases {
        let a: Ipv6Addr = input.parse().expect("v6");
        assert_eq!(fmt_ipv6(&a), want, "{input}");
    }
}

#[test]
fn probabilities_are_printed_as_iptables_stores_them() {
    assert_eq!(fmt_probability(0.5), "0.50000000000");
    assert_eq!(fmt_probability(1.0 / 3.0), "0.33333333349");
    assert_eq!(fmt_probability(0.25), "0.25000000000");
    assert_eq!(fmt_probability(1.0 / 256.0), "0.00390625000");
    assert_eq!(fmt_probability(0.333333333), "0.33333333302");
}

#[test]
fn a_whole_rule_set_renders_per_family() {
    let rs = RuleSet {
        service: "shop/web".into(),
        mode: DataplaneMode::Pod,
        families: vec![v4(
            vec![fw(Protocol::TCP, 80, &["10.96.0.10:8080"], true)],
            None,
            false,
        )],
        notes: vec![],
    };
    let all = desired_all(&rs, &names());
    assert_eq!(all.len(), 2);
    assert!(all[&IpFamily::IPv4].rule_count() > 0);
    assert_eq!(all[&IpFamily::IPv6], DesiredFamily::default());
}
