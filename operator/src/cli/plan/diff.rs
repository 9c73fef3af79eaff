//! `portway plan --diff DIR_A DIR_B`: what changes from the plan of one tree to the plan of
//! another, the question a reviewer of a pull request asks: which Services gain or lose nodes or
//! ingress addresses, change state or pool; which node-agent DaemonSets are added, removed or
//! changed (and where); which pools' node and Service counts change; which Nodes' pod CIDRs move.
//! Text (`-o yaml`/`-o wide`) or JSON (`-o json`, schema `docs/schemas/plan-diff.schema.json`).
//! Both plans use [`super::plan_time`], so only the input makes a difference.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use portway_crds::condition::{self, types};
use serde::Serialize;
use serde_json::Value;

use super::json::to_json;
use super::{Args, Format, Plan, Problem, fail, finish, plan_time, ready_reason};
use crate::cidr::NodeCidrs;
use crate::input::{Skipped, read_paths};

/// `format` of the diff document.
pub const DIFF_FORMAT: &str = "portway.dev/plan-diff/v1";

/// Changed fields of a DaemonSet listed in the text output; JSON lists all.
const MAX_FIELDS_SHOWN: usize = 6;

/// What changed from one plan to another.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanDiff {
    /// [`DIFF_FORMAT`].
    pub format: &'static str,
    /// DIR_A as given.
    pub from: String,
    /// DIR_B as given.
    pub to: String,
    /// Portway's Services whose plan differs, by namespace/name.
    pub services: Vec<ServiceChange>,
    /// Node-agent DaemonSets added, removed or changed, by namespace/name.
    pub daemon_sets: Vec<DaemonSetChange>,
    /// Pools whose status counts or readiness differ, by name.
    pub pools: Vec<PoolChange>,
    /// Nodes whose pod CIDRs (or their ClusterCIDR or state) differ, by name.
    pub nodes: Vec<NodeChange>,
    /// Documents of DIR_B not used.
    pub rejected: Vec<Skipped>,
    /// What `--strict` fails on in DIR_B.
    pub problems: Vec<Problem>,
}

impl PlanDiff {
    /// Number of changed objects.
    pub fn changes(&self) -> usize {
        self.services.len() + self.daemon_sets.len() + self.pools.len() + self.nodes.len()
    }
}

/// How an object differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

impl Change {
    fn sign(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Changed => '~',
        }
    }
}

/// One side of a Service's plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSide {
    pub state: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Nodes its agents run on.
    pub nodes: Vec<String>,
    /// Published addresses (ip, else hostname).
    pub ingress: Vec<String>,
}

/// A Service whose plan differs.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceChange {
    pub namespace: String,
    pub name: String,
    pub change: Change,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<ServiceSide>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<ServiceSide>,
    pub nodes_added: Vec<String>,
    pub nodes_removed: Vec<String>,
    pub ingress_added: Vec<String>,
    pub ingress_removed: Vec<String>,
}

/// A DaemonSet added, removed or changed.
#[derive(Debug, Serialize)]
pub struct DaemonSetChange {
    pub namespace: String,
    pub name: String,
    pub change: Change,
    /// Paths of the fields that differ (`spec.template.spec.containers[0].image`), when changed.
    pub fields: Vec<String>,
}

/// One side of a pool's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolSide {
    pub nodes: i32,
    pub services: i32,
    /// Status of its `Ready` condition.
    pub ready: String,
}

/// A pool whose status differs.
#[derive(Debug, Serialize)]
pub struct PoolChange {
    pub name: String,
    pub change: Change,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<PoolSide>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<PoolSide>,
}

/// One side of a Node's pod CIDRs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeSide {
    pub state: String,
    #[serde(rename = "clusterCIDR", skip_serializing_if = "Option::is_none")]
    pub cluster_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A Node whose pod CIDRs differ.
#[derive(Debug, Serialize)]
pub struct NodeChange {
    pub node: String,
    pub change: Change,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<NodeSide>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<NodeSide>,
}

/// Pairs the entries of two sorted-or-not lists by key: (key, from, to) in key order.
fn pair<K: Ord, V>(
    from: impl IntoIterator<Item = (K, V)>,
    to: impl IntoIterator<Item = (K, V)>,
) -> Vec<(K, Option<V>, Option<V>)> {
    let mut map: BTreeMap<K, (Option<V>, Option<V>)> = BTreeMap::new();
    for (k, v) in from {
        map.entry(k).or_default().0 = Some(v);
    }
    for (k, v) in to {
        map.entry(k).or_default().1 = Some(v);
    }
    map.into_iter().map(|(k, (a, b))| (k, a, b)).collect()
}

