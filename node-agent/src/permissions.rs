//! Every Kubernetes API permission the node agent uses, in one list. The Helm chart's
//! `portway-agent` and `portway-agent-status` ClusterRoles are tested against these lists
//! (nothing missing, nothing extra), and the agent checks them at start-up with
//! `SelfSubjectAccessReview`s so a missing grant is logged by name instead of as a stream of 403s.
//!
//! The agent only reads cluster-wide; its single write (`patch serviceloadbalancers/status`) is
//! granted per namespace by the operator's RoleBinding `portway-agent-status` (BRIEF contract 3).
//! Keep each list exactly equal to the calls the agent makes (`src/source.rs`, `src/status.rs`).

/// One RBAC rule: verbs on a resource (or subresource, as `resource/subresource`) of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Resource, or `resource/subresource`.
    pub resource: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Restricts the rule to these object names (empty: all); same shape as the operator's list.
    pub resource_names: &'static [&'static str],
}

/// Name of the ClusterRole holding [`READ`].
pub const READ_CLUSTER_ROLE: &str = "portway-agent";
/// Name of the ClusterRole holding [`STATUS`] (bound per namespace by the operator).
pub const STATUS_CLUSTER_ROLE: &str = "portway-agent-status";

/// Reads: the agent watches its Service's `ServiceLoadBalancer` (by name) and, in `Host` mode,
/// the Service's EndpointSlices (by the `kubernetes.io/service-name` label).
pub const READ: &[Permission] = &[
    Permission {
        group: "portway.dev",
        resource: "serviceloadbalancers",
        verbs: &["get", "list", "watch"],
        resource_names: &[],
    },
    Permission {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["get", "list", "watch"],
        resource_names: &[],
    },
];

/// The one write: server-side apply of the agent's own `status.nodes` entry.
pub const STATUS: &[Permission] = &[Permission {
    group: "portway.dev",
    resource: "serviceloadbalancers/status",
    verbs: &["patch"],
    resource_names: &[],
}];

/// Every permission of the agent.
pub fn all() -> Vec<Permission> {
    READ.iter().chain(STATUS).copied().collect()
}

/// `(group, resource, subresource, verb)` tuples, one per verb, as a `SelfSubjectAccessReview`
/// asks for them.
pub fn access_checks() -> Vec<(
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
)> {
    let mut out = Vec::new();
    for p in all() {
        let (resource, sub) = match p.resource.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (p.resource, None),
        };
        for verb in p.verbs {
            out.push((p.group, resource, sub, *verb));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_read_only_and_the_write_is_status_patch_only() {
        for p in READ {
            for v in p.verbs {
                assert!(["get", "list", "watch"].contains(v), "{p:?} must only read");
            }
        }
        assert_eq!(STATUS.len(), 1);
        assert_eq!(STATUS[0].verbs, &["patch"]);
        assert!(STATUS[0].resource.ends_with("/status"));
    }

    #[test]
    fn access_checks_split_subresources() {
        let checks = access_checks();
        assert_eq!(checks.len(), 7);
        assert!(checks.contains(&(
            "portway.dev",
            "serviceloadbalancers",
            Some("status"),
            "patch"
        )));
        assert!(checks.contains(&("discovery.k8s.io", "endpointslices", None, "watch")));
    }
}
