//! `portway plan` for pod CIDRs: given Nodes and ClusterCIDRs, which CIDRs each Node has
//! (adopted) or would get, which Nodes wait and why, and every ClusterCIDR's resulting status.
//! Runs exactly the allocator the controller runs, in the controller's order: first every Node
//! that already has `podCIDRs` is adopted, then the others are allocated in name order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Node;
use portway_crds::{ClusterCIDR, FamilyUsage};
use serde::Serialize;

use super::allocator::{Allocator, NodeFacts, Unavailable};
use super::status::{self, PlannedCondition};

/// Pod CIDRs each Node of the input has or would get, and the resulting ClusterCIDR statuses.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CidrPlan {
    /// One entry per Node, by name.
    pub nodes: Vec<NodeCidrs>,
    /// One entry per ClusterCIDR, by name.
    #[serde(rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<ClusterCidrOutcome>,
}

/// What happens to one Node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NodeCidrState {
    /// It already has pod CIDRs inside a ClusterCIDR; they are kept.
    Adopted,
    /// It would get these CIDRs now.
    Allocated,
    /// It gets nothing now (see `reason`).
    Waiting,
    /// It has pod CIDRs, but some lie outside every ClusterCIDR; kept and reported.
    Foreign,
    /// Its pod CIDRs overlap another Node's; kept and reported.
    Conflict,
}

impl NodeCidrState {
    fn as_str(self) -> &'static str {
        match self {
            NodeCidrState::Adopted => "Adopted",
            NodeCidrState::Allocated => "Allocated",
            NodeCidrState::Waiting => "Waiting",
            NodeCidrState::Foreign => "Foreign",
            NodeCidrState::Conflict => "Conflict",
        }
    }
}

/// One Node's pod CIDRs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCidrs {
    pub node: String,
    pub state: NodeCidrState,
    /// `spec.podCIDRs` (IPv4 first for Nodes Portway allocates).
    #[serde(default, rename = "podCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
    /// The ClusterCIDR the CIDRs come from.
    #[serde(
        default,
        rename = "clusterCIDR",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_cidr: Option<String>,
    /// Why the Node waits, or what is wrong with its CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One ClusterCIDR's resulting status.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCidrOutcome {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyUsage>,
    pub conditions: Vec<PlannedCondition>,
}

/// Why the CIDR plan could not be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrPlanError {
    #[error("Node {0:?} appears more than once in the input")]
    DuplicateNode(String),
    #[error("ClusterCIDR {0:?} appears more than once in the input")]
    DuplicateClusterCidr(String),
    #[error("a {0} in the input has no metadata.name")]
    Unnamed(&'static str),
}

