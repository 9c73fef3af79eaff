//! Builders of test objects shared by the unit tests, the integration tests under `tests/` and
//! the benchmarks. Not used by the operator itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use portway_crds::condition::{self, reasons, types};
use portway_crds::{LoadBalancerPool, NodeForwardingStatus, ServiceLoadBalancer};
use serde_json::{Value, json};

use crate::plan::{Config, Observed};

/// A fixed point in time, `secs` after 2026-01-01T00:00:00Z.
pub fn t(secs: i64) -> Time {
    let base = 1_767_225_600;
    Time(Timestamp::from_second(base + secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The core's configuration at the pinned time `t(1000)`.
pub fn config() -> Config {
    Config::new(t(1000))
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    match serde_json::from_value(v) {
        Ok(x) => x,
        Err(e) => panic!("fixture does not deserialize: {e}"),
    }
}

/// Parses a protocol/port list such as `["TCP/80", "UDP/53"]`.
fn ports(spec: &[&str]) -> Vec<Value> {
    spec.iter()
        .enumerate()
        .map(|(i, p)| {
            let (proto, port) = p.split_once('/').unwrap_or(("TCP", p));
            let port: i64 = port.parse().unwrap_or(0);
            json!({
                "name": format!("{}-{}", proto.to_lowercase(), port),
                "protocol": proto,
                "port": port,
                "targetPort": port,
                "nodePort": 30000 + i as i64 + (port % 2000),
            })
        })
        .collect()
}

/// A `type: LoadBalancer` IPv4 Service created at `t(created)`, with `ports` like `"TCP/80"`.
pub fn service(ns: &str, name: &str, port_specs: &[&str], created: i64) -> Service {
    let h = crate::plan::names::fnv1a(&format!("{ns}/{name}"));
    let ip = format!("10.43.{}.{}", (h >> 8) & 0xff, (h & 0xfe) + 1);
    from(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": format!("uid-{ns}-{name}"),
            "resourceVersion": "1",
            "creationTimestamp": t(created).0.to_string(),
        },
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ipFamilies": ["IPv4"],
            "externalTrafficPolicy": "Cluster",
            "ports": ports(port_specs),
        }
    }))
}

/// Makes a Service dual-stack (adds an IPv6 cluster IP).
pub fn dual_stack(mut svc: Service) -> Service {
    if let Some(spec) = svc.spec.as_mut() {
        let v4 = spec.cluster_ip.clone().unwrap_or_default();
        let v6 = format!("fd00:10:43::{}", v4.rsplit('.').next().unwrap_or("1"));
        spec.cluster_ips = Some(vec![v4, v6]);
        spec.ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
    }
    svc
}

/// Sets `externalTrafficPolicy: Local`.
pub fn local(mut svc: Service) -> Service {
    if let Some(spec) = svc.spec.as_mut() {
        spec.external_traffic_policy = Some("Local".into());
    }
    svc
}

/// Adds an annotation.
pub fn annotate(mut svc: Service, key: &str, value: &str) -> Service {
    svc.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
    svc
}

/// Adds a label.
pub fn label(mut svc: Service, key: &str, value: &str) -> Service {
    svc.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.into(), value.into());
    svc
}

/// Adds Portway's finalizer (as after a first reconcile).
pub fn finalized(mut svc: Service) -> Service {
    svc.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push(portway_crds::names::SERVICE_FINALIZER.into());
    svc
}

/// A Node with labels and `(type, address)` pairs.
pub fn node(name: &str, labels: &[(&str, &str)], addresses: &[(&str, &str)]) -> Node {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let addrs: Vec<Value> = addresses
        .iter()
        .map(|(t, a)| json!({"type": t, "address": a}))
        .collect();
    from(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "uid": format!("uid-node-{name}")},
        "status": {"addresses": addrs, "conditions": [{"type": "Ready", "status": "True"}]},
    }))
}

/// A pool selecting Nodes by `match_labels` (empty: all Nodes).
pub fn pool(name: &str, match_labels: &[(&str, &str)], priority: i32) -> LoadBalancerPool {
    let labels: BTreeMap<&str, &str> = match_labels.iter().copied().collect();
    from(json!({
        "apiVersion": "portway.dev/v1alpha1",
        "kind": "LoadBalancerPool",
        "metadata": {"name": name, "generation": 1, "uid": format!("uid-pool-{name}")},
        "spec": {"nodeSelector": {"matchLabels": labels}, "priority": priority},
    }))
}

