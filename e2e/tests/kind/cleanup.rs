//! Deleting a Service removes its DaemonSet, its ServiceLoadBalancer and its agent pods, and the
//! agents remove their rules: in the `Host` dataplane they live in the node's own network
//! namespace, where `iptables-save` on the node must show none of that Service's chains
//! afterwards; in the `Pod` dataplane they go with the pod's namespace.

use portway_e2e::report;
use serde_json::json;

use crate::config::ZONE_LABEL;
use crate::support::*;

#[tokio::test]
#[ignore = "needs a kind cluster: e2e/run.sh"]
async fn deleting_a_service_removes_its_daemonset_and_rules() {
    const TEST: &str = "deleting_a_service_removes_its_daemonset_and_rules";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let pool = pool(
            &cluster,
            "gone",
            json!({"matchExpressions": [{"key": ZONE_LABEL, "operator": "Exists"}]}),
            "Host",
            &mut cleanup,
        )
        .await?;
        let ns = namespace(&cluster, "gone", &mut cleanup).await?;
        backend(&cluster, &ns, "web", None, 1).await?;
        let host = ServiceOptions { port: 18083, local: false, pool: Some(&pool), app: Some("web") };
        let pod = ServiceOptions { port: 18084, local: false, pool: None, app: Some("web") };
        service(&cluster, &ns, "host-web", &host).await?;
        service(&cluster, &ns, "pod-web", &pod).await?;
        let workers = cluster.workers().await?;
        let expected = expected_ingress(&workers, &cluster.families());
        wait_ingress(&cluster, &ns, "host-web", &expected, SERVE_TIMEOUT).await?;
        wait_ingress(&cluster, &ns, "pod-web", &expected, SERVE_TIMEOUT).await?;
        for ip in &expected {
            http_get_eventually(*ip, host.port, "/hostname", SERVE_TIMEOUT).await?;
            http_get_eventually(*ip, pod.port, "/hostname", SERVE_TIMEOUT).await?;
        }
        let mut installed = 0;
        for w in &workers {
            let lines = cluster.portway_lines(&name_of(w), Some((&ns, "host-web")))?;
            if lines.is_empty() {
                return Err(format!("no Portway rule of {ns}/host-web on {}", name_of(w)));
            }
            installed += lines.len();
        }

        delete_service_and_wait(&cluster, &ns, "host-web").await?;
        delete_service_and_wait(&cluster, &ns, "pod-web").await?;
        for w in &workers {
            let node = name_of(w);
            let left = portway_e2e::wait::eventually(
                &format!("no rule of {ns}/host-web on {node}"),
                CLEANUP_TIMEOUT,
                || async {
                    let lines = cluster.portway_lines(&node, Some((&ns, "host-web"))).ok()?;
                    lines.is_empty().then_some(())
                },
            )
            .await;
            if let Err(e) = left {
                let lines = cluster.portway_lines(&node, Some((&ns, "host-web")))?;
                return Err(format!("{e}:\n{}", lines.join("\n")));
            }
        }
        report::line(&format!(
            "kind clean-up ({}): {installed} rule lines of the Host-dataplane Service on {} workers, 0 after deletion; both DaemonSets, ServiceLoadBalancers and agents gone",
            cluster.variant.name(),
            workers.len()
        ));
        Ok(())
    })
    .await;
}
