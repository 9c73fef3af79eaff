//! `portway cleanup` (`portway_operator::cleanup::run`) against a mocked API server (tower-test):
//! the order of its requests, that it touches only Portway's objects, that a second run writes
//! nothing, the bounded waits, conflict retries, dry runs, and that every request it makes is
//! granted by `permissions::CLEANUP`/`CLEANUP_IN_NAMESPACE` and every grant is used.

mod servicelb_support;

use std::collections::BTreeSet;
use std::time::Duration;

use portway_crds::names as n;
use portway_operator::cleanup::{self, OperatorStop, Options, Report};
use portway_operator::controllers::servicelb::FIELD_MANAGER;
use portway_operator::permissions::{self, Permission};
use portway_operator::plan::Key;
use serde_json::{Value, json};
use servicelb_support::{Fake, Seen};

const NS: &str = "portway-system";
const SCALE: &str = "/apis/apps/v1/namespaces/portway-system/deployments/portway-operator/scale";
const PODS: &str = "/api/v1/namespaces/portway-system/pods";
const DAEMONSETS: &str = "/apis/apps/v1/namespaces/portway-system/daemonsets";
const SERVICES: &str = "/api/v1/services";
const SLBS: &str = "/apis/portway.dev/v1alpha1/serviceloadbalancers";
const RBS: &str = "/apis/rbac.authorization.k8s.io/v1/rolebindings";
const POOLS: &str = "/apis/portway.dev/v1alpha1/loadbalancerpools";
const WEB: &str = "/api/v1/namespaces/shop/services/web";
const LOST: &str = "/api/v1/namespaces/shop/services/lost";
/// How the label selectors reach the query string.
const OPERATOR_PODS: &str = "/api/v1/namespaces/portway-system/pods?*labelSelector=app.kubernetes.io%2Fcomponent%3Doperator";
const AGENT_PODS: &str = "/api/v1/namespaces/portway-system/pods?*component%3Dnode-agent";

fn list(kind: &str, items: Vec<Value>) -> Value {
    let api_version = match kind {
        "DaemonSet" => "apps/v1",
        "ServiceLoadBalancer" => "portway.dev/v1alpha1",
        "RoleBinding" => "rbac.authorization.k8s.io/v1",
        "LoadBalancerPool" => "portway.dev/v1alpha1",
        _ => "v1",
    };
    json!({"apiVersion": api_version, "kind": format!("{kind}List"),
           "metadata": {"resourceVersion": "10"}, "items": items})
}

fn pod(name: &str, node: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS, "labels": labels},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}})
}

fn agent_labels(svc_ns: &str, svc: &str) -> Value {
    json!({n::LABEL_MANAGED_BY: n::MANAGED_BY, n::LABEL_COMPONENT: n::COMPONENT_NODE_AGENT,
           n::LABEL_SERVICE_NAMESPACE: svc_ns, n::LABEL_SERVICE_NAME: svc, n::LABEL_POOL: "all"})
}

fn daemonset(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
           "metadata": {"name": name, "namespace": NS, "labels": labels}})
}

fn status_entry(manager: &str, fields: Value) -> Value {
    json!({"manager": manager, "operation": "Apply", "subresource": "status",
           "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": fields,
           "time": "2026-01-01T00:00:00Z"})
}

