//! Request-sequence tests of the ClusterCIDR controller against a mocked API server (tower-test)
//! with a pinned clock: which requests it makes, in which order, with which bodies.

mod clustercidr_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustercidr_support::mock::{self, Log, Reply, Req};
use clustercidr_support::{cc, node, time};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::Event;
use portway_crds::ClusterCIDR;
use portway_crds::condition::{reasons, types};
use portway_crds::names::{CLUSTER_CIDR_ANNOTATION, CLUSTER_CIDR_FINALIZER};
use portway_operator::cidr::{Allocator, NodeFacts, status};
use portway_operator::controllers::clustercidr::{
    self, Args, CidrController, Clock, Metrics, events,
};
use serde_json::{Value, json};

const NODES: &str = "/api/v1/nodes";
const CIDRS: &str = "/apis/portway.dev/v1alpha1/clustercidrs";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn pinned() -> Clock {
    Arc::new(|| time(1_700_000_000))
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// A small stateful fake of the API server: Nodes, ClusterCIDRs and Events. `hook` may answer a
/// request first (to inject failures).
#[derive(Clone, Default)]
struct Fake {
    nodes: Arc<Mutex<BTreeMap<String, Value>>>,
    cidrs: Arc<Mutex<BTreeMap<String, Value>>>,
    rv: Arc<Mutex<u64>>,
}

impl Fake {
    fn new(nodes: &[Node], cidrs: &[ClusterCIDR]) -> Self {
        let f = Fake::default();
        for n in nodes {
            let mut v = serde_json::to_value(n).unwrap();
            v["metadata"]["resourceVersion"] = json!("10");
            f.nodes
                .lock()
                .unwrap()
                .insert(n.metadata.name.clone().unwrap(), v);
        }
        for c in cidrs {
            let mut v = serde_json::to_value(c).unwrap();
            v["metadata"]["resourceVersion"] = json!("10");
            f.cidrs
                .lock()
                .unwrap()
                .insert(c.metadata.name.clone().unwrap(), v);
        }
        *f.rv.lock().unwrap() = 10;
        f
    }

    fn next_rv(&self) -> String {
        let mut rv = self.rv.lock().unwrap();
        *rv += 1;
        rv.to_string()
    }

    fn node(&self, name: &str) -> Node {
        serde_json::from_value(self.nodes.lock().unwrap()[name].clone()).unwrap()
    }

    fn cidr(&self, name: &str) -> ClusterCIDR {
        serde_json::from_value(self.cidrs.lock().unwrap()[name].clone()).unwrap()
    }

    fn answer(&self, req: &Req) -> Reply {
        let path = req.path();
        let watch = req.query().contains("watch=true");
        let (store, kind, rest) = if let Some(rest) = path.strip_prefix(NODES) {
            (&self.nodes, "Node", rest)
        } else if let Some(rest) = path.strip_prefix(CIDRS) {
            (&self.cidrs, "ClusterCIDR", rest)
        } else if path.starts_with(EVENTS) {
            return Reply::Json(201, req.body.clone());
        } else {
            return mock::status_error(404, "NotFound", "no such path");
        };
        let mut parts = rest.trim_start_matches('/').split('/');
        let name = parts.next().unwrap_or_default().to_owned();
        let sub = parts.next();
        match (req.method.as_str(), name.is_empty()) {
            ("GET", true) if watch => Reply::Hang,
            ("GET", true) => {
                let items: Vec<Value> = store.lock().unwrap().values().cloned().collect();
                let api_version = if kind == "Node" {
                    "v1"
                } else {
                    "portway.dev/v1alpha1"
                };
                Reply::Json(
                    200,
                    json!({
                        "apiVersion": api_version, "kind": format!("{kind}List"),
                        "metadata": {"resourceVersion": self.rv.lock().unwrap().to_string()},
                        "items": items,
                    }),
                )
            }
            ("GET", false) => match store.lock().unwrap().get(&name) {
                Some(v) => Reply::Json(200, v.clone()),
                None => mock::status_error(404, "NotFound", "not found"),
            },
            ("POST", true) => {
                let mut v = req.body.clone();
                let name = v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if store.lock().unwrap().contains_key(&name) {
                    return mock::status_error(409, "AlreadyExists", "exists");
                }
                v["metadata"]["resourceVersion"] = json!(self.next_rv());
                store.lock().unwrap().insert(name, v.clone());
                Reply::Json(201, v)
            }
            ("PATCH", false) => {
                let rv = self.next_rv();
                let mut store = store.lock().unwrap();
                let Some(current) = store.get_mut(&name) else {
                    return mock::status_error(404, "NotFound", "not found");
                };
                if sub == Some("status") {
                    current["status"] = req.body["status"].clone();
                } else {
                    let want = &req.body["metadata"]["resourceVersion"];
                    if !want.is_null() && *want != current["metadata"]["resourceVersion"] {
                        return mock::status_error(409, "Conflict", "the object has been modified");
                    }
                    let mut body = req.body.clone();
                    if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                    }
                    merge(current, &body);
                }
                current["metadata"]["resourceVersion"] = json!(rv);
                Reply::Json(200, current.clone())
            }
            _ => mock::status_error(405, "MethodNotAllowed", "unsupported"),
        }
    }
}

