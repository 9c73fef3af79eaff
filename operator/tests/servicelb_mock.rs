//! Request-sequence tests of the ServiceLB controller against a mocked API server (tower-test),
//! with a pinned clock: the create path, a no-op resync (zero writes), deletion with the
//! finalizer, a type change, and the orphan sweep. Also the operator fault group of the
//! reliability suite: 409s and 500s retried with backoff, watch errors retried with backoff,
//! no duplicate DaemonSets, and a leader hand-over that does not apply again.

mod servicelb_support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Service, ServiceStatus};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use portway_crds::condition::{reasons, types};
use portway_crds::{LoadBalancerPool, ServiceLoadBalancer};
use portway_operator::controllers::servicelb::context::{Context, Stores};
use portway_operator::controllers::servicelb::{ServiceLbArgs, reconcile, sweep, watch};
use portway_operator::fixtures::*;
use portway_operator::metrics::Metrics;
use serde_json::{Value, json};
use servicelb_support::{Fake, Seen, fill};

struct Writers {
    services: Writer<Service>,
    nodes: Writer<Node>,
    slices: Writer<EndpointSlice>,
    pools: Writer<LoadBalancerPool>,
    namespaces: Writer<Namespace>,
    slbs: Writer<ServiceLoadBalancer>,
    daemonsets: Writer<DaemonSet>,
    role_bindings: Writer<RoleBinding>,
}

/// The cluster as the stores see it.
#[derive(Clone, Default)]
struct State {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    slbs: Vec<ServiceLoadBalancer>,
    daemonsets: Vec<DaemonSet>,
    role_bindings: Vec<RoleBinding>,
    /// Pools (default: one pool `all` over the workers, without status).
    pools: Option<Vec<LoadBalancerPool>>,
    /// Nodes (default: [`nodes`], workers w1 and w2).
    nodes: Option<Vec<Node>>,
}

struct World {
    ctx: Arc<Context>,
    fake: Fake,
    w: Writers,
}

fn args() -> ServiceLbArgs {
    ServiceLbArgs {
        load_balancer_class: "portway.dev/servicelb".into(),
        namespace: "portway-system".into(),
        agent_image: "portway-agent:test".into(),
        agent_service_account: "portway-agent".into(),
        agent_status_cluster_role: "portway-agent-status".into(),
        agent_forwarding_sysctls: false,
        reserved_host_ports: portway_operator::plan::reserved::ReservedPorts(
            portway_operator::plan::reserved::defaults(),
        ),
    }
}

fn nodes() -> Vec<Node> {
    vec![
        node(
            "w1",
            &[("role", "worker")],
            &[("InternalIP", "192.168.0.1"), ("ExternalIP", "203.0.113.1")],
        ),
        node(
            "w2",
            &[("role", "worker")],
            &[("InternalIP", "192.168.0.2")],
        ),
    ]
}

fn world(state: &State) -> World {
    let (client, fake) = Fake::start();
    let (services, sw) = reflector::store();
    let (nodes_r, nw) = reflector::store();
    let (slices, slw) = reflector::store();
    let (pools, pw) = reflector::store();
    let (namespaces, nsw) = reflector::store();
    let (slbs, sbw) = reflector::store();
    let (daemonsets, dw) = reflector::store();
    let (role_bindings, rw) = reflector::store();
    let stores = Stores {
        services,
        nodes: nodes_r,
        endpoint_slices: slices,
        pools,
        namespaces,
        service_load_balancers: slbs,
        daemonsets,
        role_bindings,
    };
    let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics");
    let ctx = Arc::new(Context::new(
        client,
        args(),
        stores,
        metrics,
        Arc::new(|| t(1000)),
        Some("test".into()),
    ));
    let mut w = Writers {
        services: sw,
        nodes: nw,
        slices: slw,
        pools: pw,
        namespaces: nsw,
        slbs: sbw,
        daemonsets: dw,
        role_bindings: rw,
    };
    fill(&mut w.nodes, state.nodes.clone().unwrap_or_else(nodes));
    fill(
        &mut w.pools,
        state
            .pools
            .clone()
            .unwrap_or_else(|| vec![pool("all", &[("role", "worker")], 0)]),
    );
    fake.seed(
        "/apis/portway.dev/v1alpha1/loadbalancerpools/all",
        serde_json::to_value(pool("all", &[("role", "worker")], 0)).expect("json"),
    );
    fill(&mut w.namespaces, vec![]);
    let mut world = World { ctx, fake, w };
    world.set(state);
    world
}

impl World {
    fn set(&mut self, s: &State) {
        fill(&mut self.w.services, s.services.clone());
        fill(&mut self.w.slices, s.slices.clone());
        fill(&mut self.w.slbs, s.slbs.clone());
        for slb in &s.slbs {
            let path = format!(
                "/apis/portway.dev/v1alpha1/namespaces/{}/serviceloadbalancers/{}",
                slb.metadata.namespace.as_deref().unwrap_or_default(),
                slb.metadata.name.as_deref().unwrap_or_default()
            );
            self.fake
                .seed(&path, serde_json::to_value(slb).expect("json"));
        }
        fill(&mut self.w.daemonsets, s.daemonsets.clone());
        fill(&mut self.w.role_bindings, s.role_bindings.clone());
        self.ctx.invalidate();
    }

    async fn reconcile(&self, svc: &Service) -> Result<Action, reconcile_error::E> {
        reconcile::reconcile(Arc::new(svc.clone()), self.ctx.clone()).await
    }
}