fn our_condition(status: &str, reason: &str) -> Value {
    json!({"type": "portway.dev/LoadBalancer", "status": status, "reason": reason,
           "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

fn foreign_condition() -> Value {
    json!({"type": "example.com/Ready", "status": "True", "reason": "Fine",
           "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

/// The Services of the cluster: `shop/web` served by Portway (finalizer, ingress and condition
/// owned by its field manager, plus another controller's finalizer and condition), `shop/lost`
/// unplaced (only Portway's condition), `shop/metal` another class's (its controller's ingress
/// and finalizer), `shop/plain` a ClusterIP Service.
fn services() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7",
                "finalizers": ["example.com/keep", n::SERVICE_FINALIZER],
                "managedFields": [
                    status_entry(FIELD_MANAGER, json!({"f:status": {
                        "f:loadBalancer": {"f:ingress": {}},
                        "f:conditions": {"k:{\"type\":\"portway.dev/LoadBalancer\"}": {}}}})),
                    status_entry("example.com", json!({"f:status": {
                        "f:conditions": {"k:{\"type\":\"example.com/Ready\"}": {}}}})),
                ]},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1", "ipMode": "VIP"}]},
                       "conditions": [foreign_condition(), our_condition("True", "Serving")]}}),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "lost", "namespace": "shop", "resourceVersion": "8",
                "managedFields": [status_entry(FIELD_MANAGER, json!({"f:status": {
                    "f:conditions": {"k:{\"type\":\"portway.dev/LoadBalancer\"}": {}}}}))]},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 81}]},
            "status": {"conditions": [our_condition("False", "PoolNotFound")]}}),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "metal", "namespace": "shop", "resourceVersion": "9",
                "finalizers": ["service.kubernetes.io/load-balancer-cleanup"],
                "managedFields": [status_entry("metallb", json!({"f:status": {
                    "f:loadBalancer": {"f:ingress": {}}}}))]},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "metallb.io/metallb"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}}),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "plain", "namespace": "shop", "resourceVersion": "3"},
            "spec": {"type": "ClusterIP"}}),
    ]
}

fn role_binding(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                       "name": "portway-agent-status"}})
}

fn scale(replicas: i64) -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
           "metadata": {"name": "portway-operator", "namespace": NS, "resourceVersion": "4"},
           "spec": {"replicas": replicas},
           "status": {"replicas": replicas,
                      "selector": "app.kubernetes.io/component=operator,app.kubernetes.io/name=portway"}})
}

/// A cluster with everything Portway makes, plus look-alikes that are not Portway's. The
/// operator's pod is gone on the second look; the agents' on the third.
fn seed_populated(fake: &Fake) {
    fake.seed(SCALE, scale(1));
    let op_labels =
        json!({"app.kubernetes.io/name": "portway", "app.kubernetes.io/component": "operator"});
    fake.on_get_seq(
        OPERATOR_PODS,
        vec![
            (
                200,
                list("Pod", vec![pod("portway-operator-abc", "cp-1", op_labels)]),
            ),
            (200, list("Pod", vec![])),
        ],
    );
    fake.on_get_seq(
        AGENT_PODS,
        vec![
            (
                200,
                list(
                    "Pod",
                    vec![
                        pod("portway-shop-web-1", "w1", agent_labels("shop", "web")),
                        pod("portway-shop-web-2", "w2", agent_labels("shop", "web")),
                    ],
                ),
            ),
            (
                200,
                list(
                    "Pod",
                    vec![pod("portway-shop-web-2", "w2", agent_labels("shop", "web"))],
                ),
            ),
            (200, list("Pod", vec![])),
        ],
    );
    fake.on_get(
        DAEMONSETS,
        200,
        list(
            "DaemonSet",
            vec![
                daemonset("portway-shop-web", agent_labels("shop", "web")),
                // Returned although the selector should have excluded it: never deleted.
                daemonset("fluent-bit", json!({"app": "fluent-bit"})),
            ],
        ),
    );
    fake.on_get(SERVICES, 200, list("Service", services()));
    fake.on_get(
        SLBS,
        200,
        list(
            "ServiceLoadBalancer",
            vec![
                json!({"apiVersion": "portway.dev/v1alpha1", "kind": "ServiceLoadBalancer",
                       "metadata": {"name": "web", "namespace": "shop",
                                    "labels": {n::LABEL_MANAGED_BY: n::MANAGED_BY}},
                       "spec": {"pool": "all", "ports": [{"protocol": "TCP", "port": 80, "hostPort": 80}],
                                "clusterIPs": ["10.43.0.1"], "ipFamilies": ["IPv4"]}}),
                json!({"apiVersion": "portway.dev/v1alpha1", "kind": "ServiceLoadBalancer",
                       "metadata": {"name": "handmade", "namespace": "shop"},
                       "spec": {"pool": "all", "ports": [{"protocol": "TCP", "port": 80, "hostPort": 80}],
                                "clusterIPs": ["10.43.0.2"], "ipFamilies": ["IPv4"]}}),
            ],
        ),
    );
    fake.on_get(
        POOLS,
        200,
        list(
            "LoadBalancerPool",
            vec![
                json!({"apiVersion": "portway.dev/v1alpha1", "kind": "LoadBalancerPool",
                       "metadata": {"name": "default", "labels": {
                           "app.kubernetes.io/part-of": "portway",
                           "app.kubernetes.io/component": "default-pool",
                           "app.kubernetes.io/instance": "portway"}},
                       "spec": {"nodeSelector": {}}}),
                // The user's own pool (returned as if the selector were ignored): kept.
                json!({"apiVersion": "portway.dev/v1alpha1", "kind": "LoadBalancerPool",
                       "metadata": {"name": "edge", "labels": {"app.kubernetes.io/part-of": "portway"}},
                       "spec": {"nodeSelector": {}}}),
            ],
        ),
    );
    let agent_rb_labels =
        json!({n::LABEL_MANAGED_BY: n::MANAGED_BY, n::LABEL_COMPONENT: n::COMPONENT_NODE_AGENT});
    fake.on_get(
        RBS,
        200,
        list(
            "RoleBinding",
            vec![
                role_binding("shop", "portway-agent-status", agent_rb_labels.clone()),
                role_binding("shop", "admins", agent_rb_labels),
            ],
        ),
    );
}

