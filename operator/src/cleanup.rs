//! `portway cleanup`: removes everything the ServiceLB controller made, so that `helm uninstall`
//! (whose `pre-delete` hook runs it) leaves no Portway object behind and no rule on any node.
//!
//! In this order, because each step needs what the next one removes:
//! 1. **Stop the operator** (`--stop-operator`): scale its Deployment to 0 and wait (bounded) until
//!    its pods are gone, so nothing re-creates what the next steps delete.
//! 2. **Delete the ServiceLoadBalancers**: each agent removes its rules when its
//!    ServiceLoadBalancer disappears (its watch), which is the clean-up on the nodes. An agent
//!    stopping while its ServiceLoadBalancer still listed its node would instead leave its rules
//!    to a successor (hitless upgrades, docs/node-agent.md), so they go before the DaemonSets.
//! 3. **Delete the node-agent DaemonSets** and wait (bounded) until their pods are gone: an agent
//!    that stops reads its ServiceLoadBalancer once more, finds it gone and removes whatever is
//!    left. Their RBAC still exists while they shut down. Pods still there at the deadline are
//!    reported (a pod on an unreachable node stops, and cleans up, when its node comes back) and
//!    the clean-up goes on.
//! 4. **Release the Services**: withdraw what Portway's field manager owns in their status
//!    (`status.loadBalancer.ingress`, the `portway.dev/LoadBalancer` condition) with an empty
//!    server-side apply, then remove the `servicelb.portway.dev/cleanup` finalizer.
//! 5. **Delete the agents' `portway-agent-status` RoleBindings**; 6. with `--helm-release`, **the
//!    chart's default LoadBalancerPool** (an install hook creates it, so it is no release object
//!    until an upgrade adopts it).
//!
//! Only objects that are Portway's are touched: DaemonSets, ServiceLoadBalancers and RoleBindings
//! carrying Portway's labels, and Services carrying Portway's finalizer or status fields owned
//! by Portway's field manager. It is idempotent: a second run finds nothing and writes nothing.
//! The permissions it needs are [`crate::permissions::CLEANUP`] (cluster-wide) and
//! [`crate::permissions::CLEANUP_IN_NAMESPACE`] (the operator's namespace).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource};
use portway_crds::names as n;
use portway_crds::{LoadBalancerPool, ServiceLoadBalancer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::controllers::servicelb::FIELD_MANAGER;
use crate::controllers::servicelb::writes::service_status_body;
use crate::plan::{Key, conditions, names};

pub use crate::permissions::OPERATOR_DEPLOYMENT;

/// Page size of the cluster-wide lists.
const PAGE: u32 = 500;

/// Attempts of a Service's finalizer patch (each after re-reading the Service on a conflict).
const FINALIZER_ATTEMPTS: usize = 3;

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The operator's namespace: the agent DaemonSets (and the operator Deployment) live there.
    pub namespace: String,
    /// Scale this Deployment (in `namespace`) to 0 first and wait until its pods are gone.
    pub stop_operator: Option<String>,
    /// Longest total wait for the operator's and the agents' pods to go.
    pub timeout: Duration,
    /// Interval between checks while waiting.
    pub poll: Duration,
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// Also delete the default LoadBalancerPool the Helm chart made for this release (labels
    /// `app.kubernetes.io/component=default-pool`, `app.kubernetes.io/instance=<release>`): when
    /// the install hook created it, it is no release object and would outlive the uninstall.
    pub helm_release: Option<String>,
}

impl Options {
    /// Defaults of the CLI for `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            stop_operator: None,
            timeout: Duration::from_secs(120),
            poll: Duration::from_secs(2),
            dry_run: false,
            helm_release: None,
        }
    }
}

/// A pod that had not gone at the deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemainingPod {
    pub pod: Key,
    pub node: Option<String>,
}

/// What happened to the operator's Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum OperatorStop {
    /// No such Deployment.
    Absent,
    /// Scaled from `replicas` to 0 (or already at 0), and its pods are gone.
    Stopped { replicas: i32 },
}

