//! The Helm chart's RBAC and admission policy, proven by the real components: `helm template`
//! renders the chart; its ServiceAccounts, ClusterRoles, bindings, default pool and
//! ValidatingAdmissionPolicy are applied; then
//! - the real operator runs with the Deployment's own flags, authenticated with a token of the
//!   `portway-operator` ServiceAccount, and does its whole job (start-up RBAC check, Lease,
//!   ServiceLB and ClusterCIDR: Services, DaemonSets, RoleBindings, ServiceLoadBalancers, Node
//!   pod CIDRs, the default ClusterCIDR, statuses, Events, clean-up). Every response its client
//!   gets is recorded: a single 403 fails the test, so the ClusterRole is proven sufficient;
//! - node agents, with tokens bound to Pods on their nodes (as the kubelet mounts them), read
//!   their ServiceLoadBalancer and write their own `status.nodes` entry with the agent's own
//!   status code, and are refused when they write another node's entry, change the operator's
//!   conditions, touch any Service or the ServiceLoadBalancer itself, or write in a namespace
//!   where the operator has not bound `portway-agent-status` (also after it withdrew the binding).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::wait::conditions;
use kube::{Client, ResourceExt};
use portway_crds::condition::{self, reasons, types};
use portway_crds::names::API_VERSION;
use portway_crds::{ClusterCIDR, ServiceLoadBalancer, ServiceLoadBalancerStatus};
use portway_e2e::agent::NodeAgent;
use portway_e2e::apply::{Applier, Document, parse_documents};
use portway_e2e::envtest::workspace_root;
use portway_e2e::operator::{self, Operator};
use portway_e2e::requests::{Mark, RequestLog, describe};
use portway_e2e::{Identity, TestEnv, objects, report, wait};
use portway_node_agent::agent::Stopped;
use portway_node_agent::handover::KeepReason;
use portway_node_agent::status::StatusError;
use portway_operator::plan::Key;
use portway_operator::plan::names::daemonset_name;
use serde_json::{Value, json};

use crate::common::{OPERATOR_NS, agent_entry, agent_publish, now};
use crate::servicelb::{create_service, ingress_ips, wait_ingress, wait_slb_reason};

const ACT: Duration = Duration::from_secs(60);
const RELEASE: &str = "portway";
/// The kinds of the rendered chart this test applies (the CRDs are installed by the harness,
/// the Deployment is replaced by the in-process operator).
const APPLIED_KINDS: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "LoadBalancerPool",
];

/// `helm` on PATH, else `<workspace>/target/tools/bin/helm` (scripts/install-test-deps.sh).
fn find_helm() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("helm"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = workspace_root().join("target/tools/bin/helm");
        p.is_file().then_some(p)
    })
}

/// `helm template` of the chart with the default ClusterCIDR on (so the operator creates it).
fn render(helm: &PathBuf) -> Vec<Document> {
    let chart = workspace_root().join("charts/portway");
    let out = Command::new(helm)
        .args(["template", RELEASE])
        .arg(&chart)
        .args([
            "-n",
            OPERATOR_NS,
            "--set",
            "clusterCIDR.default.enabled=true",
            "--set",
            "clusterCIDR.default.ipv4=10.244.0.0/16",
        ])
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_documents("helm template", &String::from_utf8_lossy(&out.stdout)).expect("YAML")
}

/// The operator container's args of the rendered Deployment, for an in-process replica: without
/// `run`, metrics on an ephemeral loopback port, and `--namespace` (the Deployment sets it
/// through `POD_NAMESPACE` from the downward API).
fn operator_flags(docs: &[Document]) -> Vec<String> {
    let deployment = docs
        .iter()
        .find(|d| d.kind() == "Deployment" && d.value["metadata"]["name"] == "portway-operator")
        .expect("the operator Deployment");
    let args = deployment.value["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("container args");
    let mut flags: Vec<String> = args
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| *a != "run")
        .map(|a| {
            if a.starts_with("--metrics-addr") {
                "--metrics-addr=127.0.0.1:0".to_owned()
            } else {
                a.to_owned()
            }
        })
        .collect();
    flags.push(format!("--namespace={OPERATOR_NS}"));
    flags
}

