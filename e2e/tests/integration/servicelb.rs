//! The real operator (`portway run`, in-process) against a real API server: a LoadBalancer
//! Service becomes a ServiceLoadBalancer and a node-agent DaemonSet as BRIEF contracts 1 and 2
//! say, its ingress appears once simulated agents report `Forwarding=True`, a resync with
//! nothing new makes no request that writes (counted below kube's `Api`, in the client's tower
//! stack), deleting the Service removes what the operator made (there is no garbage collector
//! here: the operator must do it), and two Services on one port give `PortConflict`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::conditions;
use kube::{Client, ResourceExt};
use portway_crds::ServiceLoadBalancer;
use portway_crds::condition::{reasons, types};
use portway_crds::names as n;
use portway_e2e::operator::Exit;
use portway_e2e::requests::{HOUSEKEEPING, RequestLog, describe};
use portway_e2e::{Identity, TestEnv, objects, report, wait};
use serde_json::json;

use crate::common::{
    OPERATOR_NS, agent_entry, agent_publish, events_about, ok_reconciles, reconciled, settle,
    show_conditions, slb_condition, slb_generation, start_operator,
};

/// Label of the Nodes the test pool selects.
pub const POOL_LABEL: &str = "e2e.portway.dev/pool";
/// How long the ServiceLB sweep waits after a change before it runs (servicelb `sweep_loop`).
const SWEEP_DEBOUNCE: Duration = Duration::from_secs(2);
/// Bound of every wait for the operator to act.
const ACT: Duration = Duration::from_secs(60);

/// node-a and node-b in pool `edge` (ExternalIP + InternalIP), node-c outside it.
pub async fn create_nodes(admin: &Client) {
    let nodes = [
        (
            "node-a",
            Some("edge"),
            [("InternalIP", "192.0.2.1"), ("ExternalIP", "203.0.113.1")],
        ),
        (
            "node-b",
            Some("edge"),
            [("InternalIP", "192.0.2.2"), ("ExternalIP", "203.0.113.2")],
        ),
        (
            "node-c",
            None,
            [("InternalIP", "192.0.2.3"), ("ExternalIP", "203.0.113.3")],
        ),
    ];
    for (name, pool, addresses) in nodes {
        let labels: Vec<(&str, &str)> = pool.map(|p| (POOL_LABEL, p)).into_iter().collect();
        objects::create_node(admin, &objects::node(name, &labels, &addresses))
            .await
            .expect("node");
    }
    let pool = objects::pool("edge", &[(POOL_LABEL, "edge")]).expect("pool");
    objects::create_pool(admin, &pool).await.expect("pool");
}

/// Creates LoadBalancer Service `namespace/name` with TCP `ports` and a ready endpoint on
/// node-a.
pub async fn create_service(admin: &Client, namespace: &str, name: &str, ports: &[i32]) -> Service {
    let named: Vec<(String, i32)> = ports.iter().map(|p| (format!("p{p}"), *p)).collect();
    let spec: Vec<(&str, &str, i32)> = named.iter().map(|(n, p)| (n.as_str(), "TCP", *p)).collect();
    let svc = Api::<Service>::namespaced(admin.clone(), namespace)
        .create(
            &PostParams::default(),
            &objects::load_balancer_service(namespace, name, &spec),
        )
        .await
        .expect("service");
    let slice = objects::endpoint_slice(
        namespace,
        name,
        &format!("{name}-x1"),
        "IPv4",
        &[("", "TCP", 8080)],
        &[objects::TestEndpoint {
            address: "10.42.0.5",
            node: "node-a",
            ready: true,
        }],
    );
    Api::<EndpointSlice>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &slice)
        .await
        .expect("endpointslice");
    svc
}

/// The ingress IPs of a Service.
pub fn ingress_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