/// Computes the CIDR plan for `nodes` from `cidrs`.
pub fn plan_for_nodes(nodes: &[Node], cidrs: &[ClusterCIDR]) -> Result<CidrPlan, CidrPlanError> {
    let mut names = BTreeSet::new();
    for c in cidrs {
        let name = c
            .metadata
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or(CidrPlanError::Unnamed("ClusterCIDR"))?;
        if !names.insert(name) {
            return Err(CidrPlanError::DuplicateClusterCidr(name.to_owned()));
        }
    }
    let mut facts: BTreeMap<String, NodeFacts> = BTreeMap::new();
    for n in nodes {
        let f = NodeFacts::from_node(n);
        if f.name.is_empty() {
            return Err(CidrPlanError::Unnamed("Node"));
        }
        if facts.contains_key(&f.name) {
            return Err(CidrPlanError::DuplicateNode(f.name));
        }
        facts.insert(f.name.clone(), f);
    }

    let mut alloc = Allocator::new(cidrs);
    let mut out: BTreeMap<&str, NodeCidrs> = BTreeMap::new();
    for f in facts.values().filter(|f| !f.pod_cidrs.is_empty()) {
        let report = alloc.adopt(f);
        let record = alloc.node(&f.name);
        let mut problems = Vec::new();
        let mut state = NodeCidrState::Adopted;
        if !report.foreign.is_empty() {
            state = NodeCidrState::Foreign;
            let b: Vec<String> = report.foreign.iter().map(ToString::to_string).collect();
            problems.push(format!("outside every ClusterCIDR: {}", b.join(", ")));
        }
        if !report.overlaps.is_empty() {
            state = NodeCidrState::Conflict;
            for (b, with) in &report.overlaps {
                problems.push(format!("{b} overlaps the pod CIDRs of {}", with.join(", ")));
            }
        }
        if !report.unparsable.is_empty() {
            problems.push(format!("not CIDRs: {}", report.unparsable.join(", ")));
        }
        out.insert(
            &f.name,
            NodeCidrs {
                node: f.name.clone(),
                state,
                pod_cidrs: f.pod_cidrs.clone(),
                cluster_cidr: record.and_then(|r| r.owner()).map(|o| o.to_string()),
                reason: (!problems.is_empty()).then(|| problems.join("; ")),
            },
        );
    }
    let mut waiting: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for f in facts.values().filter(|f| f.pod_cidrs.is_empty()) {
        let entry = if f.deleting {
            NodeCidrs {
                node: f.name.clone(),
                state: NodeCidrState::Waiting,
                pod_cidrs: Vec::new(),
                cluster_cidr: None,
                reason: Some("the Node is being deleted; nothing is allocated to it".into()),
            }
        } else {
            match alloc.allocate(&f.name, &f.labels, f.uid.as_deref()) {
                Ok(a) => NodeCidrs {
                    node: f.name.clone(),
                    state: NodeCidrState::Allocated,
                    pod_cidrs: a.blocks.iter().map(ToString::to_string).collect(),
                    cluster_cidr: Some(a.cluster_cidr.to_string()),
                    reason: None,
                },
                Err(why) => {
                    record_waiting(&mut waiting, &f.name, &why);
                    NodeCidrs {
                        node: f.name.clone(),
                        state: NodeCidrState::Waiting,
                        pod_cidrs: Vec::new(),
                        cluster_cidr: None,
                        reason: Some(why.to_string()),
                    }
                }
            }
        };
        out.insert(&f.name, entry);
    }

    let cluster_cidrs = alloc
        .pools()
        .map(|pool| {
            let w = waiting.get(&*pool.name).cloned().unwrap_or_default();
            let (ipv4, ipv6) = status::usage_status(&alloc, pool);
            ClusterCidrOutcome {
                name: pool.name.to_string(),
                ipv4,
                ipv6,
                conditions: status::conditions(&alloc, pool, &w),
            }
        })
        .collect();
    Ok(CidrPlan {
        nodes: out.into_values().collect(),
        cluster_cidrs,
    })
}

fn record_waiting<'a>(
    waiting: &mut BTreeMap<String, Vec<&'a str>>,
    node: &'a str,
    why: &Unavailable,
) {
    for pool in why.waits_for() {
        waiting.entry(pool.to_owned()).or_default().push(node);
    }
}

impl CidrPlan {
    /// The Nodes that wait for a CIDR.
    pub fn waiting(&self) -> impl Iterator<Item = &NodeCidrs> {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeCidrState::Waiting)
    }

    /// The plan for one Node.
    pub fn node(&self, name: &str) -> Option<&NodeCidrs> {
        self.nodes.iter().find(|n| n.node == name)
    }

    /// A readable table (for `portway plan -o wide`): Nodes, then ClusterCIDRs.
    pub fn table(&self) -> String {
        let node_rows: Vec<[String; 5]> = self
            .nodes
            .iter()
            .map(|n| {
                [
                    n.node.clone(),
                    n.state.as_str().to_owned(),
                    n.cluster_cidr.clone().unwrap_or_else(|| "-".into()),
                    if n.pod_cidrs.is_empty() {
                        "-".into()
                    } else {
                        n.pod_cidrs.join(",")
                    },
                    n.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let cidr_rows: Vec<[String; 5]> = self
            .cluster_cidrs
            .iter()
            .map(|c| {
                let usage = |u: &Option<FamilyUsage>| {
                    u.as_ref()
                        .map_or("-".into(), |u| format!("{}/{}", u.allocated, u.capacity))
                };
                let cond = |t: &str| {
                    c.conditions
                        .iter()
                        .find(|x| x.type_ == t)
                        .map_or("-".into(), |x| x.status.clone())
                };
                use portway_crds::condition::types;
                [
                    c.name.clone(),
                    usage(&c.ipv4),
                    usage(&c.ipv6),
                    cond(types::READY),
                    format!("{}/{}", cond(types::NEARLY_FULL), cond(types::EXHAUSTED)),
                ]
            })
            .collect();
        let mut out = render(
            ["NODE", "STATE", "CLUSTERCIDR", "POD CIDRS", "REASON"],
            &node_rows,
        );
        out.push('\n');
        out.push_str(&render(
            [
                "CLUSTERCIDR",
                "IPV4 USED/CAP",
                "IPV6 USED/CAP",
                "READY",
                "NEARLYFULL/EXHAUSTED",
            ],
            &cidr_rows,
        ));
        out
    }
}

fn render(header: [&str; 5], rows: &[[String; 5]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 5]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}   ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for r in rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    out
}
