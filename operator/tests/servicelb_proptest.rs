//! Property tests of the pure ServiceLB core: arbitrary Services, Nodes, pools, EndpointSlices
//! and agent reports never make it panic, and its output does not depend on input order.
//! Fixed case budget (see `CASES`), so the run length is the same on every machine.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use portway_crds::{LoadBalancerPool, ServiceLoadBalancer};
use portway_operator::fixtures::{config, reported};
use portway_operator::plan::{Observed, desired_state};
use proptest::prelude::*;
use serde_json::{Value, json};

const CASES: u32 = 256;

fn pick<T: Clone + std::fmt::Debug + 'static>(items: Vec<T>) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

fn label_map() -> impl Strategy<Value = Value> {
    proptest::collection::btree_map(
        pick(vec!["zone", "role", "tier", "gpu"]),
        pick(vec!["a", "b", "", "edge"]),
        0..3,
    )
    .prop_map(|m| json!(m))
}

fn port() -> impl Strategy<Value = Value> {
    (
        pick(vec!["TCP", "UDP", "SCTP", "ICMP", ""]),
        prop_oneof![Just(0i64), Just(53), Just(80), Just(443), -5i64..70_000],
        proptest::option::of(-1i64..70_000),
        proptest::option::of(pick(vec![
            "",
            "http",
            "a-very-long-port-name-that-is-way-over-the-sixty-three-character-limit-x",
        ])),
    )
        .prop_map(|(proto, port, node_port, name)| {
            let mut p = json!({"protocol": proto, "port": port});
            if let Some(np) = node_port {
                p["nodePort"] = json!(np);
            }
            if let Some(n) = name {
                p["name"] = json!(n);
            }
            p
        })
}

fn ip() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..4, 1u8..255).prop_map(|(a, b)| format!("10.43.{a}.{b}")),
        (1u16..0xff).prop_map(|x| format!("fd00::{x:x}")),
        Just("None".to_owned()),
        Just("not-an-ip".to_owned()),
        Just(String::new()),
    ]
}

fn service(i: usize) -> impl Strategy<Value = Value> {
    (
        pick(vec![
            "LoadBalancer",
            "LoadBalancer",
            "LoadBalancer",
            "ClusterIP",
            "NodePort",
            "",
        ]),
        proptest::option::of(pick(vec!["portway.dev/servicelb", "example.com/other", ""])),
        proptest::collection::vec(port(), 0..5),
        proptest::collection::vec(ip(), 0..3),
        proptest::collection::vec(pick(vec!["IPv4", "IPv6", "IPvX"]), 0..3),
        pick(vec!["Cluster", "Local", "Bogus"]),
        proptest::collection::vec(
            pick(vec!["203.0.113.0/24", "2001:db8::/32", "junk", "10.0.0.1"]),
            0..3,
        ),
        proptest::option::of(pick(vec!["p0", "p1", "missing", ""])),
        label_map(),
        (0i64..5, any::<bool>(), any::<bool>()),
    )
        .prop_map(
            move |(
                ty,
                class,
                ports,
                ips,
                fams,
                etp,
                ranges,
                pool,
                labels,
                (created, finalizer, deleting),
            )| {
                let mut meta = json!({
                    "name": format!("svc-{i}"),
                    "namespace": format!("ns-{}", i % 3),
                    "uid": format!("uid-{i}"),
                    "labels": labels,
                    "creationTimestamp": format!("2026-01-01T00:00:0{created}Z"),
                });
                if let Some(p) = pool {
                    meta["annotations"] = json!({"portway.dev/pool": p});
                }
                if finalizer {
                    meta["finalizers"] = json!(["servicelb.portway.dev/cleanup"]);
                }
                if deleting {
                    meta["deletionTimestamp"] = json!("2026-01-02T00:00:00Z");
                }
                let mut spec = json!({
                    "type": ty, "ports": ports, "clusterIPs": ips, "ipFamilies": fams,
                    "externalTrafficPolicy": etp, "loadBalancerSourceRanges": ranges,
                });
                if let Some(c) = class {
                    spec["loadBalancerClass"] = json!(c);
                }
                json!({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec})
            },
        )
}

fn node(i: usize) -> impl Strategy<Value = Value> {
    (
        label_map(),
        proptest::collection::vec(
            (
                pick(vec!["InternalIP", "ExternalIP", "Hostname"]),
                prop_oneof![
                    (1u8..255).prop_map(|x| format!("192.168.0.{x}")),
                    (1u16..0xff).prop_map(|x| format!("2001:db8::{x:x}")),
                    Just("garbage".to_owned()),
                ],
            ),
            0..4,
        ),
    )
        .prop_map(move |(labels, addrs)| {
            let addrs: Vec<Value> = addrs
                .into_iter()
                .map(|(t, a)| json!({"type": t, "address": a}))
                .collect();
            json!({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": format!("n{i}"), "labels": labels},
                   "status": {"addresses": addrs}})
        })
}