/// What one run did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub operator: Option<OperatorStop>,
    pub deleted_daemonsets: Vec<Key>,
    /// Agent pods seen after the DaemonSets were deleted.
    pub agent_pods: usize,
    /// Agent pods still present at the deadline.
    pub agent_pods_remaining: Vec<RemainingPod>,
    /// How long the agents took to go.
    pub agents_gone_after: Option<Duration>,
    /// Services whose Portway status was withdrawn.
    pub withdrawn_statuses: Vec<Key>,
    /// Services whose Portway finalizer was removed.
    pub removed_finalizers: Vec<Key>,
    pub deleted_service_load_balancers: Vec<Key>,
    pub deleted_role_bindings: Vec<Key>,
    /// The chart's default LoadBalancerPool (with `helm_release`).
    pub deleted_pools: Vec<String>,
    /// Requests that failed (the run went on with the other objects).
    pub errors: Vec<String>,
    /// Write requests sent.
    pub writes: usize,
}

impl Report {
    /// True when nothing failed.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Human-readable lines, then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let verb = |done: &str, would: &str| {
            if self.dry_run {
                would.to_owned()
            } else {
                done.to_owned()
            }
        };
        match &self.operator {
            Some(OperatorStop::Absent) => {
                let _ = writeln!(out, "operator: no Deployment to stop");
            }
            Some(OperatorStop::Stopped { replicas }) => {
                let _ = writeln!(
                    out,
                    "operator: {} ({replicas} replicas before)",
                    verb("scaled to 0, its pods are gone", "would be scaled to 0")
                );
            }
            None => {}
        }
        for k in &self.deleted_daemonsets {
            let _ = writeln!(
                out,
                "{} node-agent DaemonSet {k}",
                verb("deleted", "would delete")
            );
        }
        if !self.dry_run && self.agent_pods > 0 {
            match (&self.agents_gone_after, self.agent_pods_remaining.len()) {
                (Some(after), 0) => {
                    let _ = writeln!(
                        out,
                        "agent pods: all {} gone after {:.0}s (each removed its rules on the way out)",
                        self.agent_pods,
                        after.as_secs_f64()
                    );
                }
                (_, left) => {
                    let pods: Vec<String> = self
                        .agent_pods_remaining
                        .iter()
                        .map(|p| format!("{} on {}", p.pod, p.node.as_deref().unwrap_or("no node")))
                        .collect();
                    let _ = writeln!(
                        out,
                        "warning: {left} agent pods still present at the deadline: {} (an agent removes its rules when its node stops the pod; a node that is down does so when it returns)",
                        pods.join(", ")
                    );
                }
            }
        }
        for k in &self.withdrawn_statuses {
            let _ = writeln!(
                out,
                "{} Portway's ingress and condition from Service {k}",
                verb("withdrew", "would withdraw")
            );
        }
        for k in &self.removed_finalizers {
            let _ = writeln!(
                out,
                "{} finalizer {} from Service {k}",
                verb("removed", "would remove"),
                n::SERVICE_FINALIZER
            );
        }
        for k in &self.deleted_service_load_balancers {
            let _ = writeln!(
                out,
                "{} ServiceLoadBalancer {k}",
                verb("deleted", "would delete")
            );
        }
        for k in &self.deleted_role_bindings {
            let _ = writeln!(out, "{} RoleBinding {k}", verb("deleted", "would delete"));
        }
        for p in &self.deleted_pools {
            let _ = writeln!(
                out,
                "{} the chart's default LoadBalancerPool {p}",
                verb("deleted", "would delete")
            );
        }
        for e in &self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        let mut services: Vec<&Key> = self
            .withdrawn_statuses
            .iter()
            .chain(&self.removed_finalizers)
            .collect();
        services.sort();
        services.dedup();
        let _ = writeln!(
            out,
            "portway cleanup{}: {} DaemonSets, {} ServiceLoadBalancers, {} RoleBindings, {} pools, {} Services released; {} agent pods left; {} errors; {} writes",
            if self.dry_run { " (dry run)" } else { "" },
            self.deleted_daemonsets.len(),
            self.deleted_service_load_balancers.len(),
            self.deleted_role_bindings.len(),
            self.deleted_pools.len(),
            services.len(),
            self.agent_pods_remaining.len(),
            self.errors.len(),
            self.writes,
        );
        out
    }
}

/// Why the clean-up stopped before the end.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the operator is still running after {waited:?} ({pods}); nothing was removed, since it would re-create it. Check the pods, or stop the operator yourself and run again"
    )]
    OperatorStillRunning { waited: Duration, pods: String },
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

