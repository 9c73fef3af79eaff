//! Every Kubernetes API permission the operator uses, in one list. The Helm chart's ClusterRole
//! is tested against [`all`] (nothing missing, nothing extra), and the operator checks the list
//! at start-up so a missing grant is reported by name instead of as a stream of 403s.
//!
//! Keep each list exactly equal to the calls its controller makes.

/// One RBAC rule: verbs on a resource (or subresource, as `resource/subresource`) of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Resource, or `resource/subresource`.
    pub resource: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Restricts the rule to these object names (empty: all).
    pub resource_names: &'static [&'static str],
}

const fn p(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
) -> Permission {
    Permission {
        group,
        resource,
        verbs,
        resource_names: &[],
    }
}

/// Shared by both controllers: leader election (`controllers::lease`: get, create and update of
/// the Lease) and Events (kube's Recorder creates an Event, then patches it into a series).
pub const COMMON: &[Permission] = &[
    p(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    ),
    p("events.k8s.io", "events", &["create", "patch"]),
];

/// The ServiceLB controller (owned by the ServiceLB work; keep equal to its calls):
/// - watches (list, watch) of everything it reads;
/// - `patch` of Services (finalizer, merge patch with resourceVersion) and their status (ingress);
/// - server-side apply (`patch`, plus `create` because an apply that creates is authorized as
///   create) and `delete` of ServiceLoadBalancers, node-agent DaemonSets and agent RoleBindings;
/// - `patch` of the status of ServiceLoadBalancers and LoadBalancerPools;
/// - `bind` of the agents' status ClusterRole, needed to create RoleBindings to it without
///   holding its permissions.
pub const SERVICELB: &[Permission] = &[
    p("", "services", &["list", "watch", "patch"]),
    p("", "services/status", &["patch"]),
    p("", "nodes", &["list", "watch"]),
    p("", "namespaces", &["list", "watch"]),
    p("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    p("portway.dev", "loadbalancerpools", &["list", "watch"]),
    p("portway.dev", "loadbalancerpools/status", &["patch"]),
    p(
        "portway.dev",
        "serviceloadbalancers",
        &["list", "watch", "create", "patch", "delete"],
    ),
    p("portway.dev", "serviceloadbalancers/status", &["patch"]),
    p(
        "apps",
        "daemonsets",
        &["list", "watch", "create", "patch", "delete"],
    ),
    p(
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["list", "watch", "create", "patch", "delete"],
    ),
    Permission {
        group: "rbac.authorization.k8s.io",
        resource: "clusterroles",
        verbs: &["bind"],
        resource_names: &[AGENT_STATUS_CLUSTER_ROLE],
    },
];

/// Default name of the ClusterRole the operator binds for the agents (`--agent-status-cluster-role`).
pub const AGENT_STATUS_CLUSTER_ROLE: &str = "portway-agent-status";

/// The ClusterCIDR controller (owned by the ClusterCIDR work; keep equal to its calls):
/// - Nodes: list and watch (the allocation state), `patch` of `spec.podCIDRs` (merge patch with
///   resourceVersion), `get` to re-read a Node after a conflicting patch;
/// - ClusterCIDRs: list and watch, `patch` of the finalizer, `get` and `create` of the default
///   ClusterCIDR made from `--default-cluster-cidr`;
/// - `patch` (server-side apply) of ClusterCIDR status.
pub const CLUSTERCIDR: &[Permission] = &[
    p("", "nodes", &["get", "list", "watch", "patch"]),
    p(
        "portway.dev",
        "clustercidrs",
        &["get", "list", "watch", "create", "patch"],
    ),
    p("portway.dev", "clustercidrs/status", &["patch"]),
];

/// `portway cleanup` (the chart's `pre-delete` hook, ClusterRole `portway-cleanup`), cluster-wide;
/// keep equal to its calls (`crate::cleanup`):
/// - Services: list (every namespace), `patch` of the finalizer (merge patch with
///   resourceVersion), `get` to re-read one after a conflicting patch, `patch` of `status`
///   (server-side apply withdrawing Portway's ingress and condition);
/// - list and delete of the ServiceLoadBalancers and the agents' RoleBindings.
pub const CLEANUP: &[Permission] = &[
    p("", "services", &["list", "get", "patch"]),
    p("", "services/status", &["patch"]),
    p("portway.dev", "serviceloadbalancers", &["list", "delete"]),
    p(
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["list", "delete"],
    ),
    // `--helm-release`: the chart's default pool, which an install hook created.
    p("portway.dev", "loadbalancerpools", &["list", "delete"]),
];

/// `portway cleanup` in the operator's namespace only (Role `portway-cleanup`): list and delete
/// the node-agent DaemonSets, list pods (to wait until the operator's and the agents' are gone),
/// and read and scale the operator's Deployment to 0 (only that one).
pub const CLEANUP_IN_NAMESPACE: &[Permission] = &[
    p("apps", "daemonsets", &["list", "delete"]),
    p("", "pods", &["list"]),
    Permission {
        group: "apps",
        resource: "deployments/scale",
        verbs: &["get", "patch"],
        resource_names: &[OPERATOR_DEPLOYMENT],
    },
];

/// Name of the operator's Deployment (the chart's); `portway cleanup --stop-operator` scales it.
pub const OPERATOR_DEPLOYMENT: &str = "portway-operator";

/// Every permission of the operator.
pub fn all() -> Vec<Permission> {
    COMMON
        .iter()
        .chain(SERVICELB)
        .chain(CLUSTERCIDR)
        .copied()
        .collect()
}