/// Waits until Service `namespace/name` publishes exactly `ips`.
pub async fn wait_ingress(admin: &Client, namespace: &str, name: &str, ips: &[&str]) -> Service {
    let want: Vec<String> = ips.iter().map(|s| (*s).to_owned()).collect();
    let what = format!("Service {namespace}/{name} to publish {want:?}");
    wait::wait_for(
        Api::<Service>::namespaced(admin.clone(), namespace),
        name,
        &what,
        move |s: Option<&Service>| s.is_some_and(|s| ingress_ips(s) == want),
        ACT,
    )
    .await
    .expect("ingress")
    .expect("service exists")
}

/// Waits until the ServiceLoadBalancer's condition `type_` has `reason`.
pub async fn wait_slb_reason(
    admin: &Client,
    namespace: &str,
    name: &str,
    type_: &'static str,
    reason: &'static str,
) -> ServiceLoadBalancer {
    let what = format!("ServiceLoadBalancer {namespace}/{name} {type_} reason {reason}");
    let api = Api::<ServiceLoadBalancer>::namespaced(admin.clone(), namespace);
    match wait::wait_for(
        api.clone(),
        name,
        &what,
        move |s: Option<&ServiceLoadBalancer>| {
            s.and_then(|s| slb_condition(s, type_))
                .is_some_and(|c| c.reason == reason)
        },
        ACT,
    )
    .await
    {
        Ok(Some(slb)) => slb,
        other => {
            let now = api.get_opt(name).await.ok().flatten();
            panic!(
                "{what}: {other:?}; conditions now:\n  {}",
                now.and_then(|s| s.status)
                    .map(|s| show_conditions(&s.conditions))
                    .unwrap_or_default()
            )
        }
    }
}

