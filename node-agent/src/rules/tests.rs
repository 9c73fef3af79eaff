use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portway_crds::{
    DataplaneMode, IpFamily, LoadBalancerPort, Protocol, ServiceLoadBalancerSpec, TrafficPolicy,
};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test IP")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test socket address")
}

fn port(name: &str, protocol: Protocol, port: i32, host_port: i32) -> LoadBalancerPort {
    LoadBalancerPort {
        name: name.into(),
        protocol,
        port,
        host_port,
        node_port: None,
    }
}

fn spec(mode: DataplaneMode, policy: TrafficPolicy) -> ServiceLoadBalancerSpec {
    ServiceLoadBalancerSpec {
        pool: "workers".into(),
        dataplane: mode,
        ports: vec![
            LoadBalancerPort {
                node_port: Some(30080),
                ..port("http", Protocol::TCP, 8080, 80)
            },
            LoadBalancerPort {
                node_port: Some(30053),
                ..port("dns", Protocol::UDP, 53, 53)
            },
        ],
        cluster_ips: vec!["10.96.0.10".into(), "fd00:96::10".into()],
        ip_families: vec![IpFamily::IPv4, IpFamily::IPv6],
        external_traffic_policy: policy,
        source_ranges: vec![],
    }
}

fn ctx() -> Context {
    Context {
        namespace: "shop".into(),
        name: "web".into(),
        node_name: "node-a".into(),
        local_addresses: vec![ip("10.244.1.7"), ip("fd00:244:1::7"), ip("127.0.0.1")],
        host_ips: vec![ip("192.0.2.10"), ip("2001:db8::10")],
        endpoint_slices: vec![],
    }
}

fn endpoint(addr: &str, node: &str, ready: Option<bool>) -> Endpoint {
    Endpoint {
        addresses: vec![addr.into()],
        node_name: Some(node.into()),
        conditions: Some(EndpointConditions {
            ready,
            serving: ready,
            terminating: ready.map(|r| !r),
        }),
        ..Endpoint::default()
    }
}

fn slice(name: &str, family: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        address_type: family.into(),
        endpoints,
        ports: Some(vec![
            EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None,
            },
            EndpointPort {
                name: Some("dns".into()),
                port: Some(5353),
                protocol: Some("UDP".into()),
                app_protocol: None,
            },
        ]),
    }
}

fn family(rs: &RuleSet, f: IpFamily) -> &FamilyRules {
    rs.families
        .iter()
        .find(|x| x.family == f)
        .expect("family present")
}

#[test]
fn pod_cluster_dnats_to_the_cluster_ip_of_each_family_and_masquerades() {
    let rs = build(&spec(DataplaneMode::Pod, TrafficPolicy::Cluster), &ctx()).expect("valid");
    assert_eq!(rs.service, "shop/web");
    assert_eq!(rs.families.len(), 2);
    let v4 = family(&rs, IpFamily::IPv4);
    assert_eq!(v4.forwards.len(), 2);
    let tcp = &v4.forwards[0];
    assert_eq!((tcp.protocol, tcp.port), (Protocol::TCP, 80));
    assert_eq!(tcp.destinations, vec![ip("10.244.1.7")]);
    assert_eq!(tcp.targets, vec![sa("10.96.0.10:8080")]);
    assert!(tcp.masquerade);
    assert!(!v4.shared_netns);
    assert_eq!(v4.allowed_sources, None);
    let v6 = family(&rs, IpFamily::IPv6);
    assert_eq!(v6.forwards[1].targets, vec![sa("[fd00:96::10]:53")]);
    assert_eq!(v6.forwards[1].destinations, vec![ip("fd00:244:1::7")]);
    assert!(rs.notes.is_empty());
    assert_eq!(rs.addresses(), vec![ip("10.244.1.7"), ip("fd00:244:1::7")]);
}

#[test]
fn pod_local_dnats_to_the_node_address_and_node_port() {
    let rs = build(&spec(DataplaneMode::Pod, TrafficPolicy::Local), &ctx()).expect("valid");
    let v4 = family(&rs, IpFamily::IPv4);
    assert_eq!(v4.forwards[0].targets, vec![sa("192.0.2.10:30080")]);
    assert_eq!(
        family(&rs, IpFamily::IPv6).forwards[1].targets,
        vec![sa("[2001:db8::10]:30053")]
    );
}

