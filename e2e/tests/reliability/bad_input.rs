//! Bad input through every path that reads API data: the `portway plan` input reader, the
//! operator's pure core (ServiceLB planning and pod-CIDR planning) and the node agent's rule
//! builder. The API server refuses many of these objects before the operator sees them (see
//! `crds/testdata/invalid-resources.yaml`), but Services are not Portway's to validate at
//! admission, clusters may run without the CRDs' CEL rules, and `portway plan` reads files, so
//! the code must be safe on its own.
//!
//! For every case of [`crate::corpus`]: each path runs under `catch_unwind` (a panic is counted,
//! never propagated), every expectation of the case must hold (a specific error or condition,
//! never just "some error"), no forwarding rule may be built for the hostile object and no
//! DaemonSet planned for a rejected Service, every condition message stays within the API's
//! 32 KiB limit, and allocated pod CIDRs never overlap. Prints
//! `bad-input: N tried, N rejected, 0 panics, 0 rules`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use portway_crds::{ClusterCIDR, LoadBalancerPool};
use portway_e2e::report;
use portway_node_agent::rules::{self, Context, RuleSet};
use portway_operator::cidr::{self, CidrPlan, NodeCidrState};
use portway_operator::input::InputSet;
use portway_operator::plan::{self, Config, Desired, Key, Observed, ServiceState};
use serde_json::{Value, json};

use crate::corpus::{self, Case, CondExpect};

/// `metav1.Condition.message` may hold at most this many bytes; a longer one is refused by the
/// API server, so the operator could never write it.
pub const MAX_CONDITION_MESSAGE: usize = 32768;

/// What one case produced.
#[derive(Default)]
pub struct Outcome {
    pub panics: Vec<String>,
    /// Forwarding rules (DNAT with targets) built for the hostile objects.
    pub rules: usize,
    /// DaemonSets planned for a Service the case says must not get one.
    pub daemonsets: usize,
    /// Expectations that did not hold, and invariants broken.
    pub failures: Vec<String>,
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("base object")
}

/// Two IPv4 workers, Namespace `hostile`, the pool `default` (every node, lowest priority) and
/// the ClusterCIDR `default` (10.244.0.0/16, a /24 per node, lowest priority).
pub fn base(setup: &corpus::Setup) -> (Vec<Value>, Observed, Vec<Node>, Vec<ClusterCIDR>) {
    let node = |name: &str, zone: &str, ip: &str| {
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"zone": zone, "kubernetes.io/hostname": name}},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        })
    };
    let mut docs = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hostile"}}),
        json!({
            "apiVersion": "portway.dev/v1alpha1", "kind": "LoadBalancerPool",
            "metadata": {"name": "default"},
            "spec": {"nodeSelector": {}, "priority": -1000},
        }),
    ];
    if !setup.no_base_nodes {
        docs.push(node("worker-1", "a", "10.0.0.11"));
        docs.push(node("worker-2", "b", "10.0.0.12"));
    }
    if !setup.no_default_cluster_cidr {
        docs.push(json!({
            "apiVersion": "portway.dev/v1alpha1", "kind": "ClusterCIDR",
            "metadata": {"name": "default"},
            "spec": {"ipv4": "10.244.0.0/16", "perNodeHostBits": 8, "priority": -1000},
        }));
    }
    let mut observed = Observed::default();
    let mut nodes = Vec::new();
    let mut cidrs = Vec::new();
    for d in &docs {
        match d["kind"].as_str() {
            Some("Namespace") => observed
                .namespaces
                .push(Arc::new(from::<Namespace>(d.clone()))),
            Some("LoadBalancerPool") => observed
                .pools
                .push(Arc::new(from::<LoadBalancerPool>(d.clone()))),
            Some("Node") => nodes.push(from::<Node>(d.clone())),
            Some("ClusterCIDR") => cidrs.push(from::<ClusterCIDR>(d.clone())),
            _ => {}
        }
    }
    observed.nodes = nodes.iter().cloned().map(Arc::new).collect();
    (docs, observed, nodes, cidrs)
}

fn key_of(obj: &Value) -> Key {
    Key::new(
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

fn conditions_match(conds: &[Condition], e: &CondExpect) -> bool {
    conds.iter().any(|c| {
        c.type_ == e.type_
            && c.status == e.status
            && c.reason == e.reason
            && e.message.as_ref().is_none_or(|m| c.message.contains(m))
    })
}

fn short(s: &str) -> String {
    if s.len() <= 300 {
        s.to_owned()
    } else {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} bytes)", &s[..end], s.len())
    }
}

