use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use portway_crds::condition::reasons;
use portway_crds::{
    DataplaneMode, IpFamily, LoadBalancerPort, NodeForwardingStatus, Protocol, ServiceLoadBalancer,
    ServiceLoadBalancerSpec, ServiceLoadBalancerStatus, TrafficPolicy,
};

use super::*;
use crate::dataplane::{ApplyReport, DataplaneError, FamilyReport, RuleCounter};
use crate::forwarding::{FamilyState, ForwardingReport};
use crate::handover::lookup::ExitLookup;
use crate::handover::{Seen, SlbFacts};
use crate::net::Served;
use crate::status::{KubeStatus, StatusError, StatusSink};

fn pinned() -> Time {
    Time(Timestamp::from_second(1_000).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Records applies; fails while `fail` is set.
#[derive(Default)]
struct FakeDataplane {
    applied: Vec<RuleSet>,
    cleanups: usize,
    fail: bool,
}

impl Dataplane for FakeDataplane {
    async fn apply(&mut self, rules: &RuleSet) -> Result<ApplyReport, DataplaneError> {
        if self.fail {
            return Err(DataplaneError::Rejected {
                tool: "fake".into(),
                family: "IPv4",
                message: "no".into(),
            });
        }
        let changed = self.applied.last() != Some(rules);
        self.applied.push(rules.clone());
        Ok(ApplyReport {
            families: vec![FamilyReport {
                family: Some(IpFamily::IPv4),
                changed,
                ..FamilyReport::default()
            }],
        })
    }
    async fn cleanup(&mut self) -> Result<ApplyReport, DataplaneError> {
        self.cleanups += 1;
        Ok(ApplyReport::default())
    }
    async fn counters(&mut self) -> Result<Vec<RuleCounter>, DataplaneError> {
        Ok(vec![])
    }
    fn describe(&self) -> String {
        "fake".into()
    }
}

struct FakeNet {
    addresses: Vec<IpAddr>,
    forwarding: BTreeMap<IpFamily, FamilyState>,
}

impl NetEnv for FakeNet {
    async fn served(&mut self, _: DataplaneMode, _: &[IpAddr]) -> Result<Served, String> {
        Ok(Served {
            addresses: self.addresses.clone(),
            missing: vec![],
        })
    }
    async fn forwarding(
        &mut self,
        _: &[IpAddr],
        families: &[IpFamily],
        _: bool,
    ) -> ForwardingReport {
        ForwardingReport {
            families: families
                .iter()
                .map(|f| {
                    (
                        *f,
                        self.forwarding.get(f).cloned().unwrap_or(FamilyState::On),
                    )
                })
                .collect(),
        }
    }
}

#[derive(Default)]
struct CaptureSink {
    written: Vec<NodeForwardingStatus>,
    fail: bool,
}

impl StatusSink for CaptureSink {
    async fn publish(&mut self, entry: &NodeForwardingStatus) -> Result<(), StatusError> {
        if self.fail {
            return Err(StatusError::Timeout("x".into()));
        }
        self.written.push(entry.clone());
        Ok(())
    }
}

fn cfg() -> AgentConfig {
    AgentConfig {
        namespace: "shop".into(),
        name: "web".into(),
        node: "node-a".into(),
        pod_ips: vec![ip("10.244.1.7")],
        host_ips: vec![ip("192.0.2.10")],
        resync: Duration::from_secs(30),
        heartbeat: Duration::from_secs(10),
        dataplane: None,
        exit: crate::handover::Policy::default(),
    }
}

fn slb(generation: i64, ports: Vec<LoadBalancerPort>) -> ServiceLoadBalancer {
    let mut s = ServiceLoadBalancer::new(
        "web",
        ServiceLoadBalancerSpec {
            pool: "p".into(),
            dataplane: DataplaneMode::Pod,
            ports,
            cluster_ips: vec!["10.96.0.10".into()],
            ip_families: vec![IpFamily::IPv4],
            external_traffic_policy: TrafficPolicy::Cluster,
            source_ranges: vec![],
        },
    );
    s.metadata.namespace = Some("shop".into());
    s.metadata.generation = Some(generation);
    s
}

fn http() -> Vec<LoadBalancerPort> {
    vec![LoadBalancerPort {
        name: "http".into(),
        protocol: Protocol::TCP,
        port: 80,
        host_port: 80,
        node_port: None,
    }]
}

fn observed(s: ServiceLoadBalancer) -> Observed {
    Observed {
        spec: SpecState::Present(Box::new(s)),
        slices: vec![],
        slices_synced: true,
    }
}

fn agent(net: FakeNet, state: Option<StateDir>) -> Agent<FakeDataplane, CaptureSink, FakeNet> {
    Agent::new(
        cfg(),
        FakeDataplane::default(),
        CaptureSink::default(),
        net,
        state,
        Arc::new(Metrics::new().expect("metrics")),
    )
    .with_clock(pinned)
}

fn net() -> FakeNet {
    FakeNet {
        addresses: vec![ip("10.244.1.7")],
        forwarding: BTreeMap::new(),
    }
}

fn reason(e: &Option<NodeForwardingStatus>) -> String {
    e.as_ref()
        .and_then(|e| e.conditions.first())
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn applies_reports_and_skips_no_op_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let mut a = agent(net(), Some(state.clone()));
    let o = observed(slb(1, http()));
    let s = a.reconcile(&o).await;
    assert!(s.changed_rules && s.wrote_status && s.ready);
    assert_eq!(reason(&s.entry), reasons::RULES_APPLIED);
    assert!(crate::state::probe_ready(state.path()).is_ok());
    let s = a.reconcile(&o).await;
    assert!(!s.changed_rules, "idempotent");
    assert!(!s.wrote_status, "no-op status writes are skipped");
    assert_eq!(a.sink.written.len(), 1);
    assert_eq!(
        a.dataplane.applied.len(),
        2,
        "the dataplane decides what changed"
    );
}

#[tokio::test]
async fn an_invalid_spec_keeps_the_last_good_rules() {
    let mut a = agent(net(), None);
    a.reconcile(&observed(slb(1, http()))).await;
    let s = a.reconcile(&observed(slb(2, vec![]))).await;
    assert_eq!(reason(&s.entry), reasons::INVALID_SPEC);
    let msg = &s.entry.as_ref().expect("entry").conditions[0].message;
    assert!(msg.contains("generation 1 stay installed"), "{msg}");
    assert_eq!(
        a.dataplane.applied.len(),
        1,
        "nothing applied for the bad spec"
    );
    assert_eq!(a.dataplane.cleanups, 0);
    assert!(s.ready, "the old rules still forward");
    let unreadable = Observed {
        spec: SpecState::Unreadable {
            generation: Some(3),
            error: "unknown variant `ICMP`".into(),
        },
        slices: vec![],
        slices_synced: true,
    };
    let s = a.reconcile(&unreadable).await;
    assert_eq!(reason(&s.entry), reasons::INVALID_SPEC);
    assert_eq!(
        s.entry.as_ref().and_then(|e| e.observed_generation),
        Some(3)
    );
}

#[tokio::test]
async fn kernel_rejection_is_reported_and_drops_readiness() {
    let mut a = agent(net(), None);
    a.reconcile(&observed(slb(1, http()))).await;
    a.dataplane.fail = true;
    let s = a.reconcile(&observed(slb(2, http()))).await;
    assert_eq!(reason(&s.entry), reasons::KERNEL_REJECTED);
    assert!(!s.ready);
}

#[tokio::test]
async fn forwarding_that_cannot_be_turned_on_is_reported_with_the_sysctl() {
    let mut n = net();
    n.forwarding.insert(
        IpFamily::IPv4,
        FamilyState::Off {
            sysctl: "net.ipv4.conf.eth0.forwarding".into(),
            detail: "is 0".into(),
        },
    );
    let mut a = agent(n, None);
    let s = a.reconcile(&observed(slb(1, http()))).await;
    assert_eq!(reason(&s.entry), reasons::FORWARDING_DISABLED);
    assert!(
        s.entry.as_ref().expect("entry").conditions[0]
            .message
            .contains("net.ipv4.conf.eth0.forwarding")
    );
}

#[tokio::test]
async fn host_mode_waits_for_the_endpoints() {
    let mut a = agent(net(), None);
    let mut s = slb(1, http());
    s.spec.dataplane = DataplaneMode::Host;
    let mut o = observed(s);
    o.slices_synced = false;
    let r = a.reconcile(&o).await;
    assert!(r.entry.is_none());
    assert!(a.dataplane.applied.is_empty());
    o.slices_synced = true;
    let r = a.reconcile(&o).await;
    assert_eq!(reason(&r.entry), reasons::NO_ENDPOINTS);
}

#[tokio::test]
async fn a_deleted_service_removes_the_rules_and_shutdown_reports() {
    let mut a = agent(net(), None);
    let o = observed(slb(1, http()));
    a.reconcile(&o).await;
    let gone = Observed {
        spec: SpecState::Missing,
        ..Observed::default()
    };
    let s = a.reconcile(&gone).await;
    assert_eq!(a.dataplane.cleanups, 1);
    assert!(!s.ready);
    a.reconcile(&gone).await;
    assert_eq!(a.dataplane.cleanups, 1, "cleaned once, not on every resync");
    assert!(a.remove_and_report(&o).await);
    assert_eq!(a.dataplane.cleanups, 2, "removing always cleans");
    let last = a.sink.written.last().expect("shutdown reported");
    assert_eq!(last.conditions[0].reason, reasons::SHUTTING_DOWN);
    assert!(last.addresses.is_empty());
}

#[tokio::test]
async fn failed_status_writes_are_retried() {
    let mut a = agent(net(), None);
    a.sink.fail = true;
    a.reconcile(&observed(slb(1, http()))).await;
    assert!(a.status_pending());
    a.sink.fail = false;
    a.retry_status().await;
    assert!(!a.status_pending());
    assert_eq!(a.sink.written.len(), 1);
}

/// Through the real SSA sink against a mocked API server: the first reconcile writes only this
/// node's entry; once the watch shows that entry, a second reconcile sends nothing; another
/// node's entry in the object is never sent.
#[tokio::test]
async fn status_requests_through_the_mocked_api_server() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let sink = KubeStatus::new(client, "shop", "web", "node-a");
    let mut a = Agent::new(
        cfg(),
        FakeDataplane::default(),
        sink,
        net(),
        None,
        Arc::new(Metrics::new().expect("metrics")),
    )
    .with_clock(pinned);

    let mut object = slb(2, http());
    object.status = Some(ServiceLoadBalancerStatus {
        nodes: vec![NodeForwardingStatus {
            node: "node-b".into(),
            observed_generation: Some(2),
            addresses: vec!["192.0.2.20".into()],
            conditions: vec![],
        }],
        ..ServiceLoadBalancerStatus::default()
    });
    let server = tokio::spawn(async move {
        let body = crate::status::tests::expect_status_apply(
            &mut handle,
            "node-a",
            crate::status::tests::slb_json(serde_json::json!([])),
        )
        .await;
        (handle, body)
    });
    let s = a.reconcile(&observed(object.clone())).await;
    assert!(s.wrote_status);
    let (mut handle, body) = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("request seen")
        .expect("server ok");
    assert_eq!(body["status"]["nodes"][0]["addresses"][0], "10.244.1.7");
    assert!(!body.to_string().contains("node-b"));

    // The watch now shows both entries: nothing to write.
    let mine = s.entry.expect("entry");
    if let Some(st) = object.status.as_mut() {
        st.nodes.push(mine);
    }
    let s = a.reconcile(&observed(object)).await;
    assert!(!s.wrote_status);
    drop(a);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), handle.next_request())
            .await
            .expect("mock closed")
            .is_none(),
        "no second request"
    );
}

