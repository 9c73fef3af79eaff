//! A LoadBalancer Service on the default pool (Pod dataplane, the workers): the workers'
//! addresses appear in `status.loadBalancer.ingress` (every family of the cluster, `ipMode: VIP`),
//! one ready agent runs on each worker and none on the control plane, and a request from the test
//! host to every published address and port reaches the backend.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use portway_crds::condition::{reasons, types};
use portway_e2e::report;

use crate::support::*;

#[tokio::test]
#[ignore = "needs a kind cluster: e2e/run.sh"]
async fn load_balancer_service_is_served_by_every_worker() {
    const TEST: &str = "load_balancer_service_is_served_by_every_worker";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let ns = namespace(&cluster, "serve", &mut cleanup).await?;
        let port = 18080;
        backend(&cluster, &ns, "web", None, 2).await?;
        let opts = ServiceOptions { port, local: false, pool: None, app: None };
        service(&cluster, &ns, "web", &opts).await?;

        let workers = cluster.workers().await?;
        let expected = expected_ingress(&workers, &cluster.families());
        wait_ingress(&cluster, &ns, "web", &expected, SERVE_TIMEOUT).await?;
        wait_slb_condition(
            &cluster, &ns, "web", types::READY, "True", reasons::AGENTS_FORWARDING, SERVE_TIMEOUT,
        )
        .await?;

        // ipMode VIP on every entry (kube-proxy then keeps routing in-cluster clients itself).
        let svc = cluster.api::<Service>(&ns).get("web").await.map_err(|e| e.to_string())?;
        let ingress = svc
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default();
        if let Some(i) = ingress.iter().find(|i| i.ip_mode.as_deref() != Some("VIP")) {
            return Err(format!("ingress entry without ipMode VIP: {i:?}"));
        }

        // One DaemonSet, agents on exactly the workers.
        let ds = cluster.agent_daemonsets(&ns, "web").await?;
        if ds.len() != 1 {
            return Err(format!("{} agent DaemonSets, expected 1", ds.len()));
        }
        let worker_names: BTreeSet<String> = workers.iter().map(name_of).collect();
        wait_ready_agents(&cluster, &ns, "web", &worker_names, SERVE_TIMEOUT).await?;

        // Every published address answers, from the backend.
        let pods = backend_pods(&cluster, &ns, "web").await?;
        for ip in &expected {
            let (hostname, _) = http_get_eventually(*ip, port, "/hostname", SERVE_TIMEOUT).await?;
            if !pods.contains_key(&hostname) {
                return Err(format!(
                    "{ip}:{port} answered {hostname:?}, not one of the backend pods {:?}",
                    pods.keys().collect::<Vec<_>>()
                ));
            }
        }
        report::line(&format!(
            "kind serving ({}): {} addresses of {} workers answered from the backend on port {port}",
            cluster.variant.name(),
            expected.len(),
            workers.len()
        ));
        Ok(())
    })
    .await;
}
