//! Leader election against a mocked API server: the first replica creates the Lease, a second
//! one waits while it is fresh, takes over when it expires or is released, and two candidates
//! racing for one Lease cannot both win (resourceVersion conflict). Expiry is measured on each
//! replica's own monotonic clock, so wall clocks skewed by an hour change nothing.

mod servicelb_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use portway_operator::controllers::lease::{self, Attempt, LeaseSettings, Observer};
use servicelb_support::Fake;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/portway-system/leases";

/// The test's time in seconds, shared by every replica's clocks.
type TestTime = Arc<AtomicI64>;

/// One operator replica: its settings and what it has observed of the Lease.
struct Replica {
    api: Api<Lease>,
    settings: LeaseSettings,
    seen: Observer,
}

impl Replica {
    /// A replica whose wall clock is `skew` seconds off and whose monotonic clock started at
    /// `origin` seconds; both advance with `time`.
    fn skewed(api: &Api<Lease>, identity: &str, time: &TestTime, skew: i64, origin: u64) -> Self {
        let mut settings = LeaseSettings::new("portway-system", identity);
        let (wall, mono) = (time.clone(), time.clone());
        settings.clock = Arc::new(move || {
            Timestamp::from_second(1_767_225_600 + skew + wall.load(Ordering::SeqCst))
                .unwrap_or(Timestamp::UNIX_EPOCH)
        });
        settings.monotonic = Arc::new(move || {
            Duration::from_secs(origin + u64::try_from(mono.load(Ordering::SeqCst)).unwrap_or(0))
        });
        Self {
            api: api.clone(),
            settings,
            seen: Observer::default(),
        }
    }

    fn new(api: &Api<Lease>, identity: &str, time: &TestTime) -> Self {
        Self::skewed(api, identity, time, 0, 0)
    }

    async fn attempt(&mut self) -> Attempt {
        lease::try_acquire(&self.api, &self.settings, &mut self.seen)
            .await
            .expect("no API error")
    }
}

fn held_by(identity: &str) -> Attempt {
    Attempt::HeldBy(identity.to_owned())
}

/// Lets `a` create the Lease and seeds the fake with it (resourceVersion 1).
async fn lead(a: &mut Replica, fake: &Fake) {
    assert_eq!(a.attempt().await, Attempt::Held);
    let lines: Vec<String> = fake.requests().iter().map(|s| s.line()).collect();
    assert_eq!(
        lines,
        [
            format!("GET {LEASES}/portway-operator"),
            format!("POST {LEASES}")
        ]
    );
    let mut created = fake.requests()[1].body.clone();
    created["metadata"]["resourceVersion"] = serde_json::json!("1");
    fake.seed(&format!("{LEASES}/portway-operator"), created);
    fake.clear();
}

#[tokio::test]
async fn handover_on_expiry_and_on_release() {
    let (client, fake) = Fake::start();
    let api: Api<Lease> = Api::namespaced(client, "portway-system");
    let time = TestTime::default();
    let mut a = Replica::new(&api, "replica-a", &time);
    let mut b = Replica::new(&api, "replica-b", &time);
    lead(&mut a, &fake).await;

    // B waits while A's Lease is fresh: reads only, never writes.
    time.store(10, Ordering::SeqCst);
    assert_eq!(b.attempt().await, held_by("replica-a"));
    assert!(fake.writes().is_empty(), "a standby never writes");

    // A renews (keeps acquireTime and transitions).
    assert_eq!(a.attempt().await, Attempt::Held);
    let renew = fake.writes().pop().expect("renew write");
    assert_eq!(renew.method, "PUT");
    assert_eq!(renew.body["spec"]["holderIdentity"], "replica-a");
    assert_eq!(renew.body["spec"]["leaseTransitions"], 0);
    fake.clear();

    // A dies. B sees A's last renewal at its next attempt (12 s); once that record has stayed
    // unchanged for more than the 15 s lease, B takes it.
    for (t, expected) in [
        (12, held_by("replica-a")),
        (12 + 15, held_by("replica-a")),
        (12 + 16, Attempt::Held),
    ] {
        time.store(t, Ordering::SeqCst);
        assert_eq!(b.attempt().await, expected, "at {t} s");
    }
    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "B wrote only when it took the Lease");
    let take = &writes[0];
    assert_eq!(take.method, "PUT");
    assert_eq!(take.body["spec"]["holderIdentity"], "replica-b");
    assert_eq!(take.body["spec"]["leaseTransitions"], 1);
    assert_eq!(
        take.body["metadata"]["resourceVersion"], "2",
        "optimistic: replaces the version it read (1, then A's renewal made 2)"
    );

    // A comes back: it lost, and sees who holds it now.
    assert_eq!(a.attempt().await, held_by("replica-b"));

    // B releases on shutdown: A takes over at once.
    lease::release(&api, &b.settings).await;
    time.store(12 + 17, Ordering::SeqCst);
    assert_eq!(a.attempt().await, Attempt::Held);
}

#[tokio::test]
async fn a_conflicting_write_means_someone_else_won() {
    let (client, fake) = Fake::start();
    let api: Api<Lease> = Api::namespaced(client.clone(), "portway-system");
    // The create races with another replica's: 409.
    fake.fail("POST", 409, 1);
    let mut a = Replica::new(&api, "replica-a", &TestTime::default());
    assert!(matches!(a.attempt().await, Attempt::HeldBy(_)));
    // And the acquire loop gives up cleanly on shutdown.
    let token = tokio_util::sync::CancellationToken::new();
    token.cancel();
    let mut quick = a.settings.clone();
    quick.retry_every = Duration::from_millis(10);
    fake.fail("POST", 409, 100);
    assert!(!lease::acquire(&client, &quick, &token).await);
}

#[tokio::test]
async fn a_standby_whose_clock_runs_an_hour_ahead_does_not_steal_a_fresh_lease() {
    let (client, fake) = Fake::start();
    let api: Api<Lease> = Api::namespaced(client, "portway-system");
    let time = TestTime::default();
    let mut a = Replica::new(&api, "replica-a", &time);
    let mut b = Replica::skewed(&api, "replica-b", &time, 3600, 7);
    lead(&mut a, &fake).await;

    // By B's wall clock A's renewTime is an hour old; comparing the two would take the Lease.
    for t in [0, 2, 5, 10, 15] {
        time.store(t, Ordering::SeqCst);
        assert_eq!(b.attempt().await, held_by("replica-a"), "at {t} s");
    }
    assert!(fake.writes().is_empty(), "B never wrote");
}

#[tokio::test]
async fn a_standby_whose_clock_runs_an_hour_behind_takes_over_within_one_lease() {
    let (client, fake) = Fake::start();
    let api: Api<Lease> = Api::namespaced(client, "portway-system");
    let time = TestTime::default();
    let mut a = Replica::new(&api, "replica-a", &time);
    let mut b = Replica::skewed(&api, "replica-b", &time, -3600, 1_000);
    lead(&mut a, &fake).await;

    // A's renewTime lies an hour in B's future; comparing the two would make B wait an hour
    // after A died. B watches the record instead: unchanged for more than 15 s means expired.
    time.store(1, Ordering::SeqCst);
    assert_eq!(b.attempt().await, held_by("replica-a"));
    time.store(17, Ordering::SeqCst);
    assert_eq!(
        b.attempt().await,
        Attempt::Held,
        "16 s after B first saw the dead leader's record"
    );
    let take = fake.writes().pop().expect("takeover");
    assert_eq!(take.body["spec"]["holderIdentity"], "replica-b");
    assert_eq!(take.body["spec"]["leaseTransitions"], 1);
}