#[tokio::test]
async fn the_loop_reconciles_on_updates_and_cleans_up_on_shutdown() {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let a = agent(net(), None);
    let handle = tokio::spawn(run(
        a,
        rx,
        None,
        async move {
            let _ = stop_rx.await;
        },
        Reads(vec![Seen::Gone]),
        false,
    ));
    tx.send(Update::Slices(vec![])).await.expect("send");
    tx.send(Update::Spec(SpecState::Present(Box::new(slb(1, http())))))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop_tx.send(()).expect("stop");
    let stopped = tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("loop ended")
        .expect("no panic");
    assert_eq!(stopped, Stopped::Removed(RemoveReason::ServiceGone));
}

/// Exit reads served in order (the last one repeats); records when each read happened.
struct Reads(Vec<Seen>);

impl ExitLookup for Reads {
    async fn read(&mut self, _: Duration) -> Seen {
        if self.0.len() > 1 {
            self.0.remove(0)
        } else {
            self.0.first().cloned().unwrap_or(Seen::Gone)
        }
    }
}

fn targets(dataplane: DataplaneMode, nodes: &[&str]) -> Seen {
    Seen::Present(SlbFacts {
        deleting: false,
        dataplane,
        target_nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
    })
}

fn host_agent() -> Agent<FakeDataplane, CaptureSink, FakeNet> {
    let mut c = cfg();
    c.dataplane = Some(DataplaneMode::Host);
    Agent::new(
        c,
        FakeDataplane::default(),
        CaptureSink::default(),
        net(),
        None,
        Arc::new(Metrics::new().expect("metrics")),
    )
    .with_clock(pinned)
}

