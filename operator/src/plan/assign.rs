//! The global half of the core: which Services Portway serves, the pool of each, the pool's
//! Nodes, and the Nodes each Service can use once earlier Services' ports are claimed.
//!
//! Port claims are deterministic: Services are taken oldest first (creationTimestamp, then
//! namespace/name); a Service claims its (protocol, port) pairs on every eligible Node where none
//! of them is held yet. A Node where any of its ports is held is *blocked* for it (its agent pod
//! could not start there: a pod needs all its hostPorts). A Service whose eligible Nodes are all
//! blocked is in `PortConflict` and gets no DaemonSet; a partly blocked one gets a DaemonSet whose
//! node affinity leaves the blocked Nodes out, so the older Service keeps them even while its own
//! pods restart. Reserved host ports (`--reserved-host-ports`: kubelet's, the operator's own on
//! the host network) are held on every Node before any Service claims anything.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::jiff::Timestamp;
use portway_crds::names as n;
use portway_crds::{LoadBalancerPool, Protocol};

use super::validate::{self, Responsibility, ServiceShape};
use super::{Config, Key, Observed, names, reserved};

/// Nodes with this label are never part of a pool (Kubernetes' well-known label, honoured by
/// the cloud service controller too).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// A set of Nodes, as a bitset over [`Assignment::nodes`] (cheap for 1000s of Nodes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeSet {
    words: Vec<u64>,
}

impl NodeSet {
    pub fn empty(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
        }
    }

    pub fn insert(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    pub fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// `self ∩ other`.
    pub fn and(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            words: self
                .words
                .iter()
                .zip(other.words.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a & b)
                .collect(),
        }
    }

    /// `self ∖ other`.
    pub fn minus(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            words: self
                .words
                .iter()
                .zip(other.words.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a & !b)
                .collect(),
        }
    }

    /// `self ∪= other`.
    pub fn union_with(&mut self, other: &NodeSet) {
        for (a, b) in self.words.iter_mut().zip(other.words.iter()) {
            *a |= b;
        }
    }

    /// Indices, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, w)| {
            let w = *w;
            (0..64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| wi * 64 + b)
        })
    }
}

/// A Node as the core sees it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    /// (`NodeAddress.type`, address) for parseable IP addresses, in the Node's order.
    pub addresses: Vec<(String, IpAddr)>,
    /// The Node's `Ready` condition is True (or the Node reports no conditions at all, as in
    /// YAML given to `portway plan`). A NotReady node is never published: its agent cannot
    /// withdraw a stale `Forwarding=True`.
    pub ready: bool,
    pub node: Arc<Node>,
}

/// A pool and its Nodes.
#[derive(Clone, Debug)]
pub struct PoolInfo {
    pub name: String,
    pub pool: Arc<LoadBalancerPool>,
    pub nodes: NodeSet,
}

/// Why a port could not be claimed on some eligible Nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortBlock {
    pub protocol: Protocol,
    pub port: i32,
    /// Services holding it on at least one eligible Node.
    pub holders: BTreeSet<Key>,
    /// What holds it on every Node (`--reserved-host-ports`), when it is reserved.
    pub reserved_by: Option<String>,
    /// Eligible Nodes where it is held.
    pub nodes_blocked: usize,
}

/// Where a Service landed.
#[derive(Clone, Debug)]
pub enum Placement {
    /// Served as written is impossible: the message says why.
    Invalid(String),
    /// No pool: the annotated one is missing (`annotated`), or none matches.
    NoPool { annotated: Option<String> },
    /// A pool was chosen.
    Placed(Placed),
    /// Not a Portway Service any more (type/class changed or deleted) but the finalizer is
    /// still on it: clean up, then remove the finalizer.
    Released,
}

/// A Service with a pool.
#[derive(Clone, Debug)]
pub struct Placed {
    pub pool: String,
    /// Chosen by the `portway.dev/pool` annotation (else by selectors).
    pub annotated: bool,
    pub shape: ServiceShape,
    /// The pool's Nodes.
    pub eligible: NodeSet,
    /// Eligible Nodes where none of its ports is held by an earlier Service.
    pub usable: NodeSet,
    /// Ports held elsewhere, when any.
    pub blocks: Vec<PortBlock>,
}

impl Placed {
    /// All eligible Nodes are blocked by other Services' ports.
    pub fn port_conflict(&self) -> bool {
        !self.eligible.is_empty() && self.usable.is_empty()
    }
}

/// One Service's assignment.
#[derive(Clone, Debug)]
pub struct ServiceAssignment {
    pub key: Key,
    pub service: Arc<Service>,
    pub placement: Placement,
    /// Portway's finalizer is on the Service now.
    pub has_finalizer: bool,
    /// Name its DaemonSet has (or would have).
    pub daemonset_name: String,
}

