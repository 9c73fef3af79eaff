//! Watch plumbing: one reflector stream per kind feeds its store and the controller's triggers.
//! Kinds that change the global assignment (Services, Nodes, pools, Namespaces) pass through a
//! fingerprint filter, so only changes of the fields the core reads (not a Node's heartbeat, not
//! the ingress Portway itself writes) invalidate the cached assignment and re-plan every Service.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use portway_crds::LoadBalancerPool;
use portway_crds::names as n;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::warn;

use super::context::lock;

/// Hash of a serializable projection (in-process only).
fn hash_of<T: serde::Serialize>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_string(v).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Fields of a Service the global assignment reads.
pub fn service_fingerprint(s: &Service) -> u64 {
    let spec = s.spec.as_ref();
    hash_of(&(
        spec.map(|s| {
            (
                &s.type_,
                &s.load_balancer_class,
                &s.ports,
                &s.cluster_ips,
                &s.cluster_ip,
            )
        }),
        spec.map(|s| {
            (
                &s.ip_families,
                &s.external_traffic_policy,
                &s.load_balancer_source_ranges,
            )
        }),
        &s.metadata.labels,
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(n::POOL_ANNOTATION)),
        s.metadata.deletion_timestamp.is_some(),
        &s.metadata.creation_timestamp,
    ))
}

/// Fields of a Node the global assignment reads.
pub fn node_fingerprint(node: &Node) -> u64 {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| c.status.clone())
        });
    hash_of(&(
        &node.metadata.labels,
        node.status.as_ref().map(|s| &s.addresses),
        node.metadata.deletion_timestamp.is_some(),
        ready,
    ))
}

/// Fields of a pool the global assignment reads.
pub fn pool_fingerprint(p: &LoadBalancerPool) -> u64 {
    hash_of(&(&p.spec, p.metadata.deletion_timestamp.is_some()))
}

/// Fields of a Namespace the global assignment reads.
pub fn namespace_fingerprint(ns: &Namespace) -> u64 {
    hash_of(&ns.metadata.labels)
}

/// Shared signals of all watch streams.
pub struct Hooks {
    version: Arc<AtomicU64>,
    changes: Arc<Notify>,
    all_tx: mpsc::UnboundedSender<()>,
    all_rx: Mutex<Option<mpsc::UnboundedReceiver<()>>>,
}

/// Per-stream change detection.
pub struct Hook<K> {
    fingerprint: Option<fn(&K) -> u64>,
    seen: HashMap<String, u64>,
    relist: HashMap<String, u64>,
    version: Arc<AtomicU64>,
    changes: Arc<Notify>,
    all_tx: Option<mpsc::UnboundedSender<()>>,
}

impl Hooks {
    pub fn new(version: Arc<AtomicU64>) -> Self {
        let (all_tx, all_rx) = mpsc::unbounded();
        Self {
            version,
            changes: Arc::new(Notify::new()),
            all_tx,
            all_rx: Mutex::new(Some(all_rx)),
        }
    }

    /// A hook for a kind the global assignment reads.
    pub fn global<K>(&self, fingerprint: fn(&K) -> u64) -> Hook<K> {
        Hook {
            fingerprint: Some(fingerprint),
            seen: HashMap::new(),
            relist: HashMap::new(),
            version: self.version.clone(),
            changes: self.changes.clone(),
            all_tx: Some(self.all_tx.clone()),
        }
    }

    /// A hook for a kind that concerns single Services only.
    pub fn local<K>(&self) -> Hook<K> {
        Hook {
            fingerprint: None,
            seen: HashMap::new(),
            relist: HashMap::new(),
            version: self.version.clone(),
            changes: self.changes.clone(),
            all_tx: None,
        }
    }

    /// Fires once per global change: re-plan every Service.
    pub fn all_services(&self) -> impl Stream<Item = ()> + Send + 'static {
        let rx = lock(&self.all_rx).take();
        futures::stream::iter(rx).flatten()
    }

    /// Notified on every change of any kind (for the sweep).
    pub fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }
}

fn key_of<K: Resource>(o: &K) -> String {
    format!(
        "{}/{}",
        o.meta().namespace.as_deref().unwrap_or_default(),
        o.meta().name.as_deref().unwrap_or_default()
    )
}

impl<K: Resource> Hook<K> {
    /// Looks at one watch event; signals when it changes what the core reads.
    pub fn observe(&mut self, ev: &watcher::Event<K>) {
        self.changes.notify_one();
        let Some(fp) = self.fingerprint else {
            return;
        };
        let relevant = match ev {
            watcher::Event::Apply(o) => {
                let f = fp(o);
                self.seen.insert(key_of(o), f) != Some(f)
            }
            watcher::Event::Delete(o) => self.seen.remove(&key_of(o)).is_some(),
            watcher::Event::Init => {
                self.relist.clear();
                false
            }
            watcher::Event::InitApply(o) => {
                self.relist.insert(key_of(o), fp(o));
                false
            }
            watcher::Event::InitDone => {
                let changed = self.relist != self.seen;
                self.seen = std::mem::take(&mut self.relist);
                changed
            }
        };
        if relevant {
            self.version.fetch_add(1, Ordering::SeqCst);
            if let Some(tx) = &self.all_tx {
                let _ = tx.unbounded_send(());
            }
        }
    }
}

