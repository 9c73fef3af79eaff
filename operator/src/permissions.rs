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

/// Shared by both controllers: leader election and Events.
pub const COMMON: &[Permission] = &[
    p(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    ),
    p("events.k8s.io", "events", &["create", "patch"]),
];

/// The ServiceLB controller (owned by the ServiceLB work; keep equal to its calls).
pub const SERVICELB: &[Permission] = &[];

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

/// Every permission of the operator.
pub fn all() -> Vec<Permission> {
    COMMON
        .iter()
        .chain(SERVICELB)
        .chain(CLUSTERCIDR)
        .copied()
        .collect()
}