fn options() -> Options {
    Options {
        namespace: NS.into(),
        stop_operator: Some("portway-operator".into()),
        timeout: Duration::from_secs(60),
        poll: Duration::from_secs(1),
        dry_run: false,
        helm_release: Some("portway".into()),
    }
}

fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

fn keys(v: &[&str]) -> Vec<Key> {
    v.iter()
        .map(|s| {
            let (ns, name) = s.split_once('/').expect("ns/name");
            Key::new(ns, name)
        })
        .collect()
}

async fn run_on(fake_setup: impl FnOnce(&Fake), opts: &Options) -> (Report, Fake) {
    let (client, fake) = Fake::start();
    fake_setup(&fake);
    let report = cleanup::run(&client, opts).await.expect("cleanup runs");
    (report, fake)
}

#[tokio::test(start_paused = true)]
async fn removes_everything_portway_made_in_order_and_nothing_else() {
    let (report, fake) = run_on(seed_populated, &options()).await;
    let writes = fake.writes();
    assert_eq!(
        lines(&writes),
        [
            format!("PATCH {SCALE}"),
            "DELETE /apis/portway.dev/v1alpha1/namespaces/shop/serviceloadbalancers/web".to_owned(),
            format!("DELETE {DAEMONSETS}/portway-shop-web"),
            format!("PATCH {WEB}/status"),
            format!("PATCH {WEB}"),
            format!("PATCH {LOST}/status"),
            "DELETE /apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings/portway-agent-status".to_owned(),
            format!("DELETE {POOLS}/default"),
        ]
    );
    assert_eq!(writes[0].body, json!({"spec": {"replicas": 0}}));
    // The status withdrawal: an empty apply by Portway's manager (removes only what it owns).
    for w in [&writes[3], &writes[5]] {
        assert_eq!(w.body["status"], json!({}), "{}", w.line());
        assert!(
            w.query.contains(&format!(
                "fieldManager={}",
                FIELD_MANAGER.replace('/', "%2F")
            )) && w.query.contains("force=true"),
            "{}",
            w.query
        );
    }
    // The finalizer patch keeps the other finalizer and carries the version the status write
    // returned.
    assert_eq!(
        writes[4].body["metadata"]["finalizers"],
        json!(["example.com/keep"])
    );
    assert_eq!(writes[4].body["metadata"]["resourceVersion"], "2");
    // Order against the reads: the operator's pods were gone before anything was deleted; the
    // ServiceLoadBalancers went before the DaemonSets (so stopping agents remove their rules);
    // the agents' pods were gone before their RoleBindings went.
    let all = fake.requests();
    let last = |pred: &dyn Fn(&Seen) -> bool| all.iter().rposition(pred).expect("seen");
    let first = |pred: &dyn Fn(&Seen) -> bool| all.iter().position(pred).expect("seen");
    let op_pods_done = last(&|s| s.path == PODS && s.query.contains("component%3Doperator"));
    let agents_done = last(&|s| s.path == PODS && s.query.contains("component%3Dnode-agent"));
    let ds_delete = first(&|s| s.method == "DELETE" && s.path.contains("/daemonsets/"));
    let slb_delete = first(&|s| s.method == "DELETE" && s.path.contains("/serviceloadbalancers/"));
    let status_write = first(&|s| s.path.ends_with("/status") && s.method == "PATCH");
    assert!(
        op_pods_done < slb_delete
            && slb_delete < ds_delete
            && ds_delete < agents_done
            && agents_done < status_write
    );
    assert_eq!(
        all.iter()
            .filter(|s| s.path == PODS && s.query.contains("component%3Dnode-agent"))
            .count(),
        3,
        "polled until the agents were gone"
    );

    assert_eq!(report.operator, Some(OperatorStop::Stopped { replicas: 1 }));
    assert_eq!(
        report.deleted_daemonsets,
        keys(&[&format!("{NS}/portway-shop-web")])
    );
    assert_eq!(report.agent_pods, 2);
    assert!(report.agent_pods_remaining.is_empty());
    assert_eq!(report.agents_gone_after, Some(Duration::from_secs(2)));
    assert_eq!(report.withdrawn_statuses, keys(&["shop/web", "shop/lost"]));
    assert_eq!(report.removed_finalizers, keys(&["shop/web"]));
    assert_eq!(report.deleted_service_load_balancers, keys(&["shop/web"]));
    assert_eq!(
        report.deleted_role_bindings,
        keys(&["shop/portway-agent-status"])
    );
    assert!(report.ok(), "{:?}", report.errors);
    assert_eq!(report.deleted_pools, ["default"]);
    assert_eq!(report.writes, 8);
    let text = report.render();
    assert!(
        text.contains("portway cleanup: 1 DaemonSets, 1 ServiceLoadBalancers, 1 RoleBindings, 1 pools, 2 Services released; 0 agent pods left; 0 errors; 8 writes"),
        "{text}"
    );
}

