//! Operator rollouts finish and hand the Lease over, with one replica and with two, while a
//! steady request loop runs through the nodes: `kubectl rollout restart` and `helm upgrade
//! --wait` to a new operator image. Before the fix a rollout never finished: only the Lease
//! holder was ready, and the new pod waited for a Lease the old one kept.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use portway_e2e::{report, wait};
use portway_operator::cleanup::OPERATOR_DEPLOYMENT as DEPLOYMENT;

use crate::support::*;
use crate::traffic::RequestLoop;

/// `kubectl rollout status` bound.
const ROLLOUT_TIMEOUT: &str = "240s";

/// Waits until `replicas` operator pods, none of `old`, are ready and one of them holds the
/// Lease; returns the holder.
async fn wait_new_leader(cluster: &Cluster, old: &BTreeSet<String>, replicas: usize) -> R<String> {
    wait::eventually(
        &format!("{replicas} new operator pods ready, one holding the Lease (old: {old:?})"),
        SERVE_TIMEOUT,
        || async {
            let ready = ready_operator_pods(cluster).await.ok()?;
            let all = operator_pods(cluster).await.ok()?;
            let fresh = ready.iter().filter(|p| !old.contains(*p)).count();
            let holder = lease_holder(cluster).await?;
            let holder = holder_pod(&holder)?;
            (fresh == replicas && all.len() == replicas && ready.contains(holder))
                .then(|| holder.to_owned())
        },
    )
    .await
    .map_err(|e| e.to_string())
}

/// The operator image and replica count the chart installed, put back at the end.
struct Restore {
    cluster: Cluster,
    tag: String,
    replicas: i32,
    armed: bool,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if self.armed {
            let tag = format!("image.tag={}", self.tag);
            let replicas = format!("operator.replicas={}", self.replicas);
            let _ = self
                .cluster
                .helm_upgrade_blocking(&["--set-string", &tag, "--set", &replicas]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: e2e/run.sh"]
async fn serial_operator_rollouts_finish_and_hand_the_lease_over() {
    const TEST: &str = "serial_operator_rollouts_finish_and_hand_the_lease_over";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let next = cluster.next_image_tag()?;
        let deploy = cluster
            .api::<Deployment>(&cluster.namespace)
            .get(DEPLOYMENT)
            .await
            .map_err(|e| format!("the operator Deployment: {e}"))?;
        let image = deploy
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.image.clone())
            .ok_or("the operator Deployment has no image")?;
        let (_, tag) = image
            .rsplit_once(':')
            .ok_or_else(|| format!("operator image {image} has no tag"))?;
        let mut restore = Restore {
            cluster: cluster.clone(),
            tag: tag.to_owned(),
            replicas: deploy.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            armed: true,
        };

        let port = 18093;
        let (_, all) = served_on_workers(&cluster, "rollout", port, &mut cleanup).await?;
        let load = RequestLoop::start(
            &all.iter().copied().collect::<Vec<_>>(),
            port,
            "/hostname",
            Duration::from_millis(100),
        );
        let ns = cluster.namespace.clone();
        let deployment = format!("deployment/{DEPLOYMENT}");
        let mut lines = Vec::new();
        for replicas in [1usize, 2] {
            let set = format!("operator.replicas={replicas}");
            cluster.helm_upgrade(&["--set", &set]).await?;
            let before = ready_operator_pods(&cluster).await?;
            wait_new_leader(&cluster, &BTreeSet::new(), replicas).await?;

            // kubectl rollout restart: the rollout finishes, a new pod leads.
            let old = ready_operator_pods(&cluster).await?;
            let started = Instant::now();
            cluster
                .kubectl(&["-n", &ns, "rollout", "restart", &deployment])
                .await?;
            let bound = format!("--timeout={ROLLOUT_TIMEOUT}");
            cluster
                .kubectl(&["-n", &ns, "rollout", "status", &deployment, &bound])
                .await?;
            let leader = wait_new_leader(&cluster, &old, replicas).await?;
            let restarted = started.elapsed();

            // helm upgrade --wait to a new operator image: finishes, a pod of that image leads.
            let old = ready_operator_pods(&cluster).await?;
            let started = Instant::now();
            let set = format!("image.tag={next}");
            cluster.helm_upgrade(&["--set-string", &set]).await?;
            let upgraded_leader = wait_new_leader(&cluster, &old, replicas).await?;
            let upgraded = started.elapsed();
            let pods = operator_pods(&cluster).await?;
            let stale: Vec<String> = pods
                .iter()
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .and_then(|c| c.image.as_deref())
                        .is_none_or(|i| !i.ends_with(&format!(":{next}")))
                })
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            if !stale.is_empty() {
                return Err(format!("operator pods not on image tag {next}: {stale:?}"));
            }
            // And back, the same way.
            let old = ready_operator_pods(&cluster).await?;
            let set = format!("image.tag={tag}");
            cluster.helm_upgrade(&["--set-string", &set]).await?;
            wait_new_leader(&cluster, &old, replicas).await?;
            lines.push(format!(
                "{replicas} replica(s) (before: {} ready): rollout restart {:.1}s -> leader {leader}; helm upgrade --wait to :{next} {:.1}s -> leader {upgraded_leader}",
                before.len(),
                restarted.as_secs_f64(),
                upgraded.as_secs_f64(),
            ));
        }
        let set = format!("operator.replicas={}", restore.replicas);
        cluster.helm_upgrade(&["--set", &set]).await?;
        restore.armed = false;
        let during = load.stop().await;
        if during.failed() > 0 {
            return Err(format!(
                "requests failed during the operator rollouts: {}",
                during.describe()
            ));
        }
        report::line(&format!(
            "cluster operator rollouts ({}): {}; {} requests through {} addresses, 0 failed",
            cluster.variant.name(),
            lines.join("; "),
            during.sent(),
            all.len()
        ));
        Ok(())
    })
    .await;
}
