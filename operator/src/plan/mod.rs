//! Pure ServiceLB core: observed objects -> desired DaemonSets, ServiceLoadBalancers, Service
//! statuses, conditions, Events, pool statuses and agent RoleBindings. No I/O and no clock: the
//! caller passes `now` in [`Config`], so the same input always gives the same output.
//!
//! The work is split in two so the controller can cache the expensive half:
//! - [`assign::assign`] is global: which Services Portway serves, the pool of each, the pool's
//!   Nodes, and which Nodes each Service can really use once port claims of earlier Services are
//!   taken into account. It depends only on Services, Nodes, pools and Namespaces.
//! - [`service::plan_service`] is per Service: the ServiceLoadBalancer, the DaemonSet, the ingress
//!   and the conditions, from the assignment plus that Service's own ServiceLoadBalancer status
//!   (what its agents report) and EndpointSlices.
//!
//! [`desired_state`] runs both for every Service; `portway plan` and the benchmarks call it.

pub mod assign;
pub mod conditions;
pub mod daemonset;
pub mod ingress;
pub mod names;
pub mod pools;
pub mod rbac;
pub mod reserved;
pub mod service;
pub mod stale;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use portway_crds::{LoadBalancerPool, LoadBalancerPoolStatus, ServiceLoadBalancer};
use serde::Serialize;

pub use assign::{Assignment, ServiceAssignment};

/// Everything the core looks at. Order of the vectors does not matter: the core sorts.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub services: Vec<Arc<Service>>,
    pub nodes: Vec<Arc<Node>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub pools: Vec<Arc<LoadBalancerPool>>,
    /// Namespaces, for pools' `namespaceSelector`. A Service whose Namespace is not observed is
    /// matched as if its Namespace had only the `kubernetes.io/metadata.name` label.
    pub namespaces: Vec<Arc<Namespace>>,
    /// Existing ServiceLoadBalancers: their status holds what the node agents report.
    pub service_load_balancers: Vec<Arc<ServiceLoadBalancer>>,
    /// Existing node-agent DaemonSets in the operator's namespace (for the orphan sweep).
    pub daemonsets: Vec<Arc<DaemonSet>>,
    /// Existing agent RoleBindings Portway manages (for removal when a namespace has no Service).
    pub role_bindings: Vec<Arc<RoleBinding>>,
}

/// Operator settings the core needs, plus the clock.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `spec.loadBalancerClass` Portway serves (besides Services without a class).
    pub load_balancer_class: String,
    /// The operator's namespace, where node-agent DaemonSets live.
    pub namespace: String,
    /// Image of the node agent.
    pub agent_image: String,
    /// ServiceAccount of the node agents (in `namespace`).
    pub agent_service_account: String,
    /// ClusterRole the per-namespace agent RoleBindings grant.
    pub agent_status_cluster_role: String,
    /// Add forwarding sysctls to agent pods (kubelets that allow them, e.g. K3s).
    pub agent_forwarding_sysctls: bool,
    /// Treat every usable node as forwarding (what `portway plan` shows: the ingress each
    /// Service gets once its agents run). The operator sets this to false.
    pub assume_agents_forwarding: bool,
    /// Build the DaemonSet and ServiceLoadBalancer objects (false: states, conditions, ingress,
    /// pool statuses and cleanup only — what the operator's periodic sweep needs).
    pub build_objects: bool,
    /// Host ports held on every node by something else (kubelet, a host-network operator):
    /// a Service asking for one is in `PortConflict` (`PortReserved`) and gets no DaemonSet.
    pub reserved_host_ports: Vec<reserved::ReservedPort>,
    /// The time written into changed conditions.
    pub now: Time,
}

impl Config {
    /// Defaults matching the operator's flag defaults, at time `now`.
    pub fn new(now: Time) -> Self {
        Self {
            load_balancer_class: portway_crds::names::DEFAULT_LOAD_BALANCER_CLASS.to_owned(),
            namespace: "portway-system".to_owned(),
            agent_image: DEFAULT_AGENT_IMAGE.to_owned(),
            agent_service_account: "portway-agent".to_owned(),
            agent_status_cluster_role: "portway-agent-status".to_owned(),
            agent_forwarding_sysctls: false,
            assume_agents_forwarding: false,
            build_objects: true,
            reserved_host_ports: reserved::defaults(),
            now,
        }
    }
}