mod reconcile_error {
    pub type E = portway_operator::controllers::servicelb::Error;
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

const SVC: &str = "/api/v1/namespaces/ns/services/web";
const SLB: &str = "/apis/portway.dev/v1alpha1/namespaces/ns/serviceloadbalancers/web";
const DS: &str = "/apis/apps/v1/namespaces/portway-system/daemonsets/portway-ns-web";
const RB: &str =
    "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings/portway-agent-status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

fn body_of<'a>(seen: &'a [Seen], method: &str, path: &str) -> &'a Value {
    &seen
        .iter()
        .rev()
        .find(|s| s.method == method && s.path == path)
        .unwrap_or_else(|| panic!("no {method} {path} in {:?}", lines(seen)))
        .body
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("deserializes")
}

/// What the stores hold after the server stored the writes in `seen` (plus server defaults).
fn stored_after(before: &State, seen: &[Seen], svc: &Service) -> State {
    let seen: Vec<Seen> = seen.iter().filter(|s| s.code < 300).cloned().collect();
    let seen = seen.as_slice();
    let mut s = before.clone();
    let mut svc = svc.clone();
    if let Some(f) = seen
        .iter()
        .rev()
        .find(|x| x.method == "PATCH" && x.path == SVC)
    {
        svc.metadata.finalizers = parse(f.body["metadata"]["finalizers"].clone());
    }
    if let Some(st) = seen
        .iter()
        .rev()
        .find(|x| x.path == format!("{SVC}/status"))
    {
        svc.status = Some(applied_service_status(svc.status.clone(), &st.body));
    }
    s.services = vec![svc];
    if let Some(spec) = seen
        .iter()
        .rev()
        .find(|x| x.method == "PATCH" && x.path == SLB)
    {
        let mut slb: Value = spec.body.clone();
        slb["metadata"]["generation"] = json!(1);
        let old_status = s
            .slbs
            .first()
            .and_then(|o| serde_json::to_value(&o.status).ok());
        slb["status"] = old_status.unwrap_or(Value::Null);
        if let Some(st) = seen
            .iter()
            .rev()
            .find(|x| x.path == format!("{SLB}/status"))
        {
            let nodes = slb["status"]["nodes"].clone();
            slb["status"] = st.body["status"].clone();
            if !nodes.is_null() {
                slb["status"]["nodes"] = nodes;
            }
        }
        s.slbs = vec![parse(slb)];
    } else if let Some(st) = seen
        .iter()
        .rev()
        .find(|x| x.path == format!("{SLB}/status"))
    {
        let mut slb = serde_json::to_value(&s.slbs[0]).expect("json");
        let nodes = slb["status"]["nodes"].clone();
        slb["status"] = st.body["status"].clone();
        slb["status"]["nodes"] = nodes;
        s.slbs = vec![parse(slb)];
    }
    if let Some(ds) = seen
        .iter()
        .rev()
        .find(|x| x.method == "PATCH" && x.path == DS)
    {
        let mut v = ds.body.clone();
        // Defaults the API server adds: must not count as a difference.
        v["spec"]["revisionHistoryLimit"] = json!(10);
        v["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}});
        v["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
        v["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] =
            json!("/dev/termination-log");
        v["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        v["metadata"]["generation"] = json!(1);
        s.daemonsets = vec![parse(v)];
    }
    if let Some(rb) = seen
        .iter()
        .rev()
        .find(|x| x.method == "PATCH" && x.path == RB)
    {
        s.role_bindings = vec![parse(rb.body.clone())];
    }
    s
}

/// The Service status after a server-side apply of `body` by Portway's field manager: the
/// ingress and Portway's condition are what the body says (absent: removed, as SSA removes
/// fields a manager stops sending); other managers' conditions stay.
fn applied_service_status(old: Option<ServiceStatus>, body: &Value) -> ServiceStatus {
    let mut status = old.unwrap_or_default();
    status.load_balancer = Some(parse(
        body["status"]
            .get("loadBalancer")
            .cloned()
            .unwrap_or(json!({})),
    ));
    let mut conditions: Vec<Condition> = status
        .conditions
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != types::SERVICE_LOAD_BALANCER)
        .collect();
    if let Some(ours) = body["status"]["conditions"].as_array() {
        assert!(
            ours.iter()
                .all(|c| c["type"] == types::SERVICE_LOAD_BALANCER),
            "Portway sends only its own condition type: {ours:?}"
        );
        conditions.extend(ours.iter().map(|c| parse::<Condition>(c.clone())));
    }
    status.conditions = Some(conditions).filter(|c| !c.is_empty());
    status
}

fn with_forwarding(mut s: State, nodes: &[&str]) -> State {
    s.slbs = s.slbs.iter().map(|slb| reported(slb, nodes)).collect();
    s
}

#[tokio::test]
async fn create_path_then_noop_resync_then_agents_forwarding() {
    let svc = service("ns", "web", &["TCP/80", "UDP/53"], 1);
    let state = State {
        services: vec![svc.clone()],
        ..Default::default()
    };
    let mut w = world(&state);

    // 1. Create path.
    let action = w.reconcile(&svc).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let seen = w.fake.requests();
    assert_eq!(
        lines(&seen),
        [
            format!("PATCH {SVC}"),
            format!("PATCH {RB}"),
            format!("PATCH {SLB}"),
            format!("PATCH {SLB}/status"),
            format!("PATCH {DS}"),
            format!("PATCH {SVC}/status"),
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
        ]
    );
    assert_eq!(
        seen[0].body["metadata"]["finalizers"],
        json!(["servicelb.portway.dev/cleanup"])
    );
    assert_eq!(
        seen[0].body["metadata"]["resourceVersion"], "1",
        "finalizer patch is optimistic"
    );
    for s in &seen[1..6] {
        assert!(
            s.query.contains("fieldManager=servicelb.portway.dev")
                && s.query.contains("force=true"),
            "{}: {}",
            s.line(),
            s.query
        );
    }
    let ds = body_of(&seen, "PATCH", DS);
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPort"],
        80
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "portway-agent:test"
    );
    let slb_status = body_of(&seen, "PATCH", &format!("{SLB}/status"));
    assert!(
        slb_status["status"].get("nodes").is_none(),
        "operator never writes status.nodes"
    );
    assert_eq!(slb_status["status"]["observedGeneration"], 1);
    assert_eq!(
        slb_status["status"]["targetNodes"],
        json!(["w1", "w2"]),
        "the nodes the DaemonSet targets, written before the DaemonSet (agents read it at exit)"
    );
    // Placed, not serving yet: the Service says so itself, and publishes no ingress.
    let svc_status = &body_of(&seen, "PATCH", &format!("{SVC}/status"))["status"];
    assert!(svc_status.get("loadBalancer").is_none(), "{svc_status}");
    assert_eq!(
        svc_status["conditions"],
        json!([{
            "type": "portway.dev/LoadBalancer",
            "status": "False",
            "reason": "AgentsNotForwarding",
            "message": "waiting for node agents: 0 of 2 usable nodes report Forwarding=True (details: kubectl get serviceloadbalancer -n ns web)",
            "lastTransitionTime": t(1000).0.to_string(),
        }])
    );
    let event_reasons: Vec<&str> = seen[6..]
        .iter()
        .filter_map(|s| s.body["reason"].as_str())
        .collect();
    assert_eq!(event_reasons, ["PoolMatched", "AgentsNotForwarding"]);
    assert_eq!(
        body_of(&seen, "PATCH", SLB)["metadata"]["ownerReferences"][0]["uid"],
        "uid-ns-web"
    );

    // 2. Resync with everything stored: zero writes, twice.
    let stored = stored_after(&state, &seen, &svc);
    w.set(&stored);
    w.fake.clear();
    let svc1 = stored.services[0].clone();
    w.reconcile(&svc1).await.expect("resync");
    w.reconcile(&svc1).await.expect("resync");
    assert_eq!(
        lines(&w.fake.writes()),
        Vec::<String>::new(),
        "no-op resync must not write"
    );

    // 3. Agents report Forwarding on w1: ingress and Ready change, one Event.
    let forwarding = with_forwarding(stored, &["w1"]);
    w.set(&forwarding);
    w.reconcile(&svc1).await.expect("reconcile");
    let seen = w.fake.requests();
    assert_eq!(
        lines(&seen),
        [
            format!("PATCH {SLB}/status"),
            format!("PATCH {SVC}/status"),
            format!("POST {EVENTS}")
        ]
    );
    let svc_status = &body_of(&seen, "PATCH", &format!("{SVC}/status"))["status"];
    assert_eq!(
        svc_status["loadBalancer"]["ingress"],
        json!([{"ip": "203.0.113.1", "ipMode": "VIP"}])
    );
    assert_eq!(
        (
            &svc_status["conditions"][0]["status"],
            &svc_status["conditions"][0]["reason"]
        ),
        (&json!("True"), &json!(reasons::SERVING))
    );
    assert_eq!(seen[2].body["reason"], "AgentsForwarding");

    // 4. And that stored: quiet again.
    let mut stored = stored_after(&forwarding, &seen, &svc1);
    w.set(&stored);
    w.fake.clear();
    w.reconcile(&stored.services[0]).await.expect("resync");
    assert!(w.fake.writes().is_empty(), "{:?}", lines(&w.fake.writes()));

    // 5. Someone edits the DaemonSet (its generation moves past the one Portway applied):
    // the operator applies its spec again, once.
    stored.daemonsets[0].metadata.generation = Some(2);
    w.set(&stored);
    w.reconcile(&stored.services[0]).await.expect("drift");
    assert_eq!(lines(&w.fake.writes()), [format!("PATCH {DS}")]);
    println!("noop resync writes: 0");
}

async fn served_state() -> State {
    let svc = service("ns", "web", &["TCP/80"], 1);
    let state = State {
        services: vec![svc.clone()],
        ..Default::default()
    };
    let w = world(&state);
    w.reconcile(&svc).await.expect("create");
    let stored = stored_after(&state, &w.fake.requests(), &svc);
    let forwarding = with_forwarding(stored, &["w1"]);
    let mut w = world(&forwarding);
    w.reconcile(&forwarding.services[0])
        .await
        .expect("forwarding");
    let s = stored_after(&forwarding, &w.fake.requests(), &forwarding.services[0]);
    w.set(&s);
    s
}

#[tokio::test]
async fn deletion_with_finalizer_cleans_up_then_releases() {
    let mut state = served_state().await;
    let mut svc = state.services[0].clone();
    assert!(
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .is_some_and(|i| !i.is_empty())
    );
    svc.metadata.deletion_timestamp = Some(t(2000));
    state.services = vec![svc.clone()];
    let w = world(&state);
    let action = w.reconcile(&svc).await.expect("cleanup");
    assert_eq!(action, Action::await_change());
    let seen = w.fake.requests();
    assert_eq!(
        lines(&seen),
        [
            format!("DELETE {SLB}"),
            format!("DELETE {DS}"),
            format!("PATCH {SVC}/status"),
            format!("PATCH {SVC}")
        ]
    );
    assert_eq!(
        seen[2].body["status"],
        json!({}),
        "ingress and Portway's condition withdrawn (SSA removes what the manager no longer sends)"
    );
    assert_eq!(
        seen[3].body["metadata"]["finalizers"],
        json!([]),
        "finalizer removed last"
    );
    assert_eq!(
        seen[3].body["metadata"]["resourceVersion"], "2",
        "the finalizer patch carries the resourceVersion the status write returned (not the 1 it read)"
    );
}

#[tokio::test]
async fn type_change_cleans_up_like_deletion() {
    let mut state = served_state().await;
    let mut svc = state.services[0].clone();
    svc.spec.as_mut().expect("spec").type_ = Some("ClusterIP".into());
    state.services = vec![svc.clone()];
    let w = world(&state);
    w.reconcile(&svc).await.expect("cleanup");
    assert_eq!(
        lines(&w.fake.requests()),
        [
            format!("DELETE {SLB}"),
            format!("DELETE {DS}"),
            format!("PATCH {SVC}/status"),
            format!("PATCH {SVC}")
        ]
    );
}

#[tokio::test]
async fn orphan_sweep_deletes_what_nothing_desires() {
    let state = served_state().await;
    let mut orphan_ds = state.daemonsets[0].clone();
    orphan_ds.metadata.name = Some("portway-gone-svc".into());
    let labels = orphan_ds.metadata.labels.as_mut().expect("labels");
    labels.insert("portway.dev/service-namespace".into(), "gone".into());
    labels.insert("portway.dev/service-name".into(), "svc".into());
    let mut orphan_slb = state.slbs[0].clone();
    orphan_slb.metadata.namespace = Some("other".into());
    let mut orphan_rb = state.role_bindings[0].clone();
    orphan_rb.metadata.namespace = Some("other".into());
    let mut s = state.clone();
    s.daemonsets.push(orphan_ds);
    s.slbs.push(orphan_slb);
    s.role_bindings.push(orphan_rb);
    let w = world(&s);
    let report = sweep::sweep(&w.ctx).await.expect("sweep");
    assert_eq!(
        (
            report.deleted_daemonsets,
            report.deleted_service_load_balancers,
            report.deleted_role_bindings
        ),
        (1, 1, 1)
    );
    let writes: Vec<String> = lines(&w.fake.writes());
    assert_eq!(
        writes,
        [
            "PATCH /apis/portway.dev/v1alpha1/loadbalancerpools/all/status".to_owned(),
            // ServiceLoadBalancers first: an agent stopped by the DaemonSet's deletion must
            // find its object gone and remove its rules.
            "DELETE /apis/portway.dev/v1alpha1/namespaces/other/serviceloadbalancers/web".to_owned(),
            "DELETE /apis/apps/v1/namespaces/portway-system/daemonsets/portway-gone-svc".to_owned(),
            "DELETE /apis/rbac.authorization.k8s.io/v1/namespaces/other/rolebindings/portway-agent-status".to_owned(),
        ]
    );
    let pool_status = &w.fake.writes()[0].body["status"];
    assert_eq!(
        (
            pool_status["nodes"].as_i64(),
            pool_status["services"].as_i64()
        ),
        (Some(2), Some(1))
    );
}

/// One fault scenario: inject, reconcile like the controller would until success, check.
async fn fault_case(needle: &str, code: u16, times: usize) -> (bool, usize, Vec<Duration>) {
    let svc = service("ns", "web", &["TCP/80"], 1);
    let mut state = State {
        services: vec![svc.clone()],
        ..Default::default()
    };
    let mut w = world(&state);
    w.fake.fail(needle, code, times);
    let mut waits = Vec::new();
    let mut recovered = false;
    for _ in 0..10 {
        let current = state.services[0].clone();
        match w.reconcile(&current).await {
            Ok(_) => {
                recovered = true;
                break;
            }
            Err(e) => {
                let action = reconcile::error_policy(Arc::new(current), &e, w.ctx.clone());
                let wait = (1..=300)
                    .map(Duration::from_secs)
                    .find(|d| action == Action::requeue(*d))
                    .expect("requeue with a delay");
                waits.push(wait);
                // The server kept what succeeded before the fault.
                state = stored_after(&state, &w.fake.requests(), &state.services[0]);
                w.set(&state);
            }
        }
    }
    let ds_writes: Vec<Seen> = w
        .fake
        .requests()
        .into_iter()
        .filter(|s| s.path.contains("/daemonsets"))
        .collect();
    let distinct: std::collections::BTreeSet<&str> =
        ds_writes.iter().map(|s| s.path.as_str()).collect();
    let posts = ds_writes.iter().filter(|s| s.method == "POST").count();
    (recovered, distinct.len().saturating_sub(1) + posts, waits)
}

#[tokio::test]
async fn operator_faults_are_retried_with_backoff() {
    let cases: [(&str, &str, u16, usize); 5] = [
        (
            "409 on the finalizer patch",
            "PATCH /api/v1/namespaces/ns/services/web",
            409,
            1,
        ),
        (
            "500 on the DaemonSet apply (twice)",
            "PATCH /apis/apps/v1/",
            500,
            2,
        ),
        (
            "409 on the ServiceLoadBalancer status",
            "serviceloadbalancers/web/status",
            409,
            1,
        ),
        (
            "500 on the ServiceLoadBalancer apply",
            "PATCH /apis/portway.dev/v1alpha1/namespaces/ns/serviceloadbalancers/web",
            500,
            3,
        ),
        ("500 on the RoleBinding apply", "rolebindings", 500, 1),
    ];
    let mut tried = 0;
    let mut recovered = 0;
    let mut duplicates = 0;
    for (what, needle, code, times) in cases {
        tried += 1;
        let (ok, dups, waits) = fault_case(needle, code, times).await;
        assert!(ok, "{what}: not recovered");
        assert_eq!(waits.len(), times, "{what}: one retry per injected fault");
        let expected: Vec<Duration> = (0..times).map(|i| Duration::from_secs(1 << i)).collect();
        assert_eq!(waits, expected, "{what}: exponential backoff");
        recovered += usize::from(ok);
        duplicates += dups;
    }
    let (watch_ok, gap) = watch_recovers_after_errors().await;
    tried += 1;
    recovered += usize::from(watch_ok);
    assert!(watch_ok, "watch did not recover");
    assert!(
        gap >= Duration::from_millis(500),
        "watch retried after {gap:?}, without backoff"
    );
    let handover_writes = leader_handover_writes().await;
    tried += 1;
    recovered += usize::from(handover_writes == 0);
    assert_eq!(handover_writes, 0, "the new leader re-applied");
    assert_eq!(duplicates, 0);
    // libtest swallows println! of passing tests: write past its capture so that a plain
    // `cargo test --workspace` shows the summary (issue 8).
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr().lock(),
        "operator-faults: {tried} tried, {recovered} recovered, {duplicates} duplicate DaemonSets"
    );
}

/// A list that fails with 500, then a watch that fails: the stream yields the errors, backs off,
/// relists, and ends up with the object in its store.
async fn watch_recovers_after_errors() -> (bool, Duration) {
    let (client, fake) = Fake::start();
    fake.fail("GET /api/v1/nodes", 500, 2);
    fake.on_get(
        "/api/v1/nodes",
        200,
        json!({
            "kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": "5"},
            "items": [serde_json::to_value(&nodes()[0]).expect("json")],
        }),
    );
    let (reader, writer) = reflector::store::<Node>();
    let hooks = watch::Hooks::new(Default::default());
    let stream = watch::objects(
        kube::Api::<Node>::all(client),
        Default::default(),
        writer,
        hooks.global(watch::node_fingerprint),
    );
    let mut stream = std::pin::pin!(stream);
    let mut errors = 0;
    let mut got = false;
    tokio::time::pause();
    for _ in 0..20 {
        match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
            Ok(Some(Err(_))) => errors += 1,
            Ok(Some(Ok(_))) => got = true,
            _ => break,
        }
        if got && reader.state().len() == 1 {
            break;
        }
    }
    tokio::time::resume();
    let lists: Vec<Seen> = fake
        .requests()
        .into_iter()
        .filter(|s| s.path == "/api/v1/nodes")
        .collect();
    let gap = lists
        .get(1)
        .zip(lists.first())
        .map(|(b, a)| b.at - a.at)
        .unwrap_or_default();
    (got && errors >= 2 && reader.state().len() == 1, gap)
}