fn merge_annotation(key: &str, value: &str) -> Patch<serde_json::Value> {
    Patch::Merge(json!({ "metadata": { "annotations": { key: value } } }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_service_lifecycle_with_the_real_operator() {
    const TEST: &str = "load_balancer_service_lifecycle_with_the_real_operator";
    let Some(env) = TestEnv::start_or_skip(TEST).await else {
        return;
    };
    let admin = env.client();
    objects::ensure_namespace(&admin, OPERATOR_NS)
        .await
        .expect("operator namespace");
    create_nodes(&admin).await;
    let ns = env.namespace("shop").await.expect("namespace");
    let svc = create_service(&admin, &ns, "web", &[80, 443]).await;

    let log = RequestLog::new();
    let started = Instant::now();
    let op = start_operator(
        &env,
        "op-1",
        Identity::Admin,
        &["--clustercidr-enabled=false"],
        &log,
    );

    // 1. The ServiceLoadBalancer (contract 1): same name, owned by the Service, the pool's spec.
    let slb = wait_slb_reason(
        &admin,
        &ns,
        "web",
        types::READY,
        reasons::AGENTS_NOT_FORWARDING,
    )
    .await;
    let created_in = started.elapsed();
    assert_eq!(slb.spec.pool, "edge");
    let ports: Vec<(String, i32, i32)> = slb
        .spec
        .ports
        .iter()
        .map(|p| (p.protocol.as_str().to_owned(), p.port, p.host_port))
        .collect();
    assert_eq!(
        ports,
        [("TCP".to_owned(), 80, 80), ("TCP".to_owned(), 443, 443)]
    );
    let owner = slb.owner_references();
    assert_eq!(owner.len(), 1, "{owner:?}");
    assert_eq!(owner[0].kind, "Service");
    assert_eq!(owner[0].name, "web");
    assert_eq!(Some(owner[0].uid.clone()), svc.uid());
    assert_eq!(owner[0].controller, Some(true));
    let conds = slb.status.clone().unwrap_or_default().conditions;
    let reason_of = |t: &str| {
        conds
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    assert_eq!(
        reason_of(types::POOL_SELECTED),
        Some(("True".into(), reasons::POOL_MATCHED.into())),
        "{}",
        show_conditions(&conds)
    );
    assert_eq!(
        reason_of(types::PORT_CONFLICT),
        Some(("False".into(), reasons::NO_CONFLICT.into()))
    );
    assert_eq!(
        reason_of(types::ENDPOINTS_READY),
        Some(("True".into(), reasons::ENDPOINTS_AVAILABLE.into()))
    );

    // 2. The node-agent DaemonSet (contract 2): name, labels, args, hostPorts, node affinity.
    let ds_name = format!("portway-{ns}-web");
    let ds = wait::wait_for(
        Api::<DaemonSet>::namespaced(admin.clone(), OPERATOR_NS),
        &ds_name,
        "the node-agent DaemonSet",
        conditions::is_created(),
        ACT,
    )
    .await
    .expect("daemonset")
    .expect("daemonset exists");
    let labels = ds.labels().clone();
    let expected_labels = BTreeMap::from([
        (n::LABEL_MANAGED_BY, n::MANAGED_BY),
        (n::LABEL_COMPONENT, n::COMPONENT_NODE_AGENT),
        (n::LABEL_SERVICE_NAME, "web"),
        (n::LABEL_SERVICE_NAMESPACE, ns.as_str()),
        (n::LABEL_POOL, "edge"),
    ]);
    for (k, v) in &expected_labels {
        assert_eq!(
            labels.get(*k).map(String::as_str),
            Some(*v),
            "label {k}: {labels:?}"
        );
    }
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let agent = pod
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("container agent");
    assert_eq!(agent.image.as_deref(), Some("portway/agent:e2e"));
    assert_eq!(
        agent.args.clone().unwrap_or_default(),
        [
            "run",
            "--namespace",
            ns.as_str(),
            "--service",
            "web",
            "--dataplane",
            "pod",
            "--metrics-addr",
            "[::]:9464"
        ]
    );
    let mut host_ports: Vec<(String, i32, i32, String)> = agent
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some((
                p.name.unwrap_or_default(),
                p.host_port?,
                p.container_port,
                p.protocol.unwrap_or_default(),
            ))
        })
        .collect();
    host_ports.sort();
    assert_eq!(
        host_ports,
        [
            ("p-tcp-443".to_owned(), 443, 443, "TCP".to_owned()),
            ("p-tcp-80".to_owned(), 80, 80, "TCP".to_owned())
        ]
    );
    let terms = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|s| s.node_selector_terms.clone())
        .expect("required node affinity");
    assert_eq!(terms.len(), 1, "{terms:?}");
    let exprs = terms[0].match_expressions.clone().unwrap_or_default();
    assert_eq!(exprs.len(), 2, "{exprs:?}");
    assert_eq!(
        (exprs[0].key.as_str(), exprs[0].operator.as_str()),
        (POOL_LABEL, "In")
    );
    assert_eq!(exprs[0].values.clone().unwrap_or_default(), ["edge"]);
    // Nodes opted out of external load balancers never run an agent.
    assert_eq!(
        (exprs[1].key.as_str(), exprs[1].operator.as_str()),
        (
            "node.kubernetes.io/exclude-from-external-load-balancers",
            "DoesNotExist"
        )
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("portway-agent"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );

    // 3. The Service carries the finalizer, the agents may report in its namespace, no ingress.
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let live = services.get("web").await.expect("service");
    assert!(
        live.finalizers().iter().any(|f| f == n::SERVICE_FINALIZER),
        "{:?}",
        live.finalizers()
    );
    assert!(ingress_ips(&live).is_empty());
    let rb = Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .get("portway-agent-status")
        .await
        .expect("agent RoleBinding");
    assert_eq!(rb.role_ref.name, "portway-agent-status");
    let subject = rb.subjects.clone().unwrap_or_default();
    assert_eq!(subject.len(), 1);
    assert_eq!(
        (subject[0].name.as_str(), subject[0].namespace.as_deref()),
        ("portway-agent", Some(OPERATOR_NS))
    );

    // 4. Agents report: only Forwarding=True nodes of the pool are published, ExternalIP first.
    let generation = slb_generation(&admin, &ns, "web").await;
    let agents: Vec<Client> = (0..3).map(|_| env.new_client().expect("agent")).collect();
    agent_publish(
        &agents[0],
        &ns,
        "web",
        "node-a",
        &agent_entry("node-a", generation, true, "203.0.113.1"),
    )
    .await
    .expect("node-a reports");
    agent_publish(
        &agents[1],
        &ns,
        "web",
        "node-b",
        &agent_entry("node-b", generation, false, "203.0.113.2"),
    )
    .await
    .expect("node-b reports");
    // node-c is not in the pool: whatever its (stray) agent says, it is never published.
    agent_publish(
        &agents[2],
        &ns,
        "web",
        "node-c",
        &agent_entry("node-c", generation, true, "203.0.113.3"),
    )
    .await
    .expect("node-c reports");
    wait_ingress(&admin, &ns, "web", &["203.0.113.1"]).await;
    agent_publish(
        &agents[1],
        &ns,
        "web",
        "node-b",
        &agent_entry("node-b", generation, true, "203.0.113.2"),
    )
    .await
    .expect("node-b forwards");
    let published = wait_ingress(&admin, &ns, "web", &["203.0.113.1", "203.0.113.2"]).await;
    let modes: Vec<Option<String>> = published
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip_mode)
        .collect();
    assert_eq!(modes, [Some("VIP".to_owned()), Some("VIP".to_owned())]);
    wait_slb_reason(&admin, &ns, "web", types::READY, reasons::AGENTS_FORWARDING).await;

    // 5. Converged: a resync with nothing new writes nothing. First make sure the log really sees
    //    the operator's writes (so "none" below can fail).
    settle(&log, Duration::from_secs(3), ACT).await;
    let seen = log.writes_since(portway_e2e::requests::Mark::START, HOUSEKEEPING);
    for resource in [
        "daemonsets",
        "serviceloadbalancers",
        "serviceloadbalancers/status",
        "services/status",
        "rolebindings",
    ] {
        assert!(
            seen.iter().any(|w| w.is_resource(resource)),
            "the request log saw no write of {resource}:\n  {}",
            describe(&seen)
        );
    }
    let mark = log.mark();
    let writes_metric = op.metric("portway_operator_api_writes_total", &[]);
    assert!(writes_metric > 0.0);
    let before = ok_reconciles(&op);
    // Each of these triggers a reconcile of the Service (its own watch, its ServiceLoadBalancer,
    // its DaemonSet, and a Node change that re-plans every Service); none changes what it wants.
    let pp = PatchParams::default();
    let poke = merge_annotation("e2e.portway.dev/poke", "1");
    services
        .patch("web", &pp, &poke)
        .await
        .expect("annotate the Service");
    reconciled(&op, before + 1.0, ACT).await;
    Api::<ServiceLoadBalancer>::namespaced(admin.clone(), &ns)
        .patch("web", &pp, &poke)
        .await
        .expect("annotate the ServiceLoadBalancer");
    reconciled(&op, before + 2.0, ACT).await;
    Api::<DaemonSet>::namespaced(admin.clone(), OPERATOR_NS)
        .patch(&ds_name, &pp, &poke)
        .await
        .expect("annotate the DaemonSet");
    reconciled(&op, before + 3.0, ACT).await;
    let label = Patch::Merge(json!({"metadata": {"labels": {"e2e.portway.dev/poke": "1"}}}));
    Api::<Node>::all(admin.clone())
        .patch("node-a", &pp, &label)
        .await
        .expect("label a Node");
    reconciled(&op, before + 4.0, ACT).await;
    // The sweep (pool statuses, orphans) runs once more after the changes.
    tokio::time::sleep(SWEEP_DEBOUNCE + Duration::from_secs(1)).await;
    let triggered = ok_reconciles(&op) - before;
    let writes = log.writes_since(mark, HOUSEKEEPING);
    assert!(
        writes.is_empty(),
        "{triggered} reconciles of a converged Service wrote:\n  {}",
        describe(&writes)
    );
    assert_eq!(
        op.metric("portway_operator_api_writes_total", &[]),
        writes_metric,
        "the operator's own write metric moved"
    );

    // 5b. Someone edits the DaemonSet's pod template: the operator puts its own back.
    let daemonsets: Api<DaemonSet> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let tamper = Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
        {"name": "agent", "image": "example.org/tampered:1"}
    ]}}}}));
    daemonsets
        .patch(&ds_name, &pp, &tamper)
        .await
        .expect("edit the DaemonSet");
    wait::wait_for(
        daemonsets.clone(),
        &ds_name,
        "the operator to restore the agent image",
        |d: Option<&DaemonSet>| {
            d.and_then(|d| d.spec.as_ref())
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.containers.iter().find(|c| c.name == "agent"))
                .and_then(|c| c.image.as_deref())
                == Some("portway/agent:e2e")
        },
        ACT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; operator log:\n{}", op.log_tail(20)));
    settle(&log, Duration::from_secs(3), ACT).await;
    assert_eq!(
        op.metric("portway_operator_reconcile_errors_total", &[]),
        0.0,
        "failed reconciles before the deletion:\n{}",
        op.log_tail(20)
    );

    // 6. A restart (new caches, every Service reconciled, the start-up sweep) writes nothing either.
    assert_eq!(
        op.stop().await.expect("stop"),
        Exit::Returned(Ok(())),
        "a stopped operator returns Ok"
    );
    let mark = log.mark();
    let op = start_operator(
        &env,
        "op-2",
        Identity::Admin,
        &["--clustercidr-enabled=false"],
        &log,
    );
    reconciled(&op, 1.0, ACT).await;
    wait::eventually(
        "the start-up sweep to count the serving Service",
        ACT,
        || async {
            (op.metric("portway_operator_services", &[("state", "serving")]) == 1.0).then_some(())
        },
    )
    .await
    .expect("sweep ran");
    tokio::time::sleep(SWEEP_DEBOUNCE).await;
    let writes = log.writes_since(mark, HOUSEKEEPING);
    assert!(
        writes.is_empty(),
        "a restarted operator wrote to a converged cluster:\n  {}",
        describe(&writes)
    );

    assert_eq!(
        op.metric("portway_operator_reconcile_errors_total", &[]),
        0.0,
        "failed reconciles after the restart:\n{}",
        op.log_tail(20)
    );

    // 7. Deleting the Service: the operator deletes the DaemonSet and the ServiceLoadBalancer
    //    itself (no garbage collector here), withdraws the agents' RoleBinding with the last
    //    served Service of the namespace, and releases its finalizer.
    let deleting = Instant::now();
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete service");
    wait::wait_for(
        services.clone(),
        "web",
        "the Service to be gone (finalizer released)",
        conditions::is_deleted(&svc.uid().unwrap_or_default()),
        ACT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; operator log:\n{}", op.log_tail(30)));
    let gone_in = deleting.elapsed();
    wait::wait_for(
        Api::<DaemonSet>::namespaced(admin.clone(), OPERATOR_NS),
        &ds_name,
        "the DaemonSet to be deleted",
        |d: Option<&DaemonSet>| d.is_none(),
        ACT,
    )
    .await
    .expect("daemonset deleted");
    wait::wait_for(
        Api::<ServiceLoadBalancer>::namespaced(admin.clone(), &ns),
        "web",
        "the ServiceLoadBalancer to be deleted",
        |s: Option<&ServiceLoadBalancer>| s.is_none(),
        ACT,
    )
    .await
    .expect("slb deleted");
    wait::wait_for(
        Api::<RoleBinding>::namespaced(admin.clone(), &ns),
        "portway-agent-status",
        "the agents' RoleBinding to be deleted",
        |r: Option<&RoleBinding>| r.is_none(),
        ACT,
    )
    .await
    .expect("rolebinding deleted");
    assert!(op.is_running(), "operator stopped:\n{}", op.log_tail(30));
    // Withdrawing the ingress moves the Service's resourceVersion; the finalizer patch after it
    // must carry the new one, or every deletion fails once with 409 (found by this test, fixed
    // in dfd83ac). No failed reconcile at all.
    let failed = op.metric("portway_operator_reconcile_errors_total", &[]);
    assert_eq!(
        failed,
        0.0,
        "failed reconciles while deleting:\n{}",
        op.log_tail(20)
    );
    report::line(&format!(
        "api-server servicelb: ServiceLoadBalancer + DaemonSet {:.1}s after start; ingress from 2 of 3 reporting agents; {triggered} triggered reconciles and a restart: 0 writes; edited DaemonSet restored; Service deleted and cleaned up in {:.1}s, 0 failed reconciles",
        created_in.as_secs_f64(),
        gone_in.as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_port_report_port_conflict() {
    const TEST: &str = "two_services_on_one_port_report_port_conflict";
    let Some(env) = TestEnv::start_or_skip(TEST).await else {
        return;
    };
    let admin = env.client();
    objects::ensure_namespace(&admin, OPERATOR_NS)
        .await
        .expect("operator namespace");
    create_nodes(&admin).await;
    let ns = env.namespace("conflict").await.expect("namespace");
    let log = RequestLog::new();
    let op = start_operator(
        &env,
        "op-1",
        Identity::Admin,
        &["--clustercidr-enabled=false"],
        &log,
    );

    // The older Service takes TCP 80 on the pool's nodes.
    let older = create_service(&admin, &ns, "a-older", &[80]).await;
    wait_slb_reason(
        &admin,
        &ns,
        "a-older",
        types::PORT_CONFLICT,
        reasons::NO_CONFLICT,
    )
    .await;
    // The newer one wants TCP 80 too (and 8443, which is free): no node can run both agents.
    create_service(&admin, &ns, "b-newer", &[80, 8443]).await;
    let slb = wait_slb_reason(
        &admin,
        &ns,
        "b-newer",
        types::PORT_CONFLICT,
        reasons::PORT_IN_USE,
    )
    .await;
    let conflict = slb_condition(&slb, types::PORT_CONFLICT).expect("PortConflict");
    assert_eq!(conflict.status, "True");
    let older_key = format!("{ns}/a-older");
    assert!(
        conflict.message.contains(&older_key) && conflict.message.contains("TCP/80"),
        "the PortConflict message must name the port and the Service holding it: {}",
        conflict.message
    );
    let ready = slb_condition(&slb, types::READY).expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::PORT_IN_USE)
    );
    // No DaemonSet for the newer Service (its pods could never be scheduled), a Warning Event.
    let daemonsets: Api<DaemonSet> = Api::namespaced(admin.clone(), OPERATOR_NS);
    assert!(
        daemonsets
            .get_opt(&format!("portway-{ns}-b-newer"))
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        daemonsets
            .get_opt(&format!("portway-{ns}-a-older"))
            .await
            .expect("get")
            .is_some()
    );
    let events = wait::eventually("a PortInUse Event on b-newer", ACT, || async {
        let e = events_about(&admin, "Service", "b-newer", reasons::PORT_IN_USE).await;
        (!e.is_empty()).then_some(e)
    })
    .await
    .expect("event");
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    let older_slb = Api::<ServiceLoadBalancer>::namespaced(admin.clone(), &ns)
        .get("a-older")
        .await
        .expect("a-older");
    assert_eq!(
        slb_condition(&older_slb, types::PORT_CONFLICT).map(|c| c.status),
        Some("False".to_owned())
    );

    // When the older Service goes, the newer one takes the nodes.
    Api::<Service>::namespaced(admin.clone(), &ns)
        .delete("a-older", &DeleteParams::default())
        .await
        .expect("delete a-older");
    wait::wait_for(
        Api::<Service>::namespaced(admin.clone(), &ns),
        "a-older",
        "a-older to be gone",
        conditions::is_deleted(&older.uid().unwrap_or_default()),
        ACT,
    )
    .await
    .expect("a-older gone");
    wait_slb_reason(
        &admin,
        &ns,
        "b-newer",
        types::PORT_CONFLICT,
        reasons::NO_CONFLICT,
    )
    .await;
    wait::wait_for(
        daemonsets.clone(),
        &format!("portway-{ns}-b-newer"),
        "b-newer's DaemonSet once the port is free",
        conditions::is_created(),
        ACT,
    )
    .await
    .expect("daemonset");
    assert!(op.is_running(), "operator stopped:\n{}", op.log_tail(30));
    report::line(&format!(
        "api-server port conflict: b-newer PortConflict=True naming {older_key} (TCP/80), no DaemonSet, Warning Event; served once a-older was deleted"
    ));
}
