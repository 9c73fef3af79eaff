//! Every API write of the ServiceLB controller, each preceded by a check that the live object
//! differs from the desired one. All applies use server-side apply with field manager
//! `servicelb.portway.dev` and `force`.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource};
use portway_crds::condition;
use portway_crds::names as n;
use portway_crds::{LoadBalancerPool, LoadBalancerPoolStatus, ServiceLoadBalancer};
use serde_json::json;

use super::FIELD_MANAGER;
use super::context::Context;
use super::diff;
use super::error::{Error, is_not_found};
use crate::plan::daemonset::DESIRED_HASH_ANNOTATION;
use crate::plan::{Key, conditions};

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// A plain (non-apply) patch under Portway's field manager name, so audit logs and
/// managedFields name Portway rather than the client library.
fn json_patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Adds Portway's finalizer to the Service when missing. Uses a merge patch carrying the
/// resourceVersion, so a concurrent change gives 409 and the reconcile retries.
pub async fn ensure_finalizer(ctx: &Context, svc: &Service) -> Result<(), Error> {
    let mut finalizers = svc.metadata.finalizers.clone().unwrap_or_default();
    if finalizers.iter().any(|f| f == n::SERVICE_FINALIZER) {
        return Ok(());
    }
    finalizers.push(n::SERVICE_FINALIZER.to_owned());
    patch_finalizers(ctx, svc, finalizers, "add finalizer to").await
}

/// Removes Portway's finalizer from the Service when present.
pub async fn remove_finalizer(ctx: &Context, svc: &Service) -> Result<(), Error> {
    let finalizers = svc.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == n::SERVICE_FINALIZER) {
        return Ok(());
    }
    let kept: Vec<String> = finalizers
        .into_iter()
        .filter(|f| f != n::SERVICE_FINALIZER)
        .collect();
    patch_finalizers(ctx, svc, kept, "remove finalizer from").await
}

async fn patch_finalizers(
    ctx: &Context,
    svc: &Service,
    finalizers: Vec<String>,
    action: &'static str,
) -> Result<(), Error> {
    let key = Key::of(&svc.metadata);
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": svc.metadata.resource_version,
        }
    });
    ctx.metrics.write("services", "patch");
    match api
        .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // Removing from a Service that is already gone is done.
        Err(e) if action.starts_with("remove") && is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube(action, format!("Service {key}"), e)),
    }
}

/// Applies the agent RoleBinding of a namespace when it is missing or differs.
pub async fn ensure_role_binding(ctx: &Context, desired: &RoleBinding) -> Result<(), Error> {
    let key = Key::of(&desired.metadata);
    let live = ctx
        .stores
        .role_bindings
        .get(&ObjectRef::new(&key.name).within(&key.namespace));
    if let Some(live) = live
        && live.role_ref == desired.role_ref
        && live.subjects == desired.subjects
        && diff::serialized_subset(&desired.metadata.labels, &live.metadata.labels)
    {
        return Ok(());
    }
    let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &key.namespace);
    ctx.metrics.write("rolebindings", "patch");
    api.patch(&key.name, &apply_params(), &Patch::Apply(desired))
        .await
        .map_err(|e| Error::kube("apply", format!("RoleBinding {key}"), e))?;
    Ok(())
}

