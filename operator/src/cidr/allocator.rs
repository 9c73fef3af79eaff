//! The allocation state: every ClusterCIDR's free Node blocks, every Node's pod CIDRs, and one
//! global index of occupied blocks across all ClusterCIDRs, so two Nodes never get overlapping
//! CIDRs even when ClusterCIDR ranges overlap or a Node brought a CIDR of its own.
//!
//! Cost model (n = Nodes holding CIDRs, p = ClusterCIDRs, both small in p):
//! - memory: O(n + p): one entry per occupied block and at most one free run per split;
//!   nothing is proportional to the size of a range (an IPv6 /32 with /64s is one run);
//! - allocate: O(p log n) (candidate order, then the first free run of the chosen range);
//! - adopt / release: O(p log n) plus the number of blocks they overlap (normally none).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use portway_crds::{ClusterCIDR, NodeSelector};

use super::block::{Block, Family};
use super::few::Few;
use super::intervals::IndexSet;
use super::spec::{CidrSpec, FamilyRange};

/// Safety bound on skipping free-list entries that turn out to be occupied (never expected; the
/// free lists are kept exact).
const MAX_STALE_SKIPS: usize = 1024;

/// What the allocator needs to know about a Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `spec.podCIDRs`, or `[spec.podCIDR]` when only the old field is set.
    pub pod_cidrs: Vec<String>,
    /// The ClusterCIDR the operator recorded when it allocated (annotation).
    pub owner_hint: Option<String>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
}

impl NodeFacts {
    /// Extracts the facts from a Node object.
    pub fn from_node(node: &Node) -> NodeFacts {
        let spec = node.spec.as_ref();
        let mut pod_cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
        if pod_cidrs.is_empty()
            && let Some(single) = spec.and_then(|s| s.pod_cidr.clone())
            && !single.is_empty()
        {
            pod_cidrs.push(single);
        }
        let meta = &node.metadata;
        NodeFacts {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            labels: meta.labels.clone().unwrap_or_default(),
            pod_cidrs,
            owner_hint: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(portway_crds::names::CLUSTER_CIDR_ANNOTATION))
                .cloned(),
            deleting: meta.deletion_timestamp.is_some(),
        }
    }
}

/// One ClusterCIDR as the allocator sees it.
#[derive(Clone, Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub generation: Option<i64>,
    /// The checked spec, or every problem with it.
    pub spec: Result<CidrSpec, Vec<String>>,
    /// Raw selector (also for invalid specs, to attribute foreign CIDRs).
    pub node_selector: Option<NodeSelector>,
    /// `metadata.deletionTimestamp` is set: no new allocations, finalizer kept until empty.
    pub terminating: bool,
    /// New allocations allowed (valid, not terminating, and not paused by the caller).
    accepting: bool,
    /// Free Node-block indexes per family.
    free: [Option<IndexSet>; 2],
    /// Node CIDRs attributed to this ClusterCIDR per family.
    allocated: [u64; 2],
}

impl Pool {
    fn new(cidr: &ClusterCIDR) -> Pool {
        let spec = CidrSpec::parse(&cidr.spec);
        let free = match &spec {
            Ok(s) => s
                .families
                .map(|f| f.map(|r| IndexSet::full(r.last_index()))),
            Err(_) => [None, None],
        };
        let terminating = cidr.metadata.deletion_timestamp.is_some();
        Pool {
            name: Arc::from(cidr.metadata.name.as_deref().unwrap_or_default()),
            generation: cidr.metadata.generation,
            accepting: spec.is_ok() && !terminating,
            spec,
            node_selector: cidr.spec.node_selector.clone(),
            terminating,
            free,
            allocated: [0, 0],
        }
    }

    /// Whether the raw selector selects the Node (regardless of the spec's validity).
    fn selects_raw(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .as_ref()
            .is_none_or(|s| s.matches(name, labels))
    }

    /// Free Node blocks of `family` (0 when the family is not configured).
    pub fn free(&self, family: Family) -> u128 {
        self.free[family.index()].as_ref().map_or(0, IndexSet::len)
    }

    /// Node CIDRs of `family` attributed to this ClusterCIDR.
    pub fn allocated(&self, family: Family) -> u64 {
        self.allocated[family.index()]
    }

