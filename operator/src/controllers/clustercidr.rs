//! ClusterCIDR controller (shell): gives each Node without `spec.podCIDRs` one pod CIDR per
//! family from the best matching ClusterCIDR, using the pure allocator in [`crate::cidr`].
//!
//! How it runs:
//! 1. At start it checks that the ClusterCIDR CRD is installed and, when
//!    `--default-cluster-cidr` is given, creates the ClusterCIDR `default` (empty selector,
//!    lowest priority) if it does not exist, like K3s' `--cluster-cidr`.
//! 2. It watches Nodes and ClusterCIDRs. Nothing is allocated until both initial lists are
//!    complete; then the allocation state is rebuilt from the Nodes: existing `podCIDRs` are
//!    adopted, never moved (so a restart writes nothing when nothing changed).
//! 3. A Node without `podCIDRs` gets CIDRs in one merge patch of `spec.podCIDR`,
//!    `spec.podCIDRs` and the annotation `portway.dev/cluster-cidr`, with the Node's
//!    `resourceVersion` as precondition: if anyone changed the Node since it was read (say,
//!    kube-controller-manager assigned CIDRs), the patch fails with 409 and the Node is read
//!    again and adopted. `podCIDRs` is immutable once set, so this is written once.
//! 4. A CIDR is released only when the Node object is gone (a watch `Delete`, or absent from a
//!    re-list), never at `deletionTimestamp` (upstream released early, kubernetes#127792).
//!    A patch whose outcome is unknown (timeout, 5xx) keeps its CIDRs reserved for that Node
//!    and is retried with the same CIDRs, so a late success can never duplicate a CIDR.
//! 5. Every ClusterCIDR gets the finalizer `clustercidrs.portway.dev/allocations` before
//!    anything is allocated from it; when one is deleted it stops allocating, reports
//!    `Ready=False/Terminating`, and loses the finalizer once no Node holds its CIDRs.
//! 6. Statuses (usage per family; `Ready`, `NearlyFull`, `Exhausted`, `ForeignPodCIDRs`) are
//!    written by server-side apply, batched at most once per second, and only when they differ
//!    (timestamps aside).
//!
//! Leader election happens before [`run`] is called, so there is no gating here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use portway_crds::names::{CLUSTER_CIDR_ANNOTATION, CLUSTER_CIDR_FINALIZER};
use portway_crds::validation::{self, Kind};
use portway_crds::{ClusterCIDR, ClusterCIDRSpec, ClusterCIDRStatus};
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use serde_json::json;
use tokio::time::Instant;

use crate::cidr::allocator::{AdoptReport, Allocator, NodeFacts, Origin, Unavailable};
use crate::cidr::block::{Block, Family};
use crate::cidr::status;

/// Event reporter and prefix of every field manager.
pub const CONTROLLER_NAME: &str = "clustercidr.portway.dev";
/// Field manager of Node `podCIDRs` patches.
pub const NODE_FIELD_MANAGER: &str = "clustercidr.portway.dev/nodes";
/// Field manager of ClusterCIDR status applies.
pub const STATUS_FIELD_MANAGER: &str = "clustercidr.portway.dev/status";
/// Field manager of ClusterCIDR finalizer patches.
pub const FINALIZER_FIELD_MANAGER: &str = "clustercidr.portway.dev/finalizer";
/// Field manager that creates the default ClusterCIDR.
pub const DEFAULT_FIELD_MANAGER: &str = "clustercidr.portway.dev/default";
/// Name of the ClusterCIDR made from `--default-cluster-cidr`.
pub const DEFAULT_CLUSTER_CIDR_NAME: &str = "default";
/// Priority of the default ClusterCIDR: the lowest the API allows, so any other match wins.
pub const DEFAULT_PRIORITY: i32 = -1000;
/// Status writes are batched: at most one per ClusterCIDR per this interval.
pub const STATUS_BATCH: Duration = Duration::from_secs(1);
/// Longest wait between retries of a failed write.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Event reasons of this controller (Events go to Nodes and ClusterCIDRs).
pub mod events {
    /// Normal, on a Node: pod CIDRs were written.
    pub const POD_CIDR_ALLOCATED: &str = "PodCIDRAllocated";
    /// Warning, on a Node: no CIDR can be allocated now (the note says why).
    pub const CIDR_NOT_AVAILABLE: &str = "CIDRNotAvailable";
    /// Warning, on a Node: writing its pod CIDRs failed; it is retried.
    pub const CIDR_ASSIGNMENT_FAILED: &str = "CIDRAssignmentFailed";
    /// Warning, on a Node: a pod CIDR lies outside every ClusterCIDR.
    pub const FOREIGN_POD_CIDR: &str = portway_crds::condition::reasons::FOREIGN_POD_CIDR;
    /// Warning, on a Node: its pod CIDR overlaps another Node's.
    pub const OVERLAPPING_POD_CIDR: &str = "OverlappingPodCIDR";
    /// Warning, on a Node: `spec.podCIDRs` holds something that is not a CIDR.
    pub const INVALID_POD_CIDR: &str = "InvalidPodCIDR";
    /// Warning, on the default ClusterCIDR: it exists with another spec than the flags say.
    pub const DEFAULT_MISMATCH: &str = "DefaultClusterCIDRMismatch";
    /// Action of every Event.
    pub const ACTION: &str = "AllocatePodCIDR";
}