/// Added, removed or changed; `None` when equal.
fn change_of<V: PartialEq>(from: &Option<V>, to: &Option<V>) -> Option<Change> {
    match (from, to) {
        (None, Some(_)) => Some(Change::Added),
        (Some(_), None) => Some(Change::Removed),
        (Some(a), Some(b)) if a != b => Some(Change::Changed),
        _ => None,
    }
}

/// `to ∖ from`, sorted.
fn minus(to: &[String], from: &[String]) -> Vec<String> {
    let from: BTreeSet<&String> = from.iter().collect();
    let out: BTreeSet<&String> = to.iter().filter(|x| !from.contains(x)).collect();
    out.into_iter().cloned().collect()
}

fn service_sides(plan: &Plan<'_>) -> Vec<((String, String), ServiceSide)> {
    plan.desired
        .services
        .iter()
        .map(|p| {
            let key = (p.service.namespace.clone(), p.service.name.clone());
            let side = ServiceSide {
                state: p.state.as_str().to_owned(),
                reason: ready_reason(p).0,
                pool: p.pool.clone(),
                nodes: plan.nodes.get(&p.service).cloned().unwrap_or_default(),
                ingress: p
                    .ingress
                    .iter()
                    .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                    .collect(),
            };
            (key, side)
        })
        .collect()
}

fn daemonsets(plan: &Plan<'_>) -> Vec<((String, String), Value)> {
    plan.desired
        .services
        .iter()
        .filter_map(|p| p.daemonset.as_ref())
        .filter_map(|ds| {
            let key = (
                ds.metadata.namespace.clone().unwrap_or_default(),
                ds.metadata.name.clone().unwrap_or_default(),
            );
            serde_json::to_value(ds).ok().map(|v| (key, v))
        })
        .collect()
}

fn pool_sides(plan: &Plan<'_>) -> Vec<(String, PoolSide)> {
    plan.desired
        .pools
        .iter()
        .map(|p| {
            let ready = condition::find(&p.status.conditions, types::READY)
                .map(|c| c.status.clone())
                .unwrap_or_default();
            (
                p.name.clone(),
                PoolSide {
                    nodes: p.status.nodes,
                    services: p.status.services,
                    ready,
                },
            )
        })
        .collect()
}

fn node_sides(plan: &Plan<'_>) -> Vec<(String, NodeSide)> {
    let nodes: &[NodeCidrs] = match &plan.cidrs {
        Ok(c) => &c.nodes,
        Err(_) => &[],
    };
    nodes
        .iter()
        .map(|n| {
            (
                n.node.clone(),
                NodeSide {
                    state: n.state.as_str().to_owned(),
                    cluster_cidr: n.cluster_cidr.clone(),
                    pod_cidrs: n.pod_cidrs.clone(),
                    reason: n.reason.clone(),
                },
            )
        })
        .collect()
}

/// Paths of the fields that differ between `a` and `b`, at `path`; an array whose length
/// changed is one path.
fn changed_paths(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    let child = |key: &str| {
        if key.contains(['.', '/']) {
            // A label or annotation key, as the API server writes map keys.
            format!("{path}[{key}]")
        } else if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => changed_paths(u, v, &child(key), out),
                    _ => out.push(child(key)),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                changed_paths(u, v, &format!("{path}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(if path.is_empty() {
            ".".to_owned()
        } else {
            path.to_owned()
        }),
    }
}