/// Default `--agent-image`.
pub const DEFAULT_AGENT_IMAGE: &str = "ghcr.io/portway-dev/portway-agent:0.1.0";

/// Namespace and name of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Key of an object's metadata (empty strings when absent).
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a Service stands; also the label of the `services by state` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ServiceState {
    /// At least one address is published.
    Serving,
    /// Placed, but no agent reports forwarding yet.
    Waiting,
    /// `externalTrafficPolicy: Local` and no usable node has a ready endpoint.
    NoEndpoints,
    /// Every eligible node is taken by another Service's port.
    PortConflict,
    /// The chosen pool selects no Node.
    NoNodes,
    /// No pool matches, or the annotated pool does not exist.
    NoPool,
    /// The Service cannot be served as written (e.g. no ports, bad source range).
    Invalid,
    /// Not a Portway Service any more (type or class changed, or deleted): being cleaned up.
    CleaningUp,
}

impl ServiceState {
    pub const ALL: [ServiceState; 8] = [
        Self::Serving,
        Self::Waiting,
        Self::NoEndpoints,
        Self::PortConflict,
        Self::NoNodes,
        Self::NoPool,
        Self::Invalid,
        Self::CleaningUp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Waiting => "waiting",
            Self::NoEndpoints => "no_endpoints",
            Self::PortConflict => "port_conflict",
            Self::NoNodes => "no_nodes",
            Self::NoPool => "no_pool",
            Self::Invalid => "invalid",
            Self::CleaningUp => "cleaning_up",
        }
    }
}

/// What to do with Portway's finalizer on a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FinalizerAction {
    /// Served: the finalizer must be present (added if missing).
    Ensure,
    /// Not served any more (or being deleted): clean up, then remove the finalizer.
    Remove,
    /// Not ours and never was.
    None,
}

/// Severity of a planned Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum EventType {
    Normal,
    Warning,
}

/// An Event the shell publishes on the Service (only on transitions; see [`conditions`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PlannedEvent {
    pub type_: EventType,
    pub reason: String,
    pub note: String,
    pub action: String,
}

/// Everything desired for one LoadBalancer Service Portway is (or was) responsible for.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    pub service: Key,
    pub state: ServiceState,
    pub finalizer: FinalizerAction,
    /// The chosen pool, when one was chosen.
    pub pool: Option<String>,
    /// The ServiceLoadBalancer to apply (spec, and status conditions), when served.
    pub service_load_balancer: Option<ServiceLoadBalancer>,
    /// The node-agent DaemonSet, when served and at least one node is usable.
    pub daemonset: Option<DaemonSet>,
    /// `status.loadBalancer.ingress` of the Service (empty when nothing is published). Shared
    /// between Services published on the same addresses (one allocation for all of them).
    #[serde(serialize_with = "serialize_shared")]
    pub ingress: Arc<Vec<LoadBalancerIngress>>,
    /// The conditions (also in the ServiceLoadBalancer status when there is one).
    pub conditions: Vec<Condition>,
    /// Portway's condition on the Service itself (`portway.dev/LoadBalancer`): why it is or is
    /// not served, also for Services that have no ServiceLoadBalancer. `None`: not Portway's (any
    /// such condition is withdrawn).
    pub service_condition: Option<Condition>,
    /// Events to publish on the Service for what changed since the observed state.
    pub events: Vec<PlannedEvent>,
    /// Nodes whose `status.nodes` entry in the observed ServiceLoadBalancer is stale (see
    /// [`stale`]): the operator removes them. Sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stale_node_entries: Vec<String>,
}

fn serialize_shared<S: serde::Serializer>(
    v: &Arc<Vec<LoadBalancerIngress>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(v.as_slice(), s)
}

/// Desired status of one pool.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolPlan {
    pub name: String,
    pub status: LoadBalancerPoolStatus,
}