/// Sets a pool's JSON spec fields (e.g. `{"autoAssign": false}`).
pub fn pool_with(p: LoadBalancerPool, patch: Value) -> LoadBalancerPool {
    let mut v = serde_json::to_value(&p).unwrap_or_default();
    if let (Some(spec), Value::Object(extra)) = (v["spec"].as_object_mut(), patch) {
        spec.extend(extra);
    }
    from(v)
}

/// An EndpointSlice of Service `ns/svc` with one endpoint per `(node, ready)`.
pub fn slice(ns: &str, svc: &str, endpoints: &[(&str, bool)]) -> EndpointSlice {
    let eps: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (n, ready))| {
            json!({"addresses": [format!("10.42.0.{}", i + 10)], "nodeName": n,
                   "conditions": {"ready": ready}})
        })
        .collect();
    from(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-abcde"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "endpoints": eps,
    }))
}

/// `slb` as stored after the operator applied it (generation 1), with `forwarding` agents
/// reporting `Forwarding=True`.
pub fn reported(slb: &ServiceLoadBalancer, forwarding: &[&str]) -> ServiceLoadBalancer {
    let reports: Vec<(&str, bool)> = forwarding.iter().map(|n| (*n, true)).collect();
    reported_as(slb, &reports)
}

/// `slb` as stored after the operator applied it (generation 1), with one `status.nodes` entry
/// per `(node, forwarding)`, in that order: `Forwarding=True` (`RulesApplied`) or `False`
/// (`ShuttingDown`, what a stopped agent leaves).
pub fn reported_as(slb: &ServiceLoadBalancer, reports: &[(&str, bool)]) -> ServiceLoadBalancer {
    let mut slb = slb.clone();
    slb.metadata.generation = Some(1);
    slb.metadata.uid = Some(format!(
        "uid-slb-{}",
        slb.metadata.name.clone().unwrap_or_default()
    ));
    let status = slb.status.get_or_insert_with(Default::default);
    status.nodes = reports
        .iter()
        .map(|(n, forwarding)| NodeForwardingStatus {
            node: (*n).to_owned(),
            observed_generation: Some(1),
            addresses: vec![],
            conditions: vec![if *forwarding {
                condition::new(
                    types::FORWARDING,
                    true,
                    reasons::RULES_APPLIED,
                    "rules applied",
                    Some(1),
                    &t(500),
                )
            } else {
                condition::new(
                    types::FORWARDING,
                    false,
                    reasons::SHUTTING_DOWN,
                    "the agent got SIGTERM and removed its rules",
                    Some(1),
                    &t(600),
                )
            }],
        })
        .collect();
    slb
}

/// Wraps objects for [`Observed`].
pub fn arcs<T>(v: Vec<T>) -> Vec<Arc<T>> {
    v.into_iter().map(Arc::new).collect()
}

/// A synthetic cluster: `nodes` workers, one pool over all of them, `services` Services with
/// two TCP ports each (distinct ports per Service, so no conflicts), every second one with
/// `externalTrafficPolicy: Local` and endpoints on a few nodes.
pub fn synthetic(services: usize, nodes: usize) -> Observed {
    let node_list: Vec<Node> = (0..nodes)
        .map(|i| {
            node(
                &format!("node-{i:05}"),
                &[("role", "worker")],
                &[
                    ("InternalIP", &format!("10.0.{}.{}", i / 250, i % 250 + 1)),
                    ("ExternalIP", &format!("203.0.{}.{}", i / 250, i % 250 + 1)),
                ],
            )
        })
        .collect();
    let mut svcs = Vec::with_capacity(services);
    let mut slices = Vec::new();
    for i in 0..services {
        let p1 = format!("TCP/{}", 1000 + (i * 2) % 60000);
        let p2 = format!("TCP/{}", 1001 + (i * 2) % 60000);
        let ns = format!("ns-{}", i % 50);
        let name = format!("svc-{i:05}");
        let mut s = service(&ns, &name, &[&p1, &p2], i as i64);
        if i % 2 == 1 {
            s = local(s);
        }
        let eps: Vec<(String, bool)> = (0..3)
            .map(|k| (format!("node-{:05}", (i * 7 + k) % nodes.max(1)), true))
            .collect();
        let eps_ref: Vec<(&str, bool)> = eps.iter().map(|(n, r)| (n.as_str(), *r)).collect();
        slices.push(slice(&ns, &name, &eps_ref));
        svcs.push(s);
    }
    Observed {
        services: arcs(svcs),
        nodes: arcs(node_list),
        endpoint_slices: arcs(slices),
        pools: arcs(vec![pool("all", &[("role", "worker")], 0)]),
        ..Default::default()
    }
}