/// Replica A converged the cluster and lost the Lease; replica B starts with fresh caches of
/// the same cluster and must write nothing.
async fn leader_handover_writes() -> usize {
    let mut state = served_state().await;
    // Replica A's sweep wrote the pool status too.
    let a = world(&state);
    sweep::sweep(&a.ctx).await.expect("sweep on A");
    let pool_status = a
        .fake
        .writes()
        .iter()
        .find(|s| s.path.ends_with("loadbalancerpools/all/status"))
        .map(|s| s.body["status"].clone());
    let mut p = serde_json::to_value(pool("all", &[("role", "worker")], 0)).expect("json");
    p["status"] = pool_status.expect("A wrote the pool status");
    state.pools = Some(vec![parse(p)]);
    let b = world(&state);
    for svc in &state.services {
        b.reconcile(svc).await.expect("reconcile on the new leader");
    }
    sweep::sweep(&b.ctx).await.expect("sweep");
    // The pool status write is the only thing A's sweep would have made: apply it and retry.
    let writes = b.fake.writes();
    let non_pool: Vec<&Seen> = writes
        .iter()
        .filter(|s| !s.path.contains("loadbalancerpools"))
        .collect();
    non_pool.len()
}

/// (group, resource[/subresource], verb) of a request, as RBAC sees it.
fn rbac_of(s: &Seen) -> (String, String, String) {
    let parts: Vec<&str> = s.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.first() {
        Some(&"api") => ("", &parts[2..]),
        _ => (
            parts.get(1).copied().unwrap_or(""),
            &parts[parts.len().min(3)..],
        ),
    };
    let rest: Vec<&str> = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        rest[2..].to_vec()
    } else {
        rest.to_vec()
    };
    let resource = match rest.len() {
        0 => String::new(),
        1 | 2 => rest[0].to_owned(),
        _ => format!("{}/{}", rest[0], rest[2]),
    };
    let verb = match s.method.as_str() {
        "PATCH" => "patch",
        "POST" => "create",
        "PUT" => "update",
        "DELETE" => "delete",
        _ if s.query.contains("watch=true") => "watch",
        _ if rest.len() == 1 => "list",
        _ => "get",
    };
    (group.to_owned(), resource, verb.to_owned())
}

