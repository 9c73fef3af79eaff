use std::net::IpAddr;

use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use portway_crds::condition::{reasons, status as cstatus, types};
use portway_crds::{DataplaneMode, IpFamily, NodeForwardingStatus, Protocol};

use super::*;
use crate::forwarding::{FamilyState, ForwardingReport};
use crate::rules::{FamilyRules, Forward, Note, RuleSet};

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn rules(targets: bool) -> RuleSet {
    RuleSet {
        service: "shop/web".into(),
        mode: DataplaneMode::Host,
        families: vec![FamilyRules {
            family: IpFamily::IPv4,
            forwards: vec![Forward {
                name: "http".into(),
                protocol: Protocol::TCP,
                port: 80,
                destinations: vec![ip("192.0.2.10")],
                targets: if targets {
                    vec!["10.244.1.2:8080".parse().expect("sa")]
                } else {
                    vec![]
                },
                masquerade: false,
            }],
            allowed_sources: None,
            shared_netns: true,
        }],
        notes: vec![],
    }
}

#[test]
fn condition_precedence_and_messages() {
    let ok = rules(true);
    let fwd = ForwardingReport::default();
    let (s, r, m) = forwarding_condition(&Outcome::Applied {
        rules: &ok,
        forwarding: &fwd,
        missing_addresses: &[],
    });
    assert!(s);
    assert_eq!(r, reasons::RULES_APPLIED);
    assert_eq!(m, "forwarding TCP 80 from 192.0.2.10");

    let no_eps = rules(false);
    let (s, r, m) = forwarding_condition(&Outcome::Applied {
        rules: &no_eps,
        forwarding: &fwd,
        missing_addresses: &[],
    });
    assert!(!s);
    assert_eq!(r, reasons::NO_ENDPOINTS);
    assert!(m.contains("IPv4 TCP/80"), "{m}");

    let mut off = ForwardingReport::default();
    off.families.insert(
        IpFamily::IPv4,
        FamilyState::Off {
            sysctl: "net.ipv4.conf.eth0.forwarding".into(),
            detail: "is 0".into(),
        },
    );
    let (s, r, m) = forwarding_condition(&Outcome::Applied {
        rules: &no_eps,
        forwarding: &off,
        missing_addresses: &[],
    });
    assert!(!s);
    assert_eq!(
        r,
        reasons::FORWARDING_DISABLED,
        "forwarding wins over endpoints"
    );
    assert!(m.contains("net.ipv4.conf.eth0.forwarding"), "{m}");

    let mut empty = rules(true);
    empty.families.clear();
    empty.notes = vec![Note::NoLocalAddress {
        family: IpFamily::IPv6,
    }];
    let missing = [ip("2001:db8::1")];
    let (s, r, m) = forwarding_condition(&Outcome::Applied {
        rules: &empty,
        forwarding: &fwd,
        missing_addresses: &missing,
    });
    assert!(!s);
    assert_eq!(r, reasons::NO_ADDRESSES);
    assert!(
        m.contains("no IPv6 address") && m.contains("2001:db8::1"),
        "{m}"
    );

    let (s, r, m) = forwarding_condition(&Outcome::InvalidSpec {
        error: "spec.ports is empty",
        kept: Some(4),
    });
    assert!(!s);
    assert_eq!(r, reasons::INVALID_SPEC);
    assert!(
        m.ends_with("the rules of generation 4 stay installed"),
        "{m}"
    );

    let (_, r, _) = forwarding_condition(&Outcome::ApplyFailed { error: "boom" });
    assert_eq!(r, reasons::KERNEL_REJECTED);
    let (s, r, _) = forwarding_condition(&Outcome::ShuttingDown { removed: true });
    assert!(!s);
    assert_eq!(r, reasons::SHUTTING_DOWN);
    let long = "x".repeat(5000);
    let (_, _, m) = forwarding_condition(&Outcome::ApplyFailed { error: &long });
    assert!(m.len() <= MAX_MESSAGE);
}

#[test]
fn entries_keep_the_transition_time_until_the_status_flips() {
    let ok = rules(true);
    let fwd = ForwardingReport::default();
    let applied = Outcome::Applied {
        rules: &ok,
        forwarding: &fwd,
        missing_addresses: &[],
    };
    let addrs = [ip("192.0.2.10")];
    let first = node_entry("node-a", Some(3), &addrs, &applied, None, &t(100));
    assert_eq!(first.conditions.len(), 1);
    assert_eq!(first.conditions[0].type_, types::FORWARDING);
    assert_eq!(first.conditions[0].status, cstatus::TRUE);
    assert_eq!(first.conditions[0].observed_generation, Some(3));
    assert_eq!(first.addresses, vec!["192.0.2.10"]);

    let again = node_entry("node-a", Some(3), &addrs, &applied, Some(&first), &t(200));
    assert_eq!(again.conditions[0].last_transition_time, t(100));
    assert!(!differs(Some(&first), &again), "nothing but time changed");

    let newer = node_entry("node-a", Some(4), &addrs, &applied, Some(&first), &t(300));
    assert!(differs(Some(&first), &newer));
    assert_eq!(newer.conditions[0].last_transition_time, t(100));

    let down = node_entry(
        "node-a",
        Some(4),
        &[],
        &Outcome::ShuttingDown { removed: true },
        Some(&newer),
        &t(400),
    );
    assert_eq!(down.conditions[0].last_transition_time, t(400));
    assert!(differs(Some(&newer), &down));
    assert!(differs(None, &down));
}