    /// Nodes it can still serve: the smallest free count of its families.
    pub fn free_for_nodes(&self) -> u128 {
        match &self.spec {
            Ok(s) => s
                .ranges()
                .map(|r| self.free(r.range.family))
                .min()
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Whether new allocations are made from it.
    pub fn accepting(&self) -> bool {
        self.accepting
    }

    /// Total Node CIDRs attributed to it (all families).
    pub fn allocated_total(&self) -> u64 {
        self.allocated.iter().sum()
    }
}

/// One pod CIDR of a Node and the ClusterCIDR it is attributed to (`None`: foreign).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub block: Block,
    pub owner: Option<Arc<str>>,
}

/// How a Node's CIDRs came to be known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from the Node (`spec.podCIDRs` was already set).
    Adopted,
    /// Chosen by this allocator (the Node may not show it yet).
    Allocated,
}

/// A Node's CIDRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub uid: Option<String>,
    /// In Node order; one per family for Nodes Portway allocated.
    pub cidrs: Few<Assigned>,
    pub origin: Origin,
}

impl NodeRecord {
    /// The blocks in Node order.
    pub fn blocks(&self) -> Vec<Block> {
        self.cidrs.iter().map(|a| a.block).collect()
    }

    /// The single ClusterCIDR all blocks are attributed to, if there is one.
    pub fn owner(&self) -> Option<&Arc<str>> {
        let first = self.cidrs.first()?.owner.as_ref()?;
        self.cidrs
            .iter()
            .all(|a| a.owner.as_ref() == Some(first))
            .then_some(first)
    }

    /// The blocks in `spec.podCIDRs` string form.
    pub fn pod_cidrs(&self) -> Vec<String> {
        self.cidrs.iter().map(|a| a.block.to_string()).collect()
    }
}

/// A successful allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub cluster_cidr: Arc<str>,
    /// One block per family of the ClusterCIDR, IPv4 first.
    pub blocks: Few<Block>,
}

/// Why a Node gets no CIDR now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// No ClusterCIDR that accepts allocations selects the Node.
    NoMatch {
        /// ClusterCIDRs that select it but are terminating, invalid or paused.
        not_accepting: Vec<String>,
    },
    /// Every accepting ClusterCIDR that selects the Node is full in at least one family.
    Exhausted {
        /// `(ClusterCIDR, full ranges)` in selection order.
        full: Vec<(String, Vec<String>)>,
        not_accepting: Vec<String>,
    },
}

impl Unavailable {
    /// ClusterCIDRs the Node waits for (the full ones).
    pub fn waits_for(&self) -> impl Iterator<Item = &str> {
        let full: &[(String, Vec<String>)] = match self {
            Unavailable::Exhausted { full, .. } => full,
            Unavailable::NoMatch { .. } => &[],
        };
        full.iter().map(|(n, _)| n.as_str())
    }

    /// Short machine-friendly kind (`no_match`, `exhausted`), used as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Unavailable::NoMatch { .. } => "no_match",
            Unavailable::Exhausted { .. } => "exhausted",
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not_accepting = match self {
            Unavailable::NoMatch { not_accepting } => {
                f.write_str("no ClusterCIDR selects this Node")?;
                not_accepting
            }
            Unavailable::Exhausted {
                full,
                not_accepting,
            } => {
                f.write_str("every ClusterCIDR that selects this Node is full: ")?;
                let parts: Vec<String> = full
                    .iter()
                    .map(|(name, ranges)| format!("{name} ({})", ranges.join(", ")))
                    .collect();
                f.write_str(&parts.join("; "))?;
                not_accepting
            }
        };
        if !not_accepting.is_empty() {
            write!(
                f,
                "; not allocating from {} (invalid or being deleted)",
                not_accepting.join(", ")
            )?;
        }
        Ok(())
    }
}

/// What adopting a Node's existing CIDRs found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// The record was already there with the same CIDRs.
    pub unchanged: bool,
    /// The Node had a different record (e.g. another writer won a race); it was replaced.
    pub replaced: Option<NodeRecord>,
    /// CIDRs no ClusterCIDR contains.
    pub foreign: Vec<Block>,
    /// CIDRs overlapping another Node's, with those Nodes.
    pub overlaps: Vec<(Block, Vec<String>)>,
    /// Strings that are not CIDRs.
    pub unparsable: Vec<String>,
}

