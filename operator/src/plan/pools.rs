//! Desired status of each LoadBalancerPool: how many Nodes it selects and Services it serves.

use std::collections::BTreeMap;

use portway_crds::LoadBalancerPoolStatus;
use portway_crds::condition::{self, reasons, types};

use super::assign::{Assignment, Placement};
use super::{Config, Observed, PoolPlan};

/// Status of every pool, sorted by name; conditions keep their transition times.
pub fn pool_statuses(
    observed: &Observed,
    assignment: &Assignment,
    config: &Config,
) -> Vec<PoolPlan> {
    let mut services: BTreeMap<&str, i32> = BTreeMap::new();
    for a in assignment.services.values() {
        if let Placement::Placed(p) = &a.placement {
            *services.entry(p.pool.as_str()).or_default() += 1;
        }
    }
    let _ = observed;
    assignment
        .pools
        .values()
        .map(|info| {
            let nodes = i32::try_from(info.nodes.len()).unwrap_or(i32::MAX);
            let generation = info.pool.metadata.generation;
            let has_nodes = nodes > 0;
            let (reason, message) = if has_nodes {
                (reasons::NODES_SELECTED, format!("{nodes} nodes selected"))
            } else {
                (
                    reasons::NO_MATCHING_NODES,
                    "the nodeSelector matches no Node".to_owned(),
                )
            };
            let next = vec![
                condition::new(
                    types::READY,
                    has_nodes,
                    reason,
                    message.clone(),
                    generation,
                    &config.now,
                ),
                condition::new(
                    types::NO_NODES,
                    !has_nodes,
                    reason,
                    message,
                    generation,
                    &config.now,
                ),
            ];
            let old = info
                .pool
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or(&[]);
            PoolPlan {
                name: info.name.clone(),
                status: LoadBalancerPoolStatus {
                    observed_generation: generation,
                    conditions: condition::merge(old, next),
                    nodes,
                    services: services.get(info.name.as_str()).copied().unwrap_or(0),
                },
            }
        })
        .collect()
}
