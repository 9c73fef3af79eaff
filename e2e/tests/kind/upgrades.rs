//! Upgrades and restarts under traffic (issue 15). A `Host`-dataplane and a `Pod`-dataplane
//! Service on the workers; from the test host, one request every ~70 ms to every published
//! address of each, and one long-lived (keep-alive) HTTP connection through every address; then,
//! one after the other:
//!
//! 1. `kubectl rollout restart` of the operator: it does not touch rules, so nothing may fail
//!    in either dataplane;
//! 2. `kubectl rollout restart` of each Service's agent DaemonSet;
//! 3. `helm upgrade --reuse-values` to a new agent image tag (every agent DaemonSet rolls; the
//!    operator restarts too), then back.
//!
//! Failed requests are counted per phase, dataplane and node, and printed. The Host dataplane
//! must drop nothing and keep its long-lived connections (its agents leave their rules to the
//! next one); the Pod dataplane's figures are reported, not asserted (its rules go with the pod's
//! network namespace: docs/node-agent.md, "Upgrades and restarts"), with the path its traffic
//! took on each node: kube-proxy's own rule for the published node address, or the CNI's host
//! port to the agent pod (`node_port_paths`).
//!
//! It restarts every agent of the cluster, so it runs alone: e2e/run.sh gives it a phase of its
//! own with `PORTWAY_E2E_ALLOW_UPGRADE=1`. The new tag is `PORTWAY_E2E_NEXT_IMAGE_TAG`, which the
//! runner loads into every node beside the installed one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use portway_e2e::{report, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::support::*;
use crate::traffic::RequestLoop;

/// Pause between two requests of one loop (the measurement used ~70 ms).
const PAUSE: Duration = Duration::from_millis(70);
/// Longest wait for one request of a long-lived connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Traffic keeps going this long after a phase's rollout is complete.
const SETTLE: Duration = Duration::from_secs(5);
/// Longest wait for one rollout.
const ROLLOUT_TIMEOUT: &str = "300s";
/// Requests sent to each address of the Pod-dataplane Service before reading which path counted
/// them.
const PATH_BURST: usize = 10;

/// One loop's target.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    dataplane: &'static str,
    node: String,
    ip: IpAddr,
    port: i32,
}

impl Target {
    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, u16::try_from(self.port).unwrap_or_default())
    }
}

/// A keep-alive HTTP/1.1 connection to the backend through one address.
struct KeepAlive {
    stream: TcpStream,
    host: String,
}

impl KeepAlive {
    async fn open(ip: IpAddr, port: i32) -> R<Self> {
        let port = u16::try_from(port).map_err(|e| e.to_string())?;
        let addr = SocketAddr::new(ip, port);
        let stream = tokio::time::timeout(REQUEST_TIMEOUT * 5, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect {addr}: timed out"))?
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let host = match ip {
            IpAddr::V4(_) => ip.to_string(),
            IpAddr::V6(_) => format!("[{ip}]"),
        };
        let mut k = Self { stream, host };
        k.exchange().await?;
        Ok(k)
    }

    /// One request and its whole response on the open connection.
    async fn exchange(&mut self) -> R<()> {
        let io = async {
            let req = format!("GET /hostname HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
            self.stream.write_all(req.as_bytes()).await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                if self.stream.read(&mut byte).await? == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(std::io::Error::other(format!(
                    "status {:?}",
                    head.lines().next()
                )));
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| std::io::Error::other("no content-length"))?;
            let mut body = vec![0u8; length.min(1 << 16)];
            self.stream.read_exact(&mut body).await?;
            Ok(())
        };
        tokio::time::timeout(REQUEST_TIMEOUT * 2, io)
            .await
            .map_err(|_| "no answer on the long-lived connection".to_owned())?
            .map_err(|e| e.to_string())
    }
}

/// Exchanges on `k` every 250 ms until `stop`; the first failure (if any) ends it.
fn spawn_keepalive(
    mut k: KeepAlive,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(usize, Option<String>)> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut n = 0;
        while !*stop.borrow() && started.elapsed() < TEST_BUDGET {
            if let Err(e) = k.exchange().await {
                return (n, Some(e));
            }
            n += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.changed() => {}
            }
        }
        match k.exchange().await {
            Ok(()) => (n + 1, None),
            Err(e) => (n, Some(e)),
        }
    })
}

