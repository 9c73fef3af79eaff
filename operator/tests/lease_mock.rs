//! Leader election against a mocked API server: the first replica creates the Lease, a second
//! one waits while it is fresh, takes over when it expires or is released, and two candidates
//! racing for one Lease cannot both win (resourceVersion conflict).

mod servicelb_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use portway_operator::controllers::lease::{self, Attempt, LeaseSettings};
use servicelb_support::Fake;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/portway-system/leases";

fn settings(identity: &str, clock: Arc<AtomicI64>) -> LeaseSettings {
    let mut s = LeaseSettings::new("portway-system", identity);
    s.clock = Arc::new(move || {
        Timestamp::from_second(1_767_225_600 + clock.load(Ordering::SeqCst))
            .unwrap_or(Timestamp::UNIX_EPOCH)
    });
    s
}

#[tokio::test]
async fn handover_on_expiry_and_on_release() {
    let (client, fake) = Fake::start();
    let api: Api<Lease> = Api::namespaced(client.clone(), "portway-system");
    let clock = Arc::new(AtomicI64::new(0));
    let a = settings("replica-a", clock.clone());
    let b = settings("replica-b", clock.clone());

    // A creates the Lease.
    assert_eq!(
        lease::try_acquire(&api, &a).await.expect("a"),
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
        lease::try_acquire(&api, &b).await.expect("b"),
        Attempt::HeldBy("replica-a".into())
    );
    assert!(fake.writes().is_empty(), "a standby never writes");

    // A renews (keeps acquireTime and transitions).
    assert_eq!(
        lease::try_acquire(&api, &a).await.expect("renew"),
        Attempt::Held
    );
    let renew = fake.writes().pop().expect("renew write");
    assert_eq!(renew.method, "PUT");
    assert_eq!(renew.body["spec"]["holderIdentity"], "replica-a");
    assert_eq!(renew.body["spec"]["leaseTransitions"], 0);
    fake.clear();

    // A dies; 16 s after its last renewal the Lease has expired and B takes it.
    clock.store(10 + 16, Ordering::SeqCst);
    assert_eq!(
        lease::try_acquire(&api, &b).await.expect("b"),
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
        lease::try_acquire(&api, &a).await.expect("a"),
        Attempt::HeldBy("replica-b".into())
    );

    // B releases on shutdown: A takes over at once.
    lease::release(&api, &b).await;
    clock.store(10 + 17, Ordering::SeqCst);
    assert_eq!(
        lease::try_acquire(&api, &a).await.expect("a"),
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
        lease::try_acquire(&api, &a).await.expect("a"),
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
