//! Steady request loops for the disruption tests: HTTP GETs from the test host to node
//! addresses at a fixed pace while something happens on the cluster, counting per address what
//! was answered and what failed. Bounded in count and time.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::support::http_get;

/// The most requests one loop sends to one address (a 10-minute test at 10 per second).
const MAX_PER_TARGET: usize = 6_000;
/// Failures whose messages are kept per address, for the report.
const KEPT_ERRORS: usize = 3;
/// A request not answered within this counts as failed (a local cluster answers in
/// milliseconds; a stall this long is an outage to a client).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// What one address saw.
#[derive(Clone, Debug, Default)]
pub struct TargetCount {
    pub ok: usize,
    pub failed: usize,
    /// The first failures (time since the loop started, message).
    pub errors: Vec<(Duration, String)>,
}

/// The result of a [`RequestLoop`], per address and port.
#[derive(Clone, Debug, Default)]
pub struct LoopReport {
    pub targets: BTreeMap<SocketAddr, TargetCount>,
}

impl LoopReport {
    pub fn failed(&self) -> usize {
        self.targets.values().map(|t| t.failed).sum()
    }

    pub fn sent(&self) -> usize {
        self.targets.values().map(|t| t.ok + t.failed).sum()
    }

    /// What one address and port saw.
    pub fn of(&self, target: SocketAddr) -> TargetCount {
        self.targets.get(&target).cloned().unwrap_or_default()
    }

    /// `10.1.0.2:80: 120 ok, 0 failed; ...` with the first errors of each address.
    pub fn describe(&self) -> String {
        self.targets
            .iter()
            .map(|(ip, t)| {
                let errors: Vec<String> = t
                    .errors
                    .iter()
                    .map(|(at, e)| format!("at {:.1}s: {e}", at.as_secs_f64()))
                    .collect();
                if errors.is_empty() {
                    format!("{ip}: {} ok, {} failed", t.ok, t.failed)
                } else {
                    format!(
                        "{ip}: {} ok, {} failed ({})",
                        t.ok,
                        t.failed,
                        errors.join("; ")
                    )
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One GET of `path` to each target every `every`, until [`RequestLoop::stop`]; a request
/// that takes longer than `every` delays the next one.
pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    tasks: Vec<(SocketAddr, JoinHandle<TargetCount>)>,
}

impl RequestLoop {
    /// A loop to `port` of each of `addresses`.
    pub fn start(addresses: &[IpAddr], port: i32, path: &'static str, every: Duration) -> Self {
        let port = u16::try_from(port).unwrap_or_default();
        let targets: Vec<SocketAddr> = addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        Self::start_to(&targets, path, every)
    }

    /// A loop to each of `targets`.
    pub fn start_to(targets: &[SocketAddr], path: &'static str, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks = targets
            .iter()
            .map(|target| {
                let (target, stop) = (*target, stop.clone());
                let task = tokio::spawn(async move {
                    let mut count = TargetCount::default();
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    for _ in 0..MAX_PER_TARGET {
                        tick.tick().await;
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let (ip, port) = (target.ip(), i32::from(target.port()));
                        let answer =
                            tokio::time::timeout(REQUEST_TIMEOUT, http_get(ip, port, path))
                                .await
                                .unwrap_or_else(|_| {
                                    Err(format!("no answer within {REQUEST_TIMEOUT:?}"))
                                });
                        match answer {
                            Ok(_) => count.ok += 1,
                            Err(e) => {
                                count.failed += 1;
                                if count.errors.len() < KEPT_ERRORS {
                                    count.errors.push((started.elapsed(), e));
                                }
                            }
                        }
                    }
                    count
                });
                (target, task)
            })
            .collect();
        RequestLoop { stop, tasks }
    }

    pub async fn stop(self) -> LoopReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut report = LoopReport::default();
        for (target, task) in self.tasks {
            let count = task.await.unwrap_or_else(|e| TargetCount {
                failed: 1,
                errors: vec![(Duration::ZERO, format!("request loop task: {e}"))],
                ..Default::default()
            });
            report.targets.insert(target, count);
        }
        report
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[f64::NAN, 1.0]), 1.0);
    }

    /// A loop against a port nothing listens on counts failures, not answers; one against a
    /// tiny HTTP server on loopback counts answers.
    #[tokio::test]
    async fn counts_answers_and_failures() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = i32::from(server.local_addr().expect("addr").port());
        let serve = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for _ in 0..50 {
                let Ok((mut s, _)) = server.accept().await else {
                    return;
                };
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            }
        });
        let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
        let good = RequestLoop::start(&[loopback], port, "/", Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = good.stop().await;
        serve.abort();
        assert!(report.sent() >= 3, "{}", report.describe());
        assert_eq!(report.failed(), 0, "{}", report.describe());

        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = i32::from(closed.local_addr().expect("addr").port());
        drop(closed);
        let bad = RequestLoop::start(&[loopback], dead, "/", Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let report = bad.stop().await;
        assert!(report.failed() >= 2, "{}", report.describe());
        assert!(
            report.describe().contains("failed (at "),
            "{}",
            report.describe()
        );
    }
}
