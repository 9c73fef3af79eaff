//! Changing a pool's node selector moves the Service: the DaemonSet's agents leave the old nodes
//! and start on the new ones, and the ingress and the traffic follow.

use std::collections::BTreeSet;

use portway_e2e::report;
use serde_json::json;

use crate::config::ZONE_LABEL;
use crate::support::*;

#[tokio::test]
#[ignore = "needs a kind cluster: e2e/run.sh"]
async fn pool_change_moves_the_daemonset() {
    const TEST: &str = "pool_change_moves_the_daemonset";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let pool = pool(
            &cluster,
            "move",
            json!({"matchLabels": {ZONE_LABEL: "a"}}),
            "Pod",
            &mut cleanup,
        )
        .await?;
        let ns = namespace(&cluster, "move", &mut cleanup).await?;
        let port = 18082;
        backend(&cluster, &ns, "web", None, 1).await?;
        let opts = ServiceOptions {
            port,
            local: false,
            pool: Some(&pool),
            app: None,
        };
        service(&cluster, &ns, "web", &opts).await?;

        let families = cluster.families();
        let a = cluster.zone_worker("a").await?;
        let b = cluster.zone_worker("b").await?;
        let on_a = expected_ingress(std::slice::from_ref(&a), &families);
        wait_ingress(&cluster, &ns, "web", &on_a, SERVE_TIMEOUT).await?;
        let agents = cluster.agent_nodes(&ns, "web").await?;
        if agents != BTreeSet::from([name_of(&a)]) {
            return Err(format!(
                "agents on {agents:?}, expected only {}",
                name_of(&a)
            ));
        }
        for ip in &on_a {
            http_get_eventually(*ip, port, "/hostname", SERVE_TIMEOUT).await?;
        }

        patch_pool(
            &cluster,
            &pool,
            json!({"nodeSelector": {"matchLabels": {ZONE_LABEL: "b"}}}),
        )
        .await?;
        let on_b = expected_ingress(std::slice::from_ref(&b), &families);
        wait_ingress(&cluster, &ns, "web", &on_b, SERVE_TIMEOUT).await?;
        let want = BTreeSet::from([name_of(&b)]);
        let moved = portway_e2e::wait::eventually("agents only on b", CLEANUP_TIMEOUT, || async {
            let nodes = cluster.agent_nodes(&ns, "web").await.ok()?;
            let ready = cluster.ready_agent_nodes(&ns, "web").await.ok()?;
            (nodes == want && ready == want).then_some(())
        })
        .await;
        if let Err(e) = moved {
            return Err(format!("{e}\n{}", cluster.describe(&ns, "web").await));
        }
        let ds = cluster.agent_daemonsets(&ns, "web").await?;
        if ds.len() != 1 {
            return Err(format!(
                "{} agent DaemonSets after the move, expected 1",
                ds.len()
            ));
        }
        for ip in &on_b {
            http_get_eventually(*ip, port, "/hostname", SERVE_TIMEOUT).await?;
        }
        report::line(&format!(
            "kind pool change ({}): agents and ingress moved {} -> {}",
            cluster.variant.name(),
            name_of(&a),
            name_of(&b)
        ));
        Ok(())
    })
    .await;
}
