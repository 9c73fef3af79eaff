//! Server-side apply of `ServiceLoadBalancer` status as contract 1 designs it: each node agent
//! applies only `status.nodes[node=<its node>]` as field manager `portway-agent/<node>` (force);
//! the operator applies `spec` and `status.{observedGeneration,conditions,targetNodes}` as
//! `servicelb.portway.dev` (force) and never sends `status.nodes`. Two agents (each with its own
//! client) and the operator must never overwrite or drop each other's fields.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use portway_crds::condition::{self, reasons, types};
use portway_crds::names::{API_VERSION, agent_field_manager};
use portway_crds::{
    LoadBalancerPort, NodeForwardingStatus, Protocol, ServiceLoadBalancer, ServiceLoadBalancerSpec,
    ServiceLoadBalancerStatus,
};
use portway_e2e::{TestEnv, report};
use serde_json::{Value, json};

/// The operator's field manager (contract 1).
const OPERATOR: &str = "servicelb.portway.dev";
const NAME: &str = "storefront";

fn now() -> Time {
    // Whole seconds: the API server stores condition times with second precision.
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

fn spec(ports: &[i32]) -> ServiceLoadBalancerSpec {
    ServiceLoadBalancerSpec {
        pool: "workers".into(),
        dataplane: Default::default(),
        ports: ports
            .iter()
            .map(|p| LoadBalancerPort {
                name: format!("p{p}"),
                protocol: Protocol::TCP,
                port: *p,
                host_port: *p,
                node_port: None,
            })
            .collect(),
        cluster_ips: vec!["10.43.0.10".into()],
        ip_families: vec![portway_crds::IpFamily::IPv4],
        external_traffic_policy: Default::default(),
        source_ranges: Vec::new(),
    }
}

/// The operator's spec apply: the typed object, as the operator sends it.
async fn operator_apply_spec(client: &Client, ns: &str, ports: &[i32]) -> ServiceLoadBalancer {
    let mut slb = ServiceLoadBalancer::new(NAME, spec(ports));
    slb.metadata.namespace = Some(ns.to_owned());
    let body = serde_json::to_value(&slb).expect("serialize");
    assert!(
        body.get("status").is_none_or(Value::is_null),
        "a spec apply carries no status: {body}"
    );
    Api::<ServiceLoadBalancer>::namespaced(client.clone(), ns)
        .patch(
            NAME,
            &PatchParams::apply(OPERATOR).force(),
            &Patch::Apply(&body),
        )
        .await
        .expect("operator spec apply")
}

/// The operator's status apply: only observedGeneration, conditions and targetNodes.
async fn operator_apply_status(
    client: &Client,
    ns: &str,
    generation: i64,
    conditions: Vec<Condition>,
) -> ServiceLoadBalancer {
    let status = ServiceLoadBalancerStatus {
        observed_generation: Some(generation),
        conditions,
        target_nodes: vec!["node-a".to_owned()],
        nodes: Vec::new(),
    };
    let status = serde_json::to_value(&status).expect("serialize");
    assert!(
        status.get("nodes").is_none(),
        "an operator status apply must not carry status.nodes: {status}"
    );
    let body = json!({
        "apiVersion": API_VERSION,
        "kind": "ServiceLoadBalancer",
        "metadata": { "name": NAME, "namespace": ns },
        "status": status,
    });
    Api::<ServiceLoadBalancer>::namespaced(client.clone(), ns)
        .patch_status(
            NAME,
            &PatchParams::apply(OPERATOR).force(),
            &Patch::Apply(&body),
        )
        .await
        .expect("operator status apply")
}

fn entry(node: &str, generation: i64, forwarding: bool, address: &str) -> NodeForwardingStatus {
    let (reason, message) = if forwarding {
        (reasons::RULES_APPLIED, "forwarding 1 port")
    } else {
        (reasons::NO_ENDPOINTS, "no ready endpoints")
    };
    NodeForwardingStatus {
        node: node.to_owned(),
        observed_generation: Some(generation),
        addresses: vec![address.to_owned()],
        conditions: vec![condition::new(
            types::FORWARDING,
            forwarding,
            reason,
            message,
            Some(generation),
            &now(),
        )],
    }
}

/// Agent `node`'s status apply: `status.nodes` holding only its own entry (none: withdraw it).
fn agent_body(ns: &str, entry: Option<NodeForwardingStatus>) -> Value {
    let status = ServiceLoadBalancerStatus {
        nodes: entry.into_iter().collect(),
        ..ServiceLoadBalancerStatus::default()
    };
    json!({
        "apiVersion": API_VERSION,
        "kind": "ServiceLoadBalancer",
        "metadata": { "name": NAME, "namespace": ns },
        "status": status,
    })
}

async fn agent_apply(
    client: &Client,
    ns: &str,
    node: &str,
    entry: Option<NodeForwardingStatus>,
) -> kube::Result<ServiceLoadBalancer> {
    Api::<ServiceLoadBalancer>::namespaced(client.clone(), ns)
        .patch_status(
            NAME,
            &PatchParams::apply(&agent_field_manager(node)).force(),
            &Patch::Apply(&agent_body(ns, entry)),
        )
        .await
}

async fn read(client: &Client, ns: &str) -> ServiceLoadBalancer {
    Api::<ServiceLoadBalancer>::namespaced(client.clone(), ns)
        .get(NAME)
        .await
        .expect("get")
}

fn nodes(slb: &ServiceLoadBalancer) -> Vec<NodeForwardingStatus> {
    slb.status.clone().unwrap_or_default().nodes
}

fn node_entry(slb: &ServiceLoadBalancer, node: &str) -> Option<NodeForwardingStatus> {
    nodes(slb).into_iter().find(|n| n.node == node)
}

/// The `status` fields (managedFields, subresource `status`) that `manager` owns, as JSON text.
fn owned_status_fields(slb: &ServiceLoadBalancer, manager: &str) -> String {
    slb.managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.fields_v1.as_ref())
        .map(|f| serde_json::to_string(&f.0).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn agent_status_entries_never_overwrite_each_other() {
    let Some(env) = TestEnv::start_or_skip("agent_status_entries_never_overwrite_each_other").await
    else {
        return;
    };
    let ns = env.namespace("ssa-agents").await.expect("namespace");
    let operator = env.new_client().expect("operator client");
    let agent_a = env.new_client().expect("agent client");
    let agent_b = env.new_client().expect("agent client");
    operator_apply_spec(&operator, &ns, &[80]).await;

    let a1 = entry("node-a", 1, true, "192.0.2.1");
    let b1 = entry("node-b", 1, true, "192.0.2.2");
    agent_apply(&agent_a, &ns, "node-a", Some(a1.clone()))
        .await
        .expect("a");
    agent_apply(&agent_b, &ns, "node-b", Some(b1.clone()))
        .await
        .expect("b");
    let slb = read(&operator, &ns).await;
    assert_eq!(node_entry(&slb, "node-a"), Some(a1));
    assert_eq!(node_entry(&slb, "node-b"), Some(b1));

    // Each manager owns exactly its own entry.
    let owned_a = owned_status_fields(&slb, &agent_field_manager("node-a"));
    let owned_b = owned_status_fields(&slb, &agent_field_manager("node-b"));
    assert!(owned_a.contains(r#"k:{\"node\":\"node-a\"}"#), "{owned_a}");
    assert!(!owned_a.contains("node-b"), "{owned_a}");
    assert!(owned_b.contains(r#"k:{\"node\":\"node-b\"}"#), "{owned_b}");
    assert!(!owned_b.contains("node-a"), "{owned_b}");

    // Both agents write at the same moment, round after round: updates of their addresses,
    // generations and Forwarding conditions (True <-> False) never touch the other entry.
    const ROUNDS: i64 = 12;
    for round in 2..=ROUNDS {
        let a = entry(
            "node-a",
            round,
            round % 2 == 0,
            &format!("192.0.2.{}", 10 + round),
        );
        let b = entry(
            "node-b",
            round,
            round % 3 != 0,
            &format!("198.51.100.{round}"),
        );
        let (ra, rb) = tokio::join!(
            agent_apply(&agent_a, &ns, "node-a", Some(a.clone())),
            agent_apply(&agent_b, &ns, "node-b", Some(b.clone())),
        );
        ra.unwrap_or_else(|e| panic!("round {round}, agent a: {e}"));
        rb.unwrap_or_else(|e| panic!("round {round}, agent b: {e}"));
        let slb = read(&operator, &ns).await;
        assert_eq!(nodes(&slb).len(), 2, "round {round}: {:?}", nodes(&slb));
        assert_eq!(node_entry(&slb, "node-a"), Some(a), "round {round}");
        assert_eq!(node_entry(&slb, "node-b"), Some(b), "round {round}");
    }

    // Without force, an agent cannot take over another node's entry: SSA reports a conflict.
    // (With force it could; the chart's ValidatingAdmissionPolicy closes that, phase 2 tests it.)
    let hijack = Api::<ServiceLoadBalancer>::namespaced(agent_a.clone(), &ns)
        .patch_status(
            NAME,
            &PatchParams::apply(&agent_field_manager("node-a")),
            &Patch::Apply(&agent_body(
                &ns,
                Some(entry("node-b", 99, false, "203.0.113.9")),
            )),
        )
        .await;
    match hijack {
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        other => panic!("non-forced apply of another node's entry: {other:?}"),
    }

    // An agent that withdraws (applies no entry) removes only its own.
    let before_b = node_entry(&read(&operator, &ns).await, "node-b");
    agent_apply(&agent_a, &ns, "node-a", None)
        .await
        .expect("withdraw");
    let slb = read(&operator, &ns).await;
    assert_eq!(node_entry(&slb, "node-a"), None);
    assert_eq!(node_entry(&slb, "node-b"), before_b);
    report::line(&format!(
        "api-server ssa: 2 agents x {ROUNDS} concurrent rounds, entries kept apart; hijack without force refused (409)"
    ));
}

#[tokio::test]
async fn operator_writes_never_drop_agent_entries() {
    let Some(env) = TestEnv::start_or_skip("operator_writes_never_drop_agent_entries").await else {
        return;
    };
    let ns = env.namespace("ssa-operator").await.expect("namespace");
    let operator = env.new_client().expect("operator client");
    let agent_a = env.new_client().expect("agent client");
    let agent_b = env.new_client().expect("agent client");

    let created = operator_apply_spec(&operator, &ns, &[80]).await;
    assert_eq!(created.metadata.generation, Some(1));
    let a1 = entry("node-a", 1, true, "192.0.2.1");
    let b1 = entry("node-b", 1, false, "192.0.2.2");
    agent_apply(&agent_a, &ns, "node-a", Some(a1.clone()))
        .await
        .expect("a");
    agent_apply(&agent_b, &ns, "node-b", Some(b1.clone()))
        .await
        .expect("b");

    // Operator status apply: its conditions appear, the agents' entries stay.
    let t = now();
    let pool_selected = condition::new(
        types::POOL_SELECTED,
        true,
        reasons::POOL_MATCHED,
        "pool workers",
        Some(1),
        &t,
    );
    let not_ready = condition::new(
        types::READY,
        false,
        reasons::AGENTS_NOT_FORWARDING,
        "1 of 2 agents forwarding",
        Some(1),
        &t,
    );
    let slb =
        operator_apply_status(&operator, &ns, 1, vec![pool_selected.clone(), not_ready]).await;
    let status = slb.status.clone().unwrap_or_default();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.conditions.len(), 2);
    assert_eq!(node_entry(&slb, "node-a"), Some(a1.clone()));
    assert_eq!(node_entry(&slb, "node-b"), Some(b1.clone()));

    // A condition change by the operator, while an agent updates: still nothing lost.
    let b2 = entry("node-b", 1, true, "192.0.2.2");
    let ready = condition::new(
        types::READY,
        true,
        reasons::AGENTS_FORWARDING,
        "2 of 2 agents forwarding",
        Some(1),
        &now(),
    );
    let (op, ag) = tokio::join!(
        operator_apply_status(
            &operator,
            &ns,
            1,
            vec![pool_selected.clone(), ready.clone()]
        ),
        agent_apply(&agent_b, &ns, "node-b", Some(b2.clone())),
    );
    ag.expect("agent b update");
    drop(op);
    let slb = read(&operator, &ns).await;
    assert_eq!(node_entry(&slb, "node-a"), Some(a1.clone()));
    assert_eq!(node_entry(&slb, "node-b"), Some(b2.clone()));
    assert!(condition::is_true(
        &slb.status.clone().unwrap_or_default().conditions,
        types::READY
    ));

    // A spec apply by the operator bumps the generation and leaves all of status alone.
    let status_before = slb.status.clone();
    let updated = operator_apply_spec(&operator, &ns, &[80, 443]).await;
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(updated.spec.ports.len(), 2);
    assert_eq!(updated.status, status_before, "a spec apply changed status");

    // Agents catch up to generation 2; the operator's conditions stay.
    let a3 = entry("node-a", 2, true, "192.0.2.1");
    agent_apply(&agent_a, &ns, "node-a", Some(a3.clone()))
        .await
        .expect("a");
    let slb = read(&operator, &ns).await;
    assert_eq!(
        slb.status.clone().unwrap_or_default().conditions,
        status_before.clone().unwrap_or_default().conditions
    );

    // The operator drops a condition type by leaving it out: only that goes.
    let slb = operator_apply_status(&operator, &ns, 2, vec![ready]).await;
    let status = slb.status.clone().unwrap_or_default();
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(
        status
            .conditions
            .iter()
            .map(|c| c.type_.as_str())
            .collect::<Vec<_>>(),
        [types::READY]
    );
    assert_eq!(node_entry(&slb, "node-a"), Some(a3));
    assert_eq!(node_entry(&slb, "node-b"), Some(b2));

    // The operator owns no node entry at all.
    let owned = owned_status_fields(&slb, OPERATOR);
    assert!(
        !owned.contains("nodes"),
        "operator owns status.nodes: {owned}"
    );
    report::line("api-server ssa: operator status and spec applies kept both agents' entries");
}