fn host_slb() -> ServiceLoadBalancer {
    let mut s = slb(1, http());
    s.spec.dataplane = DataplaneMode::Host;
    s
}

/// A replaced agent whose node is still a target leaves its rules and its status entry alone;
/// one whose node left (or whose Service is gone) removes them and reports ShuttingDown.
#[tokio::test(start_paused = true)]
async fn at_exit_the_rules_stay_only_for_a_successor() {
    let o = observed(host_slb());
    let mut a = host_agent();
    a.reconcile(&o).await;
    let written = a.sink.written.len();
    let d = a
        .decide_exit(&mut Reads(vec![targets(DataplaneMode::Host, &["node-a"])]))
        .await;
    assert_eq!(a.finish(d, &o).await, Stopped::Kept(KeepReason::Successor));
    assert_eq!(a.dataplane.cleanups, 0, "no rule removed");
    assert_eq!(a.sink.written.len(), written, "no ShuttingDown written");

    for (seen, reason) in [
        (
            targets(DataplaneMode::Host, &["node-b"]),
            RemoveReason::NodeNotTargeted,
        ),
        (Seen::Gone, RemoveReason::ServiceGone),
        (
            targets(DataplaneMode::Pod, &["node-a"]),
            RemoveReason::DataplaneChanged,
        ),
    ] {
        let mut a = host_agent();
        a.reconcile(&o).await;
        let d = a.decide_exit(&mut Reads(vec![seen])).await;
        assert_eq!(a.finish(d, &o).await, Stopped::Removed(reason));
        assert_eq!(a.dataplane.cleanups, 1, "{reason:?}");
        let last = a.sink.written.last().expect("reported");
        assert_eq!(last.conditions[0].reason, reasons::SHUTTING_DOWN);
    }
}

