use std::time::Duration;

use portway_crds::DataplaneMode::{Host, Pod};
use serde_json::json;

use super::*;

fn present(deleting: bool, dataplane: DataplaneMode, targets: &[&str]) -> Seen {
    Seen::Present(SlbFacts {
        deleting,
        dataplane,
        target_nodes: targets.iter().map(|t| (*t).to_owned()).collect(),
    })
}

use Decision::{Keep, Remove};
use KeepReason as K;
use RemoveReason as R;

/// The whole table of the module documentation, for both dataplanes and an unknown one.
#[test]
fn decision_table() {
    let unreachable = Seen::Unreachable("connection refused".into());
    let unreadable = Seen::Unreadable("status.targetNodes is 3, not a list".into());
    #[rustfmt::skip]
    let cases: Vec<(&str, Option<DataplaneMode>, Seen, Decision)> = vec![
        ("gone",                  Some(Host), Seen::Gone,                               Remove(R::ServiceGone)),
        ("gone, pod",             Some(Pod),  Seen::Gone,                               Remove(R::ServiceGone)),
        ("deleting",              Some(Host), present(true, Host, &["node-a"]),         Remove(R::ServiceDeleting)),
        ("deleting, not listed",  Some(Host), present(true, Host, &[]),                 Remove(R::ServiceDeleting)),
        ("not listed",            Some(Host), present(false, Host, &["node-b"]),        Remove(R::NodeNotTargeted)),
        ("no list (old operator)", Some(Host), present(false, Host, &[]),               Remove(R::NodeNotTargeted)),
        ("not listed, pod",       Some(Pod),  present(false, Pod, &["node-b"]),         Remove(R::NodeNotTargeted)),
        ("host -> pod",           Some(Host), present(false, Pod, &["node-a"]),         Remove(R::DataplaneChanged)),
        ("pod -> host",           Some(Pod),  present(false, Host, &["node-a"]),        Remove(R::DataplaneChanged)),
        ("listed",                Some(Host), present(false, Host, &["node-b", "node-a"]), Keep(K::Successor)),
        ("listed, pod",           Some(Pod),  present(false, Pod, &["node-a"]),         Keep(K::Successor)),
        ("listed, own unknown",   None,       present(false, Pod, &["node-a"]),         Keep(K::Successor)),
        ("listed, own unknown 2", None,       present(false, Host, &["node-a"]),        Keep(K::Successor)),
        ("prefix is no match",    Some(Host), present(false, Host, &["node-a2"]),       Remove(R::NodeNotTargeted)),
        ("unreadable",            Some(Host), unreadable.clone(),                       Keep(K::Unreadable)),
        ("unreachable",           Some(Host), unreachable.clone(),                      Keep(K::Unreachable)),
        ("unreachable, pod",      Some(Pod),  unreachable,                              Keep(K::Unreachable)),
        ("unreadable, unknown",   None,       unreadable,                               Keep(K::Unreadable)),
    ];
    for (what, netns, seen, want) in cases {
        assert_eq!(decide("node-a", netns, &seen), want, "{what}");
    }
}

#[test]
fn reading_is_bounded_and_only_host_reads_twice() {
    let p = Policy {
        deadline: Duration::from_secs(10),
        confirm: Duration::from_secs(2),
        retry: Duration::from_millis(500),
        read_timeout: Duration::from_secs(2),
    };
    let ms = Duration::from_millis;
    let keep = Keep(K::Successor);
    let lost = Keep(K::Unreachable);
    #[rustfmt::skip]
    let cases: Vec<(&str, Decision, Option<DataplaneMode>, Duration, Step)> = vec![
        ("remove finishes",             Remove(R::NodeNotTargeted), Some(Host), ms(5), Step::Finish),
        ("early keep is confirmed",     keep, Some(Host), ms(5),    Step::ReadAgain(ms(1995))),
        ("late keep stands",            keep, Some(Host), ms(2000), Step::Finish),
        ("pod keeps at once",           keep, Some(Pod),  ms(5),    Step::Finish),
        ("unknown netns keeps at once", keep, None,       ms(5),    Step::Finish),
        ("unreachable retries",         lost, Some(Host), ms(2000), Step::ReadAgain(ms(500))),
        ("last retry fits",             lost, Some(Host), ms(7500), Step::ReadAgain(ms(500))),
        ("deadline ends retries",       lost, Some(Host), ms(7501), Step::Finish),
        ("pod never retries",           lost, Some(Pod),  ms(5),    Step::Finish),
        ("unreadable finishes",         Keep(K::Unreadable), Some(Host), ms(5), Step::Finish),
    ];
    for (what, decision, netns, elapsed, want) in cases {
        assert_eq!(next(decision, netns, elapsed, &p), want, "{what}");
    }
    // However a Host agent's reads go, they end before the deadline: simulate the worst case,
    // every read timing out.
    let mut elapsed = Duration::ZERO;
    let mut reads = 0;
    loop {
        elapsed += p.read_timeout;
        reads += 1;
        match next(lost, Some(Host), elapsed, &p) {
            Step::Finish => break,
            Step::ReadAgain(wait) => elapsed += wait,
        }
        assert!(reads < 100, "unbounded");
    }
    assert!(elapsed <= p.deadline, "{elapsed:?}");
    assert_eq!(reads, 4);
}