/// Nodes whose CIDRs lie outside every ClusterCIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    pub blocks: Vec<Block>,
    /// ClusterCIDRs whose selector selects the Node.
    pub selected_by: Vec<Arc<str>>,
}

/// Usage of one family of one ClusterCIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyUsage {
    pub range: FamilyRange,
    /// Node CIDRs attributed to the ClusterCIDR.
    pub allocated: u64,
    /// Node blocks in the range.
    pub capacity: u128,
    /// Node blocks nothing overlaps.
    pub free: u128,
}

impl FamilyUsage {
    /// Blocks not free (allocated here, or blocked by an overlapping CIDR).
    pub fn in_use(&self) -> u128 {
        self.capacity - self.free.min(self.capacity)
    }
}

/// Memory footprint in entries (for tests that show memory follows Nodes, not range sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub nodes: usize,
    pub occupied_blocks: usize,
    pub free_runs: usize,
}

/// Index of a Node in [`Allocator::names`].
type NodeId = u32;

/// Allocation state for a set of ClusterCIDRs.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    space: Space,
    /// By name: ordered (deterministic iteration), and Nodes handled in name order (a plan, a
    /// rebuild) append at the hot right edge of the tree instead of missing the cache at random
    /// slots of a hash table.
    nodes: BTreeMap<Arc<str>, (NodeId, NodeRecord)>,
    /// Node names by id; the occupied index refers to Nodes by these small ids (no reference
    /// counting per block).
    names: Vec<Option<Arc<str>>>,
    free_ids: Vec<NodeId>,
    foreign: BTreeMap<Arc<str>, Foreign>,
}

/// The address space: ClusterCIDRs with their free blocks, and every occupied block. Kept apart
/// from the Node records so that an allocation can hold a map entry for the Node while it
/// updates the space (one lookup of the Node per allocation).
#[derive(Clone, Debug, Default)]
struct Space {
    pools: BTreeMap<Arc<str>, Pool>,
    occupied: BTreeMap<Block, Holders>,
    /// Count of distinct occupied blocks per prefix length, per family (to find containers).
    prefixes: [BTreeMap<u8, usize>; 2],
    /// Reused buffer of ranked candidates (no allocation per Node).
    scratch: Vec<(RankKey, Arc<str>)>,
}

/// Sort key of a candidate: higher priority, more specific, fewer free, smaller host bits.
type RankKey = (Reverse<i32>, Reverse<usize>, u128, (u8, u8));