#[tokio::test]
async fn every_request_is_covered_by_the_permission_list() {
    use portway_operator::permissions;
    let mut seen = Vec::new();
    // Create path, agents forwarding, deletion, orphan sweep, and the watches.
    let svc = service("ns", "web", &["TCP/80"], 1);
    let state = State {
        services: vec![svc.clone()],
        ..Default::default()
    };
    let w = world(&state);
    w.reconcile(&svc).await.expect("create");
    seen.extend(w.fake.requests());
    let mut served = served_state().await;
    let mut deleting = served.services[0].clone();
    deleting.metadata.deletion_timestamp = Some(t(2000));
    served.services = vec![deleting.clone()];
    let w = world(&served);
    w.reconcile(&deleting).await.expect("delete");
    sweep::sweep(&w.ctx).await.expect("sweep");
    seen.extend(w.fake.requests());
    let mut used: std::collections::BTreeSet<(String, String, String)> =
        seen.iter().map(rbac_of).collect();
    // What the watches list and watch (one stream per kind, see controllers::servicelb::run).
    for (g, r) in [
        ("", "services"),
        ("", "nodes"),
        ("", "namespaces"),
        ("discovery.k8s.io", "endpointslices"),
        ("portway.dev", "loadbalancerpools"),
        ("portway.dev", "serviceloadbalancers"),
        ("apps", "daemonsets"),
        ("rbac.authorization.k8s.io", "rolebindings"),
    ] {
        for v in ["list", "watch"] {
            used.insert((g.into(), r.into(), v.into()));
        }
    }
    let granted: std::collections::BTreeSet<(String, String, String)> = permissions::COMMON
        .iter()
        .chain(permissions::SERVICELB)
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(move |v| (p.group.to_owned(), p.resource.to_owned(), (*v).to_owned()))
        })
        .collect();
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(missing.is_empty(), "requests without a grant: {missing:?}");
    // Every SERVICELB grant is used (SSA creates are authorized as create; bind is what the
    // RoleBinding to the agents' ClusterRole needs).
    let implied = |g: &(String, String, String)| {
        g.2 == "create" && used.contains(&(g.0.clone(), g.1.clone(), "patch".into()))
            || g.2 == "bind" && used.iter().any(|u| u.1 == "rolebindings" && u.2 == "patch")
    };
    let servicelb: std::collections::BTreeSet<(String, String, String)> = permissions::SERVICELB
        .iter()
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(move |v| (p.group.to_owned(), p.resource.to_owned(), (*v).to_owned()))
        })
        .collect();
    let unused: Vec<_> = servicelb
        .iter()
        .filter(|g| !used.contains(*g) && !implied(g))
        .collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
}

