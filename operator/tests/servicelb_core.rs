//! Table-driven tests of the pure ServiceLB core (`plan::desired_state`): no cluster, no clock.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use portway_crds::condition::{self, reasons, types};
use portway_crds::{LoadBalancerPool, ServiceLoadBalancer};
use portway_operator::fixtures::*;
use portway_operator::plan::{
    self, Desired, FinalizerAction, Key, Observed, ServicePlan, ServiceState, desired_state,
};
use serde_json::json;

/// Runs the core twice: first to get the ServiceLoadBalancers the operator would write, then
/// with those stored and `forwarding[svc]` agents reporting `Forwarding=True` — the state after
/// agents started.
fn converge(
    services: Vec<Service>,
    nodes: Vec<Node>,
    pools: Vec<LoadBalancerPool>,
    slices: Vec<EndpointSlice>,
    forwarding: &[(&str, &[&str])],
) -> Desired {
    let mut observed = Observed {
        services: arcs(services),
        nodes: arcs(nodes),
        pools: arcs(pools),
        endpoint_slices: arcs(slices),
        ..Default::default()
    };
    let first = desired_state(&observed, &config());
    let forwarding: BTreeMap<&str, &[&str]> = forwarding.iter().copied().collect();
    let slbs: Vec<ServiceLoadBalancer> = first
        .services
        .iter()
        .filter_map(|p| {
            let slb = p.service_load_balancer.as_ref()?;
            let name = p.service.to_string();
            Some(reported(
                slb,
                forwarding.get(name.as_str()).copied().unwrap_or(&[]),
            ))
        })
        .collect();
    observed.service_load_balancers = arcs(slbs);
    desired_state(&observed, &config())
}

fn find<'a>(d: &'a Desired, key: &str) -> &'a ServicePlan {
    d.services
        .iter()
        .find(|p| p.service.to_string() == key)
        .unwrap_or_else(|| {
            panic!(
                "no plan for {key}: {:?}",
                d.services
                    .iter()
                    .map(|p| p.service.to_string())
                    .collect::<Vec<_>>()
            )
        })
}

fn ips(p: &ServicePlan) -> Vec<String> {
    p.ingress.iter().filter_map(|i| i.ip.clone()).collect()
}

