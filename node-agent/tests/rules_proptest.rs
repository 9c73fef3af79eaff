//! Property tests of the pure rule builder and its iptables rendering, with a fixed case
//! budget (issue 8 fuzzing): for arbitrary (mostly hostile) specs, contexts and JSON documents,
//! `rules::build` never panics, is deterministic and independent of input order, produces
//! rules only for valid specs, stays within its size bounds, and renders to restore input that
//! contains nothing but Portway's own chains and safe comments.

use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portway_crds::{
    DataplaneMode, IpFamily, LoadBalancerPort, Protocol, ServiceLoadBalancerSpec, TrafficPolicy,
};
use portway_node_agent::dataplane::iptables::render::{self, ChainNames};
use portway_node_agent::dataplane::iptables::save::SavedState;
use portway_node_agent::rules::{
    self, Context, MAX_LOCAL_ADDRESSES, MAX_PORTS, MAX_TARGETS_PER_PORT, RuleSet,
};
use proptest::prelude::*;

/// Written past libtest's capture so the run length shows in `cargo test` output.
fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Cases per property (fixed, so CI time is bounded: about a second each in debug builds).
const CASES: u32 = 512;

fn port_number() -> impl Strategy<Value = i32> {
    prop_oneof![
        8 => 1..=65535i32,
        1 => Just(0),
        1 => Just(65536),
        1 => any::<i32>(),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        2 => Just(String::new()),
        1 => ".{0,20}",
        1 => "[A-Z\" -]{1,70}",
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::TCP),
        Just(Protocol::UDP),
        Just(Protocol::SCTP)
    ]
}

fn lb_port() -> impl Strategy<Value = LoadBalancerPort> {
    (
        name(),
        protocol(),
        port_number(),
        port_number(),
        proptest::option::of(port_number()),
    )
        .prop_map(
            |(name, protocol, port, host_port, node_port)| LoadBalancerPort {
                name,
                protocol,
                port,
                host_port,
                node_port,
            },
        )
}

fn ip_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
        3 => any::<[u16; 8]>().prop_map(|w| std::net::Ipv6Addr::from(w).to_string()),
        1 => Just("10.96.0.10".to_owned()),
        1 => Just("fd00::10".to_owned()),
        1 => Just("None".to_owned()),
        1 => ".{0,30}",
    ]
}

fn cidr_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (any::<[u8; 4]>(), 0u8..=32).prop_map(|(o, l)| format!("{}/{l}", std::net::Ipv4Addr::from(o))),
        2 => (any::<[u16; 8]>(), 0u8..=128).prop_map(|(w, l)| format!("{}/{l}", std::net::Ipv6Addr::from(w))),
        1 => (any::<[u8; 4]>(), 33u8..=255).prop_map(|(o, l)| format!("{}/{l}", std::net::Ipv4Addr::from(o))),
        1 => ".{0,40}",
    ]
}

fn family() -> impl Strategy<Value = IpFamily> {
    prop_oneof![Just(IpFamily::IPv4), Just(IpFamily::IPv6)]
}

fn hostile_spec() -> impl Strategy<Value = ServiceLoadBalancerSpec> {
    (
        prop_oneof![Just(DataplaneMode::Pod), Just(DataplaneMode::Host)],
        prop_oneof![
            6 => proptest::collection::vec(lb_port(), 1..6),
            1 => proptest::collection::vec(lb_port(), 0..130),
        ],
        proptest::collection::vec(ip_string(), 0..3),
        proptest::collection::vec(family(), 0..3),
        prop_oneof![Just(TrafficPolicy::Cluster), Just(TrafficPolicy::Local)],
        proptest::collection::vec(cidr_string(), 0..5),
    )
        .prop_map(
            |(dataplane, ports, cluster_ips, ip_families, policy, source_ranges)| {
                ServiceLoadBalancerSpec {
                    pool: "p".into(),
                    dataplane,
                    ports,
                    cluster_ips,
                    ip_families,
                    external_traffic_policy: policy,
                    source_ranges,
                }
            },
        )
}