/// Applies the ServiceLoadBalancer's metadata and spec when they differ; returns its generation.
pub async fn apply_slb(
    ctx: &Context,
    desired: &ServiceLoadBalancer,
    live: Option<&ServiceLoadBalancer>,
) -> Result<Option<i64>, Error> {
    let key = Key::of(&desired.metadata);
    if let Some(live) = live
        && live.spec == desired.spec
        && diff::serialized_subset(&desired.metadata.labels, &live.metadata.labels)
        && diff::serialized_subset(
            &desired.metadata.owner_references,
            &live.metadata.owner_references,
        )
    {
        return Ok(live.metadata.generation);
    }
    let body = json!({
        "apiVersion": ServiceLoadBalancer::api_version(&()),
        "kind": ServiceLoadBalancer::kind(&()),
        "metadata": {
            "name": key.name,
            "namespace": key.namespace,
            "labels": desired.metadata.labels,
            "ownerReferences": desired.metadata.owner_references,
        },
        "spec": desired.spec,
    });
    let api: Api<ServiceLoadBalancer> = Api::namespaced(ctx.client.clone(), &key.namespace);
    ctx.metrics.write("serviceloadbalancers", "patch");
    let applied = api
        .patch(&key.name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(|e| Error::kube("apply", format!("ServiceLoadBalancer {key}"), e))?;
    Ok(applied.metadata.generation)
}

/// Applies the operator's part of the ServiceLoadBalancer status (never `status.nodes`, which
/// belongs to the agents) when it differs: conditions, and `targetNodes`, which the reconcile
/// writes before the DaemonSet so that an agent stopped by a DaemonSet change already reads
/// whether its node is still a target.
pub async fn apply_slb_status(
    ctx: &Context,
    desired: &ServiceLoadBalancer,
    live: Option<&ServiceLoadBalancer>,
    generation: Option<i64>,
) -> Result<(), Error> {
    let key = Key::of(&desired.metadata);
    let Some(status) = desired.status.as_ref() else {
        return Ok(());
    };
    let mut conditions = status.conditions.clone();
    for c in &mut conditions {
        c.observed_generation = generation;
    }
    let live_status = live.and_then(|l| l.status.as_ref());
    if let Some(ls) = live_status
        && ls.observed_generation == generation
        && ls.target_nodes == status.target_nodes
        && condition::same_ignoring_time(&ls.conditions, &conditions)
    {
        return Ok(());
    }
    let body = json!({
        "apiVersion": ServiceLoadBalancer::api_version(&()),
        "kind": ServiceLoadBalancer::kind(&()),
        "metadata": {"name": key.name, "namespace": key.namespace},
        "status": {
            "observedGeneration": generation,
            "conditions": conditions,
            "targetNodes": status.target_nodes,
        },
    });
    let api: Api<ServiceLoadBalancer> = Api::namespaced(ctx.client.clone(), &key.namespace);
    ctx.metrics.write("serviceloadbalancers/status", "patch");
    api.patch_status(&key.name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(|e| Error::kube("apply status of", format!("ServiceLoadBalancer {key}"), e))?;
    Ok(())
}

/// What [`prune_node_entries`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pruned {
    /// Nothing was stale (no request), or the ServiceLoadBalancer is gone.
    Nothing,
    /// This many entries were removed.
    Removed(usize),
    /// `status.nodes` changed since the store saw it (the patch's `test` failed, 422, or 409):
    /// nothing was removed; the caller requeues, and the change's watch event re-plans anyway.
    Conflict,
}

/// The JSON Patch removing the `stale` nodes' entries from `status.nodes` as `live` holds it:
/// for each, highest index first (so the indices of the others do not move), a `test` that the
/// index still holds that node, then its `remove`. If anyone changed the list in between, a
/// `test` fails and the API server rejects the whole patch instead of removing another node's
/// entry. `None` when no stale node has an entry.
pub fn prune_node_entries_patch(
    live: &ServiceLoadBalancer,
    stale: &[String],
) -> Option<serde_json::Value> {
    let nodes = live
        .status
        .as_ref()
        .map(|s| s.nodes.as_slice())
        .unwrap_or(&[]);
    let ops: Vec<serde_json::Value> = nodes
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, entry)| stale.contains(&entry.node))
        .flat_map(|(i, entry)| {
            [
                json!({"op": "test", "path": format!("/status/nodes/{i}/node"), "value": entry.node}),
                json!({"op": "remove", "path": format!("/status/nodes/{i}")}),
            ]
        })
        .collect();
    (!ops.is_empty()).then_some(serde_json::Value::Array(ops))
}