impl ServiceAssignment {
    /// Placed in a pool (a ServiceLoadBalancer exists for it).
    pub fn is_placed(&self) -> bool {
        matches!(self.placement, Placement::Placed(_))
    }

    /// Placed with at least one usable Node (a DaemonSet exists for it).
    pub fn wants_daemonset(&self) -> bool {
        matches!(&self.placement, Placement::Placed(p) if !p.usable.is_empty())
    }
}

/// The global assignment.
#[derive(Clone, Debug, Default)]
pub struct Assignment {
    /// Nodes sorted by name; [`NodeSet`]s index into this.
    pub nodes: Vec<NodeInfo>,
    pub node_index: HashMap<String, usize>,
    /// Nodes whose `Ready` condition is True (see [`NodeInfo::ready`]).
    pub ready: NodeSet,
    pub pools: BTreeMap<String, PoolInfo>,
    /// Served Services and Services to clean up, by key.
    pub services: BTreeMap<Key, ServiceAssignment>,
    /// LoadBalancer Services of another class.
    pub ignored: Vec<(Key, String)>,
}

impl Assignment {
    /// Node names of a set, ascending.
    pub fn node_names(&self, set: &NodeSet) -> Vec<String> {
        set.iter()
            .filter_map(|i| self.nodes.get(i).map(|n| n.name.clone()))
            .collect()
    }
}

fn node_info(node: &Arc<Node>) -> Option<NodeInfo> {
    let name = node.metadata.name.clone().filter(|n| !n.is_empty())?;
    if node.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| {
            addrs
                .iter()
                .filter_map(|a| Some((a.type_.clone(), a.address.trim().parse().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .filter(|c| !c.is_empty())
        .is_none_or(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    Some(NodeInfo {
        name,
        addresses,
        ready,
        node: node.clone(),
    })
}

fn has_finalizer(svc: &Service) -> bool {
    svc.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == n::SERVICE_FINALIZER))
}

/// Age order of Services: oldest first; Services without a creationTimestamp (YAML input) come
/// after all others; ties by namespace/name.
fn age_key(svc: &Service, key: &Key) -> (Timestamp, Key) {
    let ts = svc
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::MAX);
    (ts, key.clone())
}

/// Computes the global assignment.
pub fn assign(observed: &Observed, config: &Config) -> Assignment {
    let mut out = Assignment::default();

    let mut nodes: Vec<NodeInfo> = observed.nodes.iter().filter_map(node_info).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes.dedup_by(|a, b| a.name == b.name);
    out.node_index = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.clone(), i))
        .collect();
    out.ready = NodeSet::empty(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        if n.ready {
            out.ready.insert(i);
        }
    }
    out.nodes = nodes;
    let empty_labels = BTreeMap::new();

    for pool in &observed.pools {
        let Some(name) = pool.metadata.name.clone().filter(|n| !n.is_empty()) else {
            continue;
        };
        if pool.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let mut set = NodeSet::empty(out.nodes.len());
        for (i, node) in out.nodes.iter().enumerate() {
            let labels = node.node.metadata.labels.as_ref().unwrap_or(&empty_labels);
            // The well-known opt-out of external load balancers (as the cloud service controller).
            if labels.contains_key(EXCLUDE_LABEL) {
                continue;
            }
            if pool.spec.node_selector.matches(labels) {
                set.insert(i);
            }
        }
        out.pools.insert(
            name.clone(),
            PoolInfo {
                name,
                pool: pool.clone(),
                nodes: set,
            },
        );
    }
    // Pools that select Services automatically, best first.
    let mut auto: Vec<&PoolInfo> = out
        .pools
        .values()
        .filter(|p| p.pool.spec.auto_assign)
        .collect();
    auto.sort_by(|a, b| {
        b.pool
            .spec
            .priority
            .cmp(&a.pool.spec.priority)
            .then_with(|| a.name.cmp(&b.name))
    });

    let ns_labels: HashMap<&str, &BTreeMap<String, String>> = observed
        .namespaces
        .iter()
        .filter_map(|ns| {
            Some((
                ns.metadata.name.as_deref()?,
                ns.metadata.labels.as_ref().unwrap_or(&empty_labels),
            ))
        })
        .collect();

    // Classify and place every Service (claims come after, in age order).
    let mut services: Vec<ServiceAssignment> = Vec::new();
    let mut seen = BTreeSet::new();
    for svc in &observed.services {
        let key = Key::of(&svc.metadata);
        if key.name.is_empty() || !seen.insert(key.clone()) {
            continue;
        }
        let finalizer = has_finalizer(svc);
        let placement = match validate::responsibility(svc, &config.load_balancer_class) {
            Responsibility::OtherClass(class) => {
                if finalizer {
                    Placement::Released
                } else {
                    out.ignored
                        .push((key, format!("loadBalancerClass {class:?} is not Portway's")));
                    continue;
                }
            }
            Responsibility::NotLoadBalancer => {
                if finalizer {
                    Placement::Released
                } else {
                    continue;
                }
            }
            Responsibility::Serve => match validate::shape(svc) {
                Err(message) => Placement::Invalid(message),
                Ok(shape) => {
                    let default_ns_labels;
                    let labels_of_ns = match ns_labels.get(key.namespace.as_str()) {
                        Some(l) => *l,
                        None => {
                            default_ns_labels = BTreeMap::from([(
                                "kubernetes.io/metadata.name".to_owned(),
                                key.namespace.clone(),
                            )]);
                            &default_ns_labels
                        }
                    };
                    choose_pool(svc, labels_of_ns, &out.pools, &auto, shape)
                }
            },
        };
        services.push(ServiceAssignment {
            daemonset_name: names::daemonset_name(&key),
            key,
            service: svc.clone(),
            placement,
            has_finalizer: finalizer,
        });
    }
    out.ignored.sort();

    // Port claims, oldest Service first.
    services.sort_by_cached_key(|a| age_key(&a.service, &a.key));
    let mut claims: HashMap<(Protocol, i32), Vec<(Key, NodeSet)>> = HashMap::new();
    let node_count = out.nodes.len();
    for a in &mut services {
        let Placement::Placed(p) = &mut a.placement else {
            continue;
        };
        let mut blocked = NodeSet::empty(node_count);
        for (protocol, port) in p.shape.claims() {
            if let Some(r) = reserved::find(&config.reserved_host_ports, protocol, port) {
                // Held on every Node by something that is not a Service.
                p.blocks.push(PortBlock {
                    protocol,
                    port,
                    holders: BTreeSet::new(),
                    reserved_by: Some(r.owner.clone()),
                    nodes_blocked: p.eligible.len(),
                });
                blocked.union_with(&p.eligible);
                continue;
            }
            let Some(holders) = claims.get(&(protocol, port)) else {
                continue;
            };
            let mut block = PortBlock {
                protocol,
                port,
                holders: BTreeSet::new(),
                reserved_by: None,
                nodes_blocked: 0,
            };
            let mut here = NodeSet::empty(node_count);
            for (holder, held) in holders {
                let overlap = held.and(&p.eligible);
                if !overlap.is_empty() {
                    block.holders.insert(holder.clone());
                    here.union_with(&overlap);
                }
            }
            if !block.holders.is_empty() {
                block.nodes_blocked = here.len();
                blocked.union_with(&here);
                p.blocks.push(block);
            }
        }
        p.usable = p.eligible.minus(&blocked);
        if !p.usable.is_empty() {
            for claim in p.shape.claims() {
                claims
                    .entry(claim)
                    .or_default()
                    .push((a.key.clone(), p.usable.clone()));
            }
        }
    }
    out.services = services.into_iter().map(|a| (a.key.clone(), a)).collect();
    out
}

