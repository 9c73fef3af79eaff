//! Leader election on a `coordination.k8s.io/v1` Lease (BRIEF contract 4). kube 5 ships no
//! lease helper (kube-runtime 5.0.0 has none), so this is a small one following client-go's
//! leaderelection rules: take the Lease when it is free, expired or already ours; renew it every
//! `renew_every`; give up leadership when renewals fail for longer than `renew_deadline`; on a
//! clean shutdown release it (empty holder, 1 s duration) so a standby takes over at once.
//! Writes use the Lease's resourceVersion, so two candidates can never both win a race.
//! Verbs used: get, create, update (see `permissions::COMMON`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Name of the operator's Lease.
pub const LEASE_NAME: &str = "portway-operator";

/// Source of wall-clock time (tests pin it).
pub type WallClock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Lease settings.
#[derive(Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This replica's identity (pod name plus a random-ish suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    pub renew_deadline: Duration,
    pub retry_every: Duration,
    pub clock: WallClock,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, renew every 2 s, give up after 10 s without renewal.
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            name: LEASE_NAME.to_owned(),
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
            clock: Arc::new(Timestamp::now),
        }
    }
}

/// Lease failures.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("reading Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("lost the leader Lease {0}")]
    Lost(String),
}

/// The outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease now.
    Held,
    /// Someone else holds it (their identity).
    HeldBy(String),
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One acquire-or-renew attempt.
pub async fn try_acquire(api: &Api<Lease>, s: &LeaseSettings) -> Result<Attempt, LeaseError> {
    let err = |source| LeaseError::Api {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        source,
    };
    let now = (s.clock)();
    let duration = i32::try_from(s.lease_duration.as_secs()).unwrap_or(15);
    let ours = |acquired: Timestamp, transitions: i32| LeaseSpec {
        holder_identity: Some(s.identity.clone()),
        acquire_time: Some(MicroTime(acquired)),
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(duration),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(current) = api.get_opt(&s.name).await.map_err(err)? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                namespace: Some(s.namespace.clone()),
                ..Default::default()
            },
            spec: Some(ours(now, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Held),
            Err(e) if conflict(&e) => Ok(Attempt::HeldBy("(created concurrently)".to_owned())),
            Err(e) => Err(err(e)),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renewed = spec
        .renew_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::MIN);
    let held_for =
        SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(duration)));
    let expired = holder.is_empty() || renewed.checked_add(held_for).map_or(true, |end| end < now);
    if holder != s.identity && !expired {
        return Ok(Attempt::HeldBy(holder));
    }
    let (acquired, transitions) = if holder == s.identity {
        (
            spec.acquire_time.as_ref().map(|t| t.0).unwrap_or(now),
            spec.lease_transitions.unwrap_or(0),
        )
    } else {
        (now, spec.lease_transitions.unwrap_or(0).saturating_add(1))
    };
    let mut next = current.clone();
    next.spec = Some(ours(acquired, transitions));
    match api.replace(&s.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(Attempt::Held),
        Err(e) if conflict(&e) => Ok(Attempt::HeldBy(holder)),
        Err(e) => Err(err(e)),
    }
}

/// Waits until this replica holds the Lease. Returns `false` when `shutdown` came first.
pub async fn acquire(client: &Client, s: &LeaseSettings, shutdown: &CancellationToken) -> bool {
    let api: Api<Lease> = Api::namespaced(client.clone(), &s.namespace);
    let mut last_holder = String::new();
    loop {
        match try_acquire(&api, s).await {
            Ok(Attempt::Held) => {
                info!(lease = %s.name, identity = %s.identity, "became leader");
                return true;
            }
            Ok(Attempt::HeldBy(h)) => {
                if h != last_holder {
                    info!(lease = %s.name, holder = %h, "waiting for the leader Lease");
                    last_holder = h;
                }
            }
            Err(e) => warn!("leader election: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(s.retry_every) => {}
        }
    }
}

/// Keeps renewing the Lease until `shutdown` (then releases it and returns `Ok`) or until it is
/// lost (returns `Err`: the caller stops its controllers and exits, so the Deployment restarts
/// it as a standby).
pub async fn hold(
    client: &Client,
    s: &LeaseSettings,
    shutdown: &CancellationToken,
) -> Result<(), LeaseError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &s.namespace);
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                release(&api, s).await;
                return Ok(());
            }
            _ = tokio::time::sleep(s.renew_every) => {}
        }
        match try_acquire(&api, s).await {
            Ok(Attempt::Held) => last_renewal = tokio::time::Instant::now(),
            Ok(Attempt::HeldBy(h)) => {
                return Err(LeaseError::Lost(format!("{} is now held by {h}", s.name)));
            }
            Err(e) => {
                warn!("renewing the leader Lease failed: {e}");
                if last_renewal.elapsed() > s.renew_deadline {
                    return Err(LeaseError::Lost(format!(
                        "{}: not renewed for {:?}",
                        s.name, s.renew_deadline
                    )));
                }
            }
        }
    }
}

/// Gives the Lease up (empty holder, 1 s duration) if we still hold it.
pub async fn release(api: &Api<Lease>, s: &LeaseSettings) {
    let Ok(Some(mut current)) = api.get_opt(&s.name).await else {
        return;
    };
    let spec = current.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime((s.clock)()));
    match api.replace(&s.name, &PostParams::default(), &current).await {
        Ok(_) => info!(lease = %s.name, "released the leader Lease"),
        Err(e) => warn!("releasing the leader Lease: {e}"),
    }
}