/// What changes from plan `a` (of `from`) to plan `b` (of `to`).
pub fn diff(a: &Plan<'_>, b: &Plan<'_>, from: &str, to: &str) -> PlanDiff {
    let services = pair(service_sides(a), service_sides(b))
        .into_iter()
        .filter_map(|((namespace, name), x, y)| {
            let change = change_of(&x, &y)?;
            let nodes = |s: &Option<ServiceSide>| s.as_ref().map(|s| s.nodes.clone());
            let ingress = |s: &Option<ServiceSide>| s.as_ref().map(|s| s.ingress.clone());
            let (nx, ny) = (nodes(&x).unwrap_or_default(), nodes(&y).unwrap_or_default());
            let (ix, iy) = (
                ingress(&x).unwrap_or_default(),
                ingress(&y).unwrap_or_default(),
            );
            Some(ServiceChange {
                namespace,
                name,
                change,
                nodes_added: minus(&ny, &nx),
                nodes_removed: minus(&nx, &ny),
                ingress_added: minus(&iy, &ix),
                ingress_removed: minus(&ix, &iy),
                from: x,
                to: y,
            })
        })
        .collect();
    let daemon_sets = pair(daemonsets(a), daemonsets(b))
        .into_iter()
        .filter_map(|((namespace, name), x, y)| {
            let change = change_of(&x, &y)?;
            let mut fields = Vec::new();
            if let (Some(x), Some(y)) = (&x, &y) {
                changed_paths(x, y, "", &mut fields);
            }
            Some(DaemonSetChange {
                namespace,
                name,
                change,
                fields,
            })
        })
        .collect();
    let pools = pair(pool_sides(a), pool_sides(b))
        .into_iter()
        .filter_map(|(name, x, y)| {
            Some(PoolChange {
                name,
                change: change_of(&x, &y)?,
                from: x,
                to: y,
            })
        })
        .collect();
    let nodes = pair(node_sides(a), node_sides(b))
        .into_iter()
        .filter_map(|(node, x, y)| {
            Some(NodeChange {
                node,
                change: change_of(&x, &y)?,
                from: x,
                to: y,
            })
        })
        .collect();
    PlanDiff {
        format: DIFF_FORMAT,
        from: from.to_owned(),
        to: to.to_owned(),
        services,
        daemon_sets,
        pools,
        nodes,
        rejected: b.rejected.iter().map(|&s| s.clone()).collect(),
        problems: b.problems(),
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

/// `+a +b -c`, or nothing when both are empty.
fn plus_minus(added: &[String], removed: &[String]) -> String {
    let plus = added.iter().map(|x| format!("+{x}"));
    let minus = removed.iter().map(|x| format!("-{x}"));
    plus.chain(minus).collect::<Vec<_>>().join(" ")
}

fn describe_service(s: &ServiceSide) -> String {
    format!(
        "{} ({}), pool {}, nodes {}, ingress {}",
        s.state,
        s.reason,
        s.pool.as_deref().unwrap_or("-"),
        list(&s.nodes),
        list(&s.ingress)
    )
}

fn describe_node(s: &NodeSide) -> String {
    let mut out = format!(
        "{} {}",
        list(&s.pod_cidrs),
        match &s.cluster_cidr {
            Some(c) => format!("({c}, {})", s.state),
            None => format!("({})", s.state),
        }
    );
    if let Some(r) = &s.reason {
        let _ = write!(out, ": {r}");
    }
    out
}

fn describe_pool(s: &PoolSide) -> String {
    format!(
        "nodes {}, services {}, ready {}",
        s.nodes, s.services, s.ready
    )
}

/// `a -> b` for two sides, `+ b` or `- a` for one.
fn arrow<T>(from: &Option<T>, to: &Option<T>, describe: impl Fn(&T) -> String) -> String {
    match (from, to) {
        (Some(a), Some(b)) => format!("{} -> {}", describe(a), describe(b)),
        (None, Some(b)) => describe(b),
        (Some(a), None) => format!("was {}", describe(a)),
        (None, None) => String::new(),
    }
}

/// The diff as text: a summary line, then one line per changed object (`+` added, `-` removed,
/// `~` changed), then DIR_B's rejected documents in `plan`'s `# skipped` form.
pub fn render_text(d: &PlanDiff) -> String {
    let mut out = String::new();
    let n = d.changes();
    let _ = writeln!(
        out,
        "# portway plan --diff {} {}: {}",
        d.from,
        d.to,
        match n {
            0 => "no changes".to_owned(),
            1 => "1 change".to_owned(),
            n => format!("{n} changes"),
        }
    );
    for s in &d.services {
        let what = match (s.change, &s.from, &s.to) {
            (Change::Changed, Some(a), Some(b)) => {
                let mut parts = Vec::new();
                if (&a.state, &a.reason) != (&b.state, &b.reason) {
                    parts.push(format!(
                        "state {} ({}) -> {} ({})",
                        a.state, a.reason, b.state, b.reason
                    ));
                }
                if a.pool != b.pool {
                    parts.push(format!(
                        "pool {} -> {}",
                        a.pool.as_deref().unwrap_or("-"),
                        b.pool.as_deref().unwrap_or("-")
                    ));
                }
                if !s.nodes_added.is_empty() || !s.nodes_removed.is_empty() {
                    parts.push(format!(
                        "nodes {}",
                        plus_minus(&s.nodes_added, &s.nodes_removed)
                    ));
                }
                if !s.ingress_added.is_empty() || !s.ingress_removed.is_empty() {
                    parts.push(format!(
                        "ingress {}",
                        plus_minus(&s.ingress_added, &s.ingress_removed)
                    ));
                }
                if parts.is_empty() {
                    // Same sets, another order.
                    parts.push(format!(
                        "ingress {} -> {}",
                        list(&a.ingress),
                        list(&b.ingress)
                    ));
                }
                parts.join("; ")
            }
            _ => arrow(&s.from, &s.to, describe_service),
        };
        let _ = writeln!(
            out,
            "{} Service {}/{}: {what}",
            s.change.sign(),
            s.namespace,
            s.name
        );
    }
    for ds in &d.daemon_sets {
        let _ = write!(
            out,
            "{} DaemonSet {}/{}",
            ds.change.sign(),
            ds.namespace,
            ds.name
        );
        if !ds.fields.is_empty() {
            let shown: Vec<&str> = ds
                .fields
                .iter()
                .take(MAX_FIELDS_SHOWN)
                .map(String::as_str)
                .collect();
            let _ = write!(out, ": {}", shown.join(", "));
            if ds.fields.len() > MAX_FIELDS_SHOWN {
                let _ = write!(out, " and {} more", ds.fields.len() - MAX_FIELDS_SHOWN);
            }
        }
        out.push('\n');
    }
    for p in &d.pools {
        let _ = writeln!(
            out,
            "{} LoadBalancerPool {}: {}",
            p.change.sign(),
            p.name,
            arrow(&p.from, &p.to, describe_pool)
        );
    }
    for n in &d.nodes {
        let _ = writeln!(
            out,
            "{} Node {}: pod CIDRs {}",
            n.change.sign(),
            n.node,
            arrow(&n.from, &n.to, describe_node)
        );
    }
    for r in &d.rejected {
        let _ = writeln!(out, "# skipped {} ({}): {}", r.object, r.source, r.reason);
    }
    out
}

/// Runs `portway plan [PATHS...] --diff DIR_A DIR_B`: PATHS are read on both sides.
pub fn main(args: &Args, from: &Path, to: &Path) -> ExitCode {
    let side = |tree: &Path| {
        let mut paths = vec![tree.to_owned()];
        paths.extend(args.paths.iter().cloned());
        read_paths(&paths)
    };
    let (set_a, set_b) = match (side(from), side(to)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return fail(&e.to_string()),
    };
    let a = Plan::new(&set_a, &args.servicelb, plan_time());
    let b = Plan::new(&set_b, &args.servicelb, plan_time());
    let d = diff(
        &a,
        &b,
        &from.display().to_string(),
        &to.display().to_string(),
    );
    let out = match args.output {
        Format::Json => to_json(&d),
        Format::Yaml | Format::Wide => render_text(&d),
    };
    finish(&out, args.strict, &d.problems)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn changed_paths_name_each_differing_leaf_and_resized_array() {
        let a = json!({"spec": {"image": "a", "ports": [1, 2], "env": [{"n": "x"}], "same": 1},
                       "metadata": {"labels": {"portway.dev/x": "1"}}});
        let b = json!({"spec": {"image": "b", "ports": [1], "env": [{"n": "y"}], "same": 1, "new": 0},
                       "metadata": {"labels": {"portway.dev/x": "2"}}});
        let mut out = Vec::new();
        changed_paths(&a, &b, "", &mut out);
        assert_eq!(
            out,
            [
                "metadata.labels[portway.dev/x]",
                "spec.env[0].n",
                "spec.image",
                "spec.new",
                "spec.ports"
            ]
        );
        let mut none = Vec::new();
        changed_paths(&a, &a, "", &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn pairs_are_matched_by_key_and_equal_ones_are_no_change() {
        let p = pair(vec![(1, "a"), (2, "b")], vec![(3, "c"), (2, "b"), (1, "z")]);
        let changes: Vec<_> = p.iter().map(|(k, x, y)| (*k, change_of(x, y))).collect();
        assert_eq!(
            changes,
            [
                (1, Some(Change::Changed)),
                (2, None),
                (3, Some(Change::Added))
            ]
        );
        assert_eq!(
            minus(&["a".into(), "b".into()], &["b".into()]),
            ["a".to_owned()]
        );
    }
}