impl Allocator {
    /// An allocator for `cidrs` with nothing allocated. Objects without a name are ignored.
    pub fn new<'a>(cidrs: impl IntoIterator<Item = &'a ClusterCIDR>) -> Allocator {
        let pools = cidrs
            .into_iter()
            .filter(|c| c.metadata.name.as_deref().is_some_and(|n| !n.is_empty()))
            .map(Pool::new)
            .map(|p| (p.name.clone(), p))
            .collect();
        Allocator {
            space: Space {
                pools,
                ..Space::default()
            },
            ..Allocator::default()
        }
    }

    /// The ClusterCIDRs, by name.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.space.pools.values()
    }

    /// One ClusterCIDR.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.space.pools.get(name)
    }

    /// Pauses or resumes new allocations from a ClusterCIDR (e.g. until its finalizer is on).
    /// Invalid or terminating ClusterCIDRs never accept.
    pub fn set_accepting(&mut self, name: &str, accepting: bool) {
        if let Some(p) = self.space.pools.get_mut(name) {
            p.accepting = accepting && p.spec.is_ok() && !p.terminating;
        }
    }

    /// The Node's record.
    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name).map(|(_, r)| r)
    }

    /// Every Node record.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &NodeRecord)> {
        self.nodes.iter().map(|(k, (_, v))| (&**k, v))
    }

    /// Number of Nodes holding CIDRs.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Nodes holding CIDRs outside every ClusterCIDR.
    pub fn foreign(&self) -> impl Iterator<Item = (&str, &Foreign)> {
        self.foreign.iter().map(|(k, v)| (&**k, v))
    }

    /// Memory footprint in entries.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            nodes: self.nodes.len(),
            occupied_blocks: self.space.occupied.len(),
            free_runs: self
                .space
                .pools
                .values()
                .flat_map(|p| p.free.iter().flatten())
                .map(IndexSet::runs)
                .sum(),
        }
    }

    /// Usage of `family` of ClusterCIDR `name`.
    pub fn usage(&self, name: &str, family: Family) -> Option<FamilyUsage> {
        let pool = self.space.pools.get(name)?;
        let range = *pool.spec.as_ref().ok()?.family(family)?;
        Some(FamilyUsage {
            range,
            allocated: pool.allocated(family),
            capacity: range.capacity(),
            free: pool.free(family),
        })
    }

    /// Accepting ClusterCIDRs that select the Node, best first, and the selecting ones that do
    /// not accept. Order: higher `priority`; then more specific selector (more requirements in
    /// the matching term); then fewer free CIDRs (fill one range before starting another); then
    /// smaller per-node host bits (IPv4, then IPv6); then name.
    pub fn candidates(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> (Vec<&Pool>, Vec<String>) {
        let mut not_accepting = Vec::new();
        let mut ranked = Vec::new();
        self.space
            .rank_into(name, labels, &mut not_accepting, &mut ranked);
        let pools = ranked
            .iter()
            .filter_map(|(_, n)| self.space.pools.get(n))
            .collect();
        (pools, not_accepting)
    }

    /// Gives the Node one block per family from the best candidate that has room in every
    /// family. A Node that already has a record gets that record back unchanged (attributed to
    /// an empty name if its CIDRs are foreign); nothing new is allocated for it.
    pub fn allocate(
        &mut self,
        name: &str,
        labels: &BTreeMap<String, String>,
        uid: Option<&str>,
    ) -> Result<Allocation, Unavailable> {
        // One lookup of the Node: the entry stays open while the space is updated.
        let slot = match self.nodes.entry(Arc::from(name)) {
            std::collections::btree_map::Entry::Occupied(e) => {
                let (_, rec) = e.get();
                return Ok(Allocation {
                    cluster_cidr: rec.owner().cloned().unwrap_or_else(|| Arc::from("")),
                    blocks: rec.cidrs.iter().map(|a| a.block).collect(),
                });
            }
            std::collections::btree_map::Entry::Vacant(v) => v,
        };
        let mut not_accepting = Vec::new();
        let mut ranked = std::mem::take(&mut self.space.scratch);
        self.space
            .rank_into(name, labels, &mut not_accepting, &mut ranked);
        let mut full = Vec::new();
        let mut chosen = None;
        for (_, pool_name) in ranked.drain(..) {
            if chosen.is_some() {
                continue;
            }
            match self.space.pick(&pool_name) {
                Ok(blocks) => chosen = Some((pool_name, blocks)),
                Err(full_ranges) => full.push((pool_name.to_string(), full_ranges)),
            }
        }
        self.space.scratch = ranked;
        match chosen {
            None if full.is_empty() => Err(Unavailable::NoMatch { not_accepting }),
            None => Err(Unavailable::Exhausted {
                full,
                not_accepting,
            }),
            Some((pool_name, blocks)) => {
                let id = new_id(&mut self.names, &mut self.free_ids, slot.key());
                for b in blocks.iter() {
                    self.space.occupy(*b, id);
                }
                if let Some(pool) = self.space.pools.get_mut(&pool_name) {
                    for b in blocks.iter() {
                        pool.allocated[b.family.index()] += 1;
                    }
                }
                slot.insert((
                    id,
                    NodeRecord {
                        uid: uid.map(str::to_owned),
                        cidrs: blocks
                            .iter()
                            .map(|b| Assigned {
                                block: *b,
                                owner: Some(pool_name.clone()),
                            })
                            .collect(),
                        origin: Origin::Allocated,
                    },
                ));
                Ok(Allocation {
                    cluster_cidr: pool_name,
                    blocks,
                })
            }
        }
    }

    /// Records the Node's existing CIDRs (`facts.pod_cidrs`). They are never moved; each is
    /// attributed to the ClusterCIDR that contains it (the one named by the owner annotation
    /// if it does, else the one that selects the Node, has this block size, higher priority,
    /// more specific selector, then name). CIDRs that no ClusterCIDR contains or that overlap
    /// another Node's are still recorded (so nothing else is handed out over them) and
    /// reported.
    pub fn adopt(&mut self, facts: &NodeFacts) -> AdoptReport {
        let mut report = AdoptReport::default();
        let mut blocks = Vec::new();
        for s in &facts.pod_cidrs {
            match Block::parse_lenient(s) {
                Ok(b) if !blocks.contains(&b) => blocks.push(b),
                Ok(_) => {}
                Err(_) => report.unparsable.push(s.clone()),
            }
        }
        if let Some((_, rec)) = self.nodes.get(facts.name.as_str()) {
            if rec.blocks() == blocks && rec.uid == facts.uid {
                report.unchanged = true;
                return report;
            }
            report.replaced = self.release(&facts.name);
        }
        if blocks.is_empty() {
            return report;
        }
        let node: Arc<str> = Arc::from(facts.name.as_str());
        let id = new_id(&mut self.names, &mut self.free_ids, &node);
        let mut cidrs = Vec::with_capacity(blocks.len());
        for block in blocks {
            let others = overlapping(&self.space.occupied, &self.space.prefixes, block);
            if !others.is_empty() {
                let mut with: Vec<String> = others
                    .iter()
                    .filter_map(|b| self.space.occupied.get(b))
                    .flat_map(Holders::iter)
                    .filter(|&&other| other != id)
                    .filter_map(|&other| self.names.get(other as usize).cloned().flatten())
                    .map(|n| n.to_string())
                    .collect();
                with.sort();
                with.dedup();
                if !with.is_empty() {
                    report.overlaps.push((block, with));
                }
            }
            let owner = self.owner_for(block, facts);
            match &owner {
                Some(o) => {
                    if let Some(p) = self.space.pools.get_mut(o) {
                        p.allocated[block.family.index()] += 1;
                    }
                }
                None => report.foreign.push(block),
            }
            self.space.occupy(block, id);
            cidrs.push(Assigned { block, owner });
        }
        if !report.foreign.is_empty() {
            let selected_by = self
                .space
                .pools
                .values()
                .filter(|p| p.selects_raw(&facts.name, &facts.labels))
                .map(|p| p.name.clone())
                .collect();
            self.foreign.insert(
                node.clone(),
                Foreign {
                    blocks: report.foreign.clone(),
                    selected_by,
                },
            );
        }
        self.nodes.insert(
            node,
            (
                id,
                NodeRecord {
                    uid: facts.uid.clone(),
                    cidrs: cidrs.into_iter().collect(),
                    origin: Origin::Adopted,
                },
            ),
        );
        report
    }

    /// Re-records a reservation made earlier (e.g. by a previous allocator before a rebuild)
    /// whose Node does not show it yet: same blocks, same owner if that ClusterCIDR still
    /// contains them.
    pub fn restore(&mut self, name: &str, record: &NodeRecord) -> AdoptReport {
        let facts = NodeFacts {
            name: name.to_owned(),
            uid: record.uid.clone(),
            pod_cidrs: record.pod_cidrs(),
            owner_hint: record.owner().map(|o| o.to_string()),
            ..NodeFacts::default()
        };
        let report = self.adopt(&facts);
        if let Some((_, rec)) = self.nodes.get_mut(name) {
            rec.origin = record.origin;
        }
        report
    }

    fn owner_for(&self, block: Block, facts: &NodeFacts) -> Option<Arc<str>> {
        let containing = self.space.pools.values().filter_map(|p| {
            let spec = p.spec.as_ref().ok()?;
            let range = spec.family(block.family)?;
            range.range.contains(block).then_some((p, spec, range))
        });
        let mut best = None;
        for (pool, spec, range) in containing {
            if facts.owner_hint.as_deref() == Some(&*pool.name) {
                return Some(pool.name.clone());
            }
            let specificity = spec.selects(&facts.name, &facts.labels);
            let key = (
                Reverse(specificity.is_some()),
                Reverse(range.is_node_block(block)),
                Reverse(spec.priority),
                Reverse(specificity.unwrap_or(0)),
                pool.name.clone(),
            );
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, pool.name.clone()));
            }
        }
        best.map(|(_, n)| n)
    }

    /// Forgets the Node and frees its CIDRs. Call only when the Node object is gone.
    pub fn release(&mut self, name: &str) -> Option<NodeRecord> {
        let (id, record) = self.nodes.remove(name)?;
        for a in &record.cidrs {
            if let Some(owner) = &a.owner
                && let Some(p) = self.space.pools.get_mut(owner)
            {
                let n = &mut p.allocated[a.block.family.index()];
                *n = n.saturating_sub(1);
            }
            self.space.vacate(a.block, id);
        }
        if let Some(slot) = self.names.get_mut(id as usize) {
            *slot = None;
            self.free_ids.push(id);
        }
        self.foreign.remove(name);
        Some(record)
    }
}

