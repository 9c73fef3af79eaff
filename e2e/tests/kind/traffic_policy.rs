//! `externalTrafficPolicy: Local` on a `Host`-dataplane pool: only the nodes that run a ready
//! endpoint are published, the backend sees the client's own address (no SNAT anywhere on the
//! path), Portway's own DNAT chain counted the packets (so it was Portway's rule, not only
//! kube-proxy's, that carried them), and when the endpoint moves to the other worker the ingress
//! follows it.

use std::net::IpAddr;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use portway_crds::condition::{reasons, types};
use portway_e2e::report;
use serde_json::json;

use crate::config::ZONE_LABEL;
use crate::support::*;

/// Requests `/clientip` through `ip` and checks the backend saw the test host's own address.
async fn client_ip_kept(ip: IpAddr, port: i32) -> R<IpAddr> {
    let (body, local) = http_get_eventually(ip, port, "/clientip", SERVE_TIMEOUT).await?;
    // agnhost answers "host:port" ("[v6]:port" for IPv6).
    let seen: std::net::SocketAddr = body
        .parse()
        .map_err(|e| format!("/clientip via {ip} answered {body:?}: {e}"))?;
    if seen.ip() != local.ip() {
        return Err(format!(
            "via {ip}: the backend saw {} but the client is {}: the client address was not kept",
            seen.ip(),
            local.ip()
        ));
    }
    Ok(seen.ip())
}

#[tokio::test]
#[ignore = "needs a kind cluster: e2e/run.sh"]
async fn local_traffic_policy_publishes_endpoint_nodes_and_keeps_client_address() {
    const TEST: &str = "local_traffic_policy_publishes_endpoint_nodes_and_keeps_client_address";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let pool = pool(
            &cluster,
            "host",
            json!({"matchExpressions": [{"key": ZONE_LABEL, "operator": "Exists"}]}),
            "Host",
            &mut cleanup,
        )
        .await?;
        let ns = namespace(&cluster, "local", &mut cleanup).await?;
        let port = 18081;
        backend(&cluster, &ns, "echo", Some("a"), 1).await?;
        let opts = ServiceOptions { port, local: true, pool: Some(&pool), app: None };
        service(&cluster, &ns, "echo", &opts).await?;

        let families = cluster.families();
        let a = cluster.zone_worker("a").await?;
        let b = cluster.zone_worker("b").await?;
        let only_a = expected_ingress(std::slice::from_ref(&a), &families);
        wait_ingress(&cluster, &ns, "echo", &only_a, SERVE_TIMEOUT).await?;
        wait_slb_condition(
            &cluster, &ns, "echo", types::ENDPOINTS_READY, "True", reasons::ENDPOINTS_AVAILABLE,
            SERVE_TIMEOUT,
        )
        .await?;

        let a_lines = |cluster: &Cluster| cluster.portway_lines(&name_of(&a), Some((&ns, "echo")));
        let before = dnat_packets(&a_lines(&cluster)?, &ns, "echo", port);
        let mut kept = Vec::new();
        for ip in &only_a {
            kept.push(client_ip_kept(*ip, port).await?);
        }
        let dnat_lines = a_lines(&cluster)?;
        let after = dnat_packets(&dnat_lines, &ns, "echo", port);
        if after <= before {
            return Err(format!(
                "Portway's DNAT rules for port {port} on {} counted no connection ({before} -> {after}):\n{}",
                name_of(&a),
                dnat_lines.join("\n")
            ));
        }
        // Node b has no endpoint: it is not published, and its port does not serve the backend.
        for ip in expected_ingress(std::slice::from_ref(&b), &families) {
            if let Ok((body, _)) = http_get(ip, port, "/clientip").await {
                return Err(format!("{ip} (no endpoint) answered {body:?}"));
            }
        }

        // Move the endpoint to zone b: the ingress follows.
        cluster
            .api::<Deployment>(&ns)
            .patch(
                "echo",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"template": {"spec": {"nodeSelector": {ZONE_LABEL: "b"}}}}})),
            )
            .await
            .map_err(|e| format!("move backend: {e}"))?;
        let only_b = expected_ingress(std::slice::from_ref(&b), &families);
        wait_ingress(&cluster, &ns, "echo", &only_b, SERVE_TIMEOUT).await?;
        for ip in &only_b {
            kept.push(client_ip_kept(*ip, port).await?);
        }
        report::line(&format!(
            "kind eTP Local ({}): ingress followed the endpoint a -> b; client addresses kept: {kept:?}; {} connections DNATed by Portway on {}",
            cluster.variant.name(),
            after - before,
            name_of(&a)
        ));
        Ok(())
    })
    .await;
}