#[test]
fn the_apply_body_holds_only_this_nodes_entry() {
    let entry = NodeForwardingStatus {
        node: "node-a".into(),
        observed_generation: Some(2),
        addresses: vec!["192.0.2.10".into()],
        conditions: vec![],
    };
    let body = apply_body("shop", "web", &entry);
    assert_eq!(body["apiVersion"], "portway.dev/v1alpha1");
    assert_eq!(body["kind"], "ServiceLoadBalancer");
    assert_eq!(body["metadata"]["name"], "web");
    assert_eq!(body["metadata"]["namespace"], "shop");
    let status = body["status"].as_object().expect("status");
    assert_eq!(status.len(), 1, "only status.nodes: {status:?}");
    let nodes = body["status"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["node"], "node-a");
    assert!(body.get("spec").is_none());
}

/// One expected request of the mocked API server: checks it and answers with `reply`.
pub(crate) async fn expect_status_apply(
    handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>,
    node: &str,
    reply: serde_json::Value,
) -> serde_json::Value {
    let (request, send) = handle.next_request().await.expect("a request");
    assert_eq!(request.method(), http::Method::PATCH);
    let uri = request.uri().to_string();
    let (path, query) = uri.split_once('?').expect("query");
    assert_eq!(
        path,
        "/apis/portway.dev/v1alpha1/namespaces/shop/serviceloadbalancers/web/status"
    );
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort();
    let manager = format!("fieldManager=portway-agent%2F{node}");
    assert_eq!(pairs, vec![manager.as_str(), "force=true"]);
    assert_eq!(
        request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(&b"application/apply-patch+yaml"[..])
    );
    let bytes = request.into_body().collect_bytes().await.expect("body");
    let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json body");
    let nodes = body["status"]["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "only its own entry: {body}");
    assert_eq!(nodes[0]["node"], node);
    assert_eq!(
        body["status"].as_object().map(|s| s.len()),
        Some(1),
        "nothing but status.nodes"
    );
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&reply).expect("reply")))
            .expect("response"),
    );
    body
}

pub(crate) fn slb_json(nodes: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "portway.dev/v1alpha1",
        "kind": "ServiceLoadBalancer",
        "metadata": {"name": "web", "namespace": "shop", "generation": 2},
        "spec": {"pool": "p", "ports": [{"protocol": "TCP", "port": 80, "hostPort": 80}],
                 "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv4"]},
        "status": {"nodes": nodes}
    })
}

#[tokio::test]
async fn kube_status_is_a_forced_server_side_apply_of_the_status_subresource() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let mut sink = KubeStatus::new(client, "shop", "web", "node-a");
    let entry = NodeForwardingStatus {
        node: "node-a".into(),
        observed_generation: Some(2),
        addresses: vec!["192.0.2.10".into()],
        conditions: vec![portway_crds::condition::new(
            types::FORWARDING,
            true,
            reasons::RULES_APPLIED,
            "ok",
            Some(2),
            &t(100),
        )],
    };
    let server = tokio::spawn(async move {
        let body = expect_status_apply(
            &mut handle,
            "node-a",
            slb_json(serde_json::json!([{"node": "node-a"}, {"node": "node-b"}])),
        )
        .await;
        assert_eq!(
            body["status"]["nodes"][0]["conditions"][0]["reason"],
            "RulesApplied"
        );
        handle
    });
    sink.publish(&entry).await.expect("published");
    let mut handle = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("server finished")
        .expect("server ok");
    // Exactly one request.
    drop(sink);
    assert!(handle.next_request().await.is_none());
}

#[tokio::test]
async fn kube_status_reports_api_errors() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let mut sink = KubeStatus::new(client, "shop", "web", "node-a");
    let server = tokio::spawn(async move {
        let (_, send) = handle.next_request().await.expect("request");
        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "forbidden", "reason": "Forbidden", "code": 403});
        send.send_response(
            Response::builder()
                .status(403)
                .body(Body::from(serde_json::to_vec(&status).expect("json")))
                .expect("response"),
        );
    });
    let err = sink
        .publish(&NodeForwardingStatus {
            node: "node-a".into(),
            ..Default::default()
        })
        .await
        .expect_err("403");
    assert!(err.to_string().contains("shop/web"), "{err}");
    server.await.expect("server");
}

#[tokio::test]
async fn file_status_writes_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sink = FileStatus {
        path: dir.path().join("status.json"),
    };
    sink.publish(&NodeForwardingStatus {
        node: "n".into(),
        ..Default::default()
    })
    .await
    .expect("written");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("status.json")).expect("read"))
            .expect("json");
    assert_eq!(v["node"], "n");
}