impl Space {
    /// Candidates as names with their sort keys, best first, into `keyed` (cleared first).
    fn rank_into(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        not_accepting: &mut Vec<String>,
        keyed: &mut Vec<(RankKey, Arc<str>)>,
    ) {
        keyed.clear();
        for pool in self.pools.values() {
            let Ok(spec) = &pool.spec else {
                if pool.selects_raw(name, labels) {
                    not_accepting.push(pool.name.to_string());
                }
                continue;
            };
            let Some(specificity) = spec.selects(name, labels) else {
                continue;
            };
            if !pool.accepting {
                not_accepting.push(pool.name.to_string());
                continue;
            }
            let key = (
                Reverse(spec.priority),
                Reverse(specificity),
                pool.free_for_nodes(),
                spec.host_bits_key(),
            );
            keyed.push((key, pool.name.clone()));
        }
        // Name breaks the remaining ties (the map iterates in name order and the sort is stable).
        keyed.sort_by_key(|k| k.0);
    }
    /// The lowest free block of every family of the pool, or the ranges that are full.
    fn pick(&mut self, pool_name: &str) -> Result<Few<Block>, Vec<String>> {
        let Some(pool) = self.pools.get(pool_name) else {
            return Err(Vec::new());
        };
        let Ok(spec) = &pool.spec else {
            return Err(Vec::new());
        };
        let ranges = spec.families;
        let mut picked = [None, None];
        let mut full = Vec::new();
        for (slot, range) in picked.iter_mut().zip(ranges) {
            let Some(range) = range else { continue };
            match self.lowest_free(pool_name, &range) {
                Some(b) => *slot = Some(b),
                None => full.push(format!(
                    "{} {} has no free /{}",
                    range.range.family, range.range, range.node_prefix
                )),
            }
        }
        if full.is_empty() {
            Ok(picked.into_iter().flatten().collect())
        } else {
            Err(full)
        }
    }

