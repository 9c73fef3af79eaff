//! ServiceLB controller (shell): watches Services, Nodes, EndpointSlices, pools, Namespaces,
//! ServiceLoadBalancers, DaemonSets and RoleBindings; calls the pure core; writes what differs.
//!
//! - One kube-runtime `Controller` reconciles Services ([`reconcile::reconcile`]). Its triggers:
//!   the Service itself, its ServiceLoadBalancer (owner reference), its DaemonSet (labels), its
//!   EndpointSlices (label), the agent RoleBinding of its namespace, and — for changes that can
//!   move port claims or pools (Nodes, pools, Namespaces, Service specs) — every Service.
//! - [`sweep::sweep`] keeps pool statuses and deletes orphans.
//! - Watches restart with kube's default exponential backoff after a disconnect; failed
//!   reconciles are retried with a per-Service backoff.

mod args;
pub mod context;
pub mod diff;
pub mod error;
pub mod reconcile;
pub mod sweep;
pub mod watch;
pub mod writes;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, controller};
use kube::{Api, Client};
use portway_crds::{LoadBalancerPool, ServiceLoadBalancer};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use args::{FALLBACK_NAMESPACE, ServiceLbArgs};
use context::{Context, Stores};
pub use error::Error;

use crate::metrics::Metrics;
use crate::plan::names;

/// Field manager of every write (server-side apply with force).
pub const FIELD_MANAGER: &str = "servicelb.portway.dev";
/// Event reporter of the controller.
pub const CONTROLLER_NAME: &str = "servicelb.portway.dev";
/// Label value of this controller in metrics and spans.
pub const CONTROLLER: &str = "servicelb";

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Runs the ServiceLB controller until `shutdown` is cancelled.
pub async fn run(
    client: Client,
    args: ServiceLbArgs,
    registry: &prometheus::Registry,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Metrics::register(registry)?;
    let instance = std::env::var("POD_NAME").ok();

    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (node_reader, node_writer) = reflector::store::<Node>();
    let (slice_reader, slice_writer) = reflector::store::<EndpointSlice>();
    let (pool_reader, pool_writer) = reflector::store::<LoadBalancerPool>();
    let (ns_reader, ns_writer) = reflector::store::<Namespace>();
    let (slb_reader, slb_writer) = reflector::store::<ServiceLoadBalancer>();
    let (ds_reader, ds_writer) = reflector::store::<DaemonSet>();
    let (rb_reader, rb_writer) = reflector::store::<RoleBinding>();
    let stores = Stores {
        services: svc_reader.clone(),
        nodes: node_reader,
        endpoint_slices: slice_reader,
        pools: pool_reader,
        namespaces: ns_reader,
        service_load_balancers: slb_reader,
        daemonsets: ds_reader,
        role_bindings: rb_reader,
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        args.clone(),
        stores,
        metrics,
        context::system_clock(),
        instance,
    ));
    let hooks = watch::Hooks::new(ctx.version.clone());

    let services = watch::objects(
        Api::<Service>::all(client.clone()),
        Default::default(),
        svc_writer,
        hooks.global(watch::service_fingerprint),
    );
    let nodes = watch::objects(
        Api::<Node>::all(client.clone()),
        Default::default(),
        node_writer,
        hooks.global(watch::node_fingerprint),
    );
    let pools = watch::objects(
        Api::<LoadBalancerPool>::all(client.clone()),
        Default::default(),
        pool_writer,
        hooks.global(watch::pool_fingerprint),
    );
    let namespaces = watch::objects(
        Api::<Namespace>::all(client.clone()),
        Default::default(),
        ns_writer,
        hooks.global(watch::namespace_fingerprint),
    );
    let slices = watch::objects(
        Api::<EndpointSlice>::all(client.clone()),
        kube::runtime::watcher::Config::default()
            .labels(portway_crds::names::ENDPOINTSLICE_SERVICE_LABEL),
        slice_writer,
        hooks.local(),
    );
    let slbs = watch::objects(
        Api::<ServiceLoadBalancer>::all(client.clone()),
        Default::default(),
        slb_writer,
        hooks.local(),
    );
    let daemonsets = watch::objects(
        Api::<DaemonSet>::namespaced(client.clone(), &args.namespace),
        kube::runtime::watcher::Config::default().labels(&names::managed_daemonsets_selector()),
        ds_writer,
        hooks.local(),
    );
    let role_bindings = watch::objects(
        Api::<RoleBinding>::all(client.clone()),
        kube::runtime::watcher::Config::default().labels(&names::managed_role_bindings_selector()),
        rb_writer,
        hooks.local(),
    );

    // Global changes re-plan every Service (the scheduler merges queued duplicates).
    // Node, pool and Namespace streams only keep their stores and signal through their hooks.
    let silent =
        |s: futures::stream::BoxStream<'static, ()>| s.filter_map(|_| async { None::<()> }).boxed();
    let reconcile_all = futures::stream::select_all(vec![
        silent(nodes.map(|_| ()).boxed()),
        silent(pools.map(|_| ()).boxed()),
        silent(namespaces.map(|_| ()).boxed()),
        hooks.all_services().boxed(),
    ]);

    let svc_store = svc_reader.clone();
    let controller = Controller::for_stream(services, svc_reader)
        .owns_stream(slbs)
        .watches_stream(daemonsets, |ds: DaemonSet| {
            names::daemonset_target(&ds).map(|k| ObjectRef::new(&k.name).within(&k.namespace))
        })
        .watches_stream(slices, |s: EndpointSlice| {
            let ns = s.metadata.namespace.clone()?;
            let svc = s
                .metadata
                .labels
                .as_ref()?
                .get(portway_crds::names::ENDPOINTSLICE_SERVICE_LABEL)?
                .clone();
            Some(ObjectRef::<Service>::new(&svc).within(&ns))
        })
        .watches_stream(role_bindings, move |rb: RoleBinding| {
            let ns = rb.metadata.namespace.clone().unwrap_or_default();
            svc_store
                .state()
                .iter()
                .filter(|s| s.metadata.namespace.as_deref() == Some(ns.as_str()))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .reconcile_all_on(reconcile_all)
        .with_config(
            controller::Config::default()
                .debounce(Duration::from_millis(200))
                .concurrency(8),
        )
        .graceful_shutdown_on({
            let token = shutdown.clone();
            async move { token.cancelled().await }
        });

    let sweeper = tokio::spawn(sweep_loop(ctx.clone(), hooks.changes(), shutdown.clone()));
    info!(namespace = %args.namespace, class = %args.load_balancer_class, "ServiceLB controller started");
    controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(service = %obj, "reconciled"),
                Err(controller::Error::ReconcilerFailed(_, _)) => {}
                Err(e) => warn!("controller: {e}"),
            }
        })
        .await;
    shutdown.cancel();
    let _ = sweeper.await;
    info!("ServiceLB controller stopped");
    Ok(())
}

/// Sweeps once the caches are synced, then after changes (debounced 2 s) and every minute.
async fn sweep_loop(
    ctx: Arc<Context>,
    changes: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let wait = if ctx.stores.ready() {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changes.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        match sweep::sweep(&ctx).await {
            Ok(r) if r != sweep::SweepReport::default() => info!(?r, "sweep"),
            Ok(_) | Err(Error::NotReady) => {}
            Err(e) => {
                ctx.metrics
                    .errors
                    .with_label_values(&["servicelb-sweep", e.category()])
                    .inc();
                warn!("sweep failed: {e}");
            }
        }
    }
}