/// The message of an API error, or a description of why it was not one with `code`.
fn refused(result: &Result<(), String>) -> Option<String> {
    result.as_ref().err().cloned()
}

fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

fn status_error(e: &StatusError) -> String {
    match e {
        StatusError::Kube { source, .. } => api_error(source),
        other => other.to_string(),
    }
}

/// An agent's apply of the ServiceLoadBalancer's status with a hand-made body (forgeries the
/// agent code would never send), as field manager `manager`.
async fn apply_status(
    client: &Client,
    namespace: &str,
    name: &str,
    manager: &str,
    status: Value,
    dry_run: bool,
) -> Result<(), String> {
    let body = json!({
        "apiVersion": API_VERSION,
        "kind": "ServiceLoadBalancer",
        "metadata": { "name": name, "namespace": namespace },
        "status": status,
    });
    let mut params = PatchParams::apply(manager).force();
    params.dry_run = dry_run;
    Api::<ServiceLoadBalancer>::namespaced(client.clone(), namespace)
        .patch_status(name, &params, &Patch::Apply(&body))
        .await
        .map(drop)
        .map_err(|e| api_error(&e))
}

/// The status of ServiceLoadBalancer `web` in `namespace`, as the admin reads it.
async fn web_status(admin: &Client, namespace: &str) -> ServiceLoadBalancerStatus {
    Api::<ServiceLoadBalancer>::namespaced(admin.clone(), namespace)
        .get("web")
        .await
        .expect("slb")
        .status
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_is_enough_for_the_operator_and_confines_the_agents() {
    const TEST: &str = "chart_rbac_is_enough_for_the_operator_and_confines_the_agents";
    let Some(helm) = find_helm() else {
        report::skip(
            TEST,
            "helm not found on PATH nor in target/tools/bin (run scripts/install-test-deps.sh)",
        );
        return;
    };
    let Some(env) = TestEnv::start_or_skip(TEST).await else {
        return;
    };
    let admin = env.client();
    objects::ensure_namespace(&admin, OPERATOR_NS)
        .await
        .expect("operator namespace");

    // 1. The chart's identities, roles, bindings, admission policy and default pool.
    let docs = render(&helm);
    let selected: Vec<Document> = docs
        .iter()
        .filter(|d| APPLIED_KINDS.contains(&d.kind()))
        .cloned()
        .collect();
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert!(
            selected.iter().any(|d| d.kind() == kind),
            "the chart renders no {kind}"
        );
    }
    Applier::new(admin.clone(), "helm")
        .apply_all(&selected, Some(OPERATOR_NS))
        .await
        .expect("apply the chart's RBAC");
    let flags = operator_flags(&docs);

    // The cluster: two nodes (the default pool selects every node), a served Service.
    for (name, ip) in [("node-a", "192.0.2.1"), ("node-b", "192.0.2.2")] {
        objects::create_node(&admin, &objects::node(name, &[], &[("InternalIP", ip)]))
            .await
            .expect("node");
    }
    let shop = env.namespace("shop").await.expect("namespace");
    let other = env.namespace("other").await.expect("namespace");
    create_service(&admin, &shop, "web", &[80]).await;

    // 2. The operator as its ServiceAccount, with the Deployment's flags.
    let token = env
        .service_account_token(OPERATOR_NS, "portway-operator", None)
        .await
        .expect("operator token");
    let log = RequestLog::new();
    let args = operator::run_args(&flags).expect("the chart's flags parse");
    let op = Operator::start(
        "chart-sa",
        args,
        env.client_spec(Identity::Token(token.clone()))
            .recorded(&log),
        env.dir().expect("dir"),
    )
    .expect("operator");
    wait::eventually(
        "the operator to pass its RBAC check and lead",
        ACT,
        || async { (op.metric("portway_operator_leader", &[]) == 1.0).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; operator log:\n{}", op.log_tail(20)));
    let me = TestEnv::whoami(&env.client_with_token(&token).expect("client"))
        .await
        .expect("whoami");
    assert_eq!(
        me.username.as_deref(),
        Some("system:serviceaccount:portway-system:portway-operator")
    );

    // Its whole job: ServiceLB (pool from the chart), ClusterCIDR (the default from the flags).
    wait_slb_reason(
        &admin,
        &shop,
        "web",
        types::READY,
        reasons::AGENTS_NOT_FORWARDING,
    )
    .await;
    let slb = Api::<ServiceLoadBalancer>::namespaced(admin.clone(), &shop)
        .get("web")
        .await
        .expect("slb");
    assert_eq!(slb.spec.pool, "default", "the chart's default pool serves");
    wait::wait_for(
        Api::<DaemonSet>::namespaced(admin.clone(), OPERATOR_NS),
        &format!("portway-{shop}-web"),
        "the DaemonSet",
        conditions::is_created(),
        ACT,
    )
    .await
    .expect("daemonset");
    wait::wait_for(
        Api::<RoleBinding>::namespaced(admin.clone(), &shop),
        "portway-agent-status",
        "the agents' RoleBinding",
        conditions::is_created(),
        ACT,
    )
    .await
    .expect("rolebinding");
    for node in ["node-a", "node-b"] {
        wait::wait_for(
            Api::<Node>::all(admin.clone()),
            node,
            "pod CIDRs from the default ClusterCIDR",
            |n: Option<&Node>| {
                n.and_then(|n| n.spec.as_ref())
                    .and_then(|s| s.pod_cidrs.as_ref())
                    .is_some_and(|c| !c.is_empty())
            },
            ACT,
        )
        .await
        .expect("pod cidrs");
    }
    wait::wait_for(
        Api::<ClusterCIDR>::all(admin.clone()),
        "default",
        "the default ClusterCIDR's status",
        |c: Option<&ClusterCIDR>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.ipv4.as_ref())
                .is_some_and(|u| u.allocated == 2)
        },
        ACT,
    )
    .await
    .expect("clustercidr status");

    // 3. Agents with tokens bound to their Pods on node-a and node-b, as the kubelet mounts them:
    //    pods of web's DaemonSet, named as the DaemonSet controller names them.
    let web_daemonset = daemonset_name(&Key::new(&shop, "web"));
    let mut tokens = Vec::new();
    for (pod, node) in [
        (format!("{web_daemonset}-a7k2p"), "node-a"),
        (format!("{web_daemonset}-b7k2p"), "node-b"),
        (
            format!("{}-c7k2p", daemonset_name(&Key::new(&shop, "api"))),
            "node-a",
        ),
    ] {
        let pod = objects::create_pod_on_node(&admin, OPERATOR_NS, &pod, node, "portway-agent")
            .await
            .expect("pod");
        let token = env
            .service_account_token(OPERATOR_NS, "portway-agent", Some(&pod))
            .await
            .expect("pod-bound token");
        tokens.push(token);
    }
    let agent_a = env.client_with_token(&tokens[0]).expect("agent a");
    let api_agent_on_a = env
        .client_with_token(&tokens[2])
        .expect("agent of another Service on node-a");

    // Reads: its ServiceLoadBalancer, and EndpointSlices (Host dataplane), cluster-wide.
    let mine = Api::<ServiceLoadBalancer>::namespaced(agent_a.clone(), &shop)
        .get("web")
        .await
        .expect("an agent reads its ServiceLoadBalancer");
    assert_eq!(mine.spec.ports.len(), 1);
    Api::<ServiceLoadBalancer>::all(agent_a.clone())
        .list(&ListParams::default())
        .await
        .expect("an agent lists ServiceLoadBalancers");
    Api::<EndpointSlice>::all(agent_a.clone())
        .list(&ListParams::default())
        .await
        .expect("an agent lists EndpointSlices");

    // The real agents' loop (watch, rules, status entry; no kernel) with those tokens: each
    // reads its ServiceLoadBalancer and reports its own entry; the operator publishes both.
    let agent_logs = [RequestLog::new(), RequestLog::new()];
    let mut agents = Vec::new();
    for ((node, pod_ip), (token, log)) in [("node-a", "10.42.1.7"), ("node-b", "10.42.2.7")]
        .into_iter()
        .zip(tokens.iter().zip(agent_logs.iter()))
    {
        let spec = env
            .client_spec(Identity::Token(token.clone()))
            .recorded(log);
        let ip = pod_ip.parse().expect("ip");
        agents.push(NodeAgent::start(spec, &shop, "web", node, vec![ip]).expect("agent"));
    }
    wait_ingress(&admin, &shop, "web", &["192.0.2.1", "192.0.2.2"]).await;
    wait_slb_reason(
        &admin,
        &shop,
        "web",
        types::READY,
        reasons::AGENTS_FORWARDING,
    )
    .await;
    let slb = Api::<ServiceLoadBalancer>::namespaced(admin.clone(), &shop)
        .get("web")
        .await
        .expect("slb");
    let generation = slb.metadata.generation;
    let reported = |node: &str| {
        slb.status
            .as_ref()
            .and_then(|s| s.nodes.iter().find(|n| n.node == node).cloned())
            .unwrap_or_else(|| panic!("no entry of {node}"))
    };
    let a_entry = reported("node-a");
    assert_eq!(a_entry.addresses, ["10.42.1.7"]);
    assert_eq!(a_entry.observed_generation, generation);
    assert_eq!(
        a_entry
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect::<Vec<_>>(),
        [(types::FORWARDING, "True", reasons::RULES_APPLIED)]
    );
    assert_eq!(reported("node-b").addresses, ["10.42.2.7"]);
    for agent in &agents {
        assert!(
            agent
                .applied()
                .last()
                .is_some_and(|r| !r.families.is_empty()),
            "an agent applied no rules"
        );
    }

    // 4. Refusals. The admission policy is loaded asynchronously: wait (bounded) until a dry-run
    //    forgery is denied, so nothing forged is ever stored.
    let forged_b = json!({ "nodes": [agent_entry("node-b", generation, false, "198.51.100.66")] });
    let denied = wait::eventually(
        "the admission policy to deny a (dry-run) forged node-b entry",
        ACT,
        || async {
            refused(
                &apply_status(
                    &agent_a,
                    &shop,
                    "web",
                    "portway-agent/node-b",
                    forged_b.clone(),
                    true,
                )
                .await,
            )
        },
    )
    .await
    .expect("policy enforced");
    assert!(
        denied.contains("may change only the status.nodes entry of that node"),
        "{denied}"
    );
    let before = web_status(&admin, &shop).await;

    let mut refusals: Vec<(&str, String)> = Vec::new();
    let mut expect_refused =
        |what: &'static str, result: Result<(), String>, needle: &str| match result {
            Ok(()) => panic!("node-a's agent was allowed to {what}"),
            Err(message) => {
                assert!(message.contains(needle), "{what}: {message}");
                refusals.push((what, message));
            }
        };
    // Another node's entry, through the agent's own code path with node-b's field manager ...
    expect_refused(
        "write node-b's entry as portway-agent/node-b",
        agent_publish(
            &agent_a,
            &shop,
            "web",
            "node-b",
            &agent_entry("node-b", generation, false, "198.51.100.66"),
        )
        .await
        .map_err(|e| status_error(&e)),
        "may change only the status.nodes entry of that node",
    );
    // ... or under its own field manager, taking node-b's entry over ...
    expect_refused(
        "take node-b's entry over as portway-agent/node-a",
        apply_status(
            &agent_a,
            &shop,
            "web",
            "portway-agent/node-a",
            json!({ "nodes": [a_entry.clone(), agent_entry("node-b", generation, false, "198.51.100.66")] }),
            false,
        )
        .await,
        "may change only the status.nodes entry of that node",
    );
    // ... or dropping it with a merge patch.
    expect_refused(
        "drop node-b's entry (merge patch)",
        Api::<ServiceLoadBalancer>::namespaced(agent_a.clone(), &shop)
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "nodes": [a_entry.clone()] } })),
            )
            .await
            .map(drop)
            .map_err(|e| api_error(&e)),
        "may change only the status.nodes entry of that node",
    );
    // An agent of another Service's DaemonSet on the same node, writing node-a's entry.
    expect_refused(
        "write web's entry from a pod of another Service's DaemonSet",
        agent_publish(&api_agent_on_a, &shop, "web", "node-a", &a_entry)
            .await
            .map_err(|e| status_error(&e)),
        "may write only the ServiceLoadBalancer of its own Service",
    );
    // The operator's conditions and observedGeneration.
    let fake_ready = condition::new(
        types::READY,
        false,
        reasons::AGENTS_NOT_FORWARDING,
        "forged by an agent",
        generation,
        &now(),
    );
    expect_refused(
        "change the operator's conditions",
        apply_status(
            &agent_a,
            &shop,
            "web",
            "portway-agent/node-a",
            json!({ "nodes": [a_entry.clone()], "conditions": [fake_ready] }),
            false,
        )
        .await,
        "may not change status.conditions or status.observedGeneration",
    );
    expect_refused(
        "change the operator's observedGeneration",
        Api::<ServiceLoadBalancer>::namespaced(agent_a.clone(), &shop)
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "observedGeneration": 99 } })),
            )
            .await
            .map(drop)
            .map_err(|e| api_error(&e)),
        "may not change status.conditions or status.observedGeneration",
    );
    // RBAC: no Service, no ServiceLoadBalancer spec, no delete.
    let services = Api::<Service>::namespaced(agent_a.clone(), &shop);
    let annotate = Patch::Merge(json!({"metadata": {"annotations": {"x": "y"}}}));
    expect_refused(
        "patch a Service",
        services
            .patch("web", &PatchParams::default(), &annotate)
            .await
            .map(drop)
            .map_err(|e| api_error(&e)),
        "403",
    );
    expect_refused(
        "patch a Service's status",
        services
            .patch_status(
                "web",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}}}),
                ),
            )
            .await
            .map(drop)
            .map_err(|e| api_error(&e)),
        "403",
    );
    expect_refused(
        "patch a Service in another namespace",
        Api::<Service>::namespaced(agent_a.clone(), &other)
            .patch("anything", &PatchParams::default(), &annotate)
            .await
            .map(drop)
            .map_err(|e| api_error(&e)),
        "403",
    );
    let slbs_a = Api::<ServiceLoadBalancer>::namespaced(agent_a.clone(), &shop);
    expect_refused(
        "patch the ServiceLoadBalancer's spec",
        slbs_a
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"pool": "stolen"}})),
            )
            .await
            .map(drop)
            .map_err(|e| api_error(&e)),
        "403",
    );
    expect_refused(
        "delete the ServiceLoadBalancer",
        slbs_a
            .delete("web", &DeleteParams::default())
            .await
            .map(drop)
            .map_err(|e| api_error(&e)),
        "403",
    );
    // A namespace without a served Service has no portway-agent-status binding.
    expect_refused(
        "write a status where the operator bound nothing",
        agent_publish(&agent_a, &other, "web", "node-a", &a_entry)
            .await
            .map_err(|e| status_error(&e)),
        "403",
    );
    let after = web_status(&admin, &shop).await;
    assert_eq!(after, before, "a refused request changed the status");
    assert_eq!(
        ingress_ips(
            &Api::<Service>::namespaced(admin.clone(), &shop)
                .get("web")
                .await
                .expect("svc")
        ),
        ["192.0.2.1", "192.0.2.2"]
    );

    // A stopping agent reads its ServiceLoadBalancer (granted `get`): its node is still a
    // target, so (a rolling update) it leaves its rules and its Forwarding=True entry for the
    // next agent, and both nodes stay published.
    let listed = web_status(&admin, &shop).await.target_nodes;
    assert_eq!(
        listed,
        ["node-a", "node-b"],
        "the operator lists the targets"
    );
    for agent in agents {
        assert_eq!(
            agent.stop().await,
            Some(Stopped::Kept(KeepReason::Successor)),
            "a replaced agent leaves its rules"
        );
    }
    let entries = web_status(&admin, &shop).await.nodes;
    assert!(
        entries.iter().all(|e| e
            .conditions
            .iter()
            .all(|c| c.reason == reasons::RULES_APPLIED)),
        "no ShuttingDown written by a replaced agent: {entries:?}"
    );
    wait_ingress(&admin, &shop, "web", &["192.0.2.1", "192.0.2.2"]).await;
    for log in &agent_logs {
        let refused = log.answered_since(Mark::START, 403);
        assert!(
            refused.is_empty(),
            "a real agent was refused:\n  {}",
            describe(&refused)
        );
    }

    // 5. Clean-up as the ServiceAccount; the agents' write permission goes with the binding.
    let svc_uid = Api::<Service>::namespaced(admin.clone(), &shop)
        .get("web")
        .await
        .expect("svc")
        .uid()
        .unwrap_or_default();
    Api::<Service>::namespaced(admin.clone(), &shop)
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    wait::wait_for(
        Api::<Service>::namespaced(admin.clone(), &shop),
        "web",
        "the Service to be released and gone",
        conditions::is_deleted(&svc_uid),
        ACT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; operator log:\n{}", op.log_tail(20)));
    wait::wait_for(
        Api::<RoleBinding>::namespaced(admin.clone(), &shop),
        "portway-agent-status",
        "the agents' RoleBinding to be withdrawn",
        |r: Option<&RoleBinding>| r.is_none(),
        ACT,
    )
    .await
    .expect("rolebinding withdrawn");
    assert!(
        Api::<DaemonSet>::namespaced(admin.clone(), OPERATOR_NS)
            .get_opt(&format!("portway-{shop}-web"))
            .await
            .expect("get")
            .is_none()
    );
    wait::eventually(
        "node-a's agent to lose its write permission in shop",
        ACT,
        || async {
            refused(
                &agent_publish(&agent_a, &shop, "web", "node-a", &a_entry)
                    .await
                    .map_err(|e| status_error(&e)),
            )
            .filter(|m| m.contains("403"))
        },
    )
    .await
    .expect("refused after the binding is withdrawn");

    // Not one request of the operator was refused.
    let forbidden = log.answered_since(Mark::START, 403);
    assert!(
        forbidden.is_empty(),
        "the chart's ClusterRole refused the operator:\n  {}",
        describe(&forbidden)
    );
    assert!(op.is_running(), "operator stopped:\n{}", op.log_tail(20));
    let writes = log.writes_since(Mark::START, &[]);
    let kinds = portway_e2e::requests::kinds(&writes);
    report::line(&format!(
        "api-server chart rbac: operator as system:serviceaccount:{OPERATOR_NS}:portway-operator with the Deployment's flags: {} writes of {} kinds, 0 refused ({}); real agents (pod-bound tokens): read, reported, shut down, 0 refused; {} forgeries refused; after clean-up the agents' status write is refused (403)",
        writes.len(),
        kinds.len(),
        kinds.join(", "),
        refusals.len(),
    ));
}