/// Command-line flags of the ClusterCIDR controller (flatten into `portway run`).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// Allocate `spec.podCIDRs` of Nodes from ClusterCIDRs. Run kube-controller-manager with
    /// `--allocate-node-cidrs=false` (K3s: `--kube-controller-manager-arg=allocate-node-cidrs=false`).
    #[arg(
        long = "clustercidr-enabled",
        env = "PORTWAY_CLUSTERCIDR_ENABLED",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub clustercidr_enabled: bool,
    /// Create the ClusterCIDR `default` (every Node, lowest priority) from these ranges: one
    /// IPv4 and/or one IPv6 CIDR, comma separated, e.g. `10.42.0.0/16,fd00:10:42::/56`. It is
    /// created once and never changed (a ClusterCIDR's spec is immutable).
    #[arg(
        long = "default-cluster-cidr",
        value_delimiter = ',',
        value_parser = parse_range,
        value_name = "CIDR[,CIDR]"
    )]
    pub default_cluster_cidr: Vec<IpNet>,
    /// Host bits of each Node's IPv4 CIDR in the default ClusterCIDR (8: a /24 per Node).
    #[arg(long = "default-per-node-host-bits", default_value_t = 8, value_parser = clap::value_parser!(i32).range(4..=32))]
    pub default_per_node_host_bits: i32,
    /// Host bits of each Node's IPv6 CIDR in the default ClusterCIDR (64: a /64 per Node).
    #[arg(long = "default-ipv6-per-node-host-bits", default_value_t = 64, value_parser = clap::value_parser!(i32).range(4..=128))]
    pub default_ipv6_per_node_host_bits: i32,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            clustercidr_enabled: true,
            default_cluster_cidr: Vec::new(),
            default_per_node_host_bits: 8,
            default_ipv6_per_node_host_bits: 64,
        }
    }
}

fn parse_range(s: &str) -> Result<IpNet, String> {
    let block = Block::parse_canonical(s.trim()).map_err(|e| e.to_string())?;
    Ok(block.to_net())
}

impl Args {
    /// The default ClusterCIDR these flags describe, if any; checked like the API server would.
    pub fn default_cluster_cidr(&self) -> Result<Option<ClusterCIDR>, Error> {
        if self.default_cluster_cidr.is_empty() {
            return Ok(None);
        }
        let mut v4 = None;
        let mut v6 = None;
        for net in &self.default_cluster_cidr {
            let slot = match net {
                IpNet::V4(_) => &mut v4,
                IpNet::V6(_) => &mut v6,
            };
            if let Some(prev) = slot.replace(net.to_string()) {
                return Err(Error::InvalidArgs(format!(
                    "--default-cluster-cidr takes at most one range per family, got {prev} and {net}"
                )));
            }
        }
        let spec = ClusterCIDRSpec {
            node_selector: None,
            per_node_host_bits: if v4.is_some() {
                self.default_per_node_host_bits
            } else {
                self.default_ipv6_per_node_host_bits
            },
            ipv4_per_node_host_bits: None,
            ipv6_per_node_host_bits: (v4.is_some() && v6.is_some())
                .then_some(self.default_ipv6_per_node_host_bits),
            ipv4: v4,
            ipv6: v6,
            priority: DEFAULT_PRIORITY,
        };
        let mut cidr = ClusterCIDR::new(DEFAULT_CLUSTER_CIDR_NAME, spec);
        cidr.metadata.labels = Some(BTreeMap::from([(
            portway_crds::names::LABEL_MANAGED_BY.to_owned(),
            portway_crds::names::MANAGED_BY.to_owned(),
        )]));
        let value = serde_json::to_value(&cidr).map_err(|e| Error::InvalidArgs(e.to_string()))?;
        validation::validate(Kind::ClusterCIDR, &value, None)
            .map_err(|e| Error::InvalidArgs(format!("default ClusterCIDR from flags: {e}")))?;
        Ok(Some(cidr))
    }
}

/// Metrics `portway_clustercidr_*`.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Node CIDR allocations written, by ClusterCIDR.
    pub allocations: IntCounterVec,
    /// Node CIDRs released because their Node is gone, by ClusterCIDR (`""` for foreign ones).
    pub releases: IntCounterVec,
    /// Failures by reason: `no_match`, `exhausted` (a Node left waiting), `conflict`,
    /// `invalid`, `not_found`, `forbidden`, `server`, `transport`, ... (API writes).
    pub failures: IntCounterVec,
    /// Free Node CIDRs by ClusterCIDR and family (`ipv4`, `ipv6`).
    pub free: GaugeVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::unregistered()?;
        registry.register(Box::new(m.allocations.clone()))?;
        registry.register(Box::new(m.releases.clone()))?;
        registry.register(Box::new(m.failures.clone()))?;
        registry.register(Box::new(m.free.clone()))?;
        Ok(m)
    }

    /// The metrics without a registry (tests).
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        Ok(Metrics {
            allocations: IntCounterVec::new(
                Opts::new(
                    "portway_clustercidr_allocations_total",
                    "Node pod CIDR allocations written, by ClusterCIDR",
                ),
                &["clustercidr"],
            )?,
            releases: IntCounterVec::new(
                Opts::new(
                    "portway_clustercidr_releases_total",
                    "Node pod CIDRs released after their Node was deleted, by ClusterCIDR",
                ),
                &["clustercidr"],
            )?,
            failures: IntCounterVec::new(
                Opts::new(
                    "portway_clustercidr_failures_total",
                    "Allocation failures: Nodes left waiting and failed API writes, by reason",
                ),
                &["reason"],
            )?,
            free: GaugeVec::new(
                Opts::new(
                    "portway_clustercidr_free_cidrs",
                    "Free Node CIDRs by ClusterCIDR and family",
                ),
                &["clustercidr", "family"],
            )?,
        })
    }
}

/// Errors that stop the controller (everything else is logged, counted and retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid ClusterCIDR flags: {0}")]
    InvalidArgs(String),
    #[error(
        "the ClusterCIDR CRD (clustercidrs.portway.dev) is not installed: install the Helm chart's \
         CRDs, or `portway crd | kubectl apply -f -`, or run with --clustercidr-enabled=false"
    )]
    CrdMissing,
    #[error("registering ClusterCIDR metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

impl Error {
    /// Short category for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidArgs(_) => "invalid_args",
            Error::CrdMissing => "crd_missing",
            Error::Metrics(_) => "metrics",
            Error::Kube { source, .. } => kube_category(source),
            Error::WatchEnded(_) => "watch_ended",
        }
    }
}

/// Category of an API error.
fn kube_category(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) => match s.code {
            409 => "conflict",
            403 => "forbidden",
            404 => "not_found",
            422 => "invalid",
            429 => "throttled",
            500..=599 => "server",
            _ => "api",
        },
        _ => "transport",
    }
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Source of "now" for condition timestamps (tests pin it).
pub type Clock = Arc<dyn Fn() -> Time + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| Time(k8s_openapi::jiff::Timestamp::now()))
}