/// A coherent spec: unique valid ports, families matching the cluster IPs, valid ranges.
fn valid_spec() -> impl Strategy<Value = ServiceLoadBalancerSpec> {
    let families = prop_oneof![
        Just(vec![IpFamily::IPv4]),
        Just(vec![IpFamily::IPv6]),
        Just(vec![IpFamily::IPv4, IpFamily::IPv6]),
        Just(vec![IpFamily::IPv6, IpFamily::IPv4]),
    ];
    (
        prop_oneof![Just(DataplaneMode::Pod), Just(DataplaneMode::Host)],
        prop_oneof![Just(TrafficPolicy::Cluster), Just(TrafficPolicy::Local)],
        proptest::collection::btree_map(
            (protocol(), 1u16..=65535),
            (1..=65535i32, 30000..=32767i32),
            1..8,
        ),
        families,
        (1u8..=254, 1u16..=0xfffe),
        proptest::collection::vec(
            prop_oneof![
                (any::<[u8; 4]>(), 8u8..=32)
                    .prop_map(|(o, l)| format!("{}/{l}", std::net::Ipv4Addr::from(o))),
                (any::<[u16; 8]>(), 16u8..=128)
                    .prop_map(|(w, l)| format!("{}/{l}", std::net::Ipv6Addr::from(w))),
            ],
            0..4,
        ),
        "[a-z]{1,6}",
    )
        .prop_map(
            |(dataplane, policy, ports, ip_families, (v4, v6), source_ranges, pname)| {
                let cluster_ips = ip_families
                    .iter()
                    .map(|f| match f {
                        IpFamily::IPv4 => format!("10.96.0.{v4}"),
                        IpFamily::IPv6 => format!("fd00:96::{v6:x}"),
                    })
                    .collect();
                ServiceLoadBalancerSpec {
                    pool: "p".into(),
                    dataplane,
                    ports: ports
                        .into_iter()
                        .enumerate()
                        .map(
                            |(i, ((protocol, host_port), (port, node_port)))| LoadBalancerPort {
                                name: format!("{pname}{i}"),
                                protocol,
                                port,
                                host_port: i32::from(host_port),
                                node_port: Some(node_port),
                            },
                        )
                        .collect(),
                    cluster_ips,
                    ip_families,
                    external_traffic_policy: policy,
                    source_ranges,
                }
            },
        )
}

/// Mostly coherent specs (so the properties are not vacuous), many hostile ones.
fn spec() -> impl Strategy<Value = ServiceLoadBalancerSpec> {
    prop_oneof![3 => valid_spec(), 2 => hostile_spec()]
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u16; 8]>().prop_map(IpAddr::from),
        Just(
            "127.0.0.1"
                .parse::<IpAddr>()
                .unwrap_or(IpAddr::from([127, 0, 0, 1]))
        ),
    ]
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        proptest::collection::vec(ip_string(), 0..2),
        proptest::option::of(any::<bool>()),
        prop_oneof![
            Just(None),
            Just(Some("node-a".to_owned())),
            Just(Some("node-b".to_owned()))
        ],
    )
        .prop_map(|(addresses, ready, node_name)| Endpoint {
            addresses,
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating: None,
            }),
            node_name,
            ..Endpoint::default()
        })
}

fn endpoint_port() -> impl Strategy<Value = EndpointPort> {
    (
        proptest::option::of(name()),
        proptest::option::of(port_number()),
        proptest::option::of(prop_oneof![
            Just("TCP".to_owned()),
            Just("UDP".to_owned()),
            Just("SCTP".to_owned()),
            ".{0,5}"
        ]),
    )
        .prop_map(|(name, port, protocol)| EndpointPort {
            name,
            port,
            protocol,
            app_protocol: None,
        })
}

fn slice() -> impl Strategy<Value = EndpointSlice> {
    (
        prop_oneof![
            Just("IPv4".to_owned()),
            Just("IPv6".to_owned()),
            Just("FQDN".to_owned()),
            ".{0,5}"
        ],
        proptest::collection::vec(endpoint(), 0..6),
        proptest::option::of(proptest::collection::vec(endpoint_port(), 0..3)),
        "[a-z]{1,5}",
    )
        .prop_map(|(address_type, endpoints, ports, name)| EndpointSlice {
            address_type,
            endpoints,
            metadata: ObjectMeta {
                name: Some(name),
                ..ObjectMeta::default()
            },
            ports,
        })
}

fn context() -> impl Strategy<Value = Context> {
    (
        prop_oneof![6 => Just("shop".to_owned()), 1 => name()],
        prop_oneof![6 => Just("web".to_owned()), 1 => name()],
        (
            proptest::collection::vec(ip(), 0..12),
            proptest::sample::subsequence(vec!["10.244.1.7", "fd00:244::7", "192.0.2.10"], 0..=3),
        )
            .prop_map(|(mut random, fixed)| {
                random.extend(fixed.into_iter().filter_map(|a| a.parse::<IpAddr>().ok()));
                random
            }),
        prop_oneof![
            proptest::collection::vec(ip(), 0..3),
            Just(vec![
                IpAddr::from([192, 0, 2, 10]),
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10])
            ]),
        ],
        proptest::collection::vec(slice(), 0..3),
    )
        .prop_map(
            |(namespace, name, local_addresses, host_ips, endpoint_slices)| Context {
                namespace,
                name,
                node_name: "node-a".into(),
                local_addresses,
                host_ips,
                endpoint_slices,
            },
        )
}

