//! Leader election (BRIEF contract 4) with two real operator replicas in one process, each with
//! its own identity, client and request log, on the same Lease: only the holder writes (the
//! standby sends no write at all, counted on the wire), and when the leader is killed — its
//! runtime dropped, so it neither releases the Lease nor says anything else — the standby takes
//! over once the Lease has expired and not before, then serves a converged cluster without a
//! write and new Services as usual. A clean stop releases the Lease.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::wait::conditions;
use portway_e2e::operator::{Exit, Operator};
use portway_e2e::requests::{HOUSEKEEPING, Mark, RequestLog, describe};
use portway_e2e::{Identity, TestEnv, objects, report, wait};

use crate::common::{OPERATOR_NS, reconciled, settle, start_operator};
use crate::servicelb::{create_nodes, create_service, wait_slb_reason};

const ACT: Duration = Duration::from_secs(60);
const LEASE: &str = "portway-operator";
/// `LeaseSettings::new`: the Lease lasts 15 s; a standby retries every 2 s.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq)]
struct Seen {
    holder: Option<String>,
    renewed: Option<jiff::Timestamp>,
    acquired: Option<jiff::Timestamp>,
    transitions: Option<i32>,
}

async fn lease(admin: &Client) -> Option<Seen> {
    let l = Api::<Lease>::namespaced(admin.clone(), OPERATOR_NS)
        .get_opt(LEASE)
        .await
        .ok()
        .flatten()?;
    let spec = l.spec.unwrap_or_default();
    Some(Seen {
        holder: spec.holder_identity,
        renewed: spec.renew_time.map(|t| t.0),
        acquired: spec.acquire_time.map(|t| t.0),
        transitions: spec.lease_transitions,
    })
}

async fn wait_holder(admin: &Client, who: &str) -> Seen {
    let what = format!("Lease {LEASE} held by {who}");
    wait::eventually(&what, ACT, || async {
        lease(admin)
            .await
            .filter(|s| s.holder.as_deref() == Some(who))
    })
    .await
    .expect("lease holder")
}

/// A free loopback port for a replica's metrics listener (bound once, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `GET /readyz` of a replica's metrics listener: status code and body. Retried for up to 10 s
/// while the listener is not up yet.
async fn readyz(port: u16) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let what = format!("GET http://127.0.0.1:{port}/readyz");
    wait::eventually(&what, Duration::from_secs(10), move || async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.ok()?;
        let code = raw.split_whitespace().nth(1)?.parse().ok()?;
        let body = raw.split_once("\r\n\r\n")?.1.to_owned();
        Some((code, body))
    })
    .await
    .expect("readyz")
}