/// Starts the controller. Registers the metrics into `registry` right away, then returns the
/// future that runs until `shutdown` completes (returning `Ok`) or a fatal error occurs
/// ([`Error::InvalidArgs`], [`Error::CrdMissing`], or the API failing at start).
///
/// With `--clustercidr-enabled=false` the future just waits for `shutdown`.
pub fn run(
    client: Client,
    args: Args,
    registry: &Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = Result<(), Error>> + Send + 'static {
    let metrics = Metrics::register(registry);
    async move {
        if !args.clustercidr_enabled {
            tracing::info!("ClusterCIDR controller disabled (--clustercidr-enabled=false)");
            shutdown.await;
            return Ok(());
        }
        let metrics = metrics.map_err(Error::Metrics)?;
        let default = args.default_cluster_cidr()?;
        let cidrs: Api<ClusterCIDR> = Api::all(client.clone());
        if let Err(e) = cidrs.list(&ListParams::default().limit(1)).await {
            if api_code(&e) == Some(404) {
                return Err(Error::CrdMissing);
            }
            return Err(Error::Kube {
                action: "listing ClusterCIDRs".into(),
                source: e,
            });
        }
        let instance = std::env::var("POD_NAME").ok();
        let controller = CidrController::new(client.clone(), metrics, system_clock(), instance);
        if let Some(default) = default {
            controller.ensure_default(default).await?;
        }
        let nodes = watcher::watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff();
        let cidr_watch = watcher::watcher(
            Api::<DeserializeGuard<ClusterCIDR>>::all(client),
            watcher::Config::default(),
        )
        .default_backoff();
        controller.drive(nodes, cidr_watch, shutdown).await
    }
}

/// A pending retry of one Node's allocation.
#[derive(Clone, Copy, Debug)]
struct Retry {
    at: Instant,
    attempts: u32,
}

/// The controller's state and its handlers. [`run`] feeds it from watches; tests call the
/// handlers directly.
pub struct CidrController {
    nodes_api: Api<Node>,
    cidrs_api: Api<ClusterCIDR>,
    recorder: Recorder,
    metrics: Metrics,
    clock: Clock,
    nodes: HashMap<String, NodeFacts>,
    node_buffer: Option<HashMap<String, NodeFacts>>,
    nodes_synced: bool,
    cidrs: BTreeMap<String, ClusterCIDR>,
    cidr_buffer: Option<BTreeMap<String, ClusterCIDR>>,
    cidrs_synced: bool,
    alloc: Allocator,
    built: bool,
    waiting: BTreeMap<String, Unavailable>,
    retries: HashMap<String, Retry>,
    dirty: BTreeSet<String>,
    flush_at: Option<Instant>,
    retry_waiting: bool,
    /// Problems already reported per Node (one Event each).
    reported: HashMap<String, BTreeSet<String>>,
    gauges: BTreeSet<(String, Family)>,
    /// ClusterCIDRs whose finalizer could not be added yet (no allocations from them).
    paused: BTreeSet<String>,
}

