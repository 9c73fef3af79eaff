//! What `portway plan --strict` fails on (exit code 1), also listed in `-o json` as `problems`.

use serde::Serialize;

use super::{Plan, ready_reason};
use crate::cidr::NodeCidrState;
use crate::plan::ServiceState;

/// Reason of a problem for a rejected document.
pub const REJECTED: &str = "Rejected";
/// Reason of a problem when the pod CIDRs cannot be planned at all.
pub const POD_CIDRS_NOT_PLANNED: &str = "PodCIDRsNotPlanned";
/// Reason of a problem for a Node that gets no pod CIDR (or a wrong one).
pub const NO_POD_CIDR: &str = "NoPodCIDR";

/// One thing a pre-merge check should stop on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What it is about: `Kind/namespace/name (file#document)`, `Service namespace/name`,
    /// `Node name` or `pod CIDRs`.
    pub subject: String,
    /// [`REJECTED`], the Service's condition reason (`PortConflict`, `PoolNotFound`...),
    /// [`POD_CIDRS_NOT_PLANNED`] or [`NO_POD_CIDR`].
    pub reason: String,
    /// Why, in words.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.subject, self.reason, self.message)
    }
}

/// Every problem of `plan`, in output order: rejected documents (by source), Services that are
/// not serving (by namespace/name), then pod CIDRs (by Node).
pub fn problems(plan: &Plan<'_>) -> Vec<Problem> {
    let mut out: Vec<Problem> = plan
        .rejected
        .iter()
        .map(|s| Problem {
            subject: format!("{} ({})", s.object, s.source),
            reason: REJECTED.to_owned(),
            message: s.reason.clone(),
        })
        .collect();
    for p in &plan.desired.services {
        // A Service that stopped being a LoadBalancer is being cleaned up, as it should.
        if matches!(p.state, ServiceState::Serving | ServiceState::CleaningUp) {
            continue;
        }
        let (reason, message) = ready_reason(p);
        out.push(Problem {
            subject: format!("Service {}", p.service),
            reason,
            message: format!("{} ({message})", p.state.as_str()),
        });
    }
    match &plan.cidrs {
        Err(e) => out.push(Problem {
            subject: "pod CIDRs".to_owned(),
            reason: POD_CIDRS_NOT_PLANNED.to_owned(),
            message: e.to_string(),
        }),
        // Without ClusterCIDRs Portway hands out no pod CIDRs: nothing to check.
        Ok(cidrs) if !cidrs.cluster_cidrs.is_empty() => {
            for n in &cidrs.nodes {
                if matches!(n.state, NodeCidrState::Adopted | NodeCidrState::Allocated) {
                    continue;
                }
                out.push(Problem {
                    subject: format!("Node {}", n.node),
                    reason: NO_POD_CIDR.to_owned(),
                    message: format!(
                        "{}: {}",
                        n.state.as_str(),
                        n.reason.as_deref().unwrap_or("no reason given")
                    ),
                });
            }
        }
        Ok(_) => {}
    }
    out
}