/// The cluster after a run: nothing of Portway's left, the operator at 0.
fn seed_cleaned(fake: &Fake) {
    fake.seed(SCALE, scale(0));
    fake.on_get_seq(OPERATOR_PODS, vec![(200, list("Pod", vec![]))]);
    fake.on_get_seq(AGENT_PODS, vec![(200, list("Pod", vec![]))]);
    fake.on_get(
        DAEMONSETS,
        200,
        list(
            "DaemonSet",
            vec![daemonset("fluent-bit", json!({"app": "fluent-bit"}))],
        ),
    );
    let mut svcs = services();
    // web: Portway's finalizer and status gone (its manager entry owns nothing any more).
    svcs[0]["metadata"]["finalizers"] = json!(["example.com/keep"]);
    svcs[0]["metadata"]["managedFields"][0]["fieldsV1"] = json!({"f:status": {}});
    svcs[0]["status"] = json!({"conditions": [foreign_condition()]});
    // lost: the manager entry was removed with the last field it owned.
    svcs[1]["metadata"]["managedFields"] = json!([]);
    svcs[1]["status"] = json!({});
    fake.on_get(SERVICES, 200, list("Service", svcs));
    fake.on_get(SLBS, 200, list("ServiceLoadBalancer", vec![]));
    fake.on_get(RBS, 200, list("RoleBinding", vec![]));
    fake.on_get(POOLS, 200, list("LoadBalancerPool", vec![]));
}

#[tokio::test(start_paused = true)]
async fn a_second_run_writes_nothing() {
    let (report, fake) = run_on(seed_cleaned, &options()).await;
    assert!(fake.writes().is_empty(), "{:?}", lines(&fake.writes()));
    assert_eq!(report.operator, Some(OperatorStop::Stopped { replicas: 0 }));
    assert_eq!(report.writes, 0);
    assert!(report.ok());
    // And with no operator Deployment at all (a manual run after `helm uninstall`).
    let (report, fake) = run_on(
        |f| {
            seed_cleaned(f);
            f.objects.lock().unwrap().remove(SCALE);
        },
        &options(),
    )
    .await;
    assert!(fake.writes().is_empty());
    assert_eq!(report.operator, Some(OperatorStop::Absent));
}

