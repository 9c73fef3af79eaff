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

/// A Node's name and one of its pod CIDRs.
pub type NodeCidr<'a> = (&'a str, ipnet::IpNet);

impl CidrPlan {
    /// Two Nodes whose pod CIDRs overlap, where at least one of the two was allocated by this
    /// plan (overlaps between CIDRs Nodes already had are reported, not made). A brute-force
    /// check, independent of the allocator, for tests and fuzzing: `None` is the invariant.
    pub fn new_overlap(&self) -> Option<(NodeCidr<'_>, NodeCidr<'_>)> {
        let blocks: Vec<(&str, ipnet::IpNet, bool)> = self
            .nodes
            .iter()
            .flat_map(|n| {
                n.pod_cidrs.iter().filter_map(move |c| {
                    Some((
                        n.node.as_str(),
                        c.parse::<ipnet::IpNet>().ok()?,
                        n.state == NodeCidrState::Allocated,
                    ))
                })
            })
            .collect();
        for (i, (n1, b1, new1)) in blocks.iter().enumerate() {
            for (n2, b2, new2) in &blocks[i + 1..] {
                if (*new1 || *new2)
                    && n1 != n2
                    && (b1.contains(&b2.network()) || b2.contains(&b1.network()))
                {
                    return Some(((*n1, *b1), (*n2, *b2)));
                }
            }
        }
        None
    }
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
    pub fn as_str(self) -> &'static str {
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
    if nodes.iter().any(|n| name_of(n).is_empty()) {
        return Err(CidrPlanError::Unnamed("Node"));
    }
    // Name order, as the controller processes them; a sorted Vec (not a map) keeps this linear
    // apart from the sort. What the passes below need of each Node is read in this one pass over
    // the input: at tens of thousands of Nodes the objects no longer fit in the CPU's caches, and
    // every further pass over them would fetch them from memory again.
    let mut order: Vec<(&str, &Node, bool)> = nodes
        .iter()
        .map(|n| (name_of(n), n, has_pod_cidrs(n)))
        .collect();
    order.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if let Some(w) = order.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(CidrPlanError::DuplicateNode(w[0].0.to_owned()));
    }

    let mut alloc = Allocator::new(cidrs);
    // First every Node that has CIDRs: they are adopted before anything is handed out.
    let mut adopted: Vec<NodeCidrs> = Vec::new();
    for &(_, node, has_cidrs) in &order {
        if !has_cidrs {
            continue;
        }
        let f = NodeFacts::from_node(node);
        let report = alloc.adopt(&f);
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
        adopted.push(NodeCidrs {
            cluster_cidr: record.and_then(|r| r.owner()).map(|o| o.to_string()),
            node: f.name,
            state,
            pod_cidrs: f.pod_cidrs,
            reason: (!problems.is_empty()).then(|| problems.join("; ")),
        });
    }
    // Then the others, in name order; the output interleaves both in name order.
    let mut adopted = adopted.into_iter();
    let mut out: Vec<NodeCidrs> = Vec::with_capacity(order.len());
    let no_labels = BTreeMap::new();
    let mut waiting: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for &(name, node, has_cidrs) in &order {
        if has_cidrs {
            out.extend(adopted.next());
            continue;
        }
        let waits = |reason: String| NodeCidrs {
            node: name.to_owned(),
            state: NodeCidrState::Waiting,
            pod_cidrs: Vec::new(),
            cluster_cidr: None,
            reason: Some(reason),
        };
        if node.metadata.deletion_timestamp.is_some() {
            out.push(waits(
                "the Node is being deleted; nothing is allocated to it".into(),
            ));
            continue;
        }
        let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
        out.push(
            match alloc.allocate(name, labels, node.metadata.uid.as_deref()) {
                Ok(a) => NodeCidrs {
                    node: name.to_owned(),
                    state: NodeCidrState::Allocated,
                    pod_cidrs: a.blocks.iter().map(ToString::to_string).collect(),
                    cluster_cidr: Some(a.cluster_cidr.to_string()),
                    reason: None,
                },
                Err(why) => {
                    record_waiting(&mut waiting, name, &why);
                    waits(why.to_string())
                }
            },
        );
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
        nodes: out,
        cluster_cidrs,
    })
}

fn name_of(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or_default()
}

fn has_pod_cidrs(node: &Node) -> bool {
    node.spec.as_ref().is_some_and(|s| {
        s.pod_cidrs.as_ref().is_some_and(|c| !c.is_empty())
            || s.pod_cidr.as_ref().is_some_and(|c| !c.is_empty())
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