/// A Service Portway cannot place gets its reason on its own status (one write, one Event);
/// a resync writes nothing; once a pool exists it is placed; when it moves to another class its
/// condition is withdrawn (and nothing else is touched).
#[tokio::test]
async fn unplaced_service_gets_a_condition_then_nothing_then_is_placed_or_released() {
    let mut svc = annotate(
        service("ns", "web", &["TCP/80"], 1),
        "portway.dev/pool",
        "edge",
    );
    // Another controller's condition on the same Service: never sent, never lost.
    let foreign = portway_crds::condition::new("example.com/Other", true, "Fine", "m", None, &t(5));
    svc.status = Some(ServiceStatus {
        conditions: Some(vec![foreign.clone()]),
        ..Default::default()
    });
    let state = State {
        services: vec![svc.clone()],
        ..Default::default()
    };
    let mut w = world(&state);
    w.reconcile(&svc).await.expect("reconcile");
    let seen = w.fake.requests();
    assert_eq!(
        lines(&seen),
        [format!("PATCH {SVC}/status"), format!("POST {EVENTS}")]
    );
    assert!(
        seen[0].query.contains("fieldManager=servicelb.portway.dev")
            && seen[0].query.contains("force=true"),
        "{}",
        seen[0].query
    );
    let status = &seen[0].body["status"];
    assert_eq!(status["conditions"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        status["conditions"][0]["type"],
        types::SERVICE_LOAD_BALANCER
    );
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], reasons::POOL_NOT_FOUND);
    assert!(status.get("loadBalancer").is_none());
    assert_eq!(seen[1].body["reason"], reasons::POOL_NOT_FOUND);
    assert_eq!(seen[1].body["type"], "Warning");

    // Stored (next to the foreign condition): a resync writes nothing and repeats no Event.
    let stored = stored_after(&state, &seen, &svc);
    let conds = stored.services[0]
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    assert_eq!(conds.len(), 2, "{conds:?}");
    assert_eq!(conds[0], foreign);
    w.set(&stored);
    w.fake.clear();
    let svc1 = stored.services[0].clone();
    w.reconcile(&svc1).await.expect("resync");
    w.reconcile(&svc1).await.expect("resync");
    assert_eq!(lines(&w.fake.requests()), Vec::<String>::new());

    // The pool appears: placed like any Service; its condition turns to AgentsNotForwarding
    // (still False: the transition time stays).
    let mut with_pool = stored.clone();
    set_own_condition_time(&mut with_pool.services[0], t(500));
    let svc1 = with_pool.services[0].clone();
    with_pool.pools = Some(vec![
        pool("all", &[("role", "worker")], 0),
        pool("edge", &[("role", "worker")], 0),
    ]);
    let mut w = world(&with_pool);
    w.reconcile(&svc1).await.expect("placed");
    let seen = w.fake.requests();
    assert_eq!(
        lines(&seen)[..6],
        [
            format!("PATCH {SVC}"),
            format!("PATCH {RB}"),
            format!("PATCH {SLB}"),
            format!("PATCH {SLB}/status"),
            format!("PATCH {DS}"),
            format!("PATCH {SVC}/status"),
        ]
    );
    let c = &body_of(&seen, "PATCH", &format!("{SVC}/status"))["status"]["conditions"][0];
    assert_eq!(c["reason"], reasons::AGENTS_NOT_FORWARDING);
    assert_eq!(
        c["lastTransitionTime"],
        t(500).0.to_string(),
        "still False: the transition time stays"
    );

    // Instead, it moves to another class while unplaced: only Portway's condition goes.
    let mut other = svc1.clone();
    other.spec.as_mut().expect("spec").load_balancer_class = Some("example.com/lb".into());
    let mut moved = stored.clone();
    moved.services = vec![other.clone()];
    w.set(&moved);
    w.fake.clear();
    w.reconcile(&other).await.expect("released");
    let seen = w.fake.requests();
    assert_eq!(lines(&seen), [format!("PATCH {SVC}/status")]);
    assert_eq!(
        seen[0].body["status"],
        json!({}),
        "withdraws only what Portway owns"
    );
    let after = stored_after(&moved, &seen, &other);
    assert_eq!(
        after.services[0]
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone()),
        Some(vec![foreign]),
        "the other controller's condition stays"
    );
    w.set(&after);
    w.fake.clear();
    w.reconcile(&after.services[0]).await.expect("resync");
    assert!(
        w.fake.requests().is_empty(),
        "{:?}",
        lines(&w.fake.requests())
    );
}