#[test]
fn pod_local_without_a_node_address_of_a_family_skips_it_with_a_note() {
    let mut c = ctx();
    c.host_ips = vec![ip("192.0.2.10")];
    let rs = build(&spec(DataplaneMode::Pod, TrafficPolicy::Local), &c).expect("valid");
    assert_eq!(rs.family_list(), vec![IpFamily::IPv4]);
    assert_eq!(
        rs.notes,
        vec![Note::NoHostIp {
            family: IpFamily::IPv6
        }]
    );
}

#[test]
fn host_local_uses_only_this_nodes_ready_endpoints_without_snat() {
    let mut c = ctx();
    c.endpoint_slices = vec![
        slice(
            "web-a",
            "IPv4",
            vec![
                endpoint("10.244.1.20", "node-a", Some(true)),
                endpoint("10.244.1.21", "node-a", None),
                endpoint("10.244.1.22", "node-a", Some(false)),
                endpoint("10.244.2.30", "node-b", Some(true)),
            ],
        ),
        slice(
            "web-b",
            "IPv6",
            vec![endpoint("fd00:244:1::20", "node-a", Some(true))],
        ),
    ];
    let rs = build(&spec(DataplaneMode::Host, TrafficPolicy::Local), &c).expect("valid");
    let v4 = family(&rs, IpFamily::IPv4);
    assert!(v4.shared_netns);
    assert_eq!(
        v4.forwards[0].targets,
        vec![sa("10.244.1.20:8080"), sa("10.244.1.21:8080")],
        "ready (or unknown) endpoints of node-a only"
    );
    assert!(!v4.forwards[0].masquerade, "Local keeps the client address");
    assert_eq!(
        family(&rs, IpFamily::IPv6).forwards[1].targets,
        vec![sa("[fd00:244:1::20]:5353")]
    );
}

#[test]
fn host_cluster_uses_every_ready_endpoint_and_masquerades() {
    let mut c = ctx();
    c.endpoint_slices = vec![slice(
        "web-a",
        "IPv4",
        vec![
            endpoint("10.244.2.30", "node-b", Some(true)),
            endpoint("10.244.1.20", "node-a", Some(true)),
        ],
    )];
    let rs = build(&spec(DataplaneMode::Host, TrafficPolicy::Cluster), &c).expect("valid");
    let v4 = family(&rs, IpFamily::IPv4);
    assert_eq!(
        v4.forwards[0].targets,
        vec![sa("10.244.1.20:8080"), sa("10.244.2.30:8080")]
    );
    assert!(v4.forwards[0].masquerade);
    // No IPv6 endpoints: the IPv6 ports stay, with nothing to send to.
    let v6 = family(&rs, IpFamily::IPv6);
    assert!(v6.forwards.iter().all(|f| f.targets.is_empty()));
    assert_eq!(rs.ports_without_endpoints().len(), 2);
    assert!(rs.notes.contains(&Note::NoEndpoints {
        family: IpFamily::IPv6,
        protocol: Protocol::TCP,
        port: 80
    }));
}

#[test]
fn unusable_endpoints_are_counted_not_fatal() {
    let mut c = ctx();
    c.endpoint_slices = vec![
        slice(
            "a",
            "IPv4",
            vec![
                endpoint("not-an-ip", "node-a", Some(true)),
                endpoint("fd00::1", "node-a", Some(true)),
                endpoint("127.0.0.1", "node-a", Some(true)),
                endpoint("10.244.1.20", "node-a", Some(true)),
            ],
        ),
        slice(
            "f",
            "FQDN",
            vec![endpoint("example.com", "node-a", Some(true))],
        ),
    ];
    let rs = build(&spec(DataplaneMode::Host, TrafficPolicy::Local), &c).expect("valid");
    assert_eq!(
        family(&rs, IpFamily::IPv4).forwards[0].targets,
        vec![sa("10.244.1.20:8080")]
    );
    assert!(
        rs.notes
            .iter()
            .any(|n| matches!(n, Note::EndpointsIgnored { count: 4, .. })),
        "{:?}",
        rs.notes
    );
}

