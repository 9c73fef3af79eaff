//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process runs),
//! `/readyz` (it leads and its controllers have started).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// Readiness shared with the controllers.
#[derive(Clone, Debug, Default)]
pub struct Health {
    ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    health: Health,
}

/// The router (also used by tests without a socket).
pub fn router(registry: Registry, health: Health) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { crate::metrics::render(&s.registry) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.health.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: waiting for the leader Lease or the caches",
                    )
                }
            }),
        )
        .with_state(AppState { registry, health })
}

/// Serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(registry, health))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