/// Sets the `lastTransitionTime` of Portway's condition on a stored Service.
fn set_own_condition_time(
    svc: &mut Service,
    time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) {
    for c in svc
        .status
        .as_mut()
        .and_then(|s| s.conditions.as_mut())
        .into_iter()
        .flatten()
    {
        if c.type_ == types::SERVICE_LOAD_BALANCER {
            c.last_transition_time = time.clone();
        }
    }
}

/// The condition follows the Service through deletion of its pool (placed -> unplaced with the
/// finalizer still on): DaemonSet and ServiceLoadBalancer go, the ingress is withdrawn, the
/// condition says NoMatchingPool, then the finalizer goes.
#[tokio::test]
async fn pool_deleted_under_a_served_service_leaves_the_reason_on_the_service() {
    let mut state = served_state().await;
    state.pools = Some(vec![]);
    set_own_condition_time(&mut state.services[0], t(500));
    let w = world(&state);
    let svc = state.services[0].clone();
    w.reconcile(&svc).await.expect("reconcile");
    let seen = w.fake.requests();
    assert_eq!(
        lines(&seen)[..4],
        [
            format!("DELETE {SLB}"),
            format!("DELETE {DS}"),
            format!("PATCH {SVC}/status"),
            format!("PATCH {SVC}"),
        ]
    );
    let status = &seen[2].body["status"];
    assert!(status.get("loadBalancer").is_none(), "ingress withdrawn");
    assert_eq!(status["conditions"][0]["reason"], reasons::NO_MATCHING_POOL);
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(
        status["conditions"][0]["lastTransitionTime"],
        t(1000).0.to_string(),
        "True -> False: the transition time moves"
    );
}

