//! Reconcile of one Service: plan it with the pure core, then write only what differs. The
//! finalizer is the only top-level decision: a served Service gets it before anything is
//! created; a Service that is no longer served (deleted, type or class changed) is cleaned up and
//! then released.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType as KubeEventType};
use kube::runtime::reflector::ObjectRef;
use portway_crds::ServiceLoadBalancer;
use portway_crds::names as n;
use tracing::{Instrument, debug, info_span, warn};

use super::context::Context;
use super::error::Error;
use super::{CONTROLLER, writes};
use crate::plan::assign::{Placement, ServiceAssignment};
use crate::plan::{
    self, EventType, FinalizerAction, Key, PlannedEvent, ServicePlan, conditions, names, rbac,
};

/// Wait before planning again when stale `status.nodes` entries could not be removed because the
/// list changed meanwhile (the change's own watch event usually comes first).
pub const PRUNE_RETRY: Duration = Duration::from_secs(2);

fn has_finalizer(svc: &Service) -> bool {
    svc.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == n::SERVICE_FINALIZER))
}

/// The controller's reconcile: one span per Service, metrics, then [`reconcile_service`].
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = Key::of(&svc.metadata);
    let span = info_span!("reconcile", controller = CONTROLLER, service = %key);
    let start = Instant::now();
    let result = reconcile_service(&svc, &ctx).instrument(span).await;
    ctx.metrics
        .duration
        .with_label_values(&[CONTROLLER])
        .observe(start.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .with_label_values(&[CONTROLLER, outcome])
        .inc();
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

/// The controller's error policy: count by category, retry with per-Service exponential backoff
/// (1 s, 2 s, 4 s ... 5 min). 409 conflicts, 5xx and timeouts all take this path.
pub fn error_policy(svc: Arc<Service>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = Key::of(&svc.metadata);
    ctx.metrics
        .errors
        .with_label_values(&[CONTROLLER, error.category()])
        .inc();
    let wait = ctx.backoff(&key);
    warn!(service = %key, category = error.category(), retry_in = ?wait, "reconcile failed: {error}");
    Action::requeue(wait)
}

/// Plans and writes one Service.
pub async fn reconcile_service(svc: &Service, ctx: &Context) -> Result<Action, Error> {
    if !ctx.stores.ready() {
        debug!("caches not synced yet");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let key = Key::of(&svc.metadata);
    let assignment = ctx.assignment();
    let live_finalizer = has_finalizer(svc);
    let a = match assignment.services.get(&key) {
        Some(a) => {
            let mut a = a.clone();
            a.has_finalizer = live_finalizer;
            if matches!(a.placement, Placement::Released) && !live_finalizer {
                withdraw_condition(ctx, svc).await?;
                return Ok(Action::await_change());
            }
            // The cached assignment is only recomputed when what it reads changes, which
            // excludes the status Portway writes: the core must see the live conditions.
            a.service = Arc::new(svc.clone());
            a
        }
        None if live_finalizer => ServiceAssignment {
            daemonset_name: names::daemonset_name(&key),
            key: key.clone(),
            service: Arc::new(svc.clone()),
            placement: Placement::Released,
            has_finalizer: true,
        },
        None => {
            // Not ours (any more: e.g. an unplaced Service that moved to another class or
            // type): make sure nothing of ours claims it.
            ctx.forget(&key);
            withdraw_condition(ctx, svc).await?;
            return Ok(Action::await_change());
        }
    };
    let slb_ref = ObjectRef::<ServiceLoadBalancer>::new(&key.name).within(&key.namespace);
    let live_slb = ctx.stores.service_load_balancers.get(&slb_ref);
    let slices = ctx.stores.endpoint_slices.state_filter(|s| {
        s.metadata.namespace.as_deref() == Some(key.namespace.as_str())
            && s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(n::ENDPOINTSLICE_SERVICE_LABEL))
                .is_some_and(|v| *v == key.name)
    });
    let config = ctx.config();
    let plan = plan::service::plan_service(&a, &assignment, live_slb.as_deref(), &slices, &config);
    let ds_ref = ObjectRef::<DaemonSet>::new(&a.daemonset_name).within(&ctx.args.namespace);
    let live_ds = ctx.stores.daemonsets.get(&ds_ref);

    match plan.finalizer {
        FinalizerAction::Ensure => {
            writes::ensure_finalizer(ctx, svc).await?;
            let rb: RoleBinding = rbac::role_binding(&key.namespace, &config);
            writes::ensure_role_binding(ctx, &rb).await?;
            let Some(slb) = plan.service_load_balancer.as_ref() else {
                return Ok(Action::requeue(ctx.resync));
            };
            let generation = writes::apply_slb(ctx, slb, live_slb.as_deref()).await?;
            // The status (with `targetNodes`) before the DaemonSet: an agent the DaemonSet
            // change stops must read whether its node is still a target (docs/node-agent.md,
            // "Upgrades and restarts"). A failed status write stops here, DaemonSet unchanged.
            writes::apply_slb_status(ctx, slb, live_slb.as_deref(), generation).await?;
            match (&plan.daemonset, &live_ds) {
                (Some(ds), live) => writes::apply_daemonset(ctx, ds, live.as_deref()).await?,
                (None, Some(_)) => {
                    let ds_key = Key::new(&ctx.args.namespace, &a.daemonset_name);
                    writes::delete::<DaemonSet>(ctx, &ds_key, "daemonsets").await?;
                }
                (None, None) => {}
            }
            writes::apply_service_status(
                ctx,
                svc,
                plan.ingress.as_slice(),
                plan.service_condition.as_ref(),
            )
            .await?;
            let pruned =
                writes::prune_node_entries(ctx, live_slb.as_deref(), &plan.stale_node_entries)
                    .await?;
            publish(ctx, svc, &plan, &plan.events).await;
            if pruned == writes::Pruned::Conflict {
                return Ok(Action::requeue(PRUNE_RETRY));
            }
        }
        FinalizerAction::Remove => {
            let version = cleanup(
                ctx,
                svc,
                &a.daemonset_name,
                live_ds.is_some(),
                live_slb.is_some(),
                plan.service_condition.as_ref(),
            )
            .await?;
            // Withdrawing the ingress moved the Service's resourceVersion: the optimistic
            // finalizer patch must carry the new one (else it always fails once with 409).
            let mut current = svc.clone();
            if version.is_some() {
                current.metadata.resource_version = version;
            }
            writes::remove_finalizer(ctx, &current).await?;
            publish_unplaced(ctx, svc, &plan).await;
            if matches!(a.placement, Placement::Released) {
                ctx.forget(&key);
                return Ok(Action::await_change());
            }
        }
        FinalizerAction::None => {
            cleanup(
                ctx,
                svc,
                &a.daemonset_name,
                live_ds.is_some(),
                live_slb.is_some(),
                plan.service_condition.as_ref(),
            )
            .await?;
            publish_unplaced(ctx, svc, &plan).await;
        }
    }
    Ok(Action::requeue(ctx.resync))
}

/// Removes what Portway made for a Service: its ServiceLoadBalancer, its DaemonSet and the
/// ingress it published; leaves `condition` as Portway's condition on the Service (why it is not
/// placed), or withdraws Portway's condition when `None` (no longer Portway's Service). The
/// ServiceLoadBalancer goes first: its agents remove their rules when it disappears, and an agent
/// the DaemonSet's deletion stops must not find it still listing its node (it would leave its
/// rules for a successor that never comes).
async fn cleanup(
    ctx: &Context,
    svc: &Service,
    daemonset_name: &str,
    has_ds: bool,
    has_slb: bool,
    condition: Option<&Condition>,
) -> Result<Option<String>, Error> {
    let key = Key::of(&svc.metadata);
    if has_slb {
        writes::delete::<ServiceLoadBalancer>(ctx, &key, "serviceloadbalancers").await?;
    }
    if has_ds {
        let ds_key = Key::new(&ctx.args.namespace, daemonset_name);
        writes::delete::<DaemonSet>(ctx, &ds_key, "daemonsets").await?;
    }
    writes::apply_service_status(ctx, svc, &[], condition).await
}

/// Withdraws Portway's condition from a Service that is not Portway's (if it has one).
async fn withdraw_condition(ctx: &Context, svc: &Service) -> Result<(), Error> {
    if !conditions::own_service_conditions(svc).is_empty() {
        writes::apply_service_status(ctx, svc, &[], None).await?;
    }
    Ok(())
}

async fn publish_unplaced(ctx: &Context, svc: &Service, plan: &ServicePlan) {
    let key = Key::of(&svc.metadata);
    let fresh: Vec<PlannedEvent> = plan
        .events
        .iter()
        .filter(|e| ctx.first_time(&key, &e.reason, &e.note))
        .cloned()
        .collect();
    publish(ctx, svc, plan, &fresh).await;
}

/// Publishes Events on the Service. A failed Event is logged, never fails the reconcile.
async fn publish(ctx: &Context, svc: &Service, plan: &ServicePlan, events: &[PlannedEvent]) {
    let reference = svc.object_ref(&());
    for e in events {
        let ev = Event {
            type_: match e.type_ {
                EventType::Normal => KubeEventType::Normal,
                EventType::Warning => KubeEventType::Warning,
            },
            reason: e.reason.clone(),
            note: Some(conditions::truncate(&e.note, 1024)),
            action: e.action.clone(),
            secondary: None,
        };
        ctx.metrics.write("events", "create");
        if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
            warn!(service = %plan.service, reason = %e.reason, "publishing Event failed: {err}");
        }
    }
}