#[tokio::test(start_paused = true)]
async fn agents_that_do_not_stop_are_reported_and_the_rest_goes_on() {
    let stuck = |f: &Fake| {
        seed_populated(f);
        f.sequences.lock().unwrap().retain(|(k, _)| k != AGENT_PODS);
        f.on_get_seq(
            AGENT_PODS,
            vec![(
                200,
                list(
                    "Pod",
                    vec![pod("portway-shop-web-2", "w2", agent_labels("shop", "web"))],
                ),
            )],
        );
    };
    let start = tokio::time::Instant::now();
    let (report, fake) = run_on(stuck, &options()).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(59) && waited <= Duration::from_secs(61),
        "waited {waited:?} for a 60 s deadline (shared with the operator's wait)"
    );
    assert_eq!(
        report.agent_pods_remaining,
        vec![cleanup::RemainingPod {
            pod: Key::new(NS, "portway-shop-web-2"),
            node: Some("w2".into())
        }]
    );
    assert!(report.ok(), "a slow pod is a warning, not an error");
    assert!(report.render().contains("warning: 1 agent pods still present at the deadline: portway-system/portway-shop-web-2 on w2"));
    assert_eq!(fake.writes().len(), 8, "everything else was still removed");
}

#[tokio::test(start_paused = true)]
async fn an_operator_that_does_not_stop_blocks_the_cleanup_before_any_delete() {
    let running = |f: &Fake| {
        seed_populated(f);
        f.sequences
            .lock()
            .unwrap()
            .retain(|(k, _)| k != OPERATOR_PODS);
        let labels = json!({"app.kubernetes.io/component": "operator"});
        f.on_get_seq(
            OPERATOR_PODS,
            vec![(
                200,
                list("Pod", vec![pod("portway-operator-abc", "cp-1", labels)]),
            )],
        );
    };
    let (client, fake) = Fake::start();
    running(&fake);
    let err = cleanup::run(&client, &options())
        .await
        .expect_err("must stop");
    let msg = err.to_string();
    assert!(
        msg.contains("the operator is still running")
            && msg.contains("portway-operator-abc on cp-1"),
        "{msg}"
    );
    assert_eq!(lines(&fake.writes()), [format!("PATCH {SCALE}")]);
}

#[tokio::test(start_paused = true)]
async fn a_conflicting_finalizer_patch_is_retried_on_a_fresh_read() {
    let conflicted = |f: &Fake| {
        seed_populated(f);
        f.fail(&format!("PATCH {WEB}$"), 409, 1);
        // The re-read: someone else added a finalizer meanwhile.
        let mut fresh = services()[0].clone();
        fresh["metadata"]["resourceVersion"] = json!("12");
        fresh["metadata"]["finalizers"] =
            json!(["example.com/keep", n::SERVICE_FINALIZER, "example.com/new"]);
        f.on_get_seq(&format!("{WEB}?"), vec![(200, fresh)]);
    };
    let (report, fake) = run_on(conflicted, &options()).await;
    let all = fake.requests();
    let on_web: Vec<&Seen> = all.iter().filter(|s| s.path == WEB).collect();
    assert_eq!(
        on_web
            .iter()
            .map(|s| (s.method.as_str(), s.code))
            .collect::<Vec<_>>(),
        [("PATCH", 409), ("GET", 200), ("PATCH", 200)]
    );
    assert_eq!(
        on_web[2].body["metadata"],
        json!({"finalizers": ["example.com/keep", "example.com/new"], "resourceVersion": "12"})
    );
    assert!(report.ok(), "{:?}", report.errors);
    assert_eq!(report.removed_finalizers, keys(&["shop/web"]));
}

