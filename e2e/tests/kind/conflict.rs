//! Two Services that want the same port on the same nodes: the older keeps it, the newer gets
//! `PortConflict=True` (reason `PortInUse`) naming the older one, no DaemonSet and no ingress;
//! when the older one goes, the newer one is served.

use k8s_openapi::api::core::v1::Service;
use portway_crds::condition::{reasons, types};
use portway_e2e::report;

use crate::support::*;

#[tokio::test]
#[ignore = "needs a kind cluster: e2e/run.sh"]
async fn two_services_on_one_port_report_port_conflict() {
    const TEST: &str = "two_services_on_one_port_report_port_conflict";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let ns = namespace(&cluster, "conflict", &mut cleanup).await?;
        let port = 18090;
        backend(&cluster, &ns, "web", None, 1).await?;
        // Same creation second is possible: the names also order them (namespace/name breaks
        // ties), so "a-first" is the older one either way.
        let opts = ServiceOptions {
            port,
            local: false,
            pool: None,
            app: Some("web"),
        };
        service(&cluster, &ns, "a-first", &opts).await?;
        let workers = cluster.workers().await?;
        let expected = expected_ingress(&workers, &cluster.families());
        wait_ingress(&cluster, &ns, "a-first", &expected, SERVE_TIMEOUT).await?;
        service(&cluster, &ns, "b-second", &opts).await?;

        let c = wait_slb_condition(
            &cluster,
            &ns,
            "b-second",
            types::PORT_CONFLICT,
            "True",
            reasons::PORT_IN_USE,
            SERVE_TIMEOUT,
        )
        .await?;
        if !c.message.contains("a-first") {
            return Err(format!(
                "PortConflict does not name the other Service: {:?}",
                c.message
            ));
        }
        wait_slb_condition(
            &cluster,
            &ns,
            "b-second",
            types::READY,
            "False",
            reasons::PORT_IN_USE,
            SERVE_TIMEOUT,
        )
        .await?;
        if !cluster.agent_daemonsets(&ns, "b-second").await?.is_empty() {
            return Err("the conflicting Service got a DaemonSet".into());
        }
        let second = cluster
            .api::<Service>(&ns)
            .get("b-second")
            .await
            .map_err(|e| e.to_string())?;
        if !ingress_ips(&second).is_empty() {
            return Err(format!(
                "the conflicting Service got ingress {:?}",
                ingress_ips(&second)
            ));
        }
        let conflict_message = c.message.clone();

        // The holder goes: the port is free and the second Service is served.
        delete_service_and_wait(&cluster, &ns, "a-first").await?;
        wait_ingress(&cluster, &ns, "b-second", &expected, SERVE_TIMEOUT).await?;
        wait_slb_condition(
            &cluster,
            &ns,
            "b-second",
            types::PORT_CONFLICT,
            "False",
            reasons::NO_CONFLICT,
            SERVE_TIMEOUT,
        )
        .await?;
        report::line(&format!(
            "kind port conflict ({}): {conflict_message:?}; served after the holder left",
            cluster.variant.name()
        ));
        Ok(())
    })
    .await;
}