/// Runs `f`, turning a panic into a recorded failure.
fn guarded<T>(what: &str, out: &mut Outcome, f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            out.panics.push(format!("{what}: {}", short(&msg)));
            None
        }
    }
}

/// The ServiceLoadBalancer a careless writer would derive from a Service: values copied as
/// they are, nothing checked (what the agent must survive if anything but the operator wrote it).
pub fn naive_slb(svc: &Value, dataplane: &str) -> Value {
    let spec = &svc["spec"];
    let ports: Vec<Value> = spec["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    json!({
                        "name": p.get("name").cloned().unwrap_or(json!("")),
                        "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP")),
                        "port": p["port"].clone(),
                        "hostPort": p["port"].clone(),
                        "nodePort": p.get("nodePort").cloned().unwrap_or(Value::Null),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let cluster_ips = match (&spec["clusterIPs"], &spec["clusterIP"]) {
        (Value::Array(a), _) if !a.is_empty() => Value::Array(a.clone()),
        (_, Value::String(s)) => json!([s]),
        _ => json!([]),
    };
    let families = match &spec["ipFamilies"] {
        Value::Array(a) if !a.is_empty() => Value::Array(a.clone()),
        _ => {
            let fams: Vec<&str> = cluster_ips
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
                .collect();
            json!(fams)
        }
    };
    json!({
        "apiVersion": "portway.dev/v1alpha1",
        "kind": "ServiceLoadBalancer",
        "metadata": svc["metadata"].clone(),
        "spec": {
            "pool": "default",
            "dataplane": dataplane,
            "ports": ports,
            "clusterIPs": cluster_ips,
            "ipFamilies": families,
            "externalTrafficPolicy": spec.get("externalTrafficPolicy").cloned().unwrap_or(json!("Cluster")),
            "sourceRanges": spec.get("loadBalancerSourceRanges").cloned().unwrap_or(json!([])),
        },
    })
}

/// The agent's view for object `obj` in `dataplane`: worker-1, IPv4 only.
fn agent_context(obj: &Value, dataplane: &str, slices: &[EndpointSlice]) -> Context {
    let node_ip: IpAddr = "10.0.0.11".parse().expect("ip");
    let pod_ip: IpAddr = "10.244.1.5".parse().expect("ip");
    Context {
        namespace: obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("hostile")
            .to_owned(),
        name: obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        node_name: "worker-1".to_owned(),
        local_addresses: vec![if dataplane == "Host" { node_ip } else { pod_ip }],
        host_ips: vec![node_ip],
        endpoint_slices: slices.to_vec(),
    }
}

/// Forwarding rules of a rule set: forwarded ports that have somewhere to send to.
pub fn forwarding_rules(rs: &RuleSet) -> usize {
    rs.families
        .iter()
        .flat_map(|f| &f.forwards)
        .filter(|fw| !fw.targets.is_empty())
        .count()
}

