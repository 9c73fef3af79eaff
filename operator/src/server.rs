//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process runs),
//! `/readyz` (the replica passed its start-up checks and either leads or stands by).
//!
//! A standby is ready: readiness says "this pod can do its job", and a standby's job is to be
//! there when the leader goes. Were only the leader ready, a rolling update could never finish:
//! the new pod waits for the Lease that the old pod only releases once the new one is ready
//! (client-go and controller-runtime operators behave the same way). Who leads is the
//! `portway_operator_leader` gauge and the Lease itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::Registry;
use tokio_util::sync::CancellationToken;

/// Where a replica is in its life, as `/readyz` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Start-up checks (RBAC) not passed yet: not ready.
    Starting = 0,
    /// Waiting for the leader Lease: ready, so that a rollout can move on.
    Standby = 1,
    /// Holds the Lease (or runs without leader election): ready.
    Leading = 2,
    /// Shutting down: not ready.
    Stopping = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Standby,
            2 => Phase::Leading,
            3 => Phase::Stopping,
            _ => Phase::Starting,
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(self) -> bool {
        matches!(self, Phase::Standby | Phase::Leading)
    }

    /// The body of `/readyz`.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Starting => "not ready: starting (RBAC check)",
            Phase::Standby => "ready: standby, waiting for the leader Lease",
            Phase::Leading => "ready: leading",
            Phase::Stopping => "not ready: stopping",
        }
    }
}

/// Readiness shared with the controllers.
#[derive(Clone, Debug)]
pub struct Health {
    phase: Arc<AtomicU8>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            phase: Arc::new(AtomicU8::new(Phase::Starting as u8)),
        }
    }
}

impl Health {
    pub fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
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
                let phase = s.health.phase();
                let code = if phase.is_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, phase.describe())
            }),
        )
        .with_state(AppState { registry, health })
}

/// Where to listen for `addr`: the address itself and, for the IPv6 wildcard `[::]`, the IPv4
/// wildcard after it. On Linux `[::]` takes both families (IPV6_V6ONLY is off by default), so
/// IPv6-only and dual-stack pods are reachable; where the kernel has no IPv6 the bind of `[::]`
/// fails and the IPv4 wildcard is used instead (tokio tries the candidates in order).
pub fn listen_candidates(addr: SocketAddr) -> Vec<SocketAddr> {
    let mut out = vec![addr];
    if addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        out.push(SocketAddr::from(([0, 0, 0, 0], addr.port())));
    }
    out
}

/// Serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen_candidates(addr).as_slice()).await?;
    axum::serve(listener, router(registry, health))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn readyz(health: &Health) -> (StatusCode, String) {
        let response = router(Registry::new(), health.clone())
            .oneshot(
                Request::get("/readyz")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// `[::]` takes both families: an IPv6-only pod's kubelet probes its IPv6 address, a
    /// dual-stack or IPv4 one its IPv4 address.
    #[tokio::test]
    async fn the_ipv6_wildcard_listens_on_both_families() {
        let any6: SocketAddr = "[::]:0".parse().expect("addr");
        assert_eq!(
            listen_candidates(any6),
            [any6, SocketAddr::from(([0, 0, 0, 0], 0))]
        );
        let v4: SocketAddr = "127.0.0.1:9463".parse().expect("addr");
        assert_eq!(listen_candidates(v4), [v4], "a given address is used as is");
        let listener = tokio::net::TcpListener::bind(listen_candidates(any6).as_slice())
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        for client in ["127.0.0.1", "::1"] {
            let ip: std::net::IpAddr = client.parse().expect("ip");
            if ip.is_ipv6() && !listener.local_addr().expect("addr").is_ipv6() {
                continue; // no IPv6 on this kernel: the IPv4 fallback was bound
            }
            let connect = tokio::net::TcpStream::connect((ip, port));
            let (connected, accepted) = tokio::join!(connect, listener.accept());
            assert!(
                connected.is_ok() && accepted.is_ok(),
                "{client}: {connected:?}"
            );
        }
    }

    /// A standby must be ready, or a rolling update of the operator Deployment never finishes:
    /// the new pod would wait for the Lease that the old pod releases only when it is removed,
    /// which the Deployment does only once the new pod is ready.
    #[tokio::test]
    async fn standby_and_leader_are_ready_starting_and_stopping_are_not() {
        let health = Health::default();
        let mut seen = Vec::new();
        for phase in [
            Phase::Starting,
            Phase::Standby,
            Phase::Leading,
            Phase::Stopping,
        ] {
            health.set(phase);
            let (status, body) = readyz(&health).await;
            seen.push((phase, status.as_u16(), body));
        }
        assert_eq!(
            seen,
            [
                (
                    Phase::Starting,
                    503,
                    "not ready: starting (RBAC check)".to_owned()
                ),
                (
                    Phase::Standby,
                    200,
                    "ready: standby, waiting for the leader Lease".to_owned()
                ),
                (Phase::Leading, 200, "ready: leading".to_owned()),
                (Phase::Stopping, 503, "not ready: stopping".to_owned()),
            ]
        );
    }
}
