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

/// A replica whose wall clock is `skew` seconds off and whose monotonic clock started at
/// `origin` seconds; both advance with the shared test time `clock` (seconds).
fn skewed(identity: &str, clock: Arc<AtomicI64>, skew: i64, origin: u64) -> LeaseSettings {
    let mut s = LeaseSettings::new("portway-system", identity);
    let wall = clock.clone();
    s.clock = Arc::new(move || {
        Timestamp::from_second(1_767_225_600 + skew + wall.load(Ordering::SeqCst))
            .unwrap_or(Timestamp::UNIX_EPOCH)
    });
    s.monotonic = Arc::new(move || {
        Duration::from_secs(origin + u64::try_from(clock.load(Ordering::SeqCst)).unwrap_or(0))
    });
    s
}

fn settings(identity: &str, clock: Arc<AtomicI64>) -> LeaseSettings {
    skewed(identity, clock, 0, 0)
}

#[tokio::test]
async fn handover_on_expiry_and_on_release() {
    let (client, fake) = Fake::start();
    let api: Api<Lease> = Api::namespaced(client.clone(), "portway-system");
    let clock = Arc::new(AtomicI64::new(0));
    let a = settings("replica-a", clock.clone());
    let b = settings("replica-b", clock.clone());
    let (mut seen_by_a, mut seen_by_b) = (Observer::default(), Observer::default());

    // A creates the Lease.
    assert_eq!(
        lease::try_acquire(&api, &a, &mut seen_by_a)
            .await
            .expect("a"),
        Attempt::Held
    );
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

    // B waits while A's Lease is fresh: reads only, never writes.
    clock.store(10, Ordering::SeqCst);
    assert_eq!(
        lease::try_acquire(&api, &b, &mut seen_by_b)
            .await
            .expect("b"),
        Attempt::HeldBy("replica-a".into())
    );
    assert!(fake.writes().is_empty(), "a standby never writes");

    // A renews (keeps acquireTime and transitions).
    assert_eq!(
        lease::try_acquire(&api, &a, &mut seen_by_a)
            .await
            .expect("renew"),
        Attempt::Held
    );
    let renew = fake.writes().pop().expect("renew write");
    assert_eq!(renew.method, "PUT");
    assert_eq!(renew.body["spec"]["holderIdentity"], "replica-a");
    assert_eq!(renew.body["spec"]["leaseTransitions"], 0);
    fake.clear();

    // A dies. B last saw the record change at 10 s (A's renewal is read at the next attempt,
    // 12 s); 16 s later it has not changed, so B takes it.
    clock.store(12, Ordering::SeqCst);
    assert_eq!(
        lease::try_acquire(&api, &b, &mut seen_by_b)
            .await
            .expect("b"),
        Attempt::HeldBy("replica-a".into())
    );
    clock.store(12 + 15, Ordering::SeqCst);
    assert_eq!(
        lease::try_acquire(&api, &b, &mut seen_by_b)
            .await
            .expect("b"),
        Attempt::HeldBy("replica-a".into()),
        "one lease duration unchanged is not yet expired"
    );
    assert!(fake.writes().is_empty(), "a standby never writes");
    clock.store(12 + 16, Ordering::SeqCst);
    assert_eq!(
        lease::try_acquire(&api, &b, &mut seen_by_b)
            .await
            .expect("b"),
        Attempt::Held
    );
    let take = fake.writes().pop().expect("takeover");
    assert_eq!(take.method, "PUT");
    assert_eq!(take.body["spec"]["holderIdentity"], "replica-b");
    assert_eq!(take.body["spec"]["leaseTransitions"], 1);
    assert_eq!(
        take.body["metadata"]["resourceVersion"], "2",
        "optimistic: replaces the version it read (1, then A's renewal made 2)"
    );

    // A comes back: it lost, and sees who holds it now.
    assert_eq!(
        lease::try_acquire(&api, &a, &mut seen_by_a)
            .await
            .expect("a"),
        Attempt::HeldBy("replica-b".into())
    );

    // B releases on shutdown: A takes over at once.
    lease::release(&api, &b).await;
    clock.store(12 + 17, Ordering::SeqCst);
    assert_eq!(
        lease::try_acquire(&api, &a, &mut seen_by_a)
            .await
            .expect("a"),
        Attempt::Held
    );
}