/// True when a guarded JSON Patch lost a race with another writer: 422 (a `test` operation no
/// longer holds, or an index is out of range) or 409.
fn lost_race(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.code == 422)
}

/// Removes the `stale` nodes' entries from the ServiceLoadBalancer's `status.nodes` with one
/// guarded JSON Patch on the status subresource (see [`prune_node_entries_patch`]); no request
/// when there is nothing to remove. The agents own their entries through server-side apply, but
/// an entry of a node that no longer serves the Service has no agent left to remove it.
pub async fn prune_node_entries(
    ctx: &Context,
    live: Option<&ServiceLoadBalancer>,
    stale: &[String],
) -> Result<Pruned, Error> {
    let Some(live) = live else {
        return Ok(Pruned::Nothing);
    };
    let Some(ops) = prune_node_entries_patch(live, stale) else {
        return Ok(Pruned::Nothing);
    };
    let key = Key::of(&live.metadata);
    let removed = ops.as_array().map_or(0, |ops| ops.len() / 2);
    let patch: json_patch::Patch = serde_json::from_value(ops).map_err(|e| Error::Encode {
        object: format!("the status.nodes patch of ServiceLoadBalancer {key}"),
        source: e,
    })?;
    let api: Api<ServiceLoadBalancer> = Api::namespaced(ctx.client.clone(), &key.namespace);
    ctx.metrics.write("serviceloadbalancers/status", "patch");
    match api
        .patch_status(&key.name, &json_patch_params(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => {
            tracing::info!(
                service_load_balancer = %key,
                nodes = ?stale,
                "removed status.nodes entries of nodes that no longer serve the Service"
            );
            Ok(Pruned::Removed(removed))
        }
        Err(e) if is_not_found(&e) => Ok(Pruned::Nothing),
        Err(e) if lost_race(&e) => {
            tracing::debug!(
                service_load_balancer = %key,
                "status.nodes changed before stale entries could be removed; retrying: {e}"
            );
            Ok(Pruned::Conflict)
        }
        Err(e) => Err(Error::kube(
            "remove stale status.nodes entries of",
            format!("ServiceLoadBalancer {key}"),
            e,
        )),
    }
}

/// Applies a DaemonSet unless the live one carries the desired hash and has not been changed
/// by anyone else: since Portway's last apply, the generation must be the one that apply
/// returned; before any apply of this process (after a restart or a leader hand-over), no other
/// field manager may own fields of its spec (see `watch::SPEC_EDITED_BY_CACHE_MARK`). The
/// DaemonSet store keeps metadata only.
pub async fn apply_daemonset(
    ctx: &Context,
    desired: &DaemonSet,
    live: Option<&DaemonSet>,
) -> Result<(), Error> {
    let key = Key::of(&desired.metadata);
    if let Some(live) = live {
        let hash = |d: &DaemonSet| {
            d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DESIRED_HASH_ANNOTATION))
                .cloned()
        };
        let untouched = match ctx.applied_generation(&key) {
            Some(g) => Some(g) == live.metadata.generation,
            None => live
                .metadata
                .annotations
                .as_ref()
                .is_none_or(|a| !a.contains_key(super::watch::SPEC_EDITED_BY_CACHE_MARK)),
        };
        if hash(live) == hash(desired)
            && untouched
            && diff::serialized_subset(&desired.metadata.labels, &live.metadata.labels)
        {
            return Ok(());
        }
        if !untouched {
            tracing::info!(daemonset = %key, "DaemonSet was edited by someone else; applying Portway's spec again");
        }
    }
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &key.namespace);
    ctx.metrics.write("daemonsets", "patch");
    let applied = api
        .patch(&key.name, &apply_params(), &Patch::Apply(desired))
        .await
        .map_err(|e| Error::kube("apply", format!("DaemonSet {key}"), e))?;
    if let Some(g) = applied.metadata.generation {
        ctx.remember_generation(&key, g);
    }
    Ok(())
}