fn ready_reason(p: &ServicePlan) -> String {
    condition::find(&p.conditions, types::READY)
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

fn workers() -> Vec<Node> {
    vec![
        node(
            "w1",
            &[("role", "worker"), ("zone", "a")],
            &[("InternalIP", "192.168.0.1"), ("ExternalIP", "203.0.113.1")],
        ),
        node(
            "w2",
            &[("role", "worker"), ("zone", "b")],
            &[("InternalIP", "192.168.0.2")],
        ),
        node(
            "w3",
            &[("role", "worker"), ("zone", "a")],
            &[
                ("InternalIP", "192.168.0.3"),
                ("InternalIP", "fd00::3"),
                ("ExternalIP", "2001:db8::3"),
            ],
        ),
    ]
}

struct Case {
    name: &'static str,
    services: Vec<Service>,
    pools: Vec<LoadBalancerPool>,
    slices: Vec<EndpointSlice>,
    forwarding: Vec<(&'static str, &'static [&'static str])>,
    expect: Vec<Expect>,
}

/// (service, state, pool, ingress, Ready reason)
type Expect = (
    &'static str,
    ServiceState,
    Option<&'static str>,
    Vec<&'static str>,
    &'static str,
);

fn cases() -> Vec<Case> {
    let all = || pool("all", &[("role", "worker")], 0);
    vec![
        Case {
            name: "highest priority pool wins",
            services: vec![service("ns", "web", &["TCP/80"], 1)],
            pools: vec![all(), pool("zone-a", &[("zone", "a")], 10)],
            slices: vec![],
            forwarding: vec![("ns/web", &["w1", "w3"])],
            expect: vec![(
                "ns/web",
                ServiceState::Serving,
                Some("zone-a"),
                vec!["203.0.113.1", "192.168.0.3"],
                reasons::AGENTS_FORWARDING,
            )],
        },
        Case {
            name: "equal priority: smallest pool name wins",
            services: vec![service("ns", "web", &["TCP/80"], 1)],
            pools: vec![
                pool("zz", &[("role", "worker")], 5),
                pool("aa", &[("zone", "a")], 5),
            ],
            slices: vec![],
            forwarding: vec![("ns/web", &["w1"])],
            expect: vec![(
                "ns/web",
                ServiceState::Serving,
                Some("aa"),
                vec!["203.0.113.1"],
                reasons::AGENTS_FORWARDING,
            )],
        },
        Case {
            name: "annotation beats priority; autoAssign false pools only by annotation",
            services: vec![
                annotate(
                    service("ns", "pinned", &["TCP/80"], 1),
                    "portway.dev/pool",
                    "manual",
                ),
                service("ns", "auto", &["TCP/81"], 2),
            ],
            pools: vec![
                all(),
                pool_with(
                    pool("manual", &[("zone", "b")], 100),
                    json!({"autoAssign": false}),
                ),
            ],
            slices: vec![],
            forwarding: vec![("ns/pinned", &["w2"]), ("ns/auto", &["w1", "w2", "w3"])],
            expect: vec![
                (
                    "ns/pinned",
                    ServiceState::Serving,
                    Some("manual"),
                    vec!["192.168.0.2"],
                    reasons::AGENTS_FORWARDING,
                ),
                (
                    "ns/auto",
                    ServiceState::Serving,
                    Some("all"),
                    vec!["203.0.113.1", "192.168.0.2", "192.168.0.3"],
                    reasons::AGENTS_FORWARDING,
                ),
            ],
        },
        Case {
            name: "annotation naming a missing pool",
            services: vec![annotate(
                service("ns", "web", &["TCP/80"], 1),
                "portway.dev/pool",
                "nope",
            )],
            pools: vec![all()],
            slices: vec![],
            forwarding: vec![],
            expect: vec![(
                "ns/web",
                ServiceState::NoPool,
                None,
                vec![],
                reasons::POOL_NOT_FOUND,
            )],
        },
        Case {
            name: "no pool matches (service selector)",
            services: vec![service("ns", "web", &["TCP/80"], 1)],
            pools: vec![pool_with(
                all(),
                json!({"serviceSelector": {"matchLabels": {"tier": "edge"}}}),
            )],
            slices: vec![],
            forwarding: vec![],
            expect: vec![(
                "ns/web",
                ServiceState::NoPool,
                None,
                vec![],
                reasons::NO_MATCHING_POOL,
            )],
        },
        Case {
            name: "a node in two pools serves Services of both",
            services: vec![
                service("ns", "a", &["TCP/80"], 1),
                annotate(
                    service("ns", "b", &["TCP/81"], 2),
                    "portway.dev/pool",
                    "zone-a",
                ),
            ],
            pools: vec![
                all(),
                pool_with(
                    pool("zone-a", &[("zone", "a")], -5),
                    json!({"autoAssign": false}),
                ),
            ],
            slices: vec![],
            forwarding: vec![("ns/a", &["w1"]), ("ns/b", &["w1"])],
            expect: vec![
                (
                    "ns/a",
                    ServiceState::Serving,
                    Some("all"),
                    vec!["203.0.113.1"],
                    reasons::AGENTS_FORWARDING,
                ),
                (
                    "ns/b",
                    ServiceState::Serving,
                    Some("zone-a"),
                    vec!["203.0.113.1"],
                    reasons::AGENTS_FORWARDING,
                ),
            ],
        },
        Case {
            name: "eTP Local publishes only forwarding nodes with ready endpoints",
            services: vec![local(service("ns", "web", &["TCP/80"], 1))],
            pools: vec![all()],
            slices: vec![slice("ns", "web", &[("w2", true), ("w3", false)])],
            forwarding: vec![("ns/web", &["w1", "w2", "w3"])],
            expect: vec![(
                "ns/web",
                ServiceState::Serving,
                Some("all"),
                vec!["192.168.0.2"],
                reasons::AGENTS_FORWARDING,
            )],
        },
        Case {
            name: "eTP Local without ready endpoints publishes nothing",
            services: vec![local(service("ns", "web", &["TCP/80"], 1))],
            pools: vec![all()],
            slices: vec![slice("ns", "web", &[("w3", false)])],
            forwarding: vec![("ns/web", &["w1", "w2", "w3"])],
            expect: vec![(
                "ns/web",
                ServiceState::NoEndpoints,
                Some("all"),
                vec![],
                reasons::NO_READY_ENDPOINTS,
            )],
        },
        Case {
            name: "eTP Cluster ignores where endpoints are",
            services: vec![service("ns", "web", &["TCP/80"], 1)],
            pools: vec![all()],
            slices: vec![slice("ns", "web", &[("w3", true)])],
            forwarding: vec![("ns/web", &["w2"])],
            expect: vec![(
                "ns/web",
                ServiceState::Serving,
                Some("all"),
                vec!["192.168.0.2"],
                reasons::AGENTS_FORWARDING,
            )],
        },
        Case {
            name: "InternalIP first when the pool asks for it",
            services: vec![service("ns", "web", &["TCP/80"], 1)],
            pools: vec![pool_with(
                all(),
                json!({"addressTypes": ["InternalIP", "ExternalIP"]}),
            )],
            slices: vec![],
            forwarding: vec![("ns/web", &["w1", "w2"])],
            expect: vec![(
                "ns/web",
                ServiceState::Serving,
                Some("all"),
                vec!["192.168.0.1", "192.168.0.2"],
                reasons::AGENTS_FORWARDING,
            )],
        },
        Case {
            name: "ExternalIP only: nodes without one are not published",
            services: vec![service("ns", "web", &["TCP/80"], 1)],
            pools: vec![pool_with(all(), json!({"addressTypes": ["ExternalIP"]}))],
            slices: vec![],
            forwarding: vec![("ns/web", &["w2"])],
            expect: vec![(
                "ns/web",
                ServiceState::Waiting,
                Some("all"),
                vec![],
                reasons::NO_NODE_ADDRESSES,
            )],
        },
        Case {
            name: "dual-stack: per family, first address type present",
            services: vec![dual_stack(service("ns", "dns", &["UDP/53", "TCP/53"], 1))],
            pools: vec![all()],
            slices: vec![],
            forwarding: vec![("ns/dns", &["w1", "w3"])],
            expect: vec![(
                "ns/dns",
                ServiceState::Serving,
                Some("all"),
                vec!["203.0.113.1", "192.168.0.3", "2001:db8::3"],
                reasons::AGENTS_FORWARDING,
            )],
        },
        Case {
            name: "agents not forwarding yet",
            services: vec![service("ns", "web", &["TCP/80"], 1)],
            pools: vec![all()],
            slices: vec![],
            forwarding: vec![],
            expect: vec![(
                "ns/web",
                ServiceState::Waiting,
                Some("all"),
                vec![],
                reasons::AGENTS_NOT_FORWARDING,
            )],
        },
        Case {
            name: "pool without nodes",
            services: vec![service("ns", "web", &["TCP/80"], 1)],
            pools: vec![pool("gpu", &[("gpu", "yes")], 0)],
            slices: vec![],
            forwarding: vec![],
            expect: vec![(
                "ns/web",
                ServiceState::NoNodes,
                Some("gpu"),
                vec![],
                reasons::POOL_HAS_NO_NODES,
            )],
        },
        Case {
            name: "UDP and TCP on the same port do not conflict",
            services: vec![
                service("ns", "dns-udp", &["UDP/53"], 1),
                service("ns", "dns-tcp", &["TCP/53"], 2),
            ],
            pools: vec![all()],
            slices: vec![],
            forwarding: vec![("ns/dns-udp", &["w2"]), ("ns/dns-tcp", &["w2"])],
            expect: vec![
                (
                    "ns/dns-udp",
                    ServiceState::Serving,
                    Some("all"),
                    vec!["192.168.0.2"],
                    reasons::AGENTS_FORWARDING,
                ),
                (
                    "ns/dns-tcp",
                    ServiceState::Serving,
                    Some("all"),
                    vec!["192.168.0.2"],
                    reasons::AGENTS_FORWARDING,
                ),
            ],
        },
        Case {
            name: "same port on every eligible node: the newer Service is in conflict",
            services: vec![
                service("ns", "new", &["TCP/80"], 20),
                service("ns", "old", &["TCP/80"], 10),
            ],
            pools: vec![all()],
            slices: vec![],
            forwarding: vec![("ns/old", &["w2"]), ("ns/new", &["w2"])],
            expect: vec![
                (
                    "ns/old",
                    ServiceState::Serving,
                    Some("all"),
                    vec!["192.168.0.2"],
                    reasons::AGENTS_FORWARDING,
                ),
                (
                    "ns/new",
                    ServiceState::PortConflict,
                    Some("all"),
                    vec![],
                    reasons::PORT_IN_USE,
                ),
            ],
        },
        Case {
            name: "same port, partly overlapping pools: the newer Service keeps the free nodes",
            services: vec![
                annotate(
                    service("ns", "old", &["TCP/80"], 10),
                    "portway.dev/pool",
                    "zone-a",
                ),
                service("ns", "new", &["TCP/80"], 20),
            ],
            pools: vec![
                all(),
                pool_with(
                    pool("zone-a", &[("zone", "a")], 0),
                    json!({"autoAssign": false}),
                ),
            ],
            slices: vec![],
            // A stale report from w1 (blocked for "new") must not be published.
            forwarding: vec![("ns/old", &["w1", "w3"]), ("ns/new", &["w1", "w2"])],
            expect: vec![
                (
                    "ns/old",
                    ServiceState::Serving,
                    Some("zone-a"),
                    vec!["203.0.113.1", "192.168.0.3"],
                    reasons::AGENTS_FORWARDING,
                ),
                (
                    "ns/new",
                    ServiceState::Serving,
                    Some("all"),
                    vec!["192.168.0.2"],
                    reasons::AGENTS_FORWARDING,
                ),
            ],
        },
        Case {
            name: "Service with no ports is invalid, not a panic",
            services: vec![service("ns", "empty", &[], 1)],
            pools: vec![all()],
            slices: vec![],
            forwarding: vec![],
            expect: vec![(
                "ns/empty",
                ServiceState::Invalid,
                None,
                vec![],
                reasons::INVALID_SERVICE,
            )],
        },
        Case {
            name: "unsupported protocol is invalid",
            services: vec![service("ns", "weird", &["ICMP/1"], 1)],
            pools: vec![all()],
            slices: vec![],
            forwarding: vec![],
            expect: vec![(
                "ns/weird",
                ServiceState::Invalid,
                None,
                vec![],
                reasons::INVALID_SERVICE,
            )],
        },
    ]
}

#[test]
fn core_table() {
    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        let forwarding: Vec<(&str, &[&str])> = case.forwarding.clone();
        let d = converge(
            case.services.clone(),
            workers(),
            case.pools.clone(),
            case.slices.clone(),
            &forwarding,
        );
        for (svc, state, pool, ingress, reason) in &case.expect {
            let p = find(&d, svc);
            let got = (p.state, p.pool.as_deref(), ips(p), ready_reason(p));
            let want = (
                *state,
                *pool,
                ingress.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                reason.to_string(),
            );
            if got != want {
                failures.push(format!(
                    "{}: {svc}: got {got:?}, want {want:?}\n  conditions: {:?}",
                    case.name, p.conditions
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("servicelb core table: {} cases passed", cases.len());
}

#[test]
fn port_conflict_names_the_other_service_and_gets_no_daemonset() {
    let d = converge(
        vec![
            service("ns", "old", &["TCP/80", "TCP/443"], 10),
            service("other", "new", &["TCP/443"], 20),
        ],
        workers(),
        vec![pool("all", &[("role", "worker")], 0)],
        vec![],
        &[],
    );
    let new = find(&d, "other/new");
    let c = condition::find(&new.conditions, types::PORT_CONFLICT).expect("PortConflict");
    assert_eq!(c.status, "True");
    assert!(
        c.message.contains("TCP/443") && c.message.contains("ns/old"),
        "{}",
        c.message
    );
    assert!(
        new.daemonset.is_none(),
        "a Service in conflict gets no DaemonSet"
    );
    assert!(
        new.service_load_balancer.is_some(),
        "its conditions still live in the ServiceLoadBalancer"
    );
    assert!(
        new.events.is_empty(),
        "no news on the second pass: {:?}",
        new.events
    );
    // The first pass (no ServiceLoadBalancer stored yet) plans the Warning Event.
    let first = desired_state(
        &Observed {
            services: arcs(vec![
                service("ns", "old", &["TCP/80", "TCP/443"], 10),
                service("other", "new", &["TCP/443"], 20),
            ]),
            nodes: arcs(workers()),
            pools: arcs(vec![pool("all", &[("role", "worker")], 0)]),
            ..Default::default()
        },
        &config(),
    );
    let ev = find(&first, "other/new")
        .events
        .iter()
        .find(|e| e.reason == reasons::PORT_IN_USE)
        .expect("PortInUse Event");
    assert_eq!(ev.type_, plan::EventType::Warning);
    assert!(ev.note.contains("ns/old"), "{}", ev.note);
    let old = find(&d, "ns/old");
    assert_eq!(
        condition::find(&old.conditions, types::PORT_CONFLICT).map(|c| c.status.as_str()),
        Some("False")
    );
}

fn target_nodes(p: &ServicePlan) -> Vec<String> {
    p.service_load_balancer
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .map(|s| s.target_nodes.clone())
        .unwrap_or_default()
}

/// A placed Service that no longer wants its DaemonSet (an older Service took its port on every
/// node) lists no target node, and its DaemonSet is not swept: its own reconcile deletes it
/// after writing that list, so the agents the deletion stops remove their rules instead of
/// leaving them for a successor.
#[test]
fn a_placed_services_unwanted_daemonset_is_left_to_its_reconcile() {
    let pools = vec![pool("all", &[("role", "worker")], 0)];
    let alone = desired_state(
        &Observed {
            services: arcs(vec![service("other", "new", &["TCP/443"], 20)]),
            nodes: arcs(workers()),
            pools: arcs(pools.clone()),
            ..Default::default()
        },
        &config(),
    );
    let served = find(&alone, "other/new");
    assert_eq!(target_nodes(served), ["w1", "w2", "w3"]);
    let ds = served.daemonset.clone().expect("DaemonSet");
    let d = desired_state(
        &Observed {
            services: arcs(vec![
                service("ns", "old", &["TCP/443"], 10),
                service("other", "new", &["TCP/443"], 20),
            ]),
            nodes: arcs(workers()),
            pools: arcs(pools),
            daemonsets: arcs(vec![ds]),
            ..Default::default()
        },
        &config(),
    );
    let blocked = find(&d, "other/new");
    assert!(blocked.daemonset.is_none(), "it wants no DaemonSet");
    assert!(target_nodes(blocked).is_empty(), "and targets no node");
    assert!(
        d.cleanup.daemonsets.is_empty(),
        "left to its reconcile: {:?}",
        d.cleanup.daemonsets
    );
}

#[test]
fn partly_blocked_service_leaves_blocked_nodes_out_of_its_affinity() {
    let d = converge(
        vec![
            annotate(
                service("ns", "old", &["TCP/80"], 10),
                "portway.dev/pool",
                "zone-a",
            ),
            service("ns", "new", &["TCP/80"], 20),
        ],
        workers(),
        vec![
            pool("all", &[("role", "worker")], 0),
            pool_with(
                pool("zone-a", &[("zone", "a")], 0),
                json!({"autoAssign": false}),
            ),
        ],
        vec![],
        &[],
    );
    let ds = find(&d, "ns/new").daemonset.as_ref().expect("DaemonSet");
    let v = serde_json::to_value(ds).expect("json");
    let term = &v["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0];
    assert_eq!(
        term["matchFields"][0],
        json!({"key": "metadata.name", "operator": "NotIn", "values": ["w1", "w3"]})
    );
    assert_eq!(
        term["matchExpressions"][0],
        json!({"key": "role", "operator": "In", "values": ["worker"]})
    );
    assert_eq!(
        target_nodes(find(&d, "ns/new")),
        ["w2"],
        "targetNodes lists what the affinity selects"
    );
}

#[test]
fn daemonset_follows_contract() {
    let d = converge(
        vec![dual_stack(service("shop", "web", &["TCP/80", "UDP/53"], 1))],
        workers(),
        vec![pool("all", &[("role", "worker")], 0)],
        vec![],
        &[],
    );
    let ds = find(&d, "shop/web").daemonset.as_ref().expect("DaemonSet");
    let v = serde_json::to_value(ds).expect("json");
    assert_eq!(v["metadata"]["name"], "portway-shop-web");
    assert_eq!(v["metadata"]["namespace"], "portway-system");
    for (k, val) in [
        ("app.kubernetes.io/managed-by", "portway"),
        ("app.kubernetes.io/component", "node-agent"),
        ("portway.dev/service-name", "web"),
        ("portway.dev/service-namespace", "shop"),
        ("portway.dev/pool", "all"),
    ] {
        assert_eq!(v["metadata"]["labels"][k], val, "{k}");
    }
    let pod = &v["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["name"], "agent");
    assert_eq!(
        c["args"],
        json!([
            "run",
            "--namespace",
            "shop",
            "--service",
            "web",
            "--dataplane",
            "pod",
            "--metrics-addr",
            "[::]:9464"
        ])
    );
    assert_eq!(
        c["ports"][0],
        json!({"name": "p-tcp-80", "containerPort": 80, "hostPort": 80, "protocol": "TCP"})
    );
    assert_eq!(
        c["ports"][1],
        json!({"name": "p-udp-53", "containerPort": 53, "hostPort": 53, "protocol": "UDP"})
    );
    assert_eq!(c["ports"][2]["name"], "metrics");
    assert!(c["ports"][2].get("hostPort").is_none());
    assert_eq!(
        c["readinessProbe"]["exec"]["command"],
        json!(["portway-agent", "probe", "ready"])
    );
    assert_eq!(
        c["livenessProbe"]["exec"]["command"],
        json!(["portway-agent", "probe", "live"])
    );
    assert_eq!(
        c["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "run", "mountPath": "/run"}])
    );
    let env: Vec<&str> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(
        env,
        [
            "NODE_NAME",
            "POD_NAME",
            "POD_NAMESPACE",
            "POD_IPS",
            "HOST_IPS"
        ]
    );
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30);
    assert_eq!(pod["serviceAccountName"], "portway-agent");
    assert!(pod.get("hostNetwork").is_none());
    assert_eq!(pod["tolerations"].as_array().map(Vec::len), Some(3));
    assert!(
        pod.get("securityContext").is_none(),
        "no sysctls by default"
    );

    // Host dataplane and forwarding sysctls.
    let mut cfg = config();
    cfg.agent_forwarding_sysctls = true;
    let observed = Observed {
        services: arcs(vec![dual_stack(service("shop", "web", &["TCP/80"], 1))]),
        nodes: arcs(workers()),
        pools: arcs(vec![pool_with(
            pool("all", &[], 0),
            json!({"dataplane": "Host"}),
        )]),
        ..Default::default()
    };
    let d = desired_state(&observed, &cfg);
    let v =
        serde_json::to_value(find(&d, "shop/web").daemonset.as_ref().expect("ds")).expect("json");
    let pod = &v["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
        json!([{"matchExpressions": [{
            "key": "node.kubernetes.io/exclude-from-external-load-balancers",
            "operator": "DoesNotExist"
        }]}]),
        "empty selector: every node but those excluded from external load balancers"
    );
    assert_eq!(
        pod["containers"][0]["args"],
        json!([
            "run",
            "--namespace",
            "shop",
            "--service",
            "web",
            "--dataplane",
            "host"
        ])
    );
    assert_eq!(
        pod["volumes"][1]["hostPath"],
        json!({"path": "/run/xtables.lock", "type": "FileOrCreate"})
    );
    assert!(
        pod.get("securityContext").is_none(),
        "sysctls are not allowed on host-network pods"
    );

    let observed = Observed {
        pools: arcs(vec![pool("all", &[], 0)]),
        ..observed
    };
    let d = desired_state(&observed, &cfg);
    let v =
        serde_json::to_value(find(&d, "shop/web").daemonset.as_ref().expect("ds")).expect("json");
    assert_eq!(
        v["spec"]["template"]["spec"]["securityContext"]["sysctls"],
        json!([{"name": "net.ipv4.ip_forward", "value": "1"}, {"name": "net.ipv6.conf.all.forwarding", "value": "1"}])
    );
}

#[test]
fn type_change_class_change_and_deletion_are_cleaned_up() {
    let nodes = workers();
    let pools = vec![pool("all", &[("role", "worker")], 0)];
    let served = converge(
        vec![service("ns", "web", &["TCP/80"], 1)],
        nodes.clone(),
        pools.clone(),
        vec![],
        &[("ns/web", &["w2"])],
    );
    let slb = find(&served, "ns/web")
        .service_load_balancer
        .clone()
        .expect("slb");
    let ds = find(&served, "ns/web").daemonset.clone().expect("ds");

    let mut to_cluster_ip = finalized(service("ns", "web", &["TCP/80"], 1));
    to_cluster_ip.spec.as_mut().expect("spec").type_ = Some("ClusterIP".into());
    let mut other_class = finalized(service("ns", "web", &["TCP/80"], 1));
    other_class.spec.as_mut().expect("spec").load_balancer_class = Some("example.com/other".into());
    let mut deleting = finalized(service("ns", "web", &["TCP/80"], 1));
    deleting.metadata.deletion_timestamp = Some(t(2000));

    for (what, svc) in [
        ("type change", to_cluster_ip),
        ("class change", other_class),
        ("deletion", deleting),
    ] {
        let observed = Observed {
            services: arcs(vec![svc]),
            nodes: arcs(nodes.clone()),
            pools: arcs(pools.clone()),
            service_load_balancers: arcs(vec![reported(&slb, &["w2"])]),
            daemonsets: arcs(vec![ds.clone()]),
            role_bindings: arcs(served.role_bindings.clone()),
            ..Default::default()
        };
        let d = desired_state(&observed, &config());
        let p = find(&d, "ns/web");
        assert_eq!(p.finalizer, FinalizerAction::Remove, "{what}");
        assert_eq!(p.state, ServiceState::CleaningUp, "{what}");
        assert!(
            p.daemonset.is_none() && p.service_load_balancer.is_none() && p.ingress.is_empty(),
            "{what}"
        );
        assert_eq!(
            d.cleanup.daemonsets,
            vec![Key::new("portway-system", "portway-ns-web")],
            "{what}"
        );
        assert_eq!(
            d.cleanup.service_load_balancers,
            vec![Key::new("ns", "web")],
            "{what}"
        );
        assert_eq!(
            d.cleanup.role_bindings,
            vec![Key::new("ns", "portway-agent-status")],
            "{what}"
        );
    }
}

#[test]
fn other_load_balancer_class_is_ignored_and_own_class_is_served() {
    let mut other = service("ns", "cloud", &["TCP/80"], 1);
    other.spec.as_mut().expect("spec").load_balancer_class = Some("example.com/cloud".into());
    let mut ours = service("ns", "mine", &["TCP/80"], 2);
    ours.spec.as_mut().expect("spec").load_balancer_class = Some("portway.dev/servicelb".into());
    let mut cluster_ip = service("ns", "plain", &["TCP/80"], 3);
    cluster_ip.spec.as_mut().expect("spec").type_ = Some("ClusterIP".into());
    let d = converge(
        vec![other, ours, cluster_ip],
        workers(),
        vec![pool("all", &[], 0)],
        vec![],
        &[],
    );
    assert_eq!(d.services.len(), 1);
    assert_eq!(d.services[0].service, Key::new("ns", "mine"));
    assert_eq!(d.ignored.len(), 1);
    assert_eq!(d.ignored[0].0, Key::new("ns", "cloud"));
    // A conflict with an ignored Service's port is not Portway's business.
    assert_eq!(d.services[0].state, ServiceState::Waiting);
}

#[test]
fn pool_status_counts_nodes_and_services() {
    let d = converge(
        vec![
            service("ns", "a", &["TCP/80"], 1),
            service("ns", "b", &["TCP/81"], 2),
        ],
        workers(),
        vec![
            pool("all", &[("role", "worker")], 0),
            pool("gpu", &[("gpu", "y")], 0),
        ],
        vec![],
        &[],
    );
    let all = d.pools.iter().find(|p| p.name == "all").expect("all");
    assert_eq!((all.status.nodes, all.status.services), (3, 2));
    assert!(condition::is_true(&all.status.conditions, types::READY));
    let gpu = d.pools.iter().find(|p| p.name == "gpu").expect("gpu");
    assert_eq!((gpu.status.nodes, gpu.status.services), (0, 0));
    assert!(condition::is_true(&gpu.status.conditions, types::NO_NODES));
    assert_eq!(d.role_bindings.len(), 1, "one RoleBinding for namespace ns");
}

#[test]
fn resync_with_nothing_new_keeps_times_and_plans_no_events() {
    let d1 = converge(
        vec![service("ns", "web", &["TCP/80"], 1)],
        workers(),
        vec![pool("all", &[], 0)],
        vec![],
        &[("ns/web", &["w1"])],
    );
    let p1 = find(&d1, "ns/web");
    let slb = p1.service_load_balancer.clone().expect("slb");
    // Stored as written, with the agents' report; resync at a later time.
    let stored = reported(&slb, &["w1"]);
    let observed = Observed {
        services: arcs(vec![finalized(service("ns", "web", &["TCP/80"], 1))]),
        nodes: arcs(workers()),
        pools: arcs(vec![pool("all", &[], 0)]),
        service_load_balancers: arcs(vec![stored]),
        ..Default::default()
    };
    let mut later = config();
    later.now = t(9999);
    let d2 = desired_state(&observed, &later);
    let p2 = find(&d2, "ns/web");
    assert!(p2.events.is_empty(), "{:?}", p2.events);
    assert_eq!(p2.conditions, p1.conditions, "lastTransitionTime kept");
    assert_eq!(
        p2.service_load_balancer.as_ref().map(|s| &s.spec),
        Some(&slb.spec)
    );
}

#[test]
fn examples_plan_as_documented() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let set = portway_operator::input::read_paths(&[dir]).expect("examples");
    let mut cfg = config();
    cfg.assume_agents_forwarding = true;
    let d = desired_state(&portway_operator::cli::plan::observed(&set), &cfg);
    let served: Vec<String> = d
        .services
        .iter()
        .filter(|p| p.daemonset.is_some())
        .map(|p| p.service.to_string())
        .collect();
    assert_eq!(
        served,
        ["factory/mqtt", "infra/dns", "shop/admin", "shop/storefront"]
    );
    assert_eq!(
        ips(find(&d, "infra/dns")),
        ["203.0.113.11", "2001:db8:10::11"]
    );
    assert_eq!(ips(find(&d, "factory/mqtt")), ["10.77.0.22"]);
    assert_eq!(ips(find(&d, "shop/admin")), ["203.0.113.11"]);
    assert_eq!(
        ips(find(&d, "shop/storefront")),
        ["203.0.113.11", "203.0.113.12"]
    );
    assert_eq!(
        d.ignored
            .iter()
            .map(|(k, _)| k.to_string())
            .collect::<Vec<_>>(),
        ["shop/cloud-lb"]
    );
    let _ = plan::names::daemonset_name(&Key::new("a", "b"));
}

#[test]
fn not_ready_and_excluded_nodes_are_not_published() {
    let mut nodes = workers();
    // w1 went NotReady (its agent's last report still says Forwarding=True).
    nodes[0].status.as_mut().expect("status").conditions =
        Some(vec![k8s_openapi::api::core::v1::NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            ..Default::default()
        }]);
    // w3 opted out of external load balancers.
    nodes[2].metadata.labels.as_mut().expect("labels").insert(
        "node.kubernetes.io/exclude-from-external-load-balancers".into(),
        "".into(),
    );
    let d = converge(
        vec![service("ns", "web", &["TCP/80"], 1)],
        nodes,
        vec![pool("all", &[("role", "worker")], 0)],
        vec![],
        &[("ns/web", &["w1", "w2", "w3"])],
    );
    let p = find(&d, "ns/web");
    assert_eq!(ips(p), ["192.168.0.2"]);
    let all = d.pools.iter().find(|p| p.name == "all").expect("pool");
    assert_eq!(all.status.nodes, 2, "the excluded node is not in the pool");
}

/// Whether a Node with `labels` and `name` satisfies a DaemonSet's required node affinity, as
/// the scheduler evaluates it (terms ORed, requirements ANDed; the operators the planner emits).
fn affinity_admits(ds: &serde_json::Value, name: &str, labels: &BTreeMap<String, String>) -> bool {
    let terms = &ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let Some(terms) = terms.as_array() else {
        return true;
    };
    let holds = |req: &serde_json::Value, value: Option<&str>| {
        let values: Vec<&str> = req["values"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        match req["operator"].as_str().expect("operator") {
            "In" => value.is_some_and(|v| values.contains(&v)),
            "NotIn" => !value.is_some_and(|v| values.contains(&v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("operator {other} not handled by this test"),
        }
    };
    terms.iter().any(|term| {
        let exprs = term["matchExpressions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let fields = term["matchFields"].as_array().cloned().unwrap_or_default();
        exprs.iter().all(|r| {
            holds(
                r,
                labels
                    .get(r["key"].as_str().expect("key"))
                    .map(String::as_str),
            )
        }) && fields.iter().all(|r| {
            assert_eq!(r["key"], "metadata.name");
            holds(r, Some(name))
        })
    })
}

#[test]
fn excluded_nodes_run_no_agent_pod() {
    for selector in [&[][..], &[("role", "worker")][..]] {
        let mut nodes = workers();
        nodes[2].metadata.labels.as_mut().expect("labels").insert(
            "node.kubernetes.io/exclude-from-external-load-balancers".into(),
            "true".into(),
        );
        let labels: Vec<(String, BTreeMap<String, String>)> = nodes
            .iter()
            .map(|n| {
                (
                    n.metadata.name.clone().expect("name"),
                    n.metadata.labels.clone().unwrap_or_default(),
                )
            })
            .collect();
        let d = converge(
            vec![service("ns", "web", &["TCP/80"], 1)],
            nodes,
            vec![pool("all", selector, 0)],
            vec![],
            &[],
        );
        let ds = find(&d, "ns/web").daemonset.as_ref().expect("DaemonSet");
        let v = serde_json::to_value(ds).expect("json");
        let targets: Vec<&str> = labels
            .iter()
            .filter(|(name, l)| affinity_admits(&v, name, l))
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(
            targets,
            ["w1", "w2"],
            "selector {selector:?}: the DaemonSet must not target the excluded w3"
        );
    }
}

/// The README quickstart on a cluster whose operator runs on the host network with metrics on
/// 8080: `kubectl expose --port=8080` made an agent DaemonSet whose system-node-critical pods
/// preempted the operator for its host port. A reserved port instead gives `PortReserved`, no
/// DaemonSet, and a Warning Event; the other Services and ports are unaffected.
#[test]
fn a_service_on_a_reserved_host_port_gets_port_reserved_and_no_daemonset() {
    let mut cfg = config();
    cfg.reserved_host_ports = portway_operator::plan::reserved::parse_list(
        "TCP/10250=kubelet,TCP/8080=portway-operator-metrics",
    )
    .expect("reserved ports");
    let observed = Observed {
        services: arcs(vec![
            service("default", "web", &["TCP/8080"], 10),
            service("default", "kubelet-clash", &["TCP/443", "TCP/10250"], 11),
            service("default", "udp", &["UDP/8080"], 12),
        ]),
        nodes: arcs(workers()),
        pools: arcs(vec![pool("all", &[("role", "worker")], 0)]),
        ..Default::default()
    };
    let d = desired_state(&observed, &cfg);
    for (svc, port, owner) in [
        ("default/web", "TCP/8080", "portway-operator-metrics"),
        ("default/kubelet-clash", "TCP/10250", "kubelet"),
    ] {
        let p = find(&d, svc);
        assert!(
            p.daemonset.is_none(),
            "{svc}: no DaemonSet for a reserved port"
        );
        assert!(ips(p).is_empty(), "{svc}: no ingress");
        let c = condition::find(&p.conditions, types::PORT_CONFLICT).expect("PortConflict");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::PORT_RESERVED),
            "{svc}"
        );
        assert!(
            c.message
                .contains(&format!("{port} is reserved on every node for {owner}")),
            "{svc}: {}",
            c.message
        );
        assert_eq!(ready_reason(p), reasons::PORT_RESERVED, "{svc}");
        let (status, reason, message) = service_condition(p).expect("Service condition");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", reasons::PORT_RESERVED)
        );
        assert!(message.contains("Change this Service's port"), "{message}");
        let warnings: Vec<_> = p
            .events
            .iter()
            .filter(|e| e.type_ == plan::EventType::Warning)
            .map(|e| e.reason.as_str())
            .collect();
        assert_eq!(
            warnings,
            [reasons::PORT_RESERVED],
            "{svc}: one Warning Event"
        );
    }
    // Another protocol on the same number is free.
    let udp = find(&d, "default/udp");
    assert!(udp.daemonset.is_some(), "UDP/8080 is not reserved");
    // The defaults reserve kubelet's port, and nothing else.
    let d = desired_state(&observed, &config());
    assert!(find(&d, "default/web").daemonset.is_some());
    assert!(find(&d, "default/kubelet-clash").daemonset.is_none());
}

/// (status, reason) of the Service's own `portway.dev/LoadBalancer` condition.
fn service_condition(p: &ServicePlan) -> Option<(String, String, String)> {
    p.service_condition.as_ref().map(|c| {
        assert_eq!(c.type_, types::SERVICE_LOAD_BALANCER);
        (c.status.clone(), c.reason.clone(), c.message.clone())
    })
}

#[test]
fn every_portway_service_gets_a_condition_on_the_service_that_says_what_to_fix() {
    let all = || pool("all", &[("role", "worker")], 0);
    // (case, services, pools, slices, forwarding, service, status, reason, message fragment)
    type Row = (
        &'static str,
        Vec<Service>,
        Vec<LoadBalancerPool>,
        Vec<EndpointSlice>,
        Vec<(&'static str, &'static [&'static str])>,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    );
    let rows: Vec<Row> = vec![
        (
            "serving",
            vec![service("ns", "web", &["TCP/80"], 1)],
            vec![all()],
            vec![],
            vec![("ns/web", &["w1"])],
            "ns/web",
            "True",
            reasons::SERVING,
            "published 203.0.113.1 on 1 of 3 usable nodes (LoadBalancerPool all)",
        ),
        (
            "no pool matches",
            vec![label(service("ns", "web", &["TCP/80"], 1), "tier", "db")],
            vec![pool_with(
                all(),
                json!({"serviceSelector": {"matchLabels": {"tier": "web"}}}),
            )],
            vec![],
            vec![],
            "ns/web",
            "False",
            reasons::NO_MATCHING_POOL,
            "portway.dev/pool annotation",
        ),
        (
            "annotated pool missing",
            vec![annotate(
                service("ns", "web", &["TCP/80"], 1),
                "portway.dev/pool",
                "gone",
            )],
            vec![all()],
            vec![],
            vec![],
            "ns/web",
            "False",
            reasons::POOL_NOT_FOUND,
            "LoadBalancerPool \"gone\", which does not exist: create that pool or correct the annotation",
        ),
        (
            "unsupported protocol",
            vec![{
                let mut s = service("ns", "web", &["TCP/80"], 1);
                s.spec
                    .as_mut()
                    .expect("spec")
                    .ports
                    .as_mut()
                    .expect("ports")[0]
                    .protocol = Some("ICMP".into());
                s
            }],
            vec![all()],
            vec![],
            vec![],
            "ns/web",
            "False",
            reasons::INVALID_SERVICE,
            "protocol \"ICMP\" is not supported (TCP, UDP or SCTP); fix the Service's spec",
        ),
        (
            "no ports",
            vec![{
                let mut s = service("ns", "web", &["TCP/80"], 1);
                s.spec.as_mut().expect("spec").ports = Some(vec![]);
                s
            }],
            vec![all()],
            vec![],
            vec![],
            "ns/web",
            "False",
            reasons::INVALID_SERVICE,
            "the Service has no ports",
        ),
        (
            "port held by an older Service",
            vec![
                service("ns", "old", &["TCP/80"], 1),
                service("ns", "new", &["TCP/80"], 2),
            ],
            vec![all()],
            vec![],
            vec![("ns/old", &["w1"])],
            "ns/new",
            "False",
            reasons::PORT_CONFLICT,
            "TCP/80 is held by Service ns/old on 3 of 3 eligible nodes. Change this Service's port",
        ),
        (
            "pool selects no node",
            vec![service("ns", "web", &["TCP/80"], 1)],
            vec![pool("gpu", &[("gpu", "yes")], 0)],
            vec![],
            vec![],
            "ns/web",
            "False",
            reasons::POOL_HAS_NO_NODES,
            "LoadBalancerPool gpu selects no Node: label Nodes to match its nodeSelector",
        ),
        (
            "Local without endpoints",
            vec![local(service("ns", "web", &["TCP/80"], 1))],
            vec![all()],
            vec![slice("ns", "web", &[("w1", false)])],
            vec![("ns/web", &["w1"])],
            "ns/web",
            "False",
            reasons::NO_READY_ENDPOINTS,
            "run a ready backend Pod on a node of LoadBalancerPool all",
        ),
        (
            "agents not forwarding yet",
            vec![service("ns", "web", &["TCP/80"], 1)],
            vec![all()],
            vec![],
            vec![],
            "ns/web",
            "False",
            reasons::AGENTS_NOT_FORWARDING,
            "details: kubectl get serviceloadbalancer -n ns web",
        ),
    ];
    let mut failures = Vec::new();
    for (case, services, pools, slices, forwarding, svc, status, reason, fragment) in &rows {
        let d = converge(
            services.clone(),
            workers(),
            pools.clone(),
            slices.clone(),
            forwarding,
        );
        match service_condition(find(&d, svc)) {
            Some((s, r, m)) if s == *status && r == *reason && m.contains(fragment) => {}
            other => failures.push(format!(
                "{case}: got {other:?}, want ({status}, {reason}, …{fragment}…)"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("service conditions: {} states checked", rows.len());
}

#[test]
fn service_condition_keeps_its_transition_time_and_goes_with_the_service() {
    // Unplaced at t(1000): NoMatchingPool.
    let svc = service("ns", "web", &["TCP/80"], 1);
    let observed = |svc: Service, pools: Vec<LoadBalancerPool>| Observed {
        services: arcs(vec![svc]),
        nodes: arcs(workers()),
        pools: arcs(pools),
        ..Default::default()
    };
    let first = desired_state(&observed(svc.clone(), vec![]), &config());
    let cond = find(&first, "ns/web")
        .service_condition
        .clone()
        .expect("condition");
    assert_eq!(
        (cond.status.as_str(), cond.last_transition_time.clone()),
        ("False", t(1000))
    );

    // Stored on the Service, next to another controller's condition; later, same problem with a
    // new message: the time stays (same status).
    let foreign = condition::new("example.com/Other", true, "Fine", "m", None, &t(5));
    let mut stored = svc.clone();
    stored.status = Some(k8s_openapi::api::core::v1::ServiceStatus {
        conditions: Some(vec![foreign.clone(), cond.clone()]),
        ..Default::default()
    });
    let mut later = config();
    later.now = t(2000);
    let gpu = pool("gpu", &[("gpu", "yes")], 0);
    let d = desired_state(&observed(stored.clone(), vec![gpu]), &later);
    let c = find(&d, "ns/web")
        .service_condition
        .clone()
        .expect("condition");
    assert_eq!(c.reason, reasons::POOL_HAS_NO_NODES);
    assert_eq!(c.last_transition_time, t(1000), "status did not flip");
    assert_ne!(c, foreign, "only Portway's own type is planned");

    // Placed and serving: the status flips, the time moves.
    let mut placed = finalized(stored.clone());
    placed.metadata.uid = Some("uid-ns-web".into());
    let mut o = observed(placed.clone(), vec![pool("all", &[], 0)]);
    let first = desired_state(&o, &later);
    let slb = find(&first, "ns/web")
        .service_load_balancer
        .clone()
        .expect("slb");
    o.service_load_balancers = arcs(vec![reported(&slb, &["w1"])]);
    let d = desired_state(&o, &later);
    let c = find(&d, "ns/web")
        .service_condition
        .clone()
        .expect("condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Serving"));
    assert_eq!(c.last_transition_time, t(2000));

    // No longer a LoadBalancer: Portway's condition goes (None = withdraw).
    placed.spec.as_mut().expect("spec").type_ = Some("ClusterIP".into());
    let d = desired_state(&observed(placed.clone(), vec![pool("all", &[], 0)]), &later);
    assert_eq!(find(&d, "ns/web").state, ServiceState::CleaningUp);
    assert_eq!(find(&d, "ns/web").service_condition, None);
}

#[test]
fn plan_prints_unplaced_services_with_their_condition() {
    use portway_operator::cli::plan::{Format, render};
    let mut set = portway_operator::input::InputSet::default();
    let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: w1, labels: {role: worker}}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: portway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: workers}
spec: {nodeSelector: {matchLabels: {role: worker}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {type: LoadBalancer, clusterIP: 10.43.0.10, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: lost, namespace: shop, annotations: {portway.dev/pool: nowhere}}
spec: {type: LoadBalancer, clusterIP: 10.43.0.11, ports: [{name: http, port: 81, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: odd, namespace: shop}
spec: {type: LoadBalancer, clusterIP: 10.43.0.12, ports: []}
"#;
    set.add_yaml("test.yaml", yaml).expect("yaml");
    let args = plan_args;
    let yaml_out = render(&set, &args(Format::Yaml), t(0));
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&yaml_out).expect("plan prints YAML");
    let status_of = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == name)
            .map(|d| d["status"]["conditions"][0].clone())
            .unwrap_or_else(|| panic!("no Service status for {name} in\n{yaml_out}"))
    };
    assert_eq!(status_of("web")["reason"], "Serving");
    assert_eq!(status_of("web")["type"], "portway.dev/LoadBalancer");
    assert_eq!(status_of("lost")["reason"], "PoolNotFound");
    assert_eq!(status_of("lost")["status"], "False");
    assert_eq!(status_of("odd")["reason"], "InvalidService");
    assert!(
        !yaml_out.contains("stale status.nodes"),
        "no ServiceLoadBalancer given, nothing stale:\n{yaml_out}"
    );
    let wide = render(&set, &args(Format::Wide), t(0));
    for want in [
        "shop/lost   no_pool",
        "PoolNotFound",
        "shop/odd    invalid",
        "InvalidService",
        "shop/lost: the portway.dev/pool annotation names LoadBalancerPool \"nowhere\", which does not exist: create that pool",
    ] {
        assert!(wide.contains(want), "no {want:?} in\n{wide}");
    }
}

#[test]
fn plan_wide_shows_pod_cidrs_per_node_and_cluster_cidr_use_as_tables() {
    use portway_operator::cli::plan::{Format, render};
    let mut set = portway_operator::input::InputSet::default();
    let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: n1}
---
apiVersion: v1
kind: Node
metadata: {name: n2}
spec: {podCIDR: 10.42.7.0/24, podCIDRs: [10.42.7.0/24]}
---
apiVersion: v1
kind: Node
metadata: {name: n3}
---
apiVersion: portway.dev/v1alpha1
kind: ClusterCIDR
metadata: {name: small}
spec: {perNodeHostBits: 8, ipv4: 10.42.6.0/23}
"#;
    set.add_yaml("test.yaml", yaml).expect("yaml");
    let args = plan_args(Format::Wide);
    let wide = render(&set, &args, t(0));
    let row = |first: &str| -> Vec<String> {
        wide.lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no row {first} in\n{wide}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // Adopted first, then allocation in name order: n1 gets the other /24, n3 waits.
    assert_eq!(row("n1")[..4], ["n1", "Allocated", "small", "10.42.6.0/24"]);
    assert_eq!(row("n2")[..4], ["n2", "Adopted", "small", "10.42.7.0/24"]);
    assert_eq!(row("n3")[..4], ["n3", "Waiting", "-", "-"]);
    assert_eq!(row("small"), ["small", "2/2", "-", "False", "True", "True"]);
    assert!(!wide.contains("podCIDRs:"), "tables, not YAML:\n{wide}");
}

/// Sets (or, with `None`, removes) a label of the named Node.
fn relabel(mut nodes: Vec<Node>, name: &str, key: &str, value: Option<&str>) -> Vec<Node> {
    for n in &mut nodes {
        if n.metadata.name.as_deref() == Some(name) {
            let labels = n.metadata.labels.get_or_insert_with(BTreeMap::new);
            match value {
                Some(v) => labels.insert(key.into(), v.into()),
                None => labels.remove(key),
            };
        }
    }
    nodes
}

fn without(nodes: Vec<Node>, gone: &[&str]) -> Vec<Node> {
    nodes
        .into_iter()
        .filter(|n| !gone.contains(&n.metadata.name.as_deref().unwrap_or_default()))
        .collect()
}

fn not_ready(mut nodes: Vec<Node>, name: &str) -> Vec<Node> {
    for n in &mut nodes {
        if n.metadata.name.as_deref() == Some(name) {
            n.status.as_mut().expect("status").conditions =
                Some(vec![k8s_openapi::api::core::v1::NodeCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    ..Default::default()
                }]);
        }
    }
    nodes
}

struct StaleCase {
    name: &'static str,
    /// Services; `ns/web` is the one looked at.
    services: Vec<Service>,
    /// The Nodes and pools now (the ServiceLoadBalancer was written while every worker was in
    /// pool `all`).
    nodes: Vec<Node>,
    pools: Vec<LoadBalancerPool>,
    /// `ns/web`'s `status.nodes`: (node, Forwarding=True?).
    reports: Vec<(&'static str, bool)>,
    expect_state: ServiceState,
    expect: Vec<&'static str>,
}

fn stale_cases() -> Vec<StaleCase> {
    let all = || pool("all", &[("role", "worker")], 0);
    let web = || service("ns", "web", &["TCP/80"], 20);
    vec![
        StaleCase {
            name: "node left the pool (label changed) and its agent reported False: pruned",
            services: vec![web()],
            nodes: relabel(workers(), "w2", "role", Some("storage")),
            pools: vec![all()],
            reports: vec![("w1", true), ("w2", false), ("w3", true)],
            expect_state: ServiceState::Serving,
            expect: vec!["w2"],
        },
        StaleCase {
            name: "node left the pool but still says Forwarding=True: kept until its agent reports",
            services: vec![web()],
            nodes: relabel(workers(), "w2", "role", None),
            pools: vec![all()],
            reports: vec![("w1", true), ("w2", true)],
            expect_state: ServiceState::Serving,
            expect: vec![],
        },
        StaleCase {
            name: "pool's nodeSelector changed: the nodes it dropped are pruned once False",
            services: vec![web()],
            nodes: workers(),
            pools: vec![pool("all", &[("zone", "a")], 0)],
            reports: vec![("w1", true), ("w2", false), ("w3", true)],
            expect_state: ServiceState::Serving,
            expect: vec!["w2"],
        },
        StaleCase {
            name: "Node objects deleted: pruned, Forwarding=True or not",
            services: vec![web()],
            nodes: without(workers(), &["w2", "w3"]),
            pools: vec![all()],
            reports: vec![("w1", true), ("w2", false), ("w3", true)],
            expect_state: ServiceState::Serving,
            expect: vec!["w2", "w3"],
        },
        StaleCase {
            name: "node in the pool with Forwarding=False (agent restarting): kept",
            services: vec![web()],
            nodes: workers(),
            pools: vec![all()],
            reports: vec![("w1", true), ("w2", false), ("w3", false)],
            expect_state: ServiceState::Serving,
            expect: vec![],
        },
        StaleCase {
            name: "NotReady node the DaemonSet still targets, Forwarding=False: kept",
            services: vec![web()],
            nodes: not_ready(workers(), "w2"),
            pools: vec![all()],
            reports: vec![("w1", true), ("w2", false)],
            expect_state: ServiceState::Serving,
            expect: vec![],
        },
        StaleCase {
            name: "node excluded from external load balancers, Forwarding=False: pruned",
            services: vec![web()],
            nodes: relabel(
                workers(),
                "w3",
                "node.kubernetes.io/exclude-from-external-load-balancers",
                Some(""),
            ),
            pools: vec![all()],
            reports: vec![("w1", true), ("w3", false)],
            expect_state: ServiceState::Serving,
            expect: vec!["w3"],
        },
        StaleCase {
            name: "nodes blocked by an older Service's port: False pruned, True kept",
            services: vec![
                annotate(
                    service("ns", "old", &["TCP/80"], 10),
                    "portway.dev/pool",
                    "zone-a",
                ),
                web(),
            ],
            nodes: workers(),
            pools: vec![
                all(),
                pool_with(
                    pool("zone-a", &[("zone", "a")], 0),
                    json!({"autoAssign": false}),
                ),
            ],
            reports: vec![("w1", false), ("w2", true), ("w3", true)],
            expect_state: ServiceState::Serving,
            expect: vec!["w1"],
        },
        StaleCase {
            name: "port conflict on every node (no DaemonSet): every False entry pruned",
            services: vec![service("ns", "old", &["TCP/80"], 10), web()],
            nodes: workers(),
            pools: vec![all()],
            reports: vec![("w3", false), ("w1", false), ("w2", true)],
            expect_state: ServiceState::PortConflict,
            expect: vec!["w1", "w3"],
        },
        StaleCase {
            name: "Service not served any more (its pool is gone): nothing",
            services: vec![web()],
            nodes: without(workers(), &["w3"]),
            pools: vec![],
            reports: vec![("w1", false), ("w3", true)],
            expect_state: ServiceState::NoPool,
            expect: vec![],
        },
        StaleCase {
            name: "no ServiceLoadBalancer status yet: nothing",
            services: vec![web()],
            nodes: workers(),
            pools: vec![all()],
            reports: vec![],
            expect_state: ServiceState::Waiting,
            expect: vec![],
        },
    ]
}

/// Entries of `status.nodes` whose node no longer serves the Service are planned for removal once
/// they cannot mislead: the Node is gone, or the agent reported Forwarding=False. Never an entry
/// of a node the DaemonSet targets, never a Forwarding=True entry of an existing Node.
#[test]
fn stale_node_entries_table() {
    for case in stale_cases() {
        // The ServiceLoadBalancer as written while every worker was in pool `all`, then the
        // agents' reports, then the cluster as it is now.
        let before = desired_state(
            &Observed {
                services: arcs(case.services.clone()),
                nodes: arcs(workers()),
                pools: arcs(vec![pool("all", &[("role", "worker")], 0)]),
                ..Default::default()
            },
            &config(),
        );
        let slb = find(&before, "ns/web")
            .service_load_balancer
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no ServiceLoadBalancer", case.name));
        let d = desired_state(
            &Observed {
                services: arcs(case.services),
                nodes: arcs(case.nodes),
                pools: arcs(case.pools),
                service_load_balancers: arcs(vec![reported_as(slb, &case.reports)]),
                ..Default::default()
            },
            &config(),
        );
        let p = find(&d, "ns/web");
        assert_eq!(p.state, case.expect_state, "{}", case.name);
        assert_eq!(p.stale_node_entries, case.expect, "{}", case.name);
    }
}

/// The plan is the same whatever order the agents' entries and the Nodes come in.
#[test]
fn stale_node_entries_do_not_depend_on_input_order() {
    let svc = service("ns", "web", &["TCP/80"], 1);
    let first = desired_state(
        &Observed {
            services: arcs(vec![svc.clone()]),
            nodes: arcs(workers()),
            pools: arcs(vec![pool("all", &[("role", "worker")], 0)]),
            ..Default::default()
        },
        &config(),
    );
    let slb = find(&first, "ns/web")
        .service_load_balancer
        .clone()
        .expect("ServiceLoadBalancer");
    let plan_with = |reports: &[(&str, bool)], nodes: Vec<Node>| {
        let d = desired_state(
            &Observed {
                services: arcs(vec![svc.clone()]),
                nodes: arcs(nodes),
                pools: arcs(vec![pool("all", &[("zone", "b")], 0)]),
                service_load_balancers: arcs(vec![reported_as(&slb, reports)]),
                ..Default::default()
            },
            &config(),
        );
        find(&d, "ns/web").stale_node_entries.clone()
    };
    let a = plan_with(
        &[("w3", false), ("gone", true), ("w1", false), ("w2", false)],
        workers(),
    );
    let mut reversed = workers();
    reversed.reverse();
    let b = plan_with(
        &[("w1", false), ("w2", false), ("gone", true), ("w3", false)],
        reversed,
    );
    assert_eq!(a, ["gone", "w1", "w3"]);
    assert_eq!(a, b);
}

/// `portway plan` names the stale entries of a ServiceLoadBalancer it is given.
#[test]
fn plan_names_stale_node_entries() {
    use portway_operator::cli::plan::{Format, render};
    let mut set = portway_operator::input::InputSet::default();
    let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: w1, labels: {role: worker}}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: w2, labels: {role: storage}}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: portway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: workers}
spec: {nodeSelector: {matchLabels: {role: worker}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {type: LoadBalancer, clusterIP: 10.43.0.10, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: portway.dev/v1alpha1
kind: ServiceLoadBalancer
metadata: {name: web, namespace: shop}
spec:
  pool: workers
  ports: [{name: http, protocol: TCP, port: 80, hostPort: 80}]
  clusterIPs: [10.43.0.10]
  ipFamilies: [IPv4]
status:
  nodes:
    - node: w1
      conditions: [{type: Forwarding, status: "False", reason: ShuttingDown, message: stopped, lastTransitionTime: "2026-01-01T00:00:00Z"}]
    - node: w2
      conditions: [{type: Forwarding, status: "False", reason: ShuttingDown, message: stopped, lastTransitionTime: "2026-01-01T00:00:00Z"}]
    - node: gone
      conditions: [{type: Forwarding, status: "True", reason: RulesApplied, message: ok, lastTransitionTime: "2026-01-01T00:00:00Z"}]
"#;
    set.add_yaml("test.yaml", yaml).expect("yaml");
    assert!(set.skipped.is_empty(), "{:?}", set.skipped);
    let out = render(&set, &plan_args(Format::Yaml), t(0));
    assert!(
        out.contains("# stale status.nodes entries the operator removes: gone, w2\n"),
        "{out}"
    );
}

/// `portway plan` arguments with the chart's defaults.
fn plan_args(output: portway_operator::cli::plan::Format) -> portway_operator::cli::plan::Args {
    portway_operator::cli::plan::Args {
        paths: vec![],
        output,
        strict: false,
        diff: None,
        servicelb: portway_operator::controllers::servicelb::ServiceLbArgs {
            load_balancer_class: "portway.dev/servicelb".into(),
            namespace: "portway-system".into(),
            agent_image: "agent:test".into(),
            agent_service_account: "portway-agent".into(),
            agent_status_cluster_role: "portway-agent-status".into(),
            agent_forwarding_sysctls: false,
            reserved_host_ports: portway_operator::plan::reserved::ReservedPorts(
                portway_operator::plan::reserved::defaults(),
            ),
        },
    }
}
