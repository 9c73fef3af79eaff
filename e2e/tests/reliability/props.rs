//! Fuzzing in `cargo test`, with a fixed budget: property tests that mutate whole inputs (the
//! shipped `examples/` plus the hostile corpus) and push them through the `portway plan` input
//! reader, the operator's core and the agent's rule builder, checking properties that span the
//! components:
//! - nothing panics (proptest fails the case);
//! - the core is deterministic, also when its input comes in reverse order;
//! - every ServiceLoadBalancer the operator plans is accepted by the agent's rule builder (the
//!   operator never deploys agents that can only report an invalid spec);
//! - allocated pod CIDRs never overlap; persisted condition messages fit the API;
//! - every rule set the agent builds is sane: ports 1..=65535, destinations present and usable,
//!   at most `MAX_TARGETS_PER_PORT` targets.
//!
//! The budget is [`CASES`] cases per property (a few seconds in a debug build); the cargo-fuzz
//! targets in `fuzz/` run the same pipelines without a budget. Prints one `fuzz-props:` line.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use portway_crds::ServiceLoadBalancer;
use portway_e2e::report;
use portway_node_agent::rules::{self, Context, MAX_TARGETS_PER_PORT, RuleSet};
use portway_operator::input::InputSet;
use portway_operator::plan::{self, Config, Observed};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use serde_json::{Value, json};

use crate::bad_input::{self, MAX_CONDITION_MESSAGE};

/// Cases per property.
pub const CASES: u32 = 128;

fn seed_documents() -> Vec<Value> {
    let root = portway_e2e::envtest::workspace_root();
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(root.join("examples"))
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read example");
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text).expect("example YAML");
        docs.extend(parsed.into_iter().filter(|d| !d.is_null()));
    }
    docs
}

/// Values a mutation writes: boundaries, wrong types, near-misses of valid values, hostile text.
fn pool() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(1),
        json!(65535),
        json!(65536),
        json!(i64::from(i32::MAX) + 1),
        json!(i64::MAX),
        json!(1.5),
        json!(""),
        json!("x".repeat(70)),
        json!("x".repeat(5000)),
        json!("None"),
        json!("TCP"),
        json!("UDP"),
        json!("SCTP"),
        json!("ICMP"),
        json!("IPv4"),
        json!("IPv6"),
        json!("Local"),
        json!("Cluster"),
        json!("Host"),
        json!("Pod"),
        json!("In"),
        json!("Exists"),
        json!("Equals"),
        json!("LoadBalancer"),
        json!("ClusterIP"),
        json!("10.43.0.10"),
        json!("fd00::10"),
        json!("127.0.0.1"),
        json!("0.0.0.0"),
        json!("::"),
        json!("10.0.0.0/33"),
        json!("10.42.1.0/16"),
        json!("10.42.0.0/16"),
        json!("fd00:42::/56"),
        json!("203.0.113.0/24"),
        json!("0.0.0.0/0 -j ACCEPT"),
        json!("a\"; rm -rf /"),
        json!("ünïcødé"),
        json!("worker-1"),
        json!("default"),
        json!({}),
        json!([]),
        json!(["10.43.0.10", "fd00::10", "10.43.0.11"]),
        json!([{"name": "x", "protocol": "TCP", "port": 80}]),
        json!({"matchLabels": {"zone": "a"}}),
        json!({"nodeSelectorTerms": [{}]}),
    ]
}

/// Every JSON pointer in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        _ => {}
    }
}

/// One mutation: which pointer (modulo their number), what to do, which pool value.
#[derive(Clone, Debug)]
struct Mutation {
    at: u32,
    op: u8,
    value: usize,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (any::<u32>(), 0u8..4, 0usize..pool().len()).prop_map(|(at, op, value)| Mutation {
        at,
        op,
        value,
    })
}