/// Runs `action` under traffic to every target and returns, per target, (failed, requests)
/// and whether its long-lived connection survived (with the error when it did not).
async fn under_traffic<F, Fut>(
    targets: &[Target],
    action: F,
) -> R<BTreeMap<Target, (usize, usize, Option<String>)>>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = R<()>>,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let addrs: Vec<SocketAddr> = targets.iter().map(Target::addr).collect();
    let load = RequestLoop::start_to(&addrs, "/hostname", PAUSE);
    let mut keepalives = Vec::new();
    for t in targets {
        let k = KeepAlive::open(t.ip, t.port)
            .await
            .map_err(|e| format!("{t:?}: long-lived connection: {e}"))?;
        keepalives.push(spawn_keepalive(k, stop_rx.clone()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcome = action().await;
    tokio::time::sleep(SETTLE).await;
    let _ = stop_tx.send(true);
    let report = load.stop().await;
    let mut out = BTreeMap::new();
    for (t, keepalive) in targets.iter().zip(keepalives) {
        let (_, broken) = keepalive
            .await
            .map_err(|e| format!("keep-alive task: {e}"))?;
        let count = report.of(t.addr());
        out.insert(t.clone(), (count.failed, count.ok + count.failed, broken));
    }
    outcome?;
    Ok(out)
}

/// Waits until every agent DaemonSet of `daemonsets` runs `image` on all its nodes.
async fn wait_rolled(cluster: &Cluster, daemonsets: &[String], image: Option<&str>) -> R<()> {
    let ns = cluster.namespace.clone();
    for ds in daemonsets {
        if let Some(image) = image {
            let api = cluster.api::<k8s_openapi::api::apps::v1::DaemonSet>(&ns);
            wait::eventually(&format!("{ds} runs {image}"), CLEANUP_TIMEOUT, || async {
                let d = api.get(ds).await.ok()?;
                let c = d.spec?.template.spec?.containers.into_iter().next()?;
                (c.image.as_deref() == Some(image)).then_some(())
            })
            .await
            .map_err(|e| e.to_string())?;
        }
        let ds = format!("daemonset/{ds}");
        cluster
            .kubectl(&[
                "rollout",
                "status",
                &ds,
                "-n",
                &ns,
                "--timeout",
                ROLLOUT_TIMEOUT,
            ])
            .await?;
    }
    Ok(())
}

/// Restores the agent image tag when the test ends early.
struct RestoreTag {
    cluster: Cluster,
    tag: Option<String>,
}

impl Drop for RestoreTag {
    fn drop(&mut self) {
        if let Some(tag) = self.tag.take() {
            let set = format!("agent.image.tag={tag}");
            let _ = self.cluster.helm_upgrade_blocking(&["--set-string", &set]);
        }
    }
}

/// Summary of one phase: per dataplane and node, failed/requests and the long-lived connection.
fn summarize(
    phase: &str,
    results: &BTreeMap<Target, (usize, usize, Option<String>)>,
) -> (String, Vec<String>) {
    let mut parts = Vec::new();
    let mut host_problems = Vec::new();
    for (t, (failed, total, broken)) in results {
        let kept = match broken {
            None => "long-lived kept".to_owned(),
            Some(e) => format!("long-lived broken ({e})"),
        };
        parts.push(format!(
            "{} {} ({}): {failed}/{total} failed, {kept}",
            t.dataplane, t.node, t.ip
        ));
        if t.dataplane == "Host" && (*failed > 0 || broken.is_some()) {
            host_problems.push(format!(
                "{phase}: Host {} ({}): {failed}/{total} failed, {kept}",
                t.node, t.ip
            ));
        }
        if *total < 10 {
            host_problems.push(format!(
                "{phase}: {} {} ({}): only {total} requests",
                t.dataplane, t.node, t.ip
            ));
        }
    }
    (format!("{phase}: {}", parts.join("; ")), host_problems)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a kind cluster: e2e/run.sh (its own phase: it restarts every agent)"]
async fn rollout_restart_and_helm_upgrade_drop_no_host_traffic() {
    const TEST: &str = "rollout_restart_and_helm_upgrade_drop_no_host_traffic";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    if std::env::var("PORTWAY_E2E_ALLOW_UPGRADE").as_deref() != Ok("1") {
        report::skip(
            TEST,
            "PORTWAY_E2E_ALLOW_UPGRADE=1 is not set (this test restarts every agent and upgrades the release; e2e/run.sh runs it alone)",
        );
        return;
    }
    let mut cleanup = Cleanup::new(&cluster);
    let mut restore = RestoreTag {
        cluster: cluster.clone(),
        tag: None,
    };
    run(TEST, async {
        let (host_port, pod_port) = (18086, 18087);
        let BothDataplanes { ns, workers, expected } =
            served_in_both_dataplanes(&cluster, "upgr", (host_port, pod_port), 2, &mut cleanup)
                .await?;
        let mut targets = Vec::new();
        for w in &workers {
            for ip in internal_ips(w).into_iter().filter(|ip| expected.contains(ip)) {
                for (dataplane, port) in [("Host", host_port), ("Pod", pod_port)] {
                    targets.push(Target { dataplane, node: name_of(w), ip, port });
                }
            }
        }
        let mut daemonsets = Vec::new();
        for svc in ["host-web", "pod-web"] {
            let ds = cluster.agent_daemonsets(&ns, svc).await?;
            let name = ds
                .first()
                .and_then(|d| d.metadata.name.clone())
                .ok_or_else(|| format!("no agent DaemonSet of {ns}/{svc}"))?;
            daemonsets.push(name);
        }
        let image = cluster
            .api::<k8s_openapi::api::apps::v1::DaemonSet>(&cluster.namespace)
            .get(&daemonsets[0])
            .await
            .map_err(|e| e.to_string())?
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.image)
            .ok_or("the agent DaemonSet has no image")?;
        let (repository, old_tag) = image
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map(|(r, t)| (r.to_owned(), t.to_owned()))
            .ok_or_else(|| format!("agent image {image} has no tag"))?;
        let mut lines = Vec::new();
        let mut problems = Vec::new();

        // 1. The operator restarts: forwarding is not its business.
        let operator = format!("deployment/{}", portway_operator::cleanup::OPERATOR_DEPLOYMENT);
        let ons = cluster.namespace.clone();
        let r = under_traffic(&targets, || async {
            cluster.kubectl(&["rollout", "restart", &operator, "-n", &ons]).await?;
            cluster
                .kubectl(&["rollout", "status", &operator, "-n", &ons, "--timeout", ROLLOUT_TIMEOUT])
                .await
                .map(|_| ())
        })
        .await?;
        let (line, p) = summarize("operator rollout restart", &r);
        for (t, (failed, total, broken)) in &r {
            if t.dataplane == "Pod" && (*failed > 0 || broken.is_some()) {
                problems.push(format!(
                    "operator rollout restart: Pod {} ({}): {failed}/{total} failed, long-lived {}",
                    t.node,
                    t.ip,
                    broken.as_deref().unwrap_or("kept")
                ));
            }
        }
        lines.push(line);
        problems.extend(p);

        // 2. Each agent DaemonSet's rollout restart.
        let r = under_traffic(&targets, || async {
            for ds in &daemonsets {
                let ds = format!("daemonset/{ds}");
                cluster.kubectl(&["rollout", "restart", &ds, "-n", &ons]).await?;
            }
            wait_rolled(&cluster, &daemonsets, None).await
        })
        .await?;
        let (line, p) = summarize("agent rollout restart", &r);
        lines.push(line);
        problems.extend(p);

        // 3. helm upgrade to a new agent image tag (and the operator with it), then back.
        let new_tag = cluster.next_image_tag()?;
        let new_image = format!("{repository}:{new_tag}");
        restore.tag = Some(old_tag.clone());
        let r = under_traffic(&targets, || async {
            let set = format!("agent.image.tag={new_tag}");
            cluster.helm_upgrade(&["--set-string", &set]).await?;
            wait_rolled(&cluster, &daemonsets, Some(&new_image)).await
        })
        .await?;
        let (line, p) = summarize(&format!("helm upgrade to agent {new_tag}"), &r);
        lines.push(line);
        problems.extend(p);
        let set = format!("agent.image.tag={old_tag}");
        cluster.helm_upgrade(&["--set-string", &set]).await?;
        wait_rolled(&cluster, &daemonsets, Some(&image)).await?;
        restore.tag = None;

        // Which path the Pod dataplane's requests take on each node (reported, not asserted: it
        // depends on the service proxy; with kube-proxy in iptables mode and ipMode VIP,
        // kube-proxy answers for the node's address before the CNI's host port). kube-proxy
        // rewrites its chains (and so zeroes its counters) when it syncs, and every new agent pod
        // gets new CNI chains: count right after a burst of requests, now that nothing rolls.
        let mut paths = Vec::new();
        for w in &workers {
            let node = name_of(w);
            let published: Vec<IpAddr> =
                internal_ips(w).into_iter().filter(|ip| expected.contains(ip)).collect();
            for ip in &published {
                for _ in 0..PATH_BURST {
                    http_get(*ip, pod_port, "/hostname").await?;
                }
            }
            let rules: Vec<String> =
                cluster.node_rules(&node)?.lines().map(str::to_owned).collect();
            let (proxy, host_port) = node_port_paths(&rules, &published, pod_port);
            paths.push(format!(
                "{node}: kube-proxy loadbalancer-IP rule {proxy} packets, CNI host port {host_port} \
                 (after {PATH_BURST} requests per address)"
            ));
        }
        lines.push(format!("Pod dataplane's path (port {}): {}", pod_port, paths.join("; ")));

        report::line(&format!(
            "kind upgrades ({}), one request every {} ms per address, a keep-alive connection each:\n  {}",
            cluster.variant.name(),
            PAUSE.as_millis(),
            lines.join("\n  ")
        ));
        if !problems.is_empty() {
            return Err(format!(
                "traffic was dropped where it must not be:\n  {}",
                problems.join("\n  ")
            ));
        }
        Ok(())
    })
    .await;
}