    fn lowest_free(&mut self, pool_name: &str, range: &FamilyRange) -> Option<Block> {
        let f = range.range.family.index();
        for _ in 0..MAX_STALE_SKIPS {
            let index = self.pools.get(pool_name)?.free[f].as_ref()?.first()?;
            let block = range.block(index);
            if !overlaps_any(&self.occupied, &self.prefixes, block) {
                return Some(block);
            }
            // Never expected: the free list said free but something overlaps. Repair and go on.
            tracing::error!(%block, pool = pool_name, "free list out of date; skipping block");
            if let Some(free) = self.pools.get_mut(pool_name)?.free[f].as_mut() {
                free.remove(index, index);
            }
        }
        None
    }

    fn occupy(&mut self, block: Block, node: NodeId) {
        match self.occupied.entry(block) {
            std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().push(node),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Holders::One(node));
                *self.prefixes[block.family.index()]
                    .entry(block.prefix)
                    .or_default() += 1;
            }
        }
        let f = block.family.index();
        for pool in self.pools.values_mut() {
            let Ok(spec) = &pool.spec else { continue };
            let (Some(range), Some(free)) = (spec.families[f], pool.free[f].as_mut()) else {
                continue;
            };
            if let Some((lo, hi)) = range.index_span(block) {
                free.remove(lo, hi);
            }
        }
    }

    fn vacate(&mut self, block: Block, node: NodeId) {
        let Some(holders) = self.occupied.get_mut(&block) else {
            return;
        };
        if !holders.remove(node) {
            return;
        }
        self.occupied.remove(&block);
        let f = block.family.index();
        if let Some(count) = self.prefixes[f].get_mut(&block.prefix) {
            *count -= 1;
            if *count == 0 {
                self.prefixes[f].remove(&block.prefix);
            }
        }
        let (occupied, prefixes) = (&self.occupied, &self.prefixes);
        for pool in self.pools.values_mut() {
            let Ok(spec) = &pool.spec else { continue };
            let (Some(range), Some(free)) = (spec.families[f], pool.free[f].as_mut()) else {
                continue;
            };
            let Some((lo, hi)) = range.index_span(block) else {
                continue;
            };
            // The Node blocks lo..=hi form one CIDR: the intersection widened to Node size.
            let inter = if block.prefix >= range.range.prefix {
                block
            } else {
                range.range
            };
            let span = inter.supernet(inter.prefix.min(range.node_prefix));
            let mut busy: Vec<(u128, u128)> = overlapping(occupied, prefixes, span)
                .into_iter()
                .filter_map(|b| range.index_span(b))
                .map(|(a, b)| (a.max(lo), b.min(hi)))
                .collect();
            busy.sort_unstable();
            let mut next = lo;
            for (a, b) in busy {
                if a > next {
                    free.insert(next, a - 1);
                }
                // Indexes have at most 124 bits, so `b + 1` cannot overflow.
                next = next.max(b.saturating_add(1));
            }
            if next <= hi {
                free.insert(next, hi);
            }
        }
    }
}

