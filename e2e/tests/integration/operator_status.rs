//! BRIEF contract 1 with the real operator: two simulated node agents (the agent's own status
//! code, each with its own client and field manager `portway-agent/<node>`) report round after
//! round while the operator, reacting to every report, rewrites its conditions, its
//! `observedGeneration` and (after a Service change) the spec. No write of the operator ever
//! drops or changes an agent's entry, and no agent's write touches the other's.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use portway_crds::condition::{reasons, types};
use portway_crds::{NodeForwardingStatus, ServiceLoadBalancer};
use portway_e2e::requests::{Mark, RequestLog};
use portway_e2e::{Identity, TestEnv, objects, report, wait};
use serde_json::json;

use crate::common::{
    OPERATOR_NS, agent_entry, agent_publish, show_conditions, slb_condition, start_operator,
};
use crate::servicelb::{POOL_LABEL, create_nodes, create_service, ingress_ips, wait_slb_reason};

const ACT: Duration = Duration::from_secs(60);
const ROUNDS: i64 = 8;

fn entry_of(slb: &ServiceLoadBalancer, node: &str) -> Option<NodeForwardingStatus> {
    slb.status
        .as_ref()
        .and_then(|s| s.nodes.iter().find(|n| n.node == node).cloned())
}

/// The `status` fields that `manager` owns (managedFields of the status subresource), as JSON.
fn owned_status_fields(slb: &ServiceLoadBalancer, manager: &str) -> String {
    slb.managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.fields_v1.as_ref())
        .map(|f| serde_json::to_string(&f.0).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_entries_survive_the_real_operators_status_writes() {
    const TEST: &str = "agent_entries_survive_the_real_operators_status_writes";
    let Some(env) = TestEnv::start_or_skip(TEST).await else {
        return;
    };
    let admin = env.client();
    objects::ensure_namespace(&admin, OPERATOR_NS)
        .await
        .expect("operator namespace");
    create_nodes(&admin).await;
    let ns = env.namespace("ssa-real").await.expect("namespace");
    create_service(&admin, &ns, "web", &[80]).await;
    let log = RequestLog::new();
    let op = start_operator(
        &env,
        "op-1",
        Identity::Admin,
        &["--clustercidr-enabled=false"],
        &log,
    );
    wait_slb_reason(
        &admin,
        &ns,
        "web",
        types::READY,
        reasons::AGENTS_NOT_FORWARDING,
    )
    .await;
    let slbs: Api<ServiceLoadBalancer> = Api::namespaced(admin.clone(), &ns);
    let agent_a: Client = env.new_client().expect("agent a");
    let agent_b: Client = env.new_client().expect("agent b");
    let operator_status_writes = |since: Mark| {
        log.writes_since(since, &[])
            .into_iter()
            .filter(|w| w.is_resource("serviceloadbalancers/status"))
            .count()
    };
    let start = log.mark();

    let mut generation = slbs.get("web").await.expect("slb").metadata.generation;
    for round in 1..=ROUNDS {
        if round == 5 {
            // A Service change: the operator applies a new spec (generation + 1) and, with it, a
            // new observedGeneration on its conditions.
            Api::<Service>::namespaced(admin.clone(), &ns)
                .patch(
                    "web",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"ports": [
                        {"name": "p80", "protocol": "TCP", "port": 80},
                        {"name": "p8080", "protocol": "TCP", "port": 8080},
                    ]}})),
                )
                .await
                .expect("add a port");
            let want = generation.map(|g| g + 1);
            let slb = wait::wait_for(
                slbs.clone(),
                "web",
                "the operator to apply the new spec",
                move |s: Option<&ServiceLoadBalancer>| {
                    s.is_some_and(|s| {
                        s.metadata.generation == want
                            && s.status.as_ref().and_then(|st| st.observed_generation) == want
                    })
                },
                ACT,
            )
            .await
            .expect("new generation")
            .expect("slb");
            assert_eq!(slb.spec.ports.len(), 2);
            generation = want;
        }
        // Odd rounds: node-a forwards (Ready=True, an ingress); even rounds: nobody does.
        let forwarding = round % 2 == 1;
        let a = agent_entry(
            "node-a",
            generation,
            forwarding,
            &format!("203.0.113.{}", 100 + round),
        );
        let b = agent_entry("node-b", generation, false, &format!("198.51.100.{round}"));
        let (ra, rb) = tokio::join!(
            agent_publish(&agent_a, &ns, "web", "node-a", &a),
            agent_publish(&agent_b, &ns, "web", "node-b", &b),
        );
        ra.unwrap_or_else(|e| panic!("round {round}, agent a: {e}"));
        rb.unwrap_or_else(|e| panic!("round {round}, agent b: {e}"));

        // The operator reacts: a status write (Ready flips) and the ingress.
        let (reason, ips): (&str, Vec<&str>) = if forwarding {
            (reasons::AGENTS_FORWARDING, vec!["203.0.113.1"])
        } else {
            (reasons::AGENTS_NOT_FORWARDING, vec![])
        };
        let slb = wait_slb_reason(&admin, &ns, "web", types::READY, reason).await;
        let svc = Api::<Service>::namespaced(admin.clone(), &ns)
            .get("web")
            .await
            .expect("service");
        wait::eventually("the ingress to follow the agents", ACT, || {
            let admin = admin.clone();
            let ns = ns.clone();
            let ips = ips.clone();
            async move {
                let svc = Api::<Service>::namespaced(admin, &ns)
                    .get("web")
                    .await
                    .ok()?;
                (ingress_ips(&svc) == ips).then_some(())
            }
        })
        .await
        .unwrap_or_else(|e| panic!("round {round}: {e}; ingress {:?}", ingress_ips(&svc)));

        // After the operator's write, both entries are exactly as their agents wrote them.
        let ready = slb_condition(&slb, types::READY).expect("Ready");
        assert_eq!(ready.observed_generation, generation, "round {round}");
        for (node, written) in [("node-a", &a), ("node-b", &b)] {
            let got = entry_of(&slb, node);
            assert!(
                got.as_ref() == Some(written),
                "round {round}: {node}'s entry after the operator's write:\n{got:?}\nwritten:\n{written:?}\nconditions:\n  {}",
                show_conditions(&slb.status.clone().unwrap_or_default().conditions)
            );
        }
        assert_eq!(
            slb.status.as_ref().map(|s| s.nodes.len()),
            Some(2),
            "round {round}"
        );
    }

    // The operator really wrote in between (the test would prove nothing otherwise).
    let writes = operator_status_writes(start);
    assert!(
        writes >= ROUNDS as usize,
        "the operator wrote the status only {writes} times in {ROUNDS} rounds"
    );
    // Ownership: the operator owns no node entry, each agent exactly its own.
    let slb = slbs.get("web").await.expect("slb");
    let operator = owned_status_fields(&slb, "servicelb.portway.dev");
    assert!(operator.contains("f:conditions"), "{operator}");
    assert!(
        !operator.contains("f:nodes"),
        "the operator owns status.nodes: {operator}"
    );
    for (mine, other) in [("node-a", "node-b"), ("node-b", "node-a")] {
        let owned = owned_status_fields(&slb, &format!("portway-agent/{mine}"));
        assert!(
            owned.contains(&format!(r#"k:{{\"node\":\"{mine}\"}}"#)),
            "{owned}"
        );
        assert!(
            !owned.contains(other),
            "{mine}'s agent owns {other}'s fields: {owned}"
        );
    }

    // node-b leaves the pool; its agent's last report is Forwarding=False (the even round). The
    // operator removes its entry with a guarded JSON Patch; node-a's entry (also False, but its
    // node is still in the pool) stays exactly as written.
    let last_a = entry_of(&slb, "node-a").expect("node-a's entry");
    let prune_mark = log.mark();
    Api::<k8s_openapi::api::core::v1::Node>::all(admin.clone())
        .patch(
            "node-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {POOL_LABEL: null}}})),
        )
        .await
        .expect("node-b leaves the pool");
    let slb = wait::wait_for(
        slbs.clone(),
        "web",
        "the operator to remove node-b's stale entry",
        |s: Option<&ServiceLoadBalancer>| s.is_some_and(|s| entry_of(s, "node-b").is_none()),
        ACT,
    )
    .await
    .expect("node-b's entry removed")
    .expect("slb");
    assert_eq!(
        entry_of(&slb, "node-a").as_ref(),
        Some(&last_a),
        "node-a's entry after the removal of node-b's"
    );
    assert_eq!(slb.status.as_ref().map(|s| s.nodes.len()), Some(1));
    let prunes = operator_status_writes(prune_mark);
    assert!(prunes >= 1, "no status write by the operator");

    // The guard on a real server: a JSON Patch whose `test` no longer holds (index 0 is
    // node-a's entry now) is rejected whole, with 422, and removes nothing.
    let stale_guard: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/status/nodes/0/node", "value": "node-b"},
        {"op": "remove", "path": "/status/nodes/0"},
    ]))
    .expect("patch");
    let err = slbs
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Json::<()>(stale_guard),
        )
        .await
        .expect_err("a failed test must reject the patch");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "a failed JSON Patch test: {err:?}"
    );
    let slb = slbs.get("web").await.expect("slb");
    assert_eq!(entry_of(&slb, "node-a").as_ref(), Some(&last_a));

    assert!(op.is_running(), "operator stopped:\n{}", op.log_tail(30));
    report::line(&format!(
        "api-server ssa with the real operator: 2 agents x {ROUNDS} concurrent rounds, {writes} operator status writes (Ready flipping, one spec change): no agent entry dropped or changed; a node that left the pool lost its False entry (JSON Patch with test), the other stayed"
    ));
}