fn pool(i: usize) -> impl Strategy<Value = Value> {
    (
        label_map(),
        -3i32..3,
        any::<bool>(),
        proptest::option::of(label_map()),
        pick(vec![
            vec!["ExternalIP", "InternalIP"],
            vec!["InternalIP"],
            vec!["ExternalIP"],
        ]),
        pick(vec!["Pod", "Host"]),
    )
        .prop_map(move |(sel, priority, auto, svc_sel, types, dp)| {
            let mut spec = json!({"nodeSelector": {"matchLabels": sel}, "priority": priority,
                                  "autoAssign": auto, "addressTypes": types, "dataplane": dp});
            if let Some(s) = svc_sel {
                spec["serviceSelector"] = json!({"matchLabels": s});
            }
            json!({"apiVersion": "portway.dev/v1alpha1", "kind": "LoadBalancerPool",
                   "metadata": {"name": format!("p{i}")}, "spec": spec})
        })
}

fn slice(i: usize) -> impl Strategy<Value = Value> {
    (0usize..6, proptest::collection::vec((0usize..6, proptest::option::of(any::<bool>())), 0..4)).prop_map(move |(svc, eps)| {
        let eps: Vec<Value> = eps
            .into_iter()
            .map(|(n, ready)| json!({"addresses": ["10.42.0.1"], "nodeName": format!("n{n}"), "conditions": {"ready": ready}}))
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
               "metadata": {"name": format!("s{i}"), "namespace": format!("ns-{}", svc % 3),
                            "labels": {"kubernetes.io/service-name": format!("svc-{svc}")}},
               "endpoints": eps})
    })
}

fn parse<T: serde::de::DeserializeOwned>(v: Vec<Value>) -> Vec<Arc<T>> {
    // Values the API server itself would refuse to store are dropped, as a watch never sees them.
    v.into_iter()
        .filter_map(|x| serde_json::from_value(x).ok())
        .map(Arc::new)
        .collect()
}

/// Services, Nodes, pools, EndpointSlices (as JSON), and the node indices whose agents forward.
type World = (Vec<Value>, Vec<Value>, Vec<Value>, Vec<Value>, Vec<usize>);

fn world() -> impl Strategy<Value = World> {
    (
        (0usize..6).prop_flat_map(|n| (0..n).map(service).collect::<Vec<_>>()),
        (0usize..6).prop_flat_map(|n| (0..n).map(node).collect::<Vec<_>>()),
        (0usize..3).prop_flat_map(|n| (0..n).map(pool).collect::<Vec<_>>()),
        (0usize..4).prop_flat_map(|n| (0..n).map(slice).collect::<Vec<_>>()),
        proptest::collection::vec(0usize..6, 0..6),
    )
}

fn observed(s: &[Value], n: &[Value], p: &[Value], e: &[Value]) -> Observed {
    Observed {
        services: parse::<Service>(s.to_vec()),
        nodes: parse::<Node>(n.to_vec()),
        pools: parse::<LoadBalancerPool>(p.to_vec()),
        endpoint_slices: parse::<EndpointSlice>(e.to_vec()),
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn core_never_panics_and_is_deterministic((s, n, p, e, fwd) in world()) {
        let mut obs = observed(&s, &n, &p, &e);
        let first = desired_state(&obs, &config());
        // Agents report on some nodes; the core runs again with what it wrote stored.
        let slbs: Vec<ServiceLoadBalancer> = first.services.iter().filter_map(|p| p.service_load_balancer.as_ref())
            .map(|slb| {
                let names: Vec<String> = fwd.iter().map(|i| format!("n{i}")).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                reported(slb, &refs)
            })
            .collect();
        obs.service_load_balancers = slbs.into_iter().map(Arc::new).collect();
        let d1 = desired_state(&obs, &config());
        let d2 = desired_state(&obs, &config());
        prop_assert_eq!(&d1, &d2);

        // Input order does not matter.
        let mut rev = obs.clone();
        rev.services.reverse();
        rev.nodes.reverse();
        rev.pools.reverse();
        rev.endpoint_slices.reverse();
        rev.service_load_balancers.reverse();
        let d3 = desired_state(&rev, &config());
        prop_assert_eq!(&d1, &d3);

        // Invariants: a published node address belongs to a node; no two placed Services hold
        // the same port on a node (usable sets are disjoint per claimed port).
        for plan in &d1.services {
            for ing in plan.ingress.iter() {
                let ip = ing.ip.clone().unwrap_or_default();
                prop_assert!(obs.nodes.iter().any(|n| n.status.as_ref().and_then(|s| s.addresses.as_ref())
                    .is_some_and(|a| a.iter().any(|x| x.address == ip))), "{} is no node's address", ip);
                prop_assert_eq!(ing.ip_mode.as_deref(), Some("VIP"));
            }
            if plan.daemonset.is_some() {
                prop_assert!(plan.service_load_balancer.is_some());
            }
        }
        let a = portway_operator::plan::assign::assign(&obs, &config());
        let placed: Vec<_> = a.services.values().filter_map(|s| match &s.placement {
            portway_operator::plan::assign::Placement::Placed(p) => Some(p),
            _ => None,
        }).collect();
        for (i, x) in placed.iter().enumerate() {
            for y in &placed[i + 1..] {
                let shared = x.shape.claims().iter().any(|c| y.shape.claims().contains(c));
                if shared {
                    prop_assert!(x.usable.and(&y.usable).is_empty(), "two Services hold one port on one node");
                }
            }
        }
    }
}

#[test]
fn proptest_budget_is_reported() {
    println!("servicelb proptest: {CASES} cases per property (fixed budget)");
}