/// Host dataplane: a keep read right at SIGTERM is read again after the confirm time, so a node
/// the operator removes meanwhile is cleaned; an unanswered API is retried until it answers or
/// the deadline passes, and then the rules stay.
#[tokio::test(start_paused = true)]
async fn host_reads_are_confirmed_and_retried_within_the_deadline() {
    let a = host_agent();
    let start = tokio::time::Instant::now();
    let d = a
        .decide_exit(&mut Reads(vec![
            targets(DataplaneMode::Host, &["node-a"]),
            targets(DataplaneMode::Host, &["node-b"]),
        ]))
        .await;
    assert_eq!(d, Decision::Remove(RemoveReason::NodeNotTargeted));
    assert_eq!(start.elapsed(), a.cfg.exit.confirm);

    let start = tokio::time::Instant::now();
    let lost = Seen::Unreachable("refused".into());
    let d = a
        .decide_exit(&mut Reads(vec![
            lost.clone(),
            lost.clone(),
            targets(DataplaneMode::Host, &["node-a"]),
        ]))
        .await;
    assert_eq!(d, Decision::Keep(KeepReason::Successor));
    assert!(start.elapsed() >= a.cfg.exit.confirm);

    let start = tokio::time::Instant::now();
    let d = a.decide_exit(&mut Reads(vec![lost])).await;
    assert_eq!(d, Decision::Keep(KeepReason::Unreachable));
    assert!(
        start.elapsed() <= a.cfg.exit.deadline,
        "{:?}",
        start.elapsed()
    );
}

/// Pod dataplane: one read, no waiting (the rules go with the pod's network namespace).
#[tokio::test(start_paused = true)]
async fn pod_decides_on_one_read() {
    let mut a = agent(net(), None);
    a.reconcile(&observed(slb(1, http()))).await;
    let start = tokio::time::Instant::now();
    let d = a
        .decide_exit(&mut Reads(vec![
            targets(DataplaneMode::Pod, &["node-a"]),
            Seen::Gone,
        ]))
        .await;
    assert_eq!(d, Decision::Keep(KeepReason::Successor));
    assert_eq!(start.elapsed(), Duration::ZERO);
    let d = a
        .decide_exit(&mut Reads(vec![Seen::Unreachable("x".into())]))
        .await;
    assert_eq!(d, Decision::Keep(KeepReason::Unreachable));
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// An agent built for the Host dataplane does not install rules of the Pod dataplane in the
/// node's namespace (the pool changed its dataplane; its pod is about to be replaced).
#[tokio::test]
async fn an_agent_keeps_its_rules_when_the_dataplane_changes_under_it() {
    let mut a = host_agent();
    a.reconcile(&observed(host_slb())).await;
    assert_eq!(a.dataplane.applied.len(), 1);
    let s = a.reconcile(&observed(slb(2, http()))).await;
    assert_eq!(a.dataplane.applied.len(), 1, "no Pod rules applied");
    assert_eq!(a.dataplane.cleanups, 0);
    assert!(s.ready, "the Host rules still forward");
}
