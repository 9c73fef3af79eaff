//! Shared state of the ServiceLB controller: the stores every reconcile reads, the cached global
//! assignment, metrics, the Event recorder and the clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use portway_crds::{LoadBalancerPool, ServiceLoadBalancer};

use super::{CONTROLLER_NAME, ServiceLbArgs};
use crate::metrics::Metrics;
use crate::plan::{self, Assignment, Config, Key, Observed};

/// Read handles of every cache the controller uses.
#[derive(Clone)]
pub struct Stores {
    pub services: Store<Service>,
    pub nodes: Store<Node>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub pools: Store<LoadBalancerPool>,
    pub namespaces: Store<Namespace>,
    pub service_load_balancers: Store<ServiceLoadBalancer>,
    pub daemonsets: Store<DaemonSet>,
    pub role_bindings: Store<RoleBinding>,
}

fn ready<K>(s: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    s.wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

impl Stores {
    /// True once every store has completed its first list.
    pub fn ready(&self) -> bool {
        ready(&self.services)
            && ready(&self.nodes)
            && ready(&self.endpoint_slices)
            && ready(&self.pools)
            && ready(&self.namespaces)
            && ready(&self.service_load_balancers)
            && ready(&self.daemonsets)
            && ready(&self.role_bindings)
    }

    /// Everything observed. Children (ServiceLoadBalancers, DaemonSets, RoleBindings) are read
    /// before Services, so every child in the snapshot has its Service in it too, unless that
    /// Service is really gone: the orphan sweep never deletes what a concurrent reconcile just
    /// created.
    pub fn snapshot(&self) -> Observed {
        let service_load_balancers = self.service_load_balancers.state();
        let daemonsets = self.daemonsets.state();
        let role_bindings = self.role_bindings.state();
        let endpoint_slices = self.endpoint_slices.state();
        Observed {
            services: self.services.state(),
            nodes: self.nodes.state(),
            endpoint_slices,
            pools: self.pools.state(),
            namespaces: self.namespaces.state(),
            service_load_balancers,
            daemonsets,
            role_bindings,
        }
    }

    /// The global inputs only (what [`plan::assign::assign`] reads).
    pub fn assignment_input(&self) -> Observed {
        Observed {
            services: self.services.state(),
            nodes: self.nodes.state(),
            pools: self.pools.state(),
            namespaces: self.namespaces.state(),
            ..Default::default()
        }
    }
}

/// Source of "now" for conditions (tests pin it).
pub type Clock = Arc<dyn Fn() -> Time + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| Time(k8s_openapi::jiff::Timestamp::now()))
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub args: ServiceLbArgs,
    pub stores: Stores,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub clock: Clock,
    /// Bumped whenever an input of the global assignment changes.
    pub version: Arc<AtomicU64>,
    cached: Mutex<Option<(u64, Arc<Assignment>)>>,
    failures: Mutex<HashMap<Key, u32>>,
    /// Last Event published per Service for problems without a ServiceLoadBalancer.
    emitted: Mutex<HashMap<Key, (String, String)>>,
    /// Generation each DaemonSet had after Portway's last apply of it.
    generations: Mutex<HashMap<Key, i64>>,
    /// Periodic resync of each Service.
    pub resync: Duration,
}

/// Locks a mutex, recovering the data if another thread panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Context {
    pub fn new(
        client: Client,
        args: ServiceLbArgs,
        stores: Stores,
        metrics: Metrics,
        clock: Clock,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.to_owned(),
                instance,
            },
        );
        Self {
            client,
            args,
            stores,
            metrics,
            recorder,
            clock,
            version: Arc::new(AtomicU64::new(1)),
            cached: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
            emitted: Mutex::new(HashMap::new()),
            generations: Mutex::new(HashMap::new()),
            resync: Duration::from_secs(300),
        }
    }

    /// The core's configuration, now.
    pub fn config(&self) -> Config {
        self.args.config((self.clock)())
    }

    /// Marks the cached assignment stale.
    pub fn invalidate(&self) {
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// The global assignment, recomputed only when its inputs changed since the last call.
    pub fn assignment(&self) -> Arc<Assignment> {
        let mut cached = lock(&self.cached);
        let version = self.version.load(Ordering::SeqCst);
        if let Some((v, a)) = cached.as_ref()
            && *v == version
        {
            return a.clone();
        }
        let a = Arc::new(plan::assign::assign(
            &self.stores.assignment_input(),
            &self.config(),
        ));
        *cached = Some((version, a.clone()));
        a
    }

    /// Records a failure of `key`'s reconcile and returns how long to wait before the retry:
    /// 1 s, 2 s, 4 s, ... up to 5 minutes.
    pub fn backoff(&self, key: &Key) -> Duration {
        let mut f = lock(&self.failures);
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let secs = 1u64 << (*n - 1).min(8);
        Duration::from_secs(secs.min(300))
    }

    /// Forgets `key`'s failures after a successful reconcile.
    pub fn succeeded(&self, key: &Key) {
        lock(&self.failures).remove(key);
    }

    /// True (and remembered) when this Event differs from the last one published for `key`.
    pub fn first_time(&self, key: &Key, reason: &str, note: &str) -> bool {
        let mut e = lock(&self.emitted);
        let next = (reason.to_owned(), note.to_owned());
        if e.get(key) == Some(&next) {
            return false;
        }
        e.insert(key.clone(), next);
        true
    }

    /// Generation a DaemonSet had after our last apply, if any since start.
    pub fn applied_generation(&self, key: &Key) -> Option<i64> {
        lock(&self.generations).get(key).copied()
    }

    /// Remembers the generation our apply of a DaemonSet returned.
    pub fn remember_generation(&self, key: &Key, generation: i64) {
        lock(&self.generations).insert(key.clone(), generation);
    }

    /// Forgets Events of a Service that went away.
    pub fn forget(&self, key: &Key) {
        lock(&self.emitted).remove(key);
        lock(&self.failures).remove(key);
    }
}