fn reversed(ctx: &Context) -> Context {
    let mut r = ctx.clone();
    r.local_addresses.reverse();
    r.host_ips.reverse();
    r.endpoint_slices.reverse();
    for s in &mut r.endpoint_slices {
        s.endpoints.reverse();
    }
    r
}

fn restore_scripts(rs: &RuleSet) -> Vec<String> {
    let names = ChainNames::new("PORTWAY", &rs.service);
    render::desired_all(rs, &names)
        .values()
        .filter_map(|d| render::diff(&SavedState::default(), d, &names.owned_prefix()))
        .map(|b| b.script)
        .collect()
}

fn check_invariants(spec: &ServiceLoadBalancerSpec, rs: &RuleSet) -> Result<(), TestCaseError> {
    prop_assert!(!spec.ports.is_empty() && spec.ports.len() <= MAX_PORTS);
    for p in &spec.ports {
        prop_assert!((1..=65535).contains(&p.port) && (1..=65535).contains(&p.host_port));
    }
    let host_ports: Vec<(Protocol, u16)> = spec
        .ports
        .iter()
        .map(|p| (p.protocol, u16::try_from(p.host_port).unwrap_or(0)))
        .collect();
    for f in &rs.families {
        prop_assert!(f.forwards.len() <= spec.ports.len());
        for fw in &f.forwards {
            prop_assert!(host_ports.contains(&(fw.protocol, fw.port)));
            prop_assert!(
                !fw.destinations.is_empty() && fw.destinations.len() <= MAX_LOCAL_ADDRESSES
            );
            prop_assert!(fw.targets.len() <= MAX_TARGETS_PER_PORT);
            for d in &fw.destinations {
                prop_assert_eq!(rules::family_of(d), f.family);
                prop_assert!(rules::is_usable(d));
            }
            for t in &fw.targets {
                prop_assert_eq!(rules::family_of(&t.ip()), f.family);
            }
        }
    }
    for script in restore_scripts(rs) {
        for line in script.lines() {
            let ok = line.starts_with('*')
                || line.starts_with(":PORTWAY-")
                || line.starts_with("-A PORTWAY-")
                || line.starts_with("-I PREROUTING 1 ")
                || line.starts_with("-I POSTROUTING 1 ")
                || line.starts_with("-I OUTPUT 1 ")
                || line.starts_with("-I INPUT 1 ")
                || line.starts_with("-I FORWARD 1 ")
                || line == "COMMIT";
            prop_assert!(ok, "unexpected restore line {:?}", line);
            // Exactly two quotes per comment, and nothing outside the safe set inside them.
            if let Some((_, rest)) = line.split_once("--comment \"") {
                let (comment, after) = rest.split_once('"').unwrap_or((rest, ""));
                prop_assert!(
                    comment
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || " -./:_".contains(c)),
                    "unsafe comment {:?}",
                    comment
                );
                prop_assert!(!after.contains('"'));
            }
        }
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs `check` on `CASES` generated inputs; returns (accepted, rejected). Panics inside the
/// builder are caught by the runner and fail the test with the shrunk input.
fn run<S: Strategy>(
    strategy: S,
    check: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) -> (usize, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let ok = AtomicUsize::new(0);
    let rejected = AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let result = runner.run(&strategy, |v| {
        if check(v)? {
            ok.fetch_add(1, Ordering::SeqCst);
        } else {
            rejected.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    (ok.into_inner(), rejected.into_inner())
}

#[test]
fn build_is_total_deterministic_and_bounded() {
    let (ok, rejected) = run((spec(), context()), |(spec, ctx)| {
        let a = rules::build(&spec, &ctx);
        let b = rules::build(&spec, &ctx);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(
            &a,
            &rules::build(&spec, &reversed(&ctx)),
            "input order matters"
        );
        match &a {
            Ok(rs) => {
                check_invariants(&spec, rs)?;
                prop_assert_eq!(restore_scripts(rs), restore_scripts(rs));
                Ok(true)
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                Ok(false)
            }
        }
    });
    note(&format!(
        "rules-fuzz: {} spec+context cases: {ok} built rules, {rejected} rejected, 0 panics",
        ok + rejected
    ));
    assert!(
        ok >= (CASES as usize) / 20,
        "too few valid specs ({ok}): the property would be vacuous"
    );
    assert!(
        rejected >= (CASES as usize) / 20,
        "too few invalid specs ({rejected})"
    );
}

#[test]
fn arbitrary_json_never_panics() {
    let (ok, rejected) = run((json(), context()), |(value, ctx)| {
        let a = rules::build_from_json(&value, &ctx);
        prop_assert_eq!(&a, &rules::build_from_json(&value, &ctx));
        match &a {
            Ok(rs) => {
                let spec_value = match value.get("spec") {
                    Some(s) if value.get("kind").is_some() => s.clone(),
                    _ => value.clone(),
                };
                let spec: ServiceLoadBalancerSpec = serde_json::from_value(spec_value)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                check_invariants(&spec, rs)?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    });
    note(&format!(
        "rules-fuzz: {} JSON documents: {ok} built rules, {rejected} rejected, 0 panics",
        ok + rejected
    ));
    assert!(
        ok > 0,
        "no JSON document was valid: the generator is broken"
    );
}

/// JSON documents shaped like specs, with arbitrary values at every level.
fn random_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        port_number().prop_map(serde_json::Value::from),
        prop_oneof![
            Just("TCP".to_owned()),
            Just("UDP".to_owned()),
            Just("SCTP".to_owned()),
            Just("ICMP".to_owned()),
            Just("IPv4".to_owned()),
            Just("IPv6".to_owned()),
            Just("Local".to_owned()),
            Just("Host".to_owned()),
            ip_string(),
            cidr_string(),
        ]
        .prop_map(serde_json::Value::from),
    ];
    let any_value = leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("protocol".to_owned()),
                    Just("port".to_owned()),
                    Just("hostPort".to_owned()),
                    Just("nodePort".to_owned()),
                    Just("name".to_owned()),
                    "[a-zA-Z]{1,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let port_obj = (
        protocol(),
        port_number(),
        port_number(),
        proptest::option::of(port_number()),
        any_value.clone(),
    )
        .prop_map(|(p, port, hp, np, extra)| {
            let mut m = serde_json::json!({"protocol": p.as_str(), "port": port, "hostPort": hp});
            if let Some(np) = np {
                m["nodePort"] = serde_json::Value::from(np);
            }
            if extra.is_object() {
                m["extra"] = extra;
            }
            m
        });
    (
        proptest::collection::vec(prop_oneof![4 => port_obj, 1 => any_value.clone()], 0..5),
        proptest::collection::vec(ip_string(), 0..3),
        proptest::collection::vec(prop_oneof![Just("IPv4"), Just("IPv6"), Just("IPv5")], 0..3),
        proptest::collection::vec(cidr_string(), 0..3),
        any_value,
        any::<bool>(),
    )
        .prop_map(|(ports, ips, fams, ranges, junk, wrap)| {
            let spec = serde_json::json!({
                "pool": "p",
                "ports": ports,
                "clusterIPs": ips,
                "ipFamilies": fams,
                "sourceRanges": ranges,
                "junk": junk,
            });
            if wrap {
                serde_json::json!({"apiVersion": "portway.dev/v1alpha1", "kind": "ServiceLoadBalancer", "spec": spec})
            } else {
                spec
            }
        })
}

/// JSON documents: valid specs with one field replaced by an arbitrary value, and documents
/// shaped like specs with arbitrary values everywhere.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let mutated = (
        valid_spec(),
        prop_oneof![
            Just("pool"),
            Just("dataplane"),
            Just("ports"),
            Just("port0.protocol"),
            Just("port0.port"),
            Just("port0.hostPort"),
            Just("clusterIPs"),
            Just("ipFamilies"),
            Just("externalTrafficPolicy"),
            Just("sourceRanges"),
            Just("none"),
        ],
        random_json(),
    )
        .prop_map(|(spec, field, junk)| {
            let mut v = serde_json::to_value(&spec).unwrap_or(serde_json::Value::Null);
            let junk = junk.get("junk").cloned().unwrap_or(serde_json::Value::Null);
            match field.split_once('.') {
                Some((_, key)) => {
                    if let Some(p) = v.get_mut("ports").and_then(|p| p.get_mut(0)) {
                        p[key] = junk;
                    }
                }
                None if field != "none" => v[field] = junk,
                None => {}
            }
            v
        });
    prop_oneof![2 => mutated, 1 => random_json()]
}
