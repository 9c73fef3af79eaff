//! What Portway costs a node: the resident memory of every Portway process (the operator and
//! every agent) with 20 LoadBalancer Services served, as each node's kubelet measures its
//! containers (the Summary API, `rssBytes`), printed per process kind and per node.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use portway_crds::names;
use portway_e2e::report;
use serde_json::Value;

use crate::support::*;
use crate::traffic::median;

/// LoadBalancer Services served while measuring.
const SERVICES: i32 = 20;
const FIRST_PORT: i32 = 18200;
const MIB: f64 = 1024.0 * 1024.0;

/// `rssBytes` of every container of every pod on `node`, by (namespace, pod name).
async fn pod_rss(cluster: &Cluster, node: &str) -> R<BTreeMap<(String, String), u64>> {
    let request = http::Request::get(format!("/api/v1/nodes/{node}/proxy/stats/summary"))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = cluster
        .client
        .request_text(request)
        .await
        .map_err(|e| format!("kubelet Summary API of {node}: {e}"))?;
    let summary: Value =
        serde_json::from_str(&text).map_err(|e| format!("Summary API of {node}: {e}"))?;
    let mut out = BTreeMap::new();
    for pod in summary["pods"].as_array().into_iter().flatten() {
        let key = (
            pod["podRef"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            pod["podRef"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        let rss: u64 = pod["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["memory"]["rssBytes"].as_u64())
            .sum();
        out.insert(key, rss);
    }
    Ok(out)
}

fn mib(bytes: u64) -> f64 {
    // u64 -> f64 loses nothing at these sizes.
    bytes as f64 / MIB
}

#[tokio::test]
#[ignore = "needs a cluster: e2e/run.sh"]
async fn serial_footprint_of_every_portway_process_with_20_services() {
    const TEST: &str = "serial_footprint_of_every_portway_process_with_20_services";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let ns = namespace(&cluster, "rss", &mut cleanup).await?;
        backend(&cluster, &ns, "web", None, 1).await?;
        let workers = cluster.workers().await?;
        let expected = expected_ingress(&workers, &cluster.families());
        for i in 0..SERVICES {
            let opts = ServiceOptions {
                port: FIRST_PORT + i,
                local: false,
                pool: None,
                app: Some("web"),
            };
            service(&cluster, &ns, &format!("web-{i}"), &opts).await?;
        }
        for i in 0..SERVICES {
            wait_ingress(&cluster, &ns, &format!("web-{i}"), &expected, SERVE_TIMEOUT).await?;
        }
        // Let every agent settle after its first sync (and the kubelet take a fresh sample).
        tokio::time::sleep(std::time::Duration::from_secs(15)).await;

        let pods = cluster
            .api::<Pod>(&cluster.namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list Portway's pods: {e}"))?;
        let agent_of_ns = |p: &Pod| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(names::LABEL_SERVICE_NAMESPACE))
                .is_some_and(|n| *n == ns)
        };
        let is_operator = |p: &Pod| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/component"))
                .is_some_and(|c| c == "operator")
        };
        let mut rss_by_node: BTreeMap<String, BTreeMap<(String, String), u64>> = BTreeMap::new();
        let mut agents = Vec::new();
        let mut operators = Vec::new();
        let mut per_node: BTreeMap<String, u64> = BTreeMap::new();
        for p in &pods.items {
            let (Some(name), Some(node)) = (
                p.metadata.name.clone(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
            ) else {
                continue;
            };
            if !rss_by_node.contains_key(&node) {
                let rss = pod_rss(&cluster, &node).await?;
                rss_by_node.insert(node.clone(), rss);
            }
            let rss = rss_by_node
                .get(&node)
                .and_then(|m| m.get(&(cluster.namespace.clone(), name.clone())))
                .copied()
                .unwrap_or(0);
            if is_operator(p) {
                operators.push((name, node, rss));
            } else if agent_of_ns(p) {
                *per_node.entry(node.clone()).or_default() += rss;
                agents.push((name, node, rss));
            }
        }
        let want = usize::try_from(SERVICES).map_err(|e| e.to_string())? * workers.len();
        if agents.len() != want {
            return Err(format!(
                "{} agent pods of the {SERVICES} Services, expected {want} ({SERVICES} on each of {} workers)",
                agents.len(),
                workers.len()
            ));
        }
        if let Some((name, node, _)) = agents.iter().chain(&operators).find(|(_, _, r)| *r == 0) {
            return Err(format!(
                "the kubelet of {node} reports no rssBytes for {name}: cannot measure"
            ));
        }
        let agent_mib: Vec<f64> = agents.iter().map(|(_, _, r)| mib(*r)).collect();
        let max = agent_mib.iter().copied().fold(0.0_f64, f64::max);
        let min = agent_mib.iter().copied().fold(f64::INFINITY, f64::min);
        let nodes: Vec<String> = per_node
            .iter()
            .map(|(n, r)| format!("{n} {:.1} MiB", mib(*r)))
            .collect();
        let ops: Vec<String> = operators
            .iter()
            .map(|(n, node, r)| format!("{n} on {node} {:.1} MiB", mib(*r)))
            .collect();
        report::line(&format!(
            "cluster footprint ({}): {SERVICES} LoadBalancer Services; operator {}; {} agents RSS min {min:.1} / median {:.1} / max {max:.1} MiB; agents per node: {}",
            cluster.variant.name(),
            ops.join(", "),
            agents.len(),
            median(&agent_mib),
            nodes.join(", "),
        ));
        Ok(())
    })
    .await;
}