#[test]
fn endpoints_beyond_the_limit_are_truncated_with_a_note() {
    let mut c = ctx();
    let eps = (0..300)
        .map(|i| {
            endpoint(
                &format!("10.245.{}.{}", i / 250, i % 250 + 1),
                "node-a",
                Some(true),
            )
        })
        .collect();
    c.endpoint_slices = vec![slice("big", "IPv4", eps)];
    let rs = build(&spec(DataplaneMode::Host, TrafficPolicy::Cluster), &c).expect("valid");
    assert_eq!(
        family(&rs, IpFamily::IPv4).forwards[0].targets.len(),
        MAX_TARGETS_PER_PORT
    );
    assert!(
        rs.notes
            .iter()
            .any(|n| matches!(n, Note::TargetsTruncated { total: 300, .. }))
    );
}

#[test]
fn source_ranges_apply_per_family_and_deny_a_family_without_ranges() {
    let mut s = spec(DataplaneMode::Pod, TrafficPolicy::Cluster);
    s.source_ranges = vec!["203.0.113.7/24".into(), "198.51.100.0/24".into()];
    let rs = build(&s, &ctx()).expect("valid");
    assert_eq!(
        family(&rs, IpFamily::IPv4).allowed_sources,
        Some(vec![
            "198.51.100.0/24".parse().expect("net"),
            "203.0.113.0/24".parse().expect("net")
        ]),
        "sorted, host bits cleared"
    );
    assert_eq!(family(&rs, IpFamily::IPv6).allowed_sources, Some(vec![]));
    assert!(rs.notes.contains(&Note::SourceRangesExcludeFamily {
        family: IpFamily::IPv6
    }));
}

#[test]
fn no_local_address_gives_an_empty_rule_set_with_notes() {
    let mut c = ctx();
    c.local_addresses = vec![ip("127.0.0.1"), ip("fe80::1"), ip("0.0.0.0")];
    let rs = build(&spec(DataplaneMode::Pod, TrafficPolicy::Cluster), &c).expect("valid");
    assert!(rs.is_empty());
    assert_eq!(
        rs.notes,
        vec![
            Note::NoLocalAddress {
                family: IpFamily::IPv4
            },
            Note::NoLocalAddress {
                family: IpFamily::IPv6
            }
        ]
    );
}

#[test]
fn too_many_local_addresses_are_truncated() {
    let mut c = ctx();
    c.local_addresses = (1..=20).map(|i| ip(&format!("10.0.0.{i}"))).collect();
    let mut s = spec(DataplaneMode::Pod, TrafficPolicy::Cluster);
    s.cluster_ips = vec!["10.96.0.10".into()];
    s.ip_families = vec![IpFamily::IPv4];
    let rs = build(&s, &c).expect("valid");
    assert_eq!(
        family(&rs, IpFamily::IPv4).forwards[0].destinations.len(),
        MAX_LOCAL_ADDRESSES
    );
}

#[test]
fn output_does_not_depend_on_input_order() {
    let mut a = ctx();
    a.endpoint_slices = vec![
        slice(
            "x",
            "IPv4",
            vec![
                endpoint("10.244.1.20", "node-a", Some(true)),
                endpoint("10.244.1.21", "node-a", Some(true)),
            ],
        ),
        slice(
            "y",
            "IPv6",
            vec![endpoint("fd00::20", "node-a", Some(true))],
        ),
    ];
    let mut b = a.clone();
    b.local_addresses.reverse();
    b.host_ips.reverse();
    b.endpoint_slices.reverse();
    for s in &mut b.endpoint_slices {
        s.endpoints.reverse();
    }
    let mut s1 = spec(DataplaneMode::Host, TrafficPolicy::Local);
    let mut s2 = s1.clone();
    s2.ports.reverse();
    s1.source_ranges = vec!["10.0.0.0/8".into(), "fd00::/8".into()];
    s2.source_ranges = vec!["fd00::/8".into(), "10.0.0.0/8".into()];
    assert_eq!(build(&s1, &a), build(&s2, &b));
}