impl CidrController {
    /// A controller with nothing observed yet.
    pub fn new(client: Client, metrics: Metrics, clock: Clock, instance: Option<String>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.to_owned(),
                instance,
            },
        );
        CidrController {
            nodes_api: Api::all(client.clone()),
            cidrs_api: Api::all(client),
            recorder,
            metrics,
            clock,
            nodes: HashMap::new(),
            node_buffer: None,
            nodes_synced: false,
            cidrs: BTreeMap::new(),
            cidr_buffer: None,
            cidrs_synced: false,
            alloc: Allocator::default(),
            built: false,
            waiting: BTreeMap::new(),
            retries: HashMap::new(),
            dirty: BTreeSet::new(),
            flush_at: None,
            retry_waiting: false,
            reported: HashMap::new(),
            gauges: BTreeSet::new(),
            paused: BTreeSet::new(),
        }
    }

    /// The allocation state.
    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    /// True once both initial lists were seen and the state was built.
    pub fn is_synced(&self) -> bool {
        self.built
    }

    /// Nodes waiting for a CIDR, with the reason.
    pub fn waiting(&self) -> &BTreeMap<String, Unavailable> {
        &self.waiting
    }

    /// When [`tick`](Self::tick) has work (a retry or a status batch is due).
    pub fn next_wakeup(&self) -> Option<Instant> {
        let retry = self.retries.values().map(|r| r.at).min();
        match (retry, self.flush_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the controller on the given watch streams until `shutdown`.
    pub async fn drive<N, C, E1, E2>(
        mut self,
        nodes: N,
        cidrs: C,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error>
    where
        N: Stream<Item = Result<Event<Node>, E1>> + Send,
        C: Stream<Item = Result<Event<DeserializeGuard<ClusterCIDR>>, E2>> + Send,
        E1: std::fmt::Display,
        E2: std::fmt::Display,
    {
        let mut nodes = std::pin::pin!(nodes);
        let mut cidrs = std::pin::pin!(cidrs);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let wake = self.next_wakeup();
            tokio::select! {
                _ = &mut shutdown => {
                    // Write what is pending so the statuses are current after a handover.
                    if self.flush_at.is_some() {
                        self.flush().await;
                    }
                    return Ok(());
                }
                ev = nodes.next() => match ev {
                    Some(Ok(ev)) => self.handle_node_event(ev).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "Node watch error; retrying"),
                    None => return Err(Error::WatchEnded("Node")),
                },
                ev = cidrs.next() => match ev {
                    Some(Ok(ev)) => self.handle_guarded_cidr_event(ev).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "ClusterCIDR watch error; retrying"),
                    None => return Err(Error::WatchEnded("ClusterCIDR")),
                },
                _ = sleep_until(wake) => self.tick().await,
            }
        }
    }

    async fn handle_guarded_cidr_event(&mut self, ev: Event<DeserializeGuard<ClusterCIDR>>) {
        let unguard = |g: DeserializeGuard<ClusterCIDR>| match g.0 {
            Ok(c) => Some(c),
            Err(invalid) => {
                tracing::warn!(
                    name = invalid.metadata.name.as_deref().unwrap_or_default(),
                    error = %invalid.error,
                    "ignoring a ClusterCIDR that cannot be decoded"
                );
                None
            }
        };
        let ev = match ev {
            Event::Apply(g) => unguard(g).map(Event::Apply),
            Event::InitApply(g) => unguard(g).map(Event::InitApply),
            Event::Delete(g) => match g.0 {
                Ok(c) => Some(Event::Delete(c)),
                Err(invalid) => {
                    if let Some(name) = invalid.metadata.name {
                        self.cidr_gone(&name).await;
                    }
                    None
                }
            },
            Event::Init => Some(Event::Init),
            Event::InitDone => Some(Event::InitDone),
        };
        if let Some(ev) = ev {
            self.handle_cidr_event(ev).await;
        }
    }

    /// Handles one Node watch event.
    pub async fn handle_node_event(&mut self, ev: Event<Node>) {
        match ev {
            Event::Init => self.node_buffer = Some(HashMap::new()),
            Event::InitApply(node) => {
                let facts = NodeFacts::from_node(&node);
                if !facts.name.is_empty() {
                    self.node_buffer
                        .get_or_insert_with(HashMap::new)
                        .insert(facts.name.clone(), facts);
                }
            }
            Event::InitDone => {
                self.nodes = self.node_buffer.take().unwrap_or_default();
                self.nodes_synced = true;
                if self.cidrs_synced {
                    self.rebuild().await;
                }
            }
            Event::Apply(node) => self.node_applied(&node).await,
            Event::Delete(node) => {
                let facts = NodeFacts::from_node(&node);
                let current = self.nodes.get(&facts.name).and_then(|n| n.uid.clone());
                if current.is_some() && facts.uid.is_some() && current != facts.uid {
                    return; // a stale delete of an older object with this name
                }
                self.node_gone(&facts.name).await;
            }
        }
        self.settle().await;
    }

    /// Handles one ClusterCIDR watch event.
    pub async fn handle_cidr_event(&mut self, ev: Event<ClusterCIDR>) {
        match ev {
            Event::Init => self.cidr_buffer = Some(BTreeMap::new()),
            Event::InitApply(c) => {
                let name = c.name_any();
                if !name.is_empty() {
                    self.cidr_buffer
                        .get_or_insert_with(BTreeMap::new)
                        .insert(name, c);
                }
            }
            Event::InitDone => {
                self.cidrs = self.cidr_buffer.take().unwrap_or_default();
                self.cidrs_synced = true;
                if self.nodes_synced {
                    self.rebuild().await;
                }
            }
            Event::Apply(c) => {
                let name = c.name_any();
                if name.is_empty() {
                    return;
                }
                let structural = self
                    .cidrs
                    .get(&name)
                    .is_none_or(|old| structure(old) != structure(&c));
                self.cidrs.insert(name.clone(), c);
                if !self.built {
                    return;
                }
                if structural {
                    self.rebuild().await;
                } else {
                    self.mark_dirty(&name);
                }
            }
            Event::Delete(c) => self.cidr_gone(&c.name_any()).await,
        }
        self.settle().await;
    }

    async fn cidr_gone(&mut self, name: &str) {
        if self.cidrs.remove(name).is_some() && self.built {
            self.rebuild().await;
        }
    }

    /// Does what is due: retries of failed allocations, then the batched status writes.
    pub async fn tick(&mut self) {
        let now = Instant::now();
        let mut due: Vec<String> = self
            .retries
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        due.sort();
        for name in due {
            let Some(facts) = self.nodes.get(&name) else {
                self.retries.remove(&name);
                continue;
            };
            if !facts.pod_cidrs.is_empty() || facts.deleting {
                self.retries.remove(&name);
                continue;
            }
            if let Some(r) = self.retries.get_mut(&name) {
                // Pushed back until the attempt below reports its outcome.
                r.at = now + MAX_BACKOFF;
            }
            if self.alloc.node(&name).is_some() {
                self.patch_node(&name).await;
            } else {
                self.allocate_node(&name).await;
            }
        }
        self.settle().await;
        if self.flush_at.is_some_and(|t| t <= now) {
            self.flush().await;
        }
    }

    /// Writes the statuses (and finalizer removals) of every ClusterCIDR marked changed.
    pub async fn flush(&mut self) {
        self.flush_at = None;
        if !self.paused.is_empty() {
            self.resume_paused().await;
        }
        let now = (self.clock)();
        let dirty = std::mem::take(&mut self.dirty);
        for name in dirty {
            self.update_gauges(&name);
            let Some(cidr) = self.cidrs.get(&name) else {
                continue;
            };
            let Some(pool) = self.alloc.pool(&name) else {
                continue;
            };
            let waiting: Vec<&str> = self
                .waiting
                .iter()
                .filter(|(_, w)| w.waits_for().any(|p| p == name))
                .map(|(n, _)| n.as_str())
                .collect();
            let next = status::status(&self.alloc, pool, &waiting, cidr.status.as_ref(), &now);
            // Reservations not yet written are records too, so `allocated` counts them.
            let release_finalizer =
                pool.terminating && pool.allocated_total() == 0 && has_finalizer(cidr);
            if status::differs(cidr.status.as_ref(), &next) {
                self.apply_status(&name, next).await;
            }
            if release_finalizer {
                self.set_finalizer(&name, false).await;
            }
        }
    }

    fn update_gauges(&mut self, name: &str) {
        for family in Family::ALL {
            let key = (name.to_owned(), family);
            match self.alloc.usage(name, family) {
                Some(u) if self.cidrs.contains_key(name) => {
                    self.metrics
                        .free
                        .with_label_values(&[name, family.label()])
                        .set(u.free as f64);
                    self.gauges.insert(key);
                }
                _ => {
                    if self.gauges.remove(&key) {
                        let _ = self
                            .metrics
                            .free
                            .remove_label_values(&[name, family.label()]);
                    }
                }
            }
        }
    }

    async fn apply_status(&mut self, name: &str, next: ClusterCIDRStatus) {
        let body = json!({
            "apiVersion": portway_crds::names::API_VERSION,
            "kind": "ClusterCIDR",
            "metadata": { "name": name },
            "status": next,
        });
        let params = PatchParams::apply(STATUS_FIELD_MANAGER).force();
        match self
            .cidrs_api
            .patch_status(name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(updated) => {
                if let Some(c) = self.cidrs.get_mut(name) {
                    // The new resourceVersion is a valid precondition for a finalizer patch
                    // only while the structure we know is current; otherwise the watch brings
                    // the change (and a rebuild) first.
                    if structure(&updated) == structure(c) {
                        c.metadata.resource_version = updated.metadata.resource_version;
                    }
                    c.status = updated.status;
                }
            }
            Err(e) => {
                tracing::warn!(clustercidr = name, error = %e, "writing ClusterCIDR status failed; retrying");
                self.metrics
                    .failures
                    .with_label_values(&[kube_category(&e)])
                    .inc();
                self.mark_dirty_after(name, Duration::from_secs(5));
            }
        }
    }

    /// Adds (`true`) or removes our finalizer, with the object's resourceVersion as
    /// precondition. Returns whether the object now has the wanted state.
    async fn set_finalizer(&mut self, name: &str, present: bool) -> bool {
        let Some(cidr) = self.cidrs.get(name) else {
            return false;
        };
        let mut finalizers: Vec<String> = cidr.finalizers().to_vec();
        finalizers.retain(|f| f != CLUSTER_CIDR_FINALIZER);
        if present {
            finalizers.push(CLUSTER_CIDR_FINALIZER.to_owned());
        }
        let mut meta = json!({ "finalizers": finalizers });
        if let Some(rv) = &cidr.metadata.resource_version {
            meta["resourceVersion"] = json!(rv);
        }
        let params = PatchParams {
            field_manager: Some(FINALIZER_FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match self
            .cidrs_api
            .patch(name, &params, &Patch::Merge(json!({ "metadata": meta })))
            .await
        {
            Ok(updated) => {
                if let Some(c) = self.cidrs.get_mut(name) {
                    c.metadata.finalizers = updated.metadata.finalizers;
                    c.metadata.resource_version = updated.metadata.resource_version;
                }
                true
            }
            Err(e) => {
                tracing::warn!(clustercidr = name, error = %e, present, "patching the ClusterCIDR finalizer failed; retrying");
                self.metrics
                    .failures
                    .with_label_values(&[kube_category(&e)])
                    .inc();
                self.mark_dirty_after(name, Duration::from_secs(5));
                false
            }
        }
    }

    /// Rebuilds the allocation state from the observed Nodes and ClusterCIDRs.
    async fn rebuild(&mut self) {
        // Finalizer first: nothing is allocated from a ClusterCIDR that could vanish under it.
        let missing: Vec<String> = self
            .cidrs
            .iter()
            .filter(|(_, c)| c.metadata.deletion_timestamp.is_none() && !has_finalizer(c))
            .map(|(n, _)| n.clone())
            .collect();
        self.paused.clear();
        for name in missing {
            if !self.set_finalizer(&name, true).await {
                self.paused.insert(name);
            }
        }

        let old = std::mem::replace(&mut self.alloc, Allocator::new(self.cidrs.values()));
        for name in &self.paused {
            self.alloc.set_accepting(name, false);
        }
        let mut names: Vec<String> = self.nodes.keys().cloned().collect();
        names.sort();
        let mut reports = Vec::new();
        for name in &names {
            let facts = &self.nodes[name];
            if !facts.pod_cidrs.is_empty() {
                reports.push((name.clone(), self.alloc.adopt(facts)));
            }
        }
        // Reservations whose Node does not show them yet stay reserved.
        for (name, rec) in old.nodes() {
            let Some(facts) = self.nodes.get(name) else {
                continue;
            };
            if rec.origin == Origin::Allocated
                && facts.pod_cidrs.is_empty()
                && (rec.uid.is_none() || rec.uid == facts.uid)
            {
                self.alloc.restore(name, rec);
            }
        }
        // Nodes that vanished while the watch was down.
        for (name, rec) in old.nodes() {
            if !self.nodes.contains_key(name) {
                self.count_release(rec);
            }
        }
        self.built = true;
        // Keep the reasons of Nodes that still wait, so a rebuild does not repeat their Events;
        // they are tried again below.
        let (nodes, alloc) = (&self.nodes, &self.alloc);
        self.waiting.retain(|name, _| {
            nodes.get(name).is_some_and(|f| {
                f.pod_cidrs.is_empty() && !f.deleting && alloc.node(name).is_none()
            })
        });
        for (name, report) in reports {
            self.report_adoption(&name, &report).await;
        }
        let all: Vec<String> = self.cidrs.keys().cloned().collect();
        for name in all {
            self.mark_dirty(&name);
        }
        // Gauges of ClusterCIDRs that are gone.
        let stale: Vec<String> = self
            .gauges
            .iter()
            .filter(|(n, _)| !self.cidrs.contains_key(n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            self.update_gauges(&name);
        }
        for name in names {
            let needs = self.nodes.get(&name).is_some_and(|f| {
                f.pod_cidrs.is_empty() && !f.deleting && self.alloc.node(&name).is_none()
            });
            if needs {
                self.allocate_node(&name).await;
            }
        }
    }

    /// Tries again to add the finalizer to ClusterCIDRs that could not get it; those that now
    /// have it start accepting allocations.
    async fn resume_paused(&mut self) {
        let paused: Vec<String> = self.paused.iter().cloned().collect();
        for name in paused {
            let done = match self.cidrs.get(&name) {
                None => true,
                Some(c) if c.metadata.deletion_timestamp.is_some() || has_finalizer(c) => true,
                Some(_) => self.set_finalizer(&name, true).await,
            };
            if done {
                self.paused.remove(&name);
                self.alloc.set_accepting(&name, true);
                self.retry_waiting = true;
            }
        }
        self.settle().await;
    }

    async fn node_applied(&mut self, node: &Node) {
        let facts = NodeFacts::from_node(node);
        if facts.name.is_empty() {
            return;
        }
        let name = facts.name.clone();
        self.nodes.insert(name.clone(), facts.clone());
        if !self.built {
            return;
        }
        // The same name with a new uid is a new Node: the old one is gone.
        if let Some(rec) = self.alloc.node(&name)
            && rec.uid.is_some()
            && facts.uid.is_some()
            && rec.uid != facts.uid
        {
            self.release_node(&name);
        }
        if !facts.pod_cidrs.is_empty() {
            let report = self.alloc.adopt(&facts);
            if report.unchanged {
                return;
            }
            self.retries.remove(&name);
            if let Some(w) = self.waiting.remove(&name) {
                self.dirty_waits(&w);
            }
            if let Some(replaced) = &report.replaced {
                tracing::info!(node = %name, old = ?replaced.pod_cidrs(), new = ?facts.pod_cidrs, "Node got other pod CIDRs than reserved; adopting them");
                for o in replaced.cidrs.iter().filter_map(|a| a.owner.as_deref()) {
                    self.dirty.insert(o.to_owned());
                }
                self.retry_waiting = true;
            }
            self.report_adoption(&name, &report).await;
            return;
        }
        if facts.deleting {
            // Going away: nothing new for it, and it no longer counts as waiting.
            if let Some(w) = self.waiting.remove(&name) {
                self.dirty_waits(&w);
            }
            return;
        }
        if self.alloc.node(&name).is_some() {
            // Reserved for it: the patch is done (the watch lags) or will be retried.
            return;
        }
        if self.retries.contains_key(&name) {
            return;
        }
        self.allocate_node(&name).await;
    }

    async fn node_gone(&mut self, name: &str) {
        self.nodes.remove(name);
        self.retries.remove(name);
        self.reported.remove(name);
        if let Some(w) = self.waiting.remove(name) {
            self.dirty_waits(&w);
        }
        if self.built {
            self.release_node(name);
        }
    }

    fn release_node(&mut self, name: &str) {
        if let Some(rec) = self.alloc.release(name) {
            self.count_release(&rec);
            for o in rec.cidrs.iter().filter_map(|a| a.owner.as_deref()) {
                self.mark_dirty(o);
            }
            if rec.cidrs.iter().any(|a| a.owner.is_none()) {
                // The ForeignPodCIDRs condition of the ClusterCIDRs that selected it changes.
                let all: Vec<String> = self.alloc.pools().map(|p| p.name.to_string()).collect();
                for p in all {
                    self.mark_dirty(&p);
                }
            }
            self.retry_waiting = true;
        }
    }

    fn count_release(&self, rec: &crate::cidr::NodeRecord) {
        let owner = rec.owner().map(|o| o.to_string()).unwrap_or_default();
        self.metrics.releases.with_label_values(&[&owner]).inc();
    }

    /// Lets waiting Nodes try again after space was freed (loops without recursion).
    async fn settle(&mut self) {
        let mut rounds = 0;
        while self.retry_waiting && rounds < 8 {
            self.retry_waiting = false;
            rounds += 1;
            let names: Vec<String> = self.waiting.keys().cloned().collect();
            for name in names {
                let eligible = self.nodes.get(&name).is_some_and(|f| {
                    f.pod_cidrs.is_empty() && !f.deleting && self.alloc.node(&name).is_none()
                });
                if eligible && !self.retries.contains_key(&name) {
                    self.allocate_node(&name).await;
                }
            }
        }
    }

    async fn allocate_node(&mut self, name: &str) {
        let Some(facts) = self.nodes.get(name).cloned() else {
            return;
        };
        match self
            .alloc
            .allocate(name, &facts.labels, facts.uid.as_deref())
        {
            Err(why) => self.set_waiting(name, why, &facts).await,
            Ok(a) => {
                if let Some(w) = self.waiting.remove(name) {
                    self.dirty_waits(&w);
                }
                self.mark_dirty(&a.cluster_cidr);
                self.patch_node(name).await;
            }
        }
    }

    async fn set_waiting(&mut self, name: &str, why: Unavailable, facts: &NodeFacts) {
        let changed = self.waiting.get(name) != Some(&why);
        self.dirty_waits(&why);
        if let Some(old) = self.waiting.insert(name.to_owned(), why.clone()) {
            self.dirty_waits(&old);
        }
        if !changed {
            return;
        }
        tracing::info!(node = name, reason = %why, "Node waits for a pod CIDR");
        self.metrics
            .failures
            .with_label_values(&[why.label()])
            .inc();
        self.publish_node(
            facts,
            EventType::Warning,
            events::CIDR_NOT_AVAILABLE,
            format!("no pod CIDR allocated: {why}"),
        )
        .await;
    }

    fn dirty_waits(&mut self, why: &Unavailable) {
        let pools: Vec<String> = why.waits_for().map(str::to_owned).collect();
        for p in pools {
            self.mark_dirty(&p);
        }
    }

    /// Writes the Node's reserved CIDRs. See the module docs for how failures are handled.
    async fn patch_node(&mut self, name: &str) {
        let (Some(rec), Some(facts)) = (self.alloc.node(name), self.nodes.get(name)) else {
            return;
        };
        let cidrs = rec.pod_cidrs();
        let owner = rec.owner().map(|o| o.to_string()).unwrap_or_default();
        let mut metadata = json!({ "annotations": { CLUSTER_CIDR_ANNOTATION: owner } });
        if let Some(rv) = &facts.resource_version {
            metadata["resourceVersion"] = json!(rv);
        }
        let body = json!({
            "metadata": metadata,
            "spec": { "podCIDR": cidrs.first(), "podCIDRs": cidrs },
        });
        let params = PatchParams {
            field_manager: Some(NODE_FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match self
            .nodes_api
            .patch(name, &params, &Patch::Merge(&body))
            .await
        {
            Ok(node) => {
                self.retries.remove(name);
                self.metrics.allocations.with_label_values(&[&owner]).inc();
                tracing::info!(node = name, clustercidr = %owner, pod_cidrs = ?cidrs, "allocated pod CIDRs");
                let updated = NodeFacts::from_node(&node);
                let note = format!(
                    "allocated pod CIDRs {} from ClusterCIDR {owner}",
                    cidrs.join(", ")
                );
                self.nodes.insert(name.to_owned(), updated.clone());
                self.publish_node(
                    &updated,
                    EventType::Normal,
                    events::POD_CIDR_ALLOCATED,
                    note,
                )
                .await;
            }
            Err(e) => {
                let category = kube_category(&e);
                self.metrics.failures.with_label_values(&[category]).inc();
                match api_code(&e) {
                    // Definitely not applied: the Node changed (409, resourceVersion) or the
                    // API server refused (422, e.g. podCIDRs already set). Read it again.
                    Some(409) | Some(422) => {
                        tracing::info!(node = name, error = %e, "Node changed under the allocation; reading it again");
                        if let Some(rec) = self.alloc.release(name) {
                            for o in rec.cidrs.iter().filter_map(|a| a.owner.as_deref()) {
                                self.dirty.insert(o.to_owned());
                            }
                        }
                        self.refetch(name).await;
                    }
                    Some(404) => {
                        self.node_gone(name).await;
                    }
                    // Unknown outcome: keep the reservation, retry the same CIDRs later.
                    _ => {
                        let attempts = self.schedule_retry(name);
                        tracing::warn!(node = name, error = %e, attempts, "writing pod CIDRs failed; retrying");
                        if attempts == 1
                            && let Some(facts) = self.nodes.get(name).cloned()
                        {
                            self.publish_node(
                                &facts,
                                EventType::Warning,
                                events::CIDR_ASSIGNMENT_FAILED,
                                format!(
                                    "writing pod CIDRs {} failed ({e}); they stay reserved for this Node and the write is retried",
                                    cidrs.join(", ")
                                ),
                            )
                            .await;
                        }
                    }
                }
            }
        }
    }

    async fn refetch(&mut self, name: &str) {
        match self.nodes_api.get_opt(name).await {
            Ok(Some(node)) => {
                let facts = NodeFacts::from_node(&node);
                self.nodes.insert(name.to_owned(), facts.clone());
                if facts.pod_cidrs.is_empty() {
                    self.schedule_retry(name);
                } else {
                    self.retries.remove(name);
                    let report = self.alloc.adopt(&facts);
                    self.report_adoption(name, &report).await;
                    self.retry_waiting = true;
                }
            }
            Ok(None) => self.node_gone(name).await,
            Err(e) => {
                self.metrics
                    .failures
                    .with_label_values(&[kube_category(&e)])
                    .inc();
                self.schedule_retry(name);
            }
        }
    }

    /// Schedules the next attempt for `name`: immediately the first time, then 1 s, 2 s, 4 s, ...
    /// up to [`MAX_BACKOFF`]. Returns the attempt count.
    fn schedule_retry(&mut self, name: &str) -> u32 {
        let now = Instant::now();
        let entry = self.retries.entry(name.to_owned()).or_insert(Retry {
            at: now,
            attempts: 0,
        });
        entry.attempts = entry.attempts.saturating_add(1);
        let delay = if entry.attempts <= 1 {
            Duration::ZERO
        } else {
            Duration::from_secs(1u64 << (entry.attempts - 2).min(9)).min(MAX_BACKOFF)
        };
        entry.at = now + delay;
        entry.attempts
    }

    async fn report_adoption(&mut self, name: &str, report: &AdoptReport) {
        let Some(facts) = self.nodes.get(name).cloned() else {
            return;
        };
        let mut problems: Vec<(String, &str, String)> = Vec::new();
        if !report.foreign.is_empty() {
            let blocks: Vec<String> = report.foreign.iter().map(ToString::to_string).collect();
            problems.push((
                format!("foreign:{}", blocks.join(",")),
                events::FOREIGN_POD_CIDR,
                format!(
                    "pod CIDR(s) {} lie outside every ClusterCIDR; kept as they are (podCIDRs are immutable) and never handed to another Node",
                    blocks.join(", ")
                ),
            ));
            let selecting: Vec<String> = self
                .alloc
                .foreign()
                .filter(|(n, _)| *n == name)
                .flat_map(|(_, f)| f.selected_by.iter().map(|p| p.to_string()))
                .collect();
            for p in selecting {
                self.mark_dirty(&p);
            }
        }
        for (block, with) in &report.overlaps {
            problems.push((
                format!("overlap:{block}"),
                events::OVERLAPPING_POD_CIDR,
                format!(
                    "pod CIDR {block} overlaps the pod CIDRs of {}; Portway allocates around both, but the pod networks of these Nodes conflict",
                    with.join(", ")
                ),
            ));
        }
        if !report.unparsable.is_empty() {
            problems.push((
                format!("invalid:{}", report.unparsable.join(",")),
                events::INVALID_POD_CIDR,
                format!(
                    "spec.podCIDRs holds values that are not CIDRs: {}",
                    report.unparsable.join(", ")
                ),
            ));
        }
        for rec in self.alloc.node(name).into_iter() {
            for o in rec.cidrs.iter().filter_map(|a| a.owner.as_deref()) {
                self.dirty.insert(o.to_owned());
            }
        }
        self.schedule_flush();
        for (key, reason, note) in problems {
            let seen = self.reported.entry(name.to_owned()).or_default();
            if !seen.insert(key) {
                continue;
            }
            tracing::warn!(node = name, reason, note = %note, "problem with a Node's pod CIDRs");
            self.metrics
                .failures
                .with_label_values(&[match reason {
                    events::FOREIGN_POD_CIDR => "foreign",
                    events::OVERLAPPING_POD_CIDR => "overlap",
                    _ => "invalid_pod_cidr",
                }])
                .inc();
            self.publish_node(&facts, EventType::Warning, reason, note)
                .await;
        }
    }

    fn mark_dirty(&mut self, name: &str) {
        if !name.is_empty() {
            self.dirty.insert(name.to_owned());
            self.schedule_flush();
        }
    }

    fn mark_dirty_after(&mut self, name: &str, delay: Duration) {
        self.dirty.insert(name.to_owned());
        let at = Instant::now() + delay;
        self.flush_at = Some(self.flush_at.map_or(at, |t| t.max(at)));
    }

    fn schedule_flush(&mut self) {
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + STATUS_BATCH);
        }
    }

    async fn publish_node(&self, facts: &NodeFacts, type_: EventType, reason: &str, note: String) {
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(facts.name.clone()),
            uid: facts.uid.clone(),
            ..ObjectReference::default()
        };
        self.publish(&reference, type_, reason, note).await;
    }

    async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let mut note = note;
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: events::ACTION.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason, "publishing an Event failed");
        }
    }

    /// Creates the default ClusterCIDR if it does not exist. An existing one with another spec
    /// is kept (the spec is immutable) and reported with a Warning Event.
    pub async fn ensure_default(&self, want: ClusterCIDR) -> Result<(), Error> {
        let kube_err = |action: &str, source| Error::Kube {
            action: action.to_owned(),
            source,
        };
        match self
            .cidrs_api
            .get_opt(DEFAULT_CLUSTER_CIDR_NAME)
            .await
            .map_err(|e| kube_err("reading the default ClusterCIDR", e))?
        {
            None => {
                let params = PostParams {
                    field_manager: Some(DEFAULT_FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                match self.cidrs_api.create(&params, &want).await {
                    Ok(_) => {
                        tracing::info!(spec = ?want.spec, "created the default ClusterCIDR");
                        Ok(())
                    }
                    Err(e) if api_code(&e) == Some(409) => Ok(()),
                    Err(e) => Err(kube_err("creating the default ClusterCIDR", e)),
                }
            }
            Some(current) if current.spec == want.spec => Ok(()),
            Some(current) => {
                let note = format!(
                    "ClusterCIDR {DEFAULT_CLUSTER_CIDR_NAME} exists with another spec than \
                     --default-cluster-cidr and --default-*-host-bits describe; it is kept (a \
                     ClusterCIDR's spec is immutable). To change it, create a new ClusterCIDR; \
                     delete this one when its Nodes are gone"
                );
                tracing::warn!(current = ?current.spec, wanted = ?want.spec, "{note}");
                let reference = current.object_ref(&());
                self.publish(
                    &reference,
                    EventType::Warning,
                    events::DEFAULT_MISMATCH,
                    note,
                )
                .await;
                Ok(())
            }
        }
    }
}

/// What of a ClusterCIDR the allocation state depends on (not its status).
fn structure(c: &ClusterCIDR) -> (&ClusterCIDRSpec, Option<i64>, bool, bool) {
    (
        &c.spec,
        c.metadata.generation,
        c.metadata.deletion_timestamp.is_some(),
        has_finalizer(c),
    )
}

fn has_finalizer(c: &ClusterCIDR) -> bool {
    c.finalizers().iter().any(|f| f == CLUSTER_CIDR_FINALIZER)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_build_the_default_cluster_cidr() {
        let cli = Cli::try_parse_from([
            "x",
            "--default-cluster-cidr",
            "10.42.0.0/16,fd00:10:42::/56",
            "--default-ipv6-per-node-host-bits",
            "64",
        ])
        .unwrap();
        assert!(cli.args.clustercidr_enabled);
        let c = cli.args.default_cluster_cidr().unwrap().unwrap();
        assert_eq!(c.metadata.name.as_deref(), Some("default"));
        assert_eq!(c.spec.ipv4.as_deref(), Some("10.42.0.0/16"));
        assert_eq!(c.spec.ipv6.as_deref(), Some("fd00:10:42::/56"));
        assert_eq!(
            (c.spec.per_node_host_bits, c.spec.ipv6_per_node_host_bits),
            (8, Some(64))
        );
        assert_eq!(c.spec.priority, DEFAULT_PRIORITY);
        assert!(c.spec.node_selector.is_none());

        let v6 = Cli::try_parse_from(["x", "--default-cluster-cidr", "fd00::/48"]).unwrap();
        let c = v6.args.default_cluster_cidr().unwrap().unwrap();
        assert_eq!(
            (c.spec.per_node_host_bits, c.spec.ipv6_per_node_host_bits),
            (64, None)
        );

        let none = Cli::try_parse_from(["x", "--clustercidr-enabled=false"]).unwrap();
        assert!(!none.args.clustercidr_enabled);
        assert!(none.args.default_cluster_cidr().unwrap().is_none());
        assert_eq!(Cli::try_parse_from(["x"]).unwrap().args, Args::default());
    }

    #[test]
    fn bad_flags_are_rejected_with_reasons() {
        let err = Cli::try_parse_from(["x", "--default-cluster-cidr", "10.42.1.0/16"]).unwrap_err();
        assert!(err.to_string().contains("host bits set"), "{err}");
        let two = Cli::try_parse_from(["x", "--default-cluster-cidr", "10.42.0.0/16,10.43.0.0/16"])
            .unwrap();
        let err = two.args.default_cluster_cidr().unwrap_err().to_string();
        assert!(err.contains("at most one range per family"), "{err}");
        let small = Cli::try_parse_from(["x", "--default-cluster-cidr", "10.42.0.0/28"]).unwrap();
        let err = small.args.default_cluster_cidr().unwrap_err().to_string();
        assert!(err.contains("per-node host bits must not exceed"), "{err}");
        assert!(Cli::try_parse_from(["x", "--default-per-node-host-bits", "2"]).is_err());
    }

    #[test]
    fn metrics_register_once_with_the_documented_names() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        m.allocations.with_label_values(&["default"]).inc();
        m.free.with_label_values(&["default", "ipv4"]).set(3.0);
        m.releases.with_label_values(&["default"]).inc();
        m.failures.with_label_values(&["exhausted"]).inc();
        let names: BTreeSet<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for n in [
            "portway_clustercidr_allocations_total",
            "portway_clustercidr_releases_total",
            "portway_clustercidr_failures_total",
            "portway_clustercidr_free_cidrs",
        ] {
            assert!(names.contains(n), "{n} in {names:?}");
        }
        assert!(
            Metrics::register(&registry).is_err(),
            "a second registration is refused"
        );
    }
}
