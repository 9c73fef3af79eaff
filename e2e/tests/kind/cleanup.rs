//! Deleting a Service removes its DaemonSet, its ServiceLoadBalancer and its agent pods, and the
//! agents remove their rules: in the `Host` dataplane they live in the node's own network
//! namespace, where `iptables-save` on the node must show none of that Service's chains
//! afterwards; in the `Pod` dataplane they go with the pod's namespace.

use crate::support::*;
use portway_e2e::report;

#[tokio::test]
#[ignore = "needs a kind cluster: e2e/run.sh"]
async fn deleting_a_service_removes_its_daemonset_and_rules() {
    const TEST: &str = "deleting_a_service_removes_its_daemonset_and_rules";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let (host_port, pod_port) = (18083, 18084);
        let BothDataplanes { ns, workers, .. } =
            served_in_both_dataplanes(&cluster, "gone", (host_port, pod_port), 1, &mut cleanup)
                .await?;
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