#[tokio::test]
async fn a_conflicting_write_means_someone_else_won() {
    let (client, fake) = Fake::start();
    let api: Api<Lease> = Api::namespaced(client.clone(), "portway-system");
    let clock = Arc::new(AtomicI64::new(0));
    // The create races with another replica's: 409.
    fake.fail("POST", 409, 1);
    let a = settings("replica-a", clock.clone());
    assert!(matches!(
        lease::try_acquire(&api, &a, &mut Observer::default())
            .await
            .expect("a"),
        Attempt::HeldBy(_)
    ));
    // And the acquire loop gives up cleanly on shutdown.
    let token = tokio_util::sync::CancellationToken::new();
    token.cancel();
    let mut quick = a.clone();
    quick.retry_every = Duration::from_millis(10);
    fake.fail("POST", 409, 100);
    assert!(!lease::acquire(&client, &quick, &token).await);
}

/// Creates the Lease as `a` and seeds the fake with it (resourceVersion 1).
async fn lead(api: &Api<Lease>, fake: &Fake, a: &LeaseSettings, seen: &mut Observer) {
    assert_eq!(
        lease::try_acquire(api, a, seen).await.expect("a"),
        Attempt::Held
    );
    let mut created = fake.requests()[1].body.clone();
    created["metadata"]["resourceVersion"] = serde_json::json!("1");
    fake.seed(&format!("{LEASES}/portway-operator"), created);
    fake.clear();
}

#[tokio::test]
async fn a_standby_whose_clock_runs_an_hour_ahead_does_not_steal_a_fresh_lease() {
    let (client, fake) = Fake::start();
    let api: Api<Lease> = Api::namespaced(client.clone(), "portway-system");
    let clock = Arc::new(AtomicI64::new(0));
    let a = settings("replica-a", clock.clone());
    let b = skewed("replica-b", clock.clone(), 3600, 7);
    let mut seen_by_a = Observer::default();
    let mut seen_by_b = Observer::default();
    lead(&api, &fake, &a, &mut seen_by_a).await;

    // By B's wall clock A's renewTime is an hour old; comparing the two would take the Lease.
    for t in [0, 2, 5, 10, 15] {
        clock.store(t, Ordering::SeqCst);
        assert_eq!(
            lease::try_acquire(&api, &b, &mut seen_by_b)
                .await
                .expect("b"),
            Attempt::HeldBy("replica-a".into()),
            "at {t} s"
        );
    }
    assert!(fake.writes().is_empty(), "B never wrote");
}

#[tokio::test]
async fn a_standby_whose_clock_runs_an_hour_behind_takes_over_within_one_lease() {
    let (client, fake) = Fake::start();
    let api: Api<Lease> = Api::namespaced(client.clone(), "portway-system");
    let clock = Arc::new(AtomicI64::new(0));
    let a = settings("replica-a", clock.clone());
    let b = skewed("replica-b", clock.clone(), -3600, 1_000);
    let mut seen_by_a = Observer::default();
    let mut seen_by_b = Observer::default();
    lead(&api, &fake, &a, &mut seen_by_a).await;

    // A's renewTime lies an hour in B's future; comparing the two would make B wait an hour
    // after A died. B watches the record instead: unchanged for more than 15 s means expired.
    clock.store(1, Ordering::SeqCst);
    assert_eq!(
        lease::try_acquire(&api, &b, &mut seen_by_b)
            .await
            .expect("b"),
        Attempt::HeldBy("replica-a".into())
    );
    clock.store(17, Ordering::SeqCst);
    assert_eq!(
        lease::try_acquire(&api, &b, &mut seen_by_b)
            .await
            .expect("b"),
        Attempt::Held,
        "16 s after B first saw the dead leader's record"
    );
    let take = fake.writes().pop().expect("takeover");
    assert_eq!(take.body["spec"]["holderIdentity"], "replica-b");
    assert_eq!(take.body["spec"]["leaseTransitions"], 1);
}
