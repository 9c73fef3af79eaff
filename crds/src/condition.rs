//! Condition types and reasons of every Portway resource, and the one pure function that merges
//! a newly computed condition into a list while keeping `lastTransitionTime` when the status did
//! not flip (so a resync with nothing new writes nothing).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition `status` values.
pub mod status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
}

/// Condition types (PascalCase, as `metav1.Condition` recommends).
pub mod types {
    /// The object is fully served: pools have nodes, Services have forwarding nodes, a
    /// ClusterCIDR can hand out CIDRs.
    pub const READY: &str = "Ready";
    /// LoadBalancerPool: the node selector matches no Node.
    pub const NO_NODES: &str = "NoNodes";
    /// ClusterCIDR: no free CIDR is left in at least one family.
    pub const EXHAUSTED: &str = "Exhausted";
    /// ClusterCIDR: 90 % or more of a family's CIDRs are allocated.
    pub const NEARLY_FULL: &str = "NearlyFull";
    /// ServiceLoadBalancer, per node: the node agent's rules are installed.
    pub const FORWARDING: &str = "Forwarding";
    /// ServiceLoadBalancer: another Service holds one of this Service's ports on every eligible node.
    pub const PORT_CONFLICT: &str = "PortConflict";
    /// ServiceLoadBalancer: a pool was chosen for the Service.
    pub const POOL_SELECTED: &str = "PoolSelected";
    /// ServiceLoadBalancer: the Service has ready endpoints (required for `externalTrafficPolicy: Local`).
    pub const ENDPOINTS_READY: &str = "EndpointsReady";
    /// ClusterCIDR: Nodes this ClusterCIDR selects hold pod CIDRs that no ClusterCIDR contains.
    pub const FOREIGN_POD_CIDRS: &str = "ForeignPodCIDRs";
    /// Service (on the Service's own `status.conditions`, written by the operator): whether
    /// Portway serves this LoadBalancer Service and, when not, why. Domain-prefixed, as
    /// Kubernetes asks of conditions written on objects another API group owns, so it never
    /// collides with a condition of the Service's other controllers.
    pub const SERVICE_LOAD_BALANCER: &str = "portway.dev/LoadBalancer";
}

/// Condition reasons (PascalCase, one word each).
pub mod reasons {
    // Pools
    pub const NODES_SELECTED: &str = "NodesSelected";
    pub const NO_MATCHING_NODES: &str = "NoMatchingNodes";
    // ServiceLoadBalancer (operator)
    pub const POOL_MATCHED: &str = "PoolMatched";
    pub const POOL_ANNOTATED: &str = "PoolAnnotated";
    pub const NO_MATCHING_POOL: &str = "NoMatchingPool";
    pub const POOL_NOT_FOUND: &str = "PoolNotFound";
    pub const POOL_HAS_NO_NODES: &str = "PoolHasNoNodes";
    pub const PORT_IN_USE: &str = "PortInUse";
    /// A port of the Service is reserved on every node (`--reserved-host-ports`: kubelet's API,
    /// the operator's metrics port on the host network).
    pub const PORT_RESERVED: &str = "PortReserved";
    pub const NO_CONFLICT: &str = "NoConflict";
    pub const ENDPOINTS_AVAILABLE: &str = "EndpointsAvailable";
    pub const NO_READY_ENDPOINTS: &str = "NoReadyEndpoints";
    pub const AGENTS_FORWARDING: &str = "AgentsForwarding";
    pub const AGENTS_NOT_FORWARDING: &str = "AgentsNotForwarding";
    /// Agents forward, but no forwarding Node has an address of the pool's types and the
    /// Service's families.
    pub const NO_NODE_ADDRESSES: &str = "NoNodeAddresses";
    pub const INVALID_SERVICE: &str = "InvalidService";
    // Service (`portway.dev/LoadBalancer`; the other reasons are the ServiceLoadBalancer's)
    /// Addresses are published in `status.loadBalancer.ingress`.
    pub const SERVING: &str = "Serving";
    /// Another Service holds one of this Service's ports on every eligible node.
    pub const PORT_CONFLICT: &str = "PortConflict";
    // Node agent
    pub const RULES_APPLIED: &str = "RulesApplied";
    pub const NO_ENDPOINTS: &str = "NoEndpoints";
    pub const KERNEL_REJECTED: &str = "KernelRejected";
    pub const FORWARDING_DISABLED: &str = "ForwardingDisabled";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The agent's netns has no usable address of any of the Service's families.
    pub const NO_ADDRESSES: &str = "NoAddresses";
    pub const SHUTTING_DOWN: &str = "ShuttingDown";
    // ClusterCIDR
    pub const CIDRS_AVAILABLE: &str = "CIDRsAvailable";
    pub const NO_FREE_CIDRS: &str = "NoFreeCIDRs";
    pub const ABOVE_THRESHOLD: &str = "AboveThreshold";
    pub const BELOW_THRESHOLD: &str = "BelowThreshold";
    pub const INVALID_SPEC_CIDR: &str = "InvalidSpec";
    pub const FOREIGN_POD_CIDR: &str = "ForeignPodCIDR";
    pub const NO_FOREIGN_POD_CIDRS: &str = "NoForeignPodCIDRs";
    /// The object has a deletionTimestamp and waits for its users to go.
    pub const TERMINATING: &str = "Terminating";
}

