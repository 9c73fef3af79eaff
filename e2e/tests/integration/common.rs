//! Shared by the tests that run the real operator: starting replicas, simulated node agents
//! (the agent's own status code, `portway_node_agent::status::KubeStatus`), Events, and waiting
//! for the operator to go quiet.

use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, ListParams};
use portway_crds::condition::{self, reasons, types};
use portway_crds::{NodeForwardingStatus, ServiceLoadBalancer};
use portway_e2e::operator::{self, Operator};
use portway_e2e::requests::{HOUSEKEEPING, Mark, RequestLog, describe};
use portway_e2e::{Identity, TestEnv};
use portway_node_agent::status::{KubeStatus, StatusError, StatusSink};

/// The operator's namespace in every test (where DaemonSets and the Lease live).
pub const OPERATOR_NS: &str = "portway-system";

/// Starts operator replica `name` (also its Lease identity) on `env` as `identity`, with
/// `--namespace=portway-system`, metrics on an ephemeral port and `extra` flags; every request
/// of its client is recorded in `log`.
pub fn start_operator(
    env: &TestEnv,
    name: &str,
    identity: Identity,
    extra: &[&str],
    log: &RequestLog,
) -> Operator {
    let mut flags = operator::base_flags(OPERATOR_NS);
    // A test that names its own metrics address (to read `/readyz`) replaces the ephemeral one.
    if extra.iter().any(|f| f.starts_with("--metrics-addr")) {
        flags.retain(|f| !f.starts_with("--metrics-addr"));
    }
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    let args = operator::run_args(&flags).expect("portway run flags");
    let dir = env.dir().expect("test dir").to_owned();
    Operator::start(name, args, env.client_spec(identity).recorded(log), &dir)
        .expect("start the operator")
}

/// Waits until the operator's counter of successful ServiceLB reconciles reaches `at_least`.
pub async fn reconciled(op: &Operator, at_least: f64, timeout: Duration) {
    let what = format!(
        "operator {} to finish {at_least} ServiceLB reconciles",
        op.name()
    );
    let done = portway_e2e::wait::eventually(&what, timeout, || async {
        (ok_reconciles(op) >= at_least).then_some(())
    })
    .await;
    if let Err(e) = done {
        panic!("{e}; last log lines:\n{}", op.log_tail(30));
    }
}

/// Successful ServiceLB reconciles so far.
pub fn ok_reconciles(op: &Operator) -> f64 {
    op.metric(
        "portway_operator_reconciles_total",
        &[("controller", "servicelb"), ("result", "ok")],
    )
}

/// Waits until `log` has recorded no write (housekeeping aside) for `quiet`, at most `timeout`:
/// the operator has converged.
pub async fn settle(log: &RequestLog, quiet: Duration, timeout: Duration) {
    let started = Instant::now();
    loop {
        let writes = log.writes_since(Mark::START, HOUSEKEEPING);
        let last = writes.last().map(|w| w.at).unwrap_or(started);
        if last.elapsed() >= quiet && started.elapsed() >= quiet {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "the operator kept writing for {timeout:?}; last writes:\n  {}",
            describe(&writes[writes.len().saturating_sub(10)..])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whole seconds: the API server stores condition times with second precision.
pub fn now() -> Time {
    let now = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// The entry a node agent reports: `Forwarding` True (RulesApplied) or False (NoEndpoints).
pub fn agent_entry(
    node: &str,
    generation: Option<i64>,
    forwarding: bool,
    address: &str,
) -> NodeForwardingStatus {
    let (reason, message) = if forwarding {
        (reasons::RULES_APPLIED, format!("forwarding from {address}"))
    } else {
        (reasons::NO_ENDPOINTS, "no target (simulated)".to_owned())
    };
    NodeForwardingStatus {
        node: node.to_owned(),
        observed_generation: generation,
        addresses: vec![address.to_owned()],
        conditions: vec![condition::new(
            types::FORWARDING,
            forwarding,
            reason,
            message,
            generation,
            &now(),
        )],
    }
}

/// Publishes `entry` exactly as the agent on `node` does: the agent's `KubeStatus` sink,
/// server-side apply of `status.nodes[node=<node>]` as field manager `portway-agent/<node>`.
pub async fn agent_publish(
    client: &Client,
    namespace: &str,
    service: &str,
    node: &str,
    entry: &NodeForwardingStatus,
) -> Result<(), StatusError> {
    KubeStatus::new(client.clone(), namespace, service, node)
        .publish(entry)
        .await
}

/// The ServiceLoadBalancer's current generation (agents report it as their observedGeneration).
pub async fn slb_generation(client: &Client, namespace: &str, name: &str) -> Option<i64> {
    Api::<ServiceLoadBalancer>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .ok()
        .and_then(|s| s.metadata.generation)
}

/// `events.k8s.io` Events about `kind` `name` with `reason`, in any namespace.
pub async fn events_about(client: &Client, kind: &str, name: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
                && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

/// `type=status (reason): message` of each condition, for messages.
pub fn show_conditions(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> String {
    conditions
        .iter()
        .map(|c| format!("{}={} ({}): {}", c.type_, c.status, c.reason, c.message))
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The condition `type_` of a ServiceLoadBalancer.
pub fn slb_condition(
    slb: &ServiceLoadBalancer,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    slb.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_).cloned())
}