/// A controller on a fake API; `hook` can answer first.
fn controller(
    fake: &Fake,
    mut hook: impl FnMut(&Req) -> Option<Reply> + Send + 'static,
) -> (CidrController, Log, Metrics) {
    let f = fake.clone();
    let (client, log) = mock::client(move |req| hook(req).unwrap_or_else(|| f.answer(req)));
    let metrics = Metrics::unregistered().unwrap();
    (
        CidrController::new(client, metrics.clone(), pinned(), None),
        log,
        metrics,
    )
}

/// Feeds both initial lists (ClusterCIDRs first, as the watches may deliver them in any order).
async fn sync(ctl: &mut CidrController, nodes: &[Node], cidrs: &[ClusterCIDR]) {
    ctl.handle_cidr_event(Event::Init).await;
    for c in cidrs {
        ctl.handle_cidr_event(Event::InitApply(c.clone())).await;
    }
    ctl.handle_cidr_event(Event::InitDone).await;
    ctl.handle_node_event(Event::Init).await;
    for n in nodes {
        ctl.handle_node_event(Event::InitApply(n.clone())).await;
    }
    ctl.handle_node_event(Event::InitDone).await;
}

fn lines(reqs: &[Req]) -> Vec<String> {
    reqs.iter().map(Req::line).collect()
}

fn condition<'a>(status: &'a Value, t: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == t))
        .unwrap_or_else(|| panic!("no {t} in {status}"))
}

fn dual() -> ClusterCIDR {
    cc("default")
        .v4("10.42.0.0/16", 8)
        .v6("fd00:10:42::/48", 64)
        .finalized()
        .build()
}

