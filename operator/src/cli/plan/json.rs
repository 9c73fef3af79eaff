//! `-o json`: the whole plan as one JSON document, for pipelines. Its schema is checked in as
//! `docs/schemas/plan.schema.json` (the tests validate the output against it); a field is only
//! ever added, and `format` changes when one changes meaning.

use k8s_openapi::api::core::v1::LoadBalancerIngress;
use serde::Serialize;
use serde_json::Value;

use super::{Plan, Problem, pool_status_object, ready_reason, service_status_object};
use crate::cidr::{ClusterCidrOutcome, NodeCidrs};
use crate::input::Skipped;
use crate::plan::PoolPlan;

/// `format` of the plan document.
pub const PLAN_FORMAT: &str = "portway.dev/plan/v1";

/// The plan document.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDocument<'a> {
    /// [`PLAN_FORMAT`].
    pub format: &'static str,
    /// The time written into planned conditions (see [`super::plan_time`]).
    pub time: String,
    pub summary: Summary,
    /// Portway's Services, by namespace/name.
    pub services: Vec<ServiceEntry>,
    /// LoadBalancer Services of another class, left alone.
    pub ignored_services: Vec<IgnoredService>,
    /// Pool statuses, by name.
    pub pools: Vec<&'a PoolPlan>,
    /// ClusterCIDR use and conditions, by name (empty when pod CIDRs cannot be planned).
    #[serde(rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<&'a ClusterCidrOutcome>,
    /// Pod CIDRs each Node has or gets, by name (empty when they cannot be planned).
    pub nodes: Vec<&'a NodeCidrs>,
    /// Why pod CIDRs cannot be planned, when they cannot.
    #[serde(rename = "podCIDRError", skip_serializing_if = "Option::is_none")]
    pub pod_cidr_error: Option<String>,
    /// Every object the operator would write, in the order `-o yaml` prints them: per Service
    /// its DaemonSet, ServiceLoadBalancer and Service status; RoleBindings; pool statuses.
    pub objects: Vec<Value>,
    /// Documents not used, by source.
    pub rejected: Vec<&'a Skipped>,
    /// What `--strict` fails on.
    pub problems: Vec<Problem>,
}

/// Counts.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Services with a ServiceLoadBalancer.
    pub services_served: usize,
    /// Portway's Services not in state `serving`.
    pub services_not_serving: usize,
    pub services_ignored: usize,
    pub rejected: usize,
    pub problems: usize,
}

/// One of Portway's Services.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    /// `serving`, `port_conflict`, `no_pool`... (the `services by state` metric's labels).
    pub state: &'static str,
    /// Reason of its `portway.dev/LoadBalancer` condition (`Serving`, `PortConflict`...).
    pub reason: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_set: Option<String>,
    /// Nodes its agents run on, by name.
    pub nodes: Vec<String>,
    /// `status.loadBalancer.ingress`.
    pub ingress: Vec<LoadBalancerIngress>,
}

/// A LoadBalancer Service of another class.
#[derive(Serialize)]
pub struct IgnoredService {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// Builds the plan document.
pub fn document<'a>(plan: &'a Plan<'a>) -> PlanDocument<'a> {
    let d = &plan.desired;
    let services: Vec<ServiceEntry> = d
        .services
        .iter()
        .map(|p| {
            let (reason, message) = ready_reason(p);
            ServiceEntry {
                namespace: p.service.namespace.clone(),
                name: p.service.name.clone(),
                state: p.state.as_str(),
                reason,
                message,
                pool: p.pool.clone(),
                daemon_set: p.daemonset.as_ref().and_then(|ds| ds.metadata.name.clone()),
                nodes: plan.nodes.get(&p.service).cloned().unwrap_or_default(),
                ingress: p.ingress.as_ref().clone(),
            }
        })
        .collect();
    let mut objects = Vec::new();
    for p in &d.services {
        objects.extend(p.daemonset.as_ref().and_then(to_value));
        objects.extend(p.service_load_balancer.as_ref().and_then(to_value));
        objects.push(service_status_object(p));
    }
    objects.extend(d.role_bindings.iter().filter_map(to_value));
    objects.extend(d.pools.iter().map(pool_status_object));
    let (cluster_cidrs, nodes, pod_cidr_error) = match &plan.cidrs {
        Ok(c) => (
            c.cluster_cidrs.iter().collect(),
            c.nodes.iter().collect(),
            None,
        ),
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    let problems = plan.problems();
    PlanDocument {
        format: PLAN_FORMAT,
        time: super::plan_time().0.to_string(),
        summary: Summary {
            services_served: d
                .services
                .iter()
                .filter(|s| s.service_load_balancer.is_some())
                .count(),
            services_not_serving: services.iter().filter(|s| s.state != "serving").count(),
            services_ignored: d.ignored.len(),
            rejected: plan.rejected.len(),
            problems: problems.len(),
        },
        services,
        ignored_services: d
            .ignored
            .iter()
            .map(|(key, why)| IgnoredService {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                reason: why.clone(),
            })
            .collect(),
        pools: d.pools.iter().collect(),
        cluster_cidrs,
        nodes,
        pod_cidr_error,
        objects,
        rejected: plan.rejected.clone(),
        problems,
    }
}

fn to_value<T: Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

/// `-o json`: the document, pretty-printed, with a final newline.
pub fn render(plan: &Plan<'_>) -> String {
    to_json(&document(plan))
}

/// Pretty JSON with a final newline; an error object if `v` cannot be serialized (it always
/// can: every map key is a string).
pub fn to_json<T: Serialize>(v: &T) -> String {
    match serde_json::to_string_pretty(v) {
        Ok(s) => s + "\n",
        Err(e) => serde_json::json!({ "error": e.to_string() }).to_string() + "\n",
    }
}