// ---------------------------------------------------------------------------------------------
// Pure: which objects are Portway's, and what to do with each Service.

/// What the clean-up does to one Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceWork {
    /// Portway's field manager owns fields of its status (ingress, the condition).
    pub withdraw_status: bool,
    /// It carries Portway's finalizer.
    pub remove_finalizer: bool,
}

/// What the clean-up must do to `svc`; `None` when it is not Portway's.
///
/// The status is Portway's when the managed fields show an entry of Portway's field manager on
/// the `status` subresource; where the server sent no managed fields at all, Portway's condition
/// or (with Portway's finalizer) an ingress stands for it. The withdrawal itself is a server-side
/// apply by that manager, which only ever removes what that manager owns.
pub fn service_work(svc: &Service) -> Option<ServiceWork> {
    let remove_finalizer = svc
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == n::SERVICE_FINALIZER));
    let withdraw_status = match svc.metadata.managed_fields.as_deref() {
        Some(entries) if !entries.is_empty() => entries.iter().any(|e| {
            e.manager.as_deref() == Some(FIELD_MANAGER)
                && e.subresource.as_deref() == Some("status")
                && e.fields_v1.as_ref().is_some_and(|f| {
                    f.0.as_object()
                        .and_then(|o| o.get("f:status"))
                        .is_some_and(|s| s.as_object().is_some_and(|s| !s.is_empty()))
                })
        }),
        _ => {
            let has_ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .is_some_and(|i| !i.is_empty());
            !conditions::own_service_conditions(svc).is_empty() || (remove_finalizer && has_ingress)
        }
    };
    (withdraw_status || remove_finalizer).then_some(ServiceWork {
        withdraw_status,
        remove_finalizer,
    })
}

fn has_labels(labels: Option<&BTreeMap<String, String>>, wanted: &[(&str, &str)]) -> bool {
    labels.is_some_and(|l| {
        wanted
            .iter()
            .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    })
}

/// A node-agent DaemonSet Portway made (labels `managed-by=portway`, `component=node-agent` and
/// the Service it serves).
pub fn is_portway_daemonset(ds: &DaemonSet) -> bool {
    names::daemonset_target(ds).is_some()
}

/// A ServiceLoadBalancer Portway made (label `managed-by=portway`).
pub fn is_portway_service_load_balancer(slb: &ServiceLoadBalancer) -> bool {
    has_labels(
        slb.metadata.labels.as_ref(),
        &[(n::LABEL_MANAGED_BY, n::MANAGED_BY)],
    )
}

/// An agent RoleBinding Portway made (its name and labels).
pub fn is_portway_role_binding(rb: &RoleBinding) -> bool {
    rb.metadata.name.as_deref() == Some(names::AGENT_ROLE_BINDING)
        && has_labels(
            rb.metadata.labels.as_ref(),
            &[
                (n::LABEL_MANAGED_BY, n::MANAGED_BY),
                (n::LABEL_COMPONENT, n::COMPONENT_NODE_AGENT),
            ],
        )
}

/// Label selector of the Helm chart's default LoadBalancerPool of `release`.
pub fn default_pool_selector(release: &str) -> String {
    format!(
        "app.kubernetes.io/part-of=portway,app.kubernetes.io/component=default-pool,app.kubernetes.io/instance={release}"
    )
}

/// The Helm chart's default LoadBalancerPool of `release` (its labels).
pub fn is_default_pool_of(pool: &LoadBalancerPool, release: &str) -> bool {
    has_labels(
        pool.metadata.labels.as_ref(),
        &[
            ("app.kubernetes.io/part-of", "portway"),
            ("app.kubernetes.io/component", "default-pool"),
            ("app.kubernetes.io/instance", release),
        ],
    )
}

/// Label selector of the agent pods (the DaemonSets' pod template labels include it).
pub fn agent_pods_selector() -> String {
    names::managed_daemonsets_selector()
}

// ---------------------------------------------------------------------------------------------
// Shell.

