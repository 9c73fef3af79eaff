//! The ClusterCIDR controller of the real operator against a real API server: Nodes without pod
//! CIDRs get `spec.podCIDRs` from a ClusterCIDR, Nodes that already have them are adopted
//! without a write, a restarted operator rebuilds its state from the Nodes and writes nothing
//! (counted on the wire), a full range is reported `Exhausted` with an Event on the waiting Node,
//! and a deleted Node's CIDR goes to the waiting one.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeSpec};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use portway_crds::ClusterCIDR;
use portway_crds::condition::{reasons, types};
use portway_crds::names::{CLUSTER_CIDR_ANNOTATION, CLUSTER_CIDR_FINALIZER};
use portway_e2e::operator::Exit;
use portway_e2e::requests::{HOUSEKEEPING, Mark, RequestLog, describe};
use portway_e2e::{Identity, TestEnv, objects, report, wait};

use crate::common::{OPERATOR_NS, events_about, show_conditions, start_operator};

const ACT: Duration = Duration::from_secs(60);
const RANGE: &str = "10.200.0.0/26";
/// 4 host bits: a /28 per Node, 4 in the range.
const HOST_BITS: i32 = 4;
const CIDR_NAME: &str = "e2e-range";
/// The CIDR a Node already had before Portway ran (say, from an earlier install).
const PRE_EXISTING: &str = "10.200.0.16/28";

fn pod_cidrs(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
}

async fn create_node(admin: &Client, name: &str, cidrs: &[&str]) -> Node {
    let mut node = objects::node(name, &[], &[("InternalIP", "192.0.2.50")]);
    if !cidrs.is_empty() {
        node.spec = Some(NodeSpec {
            pod_cidr: cidrs.first().map(|c| (*c).to_owned()),
            pod_cidrs: Some(cidrs.iter().map(|c| (*c).to_owned()).collect()),
            ..NodeSpec::default()
        });
    }
    objects::create_node(admin, &node).await.expect("node")
}

/// Waits until Node `name` has pod CIDRs; returns it.
async fn wait_allocated(admin: &Client, name: &str) -> Node {
    wait::wait_for(
        Api::<Node>::all(admin.clone()),
        name,
        &format!("Node {name} to get pod CIDRs"),
        |n: Option<&Node>| n.is_some_and(|n| !pod_cidrs(n).is_empty()),
        ACT,
    )
    .await
    .expect("allocation")
    .expect("node exists")
}

/// Waits until the ClusterCIDR satisfies `check`; returns it.
async fn wait_cidr(
    admin: &Client,
    what: &str,
    check: impl Fn(&ClusterCIDR) -> bool + Send + 'static,
) -> ClusterCIDR {
    let api: Api<ClusterCIDR> = Api::all(admin.clone());
    match wait::wait_for(
        api.clone(),
        CIDR_NAME,
        what,
        move |c: Option<&ClusterCIDR>| c.is_some_and(&check),
        ACT,
    )
    .await
    {
        Ok(Some(c)) => c,
        other => {
            let status = api
                .get_opt(CIDR_NAME)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.status)
                .unwrap_or_default();
            panic!(
                "{what}: {other:?}; status now: {:?}\n  {}",
                status.ipv4,
                show_conditions(&status.conditions)
            )
        }
    }
}

fn allocated(c: &ClusterCIDR) -> Option<(i64, i64)> {
    c.status
        .as_ref()
        .and_then(|s| s.ipv4.as_ref())
        .map(|u| (u.allocated, u.capacity))
}

fn condition(c: &ClusterCIDR, type_: &str) -> Option<(String, String, String)> {
    c.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|x| x.type_ == type_)
            .map(|x| (x.status.clone(), x.reason.clone(), x.message.clone()))
    })
}

