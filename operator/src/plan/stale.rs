//! Entries of `status.nodes` that no longer stand for a node serving the Service.
//!
//! Each node agent writes its own entry and reports `Forwarding=False` when it stops, but no agent
//! removes its entry: a node that leaves the pool, becomes blocked by another Service's port, or
//! whose Node object is deleted would keep it forever. The operator removes such an entry once it
//! can no longer mislead anyone:
//!
//! - its node is not one the Service's DaemonSet targets (not in [`Placed::usable`], the set the
//!   DaemonSet's node affinity is built from: the pool's Nodes minus the blocked ones), and
//! - the Node is gone (or being deleted), or the entry's `Forwarding` condition is not `True` (the
//!   agent stopped and said so).
//!
//! An entry of a targeted node is never stale (its agent runs or is about to), and neither is a
//! `Forwarding=True` entry of an existing Node that left the pool: its agent may still be shutting
//! down, and will report `False` first.

use portway_crds::ServiceLoadBalancer;
use portway_crds::condition::{self, types};

use super::assign::{Assignment, Placed};

/// Node names of the stale entries of `slb`'s `status.nodes`, sorted and without duplicates.
pub fn stale_node_entries(
    placed: &Placed,
    assignment: &Assignment,
    slb: Option<&ServiceLoadBalancer>,
) -> Vec<String> {
    let Some(status) = slb.and_then(|s| s.status.as_ref()) else {
        return Vec::new();
    };
    let mut stale: Vec<String> = status
        .nodes
        .iter()
        .filter(|entry| match assignment.node_index.get(&entry.node) {
            Some(i) if placed.usable.contains(*i) => false,
            Some(_) => !condition::is_true(&entry.conditions, types::FORWARDING),
            None => true,
        })
        .map(|entry| entry.node.clone())
        .collect();
    stale.sort();
    stale.dedup();
    stale
}
