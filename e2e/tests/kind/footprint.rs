//! What Portway costs a node: the resident memory (`VmRSS`) of every Portway process (the
//! operator and every agent) with 20 LoadBalancer Services served, read from `/proc` on each
//! node and tied to its pod through the pod UID in the process's cgroup, printed per process
//! kind and per node. (The kubelet's Summary API is not used: with containerd outside the
//! default socket, as on the local cluster, cAdvisor reports no per-container memory.)

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use portway_crds::names;
use portway_e2e::report;

use crate::support::*;
use crate::traffic::median;

/// LoadBalancer Services served while measuring.
const SERVICES: i32 = 20;
const FIRST_PORT: i32 = 18200;
const MIB: f64 = 1024.0 * 1024.0;

/// For every process named `portway` (the operator) or `portway-agent` visible on `node`:
/// (pid, pod UID, VmRSS in bytes), the UID taken from the process's cgroup path (`pod<uid>` with
/// dashes under cgroupfs, underscores under systemd). A kind node sees its own processes; the
/// local cluster's nodes share the host's, so the same process may be seen from several nodes.
fn portway_processes(cluster: &Cluster, node: &str) -> R<Vec<(u32, String, u64)>> {
    let script = r#"for p in /proc/[0-9]*; do
  c=$(cat "$p/comm" 2>/dev/null) || continue
  case "$c" in portway|portway-agent) ;; *) continue ;; esac
  rss=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB$/\1/p' "$p/status" 2>/dev/null)
  pod=$(grep -o 'pod[0-9a-f_-]\{36\}' "$p/cgroup" 2>/dev/null | head -n 1)
  echo "${p#/proc/} ${pod#pod} ${rss:-0}"
done"#;
    let out = cluster.node_exec(node, script)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let pid: u32 = fields.next()?.parse().ok()?;
            let uid = fields.next()?;
            let kib: u64 = fields.next()?.parse().ok()?;
            Some((pid, uid.replace('_', "-"), kib * 1024))
        })
        .collect())
}

fn mib(bytes: u64) -> f64 {
    // u64 -> f64 loses nothing at these sizes.
    bytes as f64 / MIB
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
        // Resident memory by pod UID, from every node's /proc (a pod's processes summed).
        let mut rss_by_uid: BTreeMap<String, u64> = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        let nodes = cluster
            .all::<k8s_openapi::api::core::v1::Node>()
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("list nodes: {e}"))?;
        for n in &nodes.items {
            for (pid, uid, rss) in portway_processes(&cluster, &name_of(n))? {
                // The same process seen from two nodes sharing a PID namespace counts once (kind
                // nodes have PID namespaces of their own: a pid alone is not unique there).
                if seen.insert((pid, uid.clone())) {
                    *rss_by_uid.entry(uid).or_default() += rss;
                }
            }
        }
        let mut agents = Vec::new();
        let mut operators = Vec::new();
        let mut per_node: BTreeMap<String, u64> = BTreeMap::new();
        for p in &pods.items {
            let (Some(name), Some(uid), Some(node)) = (
                p.metadata.name.clone(),
                p.metadata.uid.clone(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
            ) else {
                continue;
            };
            let rss = rss_by_uid.get(&uid).copied().unwrap_or(0);
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
                "no Portway process of pod {name} found in /proc on {node}: cannot measure"
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
