//! What only a real cluster shows: a node whose kubelet stops, a node cordoned and drained, and
//! the operator pod deleted, each while a steady request loop runs through the nodes.
//!
//! These tests disturb nodes or the operator that every other test relies on, so their names
//! begin with `serial_`: `e2e/run.sh` runs them one at a time after the rest of phase 1. Each
//! puts the node back (kubelet started, node uncordoned) even when it fails.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use portway_crds::condition::{reasons, types};
use portway_e2e::{report, wait};

use crate::support::*;
use crate::traffic::RequestLoop;

/// How long a node may take to turn NotReady after its kubelet stops (kube-controller-manager's
/// node-monitor-grace-period is 40 s by default) or Ready after it starts.
const NODE_TIMEOUT: Duration = Duration::from_secs(180);
/// Pace of the request loops.
const EVERY: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: e2e/run.sh"]
async fn serial_stopped_kubelet_takes_the_node_out_of_the_ingress_until_it_returns() {
    const TEST: &str = "serial_stopped_kubelet_takes_the_node_out_of_the_ingress_until_it_returns";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let port = 18090;
        let (ns, all) = served_on_workers(&cluster, "kubelet", port, &mut cleanup).await?;
        let families = cluster.families();
        let a = cluster.zone_worker("a").await?;
        let b = cluster.zone_worker("b").await?;
        let (on_a, on_b) = (
            expected_ingress(std::slice::from_ref(&a), &families),
            expected_ingress(std::slice::from_ref(&b), &families),
        );

        let mut restore = NodeRestore::new(&cluster, &name_of(&b));
        restore.start_kubelet();
        let stopped = Instant::now();
        cluster.kubelet(&name_of(&b), KubeletAction::Stop).await?;
        let load = RequestLoop::start(&on_a.iter().copied().collect::<Vec<_>>(), port, "/hostname", EVERY);
        wait_node_ready(&cluster, &name_of(&b), false, NODE_TIMEOUT).await?;
        let not_ready = stopped.elapsed();
        wait_ingress(&cluster, &ns, "web", &on_a, SERVE_TIMEOUT).await?;
        let withdrawn = stopped.elapsed();

        cluster.kubelet(&name_of(&b), KubeletAction::Start).await?;
        let started = Instant::now();
        wait_node_ready(&cluster, &name_of(&b), true, NODE_TIMEOUT).await?;
        let ready = started.elapsed();
        wait_ingress(&cluster, &ns, "web", &all, SERVE_TIMEOUT).await?;
        let back = started.elapsed();
        restore.done();
        let through_a = load.stop().await;
        if through_a.failed() > 0 {
            return Err(format!(
                "worker a stopped answering while worker b's kubelet was down: {}",
                through_a.describe()
            ));
        }
        for ip in &on_b {
            http_get_eventually(*ip, port, "/hostname", SERVE_TIMEOUT).await?;
        }
        report::line(&format!(
            "cluster kubelet ({}): {} NotReady {:.1}s after its kubelet stopped, out of the ingress at {:.1}s; Ready {:.1}s after the start, back in the ingress at {:.1}s and answering; worker a answered {} of {} requests meanwhile",
            cluster.variant.name(),
            name_of(&b),
            not_ready.as_secs_f64(),
            withdrawn.as_secs_f64(),
            ready.as_secs_f64(),
            back.as_secs_f64(),
            through_a.sent() - through_a.failed(),
            through_a.sent(),
        ));
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: e2e/run.sh"]
async fn serial_cordoned_and_drained_node_keeps_serving_through_its_agent() {
    const TEST: &str = "serial_cordoned_and_drained_node_keeps_serving_through_its_agent";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let port = 18091;
        let (ns, all) = served_on_workers(&cluster, "drain", port, &mut cleanup).await?;
        let a = name_of(&cluster.zone_worker("a").await?);
        // The agents' readiness probe runs every 5 s, so a just-served Service's agent may not be
        // Ready yet: wait, then remember which pod serves worker a.
        let workers: BTreeSet<String> = cluster.workers().await?.iter().map(name_of).collect();
        wait_ready_agents(&cluster, &ns, "web", &workers, SERVE_TIMEOUT).await?;
        let agent_on = |pods: &[Pod], node: &str| {
            pods.iter()
                .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
                .and_then(|p| p.metadata.uid.clone())
        };
        let agent_before = agent_on(&cluster.agent_pods(&ns, "web").await?, &a)
            .ok_or_else(|| format!("no agent pod on {a}"))?;

        let load = RequestLoop::start(&all.iter().copied().collect::<Vec<_>>(), port, "/hostname", EVERY);
        let mut restore = NodeRestore::new(&cluster, &a);
        restore.uncordon();
        let started = Instant::now();
        // Drain evicts the backend's pods from worker a; the agent is a DaemonSet pod and stays.
        cluster
            .kubectl(&[
                "drain", &a, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=180s",
            ])
            .await?;
        let drained = started.elapsed();
        wait_backend(&cluster, &ns, "web", 2).await?;
        let pods = backend_pods(&cluster, &ns, "web").await?;
        let on_a: Vec<&String> = pods
            .iter()
            .filter(|(_, p)| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&a))
            .map(|(n, _)| n)
            .collect();
        if !on_a.is_empty() {
            return Err(format!("backend pods still on the drained {a}: {on_a:?}"));
        }
        let agents = cluster.ready_agent_nodes(&ns, "web").await?;
        let agent_after = agent_on(&cluster.agent_pods(&ns, "web").await?, &a);
        if !agents.contains(&a) || agent_after.as_ref() != Some(&agent_before) {
            return Err(format!(
                "the agent left the drained {a}: ready agents on {agents:?}, its pod {agent_before} -> {agent_after:?}"
            ));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = load.stop().await;
        // The drained node is still published and still answers (forwarding to the backend on
        // the other worker): draining moves workloads, not the load balancer.
        wait_ingress(&cluster, &ns, "web", &all, SERVE_TIMEOUT).await?;
        for ip in &all {
            http_get(*ip, port, "/hostname").await?;
        }
        cluster.kubectl(&["uncordon", &a]).await?;
        restore.done();
        report::line(&format!(
            "cluster drain ({}): {a} drained in {:.1}s, its backend pods moved, its agent stayed; ingress unchanged; {} of {} requests answered during the drain ({})",
            cluster.variant.name(),
            drained.as_secs_f64(),
            during.sent() - during.failed(),
            during.sent(),
            during.describe(),
        ));
        // A drain ends connections to evicted backend pods; requests through the nodes must not
        // fail for long: at most one failed request per address and backend pod moved.
        let allowed = all.len() * 2;
        if during.failed() > allowed {
            return Err(format!(
                "{} requests failed during the drain (at most {allowed} allowed): {}",
                during.failed(),
                during.describe()
            ));
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: e2e/run.sh"]
async fn serial_operator_pod_deleted_under_load_loses_no_request() {
    const TEST: &str = "serial_operator_pod_deleted_under_load_loses_no_request";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let port = 18092;
        let (ns, all) = served_on_workers(&cluster, "opdel", port, &mut cleanup).await?;
        let before = operator_pods(&cluster).await?;
        let old: Vec<String> = before.iter().filter_map(|p| p.metadata.name.clone()).collect();
        let old_holder = lease_holder(&cluster)
            .await
            .ok_or("the operator's Lease is missing or has no holder")?;

        let load = RequestLoop::start(&all.iter().copied().collect::<Vec<_>>(), port, "/hostname", EVERY);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let deleted = Instant::now();
        for name in &old {
            cluster
                .api::<Pod>(&cluster.namespace)
                .delete(name, &DeleteParams::default())
                .await
                .map_err(|e| format!("delete operator pod {name}: {e}"))?;
        }
        // A new pod, ready, holding the Lease.
        let new_leader = wait::eventually(
            "a new operator pod, Ready and holding the Lease",
            SERVE_TIMEOUT,
            || async {
                let ready = ready_operator_pods(&cluster).await.ok()?;
                let h = lease_holder(&cluster).await?;
                let pod = holder_pod(&h)?;
                (ready.contains(pod) && !old.iter().any(|o| o == pod)).then_some(h)
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let handed_over = deleted.elapsed();
        // The new leader takes over a converged Service: it stays Ready and published.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let during = load.stop().await;
        wait_slb_condition(
            &cluster, &ns, "web", types::READY, "True", reasons::AGENTS_FORWARDING, SERVE_TIMEOUT,
        )
        .await?;
        wait_ingress(&cluster, &ns, "web", &all, Duration::from_secs(5)).await?;
        if during.failed() > 0 {
            return Err(format!(
                "requests failed while the operator was replaced: {}",
                during.describe()
            ));
        }
        report::line(&format!(
            "cluster operator restart ({}): Lease {old_holder} -> {new_leader} {:.1}s after the pod was deleted; {} requests through {} addresses, 0 failed",
            cluster.variant.name(),
            handed_over.as_secs_f64(),
            during.sent(),
            all.len(),
        ));
        Ok(())
    })
    .await;
}