/// Applies `m` to one document of the list (`m.at` picks the document, then the place in it);
/// returns the index of the document it changed.
fn apply(docs: &mut [Value], m: &Mutation, values: &[Value]) -> Option<usize> {
    if docs.is_empty() {
        return None;
    }
    let count = docs.len();
    let doc_index = m.at as usize % count;
    let doc = &mut docs[doc_index];
    let mut ptrs = Vec::new();
    pointers(doc, String::new(), &mut ptrs);
    // Keep kind and apiVersion: a document of another kind is not a mutation of this one.
    ptrs.retain(|p| p != "/kind" && p != "/apiVersion");
    if ptrs.is_empty() {
        return None;
    }
    let ptr = ptrs[(m.at as usize / count) % ptrs.len()].clone();
    let (parent_ptr, last) = ptr.rsplit_once('/').unwrap_or(("", ""));
    let new = values[m.value % values.len()].clone();
    match m.op {
        // Replace the value.
        0 => {
            if let Some(slot) = doc.pointer_mut(&ptr) {
                *slot = new;
            }
        }
        // Remove the field / element.
        1 => match doc.pointer_mut(parent_ptr) {
            Some(Value::Object(o)) => {
                o.remove(&last.replace("~1", "/").replace("~0", "~"));
            }
            Some(Value::Array(a)) => {
                if let Ok(i) = last.parse::<usize>()
                    && i < a.len()
                {
                    a.remove(i);
                }
            }
            _ => {}
        },
        // Duplicate an array element (duplicate ports, addresses, selector terms).
        2 => {
            if let Some(Value::Array(a)) = doc.pointer_mut(parent_ptr)
                && let Ok(i) = last.parse::<usize>()
                && let Some(item) = a.get(i).cloned()
            {
                a.push(item);
            }
        }
        // Add a field with that value next to this one.
        _ => {
            if let Some(Value::Object(o)) = doc.pointer_mut(parent_ptr) {
                let keys = [
                    "port",
                    "nodePort",
                    "hostPort",
                    "protocol",
                    "clusterIPs",
                    "ipFamilies",
                    "externalTrafficPolicy",
                    "loadBalancerClass",
                    "podCIDRs",
                    "priority",
                    "autoAssign",
                    "dataplane",
                    "deletionTimestamp",
                    "finalizers",
                ];
                o.insert(keys[m.value % keys.len()].to_owned(), new);
            }
        }
    }
    Some(doc_index)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

/// The typed view of `docs`, bypassing validation (what a cluster without CEL rules delivers);
/// documents that do not deserialize are left out, as a guarded watch would.
fn typed(docs: &[Value]) -> (Observed, Vec<Node>, Vec<portway_crds::ClusterCIDR>) {
    let mut o = Observed::default();
    let mut nodes = Vec::new();
    let mut cidrs = Vec::new();
    // A cluster holds one object per kind, namespace and name: keep the first of duplicates.
    let mut seen = std::collections::BTreeSet::new();
    for d in docs {
        let key = (
            d["kind"].to_string(),
            d["metadata"]["namespace"].to_string(),
            d["metadata"]["name"].to_string(),
        );
        if !seen.insert(key) {
            continue;
        }
        let v = d.clone();
        match d["kind"].as_str() {
            Some("Service") => {
                if let Ok(s) = serde_json::from_value::<Service>(v) {
                    o.services.push(Arc::new(s));
                }
            }
            Some("Node") => {
                if let Ok(n) = serde_json::from_value::<Node>(v) {
                    nodes.push(n);
                }
            }
            Some("LoadBalancerPool") => {
                if let Ok(p) = serde_json::from_value(v) {
                    o.pools.push(Arc::new(p));
                }
            }
            Some("ClusterCIDR") => {
                if let Ok(c) = serde_json::from_value(v) {
                    cidrs.push(c);
                }
            }
            Some("EndpointSlice") => {
                if let Ok(s) = serde_json::from_value(v) {
                    o.endpoint_slices.push(Arc::new(s));
                }
            }
            Some("Namespace") => {
                if let Ok(n) = serde_json::from_value(v) {
                    o.namespaces.push(Arc::new(n));
                }
            }
            _ => {}
        }
    }
    o.nodes = nodes.iter().cloned().map(Arc::new).collect();
    (o, nodes, cidrs)
}

fn reversed(o: &Observed) -> Observed {
    let mut r = o.clone();
    r.services.reverse();
    r.nodes.reverse();
    r.pools.reverse();
    r.endpoint_slices.reverse();
    r.namespaces.reverse();
    r
}

/// An agent context that has addresses of both families, so nothing is left out for lack of one.
fn context_for(slb: &ServiceLoadBalancer) -> Context {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    Context {
        namespace: slb.metadata.namespace.clone().unwrap_or_default(),
        name: slb.metadata.name.clone().unwrap_or_default(),
        node_name: "worker-1".to_owned(),
        local_addresses: vec![ip("10.42.1.5"), ip("fd00:42:1::5")],
        host_ips: vec![ip("203.0.113.11"), ip("2001:db8::11")],
        endpoint_slices: Vec::new(),
    }
}

fn check_rules(rs: &RuleSet) -> Result<(), String> {
    for f in &rs.families {
        for fw in &f.forwards {
            if fw.port == 0 || fw.destinations.is_empty() {
                return Err(format!("degenerate forward {fw:?}"));
            }
            if let Some(d) = fw.destinations.iter().find(|d| !rules::is_usable(d)) {
                return Err(format!("forward from unusable address {d}"));
            }
            if fw.targets.len() > MAX_TARGETS_PER_PORT {
                return Err(format!("{} targets", fw.targets.len()));
            }
        }
    }
    Ok(())
}

/// The pipeline on one mutated document list; `Err` names the broken property.
fn pipeline(docs: &[Value], mutated: &[usize]) -> Result<(), String> {
    // The `portway plan` path: the reader (on the mutated documents: its schema and CEL checks
    // dominate the cost, and the others are known good), then the core on what it kept.
    let mut set = InputSet::default();
    for i in mutated {
        if let Some(d) = docs.get(*i) {
            set.add_value(&format!("doc#{i}"), d.clone());
        }
    }
    let mut config = Config::new(now());
    config.assume_agents_forwarding = true;
    let from_reader = portway_operator::cli::plan::observed(&set);
    let _ = plan::desired_state(&from_reader, &config);
    let _ = portway_operator::cidr::plan_for_nodes(&set.nodes, &set.cluster_cidrs);

    // The controller path, unvalidated.
    let (observed, nodes, cidrs) = typed(docs);
    let desired = plan::desired_state(&observed, &config);
    if plan::desired_state(&observed, &config) != desired {
        return Err("desired_state is not deterministic".into());
    }
    if plan::desired_state(&reversed(&observed), &config) != desired {
        return Err("desired_state depends on input order".into());
    }
    for p in &desired.services {
        if let Some(slb) = &p.service_load_balancer {
            if let Err(e) = rules::build(&slb.spec, &context_for(slb)) {
                return Err(format!(
                    "the operator planned {} with a spec the agent refuses: {e}",
                    p.service
                ));
            }
            for c in slb.status.iter().flat_map(|s| &s.conditions) {
                if c.message.len() > MAX_CONDITION_MESSAGE {
                    return Err(format!(
                        "{}: {} byte condition message",
                        p.service,
                        c.message.len()
                    ));
                }
            }
        }
    }
    if let Ok(cidr_plan) = portway_operator::cidr::plan_for_nodes(&nodes, &cidrs)
        && let Some(overlap) = bad_input::overlapping(&cidr_plan)
    {
        return Err(overlap);
    }

    // The agent, on what a careless writer would derive from each (mutated) Service.
    for d in docs.iter().filter(|d| d["kind"] == "Service") {
        for dataplane in ["Pod", "Host"] {
            let slb = bad_input::naive_slb(d, dataplane);
            let ctx = Context {
                namespace: "shop".into(),
                name: "svc".into(),
                node_name: "worker-1".into(),
                local_addresses: vec!["10.42.1.5".parse().expect("ip")],
                host_ips: vec!["203.0.113.11".parse().expect("ip")],
                endpoint_slices: Vec::new(),
            };
            if let Ok(rs) = rules::build_from_json(&slb, &ctx) {
                check_rules(&rs)?;
            }
        }
    }
    Ok(())
}

static CASES_RUN: AtomicUsize = AtomicUsize::new(0);

#[test]
fn mutated_inputs_keep_the_cross_component_properties() {
    let mut seeds = seed_documents();
    seeds.extend(
        crate::corpus::load()
            .into_iter()
            .filter(|c| c.objects.iter().all(|o| o.to_string().len() < 64 * 1024))
            .flat_map(|c| c.objects),
    );
    let values = pool();
    let base = seeds;
    let started = Instant::now();
    // PORTWAY_FUZZ_CASES raises the budget for a longer local run.
    let cases = std::env::var("PORTWAY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    let mut runner = TestRunner::new(PtConfig {
        cases,
        max_shrink_iters: 256,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let result = runner.run(&proptest::collection::vec(mutation(), 1..12), |muts| {
        CASES_RUN.fetch_add(1, Ordering::Relaxed);
        let mut docs = base.clone();
        let mut mutated: Vec<usize> = muts
            .iter()
            .filter_map(|m| apply(&mut docs, m, &values))
            .collect();
        mutated.sort_unstable();
        mutated.dedup();
        pipeline(&docs, &mutated)
            .map_err(|e| TestCaseError::fail(format!("{e}\nmutations: {muts:?}")))
    });
    let elapsed = started.elapsed();
    report::line(&format!(
        "fuzz-props: {} mutated inputs ({} cases budgeted, up to 11 mutations of {} documents) through reader, core and agent in {} ms, {}",
        CASES_RUN.load(Ordering::Relaxed),
        cases,
        base.len(),
        elapsed.as_millis(),
        if result.is_ok() {
            "no property broken"
        } else {
            "a property broke"
        }
    ));
    if let Err(e) = result {
        panic!("{e}");
    }
}
