//! K3s ServiceLB's node choice as `LoadBalancerPool`s and `portway.dev/pool` annotations.
//!
//! [`k3s_serving_nodes`] is K3s' rule, written down once; [`convert`] builds pools whose selectors
//! and priorities make the operator choose the same nodes, for the Services that exist now and for
//! ones labelled the same way later:
//! - `k3s-servicelb` (priority 10): every node, or every `enablelb=true` node once any node
//!   carries the `enablelb` label;
//! - `k3s-lbpool-<x>` (priority 20, only once any node carries `enablelb`): nodes labelled
//!   `enablelb=true` and `lbpool=<x>`, serving Services labelled `lbpool=<x>`.
//!
//! Both priorities are above the Helm chart's default pool (-1000), so installing the chart with
//! its default pool on changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::ObjectMeta;
use portway_crds::names::{POOL_ANNOTATION, k3s};
use portway_crds::pool::default_address_types;
use portway_crds::{
    DataplaneMode, LabelSelector, LoadBalancerPool, LoadBalancerPoolSpec, NodeAddressType,
};

/// Pool serving the Services without an `lbpool` label (or every Service, without `enablelb`).
pub const DEFAULT_POOL: &str = "k3s-servicelb";
/// Prefix of the pool of an `lbpool` label value.
pub const LBPOOL_PREFIX: &str = "k3s-lbpool-";
/// Priority of [`DEFAULT_POOL`].
pub const DEFAULT_POOL_PRIORITY: i32 = 10;
/// Priority of the `lbpool` pools: above [`DEFAULT_POOL`], which matches their Services too.
pub const LBPOOL_PRIORITY: i32 = 20;
/// Label on every pool `portway migrate` writes, so they can be listed and reviewed.
pub const CREATED_BY_LABEL: &str = "app.kubernetes.io/created-by";
/// Value of [`CREATED_BY_LABEL`].
pub const CREATED_BY: &str = "portway-migrate";
/// Longest pool name: pool names become the `portway.dev/pool` label of agent DaemonSets, and
/// label values are at most 63 characters.
pub const MAX_POOL_NAME: usize = 63;
/// Service annotation with which K3s picks the agents' PriorityClass.
pub const K3S_PRIORITY_ANNOTATION: &str = "svccontroller.k3s.cattle.io/priorityclassname";

/// How the K3s cluster chose its serving nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum K3sMode {
    /// No node carries the `enablelb` label: every node serves, `lbpool` labels are ignored.
    #[default]
    AllNodes,
    /// Some node carries the `enablelb` label: only `enablelb=true` nodes serve, narrowed by
    /// `lbpool`.
    EnableLbLabels,
}

/// The `portway.dev/pool` annotation one Service gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePin {
    pub namespace: String,
    pub name: String,
    /// Pool the Service is pinned to.
    pub pool: String,
    /// Nodes K3s serves the Service from today (the pool's nodes, for the reader).
    pub k3s_nodes: Vec<String>,
}

/// Result of [`convert`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Converted {
    pub mode: K3sMode,
    pub pools: Vec<LoadBalancerPool>,
    pub pins: Vec<ServicePin>,
    pub notes: Vec<String>,
}

fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// K3s' `nodeHasDaemonSetLabel`: the `enablelb` label on any node, whatever its value.
pub fn mode(nodes: &[Node]) -> K3sMode {
    if nodes.iter().any(|n| {
        n.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(k3s::ENABLE_LB_LABEL))
    }) {
        K3sMode::EnableLbLabels
    } else {
        K3sMode::AllNodes
    }
}

/// The Service's non-empty `lbpool` label (K3s ignores an empty one).
pub fn service_lbpool(service: &Service) -> Option<&str> {
    service
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(k3s::LB_POOL_LABEL))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// True for Services K3s ServiceLB serves: `type: LoadBalancer` without a `loadBalancerClass`.
pub fn is_k3s_load_balancer(service: &Service) -> bool {
    service.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none()
    })
}

/// K3s' node selector for `service`'s DaemonSet (`newDaemonSet`): empty (every node) in
/// [`K3sMode::AllNodes`], else `enablelb=true` plus `lbpool=<x>` when the Service has one.
pub fn k3s_node_selector(mode: K3sMode, service: &Service) -> BTreeMap<String, String> {
    let mut selector = BTreeMap::new();
    if mode == K3sMode::EnableLbLabels {
        selector.insert(k3s::ENABLE_LB_LABEL.to_owned(), "true".to_owned());
        if let Some(pool) = service_lbpool(service) {
            selector.insert(k3s::LB_POOL_LABEL.to_owned(), pool.to_owned());
        }
    }
    selector
}