/// Runs one case through the three paths.
pub fn run_case(case: &Case) -> Outcome {
    let mut out = Outcome::default();
    let expect = &case.expect;
    if expect.input.is_none() && expect.core.is_none() && expect.agent.is_none() {
        out.failures.push("the case expects nothing".into());
    }

    // 1. The `portway plan` input reader.
    let skipped = guarded("input", &mut out, || {
        let mut set = InputSet::default();
        for (i, obj) in case.objects.iter().enumerate() {
            set.add_value(&format!("{}#{i}", case.case), obj.clone());
        }
        set.skipped
    })
    .unwrap_or_default();
    if let Some(want) = &expect.input
        && !skipped.iter().any(|s| s.reason.contains(want.as_str()))
    {
        out.failures.push(format!(
            "input: no document set aside with {want:?}; set aside: {:?}",
            skipped.iter().map(|s| short(&s.reason)).collect::<Vec<_>>()
        ));
    }

    // 2. The operator's core, fed the objects as a cluster without CEL rules would deliver them.
    let (_, mut observed, mut nodes, mut cidrs) = base(&case.setup);
    let mut unreadable = Vec::new();
    let mut services = Vec::new();
    // Every Service document, readable or not: the agent's path does not go through the typed
    // Service.
    let raw_services: Vec<&Value> = case
        .objects
        .iter()
        .filter(|o| o["kind"] == "Service")
        .collect();
    let mut slbs = Vec::new();
    let mut slices = Vec::new();
    for obj in &case.objects {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let read = match kind {
            "Service" => serde_json::from_value::<Service>(obj.clone()).map(|s| {
                services.push((key_of(obj), obj.clone()));
                observed.services.push(Arc::new(s));
            }),
            "Node" => serde_json::from_value::<Node>(obj.clone()).map(|n| nodes.push(n)),
            "LoadBalancerPool" => serde_json::from_value::<LoadBalancerPool>(obj.clone())
                .map(|p| observed.pools.push(Arc::new(p))),
            "ClusterCIDR" => {
                serde_json::from_value::<ClusterCIDR>(obj.clone()).map(|c| cidrs.push(c))
            }
            "EndpointSlice" => serde_json::from_value::<EndpointSlice>(obj.clone()).map(|s| {
                slices.push(s.clone());
                observed.endpoint_slices.push(Arc::new(s));
            }),
            "ServiceLoadBalancer" => {
                slbs.push(obj.clone());
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = read {
            unreadable.push(format!("{kind}: {e}"));
        }
    }
    observed.nodes = nodes.iter().cloned().map(Arc::new).collect();
    let mut config = Config::new(now());
    config.assume_agents_forwarding = true;
    let desired: Option<Desired> = guarded("core: desired_state", &mut out, || {
        plan::desired_state(&observed, &config)
    });
    let cidr_plan = guarded("core: plan_for_nodes", &mut out, || {
        cidr::plan_for_nodes(&nodes, &cidrs)
    });

    if let Some(core) = &expect.core {
        check_core(
            core,
            case,
            &unreadable,
            desired.as_ref(),
            cidr_plan.as_ref(),
            &services,
            &mut out,
        );
    }
    if let Some(d) = &desired {
        for p in &d.services {
            // Conditions that are written to the API server (the ServiceLoadBalancer's status)
            // must fit it. (Unplaced Services have no such object; their Events are cut to 1 KiB
            // by the controller.)
            let persisted = p
                .service_load_balancer
                .as_ref()
                .and_then(|slb| slb.status.as_ref())
                .map(|st| st.conditions.as_slice())
                .unwrap_or_default();
            for c in persisted {
                if c.message.len() > MAX_CONDITION_MESSAGE {
                    out.failures.push(format!(
                        "Service {}: condition {} message is {} bytes (the API refuses more than {MAX_CONDITION_MESSAGE})",
                        p.service, c.type_, c.message.len()
                    ));
                }
            }
            if services.iter().any(|(k, _)| *k == p.service)
                && p.daemonset.is_some()
                && !expect.daemonset
            {
                out.daemonsets += 1;
            }
        }
        for pool in &d.pools {
            if let Some(c) = pool
                .status
                .conditions
                .iter()
                .find(|c| c.message.len() > MAX_CONDITION_MESSAGE)
            {
                out.failures.push(format!(
                    "pool {}: condition {} message is {} bytes",
                    short(&pool.name),
                    c.type_,
                    c.message.len()
                ));
            }
        }
    }
    if let Some(Ok(plan)) = &cidr_plan
        && let Some(overlap) = overlapping(plan)
    {
        out.failures.push(overlap);
    }

    // 3. The agent's rule builder.
    let dataplane = expect
        .agent
        .as_ref()
        .and_then(|a| a.dataplane.clone())
        .unwrap_or_else(|| "Pod".to_owned());
    let mut hostile_slbs: Vec<Value> = slbs.clone();
    if expect.agent.is_some() {
        hostile_slbs.extend(raw_services.iter().map(|s| naive_slb(s, &dataplane)));
    }
    let mut results = Vec::new();
    for slb in &hostile_slbs {
        let ctx = agent_context(slb, &dataplane, &slices);
        if let Some(r) = guarded("agent: build_from_json", &mut out, || {
            rules::build_from_json(slb, &ctx)
        }) {
            if let Ok(rs) = &r {
                out.rules += forwarding_rules(rs);
            }
            results.push(r);
        }
    }
    if let Some(agent) = &expect.agent {
        if results.is_empty() {
            out.failures
                .push("agent: no ServiceLoadBalancer to build".into());
        }
        for r in &results {
            match (r, &agent.error, &agent.note) {
                (Err(e), Some(want), _) if e.to_string().contains(want.as_str()) => {}
                (Ok(rs), None, Some(note))
                    if rs
                        .notes
                        .iter()
                        .any(|n| format!("{n:?}").starts_with(note.as_str())) => {}
                (r, _, _) => out.failures.push(format!(
                    "agent: expected error {:?} / note {:?}, got {}",
                    agent.error,
                    agent.note,
                    match r {
                        Ok(rs) => format!("rules {} with notes {:?}", rs.forward_count(), rs.notes),
                        Err(e) => format!("error {:?}", short(&e.to_string())),
                    }
                )),
            }
        }
    }
    // What the operator planned for an acceptable Service must be accepted by the agent.
    if let Some(d) = &desired {
        for p in d
            .services
            .iter()
            .filter(|p| services.iter().any(|(k, _)| *k == p.service))
        {
            if let Some(slb) = &p.service_load_balancer {
                let v = serde_json::to_value(slb).unwrap_or_default();
                let ctx = agent_context(&v, slb.spec.dataplane.as_str(), &slices);
                if let Some(Err(e)) = guarded("agent: planned spec", &mut out, || {
                    rules::build(&slb.spec, &ctx)
                }) {
                    out.failures.push(format!(
                        "the operator planned a ServiceLoadBalancer for {} that the agent refuses: {e}",
                        p.service
                    ));
                }
            }
        }
    }
    out
}

fn check_core(
    core: &corpus::CoreExpect,
    case: &Case,
    unreadable: &[String],
    desired: Option<&Desired>,
    cidr_plan: Option<&Result<CidrPlan, cidr::CidrPlanError>>,
    services: &[(Key, Value)],
    out: &mut Outcome,
) {
    let mut fail = |m: String| out.failures.push(format!("core: {m}"));
    if let Some(want) = &core.unreadable
        && !unreadable.iter().any(|u| u.contains(want.as_str()))
    {
        fail(format!(
            "no object failed to deserialize with {want:?}: {unreadable:?}"
        ));
    }
    let plans: Vec<&plan::ServicePlan> = desired
        .map(|d| {
            d.services
                .iter()
                .filter(|p| services.iter().any(|(k, _)| *k == p.service))
                .collect()
        })
        .unwrap_or_default();
    if let Some(want) = &core.invalid {
        let ok = plans.iter().any(|p| {
            p.state == ServiceState::Invalid
                && p.conditions.iter().any(|c| {
                    c.reason == portway_crds::condition::reasons::INVALID_SERVICE
                        && c.message.contains(want.as_str())
                })
        });
        if !ok {
            fail(format!(
                "no Service Invalid with {want:?}: {}",
                describe(&plans)
            ));
        }
    }
    if let Some(want) = &core.condition
        && !plans.iter().any(|p| conditions_match(&p.conditions, want))
    {
        fail(format!(
            "no Service condition {want:?}: {}",
            describe(&plans)
        ));
    }
    if let Some(want) = &core.pool_condition {
        let name = want.name.as_deref().unwrap_or_default();
        let pool = desired.and_then(|d| d.pools.iter().find(|p| p.name == name));
        if !pool.is_some_and(|p| conditions_match(&p.status.conditions, want)) {
            fail(format!(
                "pool {}: no condition {} {} {}: {:?}",
                short(name),
                want.type_,
                want.status,
                want.reason,
                pool.map(|p| &p.status.conditions)
            ));
        }
    }
    match cidr_plan {
        Some(Ok(plan)) => {
            if let Some(want) = &core.cidr_condition {
                let name = want.name.as_deref().unwrap_or_default();
                let found = plan.cluster_cidrs.iter().find(|c| c.name == name);
                let ok = found.is_some_and(|c| {
                    c.conditions.iter().any(|pc| {
                        let v = serde_json::to_value(pc).unwrap_or_default();
                        v["type"] == want.type_.as_str()
                            && v["status"] == want.status.as_str()
                            && v["reason"] == want.reason.as_str()
                            && want.message.as_ref().is_none_or(|m| {
                                v["message"]
                                    .as_str()
                                    .is_some_and(|s| s.contains(m.as_str()))
                            })
                    })
                });
                if !ok {
                    fail(format!(
                        "ClusterCIDR {name}: no condition {want:?}: {}",
                        found
                            .map(|c| serde_json::to_string(&c.conditions).unwrap_or_default())
                            .unwrap_or("absent".into())
                    ));
                }
            }
            if let Some(want) = &core.cidr_node {
                let n = plan.node(&want.node);
                let ok = n.is_some_and(|n| {
                    format!("{:?}", n.state) == want.state
                        && want.reason.as_ref().is_none_or(|r| {
                            n.reason
                                .as_deref()
                                .is_some_and(|got| got.contains(r.as_str()))
                        })
                });
                if !ok {
                    fail(format!(
                        "Node {}: expected {} {:?}, got {:?}",
                        short(&want.node),
                        want.state,
                        want.reason,
                        n.map(|n| (n.state, n.reason.as_deref().map(short)))
                    ));
                }
            }
            if let Some(want) = &core.cidr_error {
                fail(format!(
                    "plan_for_nodes accepted the input, expected an error {want:?}"
                ));
            }
        }
        Some(Err(e)) => match &core.cidr_error {
            Some(want) if e.to_string().contains(want.as_str()) => {}
            _ => fail(format!("plan_for_nodes failed unexpectedly: {e}")),
        },
        None => {}
    }
    let _ = case;
}

fn describe(plans: &[&plan::ServicePlan]) -> String {
    plans
        .iter()
        .map(|p| {
            format!(
                "{} {:?} [{}] daemonset={}",
                p.service,
                p.state,
                p.conditions
                    .iter()
                    .map(|c| format!(
                        "{}={} {} {:?}",
                        c.type_,
                        c.status,
                        c.reason,
                        short(&c.message)
                    ))
                    .collect::<Vec<_>>()
                    .join("; "),
                p.daemonset.is_some()
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Two Nodes whose planned (or kept) pod CIDRs overlap, where at least one was allocated now.
pub fn overlapping(plan: &CidrPlan) -> Option<String> {
    plan.new_overlap().map(|((n1, b1), (n2, b2))| {
        format!(
            "allocated pod CIDRs overlap: {} {b1} and {} {b2}",
            short(n1),
            short(n2)
        )
    })
}

#[test]
fn the_base_environment_serves_a_valid_service() {
    // The checks below are only worth something if this harness does see DaemonSets and rules
    // for a good object: the control case.
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "good", "namespace": "hostile", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ipFamilies": ["IPv4"], "ports": [{"name": "http", "protocol": "TCP", "port": 80, "nodePort": 30080}]},
    });
    let (_, mut observed, nodes, cidrs) = base(&corpus::Setup::default());
    observed
        .services
        .push(Arc::new(from::<Service>(svc.clone())));
    let mut config = Config::new(now());
    config.assume_agents_forwarding = true;
    let d = plan::desired_state(&observed, &config);
    let p = &d.services[0];
    assert_eq!(p.state, ServiceState::Serving, "{:?}", p.conditions);
    assert!(p.daemonset.is_some());
    let ips: BTreeSet<&str> = p.ingress.iter().filter_map(|i| i.ip.as_deref()).collect();
    assert_eq!(ips, BTreeSet::from(["10.0.0.11", "10.0.0.12"]));
    let rs = rules::build_from_json(&naive_slb(&svc, "Pod"), &agent_context(&svc, "Pod", &[]))
        .expect("good spec builds");
    assert_eq!(forwarding_rules(&rs), 1);
    let slb = p.service_load_balancer.as_ref().expect("slb");
    let rs =
        rules::build(&slb.spec, &agent_context(&svc, "Pod", &[])).expect("planned spec builds");
    assert_eq!(forwarding_rules(&rs), 1);
    let cidr = cidr::plan_for_nodes(&nodes, &cidrs).expect("cidr plan");
    assert_eq!(
        cidr.nodes
            .iter()
            .filter(|n| n.state == NodeCidrState::Allocated)
            .count(),
        2
    );
}

#[test]
fn hostile_corpus_is_rejected_without_panics_or_rules() {
    let cases = corpus::load();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let names: BTreeSet<&str> = cases.iter().map(|c| c.case.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "duplicate case names");
    let started = Instant::now();
    let (mut rejected, mut panics, mut rules, mut daemonsets) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for case in &cases {
        let t = Instant::now();
        let out = run_case(case);
        panics += out.panics.len();
        rules += out.rules;
        daemonsets += out.daemonsets;
        if out.panics.is_empty() && out.failures.is_empty() && out.rules == 0 && out.daemonsets == 0
        {
            rejected += 1;
        } else {
            failures.push(format!(
                "{} ({}): panics {:?}; rules {}; DaemonSets {}; {}",
                case.case,
                case.why,
                out.panics,
                out.rules,
                out.daemonsets,
                out.failures.join("; ")
            ));
        }
        assert!(
            t.elapsed().as_secs() < 30,
            "{} took {:?}",
            case.case,
            t.elapsed()
        );
    }
    report::line(&format!(
        "bad-input: {} tried, {rejected} rejected, {panics} panics, {rules} rules ({daemonsets} DaemonSets for rejected objects; input reader, operator core, agent rule builder; {} ms)",
        cases.len(),
        started.elapsed().as_millis()
    ));
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