/// Builds a condition; `last_transition_time` is `now` and is corrected by [`upsert`].
pub fn new(
    type_: &str,
    is_true: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if is_true { status::TRUE } else { status::FALSE }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now.clone(),
    }
}

/// Merges `next` into `conditions` (keyed by type). When a condition of that type exists with
/// the same status, its `lastTransitionTime` is kept; otherwise `next`'s is used. Returns whether
/// anything other than timestamps changed. Order of `conditions` is kept stable; new types append.
pub fn upsert(conditions: &mut Vec<Condition>, mut next: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == next.type_) {
        Some(old) => {
            if old.status == next.status {
                next.last_transition_time = old.last_transition_time.clone();
            }
            let changed = old.status != next.status
                || old.reason != next.reason
                || old.message != next.message
                || old.observed_generation != next.observed_generation;
            *old = next;
            changed
        }
        None => {
            conditions.push(next);
            true
        }
    }
}

/// Merges every condition of `next` into `old` (see [`upsert`]) and returns the merged list;
/// conditions of `old` whose types are not in `next` are dropped (the caller owns all types).
pub fn merge(old: &[Condition], next: Vec<Condition>) -> Vec<Condition> {
    let mut merged: Vec<Condition> = Vec::with_capacity(next.len());
    for mut c in next {
        if let Some(prev) = old.iter().find(|o| o.type_ == c.type_)
            && prev.status == c.status
        {
            c.last_transition_time = prev.last_transition_time.clone();
        }
        merged.push(c);
    }
    merged
}

/// Looks a condition up by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when a condition of `type_` exists with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == status::TRUE)
}

/// True when both lists hold the same conditions, ignoring `lastTransitionTime` and order.
pub fn same_ignoring_time(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            find(b, &x.type_).is_some_and(|y| {
                x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
                    && x.observed_generation == y.observed_generation
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    #[test]
    fn upsert_keeps_transition_time_when_status_is_unchanged() {
        let mut list = vec![new(types::READY, true, "A", "m", Some(1), &t(10))];
        let changed = upsert(
            &mut list,
            new(types::READY, true, "A", "m", Some(1), &t(20)),
        );
        assert!(!changed);
        assert_eq!(list[0].last_transition_time, t(10));
        let changed = upsert(
            &mut list,
            new(types::READY, true, "B", "m2", Some(2), &t(30)),
        );
        assert!(changed);
        assert_eq!(
            list[0].last_transition_time,
            t(10),
            "same status keeps the time"
        );
        assert_eq!(list[0].reason, "B");
    }

    #[test]
    fn upsert_moves_transition_time_when_status_flips() {
        let mut list = vec![new(types::READY, true, "A", "m", None, &t(10))];
        assert!(upsert(
            &mut list,
            new(types::READY, false, "B", "m", None, &t(20))
        ));
        assert_eq!(list[0].last_transition_time, t(20));
        assert_eq!(list[0].status, status::FALSE);
    }

    /// What the API server requires of `metav1.Condition` type and reason (apimachinery's
    /// `ValidateConditions`), checked for every constant: a bad one would make every status write
    /// of a Service fail.
    #[test]
    fn types_and_reasons_are_valid_condition_strings() {
        fn name_part(s: &str) -> bool {
            let b = s.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        fn qualified(s: &str) -> bool {
            match s.split_once('/') {
                Some((prefix, name)) => {
                    !prefix.is_empty()
                        && prefix.len() <= 253
                        && prefix.split('.').all(|l| {
                            !l.is_empty()
                                && l.bytes().all(|c| {
                                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
                                })
                        })
                        && name_part(name)
                }
                None => name_part(s),
            }
        }
        fn reason(s: &str) -> bool {
            let b = s.as_bytes();
            !b.is_empty()
                && b.len() <= 1024
                && b[0].is_ascii_alphabetic()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b',' | b':'))
        }
        for t in [
            types::READY,
            types::NO_NODES,
            types::FORWARDING,
            types::PORT_CONFLICT,
            types::POOL_SELECTED,
            types::ENDPOINTS_READY,
            types::SERVICE_LOAD_BALANCER,
        ] {
            assert!(qualified(t), "{t}");
        }
        assert!(!qualified("portway.dev/"), "the check can fail");
        for r in [
            reasons::NO_MATCHING_POOL,
            reasons::POOL_NOT_FOUND,
            reasons::INVALID_SERVICE,
            reasons::PORT_CONFLICT,
            reasons::POOL_HAS_NO_NODES,
            reasons::NO_READY_ENDPOINTS,
            reasons::AGENTS_NOT_FORWARDING,
            reasons::NO_NODE_ADDRESSES,
            reasons::SERVING,
        ] {
            assert!(reason(r), "{r}");
        }
        assert!(!reason("Not-A-Reason"), "the check can fail");
    }

    #[test]
    fn merge_drops_unowned_and_keeps_times() {
        let old = vec![
            new(types::READY, true, "A", "m", None, &t(10)),
            new(types::NO_NODES, false, "A", "m", None, &t(10)),
        ];
        let next = vec![
            new(types::READY, true, "A", "m", None, &t(50)),
            new(types::PORT_CONFLICT, false, "C", "m", None, &t(50)),
        ];
        let merged = merge(&old, next);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].last_transition_time, t(10));
        assert_eq!(merged[1].last_transition_time, t(50));
        assert!(same_ignoring_time(&merged, &merged.clone()));
        assert!(!same_ignoring_time(&merged, &old));
    }
}