/// Deletes a namespaced object; a missing one counts as deleted.
pub async fn delete<K>(ctx: &Context, key: &Key, resource: &'static str) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
    ctx.metrics.write(resource, "delete");
    match api.delete(&key.name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube("delete", format!("{} {key}", K::kind(&())), e)),
    }
}

/// True when the Service's status already holds exactly what Portway wants there: the ingress
/// list and Portway's own condition (compared without its timestamp).
pub fn service_status_is(
    svc: &Service,
    ingress: &[LoadBalancerIngress],
    condition: Option<&Condition>,
) -> bool {
    let live: &[LoadBalancerIngress] = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_deref())
        .unwrap_or(&[]);
    let live_condition = conditions::own_service_conditions(svc);
    let wanted: &[Condition] = condition.map(std::slice::from_ref).unwrap_or(&[]);
    live == ingress && condition::same_ignoring_time(live_condition, wanted)
}

/// The server-side apply body of the Service's status as Portway owns it: the ingress (when
/// any) and Portway's condition (when any). What the body leaves out and Portway's field manager
/// owned before (a withdrawn ingress, the condition of a Service that stopped being Portway's)
/// is removed by the API server; other managers' fields, including their entries of the
/// `conditions` list-map (keyed by type), are never touched.
pub fn service_status_body(
    key: &Key,
    ingress: &[LoadBalancerIngress],
    condition: Option<&Condition>,
) -> serde_json::Value {
    let mut status = serde_json::Map::new();
    if !ingress.is_empty() {
        status.insert("loadBalancer".into(), json!({ "ingress": ingress }));
    }
    if let Some(c) = condition {
        status.insert("conditions".into(), json!([c]));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": key.name, "namespace": key.namespace},
        "status": status,
    })
}

/// Writes the Service's `status.loadBalancer.ingress` and Portway's `portway.dev/LoadBalancer`
/// condition when either differs (server-side apply on the status subresource, one request for
/// both). An empty ingress and no condition withdraw both. Returns the Service's new
/// resourceVersion when it wrote (a later optimistic patch must carry it).
pub async fn apply_service_status(
    ctx: &Context,
    svc: &Service,
    ingress: &[LoadBalancerIngress],
    condition: Option<&Condition>,
) -> Result<Option<String>, Error> {
    if service_status_is(svc, ingress, condition) {
        return Ok(None);
    }
    let key = Key::of(&svc.metadata);
    let body = service_status_body(&key, ingress, condition);
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), &key.namespace);
    ctx.metrics.write("services/status", "patch");
    let written = api
        .patch_status(&key.name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(|e| Error::kube("write the status of", format!("Service {key}"), e))?;
    Ok(written.metadata.resource_version)
}

/// Applies a pool's status when it differs.
pub async fn apply_pool_status(
    ctx: &Context,
    live: &Arc<LoadBalancerPool>,
    desired: &LoadBalancerPoolStatus,
) -> Result<(), Error> {
    let name = live.metadata.name.clone().unwrap_or_default();
    if let Some(ls) = live.status.as_ref()
        && ls.nodes == desired.nodes
        && ls.services == desired.services
        && ls.observed_generation == desired.observed_generation
        && condition::same_ignoring_time(&ls.conditions, &desired.conditions)
    {
        return Ok(());
    }
    let body = json!({
        "apiVersion": LoadBalancerPool::api_version(&()),
        "kind": LoadBalancerPool::kind(&()),
        "metadata": {"name": name},
        "status": desired,
    });
    let api: Api<LoadBalancerPool> = Api::all(ctx.client.clone());
    ctx.metrics.write("loadbalancerpools/status", "patch");
    api.patch_status(&name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(|e| Error::kube("apply status of", format!("LoadBalancerPool {name}"), e))?;
    Ok(())
}
