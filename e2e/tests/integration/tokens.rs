//! A token minted with the TokenRequest API and bound to a Pod on a node carries the node's
//! name: the API server puts `authentication.kubernetes.io/node-name` into the user's extra
//! info. The chart's ValidatingAdmissionPolicy compares that claim with the `status.nodes`
//! entry an agent writes (contract 3), so this must hold on the server the tier runs against.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use portway_e2e::{TestEnv, objects, report, wait};

const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const NODE_UID_EXTRA: &str = "authentication.kubernetes.io/node-uid";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

#[tokio::test]
async fn pod_bound_token_carries_node_name() {
    let Some(env) = TestEnv::start_or_skip("pod_bound_token_carries_node_name").await else {
        return;
    };
    let client = env.client();
    let ns = env.namespace("tokens").await.expect("namespace");
    let node = objects::create_node(
        &client,
        &objects::node("worker-1", &[], &[("InternalIP", "192.0.2.11")]),
    )
    .await
    .expect("node");
    let pod = objects::create_pod_on_node(&client, &ns, "agent-x7k2p", "worker-1", "portway-agent")
        .await
        .expect("pod");
    let agent = env
        .pod_bound_client(&ns, "portway-agent", &pod)
        .await
        .expect("pod-bound token");

    let me = TestEnv::whoami(&agent).await.expect("SelfSubjectReview");
    let user = format!("system:serviceaccount:{ns}:portway-agent");
    assert_eq!(me.username.as_deref(), Some(user.as_str()));
    let groups = me.groups.clone().unwrap_or_default();
    for g in [
        "system:serviceaccounts",
        &format!("system:serviceaccounts:{ns}"),
        "system:authenticated",
    ] {
        assert!(groups.iter().any(|x| x == g), "groups {groups:?} lack {g}");
    }
    let extra = me.extra.clone().unwrap_or_default();
    let claim = |key: &str| extra.get(key).cloned().unwrap_or_default();
    assert_eq!(
        claim(NODE_NAME_EXTRA),
        ["worker-1"],
        "{NODE_NAME_EXTRA} missing from the pod-bound token's user info: {extra:?}"
    );
    assert_eq!(claim(NODE_UID_EXTRA), [node.uid().unwrap_or_default()]);
    assert_eq!(claim(POD_NAME_EXTRA), [pod.name_any()]);
    assert_eq!(claim(POD_UID_EXTRA), [pod.uid().unwrap_or_default()]);

    // RBAC is on: the ServiceAccount has no grants yet.
    match Api::<Service>::all(agent.clone())
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("an unbound ServiceAccount listed Services: {other:?}"),
    }

    // The token dies with its Pod.
    Api::<Pod>::namespaced(client.clone(), &ns)
        .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    wait::eventually(
        "the pod-bound token to be refused after the pod is gone",
        Duration::from_secs(30),
        || async {
            match TestEnv::whoami(&agent).await {
                Err(portway_e2e::envtest::EnvError::Kube {
                    source: kube::Error::Api(s),
                    ..
                }) if s.code == 401 => Some(()),
                _ => None,
            }
        },
    )
    .await
    .expect("token invalidated");
    report::line(&format!(
        "api-server tokens: pod-bound token has {NODE_NAME_EXTRA}=[worker-1]; refused once the pod is deleted"
    ));
}