/// Drops what the controller never reads before an object enters a store, so memory follows
/// what the core needs, not what the API server sends (a Node's image list alone can be tens
/// of KiB).
pub trait Slim {
    fn slim(&mut self);
}

macro_rules! slim_meta_only {
    ($($t:ty),*) => {$(
        impl Slim for $t {
            fn slim(&mut self) {
                self.metadata.managed_fields = None;
            }
        }
    )*};
}
slim_meta_only!(
    k8s_openapi::api::core::v1::Service,
    k8s_openapi::api::core::v1::Namespace,
    k8s_openapi::api::rbac::v1::RoleBinding,
    portway_crds::LoadBalancerPool,
    portway_crds::ServiceLoadBalancer
);

impl Slim for k8s_openapi::api::core::v1::Node {
    /// Keeps labels, addresses and the Ready condition.
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.spec = None;
        if let Some(st) = self.status.as_mut() {
            *st = k8s_openapi::api::core::v1::NodeStatus {
                addresses: st.addresses.take(),
                conditions: st
                    .conditions
                    .take()
                    .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
                ..Default::default()
            };
        }
    }
}

impl Slim for k8s_openapi::api::discovery::v1::EndpointSlice {
    /// Keeps, per endpoint, one address, the node and the conditions.
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.ports = None;
        for e in &mut self.endpoints {
            e.addresses.truncate(1);
            e.hints = None;
            e.target_ref = None;
            e.deprecated_topology = None;
            e.hostname = None;
            e.zone = None;
        }
    }
}

/// Annotation that exists only in the operator's DaemonSet cache (never on the server): the
/// field manager other than Portway's that owns fields of the DaemonSet's `spec`, i.e. someone
/// edited it. Read by `writes::apply_daemonset` when it has no generation of its own apply to
/// compare with (after a restart or a leader hand-over).
pub const SPEC_EDITED_BY_CACHE_MARK: &str = "cache.portway.dev/spec-edited-by";

/// The first field manager other than `ours` that owns fields under `spec` (not through a
/// subresource such as `status`), if any.
pub fn foreign_spec_manager(
    managed: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry]>,
    ours: &str,
) -> Option<String> {
    managed?.iter().find_map(|m| {
        let manager = m.manager.as_deref().unwrap_or_default();
        let main_resource = m.subresource.as_deref().is_none_or(str::is_empty);
        let owns_spec = m
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:spec"))
            .and_then(serde_json::Value::as_object)
            .is_some_and(|o| !o.is_empty());
        (manager != ours && main_resource && owns_spec).then(|| {
            if manager.is_empty() {
                "(unnamed manager)".to_owned()
            } else {
                manager.to_owned()
            }
        })
    })
}

impl Slim for k8s_openapi::api::apps::v1::DaemonSet {
    /// Keeps metadata only: the desired-hash annotation says whether the spec is Portway's
    /// latest, and the generation the last apply returned (remembered in memory) catches edits
    /// by anyone else while the operator runs. Edits made before it started (while it was down,
    /// or under another leader) show in managedFields: a foreign manager owning `spec` fields is
    /// kept as the cache-only `SPEC_EDITED_BY_CACHE_MARK` annotation before managedFields go.
    fn slim(&mut self) {
        let editor = foreign_spec_manager(
            self.metadata.managed_fields.as_deref(),
            super::FIELD_MANAGER,
        );
        self.metadata.managed_fields = None;
        self.spec = None;
        self.status = None;
        if let Some(a) = self.metadata.annotations.as_mut() {
            a.remove(SPEC_EDITED_BY_CACHE_MARK);
        }
        if let Some(editor) = editor {
            self.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(SPEC_EDITED_BY_CACHE_MARK.to_owned(), editor);
        }
    }
}

/// A watch of `api` that keeps `writer`'s store, tells `hook` about every event, restarts with
/// exponential backoff after errors, and yields every object it sees (applied or deleted).
pub fn objects<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    mut hook: Hook<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Slim + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    watcher(api, config)
        .default_backoff()
        // Fields never read (managedFields, Node images, DaemonSet specs) stay out of the stores.
        .modify(|o: &mut K| o.slim())
        .reflect(writer)
        .filter_map(move |ev| {
            let out = match ev {
                Ok(e) => {
                    hook.observe(&e);
                    match e {
                        watcher::Event::Apply(o)
                        | watcher::Event::Delete(o)
                        | watcher::Event::InitApply(o) => Some(Ok(o)),
                        watcher::Event::Init | watcher::Event::InitDone => None,
                    }
                }
                Err(e) => {
                    warn!(kind = %K::kind(&Default::default()), "watch failed, retrying with backoff: {e}");
                    Some(Err(e))
                }
            };
            futures::future::ready(out)
        })
}