#[tokio::test]
async fn a_new_node_is_patched_once_then_an_event_then_the_status() {
    let cidrs = vec![dual()];
    let nodes = vec![node("n1").rv("10").build()];
    let fake = Fake::new(&nodes, &cidrs);
    let (mut ctl, log, metrics) = controller(&fake, |_| None);
    sync(&mut ctl, &nodes, &cidrs).await;

    let reqs = log.take();
    assert_eq!(
        lines(&reqs),
        [format!("PATCH {NODES}/n1"), format!("POST {EVENTS}")]
    );
    let patch = &reqs[0];
    assert!(
        patch
            .query()
            .contains("fieldManager=clustercidr.portway.dev%2Fnodes"),
        "{}",
        patch.uri
    );
    assert_eq!(
        patch.body,
        json!({
            "metadata": {
                "resourceVersion": "10",
                "annotations": {CLUSTER_CIDR_ANNOTATION: "default"},
            },
            "spec": {"podCIDR": "10.42.0.0/24", "podCIDRs": ["10.42.0.0/24", "fd00:10:42::/64"]},
        }),
        "one merge patch with the resourceVersion as precondition"
    );
    let event = &reqs[1].body;
    assert_eq!(event["reason"], events::POD_CIDR_ALLOCATED);
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["kind"], "Node");
    assert_eq!(event["regarding"]["name"], "n1");
    assert_eq!(event["reportingController"], clustercidr::CONTROLLER_NAME);
    assert_eq!(
        fake.node("n1").spec.unwrap().pod_cidrs.unwrap(),
        ["10.42.0.0/24", "fd00:10:42::/64"]
    );
    assert_eq!(metrics.allocations.with_label_values(&["default"]).get(), 1);

    // Status: one server-side apply to /status, forced, with the pinned clock's time.
    ctl.flush().await;
    let reqs = log.take();
    assert_eq!(lines(&reqs), [format!("PATCH {CIDRS}/default/status")]);
    let q = reqs[0].query();
    assert!(
        q.contains("fieldManager=clustercidr.portway.dev%2Fstatus") && q.contains("force=true"),
        "{q}"
    );
    let st = &reqs[0].body["status"];
    assert_eq!(reqs[0].body["kind"], "ClusterCIDR");
    assert_eq!(st["ipv4"], json!({"allocated": 1, "capacity": 256}));
    assert_eq!(st["ipv6"], json!({"allocated": 1, "capacity": 65536}));
    assert_eq!(st["observedGeneration"], 1);
    let ready = condition(st, types::READY);
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("True"), Some(reasons::CIDRS_AVAILABLE))
    );
    assert_eq!(ready["lastTransitionTime"], "2023-11-14T22:13:20Z");
    assert_eq!(
        metrics.free.with_label_values(&["default", "ipv4"]).get(),
        255.0
    );

    // The watch then shows the Node with its CIDRs, and the status we wrote: nothing to do.
    ctl.handle_node_event(Event::Apply(fake.node("n1"))).await;
    ctl.handle_cidr_event(Event::Apply(fake.cidr("default")))
        .await;
    ctl.flush().await;
    assert_eq!(lines(&log.take()), Vec::<String>::new(), "no second write");
}

#[tokio::test]
async fn a_node_added_later_gets_the_next_block() {
    let cidrs = vec![dual()];
    let fake = Fake::new(&[], &cidrs);
    let (mut ctl, log, _) = controller(&fake, |_| None);
    sync(&mut ctl, &[], &cidrs).await;
    assert!(log.take().is_empty(), "an empty cluster needs no write");
    for (i, n) in ["a", "b"].iter().enumerate() {
        let created = node(n).rv("10").build();
        fake.nodes
            .lock()
            .unwrap()
            .insert((*n).into(), serde_json::to_value(&created).unwrap());
        ctl.handle_node_event(Event::Apply(created)).await;
        let reqs = log.take();
        assert_eq!(reqs[0].line(), format!("PATCH {NODES}/{n}"));
        assert_eq!(reqs[0].body["spec"]["podCIDR"], format!("10.42.{i}.0/24"));
    }
}

/// The restart test runs the whole `run()` path: CRD check, default ClusterCIDR, both watches.
async fn run_until_quiet(fake: &Fake, args: Args) -> (Log, prometheus::Registry) {
    let f = fake.clone();
    let (client, log) = mock::client(move |req| f.answer(req));
    let registry = prometheus::Registry::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(clustercidr::run(client, args, &registry, async move {
        let _ = stopped.await;
    }));
    // Virtual time (paused clock): lets the watches list and the 1 s status batch pass.
    tokio::time::sleep(Duration::from_secs(30)).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    (log, registry)
}