/// Every object of `api` matching `selector`, page by page.
async fn list_all<K>(api: &Api<K>, selector: &str, what: &str) -> Result<Vec<K>, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(PAGE);
        if !selector.is_empty() {
            lp = lp.labels(selector);
        }
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api
            .list(&lp)
            .await
            .map_err(kube_err(format!("list {what}")))?;
        out.extend(page.items);
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// Lists until nothing matches `selector` or `deadline` passes; returns what was left.
async fn wait_pods_gone(
    api: &Api<Pod>,
    selector: &str,
    deadline: Instant,
    poll: Duration,
) -> Result<(usize, Vec<Pod>), Error> {
    let mut first = None;
    loop {
        let pods = list_all(api, selector, "pods").await?;
        first.get_or_insert(pods.len());
        let now = Instant::now();
        if pods.is_empty() || now >= deadline {
            return Ok((first.unwrap_or(0), pods));
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
    }
}

fn pod_list(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            format!(
                "{} on {}",
                Key::of(&p.metadata),
                p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .unwrap_or("no node")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Run<'a> {
    client: &'a Client,
    opts: &'a Options,
    report: Report,
}

impl Run<'_> {
    fn wrote(&mut self) {
        self.report.writes += 1;
    }

    fn failed(&mut self, what: String) {
        warn!("{what}");
        self.report.errors.push(what);
    }

    async fn stop_operator(&mut self, name: &str, deadline: Instant) -> Result<(), Error> {
        let ns = &self.opts.namespace;
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let scale = match api.get_scale(name).await {
            Ok(s) => s,
            Err(e) if is_status(&e, 404) => {
                info!(deployment = %name, "no operator Deployment to stop");
                self.report.operator = Some(OperatorStop::Absent);
                return Ok(());
            }
            Err(e) => {
                return Err(kube_err(format!(
                    "read the scale of Deployment {ns}/{name}"
                ))(e));
            }
        };
        let replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        self.report.operator = Some(OperatorStop::Stopped { replicas });
        if self.opts.dry_run {
            return Ok(());
        }
        if replicas != 0 {
            info!(deployment = %name, replicas, "scaling the operator to 0");
            self.wrote();
            api.patch_scale(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await
            .map_err(kube_err(format!("scale Deployment {ns}/{name} to 0")))?;
        }
        // Never wait on an empty selector: it would match every pod of the namespace.
        if selector.is_empty() {
            return Ok(());
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let (_, left) = wait_pods_gone(&pods, &selector, deadline, self.opts.poll).await?;
        if !left.is_empty() {
            return Err(Error::OperatorStillRunning {
                waited: self.opts.timeout,
                pods: pod_list(&left),
            });
        }
        Ok(())
    }

    async fn delete_daemonsets(&mut self, deadline: Instant) -> Result<(), Error> {
        let ns = self.opts.namespace.clone();
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &ns);
        let selector = names::managed_daemonsets_selector();
        let found = list_all(&api, &selector, "node-agent DaemonSets").await?;
        for ds in found.iter().filter(|d| is_portway_daemonset(d)) {
            let key = Key::of(&ds.metadata);
            if !self.opts.dry_run {
                info!(daemonset = %key, "deleting node-agent DaemonSet");
                self.wrote();
                match api.delete(&key.name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => {
                        self.failed(format!("delete DaemonSet {key}: {e}"));
                        continue;
                    }
                }
            }
            self.report.deleted_daemonsets.push(key);
        }
        // Also after an earlier run that stopped waiting: agents of DaemonSets deleted then may
        // still be shutting down, and need their RoleBindings until they are gone.
        if self.opts.dry_run {
            return Ok(());
        }
        let started = Instant::now();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let (seen, left) =
            wait_pods_gone(&pods, &agent_pods_selector(), deadline, self.opts.poll).await?;
        self.report.agent_pods = seen;
        if left.is_empty() {
            self.report.agents_gone_after = Some(started.elapsed());
        } else {
            warn!(pods = %pod_list(&left), "agent pods still present at the deadline");
        }
        self.report.agent_pods_remaining = left
            .iter()
            .map(|p| RemainingPod {
                pod: Key::of(&p.metadata),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            })
            .collect();
        Ok(())
    }

    async fn release_services(&mut self) -> Result<(), Error> {
        let all: Api<Service> = Api::all(self.client.clone());
        let services = list_all(&all, "", "Services").await?;
        for svc in &services {
            let Some(work) = service_work(svc) else {
                continue;
            };
            let key = Key::of(&svc.metadata);
            if self.opts.dry_run {
                if work.withdraw_status {
                    self.report.withdrawn_statuses.push(key.clone());
                }
                if work.remove_finalizer {
                    self.report.removed_finalizers.push(key);
                }
                continue;
            }
            if let Err(e) = self.release(svc, work).await {
                self.failed(format!("release Service {key}: {e}"));
            }
        }
        Ok(())
    }

    /// Withdraws Portway's status, then removes the finalizer with the resourceVersion that
    /// write returned; on a conflict re-reads the Service and tries again.
    async fn release(&mut self, svc: &Service, work: ServiceWork) -> Result<(), kube::Error> {
        let key = Key::of(&svc.metadata);
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut version = svc.metadata.resource_version.clone();
        if work.withdraw_status {
            info!(service = %key, "withdrawing Portway's ingress and condition");
            self.wrote();
            let body = service_status_body(&key, &[], None);
            match api
                .patch_status(
                    &key.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
            {
                Ok(written) => version = written.metadata.resource_version,
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) => return Err(e),
            }
            self.report.withdrawn_statuses.push(key.clone());
        }
        if !work.remove_finalizer {
            return Ok(());
        }
        let mut finalizers = svc.metadata.finalizers.clone().unwrap_or_default();
        for attempt in 1..=FINALIZER_ATTEMPTS {
            finalizers.retain(|f| f != n::SERVICE_FINALIZER);
            let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": version}});
            self.wrote();
            match api
                .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!(service = %key, "removed Portway's finalizer");
                    self.report.removed_finalizers.push(key);
                    return Ok(());
                }
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) if is_status(&e, 409) && attempt < FINALIZER_ATTEMPTS => {
                    let fresh = match api.get(&key.name).await {
                        Ok(s) => s,
                        Err(e) if is_status(&e, 404) => return Ok(()),
                        Err(e) => return Err(e),
                    };
                    finalizers = fresh.metadata.finalizers.clone().unwrap_or_default();
                    if !finalizers.iter().any(|f| f == n::SERVICE_FINALIZER) {
                        return Ok(());
                    }
                    version = fresh.metadata.resource_version;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn delete_service_load_balancers(&mut self) -> Result<(), Error> {
        let all: Api<ServiceLoadBalancer> = Api::all(self.client.clone());
        let selector = format!("{}={}", n::LABEL_MANAGED_BY, n::MANAGED_BY);
        let found = match list_all(&all, &selector, "ServiceLoadBalancers").await {
            Ok(f) => f,
            // The CRD is not installed: there can be none.
            Err(Error::Kube { source, .. }) if is_status(&source, 404) => return Ok(()),
            Err(e) => return Err(e),
        };
        for slb in found.iter().filter(|s| is_portway_service_load_balancer(s)) {
            let key = Key::of(&slb.metadata);
            if self.delete::<ServiceLoadBalancer>(&key).await {
                self.report.deleted_service_load_balancers.push(key);
            }
        }
        Ok(())
    }

    async fn delete_role_bindings(&mut self) -> Result<(), Error> {
        let all: Api<RoleBinding> = Api::all(self.client.clone());
        let found = list_all(
            &all,
            &names::managed_role_bindings_selector(),
            "agent RoleBindings",
        )
        .await?;
        for rb in found.iter().filter(|r| is_portway_role_binding(r)) {
            let key = Key::of(&rb.metadata);
            if self.delete::<RoleBinding>(&key).await {
                self.report.deleted_role_bindings.push(key);
            }
        }
        Ok(())
    }

    async fn delete_default_pool(&mut self, release: &str) -> Result<(), Error> {
        let api: Api<LoadBalancerPool> = Api::all(self.client.clone());
        let found = match list_all(&api, &default_pool_selector(release), "LoadBalancerPools").await
        {
            Ok(f) => f,
            Err(Error::Kube { source, .. }) if is_status(&source, 404) => return Ok(()),
            Err(e) => return Err(e),
        };
        for pool in found.iter().filter(|p| is_default_pool_of(p, release)) {
            let name = pool.metadata.name.clone().unwrap_or_default();
            if !self.opts.dry_run {
                info!(pool = %name, "deleting the chart's default LoadBalancerPool");
                self.wrote();
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => {
                        self.failed(format!("delete LoadBalancerPool {name}: {e}"));
                        continue;
                    }
                }
            }
            self.report.deleted_pools.push(name);
        }
        Ok(())
    }

    /// Deletes a namespaced object (a missing one counts as deleted); false when it failed.
    async fn delete<K>(&mut self, key: &Key) -> bool
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        if self.opts.dry_run {
            return true;
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        info!(kind = %K::kind(&()), object = %key, "deleting");
        self.wrote();
        match api.delete(&key.name, &DeleteParams::background()).await {
            Ok(_) => true,
            Err(e) if is_status(&e, 404) => true,
            Err(e) => {
                self.failed(format!("delete {} {key}: {e}", K::kind(&())));
                false
            }
        }
    }
}

/// Runs the clean-up. Stops early only when the operator cannot be stopped or an object kind
/// cannot be listed; a failed write of one object is recorded in the report and the run goes on.
pub async fn run(client: &Client, opts: &Options) -> Result<Report, Error> {
    let deadline = Instant::now() + opts.timeout;
    let mut run = Run {
        client,
        opts,
        report: Report {
            dry_run: opts.dry_run,
            ..Report::default()
        },
    };
    if let Some(name) = &opts.stop_operator {
        run.stop_operator(name, deadline).await?;
    }
    run.delete_service_load_balancers().await?;
    run.delete_daemonsets(deadline).await?;
    run.release_services().await?;
    run.delete_role_bindings().await?;
    if let Some(release) = &opts.helm_release {
        run.delete_default_pool(release).await?;
    }
    Ok(run.report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn svc(v: Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    #[test]
    fn only_portway_services_are_worked_on() {
        let status_entry = |manager: &str, fields: Value| {
            json!({"manager": manager, "operation": "Apply", "subresource": "status",
                   "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields})
        };
        let ours = svc(json!({
            "metadata": {"name": "a", "namespace": "ns",
                "finalizers": ["example.com/x", n::SERVICE_FINALIZER],
                "managedFields": [status_entry(FIELD_MANAGER, json!({"f:status": {"f:loadBalancer": {"f:ingress": {}}}}))]},
        }));
        assert_eq!(
            service_work(&ours),
            Some(ServiceWork {
                withdraw_status: true,
                remove_finalizer: true
            })
        );
        // Another controller's ingress and finalizer: not Portway's.
        let theirs = svc(json!({
            "metadata": {"name": "b", "namespace": "ns", "finalizers": ["example.com/x"],
                "managedFields": [status_entry("metallb", json!({"f:status": {"f:loadBalancer": {"f:ingress": {}}}}))]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}},
        }));
        assert_eq!(service_work(&theirs), None);
        // Portway's manager entry that owns nothing any more (withdrawn before): no write.
        let withdrawn = svc(json!({
            "metadata": {"name": "c", "namespace": "ns",
                "managedFields": [status_entry(FIELD_MANAGER, json!({"f:status": {}}))]},
        }));
        assert_eq!(service_work(&withdrawn), None);
        // Unplaced: only Portway's condition, found without managed fields.
        let unplaced = svc(json!({
            "metadata": {"name": "d", "namespace": "ns"},
            "status": {"conditions": [{"type": "portway.dev/LoadBalancer", "status": "False",
                "reason": "NoMatchingPool", "message": "m",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        }));
        assert_eq!(
            service_work(&unplaced),
            Some(ServiceWork {
                withdraw_status: true,
                remove_finalizer: false
            })
        );
    }

    #[test]
    fn labels_decide_what_is_portways() {
        let rb = |name: &str, labels: Value| -> RoleBinding {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"},
            }))
            .expect("rb")
        };
        let labels = json!({n::LABEL_MANAGED_BY: n::MANAGED_BY, n::LABEL_COMPONENT: n::COMPONENT_NODE_AGENT});
        assert!(is_portway_role_binding(&rb(
            names::AGENT_ROLE_BINDING,
            labels.clone()
        )));
        assert!(!is_portway_role_binding(&rb("someone-elses", labels)));
        assert!(!is_portway_role_binding(&rb(
            names::AGENT_ROLE_BINDING,
            json!({})
        )));
    }
}
