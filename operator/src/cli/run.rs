//! `portway run`: the operator process. Thin: it wires signals, the metrics server, the RBAC
//! check, leader election and the controllers; the controllers live in `crate::controllers`.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::controllers::servicelb::ServiceLbArgs;

/// Arguments of `portway run`.
#[derive(clap::Args, Debug, Clone)]
#[group(id = "run-args")]
pub struct Args {
    /// Run the ServiceLB controller (LoadBalancer Services -> node-agent DaemonSets).
    #[arg(long, env = "PORTWAY_SERVICELB_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub servicelb_enabled: bool,

    #[command(flatten)]
    pub servicelb: ServiceLbArgs,

    #[command(flatten)]
    pub clustercidr: crate::controllers::clustercidr::Args,

    /// Start only after winning the `portway-operator` Lease in `--namespace` (two replicas are
    /// then safe); exit when it is lost.
    #[arg(long, env = "PORTWAY_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Address of the `/metrics`, `/healthz` and `/readyz` listener. `[::]` listens on both
    /// families (IPv4 alone where the kernel has no IPv6).
    #[arg(long, env = "PORTWAY_METRICS_ADDR", default_value = "[::]:9463")]
    pub metrics_addr: SocketAddr,

    /// Skip the start-up RBAC check (SelfSubjectAccessReview of every permission used).
    #[arg(long, default_value_t = false)]
    pub skip_permission_check: bool,

    /// Log format.
    #[arg(long, env = "PORTWAY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Why `portway run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach the Kubernetes API (kubeconfig or in-cluster service account): {0}")]
    Client(#[from] kube::Error),
    #[error("{0}")]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error(
        "the operator's RBAC is missing {}: grant them in the portway-operator ClusterRole (the Helm chart does), or run with --skip-permission-check",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    MissingPermissions(Vec<crate::preflight::Missing>),
    #[error(transparent)]
    Lease(#[from] crate::controllers::lease::LeaseError),
    #[error("ServiceLB controller: {0}")]
    ServiceLb(#[from] crate::controllers::servicelb::RunError),
    #[error("ClusterCIDR controller: {0}")]
    ClusterCidr(#[from] crate::controllers::clustercidr::Error),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("metrics listener on {addr}: {source}")]
    Server {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// This replica's identity in the Lease: `POD_NAME`, else the hostname, plus the process id.
fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "portway-operator".to_owned());
    format!("{base}_{}", std::process::id())
}

/// Runs `portway run` until a signal or a lost Lease.
pub fn main(args: Args) -> std::process::ExitCode {
    init_tracing(&args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portway run: {}", RunError::Runtime(e));
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("portway run: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = shutdown.cancelled() => return,
            }
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("signal received, shutting down");
    shutdown.cancel();
}

/// What [`run`] takes from its process: the client (kubeconfig or in-cluster service account),
/// the Lease identity, a fresh metrics registry and the signal-driven shutdown. Tests pass their
/// own to [`run_with`]: an operator in-process against a test API server, as any identity, two
/// replicas with different Lease identities, and read its metrics.
pub struct Process {
    pub client: kube::Client,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Every metric is registered here (and served on `--metrics-addr`).
    pub registry: prometheus::Registry,
    /// Cancel to stop (releases the Lease); cancelled by `run_with` when it stops on its own.
    pub shutdown: CancellationToken,
}

/// The whole operator: signals, metrics server, RBAC check, leader election, controllers.
pub async fn run(args: Args) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let client = kube::Client::try_default().await?;
    let process = Process {
        client,
        identity: identity(),
        registry: prometheus::Registry::new(),
        shutdown,
    };
    run_with(args, process).await
}

/// [`run`] with the client, identity, registry and shutdown given: metrics server, RBAC check,
/// leader election, controllers.
pub async fn run_with(args: Args, process: Process) -> Result<(), RunError> {
    use crate::controllers::{clustercidr, lease, servicelb};
    use crate::permissions;
    use crate::server::Phase;

    let Process {
        client,
        identity,
        registry,
        shutdown,
    } = process;
    let health = crate::server::Health::default();
    let addr = args.metrics_addr;
    let server = tokio::spawn(crate::server::serve(
        addr,
        registry.clone(),
        health.clone(),
        shutdown.clone(),
    ));

    if !args.skip_permission_check {
        let mut needed: Vec<permissions::Permission> = permissions::COMMON.to_vec();
        if args.servicelb_enabled {
            needed.extend_from_slice(permissions::SERVICELB);
        }
        if args.clustercidr.clustercidr_enabled {
            needed.extend_from_slice(permissions::CLUSTERCIDR);
        }
        let missing = crate::preflight::check(&client, &needed).await?;
        if !missing.is_empty() {
            shutdown.cancel();
            return Err(RunError::MissingPermissions(missing));
        }
        tracing::info!(checked = needed.len(), "RBAC check passed");
    }
    health.set(Phase::Standby);

    let leader = prometheus::IntGauge::new(
        "portway_operator_leader",
        "1 while this replica holds the leader Lease",
    )?;
    registry.register(Box::new(leader.clone()))?;
    let lease_task = if args.leader_election {
        let settings = lease::LeaseSettings::new(&args.servicelb.namespace, &identity);
        if !lease::acquire(&client, &settings, &shutdown).await {
            return Ok(());
        }
        leader.set(1);
        let (client, shutdown) = (client.clone(), shutdown.clone());
        Some(tokio::spawn(async move {
            let result = lease::hold(&client, &settings, &shutdown).await;
            // Lost or released: stop everything either way.
            shutdown.cancel();
            result
        }))
    } else {
        leader.set(1);
        None
    };
    health.set(Phase::Leading);

    let slb = async {
        if args.servicelb_enabled {
            servicelb::run(
                client.clone(),
                args.servicelb.clone(),
                &registry,
                shutdown.clone(),
            )
            .await?;
        } else {
            tracing::info!("ServiceLB controller disabled (--servicelb-enabled=false)");
            shutdown.cancelled().await;
        }
        Ok::<(), RunError>(())
    };
    let cidr = async {
        let token = shutdown.clone();
        clustercidr::run(
            client.clone(),
            args.clustercidr.clone(),
            &registry,
            async move { token.cancelled().await },
        )
        .await
        .map_err(RunError::from)
    };
    let result = futures::future::try_join(slb, cidr).await;
    shutdown.cancel();
    health.set(Phase::Stopping);
    leader.set(0);
    if let Some(task) = lease_task
        && let Ok(Err(lost)) = task.await
    {
        return Err(lost.into());
    }
    if let Ok(Err(source)) = server.await {
        return Err(RunError::Server { addr, source });
    }
    result.map(|_| ())
}
