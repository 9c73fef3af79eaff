//! Pod CIDRs come from Portway: kube-controller-manager runs with `--allocate-node-cidrs=false`,
//! every node got one CIDR per cluster family from the chart's default ClusterCIDR (the
//! variant's `podSubnet`, a /24 and a /64 per node), no two overlap, the ClusterCIDR's status
//! counts them, and kindnet really uses them: every pod-network pod's IP lies in its node's CIDR.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use portway_crds::ClusterCIDR;
use portway_crds::condition::types;
use portway_crds::names;
use portway_e2e::report;

use crate::support::*;

#[tokio::test]
#[ignore = "needs a kind cluster: e2e/run.sh"]
async fn nodes_get_pod_cidrs_from_the_default_cluster_cidr() {
    const TEST: &str = "nodes_get_pod_cidrs_from_the_default_cluster_cidr";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    run(TEST, async {
        let config = cluster.variant.config()?;
        let subnets = config.pod_subnets()?;

        // kube-controller-manager does not allocate.
        let kcm = cluster
            .api::<Pod>("kube-system")
            .list(&ListParams::default().labels("component=kube-controller-manager"))
            .await
            .map_err(|e| format!("list kube-controller-manager: {e}"))?;
        let command: Vec<String> = kcm
            .items
            .first()
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.command.clone())
            .ok_or("no kube-controller-manager pod")?;
        if !command.iter().any(|a| a == "--allocate-node-cidrs=false") {
            return Err(format!("kube-controller-manager allocates pod CIDRs: {command:?}"));
        }

        let nodes = cluster
            .all::<Node>()
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list nodes: {e}"))?
            .items;
        let mut by_node: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
        for node in &nodes {
            let name = name_of(node);
            let spec = node.spec.clone().unwrap_or_default();
            let cidrs: Vec<IpNet> = spec
                .pod_cidrs
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|c| c.parse().map_err(|e| format!("{name}: podCIDR {c:?}: {e}")))
                .collect::<R<_>>()?;
            if spec.pod_cidr.as_deref() != cidrs.first().map(ToString::to_string).as_deref() {
                return Err(format!("{name}: podCIDR {:?} is not podCIDRs[0] {cidrs:?}", spec.pod_cidr));
            }
            let families: Vec<Family> = cidrs.iter().map(|c| Family::of(&c.addr())).collect();
            if families != cluster.families() {
                return Err(format!("{name}: podCIDRs {cidrs:?}, expected families {:?}", cluster.families()));
            }
            for c in &cidrs {
                let want = match c {
                    IpNet::V4(_) => 24,
                    IpNet::V6(_) => 64,
                };
                if c.prefix_len() != want || !subnets.iter().any(|s| s.contains(c)) {
                    return Err(format!("{name}: {c} is not a /{want} of {subnets:?}"));
                }
            }
            let owner = node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(names::CLUSTER_CIDR_ANNOTATION));
            if owner.map(String::as_str) != Some("default") {
                return Err(format!("{name}: {} annotation is {owner:?}", names::CLUSTER_CIDR_ANNOTATION));
            }
            by_node.insert(name, cidrs);
        }
        let all: Vec<(&String, &IpNet)> = by_node.iter().flat_map(|(n, c)| c.iter().map(move |c| (n, c))).collect();
        for (i, (n1, c1)) in all.iter().enumerate() {
            for (n2, c2) in &all[i + 1..] {
                if c1.contains(&c2.network()) || c2.contains(&c1.network()) {
                    return Err(format!("{n1} {c1} overlaps {n2} {c2}"));
                }
            }
        }

        // The ClusterCIDR's status counts every node, per family.
        let cc = cluster
            .all::<ClusterCIDR>()
            .get("default")
            .await
            .map_err(|e| format!("ClusterCIDR default: {e}"))?;
        let status = cc.status.ok_or("ClusterCIDR default has no status")?;
        let count = i64::try_from(nodes.len()).map_err(|e| e.to_string())?;
        for (family, usage) in [(cluster.variant.has_v4(), &status.ipv4), (cluster.variant.has_v6(), &status.ipv6)] {
            if family && usage.as_ref().map(|u| u.allocated) != Some(count) {
                return Err(format!("ClusterCIDR default: usage {usage:?}, expected {count} allocated"));
            }
        }
        match condition(&status.conditions, types::READY) {
            Some(c) if c.status == "True" => {}
            other => return Err(format!("ClusterCIDR default Ready: {other:?}")),
        }

        // kindnet uses them: pod-network pods have addresses in their node's CIDRs.
        let pods = cluster
            .all::<Pod>()
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list pods: {e}"))?
            .items;
        let mut checked = 0;
        for p in &pods {
            let spec = p.spec.clone().unwrap_or_default();
            if spec.host_network == Some(true) {
                continue;
            }
            let (Some(node), Some(ips)) = (spec.node_name, p.status.as_ref().and_then(|s| s.pod_ips.clone())) else {
                continue;
            };
            let cidrs = by_node.get(&node).ok_or_else(|| format!("pod on unknown node {node}"))?;
            for ip in ips {
                let addr: IpAddr = ip.ip.parse().map_err(|e| format!("pod IP {}: {e}", ip.ip))?;
                if !cidrs.iter().any(|c| c.contains(&addr)) {
                    return Err(format!(
                        "pod {}/{} on {node} has {addr}, outside the node's {cidrs:?}",
                        p.metadata.namespace.as_deref().unwrap_or_default(),
                        p.metadata.name.as_deref().unwrap_or_default()
                    ));
                }
                checked += 1;
            }
        }
        if checked == 0 {
            return Err("no pod-network pod to check (coredns should be one)".into());
        }
        report::line(&format!(
            "kind pod CIDRs ({}): {} nodes from ClusterCIDR default ({}), no overlap, {checked} pod IPs inside their node's CIDR",
            cluster.variant.name(),
            nodes.len(),
            by_node.iter().map(|(n, c)| format!("{n}={}", c.iter().map(ToString::to_string).collect::<Vec<_>>().join("+"))).collect::<Vec<_>>().join(" ")
        ));
        Ok(())
    })
    .await;
}
