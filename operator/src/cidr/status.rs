//! A ClusterCIDR's status from the allocation state: usage per family and the conditions
//! `Ready`, `NearlyFull`, `Exhausted` and `ForeignPodCIDRs`. Pure; the clock is a parameter.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use portway_crds::condition::{self, reasons, status as cstatus, types};
use portway_crds::{ClusterCIDRStatus, FamilyUsage};
use serde::Serialize;

use super::allocator::{Allocator, FamilyUsage as Usage, Pool};
use super::block::Family;

/// `NearlyFull` turns true at this share of a family's blocks in use, in tenths.
pub const NEARLY_FULL_TENTHS: u128 = 9;
/// Longest list of names in a condition message.
const MAX_NAMES: usize = 10;

/// A condition without a timestamp (what `portway plan` prints; the controller adds times).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

impl PlannedCondition {
    fn new(type_: &str, status: &str, reason: &str, message: impl Into<String>) -> Self {
        PlannedCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    fn flag(type_: &str, on: bool, reason: &str, message: impl Into<String>) -> Self {
        let status = if on { cstatus::TRUE } else { cstatus::FALSE };
        Self::new(type_, status, reason, message)
    }
}

/// `FamilyUsage` for the API: capacity saturates at `i64::MAX`.
pub fn api_usage(u: &Usage) -> FamilyUsage {
    FamilyUsage {
        allocated: i64::try_from(u.allocated).unwrap_or(i64::MAX),
        capacity: i64::try_from(u.capacity).unwrap_or(i64::MAX),
    }
}

fn usages(alloc: &Allocator, pool: &Pool) -> Vec<(Family, Usage)> {
    Family::ALL
        .iter()
        .filter_map(|&f| alloc.usage(&pool.name, f).map(|u| (f, u)))
        .collect()
}

fn describe(u: &Usage) -> String {
    let pct = (u.in_use() as f64 / u.capacity as f64 * 100.0).floor();
    format!(
        "{} {}: {} of {} /{} in use ({pct} %), {} allocated to Nodes",
        u.range.range.family,
        u.range.range,
        u.in_use(),
        u.capacity,
        u.range.node_prefix,
        u.allocated
    )
}

fn names_list(names: &[&str]) -> String {
    let mut out = names
        .iter()
        .take(MAX_NAMES)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX_NAMES {
        out.push_str(&format!(" and {} more", names.len() - MAX_NAMES));
    }
    out
}

/// The conditions of `pool`. `waiting` are the Nodes that wait for it (it was full when they
/// asked), sorted.
pub fn conditions(alloc: &Allocator, pool: &Pool, waiting: &[&str]) -> Vec<PlannedCondition> {
    let foreign = foreign_condition(alloc, pool);
    if let Err(problems) = &pool.spec {
        let msg = format!("invalid spec: {}", problems.join("; "));
        let unknown = |t: &str| {
            PlannedCondition::new(
                t,
                cstatus::UNKNOWN,
                reasons::INVALID_SPEC_CIDR,
                "spec is invalid",
            )
        };
        return vec![
            PlannedCondition::flag(types::READY, false, reasons::INVALID_SPEC_CIDR, msg),
            unknown(types::NEARLY_FULL),
            unknown(types::EXHAUSTED),
            foreign,
        ];
    }
    let usages = usages(alloc, pool);
    let summary = usages
        .iter()
        .map(|(_, u)| describe(u))
        .collect::<Vec<_>>()
        .join("; ");
    let full: Vec<&Usage> = usages
        .iter()
        .map(|(_, u)| u)
        .filter(|u| u.free == 0)
        .collect();
    let nearly: Vec<&Usage> = usages
        .iter()
        .map(|(_, u)| u)
        .filter(|u| u.in_use() * 10 >= u.capacity * NEARLY_FULL_TENTHS)
        .collect();

    let exhausted = if full.is_empty() {
        let free = usages
            .iter()
            .map(|(f, u)| format!("{f} {} /{} free", u.free, u.range.node_prefix))
            .collect::<Vec<_>>()
            .join(", ");
        PlannedCondition::flag(types::EXHAUSTED, false, reasons::CIDRS_AVAILABLE, free)
    } else {
        let mut msg = full
            .iter()
            .map(|u| {
                format!(
                    "{} {} has no free /{} ({} of {} in use)",
                    u.range.range.family,
                    u.range.range,
                    u.range.node_prefix,
                    u.in_use(),
                    u.capacity
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        if !waiting.is_empty() {
            msg.push_str(&format!(
                "; {} Node(s) wait for a pod CIDR: {}",
                waiting.len(),
                names_list(waiting)
            ));
        }
        PlannedCondition::flag(types::EXHAUSTED, true, reasons::NO_FREE_CIDRS, msg)
    };

    let nearly_full = if nearly.is_empty() {
        PlannedCondition::flag(
            types::NEARLY_FULL,
            false,
            reasons::BELOW_THRESHOLD,
            summary.clone(),
        )
    } else {
        let msg = nearly
            .iter()
            .map(|u| describe(u))
            .collect::<Vec<_>>()
            .join("; ");
        PlannedCondition::flag(types::NEARLY_FULL, true, reasons::ABOVE_THRESHOLD, msg)
    };

    let ready = if pool.terminating {
        PlannedCondition::flag(
            types::READY,
            false,
            reasons::TERMINATING,
            format!(
                "being deleted: no new allocations; {} Node CIDR(s) still come from it, and the \
                 finalizer {} is removed when those Nodes are gone",
                pool.allocated_total(),
                portway_crds::names::CLUSTER_CIDR_FINALIZER
            ),
        )
    } else if !full.is_empty() {
        PlannedCondition::flag(
            types::READY,
            false,
            reasons::NO_FREE_CIDRS,
            exhausted.message.clone(),
        )
    } else {
        PlannedCondition::flag(types::READY, true, reasons::CIDRS_AVAILABLE, summary)
    };
    vec![ready, nearly_full, exhausted, foreign]
}

fn foreign_condition(alloc: &Allocator, pool: &Pool) -> PlannedCondition {
    let hits: Vec<String> = alloc
        .foreign()
        .filter(|(_, f)| f.selected_by.contains(&pool.name))
        .map(|(node, f)| {
            let blocks: Vec<String> = f.blocks.iter().map(ToString::to_string).collect();
            format!("{node} ({})", blocks.join(", "))
        })
        .collect();
    if hits.is_empty() {
        PlannedCondition::flag(
            types::FOREIGN_POD_CIDRS,
            false,
            reasons::NO_FOREIGN_POD_CIDRS,
            "every pod CIDR of the Nodes it selects lies in a ClusterCIDR",
        )
    } else {
        let refs: Vec<&str> = hits.iter().map(String::as_str).collect();
        PlannedCondition::flag(
            types::FOREIGN_POD_CIDRS,
            true,
            reasons::FOREIGN_POD_CIDR,
            format!(
                "{} Node(s) it selects hold pod CIDRs outside every ClusterCIDR (kept, never \
                 reallocated): {}",
                hits.len(),
                names_list(&refs)
            ),
        )
    }
}

/// Usage per family as the API shows it.
pub fn usage_status(alloc: &Allocator, pool: &Pool) -> (Option<FamilyUsage>, Option<FamilyUsage>) {
    (
        alloc.usage(&pool.name, Family::V4).map(|u| api_usage(&u)),
        alloc.usage(&pool.name, Family::V6).map(|u| api_usage(&u)),
    )
}

/// The full status, with `lastTransitionTime` kept from `old` where a condition's status did not
/// change and `now` otherwise.
pub fn status(
    alloc: &Allocator,
    pool: &Pool,
    waiting: &[&str],
    old: Option<&ClusterCIDRStatus>,
    now: &Time,
) -> ClusterCIDRStatus {
    let next: Vec<Condition> = conditions(alloc, pool, waiting)
        .into_iter()
        .map(|c| Condition {
            type_: c.type_,
            status: c.status,
            reason: c.reason,
            message: c.message,
            observed_generation: pool.generation,
            last_transition_time: now.clone(),
        })
        .collect();
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let (ipv4, ipv6) = usage_status(alloc, pool);
    ClusterCIDRStatus {
        observed_generation: pool.generation,
        conditions: condition::merge(old_conditions, next),
        ipv4,
        ipv6,
    }
}

/// True when writing `next` would change `old` (timestamps aside).
pub fn differs(old: Option<&ClusterCIDRStatus>, next: &ClusterCIDRStatus) -> bool {
    match old {
        None => true,
        Some(old) => {
            old.observed_generation != next.observed_generation
                || old.ipv4 != next.ipv4
                || old.ipv6 != next.ipv6
                || !condition::same_ignoring_time(&old.conditions, &next.conditions)
        }
    }
}