/// Objects to delete because nothing desires them any more.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cleanup {
    /// Node-agent DaemonSets (operator namespace) of Services that are not served.
    pub daemonsets: Vec<Key>,
    /// ServiceLoadBalancers of Services that are not served.
    pub service_load_balancers: Vec<Key>,
    /// Agent RoleBindings in namespaces without a served Service.
    pub role_bindings: Vec<Key>,
}

/// The whole desired state.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Desired {
    /// One entry per Service Portway serves or must clean up, sorted by namespace/name.
    pub services: Vec<ServicePlan>,
    /// LoadBalancer Services left alone (another class), with the reason; sorted.
    pub ignored: Vec<(Key, String)>,
    /// Pool statuses, sorted by name.
    pub pools: Vec<PoolPlan>,
    /// Agent RoleBindings, one per namespace with a served Service, sorted.
    pub role_bindings: Vec<RoleBinding>,
    /// What to delete.
    pub cleanup: Cleanup,
}

/// EndpointSlices grouped by the Service they belong to.
pub fn slices_by_service(slices: &[Arc<EndpointSlice>]) -> BTreeMap<Key, Vec<Arc<EndpointSlice>>> {
    let mut map: BTreeMap<Key, Vec<Arc<EndpointSlice>>> = BTreeMap::new();
    for slice in slices {
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(portway_crds::names::ENDPOINTSLICE_SERVICE_LABEL))
        else {
            continue;
        };
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        map.entry(Key::new(ns, svc.clone()))
            .or_default()
            .push(slice.clone());
    }
    map
}

/// Computes the whole desired state from `observed`.
pub fn desired_state(observed: &Observed, config: &Config) -> Desired {
    let assignment = assign::assign(observed, config);
    let slbs: BTreeMap<Key, &ServiceLoadBalancer> = observed
        .service_load_balancers
        .iter()
        .map(|s| (Key::of(&s.metadata), s.as_ref()))
        .collect();
    let slices = slices_by_service(&observed.endpoint_slices);
    let mut cache = service::IngressCache::default();
    let services = assignment
        .services
        .values()
        .map(|a| {
            service::plan_service_cached(
                a,
                &assignment,
                slbs.get(&a.key).copied(),
                slices.get(&a.key).map(Vec::as_slice).unwrap_or(&[]),
                config,
                &mut cache,
            )
        })
        .collect();
    let pools = pools::pool_statuses(observed, &assignment, config);
    let role_bindings = rbac::role_bindings(&assignment, config);
    let cleanup = cleanup(observed, &assignment, &role_bindings);
    Desired {
        services,
        ignored: assignment.ignored.clone(),
        pools,
        role_bindings,
        cleanup,
    }
}

/// Objects that exist but that nothing desires.
pub fn cleanup(
    observed: &Observed,
    assignment: &Assignment,
    role_bindings: &[RoleBinding],
) -> Cleanup {
    let mut out = Cleanup::default();
    for ds in &observed.daemonsets {
        let Some(target) = names::daemonset_target(ds) else {
            continue;
        };
        // A placed Service's own DaemonSet is left to its reconcile even when it no longer
        // wants one: the reconcile first writes `targetNodes` without the nodes, so that the
        // agents the deletion stops remove their rules instead of leaving them to a successor.
        let wanted = assignment.services.get(&target).is_some_and(|a| {
            (a.wants_daemonset() || a.is_placed())
                && a.daemonset_name == ds.metadata.name.as_deref().unwrap_or_default()
        });
        if !wanted {
            out.daemonsets.push(Key::of(&ds.metadata));
        }
    }
    for slb in &observed.service_load_balancers {
        let key = Key::of(&slb.metadata);
        if !assignment.services.get(&key).is_some_and(|a| a.is_placed()) {
            out.service_load_balancers.push(key);
        }
    }
    for rb in &observed.role_bindings {
        let key = Key::of(&rb.metadata);
        if !role_bindings.iter().any(|d| Key::of(&d.metadata) == key) {
            out.role_bindings.push(key);
        }
    }
    out.daemonsets.sort();
    out.service_load_balancers.sort();
    out.role_bindings.sort();
    out
}