fn choose_pool(
    svc: &Service,
    ns_labels: &BTreeMap<String, String>,
    pools: &BTreeMap<String, PoolInfo>,
    auto: &[&PoolInfo],
    shape: ServiceShape,
) -> Placement {
    let placed = |pool: &PoolInfo, annotated: bool, shape: ServiceShape| {
        Placement::Placed(Placed {
            pool: pool.name.clone(),
            annotated,
            shape,
            eligible: pool.nodes.clone(),
            usable: pool.nodes.clone(),
            blocks: Vec::new(),
        })
    };
    let annotation = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(n::POOL_ANNOTATION))
        .map(|s| s.trim())
        .filter(|s| !s.is_empty());
    if let Some(wanted) = annotation {
        return match pools.get(wanted) {
            Some(pool) => placed(pool, true, shape),
            None => Placement::NoPool {
                annotated: Some(wanted.to_owned()),
            },
        };
    }
    let empty = BTreeMap::new();
    let svc_labels = svc.metadata.labels.as_ref().unwrap_or(&empty);
    for pool in auto {
        let spec = &pool.pool.spec;
        let svc_ok = spec
            .service_selector
            .as_ref()
            .is_none_or(|s| s.matches(svc_labels));
        let ns_ok = spec
            .namespace_selector
            .as_ref()
            .is_none_or(|s| s.matches(ns_labels));
        if svc_ok && ns_ok {
            return placed(pool, false, shape);
        }
    }
    Placement::NoPool { annotated: None }
}