#[tokio::test(start_paused = true)]
async fn failed_deletes_are_reported_and_the_run_goes_on() {
    let failing = |f: &Fake| {
        seed_populated(f);
        f.fail("DELETE /apis/portway.dev/", 500, 1);
    };
    let (report, fake) = run_on(failing, &options()).await;
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert!(report.errors[0].contains("delete ServiceLoadBalancer shop/web"));
    assert!(!report.ok());
    assert!(
        lines(&fake.writes())
            .iter()
            .any(|l| l.contains("rolebindings/portway-agent-status")),
        "RoleBindings were still deleted"
    );
}

#[tokio::test(start_paused = true)]
async fn dry_run_reports_and_writes_nothing() {
    let mut opts = options();
    opts.dry_run = true;
    let (report, fake) = run_on(seed_populated, &opts).await;
    assert!(fake.writes().is_empty(), "{:?}", lines(&fake.writes()));
    assert_eq!(report.deleted_daemonsets.len(), 1);
    assert_eq!(report.withdrawn_statuses, keys(&["shop/web", "shop/lost"]));
    assert_eq!(report.removed_finalizers, keys(&["shop/web"]));
    assert_eq!(report.deleted_service_load_balancers.len(), 1);
    assert_eq!(report.deleted_role_bindings.len(), 1);
    assert!(
        report
            .render()
            .contains("would delete node-agent DaemonSet")
    );
}

#[tokio::test(start_paused = true)]
async fn no_serviceloadbalancer_crd_is_nothing_to_delete() {
    let no_crd = |f: &Fake| {
        seed_populated(f);
        f.gets.lock().unwrap().retain(|(k, _, _)| k != SLBS);
        f.on_get(SLBS, 404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "the server could not find the requested resource"}));
    };
    let (report, _) = run_on(no_crd, &options()).await;
    assert!(report.ok(), "{:?}", report.errors);
    assert!(report.deleted_service_load_balancers.is_empty());
}

/// (group, resource[/subresource], verb, namespace) of a request, as RBAC sees it.
fn rbac_of(s: &Seen) -> (String, String, String, String) {
    let parts: Vec<&str> = s.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.first() {
        Some(&"api") => ("", &parts[2..]),
        _ => (
            parts.get(1).copied().unwrap_or(""),
            &parts[parts.len().min(3)..],
        ),
    };
    let (namespace, rest): (String, Vec<&str>) =
        if rest.first() == Some(&"namespaces") && rest.len() > 2 {
            (rest[1].to_owned(), rest[2..].to_vec())
        } else {
            (String::new(), rest.to_vec())
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
        _ if rest.len() == 1 => "list",
        _ => "get",
    };
    (group.to_owned(), resource, verb.to_owned(), namespace)
}

fn grants(list: &[Permission]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(move |v| (p.group.to_owned(), p.resource.to_owned(), (*v).to_owned()))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn every_request_is_granted_by_the_cleanup_permissions_and_every_grant_is_used() {
    let mut seen = Vec::new();
    for setup in [seed_populated as fn(&Fake), |f: &Fake| {
        seed_populated(f);
        f.fail(&format!("PATCH {WEB}$"), 409, 1);
        f.on_get_seq(&format!("{WEB}?"), vec![(200, services()[0].clone())]);
    }] {
        let (_, fake) = run_on(setup, &options()).await;
        seen.extend(fake.requests());
    }
    let cluster = grants(permissions::CLEANUP);
    let namespaced = grants(permissions::CLEANUP_IN_NAMESPACE);
    let mut used = BTreeSet::new();
    for s in &seen {
        let (g, r, v, ns) = rbac_of(s);
        let grant = (g, r, v);
        let ok = cluster.contains(&grant) || (ns == NS && namespaced.contains(&grant));
        assert!(ok, "{} is not granted: {grant:?} in {ns:?}", s.line());
        if grant.1 == "deployments/scale" {
            assert!(
                s.path.contains("/deployments/portway-operator/"),
                "the scale grant is for the operator's Deployment only"
            );
        }
        used.insert(grant);
    }
    let unused: Vec<_> = cluster
        .union(&namespaced)
        .filter(|g| !used.contains(*g))
        .collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
    assert!(
        cluster.intersection(&namespaced).next().is_none(),
        "a grant is in both lists"
    );
}