#[test]
fn facts_are_read_leniently_from_three_fields() {
    let object = json!({
        "apiVersion": "portway.dev/v1alpha1", "kind": "ServiceLoadBalancer",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"pool": "p", "dataplane": "Host", "ports": [{"protocol": "ICMP"}]},
        "status": {"targetNodes": ["node-a", "node-b"], "nodes": "whatever"},
    });
    assert_eq!(
        facts_from_object(&object),
        Ok(SlbFacts {
            deleting: false,
            dataplane: Host,
            target_nodes: vec!["node-a".into(), "node-b".into()],
        }),
        "an unforwardable spec does not block the decision"
    );
    let deleting = json!({
        "kind": "ServiceLoadBalancer",
        "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {},
    });
    let f = facts_from_object(&deleting).expect("facts");
    assert!(f.deleting);
    assert_eq!(f.dataplane, Pod, "dataplane defaults to Pod");
    assert!(f.target_nodes.is_empty(), "no status: no node listed");

    let bare = json!({"pool": "p", "dataplane": "Host", "ports": []});
    assert_eq!(
        facts_from_document(&bare),
        Ok(SlbFacts {
            deleting: false,
            dataplane: Host,
            target_nodes: vec![],
        })
    );
    assert_eq!(
        facts_from_document(&object).map(|f| f.target_nodes.len()),
        Ok(2)
    );

    for bad in [
        json!({"kind": "X", "spec": {"dataplane": "Node"}}),
        json!({"kind": "X", "status": {"targetNodes": "node-a"}}),
        json!({"kind": "X", "status": {"targetNodes": [1]}}),
        json!(["not", "an", "object"]),
    ] {
        assert!(facts_from_object(&bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn the_file_lookup_reads_the_spec_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spec.yaml");
    let mut lookup = lookup::FileLookup { path: path.clone() };
    let t = Duration::from_secs(1);
    use lookup::ExitLookup;
    assert_eq!(lookup.read(t).await, Seen::Gone);
    std::fs::write(
        &path,
        "apiVersion: portway.dev/v1alpha1\nkind: ServiceLoadBalancer\nmetadata: {name: web}\nspec: {pool: p, dataplane: Host}\nstatus: {targetNodes: [node-a]}\n",
    )
    .expect("write");
    assert_eq!(lookup.read(t).await, present(false, Host, &["node-a"]));
    std::fs::write(&path, "pool: p\nports: []\n").expect("write");
    assert_eq!(lookup.read(t).await, present(false, Pod, &[]));
    std::fs::write(&path, "[").expect("write");
    assert!(matches!(lookup.read(t).await, Seen::Unreadable(_)));
}

/// Through a mocked API server: one `GET` of the object by name; 404 is gone, 500 and silence
/// are unreachable, an object is read for its three fields.
#[tokio::test]
async fn the_kube_lookup_gets_the_object_by_name() {
    use http::{Request, Response};
    use kube::client::Body;
    use lookup::ExitLookup;

    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let mut lookup = lookup::KubeLookup::new(client, "shop", "web");
    let object = json!({
        "apiVersion": "portway.dev/v1alpha1", "kind": "ServiceLoadBalancer",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7"},
        "spec": {"pool": "p", "dataplane": "Host"},
        "status": {"targetNodes": ["node-a"]},
    });
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"});
    let broken = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "InternalError", "code": 500, "message": "etcd"});
    let server = tokio::spawn(async move {
        let mut uris = Vec::new();
        for (code, body) in [(200, object), (404, not_found), (500, broken)] {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.method(), "GET");
            uris.push(req.uri().to_string());
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(body.to_string().into_bytes()))
                    .expect("response"),
            );
        }
        // The fourth read is never answered.
        let parked = handle.next_request().await;
        (uris, parked)
    });
    let t = Duration::from_millis(300);
    assert_eq!(lookup.read(t).await, present(false, Host, &["node-a"]));
    assert_eq!(lookup.read(t).await, Seen::Gone);
    assert!(matches!(lookup.read(t).await, Seen::Unreachable(_)));
    assert!(matches!(lookup.read(t).await, Seen::Unreachable(e) if e.contains("no answer")));
    let (uris, _parked) = server.await.expect("server");
    for uri in uris {
        assert_eq!(
            uri,
            "/apis/portway.dev/v1alpha1/namespaces/shop/serviceloadbalancers/web"
        );
    }
}
