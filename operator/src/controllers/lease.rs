//! Leader election on a `coordination.k8s.io/v1` Lease (BRIEF contract 4). kube 5 ships no
//! lease helper (kube-runtime 5.0.0 has none), so this is a small one following client-go's
//! leaderelection rules: take the Lease when it is free, expired or already ours; renew it every
//! `renew_every`; give up leadership when renewals fail for longer than `renew_deadline`; on a
//! clean shutdown release it (empty holder, 1 s duration) so a standby takes over at once.
//! Writes use the Lease's resourceVersion, so two candidates can never both win a race.
//! Verbs used: get, create, update (see `permissions::COMMON`).
//!
//! Expiry is judged as client-go judges it, by local observation and never by comparing the
//! holder's `renewTime` with this replica's wall clock: a candidate remembers the last Lease
//! record it read and when (on its own monotonic clock) that record last changed; the Lease has
//! expired when the record has not changed for `leaseDurationSeconds`. Replicas whose wall clocks
//! disagree by minutes therefore neither steal a fresh Lease nor wait out a dead leader for the
//! size of the skew. The price, as in client-go: a freshly started candidate waits one lease
//! duration before it takes a Lease its holder abandoned without releasing it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Name of the operator's Lease.
pub const LEASE_NAME: &str = "portway-operator";

/// Source of wall-clock time (tests pin it). Only written into the Lease, never compared.
pub type WallClock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Source of monotonic time: the time since an arbitrary fixed start (tests pin it). Expiry is
/// measured with this clock only.
pub type MonotonicClock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The process's monotonic clock.
pub fn system_monotonic() -> MonotonicClock {
    let start = std::time::Instant::now();
    Arc::new(move || start.elapsed())
}

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
    pub monotonic: MonotonicClock,
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
            monotonic: system_monotonic(),
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

/// What a candidate remembers of the Lease between attempts: the record it last read and the
/// monotonic time at which that record was first seen in this form.
#[derive(Debug, Clone, Default)]
pub struct Observer {
    record: Option<LeaseSpec>,
    since: Duration,
}

/// What a candidate does with the Lease record it just read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// It is ours: renew it.
    Renew,
    /// It is free or expired: take it.
    Take,
    /// Someone else holds it and has renewed it recently (their identity).
    Wait(String),
}

impl Observer {
    /// Notes `record` as read at monotonic time `now`: a record that differs from the last one
    /// restarts the expiry count.
    fn observe(&mut self, record: &LeaseSpec, now: Duration) {
        if self.record.as_ref() != Some(record) {
            self.record = Some(record.clone());
            self.since = now;
        }
    }

    /// Whether the record last observed has stayed unchanged for `lease` by `now`.
    fn unchanged_for(&self, lease: Duration, now: Duration) -> bool {
        now.saturating_sub(self.since) > lease
    }
}

/// Pure: given the Lease record just read, this candidate's identity and its observation
/// history, what to do. `fallback` is the lease duration when the record names none.
pub fn decide(
    record: &LeaseSpec,
    identity: &str,
    observer: &mut Observer,
    now: Duration,
    fallback: Duration,
) -> Decision {
    observer.observe(record, now);
    let holder = record.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Take;
    }
    let lease = record.lease_duration_seconds.map_or(fallback, |secs| {
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    });
    if observer.unchanged_for(lease, now) {
        Decision::Take
    } else {
        Decision::Wait(holder)
    }
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One acquire-or-renew attempt. `observer` carries what this candidate saw on earlier attempts.
pub async fn try_acquire(
    api: &Api<Lease>,
    s: &LeaseSettings,
    observer: &mut Observer,
) -> Result<Attempt, LeaseError> {
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
    let (acquired, transitions) = match decide(
        &spec,
        &s.identity,
        observer,
        (s.monotonic)(),
        s.lease_duration,
    ) {
        Decision::Wait(holder) => return Ok(Attempt::HeldBy(holder)),
        Decision::Renew => (
            spec.acquire_time.as_ref().map(|t| t.0).unwrap_or(now),
            spec.lease_transitions.unwrap_or(0),
        ),
        Decision::Take => (now, spec.lease_transitions.unwrap_or(0).saturating_add(1)),
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
    let mut observer = Observer::default();
    loop {
        match try_acquire(&api, s, &mut observer).await {
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
    let mut observer = Observer::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                release(&api, s).await;
                return Ok(());
            }
            _ = tokio::time::sleep(s.renew_every) => {}
        }
        match try_acquire(&api, s, &mut observer).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn record(holder: &str, renewed_unix: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: (!holder.is_empty()).then(|| holder.to_owned()),
            renew_time: Timestamp::from_second(renewed_unix).ok().map(MicroTime),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_record_first_seen_is_fresh_whatever_its_renew_time_says() {
        // renewTime one day in the past by this replica's wall clock: a skewed holder clock,
        // not an expired Lease.
        let mut seen = Observer::default();
        let stale_looking = record("a", 1_700_000_000);
        assert_eq!(
            decide(&stale_looking, "b", &mut seen, at(100), LEASE),
            Decision::Wait("a".into())
        );
        assert_eq!(
            decide(&stale_looking, "b", &mut seen, at(115), LEASE),
            Decision::Wait("a".into()),
            "exactly one lease duration is not yet expired"
        );
        assert_eq!(
            decide(&stale_looking, "b", &mut seen, at(116), LEASE),
            Decision::Take
        );
    }

    #[test]
    fn every_renewal_restarts_the_count() {
        let mut seen = Observer::default();
        for (i, t) in [0u64, 10, 20, 30, 40].into_iter().enumerate() {
            // Renewal times far in the future by this replica's clock change nothing either.
            let renewed = record("a", 4_000_000_000 + i64::try_from(i).unwrap_or(0));
            assert_eq!(
                decide(&renewed, "b", &mut seen, at(t), LEASE),
                Decision::Wait("a".into()),
                "renewed at {t}"
            );
        }
        let last = record("a", 4_000_000_004);
        assert_eq!(
            decide(&last, "b", &mut seen, at(55), LEASE),
            Decision::Wait("a".into())
        );
        assert_eq!(decide(&last, "b", &mut seen, at(56), LEASE), Decision::Take);
    }

    #[test]
    fn free_and_own_records_need_no_waiting() {
        let mut seen = Observer::default();
        assert_eq!(
            decide(&record("", 0), "b", &mut seen, at(0), LEASE),
            Decision::Take
        );
        assert_eq!(
            decide(&record("b", 0), "b", &mut seen, at(0), LEASE),
            Decision::Renew
        );
    }

    #[test]
    fn the_holders_own_duration_counts_and_a_missing_one_falls_back() {
        // (leaseDurationSeconds, last second still waiting, first second taken)
        for (duration, waits_at, takes_at) in [(Some(1), 1, 2), (None, 15, 16), (Some(-5), 0, 1)] {
            let mut seen = Observer::default();
            let mut held = record("a", 0);
            held.lease_duration_seconds = duration;
            for t in [0, waits_at] {
                assert_eq!(
                    decide(&held, "b", &mut seen, at(t), LEASE),
                    Decision::Wait("a".into()),
                    "{duration:?} at {t}"
                );
            }
            assert_eq!(
                decide(&held, "b", &mut seen, at(takes_at), LEASE),
                Decision::Take,
                "{duration:?} at {takes_at}"
            );
        }
    }
}