fn adopted_status(cidr: &ClusterCIDR, nodes: &[Node]) -> Value {
    let mut alloc = Allocator::new([cidr]);
    for n in nodes {
        alloc.adopt(&NodeFacts::from_node(n));
    }
    let pool = alloc.pool("default").unwrap();
    serde_json::to_value(status::status(&alloc, pool, &[], None, &time(1))).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_restart_with_existing_pod_cidrs_makes_zero_writes() {
    let ann = CLUSTER_CIDR_ANNOTATION;
    let nodes = vec![
        node("n1")
            .pod_cidrs(&["10.42.0.0/24", "fd00:10:42::/64"])
            .annotate(ann, "default")
            .build(),
        node("n2")
            .pod_cidrs(&["10.42.1.0/24", "fd00:10:42:1::/64"])
            .annotate(ann, "default")
            .build(),
    ];
    let args = Args {
        default_cluster_cidr: vec![
            "10.42.0.0/16".parse().unwrap(),
            "fd00:10:42::/48".parse().unwrap(),
        ],
        ..Args::default()
    };
    // The default ClusterCIDR as the first run created it, finalized, with its status written.
    let mut default = args.default_cluster_cidr().unwrap().unwrap();
    default.metadata.finalizers = Some(vec![CLUSTER_CIDR_FINALIZER.into()]);
    default.metadata.generation = Some(1);
    let mut v = serde_json::to_value(&default).unwrap();
    v["status"] = adopted_status(&default, &nodes);
    let default: ClusterCIDR = serde_json::from_value(v).unwrap();
    let fake = Fake::new(&nodes, &[default]);

    let (log, registry) = run_until_quiet(&fake, args).await;
    let all = log.all();
    assert_eq!(
        log.writes(),
        Vec::<Req>::new(),
        "zero writes; requests were {:#?}",
        lines(&all)
    );
    // Not vacuous: it read both collections and the default ClusterCIDR.
    let seen = lines(&all);
    assert!(seen.contains(&format!("GET {NODES}")), "{seen:?}");
    assert!(seen.contains(&format!("GET {CIDRS}/default")), "{seen:?}");
    assert!(
        all.iter()
            .any(|r| r.path() == CIDRS && r.query().contains("watch=true")),
        "{seen:?}"
    );
    let families = registry.gather();
    assert!(
        families
            .iter()
            .any(|f| f.name() == "portway_clustercidr_free_cidrs")
    );
}

#[tokio::test(start_paused = true)]
async fn a_first_start_creates_the_default_and_allocates_through_run() {
    let nodes = vec![node("n1").build()];
    let fake = Fake::new(&nodes, &[]);
    let args = Args {
        default_cluster_cidr: vec!["10.42.0.0/16".parse().unwrap()],
        ..Args::default()
    };
    let (log, _) = run_until_quiet(&fake, args).await;
    let writes = lines(&log.writes());
    assert_eq!(
        writes,
        [
            format!("POST {CIDRS}"),
            format!("PATCH {CIDRS}/default"),
            format!("PATCH {NODES}/n1"),
            format!("POST {EVENTS}"),
            format!("PATCH {CIDRS}/default/status"),
        ],
        "create the default, finalize it, allocate, report"
    );
    let created = fake.cidr("default");
    assert_eq!(created.spec.priority, clustercidr::DEFAULT_PRIORITY);
    assert_eq!(
        created.metadata.finalizers.unwrap(),
        [CLUSTER_CIDR_FINALIZER]
    );
    assert_eq!(
        fake.node("n1").spec.unwrap().pod_cidr.as_deref(),
        Some("10.42.0.0/24")
    );
}

#[tokio::test]
async fn node_deletion_frees_the_cidr_only_after_the_object_is_gone() {
    let cidrs = vec![cc("tiny").v4("10.9.0.0/27", 4).finalized().build()]; // two /28s
    let nodes = vec![
        node("a").pod_cidrs(&["10.9.0.0/28"]).rv("10").build(),
        node("b").pod_cidrs(&["10.9.0.16/28"]).rv("10").build(),
        node("c").rv("10").build(),
    ];
    let fake = Fake::new(&nodes, &cidrs);
    let (mut ctl, log, metrics) = controller(&fake, |_| None);
    sync(&mut ctl, &nodes, &cidrs).await;
    let reqs = log.take();
    assert_eq!(
        lines(&reqs),
        [format!("POST {EVENTS}")],
        "c waits, with a Warning"
    );
    assert_eq!(reqs[0].body["reason"], events::CIDR_NOT_AVAILABLE);
    assert_eq!(reqs[0].body["type"], "Warning");
    let note = reqs[0].body["note"].as_str().unwrap();
    assert!(
        note.contains("tiny (IPv4 10.9.0.0/27 has no free /28)"),
        "{note}"
    );
    ctl.flush().await;
    let reqs = log.take();
    let exhausted = condition(&reqs[0].body["status"], types::EXHAUSTED);
    assert_eq!(exhausted["status"], "True");
    assert!(
        exhausted["message"]
            .as_str()
            .unwrap()
            .contains("wait for a pod CIDR: c")
    );

    // a gets a deletionTimestamp: its CIDR stays taken (kubernetes#127792).
    let mut terminating = fake.node("a");
    terminating.metadata.deletion_timestamp = Some(time(50));
    ctl.handle_node_event(Event::Apply(terminating.clone()))
        .await;
    ctl.tick().await;
    assert_eq!(
        lines(&log.take()),
        Vec::<String>::new(),
        "nothing moves at deletionTimestamp"
    );
    assert!(ctl.allocator().node("a").is_some());
    assert!(ctl.waiting().contains_key("c"));

    // The object is gone: c gets exactly a's block.
    ctl.handle_node_event(Event::Delete(terminating)).await;
    let reqs = log.take();
    assert_eq!(
        lines(&reqs),
        [format!("PATCH {NODES}/c"), format!("POST {EVENTS}")]
    );
    assert_eq!(reqs[0].body["spec"]["podCIDRs"], json!(["10.9.0.0/28"]));
    assert_eq!(metrics.releases.with_label_values(&["tiny"]).get(), 1);
    assert!(ctl.waiting().is_empty());
    ctl.flush().await;
    let reqs = log.take();
    assert_eq!(
        condition(&reqs[0].body["status"], types::EXHAUSTED)["status"],
        "True"
    );
    assert!(
        !condition(&reqs[0].body["status"], types::EXHAUSTED)["message"]
            .as_str()
            .unwrap()
            .contains("wait")
    );
}

#[tokio::test]
async fn a_relist_without_a_node_releases_it() {
    let cidrs = vec![cc("tiny").v4("10.9.0.0/27", 4).finalized().build()];
    let nodes = vec![
        node("a").pod_cidrs(&["10.9.0.0/28"]).build(),
        node("b").pod_cidrs(&["10.9.0.16/28"]).build(),
    ];
    let fake = Fake::new(&nodes, &cidrs);
    let (mut ctl, log, metrics) = controller(&fake, |_| None);
    sync(&mut ctl, &nodes, &cidrs).await;
    log.take();
    // The watch was down while a was deleted and c created; the re-list shows b and c.
    let c = node("c").rv("10").build();
    fake.nodes
        .lock()
        .unwrap()
        .insert("c".into(), serde_json::to_value(&c).unwrap());
    ctl.handle_node_event(Event::Init).await;
    ctl.handle_node_event(Event::InitApply(nodes[1].clone()))
        .await;
    ctl.handle_node_event(Event::InitApply(c)).await;
    ctl.handle_node_event(Event::InitDone).await;
    let reqs = log.take();
    assert_eq!(reqs[0].line(), format!("PATCH {NODES}/c"));
    assert_eq!(reqs[0].body["spec"]["podCIDR"], "10.9.0.0/28");
    assert_eq!(metrics.releases.with_label_values(&["tiny"]).get(), 1);
}

#[tokio::test]
async fn a_conflicting_write_rereads_the_node_and_adopts_what_it_has() {
    let cidrs = vec![dual()];
    let nodes = vec![node("n1").rv("10").build()];
    let fake = Fake::new(&nodes, &cidrs);
    // Someone (say kube-controller-manager) set other CIDRs just before our patch.
    let other = fake.clone();
    let (mut ctl, log, metrics) = controller(&fake, move |req| {
        if req.method == "PATCH" && req.path() == format!("{NODES}/n1") {
            let mut n = other.nodes.lock().unwrap();
            let v = n.get_mut("n1").unwrap();
            v["spec"] = json!({"podCIDR": "10.42.7.0/24", "podCIDRs": ["10.42.7.0/24", "fd00:10:42:7::/64"]});
            v["metadata"]["resourceVersion"] = json!("11");
            return Some(mock::status_error(
                409,
                "Conflict",
                "the object has been modified",
            ));
        }
        None
    });
    sync(&mut ctl, &nodes, &cidrs).await;
    let reqs = log.take();
    assert_eq!(
        lines(&reqs),
        [format!("PATCH {NODES}/n1"), format!("GET {NODES}/n1")]
    );
    let rec = ctl.allocator().node("n1").unwrap();
    assert_eq!(
        rec.pod_cidrs(),
        ["10.42.7.0/24", "fd00:10:42:7::/64"],
        "adopted, not overwritten"
    );
    assert_eq!(metrics.failures.with_label_values(&["conflict"]).get(), 1);
    // The block we had reserved is free again.
    let n2 = node("n2").rv("10").build();
    fake.nodes
        .lock()
        .unwrap()
        .insert("n2".into(), serde_json::to_value(&n2).unwrap());
    ctl.handle_node_event(Event::Apply(n2)).await;
    assert_eq!(log.take()[0].body["spec"]["podCIDR"], "10.42.0.0/24");
}

#[tokio::test]
async fn an_unknown_outcome_keeps_the_reservation_and_retries_the_same_cidrs() {
    let cidrs = vec![dual()];
    let nodes = vec![node("n1").rv("10").build()];
    let fake = Fake::new(&nodes, &cidrs);
    let failures = Arc::new(Mutex::new(1));
    let left = failures.clone();
    let (mut ctl, log, _) = controller(&fake, move |req| {
        let mut left = left.lock().unwrap();
        if req.method == "PATCH" && req.path() == format!("{NODES}/n1") && *left > 0 {
            *left -= 1;
            return Some(mock::status_error(500, "InternalError", "etcd timeout"));
        }
        None
    });
    sync(&mut ctl, &nodes, &cidrs).await;
    let reqs = log.take();
    assert_eq!(
        lines(&reqs),
        [format!("PATCH {NODES}/n1"), format!("POST {EVENTS}")]
    );
    assert_eq!(reqs[1].body["reason"], events::CIDR_ASSIGNMENT_FAILED);
    // Another Node meanwhile gets the next block, not n1's reserved one.
    let n2 = node("n2").rv("10").build();
    fake.nodes
        .lock()
        .unwrap()
        .insert("n2".into(), serde_json::to_value(&n2).unwrap());
    ctl.handle_node_event(Event::Apply(n2)).await;
    assert_eq!(log.take()[0].body["spec"]["podCIDR"], "10.42.1.0/24");
    // The retry writes exactly the reserved CIDRs.
    ctl.tick().await;
    let reqs = log.take();
    assert_eq!(reqs[0].line(), format!("PATCH {NODES}/n1"));
    assert_eq!(
        reqs[0].body["spec"]["podCIDRs"],
        json!(["10.42.0.0/24", "fd00:10:42::/64"])
    );
    assert_eq!(
        fake.node("n1").spec.unwrap().pod_cidr.as_deref(),
        Some("10.42.0.0/24")
    );
}

#[tokio::test]
async fn a_cluster_cidr_is_finalized_before_anything_is_allocated_from_it() {
    let cidrs = vec![cc("default").v4("10.42.0.0/16", 8).rv("10").build()];
    let nodes = vec![node("n1").rv("10").build()];
    let fake = Fake::new(&nodes, &cidrs);
    let (mut ctl, log, _) = controller(&fake, |_| None);
    sync(&mut ctl, &nodes, &cidrs).await;
    let reqs = log.take();
    assert_eq!(
        lines(&reqs),
        [
            format!("PATCH {CIDRS}/default"),
            format!("PATCH {NODES}/n1"),
            format!("POST {EVENTS}")
        ]
    );
    assert_eq!(
        reqs[0].body,
        json!({"metadata": {"resourceVersion": "10", "finalizers": [CLUSTER_CIDR_FINALIZER]}})
    );
}

#[tokio::test]
async fn a_deleted_cluster_cidr_keeps_its_finalizer_until_its_nodes_are_gone() {
    let going = cc("going")
        .v4("10.1.0.0/16", 8)
        .finalized()
        .deleting()
        .rv("10")
        .build();
    let cidrs = vec![going, cc("next").v4("10.2.0.0/16", 8).finalized().build()];
    let nodes = vec![
        node("a").pod_cidrs(&["10.1.0.0/24"]).build(),
        node("b").rv("10").build(),
    ];
    let fake = Fake::new(&nodes, &cidrs);
    let (mut ctl, log, _) = controller(&fake, |_| None);
    sync(&mut ctl, &nodes, &cidrs).await;
    let reqs = log.take();
    assert_eq!(
        reqs[0].body["spec"]["podCIDR"], "10.2.0.0/24",
        "nothing new from a terminating one"
    );
    ctl.flush().await;
    let reqs = log.take();
    let going_status = reqs
        .iter()
        .find(|r| r.path() == format!("{CIDRS}/going/status"))
        .unwrap();
    let ready = condition(&going_status.body["status"], types::READY);
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some(reasons::TERMINATING))
    );
    assert!(
        !reqs.iter().any(|r| r.path() == format!("{CIDRS}/going")),
        "finalizer kept"
    );

    ctl.handle_node_event(Event::Delete(nodes[0].clone())).await;
    ctl.flush().await;
    let reqs = log.take();
    assert_eq!(
        lines(&reqs),
        [
            format!("PATCH {CIDRS}/going/status"),
            format!("PATCH {CIDRS}/going")
        ]
    );
    assert_eq!(reqs[1].body["metadata"]["finalizers"], json!([]));
}

