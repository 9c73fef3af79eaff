//! How long a user waits: from creating a LoadBalancer Service (what `kubectl expose` does) to
//! the first request answered through a node, ten times, with the backend already running and
//! the agent image on the nodes. Prints the P10 goal line; the figure is measured, not asserted
//! (performance is judged from printed figures, never by timed assertions).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use portway_e2e::report;

use crate::support::*;
use crate::traffic::median;

/// Samples of the P10 figure.
const ROUNDS: usize = 10;
/// First host port; each round uses its own, so no conntrack entry or rule of an earlier round
/// can answer for a later one.
const FIRST_PORT: i32 = 18100;
/// Pace of the probe requests.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// Sends GETs to `ip:port` every [`PROBE_EVERY`] until one is answered; the time it took.
async fn first_answer(ip: IpAddr, port: i32, since: Instant, timeout: Duration) -> R<Duration> {
    let mut last = String::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    while since.elapsed() < timeout {
        tick.tick().await;
        match tokio::time::timeout(Duration::from_secs(1), http_get(ip, port, "/hostname")).await {
            Ok(Ok(_)) => return Ok(since.elapsed()),
            Ok(Err(e)) => last = e,
            Err(_) => last = "no answer in 1 s".to_owned(),
        }
    }
    Err(format!(
        "{ip}:{port} did not answer within {timeout:?}; last error: {last}"
    ))
}

#[tokio::test]
#[ignore = "needs a cluster: e2e/run.sh"]
async fn serial_expose_to_first_request() {
    const TEST: &str = "serial_expose_to_first_request";
    let Some(cluster) = Cluster::connect_or_skip(TEST).await else {
        return;
    };
    let mut cleanup = Cleanup::new(&cluster);
    run(TEST, async {
        let ns = namespace(&cluster, "p10", &mut cleanup).await?;
        backend(&cluster, &ns, "web", None, 2).await?;
        let worker = cluster.zone_worker("a").await?;
        let ip = *internal_ips(&worker)
            .first()
            .ok_or_else(|| format!("{} has no InternalIP", name_of(&worker)))?;
        // Warm-up, not counted: the first agent pod on a node also pays for the image's first
        // use (page cache); the figure is about a cluster already running Portway.
        let mut samples = Vec::new();
        for round in 0..=ROUNDS {
            let port = FIRST_PORT + i32::try_from(round).map_err(|e| e.to_string())?;
            let name = format!("web-{round}");
            let opts = ServiceOptions {
                port,
                local: false,
                pool: None,
                app: Some("web"),
            };
            let created = Instant::now();
            service(&cluster, &ns, &name, &opts).await?;
            let took = first_answer(ip, port, created, SERVE_TIMEOUT).await?;
            if round > 0 {
                samples.push(took.as_secs_f64());
            }
            delete_service_and_wait(&cluster, &ns, &name).await?;
        }
        let shown: Vec<String> = samples.iter().map(|s| format!("{s:.2}")).collect();
        report::line(&format!(
            "cluster expose ({}): first request through {} after [{}] s",
            cluster.variant.name(),
            name_of(&worker),
            shown.join(", ")
        ));
        report::line(&format!(
            "P10 expose_to_first_request_s={:.2} (goal <= 2.0)",
            median(&samples)
        ));
        Ok(())
    })
    .await;
}