/// managedFields of a DaemonSet: Portway's apply, plus `others` as (manager, subresource).
fn managed_fields(others: &[(&str, &str)]) -> Value {
    let mut v = vec![json!({
        "manager": "servicelb.portway.dev", "operation": "Apply", "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {"f:template": {"f:spec": {}}}},
    })];
    for (manager, sub) in others {
        let fields = if sub.is_empty() {
            json!({"f:spec": {"f:template": {"f:spec": {"f:containers":
                {"k:{\"name\":\"agent\"}": {"f:image": {}}}}}}})
        } else {
            json!({"f:status": {"f:numberReady": {}}})
        };
        v.push(
            json!({"manager": manager, "operation": "Update", "apiVersion": "apps/v1",
                      "fieldsType": "FieldsV1", "fieldsV1": fields, "subresource": sub}),
        );
    }
    Value::Array(v)
}

/// The DaemonSet as the operator's watch caches it (managedFields read, then dropped).
fn as_watched(ds: &DaemonSet, managed: Value) -> DaemonSet {
    use portway_operator::controllers::servicelb::watch::Slim;
    let mut v = serde_json::to_value(ds).expect("json");
    v["metadata"]["managedFields"] = managed;
    let mut ds: DaemonSet = parse(v);
    ds.slim();
    ds
}