/// Names of the nodes K3s runs `service`'s load-balancer pods on, sorted.
pub fn k3s_serving_nodes(nodes: &[Node], service: &Service) -> Vec<String> {
    let selector = k3s_node_selector(mode(nodes), service);
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|n| {
            let labels = labels_of(&n.metadata);
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .map(|n| name_of(&n.metadata).to_owned())
        .collect();
    names.sort();
    names
}

/// 32-bit FNV-1a, hex: a short stable suffix that keeps sanitized names apart.
fn fnv1a_hex(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// Pool name of an `lbpool` label value: `k3s-lbpool-<value>` when that is a valid name of at
/// most [`MAX_POOL_NAME`] characters, else a lowercased, shortened form with a hash of the value,
/// so two values never share a pool.
pub fn pool_name_for(lbpool: &str) -> String {
    let plain = format!("{LBPOOL_PREFIX}{lbpool}");
    let valid = |s: &str| {
        s.len() <= MAX_POOL_NAME
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if valid(&plain) {
        return plain;
    }
    let hash = fnv1a_hex(lbpool);
    let mut stem: String = lbpool
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    let room = MAX_POOL_NAME - LBPOOL_PREFIX.len() - hash.len() - 1;
    stem.truncate(room);
    let stem = stem.trim_end_matches(['-', '.']);
    if stem.is_empty() {
        format!("{LBPOOL_PREFIX}{hash}")
    } else {
        format!("{LBPOOL_PREFIX}{stem}-{hash}")
    }
}

fn has_address(node: &Node, kind: NodeAddressType) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .is_some_and(|a| a.iter().any(|a| a.type_ == kind.as_str()))
}

/// K3s publishes only ExternalIPs as soon as any serving node has one (`podIPs`); Portway picks
/// the address type per node. They agree unless the pool mixes nodes with and without an
/// ExternalIP; then only `ExternalIP` reproduces K3s.
fn address_types(pool: &str, members: &[&Node], notes: &mut Vec<String>) -> Vec<NodeAddressType> {
    let external = members
        .iter()
        .filter(|n| has_address(n, NodeAddressType::ExternalIP))
        .count();
    if external > 0 && external < members.len() {
        notes.push(format!(
            "pool {pool}: {external} of {} nodes have an ExternalIP; K3s then publishes ExternalIPs only, so the pool's addressTypes is [ExternalIP] (the nodes without one serve but are not advertised)",
            members.len()
        ));
        vec![NodeAddressType::ExternalIP]
    } else {
        default_address_types()
    }
}

fn pool(
    name: &str,
    node_labels: BTreeMap<String, String>,
    service_labels: Option<BTreeMap<String, String>>,
    priority: i32,
    nodes: &[Node],
    notes: &mut Vec<String>,
) -> LoadBalancerPool {
    let node_selector = LabelSelector {
        match_labels: node_labels,
        match_expressions: Vec::new(),
    };
    let members: Vec<&Node> = nodes
        .iter()
        .filter(|n| node_selector.matches(&labels_of(&n.metadata)))
        .collect();
    let address_types = address_types(name, &members, notes);
    let mut p = LoadBalancerPool::new(
        name,
        LoadBalancerPoolSpec {
            node_selector,
            service_selector: service_labels.map(|match_labels| LabelSelector {
                match_labels,
                match_expressions: Vec::new(),
            }),
            namespace_selector: None,
            auto_assign: true,
            priority,
            address_types,
            dataplane: DataplaneMode::Pod,
            tolerations: None,
        },
    );
    p.metadata.labels = Some(BTreeMap::from([(
        CREATED_BY_LABEL.to_owned(),
        CREATED_BY.to_owned(),
    )]));
    p
}

fn sorted_services(services: &[Service]) -> Vec<&Service> {
    let mut v: Vec<&Service> = services.iter().collect();
    v.sort_by(|a, b| {
        (a.metadata.namespace.as_deref(), name_of(&a.metadata))
            .cmp(&(b.metadata.namespace.as_deref(), name_of(&b.metadata)))
    });
    v
}

fn key(service: &Service) -> String {
    format!(
        "{}/{}",
        service.metadata.namespace.as_deref().unwrap_or("default"),
        name_of(&service.metadata)
    )
}

/// Converts K3s ServiceLB's labels on `nodes` and `services` into pools and pins.
pub fn convert(nodes: &[Node], services: &[Service]) -> Converted {
    let mode = mode(nodes);
    let mut notes = Vec::new();
    let services = sorted_services(services);
    let served: Vec<&Service> = services
        .iter()
        .copied()
        .filter(|s| is_k3s_load_balancer(s))
        .collect();
    for s in &services {
        let is_lb = s
            .spec
            .as_ref()
            .is_some_and(|sp| sp.type_.as_deref() == Some("LoadBalancer"));
        if let (true, Some(class)) = (
            is_lb,
            s.spec
                .as_ref()
                .and_then(|sp| sp.load_balancer_class.as_deref()),
        ) {
            notes.push(format!(
                "Service {}: loadBalancerClass {class:?} is not K3s ServiceLB's; left alone",
                key(s)
            ));
        }
    }

    let mut pools = Vec::new();
    match mode {
        K3sMode::AllNodes => {
            notes.push(format!(
                "no node has the {} label: K3s serves every LoadBalancer Service from every node; so does pool {DEFAULT_POOL}",
                k3s::ENABLE_LB_LABEL
            ));
            for s in &served {
                if let Some(v) = service_lbpool(s) {
                    notes.push(format!(
                        "Service {}: label {}={v} has no effect in K3s while no node has the {} label; it is served by {DEFAULT_POOL}",
                        key(s),
                        k3s::LB_POOL_LABEL,
                        k3s::ENABLE_LB_LABEL
                    ));
                }
            }
            pools.push(pool(
                DEFAULT_POOL,
                BTreeMap::new(),
                None,
                DEFAULT_POOL_PRIORITY,
                nodes,
                &mut notes,
            ));
        }
        K3sMode::EnableLbLabels => {
            let enabled = BTreeMap::from([(k3s::ENABLE_LB_LABEL.to_owned(), "true".to_owned())]);
            notes.push(format!(
                "nodes carry the {} label: only nodes with {}=true serve (pool {DEFAULT_POOL}), and Services labelled {}=<x> only from those nodes labelled {}=<x> too (pools {LBPOOL_PREFIX}<x>)",
                k3s::ENABLE_LB_LABEL,
                k3s::ENABLE_LB_LABEL,
                k3s::LB_POOL_LABEL,
                k3s::LB_POOL_LABEL
            ));
            pools.push(pool(
                DEFAULT_POOL,
                enabled.clone(),
                None,
                DEFAULT_POOL_PRIORITY,
                nodes,
                &mut notes,
            ));
            let mut values: BTreeSet<String> = served
                .iter()
                .filter_map(|s| service_lbpool(s))
                .map(str::to_owned)
                .collect();
            values.extend(nodes.iter().filter_map(|n| {
                labels_of(&n.metadata)
                    .get(k3s::LB_POOL_LABEL)
                    .filter(|v| !v.is_empty())
                    .cloned()
            }));
            for v in values {
                let mut node_labels = enabled.clone();
                node_labels.insert(k3s::LB_POOL_LABEL.to_owned(), v.clone());
                let service_labels = BTreeMap::from([(k3s::LB_POOL_LABEL.to_owned(), v.clone())]);
                pools.push(pool(
                    &pool_name_for(&v),
                    node_labels,
                    Some(service_labels),
                    LBPOOL_PRIORITY,
                    nodes,
                    &mut notes,
                ));
            }
        }
    }
    pools.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut pins = Vec::new();
    for s in served {
        let pool = match (mode, service_lbpool(s)) {
            (K3sMode::EnableLbLabels, Some(v)) => pool_name_for(v),
            _ => DEFAULT_POOL.to_owned(),
        };
        let k3s_nodes = k3s_serving_nodes(nodes, s);
        if k3s_nodes.is_empty() {
            notes.push(format!(
                "Service {}: K3s serves it from no node today (no node matches {:?}); pool {pool} has no nodes either and Portway reports NoNodes on it",
                key(s),
                k3s_node_selector(mode, s)
            ));
        }
        let annotations = s.metadata.annotations.clone().unwrap_or_default();
        if let Some(priority_class) = annotations.get(K3S_PRIORITY_ANNOTATION) {
            notes.push(format!(
                "Service {}: {K3S_PRIORITY_ANNOTATION}={priority_class} has no Portway counterpart; Portway's agents run as system-node-critical",
                key(s)
            ));
        }
        match annotations.get(POOL_ANNOTATION) {
            Some(existing) if *existing == pool => {}
            Some(existing) => notes.push(format!(
                "Service {}: already annotated {POOL_ANNOTATION}={existing}; kept (K3s' labels would give {pool})",
                key(s)
            )),
            None => pins.push(ServicePin {
                namespace: s
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned()),
                name: name_of(&s.metadata).to_owned(),
                pool,
                k3s_nodes,
            }),
        }
    }
    Converted {
        mode,
        pools,
        pins,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_are_valid_and_distinct() {
        assert_eq!(pool_name_for("edge"), "k3s-lbpool-edge");
        assert_eq!(pool_name_for("dc.a-1"), "k3s-lbpool-dc.a-1");
        let upper = pool_name_for("Edge");
        let lower = pool_name_for("edge");
        assert_ne!(upper, lower);
        assert!(upper.starts_with("k3s-lbpool-edge-"), "{upper}");
        let underscored = pool_name_for("plant_7");
        assert!(
            underscored.starts_with("k3s-lbpool-plant-7-"),
            "{underscored}"
        );
        let long = pool_name_for(&"a".repeat(63));
        assert!(long.len() <= MAX_POOL_NAME, "{long}");
        assert_ne!(long, pool_name_for(&"a".repeat(62)));
    }
}