fn leader(op: &Operator) -> f64 {
    op.metric("portway_operator_leader", &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_killed_leader_hands_over() {
    const TEST: &str = "only_the_leader_writes_and_a_killed_leader_hands_over";
    let Some(env) = TestEnv::start_or_skip(TEST).await else {
        return;
    };
    let admin = env.client();
    objects::ensure_namespace(&admin, OPERATOR_NS)
        .await
        .expect("operator namespace");
    create_nodes(&admin).await;
    let ns = env.namespace("ha").await.expect("namespace");
    create_service(&admin, &ns, "web", &[80]).await;

    // 1. op-a wins the Lease; op-b, started afterwards, waits.
    let (log_a, log_b) = (RequestLog::new(), RequestLog::new());
    let flags = ["--clustercidr-enabled=false"];
    let (port_a, port_b) = (free_port(), free_port());
    let flags_of = |port: u16| {
        let mut f: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        f.push(format!("--metrics-addr=127.0.0.1:{port}"));
        f
    };
    let (flags_a, flags_b) = (flags_of(port_a), flags_of(port_b));
    let refs_a: Vec<&str> = flags_a.iter().map(String::as_str).collect();
    let refs_b: Vec<&str> = flags_b.iter().map(String::as_str).collect();
    let op_a = start_operator(&env, "op-a", Identity::Admin, &refs_a, &log_a);
    wait_holder(&admin, "op-a").await;
    let op_b = start_operator(&env, "op-b", Identity::Admin, &refs_b, &log_b);
    wait_slb_reason(
        &admin,
        &ns,
        "web",
        portway_crds::condition::types::READY,
        portway_crds::condition::reasons::AGENTS_NOT_FORWARDING,
    )
    .await;
    wait::wait_for(
        Api::<DaemonSet>::namespaced(admin.clone(), OPERATOR_NS),
        &format!("portway-{ns}-web"),
        "the DaemonSet",
        conditions::is_created(),
        ACT,
    )
    .await
    .expect("daemonset");
    settle(&log_a, Duration::from_secs(3), ACT).await;
    // op-b has been asking for the Lease (a GET every 2 s) the whole time.
    let lease_reads_b = wait::eventually("op-b to poll the Lease twice", ACT, || async {
        let n = log_b
            .since(Mark::START)
            .iter()
            .filter(|r| r.is_resource("leases") && !r.is_write())
            .count();
        (n >= 2).then_some(n)
    })
    .await
    .expect("standby polls");

    // Only one writes.
    let writes_a = log_a.writes_since(Mark::START, HOUSEKEEPING);
    assert!(
        writes_a.iter().any(|w| w.is_resource("daemonsets")),
        "the leader made the DaemonSet:\n  {}",
        describe(&writes_a)
    );
    let writes_b = log_b.writes_since(Mark::START, &["selfsubjectaccessreviews"]);
    assert!(
        writes_b.is_empty(),
        "the standby wrote (a Lease write included):\n  {}",
        describe(&writes_b)
    );
    assert_eq!((leader(&op_a), leader(&op_b)), (1.0, 0.0));
    // Both are ready, the standby too: a rolling update of the Deployment needs the new (standby)
    // pod ready before it removes the old (leading) one, which then releases the Lease.
    assert_eq!(readyz(port_a).await, (200, "ready: leading".to_owned()));
    assert_eq!(
        readyz(port_b).await,
        (
            200,
            "ready: standby, waiting for the leader Lease".to_owned()
        )
    );
    assert_eq!(
        op_b.metric("portway_operator_reconciles_total", &[]),
        0.0,
        "the standby reconciled"
    );
    assert_eq!(
        lease(&admin).await.and_then(|s| s.holder).as_deref(),
        Some("op-a")
    );

    // 2. Kill op-a. Follow the Lease every 100 ms: its last renewal by op-a, then op-b's takeover.
    let killed = Instant::now();
    assert_eq!(op_a.kill().await.expect("kill"), Exit::Killed);
    let after_kill = log_a.mark();
    let mut last_a: Option<Seen> = None;
    let takeover = loop {
        assert!(
            killed.elapsed() < ACT,
            "op-b did not take the Lease over within {ACT:?}; op-b's log:\n{}",
            op_b.log_tail(20)
        );
        if let Some(now) = lease(&admin).await {
            match now.holder.as_deref() {
                Some("op-a") => last_a = Some(now),
                Some("op-b") => break now,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let handed_over = killed.elapsed();
    let last_a = last_a.expect("op-a's Lease seen after the kill");
    let renewed = last_a.renewed.expect("renewTime");
    let acquired = takeover.acquired.expect("acquireTime");
    let gap = Duration::try_from(acquired.duration_since(renewed)).unwrap_or_default();
    assert!(
        gap >= LEASE_DURATION,
        "op-b took the Lease {gap:?} after op-a's last renewal, before it expired"
    );
    // op-b judges expiry by its own observation, not by op-a's renewTime: it sees the last
    // renewal at its next poll (up to one retry later) and takes the Lease at the first poll
    // after that record has stayed unchanged for the lease duration (one more retry at most).
    assert!(
        gap <= LEASE_DURATION + RETRY * 2 + Duration::from_secs(1),
        "op-b took the Lease {gap:?} after op-a's last renewal: later than the lease time plus two retries"
    );
    assert_eq!(
        takeover.transitions,
        last_a.transitions.map(|t| t + 1),
        "leaseTransitions"
    );
    assert!(
        log_a.since(after_kill).is_empty(),
        "the killed replica still sent requests:\n  {}",
        describe(&log_a.since(after_kill))
    );

    // 3. The new leader serves: nothing to write for the converged Service, as usual for new ones.
    let handover_mark = log_b.mark();
    wait::eventually("op-b's leader gauge", ACT, || async {
        (leader(&op_b) == 1.0).then_some(())
    })
    .await
    .expect("leader");
    reconciled(&op_b, 1.0, ACT).await;
    assert_eq!(readyz(port_b).await, (200, "ready: leading".to_owned()));
    tokio::time::sleep(Duration::from_secs(3)).await; // the start-up sweep (1 s + 2 s debounce)
    let converged = log_b.writes_since(handover_mark, HOUSEKEEPING);
    assert!(
        converged.is_empty(),
        "the new leader wrote to a converged cluster:\n  {}",
        describe(&converged)
    );
    create_service(&admin, &ns, "api", &[8080]).await;
    wait::wait_for(
        Api::<DaemonSet>::namespaced(admin.clone(), OPERATOR_NS),
        &format!("portway-{ns}-api"),
        "the new leader to create the new Service's DaemonSet",
        conditions::is_created(),
        ACT,
    )
    .await
    .expect("daemonset by op-b");
    assert!(
        log_b
            .writes_since(handover_mark, HOUSEKEEPING)
            .iter()
            .any(|w| w.is_resource("daemonsets"))
    );

    // 4. A clean stop releases the Lease at once (empty holder, 1 s).
    assert_eq!(op_b.stop().await.expect("stop"), Exit::Returned(Ok(())));
    let released = lease(&admin).await.expect("lease");
    assert_eq!(released.holder, None, "{released:?}");

    // 5. A leader that finds the Lease taken (say, after a long pause) stops: `run` returns the
    //    error (the Deployment restarts it as a standby) and nothing of it runs on.
    let log_c = RequestLog::new();
    let op_c = start_operator(&env, "op-c", Identity::Admin, &flags, &log_c);
    wait_holder(&admin, "op-c").await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let mut stolen = leases.get(LEASE).await.expect("lease");
    let spec = stolen.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some("intruder".to_owned());
    spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
    spec.lease_duration_seconds = Some(60);
    leases
        .replace(LEASE, &PostParams::default(), &stolen)
        .await
        .expect("take the Lease away");
    let lost = op_c
        .wait_exit(ACT)
        .await
        .expect("op-c stops after losing the Lease");
    match &lost {
        Exit::Returned(Err(message)) if message.contains("lost the leader Lease") => {}
        other => panic!("a replica that lost the Lease ended with {other:?}"),
    }
    let after_exit = log_c.mark();
    tokio::time::sleep(RETRY).await;
    assert!(
        log_c.since(after_exit).is_empty(),
        "op-c still sends requests"
    );
    assert_eq!(
        lease(&admin).await.and_then(|s| s.holder).as_deref(),
        Some("intruder"),
        "a replica that lost the Lease must not release someone else's"
    );

    report::line(&format!(
        "api-server leader election: standby polled the Lease {lease_reads_b}x and wrote nothing; leader killed: hand-over {:.1}s after the kill, {:.1}s after its last renewal (lease {}s, retry {}s); new leader: 0 writes on the converged Service; clean stop released the Lease; a leader whose Lease was taken stopped with an error",
        handed_over.as_secs_f64(),
        gap.as_secs_f64(),
        LEASE_DURATION.as_secs(),
        RETRY.as_secs()
    ));
}