#[tokio::test]
async fn a_daemonset_edited_while_the_operator_was_down_is_applied_again_after_a_restart() {
    let mut state = served_state().await;
    let svc = state.services[0].clone();
    let ds_writes = |w: &World| -> Vec<String> {
        lines(&w.fake.writes())
            .into_iter()
            .filter(|l| l.contains("/daemonsets/"))
            .collect()
    };

    // A fresh process (restart, new leader): only Portway and the DaemonSet controller (status)
    // manage the DaemonSet: nothing to write.
    let untouched = as_watched(
        &state.daemonsets[0],
        managed_fields(&[("kube-controller-manager", "status")]),
    );
    state.daemonsets = vec![untouched];
    let w = world(&state);
    w.reconcile(&svc).await.expect("restart");
    assert_eq!(ds_writes(&w), Vec::<String>::new());

    // Edited while no operator ran (kubectl edit owns the agent's image now): the hash still
    // matches, but the new process sees the foreign owner and applies once.
    let mut edited = state.daemonsets[0].clone();
    edited.metadata.generation = Some(2);
    let edited = as_watched(
        &edited,
        managed_fields(&[("kube-controller-manager", "status"), ("kubectl-edit", "")]),
    );
    assert_eq!(
        edited
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(watch::SPEC_EDITED_BY_CACHE_MARK))
            .map(String::as_str),
        Some("kubectl-edit")
    );
    state.daemonsets = vec![edited];
    let mut w = world(&state);
    w.reconcile(&svc).await.expect("repair");
    assert_eq!(ds_writes(&w), [format!("PATCH {DS}")]);

    // The apply's answer is what this process compares with from now on: the object seen again
    // at that generation, with the editor still owning a field, is left alone: no loop.
    let key = portway_operator::plan::Key::new("portway-system", "portway-ns-web");
    let answered = w
        .ctx
        .applied_generation(&key)
        .expect("the apply's generation");
    state.daemonsets[0].metadata.generation = Some(answered);
    w.fake.clear();
    w.set(&state);
    w.reconcile(&svc).await.expect("after repair");
    assert_eq!(
        ds_writes(&w),
        Vec::<String>::new(),
        "one repair, not a loop"
    );
}

/// `status.nodes` of `ns/web` with an entry of a node outside the pool whose agent reported
/// Forwarding=False (`w9`) and one of a deleted Node (`gone`), besides w1's.
async fn state_with_stale_entries() -> State {
    let mut state = served_state().await;
    let mut all = nodes();
    all.push(node(
        "w9",
        &[("role", "storage")],
        &[("InternalIP", "192.168.0.9")],
    ));
    state.nodes = Some(all);
    state.slbs = state
        .slbs
        .iter()
        .map(|slb| reported_as(slb, &[("w1", true), ("gone", true), ("w9", false)]))
        .collect();
    state
}

/// Entries of nodes that no longer serve the Service go with one JSON Patch on the status
/// subresource: a `test` of each entry's node name before its `remove`, highest index first.
/// Nothing else is written, and once they are gone a resync writes nothing.
#[tokio::test]
async fn stale_node_entries_are_removed_with_one_guarded_json_patch() {
    let state = state_with_stale_entries().await;
    let mut w = world(&state);
    w.fake.clear();
    let action = w.reconcile(&state.services[0]).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let writes = w.fake.writes();
    assert_eq!(lines(&writes), [format!("PATCH {SLB}/status")]);
    assert_eq!(
        writes[0].body,
        json!([
            {"op": "test", "path": "/status/nodes/2/node", "value": "w9"},
            {"op": "remove", "path": "/status/nodes/2"},
            {"op": "test", "path": "/status/nodes/1/node", "value": "gone"},
            {"op": "remove", "path": "/status/nodes/1"},
        ])
    );
    assert_eq!(
        writes[0].query.trim_start_matches('&'),
        "fieldManager=servicelb.portway.dev",
        "a JSON Patch under Portway's name, not a forced apply"
    );
    assert_eq!(writes[0].code, 200);
    let stored = w.fake.objects.lock().unwrap()[SLB].clone();
    let left: Vec<&str> = stored["status"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|e| e["node"].as_str())
        .collect();
    assert_eq!(left, ["w1"], "only the serving node's entry is left");
    assert_eq!(
        w.ctx
            .metrics
            .writes
            .with_label_values(&["serviceloadbalancers/status", "patch"])
            .get(),
        1,
        "counted as an API write"
    );

    // Stored: a resync writes nothing.
    let mut pruned = state.clone();
    pruned.slbs = state
        .slbs
        .iter()
        .map(|slb| reported_as(slb, &[("w1", true)]))
        .collect();
    w.set(&pruned);
    w.fake.clear();
    w.reconcile(&pruned.services[0]).await.expect("resync");
    assert_eq!(lines(&w.fake.writes()), Vec::<String>::new());
}

/// When the list changed on the server after the store saw it (an agent added its entry in
/// front), the `test` fails with 422: nothing is removed, the reconcile succeeds and comes back
/// soon, without the error backoff.
#[tokio::test]
async fn stale_node_entries_patch_that_lost_a_race_removes_nothing_and_requeues() {
    let state = state_with_stale_entries().await;
    let w = world(&state);
    let slb = &state.slbs[0];
    let mut on_server = reported_as(
        slb,
        &[("w2", true), ("w1", true), ("gone", true), ("w9", false)],
    );
    on_server.metadata.namespace = Some("ns".into());
    w.fake
        .seed(SLB, serde_json::to_value(&on_server).expect("json"));
    w.fake.clear();
    let action = w.reconcile(&state.services[0]).await.expect("not an error");
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
    let writes = w.fake.writes();
    assert_eq!(lines(&writes), [format!("PATCH {SLB}/status")]);
    assert_eq!(writes[0].code, 422);
    let stored = w.fake.objects.lock().unwrap()[SLB].clone();
    assert_eq!(
        stored["status"]["nodes"].as_array().map(Vec::len),
        Some(4),
        "nothing removed"
    );
    assert_eq!(
        w.ctx
            .metrics
            .reconciles
            .with_label_values(&["servicelb", "error"])
            .get(),
        0,
        "not a failed reconcile"
    );

    // A 500 is an error like any other write's: retried with backoff.
    w.fake.fail(&format!("PATCH {SLB}/status"), 500, 1);
    assert!(w.reconcile(&state.services[0]).await.is_err());
}