/// True when an occupied block shares an address with `b` (see [`overlapping`]); no allocation.
fn overlaps_any(
    occupied: &BTreeMap<Block, Holders>,
    prefixes: &[BTreeMap<u8, usize>; 2],
    b: Block,
) -> bool {
    let contained = prefixes[b.family.index()]
        .keys()
        .take_while(|&&len| len < b.prefix)
        .any(|&len| occupied.contains_key(&b.supernet(len)));
    contained
        || occupied
            .range(
                Block {
                    family: b.family,
                    start: b.start,
                    prefix: 0,
                }..=Block {
                    family: b.family,
                    start: b.last(),
                    prefix: u8::MAX,
                },
            )
            .next()
            .is_some()
}

/// Occupied blocks that share an address with `b`: those that start inside it, and those that
/// contain its start (found by prefix length, of which there are few distinct ones).
fn overlapping(
    occupied: &BTreeMap<Block, Holders>,
    prefixes: &[BTreeMap<u8, usize>; 2],
    b: Block,
) -> Vec<Block> {
    let mut out = Vec::new();
    for &len in prefixes[b.family.index()].keys() {
        if len >= b.prefix {
            break;
        }
        let sup = b.supernet(len);
        if sup.start < b.start && occupied.contains_key(&sup) {
            out.push(sup);
        }
    }
    let lo = Block {
        family: b.family,
        start: b.start,
        prefix: 0,
    };
    let hi = Block {
        family: b.family,
        start: b.last(),
        prefix: u8::MAX,
    };
    out.extend(occupied.range(lo..=hi).map(|(k, _)| *k));
    out
}

/// Takes a free Node id (or a new one) for `name`.
fn new_id(names: &mut Vec<Option<Arc<str>>>, free: &mut Vec<NodeId>, name: &Arc<str>) -> NodeId {
    if let Some(id) = free.pop()
        && let Some(slot) = names.get_mut(id as usize)
    {
        *slot = Some(name.clone());
        return id;
    }
    names.push(Some(name.clone()));
    NodeId::try_from(names.len() - 1).unwrap_or(NodeId::MAX)
}

/// The Nodes holding one block: almost always exactly one (more only when Nodes brought
/// overlapping CIDRs along), so the common case needs no extra allocation.
#[derive(Clone, Debug)]
enum Holders {
    One(NodeId),
    Many(Vec<NodeId>),
}

impl Holders {
    fn push(&mut self, node: NodeId) {
        match self {
            Holders::One(first) => *self = Holders::Many(vec![*first, node]),
            Holders::Many(v) => v.push(node),
        }
    }

    /// Removes `node`; true when nobody holds the block any more.
    fn remove(&mut self, node: NodeId) -> bool {
        match self {
            Holders::One(n) => *n == node,
            Holders::Many(v) => {
                if let Some(pos) = v.iter().position(|n| *n == node) {
                    v.swap_remove(pos);
                }
                let empty = v.is_empty();
                if let [only] = v[..] {
                    *self = Holders::One(only);
                }
                empty
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &NodeId> {
        let (one, many): (Option<&NodeId>, &[NodeId]) = match self {
            Holders::One(n) => (Some(n), &[]),
            Holders::Many(v) => (None, v),
        };
        one.into_iter().chain(many)
    }
}