#[tokio::test]
async fn foreign_pod_cidrs_are_reported_once_and_kept() {
    let cidrs = vec![dual()];
    let nodes = vec![node("old").pod_cidrs(&["10.244.3.0/24"]).build()];
    let fake = Fake::new(&nodes, &cidrs);
    let (mut ctl, log, metrics) = controller(&fake, |_| None);
    sync(&mut ctl, &nodes, &cidrs).await;
    let reqs = log.take();
    assert_eq!(lines(&reqs), [format!("POST {EVENTS}")]);
    assert_eq!(reqs[0].body["reason"], events::FOREIGN_POD_CIDR);
    assert_eq!(metrics.failures.with_label_values(&["foreign"]).get(), 1);
    ctl.flush().await;
    let reqs = log.take();
    let f = condition(&reqs[0].body["status"], types::FOREIGN_POD_CIDRS);
    assert_eq!(f["status"], "True");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("old (10.244.3.0/24)")
    );
    // Seen again (a resync): no second Event, no write.
    ctl.handle_node_event(Event::Apply(fake.node("old"))).await;
    assert!(log.take().is_empty());
}

#[tokio::test]
async fn the_default_cluster_cidr_is_created_once_and_never_changed() {
    let args = Args {
        default_cluster_cidr: vec!["10.42.0.0/16".parse().unwrap()],
        ..Args::default()
    };
    let want = args.default_cluster_cidr().unwrap().unwrap();
    // Absent: created with our field manager.
    let fake = Fake::new(&[], &[]);
    let (ctl, log, _) = controller(&fake, |_| None);
    ctl.ensure_default(want.clone()).await.unwrap();
    let reqs = log.take();
    assert_eq!(
        lines(&reqs),
        [format!("GET {CIDRS}/default"), format!("POST {CIDRS}")]
    );
    assert!(
        reqs[1]
            .query()
            .contains("fieldManager=clustercidr.portway.dev%2Fdefault")
    );
    // Present and equal: nothing.
    ctl.ensure_default(want.clone()).await.unwrap();
    assert_eq!(lines(&log.take()), [format!("GET {CIDRS}/default")]);
    // Present with another spec: kept, Warning Event.
    let other = Args {
        default_cluster_cidr: vec!["10.50.0.0/16".parse().unwrap()],
        ..Args::default()
    };
    ctl.ensure_default(other.default_cluster_cidr().unwrap().unwrap())
        .await
        .unwrap();
    let reqs = log.take();
    assert_eq!(
        lines(&reqs),
        [format!("GET {CIDRS}/default"), format!("POST {EVENTS}")]
    );
    assert_eq!(reqs[1].body["reason"], events::DEFAULT_MISMATCH);
    assert_eq!(
        fake.cidr("default").spec.ipv4.as_deref(),
        Some("10.42.0.0/16")
    );
}