#[test]
fn every_invalid_spec_is_rejected_with_no_rules() {
    let base = spec(DataplaneMode::Pod, TrafficPolicy::Cluster);
    type Check = fn(&RuleError) -> bool;
    let cases: Vec<(&str, ServiceLoadBalancerSpec, Check)> = vec![
        (
            "no ports",
            ServiceLoadBalancerSpec {
                ports: vec![],
                ..base.clone()
            },
            |e| matches!(e, RuleError::NoPorts),
        ),
        (
            "port 0",
            ServiceLoadBalancerSpec {
                ports: vec![port("", Protocol::TCP, 0, 80)],
                ..base.clone()
            },
            |e| matches!(e, RuleError::InvalidPort { field: "port", .. }),
        ),
        (
            "hostPort 65536",
            ServiceLoadBalancerSpec {
                ports: vec![port("", Protocol::TCP, 80, 65536)],
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    RuleError::InvalidPort {
                        field: "hostPort",
                        value: 65536,
                        ..
                    }
                )
            },
        ),
        (
            "negative nodePort",
            ServiceLoadBalancerSpec {
                ports: vec![LoadBalancerPort {
                    node_port: Some(-1),
                    ..port("", Protocol::TCP, 80, 80)
                }],
                ..base.clone()
            },
            |e| {
                matches!(
                    e,
                    RuleError::InvalidPort {
                        field: "nodePort",
                        ..
                    }
                )
            },
        ),
        (
            "duplicate hostPort",
            ServiceLoadBalancerSpec {
                ports: vec![
                    port("a", Protocol::TCP, 80, 80),
                    port("b", Protocol::TCP, 81, 80),
                ],
                ..base.clone()
            },
            |e| matches!(e, RuleError::DuplicatePort { index: 1, .. }),
        ),
        (
            "port name with a quote",
            ServiceLoadBalancerSpec {
                ports: vec![port("x\" -j ACCEPT", Protocol::TCP, 80, 80)],
                ..base.clone()
            },
            |e| matches!(e, RuleError::InvalidPortName { .. }),
        ),
        (
            "too many ports",
            ServiceLoadBalancerSpec {
                ports: (1..=101).map(|p| port("", Protocol::TCP, p, p)).collect(),
                ..base.clone()
            },
            |e| matches!(e, RuleError::TooManyPorts(101)),
        ),
        (
            "no families",
            ServiceLoadBalancerSpec {
                ip_families: vec![],
                cluster_ips: vec![],
                ..base.clone()
            },
            |e| matches!(e, RuleError::NoFamilies),
        ),
        (
            "repeated family",
            ServiceLoadBalancerSpec {
                ip_families: vec![IpFamily::IPv4, IpFamily::IPv4],
                ..base.clone()
            },
            |e| matches!(e, RuleError::InvalidFamilies(_)),
        ),
        (
            "bad cluster IP",
            ServiceLoadBalancerSpec {
                cluster_ips: vec!["10.96.0.300".into(), "fd00::1".into()],
                ..base.clone()
            },
            |e| matches!(e, RuleError::InvalidClusterIp { index: 0, .. }),
        ),
        (
            "headless cluster IP",
            ServiceLoadBalancerSpec {
                cluster_ips: vec!["None".into()],
                ip_families: vec![IpFamily::IPv4],
                ..base.clone()
            },
            |e| matches!(e, RuleError::InvalidClusterIp { .. }),
        ),
        (
            "loopback cluster IP",
            ServiceLoadBalancerSpec {
                cluster_ips: vec!["127.0.0.1".into()],
                ip_families: vec![IpFamily::IPv4],
                ..base.clone()
            },
            |e| matches!(e, RuleError::InvalidClusterIp { .. }),
        ),
        (
            "families swapped",
            ServiceLoadBalancerSpec {
                ip_families: vec![IpFamily::IPv6, IpFamily::IPv4],
                ..base.clone()
            },
            |e| matches!(e, RuleError::FamiliesMismatch(_)),
        ),
        (
            "one cluster IP for two families",
            ServiceLoadBalancerSpec {
                cluster_ips: vec!["10.96.0.10".into()],
                ..base.clone()
            },
            |e| matches!(e, RuleError::FamiliesMismatch(_)),
        ),
        (
            "pod cluster without cluster IPs",
            ServiceLoadBalancerSpec {
                cluster_ips: vec![],
                ..base.clone()
            },
            |e| matches!(e, RuleError::MissingClusterIps),
        ),
        (
            "pod local without nodePort",
            ServiceLoadBalancerSpec {
                external_traffic_policy: TrafficPolicy::Local,
                ports: vec![port("", Protocol::TCP, 80, 80)],
                ..base.clone()
            },
            |e| matches!(e, RuleError::MissingNodePort { index: 0 }),
        ),
        (
            "bare IP source range",
            ServiceLoadBalancerSpec {
                source_ranges: vec!["10.0.0.1".into()],
                ..base.clone()
            },
            |e| matches!(e, RuleError::InvalidSourceRange { index: 0, .. }),
        ),
        (
            "source range with a bad prefix",
            ServiceLoadBalancerSpec {
                source_ranges: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()],
                ..base.clone()
            },
            |e| matches!(e, RuleError::InvalidSourceRange { index: 1, .. }),
        ),
        (
            "too many source ranges",
            ServiceLoadBalancerSpec {
                source_ranges: (0..257).map(|i| format!("10.{}.0.0/16", i % 256)).collect(),
                ..base.clone()
            },
            |e| matches!(e, RuleError::TooManySourceRanges(257)),
        ),
    ];
    for (what, s, check) in cases {
        match build(&s, &ctx()) {
            Err(e) => {
                assert!(check(&e), "{what}: unexpected error {e:?}");
                assert!(!e.to_string().is_empty());
            }
            Ok(rs) => panic!("{what}: accepted, produced {} forwards", rs.forward_count()),
        }
    }
}