async fn resource_versions(admin: &Client) -> BTreeMap<String, String> {
    let nodes = Api::<Node>::all(admin.clone())
        .list(&Default::default())
        .await
        .expect("nodes")
        .items;
    let cidrs = Api::<ClusterCIDR>::all(admin.clone())
        .list(&Default::default())
        .await
        .expect("clustercidrs")
        .items;
    nodes
        .iter()
        .map(|n| (format!("Node/{}", n.name_any()), n.resource_version()))
        .chain(cidrs.iter().map(|c| {
            (
                format!("ClusterCIDR/{}", c.name_any()),
                c.resource_version(),
            )
        }))
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_pod_cidrs_restart_adopts_them_and_exhaustion_is_reported() {
    const TEST: &str = "nodes_get_pod_cidrs_restart_adopts_them_and_exhaustion_is_reported";
    let Some(env) = TestEnv::start_or_skip(TEST).await else {
        return;
    };
    let admin = env.client();
    objects::ensure_namespace(&admin, OPERATOR_NS)
        .await
        .expect("operator namespace");
    Api::<ClusterCIDR>::all(admin.clone())
        .create(
            &PostParams::default(),
            &objects::cluster_cidr(CIDR_NAME, RANGE, HOST_BITS),
        )
        .await
        .expect("ClusterCIDR");
    let pre = create_node(&admin, "pre-1", &[PRE_EXISTING]).await;
    create_node(&admin, "node-a", &[]).await;

    // 1. A Node without pod CIDRs gets a free block; the Node that had one keeps it untouched.
    let log1 = RequestLog::new();
    let op = start_operator(
        &env,
        "op-1",
        Identity::Admin,
        &["--servicelb-enabled=false"],
        &log1,
    );
    let a = wait_allocated(&admin, "node-a").await;
    let a_cidrs = pod_cidrs(&a);
    assert_eq!(a_cidrs.len(), 1, "{a_cidrs:?}");
    assert_ne!(a_cidrs[0], PRE_EXISTING, "node-a got pre-1's CIDR");
    assert!(a_cidrs[0].starts_with("10.200.0.") && a_cidrs[0].ends_with("/28"));
    assert_eq!(
        a.spec.as_ref().and_then(|s| s.pod_cidr.clone()),
        Some(a_cidrs[0].clone())
    );
    assert_eq!(
        a.annotations()
            .get(CLUSTER_CIDR_ANNOTATION)
            .map(String::as_str),
        Some(CIDR_NAME)
    );
    let pre_now = Api::<Node>::all(admin.clone())
        .get("pre-1")
        .await
        .expect("pre-1");
    assert_eq!(
        pre_now.resource_version(),
        pre.resource_version(),
        "the pre-existing Node was written to"
    );
    wait::eventually("a PodCIDRAllocated Event on node-a", ACT, || async {
        let e = events_about(&admin, "Node", "node-a", "PodCIDRAllocated").await;
        (!e.is_empty()).then_some(())
    })
    .await
    .expect("event");

    // 2. A Node that joins while the operator runs gets one too.
    create_node(&admin, "node-b", &[]).await;
    let b_cidrs = pod_cidrs(&wait_allocated(&admin, "node-b").await);
    assert!(
        b_cidrs[0] != a_cidrs[0] && b_cidrs[0] != PRE_EXISTING,
        "{b_cidrs:?} overlaps"
    );
    let cidr = wait_cidr(&admin, "the ClusterCIDR to count 3 of 4", |c| {
        allocated(c) == Some((3, 4))
    })
    .await;
    assert!(
        cidr.finalizers()
            .iter()
            .any(|f| f == CLUSTER_CIDR_FINALIZER)
    );
    assert_eq!(
        condition(&cidr, types::EXHAUSTED).map(|c| (c.0, c.1)),
        Some(("False".to_owned(), reasons::CIDRS_AVAILABLE.to_owned()))
    );
    let node_patches = log1
        .writes_since(Mark::START, HOUSEKEEPING)
        .into_iter()
        .filter(|w| w.is_resource("nodes"))
        .count();
    assert_eq!(
        node_patches,
        2,
        "one write per allocated Node:\n  {}",
        describe(&log1.writes_since(Mark::START, HOUSEKEEPING))
    );

    // 3. Restart: the new replica rebuilds its state from the Nodes and writes nothing.
    tokio::time::sleep(Duration::from_secs(2)).await; // the batched status write (1 s) is out
    assert_eq!(op.stop().await.expect("stop"), Exit::Returned(Ok(())));
    let before = resource_versions(&admin).await;
    let log2 = RequestLog::new();
    let op = start_operator(
        &env,
        "op-2",
        Identity::Admin,
        &["--servicelb-enabled=false"],
        &log2,
    );
    wait::eventually(
        "the restarted controller to rebuild (1 free /28)",
        ACT,
        || async {
            let free = op.metric(
                "portway_clustercidr_free_cidrs",
                &[("clustercidr", CIDR_NAME), ("family", "ipv4")],
            );
            let listed = !op.metrics_text().is_empty();
            (listed && free == 1.0 && !log2.all().is_empty()).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log_tail(30)));
    // Twice the status batch interval: a status write, had one been due, would be out by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = log2.writes_since(Mark::START, HOUSEKEEPING);
    assert!(
        writes.is_empty(),
        "the restarted ClusterCIDR controller wrote:\n  {}",
        describe(&writes)
    );
    assert_eq!(
        resource_versions(&admin).await,
        before,
        "an object changed across the restart"
    );

    // 4. The last block goes to node-c; node-d waits: Exhausted, with an Event on node-d.
    create_node(&admin, "node-c", &[]).await;
    let c_cidrs = pod_cidrs(&wait_allocated(&admin, "node-c").await);
    create_node(&admin, "node-d", &[]).await;
    let cidr = wait_cidr(&admin, "Exhausted naming the waiting node-d", |c| {
        condition(c, types::EXHAUSTED).is_some_and(|(s, r, m)| {
            s == "True" && r == reasons::NO_FREE_CIDRS && m.contains("node-d")
        })
    })
    .await;
    assert_eq!(allocated(&cidr), Some((4, 4)));
    let exhausted = condition(&cidr, types::EXHAUSTED).expect("Exhausted");
    let events = wait::eventually("a CIDRNotAvailable Event on node-d", ACT, || async {
        let e = events_about(&admin, "Node", "node-d", "CIDRNotAvailable").await;
        (!e.is_empty()).then_some(e)
    })
    .await
    .expect("event");
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    let d = Api::<Node>::all(admin.clone())
        .get("node-d")
        .await
        .expect("node-d");
    assert!(pod_cidrs(&d).is_empty(), "node-d got {:?}", pod_cidrs(&d));

    // 5. node-a goes: its CIDR is released and node-d gets it.
    Api::<Node>::all(admin.clone())
        .delete("node-a", &DeleteParams::default())
        .await
        .expect("delete node-a");
    let d_cidrs = pod_cidrs(&wait_allocated(&admin, "node-d").await);
    assert_eq!(
        d_cidrs, a_cidrs,
        "node-d did not get node-a's released CIDR"
    );
    assert!(op.is_running(), "operator stopped:\n{}", op.log_tail(30));
    report::line(&format!(
        "api-server clustercidr: node-a {a_cidrs:?}, node-b {b_cidrs:?}, node-c {c_cidrs:?}, pre-1 adopted unwritten; restart: 0 writes, {} objects unchanged; node-d waited (Exhausted: {}), got node-a's CIDR after it was deleted",
        before.len(),
        exhausted.2
    ));
}