#[tokio::test]
async fn nothing_is_allocated_before_both_lists_are_complete() {
    let cidrs = vec![dual()];
    let fake = Fake::new(&[], &cidrs);
    let (mut ctl, log, _) = controller(&fake, |_| None);
    ctl.handle_node_event(Event::Init).await;
    ctl.handle_node_event(Event::InitApply(node("n1").build()))
        .await;
    ctl.handle_node_event(Event::InitDone).await;
    ctl.handle_node_event(Event::Apply(node("n2").build()))
        .await;
    assert!(!ctl.is_synced());
    assert!(log.take().is_empty(), "no ClusterCIDR list yet: no write");
}

#[tokio::test]
async fn a_cluster_cidr_whose_finalizer_fails_is_paused_then_resumed() {
    let cidrs = vec![cc("default").v4("10.42.0.0/16", 8).rv("10").build()];
    let nodes = vec![node("n1").rv("10").build()];
    let fake = Fake::new(&nodes, &cidrs);
    let fail = Arc::new(Mutex::new(true));
    let once = fail.clone();
    let (mut ctl, log, _) = controller(&fake, move |req| {
        let mut once = once.lock().unwrap();
        if req.method == "PATCH" && req.path() == format!("{CIDRS}/default") && *once {
            *once = false;
            return Some(mock::status_error(503, "ServiceUnavailable", "try later"));
        }
        None
    });
    sync(&mut ctl, &nodes, &cidrs).await;
    let reqs = log.take();
    assert_eq!(
        lines(&reqs),
        [format!("PATCH {CIDRS}/default"), format!("POST {EVENTS}")]
    );
    let note = reqs[1].body["note"].as_str().unwrap();
    assert!(note.contains("not allocating from default"), "{note}");
    assert!(
        ctl.allocator().node("n1").is_none(),
        "nothing from an unfinalized ClusterCIDR"
    );
    ctl.flush().await;
    let reqs = log.take();
    assert_eq!(
        lines(&reqs)[..3],
        [
            format!("PATCH {CIDRS}/default"),
            format!("PATCH {NODES}/n1"),
            format!("POST {EVENTS}")
        ]
    );
    assert_eq!(
        fake.cidr("default").metadata.finalizers.unwrap(),
        [CLUSTER_CIDR_FINALIZER]
    );
    assert_eq!(
        fake.node("n1").spec.unwrap().pod_cidr.as_deref(),
        Some("10.42.0.0/24")
    );
}