#[test]
fn invalid_service_names_are_rejected() {
    let s = spec(DataplaneMode::Pod, TrafficPolicy::Cluster);
    for (ns, name) in [
        ("", "web"),
        ("shop", "Web"),
        ("shop", "a b"),
        ("shop\"", "web"),
    ] {
        let mut c = ctx();
        c.namespace = ns.into();
        c.name = name.into();
        assert!(
            matches!(build(&s, &c), Err(RuleError::InvalidServiceName { .. })),
            "{ns:?}/{name:?}"
        );
    }
    let mut c = ctx();
    c.name = "x".repeat(64);
    assert!(build(&s, &c).is_err());
}

#[test]
fn json_specs_with_unknown_protocols_or_wrong_types_are_malformed() {
    let c = ctx();
    let bad = [
        serde_json::json!({"pool": "p", "ports": [{"protocol": "ICMP", "port": 1, "hostPort": 1}], "ipFamilies": ["IPv4"]}),
        serde_json::json!({"pool": "p", "ports": [{"protocol": "TCP", "port": "80", "hostPort": 80}]}),
        serde_json::json!({"pool": "p", "ports": [{"protocol": "TCP", "port": 4294967296_i64, "hostPort": 80}]}),
        serde_json::json!({"pool": "p", "ports": "all"}),
        serde_json::json!({"pool": "p", "ports": [], "ipFamilies": ["IPv5"]}),
        serde_json::json!(null),
        serde_json::json!({"apiVersion": "portway.dev/v1alpha1", "kind": "ServiceLoadBalancer", "spec": 7}),
    ];
    for v in bad {
        assert!(
            matches!(build_from_json(&v, &c), Err(RuleError::Malformed(_))),
            "{v}"
        );
    }
    let good = serde_json::json!({
        "apiVersion": "portway.dev/v1alpha1", "kind": "ServiceLoadBalancer",
        "metadata": {"name": "web"},
        "spec": {"pool": "p", "ports": [{"protocol": "TCP", "port": 80, "hostPort": 80}],
                 "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv4"]}
    });
    let rs = build_from_json(&good, &c).expect("valid object");
    assert_eq!(rs.forward_count(), 1);
}

#[test]
fn huge_strings_in_errors_are_cut() {
    let mut s = spec(DataplaneMode::Pod, TrafficPolicy::Cluster);
    s.source_ranges = vec!["x".repeat(1 << 20)];
    match build(&s, &ctx()) {
        Err(e) => assert!(e.to_string().len() < 300, "{}", e.to_string().len()),
        Ok(_) => panic!("accepted a 1 MiB source range"),
    }
}

#[test]
fn port_names_are_dns_labels() {
    assert!(is_port_name(""));
    assert!(is_port_name("http-alt"));
    assert!(!is_port_name("-x"));
    assert!(!is_port_name("HTTP"));
    assert!(!is_port_name(&"a".repeat(64)));
    let counts: BTreeMap<bool, usize> =
        ["a", "a-", "9", "a.b"]
            .iter()
            .fold(BTreeMap::new(), |mut m, n| {
                *m.entry(is_dns_label(n)).or_default() += 1;
                m
            });
    assert_eq!(counts.get(&true), Some(&2));
}
