//! Housekeeping over the whole desired state: pool statuses, the services-by-state gauge, and
//! deletion of what nothing desires any more (orphaned DaemonSets and ServiceLoadBalancers,
//! agent RoleBindings of namespaces without a served Service). Runs once the caches are synced
//! (the orphan sweep at start), after changes (debounced) and periodically.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::runtime::reflector::ObjectRef;
use portway_crds::ServiceLoadBalancer;
use tracing::info;

use super::context::Context;
use super::error::Error;
use super::writes;
use crate::plan::{self, ServiceState};

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub deleted_daemonsets: usize,
    pub deleted_service_load_balancers: usize,
    pub deleted_role_bindings: usize,
}

/// Runs one sweep. Does nothing until every cache is synced.
pub async fn sweep(ctx: &Context) -> Result<SweepReport, Error> {
    let mut report = SweepReport::default();
    if !ctx.stores.ready() {
        return Err(Error::NotReady);
    }
    let observed = ctx.stores.snapshot();
    // States, pool statuses and cleanup only: building every DaemonSet here would only cost
    // memory (the reconciles build them).
    let mut config = ctx.config();
    config.build_objects = false;
    let desired = plan::desired_state(&observed, &config);

    let mut by_state: BTreeMap<ServiceState, i64> = BTreeMap::new();
    for s in &desired.services {
        *by_state.entry(s.state).or_default() += 1;
    }
    for state in ServiceState::ALL {
        ctx.metrics
            .services
            .with_label_values(&[state.as_str()])
            .set(by_state.get(&state).copied().unwrap_or(0));
    }

    let mut first_error = None;
    let mut keep = |r: Result<(), Error>| {
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    };
    for pool in &desired.pools {
        if let Some(live) = ctx.stores.pools.get(&ObjectRef::new(&pool.name)) {
            keep(writes::apply_pool_status(ctx, &live, &pool.status).await);
        }
    }
    // ServiceLoadBalancers before DaemonSets: an agent stopped by its DaemonSet's deletion must
    // find its ServiceLoadBalancer gone (and remove its rules), not still listing its node.
    for key in &desired.cleanup.service_load_balancers {
        info!(service_load_balancer = %key, "deleting ServiceLoadBalancer of a Service Portway no longer serves");
        keep(writes::delete::<ServiceLoadBalancer>(ctx, key, "serviceloadbalancers").await);
        report.deleted_service_load_balancers += 1;
    }
    for key in &desired.cleanup.daemonsets {
        info!(daemonset = %key, "deleting orphaned node-agent DaemonSet");
        keep(writes::delete::<DaemonSet>(ctx, key, "daemonsets").await);
        report.deleted_daemonsets += 1;
    }
    for key in &desired.cleanup.role_bindings {
        info!(role_binding = %key, "deleting agent RoleBinding of a namespace without served Services");
        keep(writes::delete::<RoleBinding>(ctx, key, "rolebindings").await);
        report.deleted_role_bindings += 1;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}