#[tokio::test]
async fn a_relist_does_not_repeat_the_event_of_a_node_still_waiting() {
    // One /28 in a /28: the second Node waits (Exhausted) and gets one Warning Event.
    let cidrs = vec![cc("tiny").v4("10.9.0.0/28", 4).finalized().build()];
    let nodes = vec![
        node("a").pod_cidrs(&["10.9.0.0/28"]).build(),
        node("b").rv("7").build(),
    ];
    let fake = Fake::new(&nodes, &cidrs);
    let (mut ctl, log, metrics) = controller(&fake, |_| None);
    sync(&mut ctl, &nodes, &cidrs).await;
    let reqs = log.take();
    assert_eq!(lines(&reqs), [format!("POST {EVENTS}")]);
    assert_eq!(reqs[0].body["reason"], events::CIDR_NOT_AVAILABLE);
    assert_eq!(reqs[0].body["regarding"]["name"], "b");
    assert_eq!(ctl.waiting().len(), 1);
    let failures = metrics.failures.with_label_values(&["exhausted"]).get();
    assert_eq!(failures, 1);

    // The watch re-lists the same Nodes (e.g. after a disconnect): b still waits for the same
    // reason, so there is no second Event and no second failure count.
    ctl.handle_node_event(Event::Init).await;
    for n in &nodes {
        ctl.handle_node_event(Event::InitApply(n.clone())).await;
    }
    ctl.handle_node_event(Event::InitDone).await;
    let again: Vec<String> = lines(&log.take())
        .into_iter()
        .filter(|l| l.starts_with("POST"))
        .collect();
    assert!(again.is_empty(), "repeated: {again:?}");
    assert_eq!(ctl.waiting().len(), 1, "b still waits");
    assert_eq!(
        metrics.failures.with_label_values(&["exhausted"]).get(),
        failures
    );

    // a goes away in the re-list: b gets its block.
    ctl.handle_node_event(Event::Init).await;
    ctl.handle_node_event(Event::InitApply(nodes[1].clone()))
        .await;
    ctl.handle_node_event(Event::InitDone).await;
    let reqs = log.take();
    assert_eq!(reqs[0].line(), format!("PATCH {NODES}/b"));
    assert!(ctl.waiting().is_empty());
}
