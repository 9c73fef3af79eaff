//! Bounded waits: never a bare sleep, never an unbounded loop.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use kube::runtime::wait::{Condition, await_condition};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// How often [`eventually`] probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A wait that did not end well.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("waiting for {what}: {source}")]
    Watch {
        what: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
}

/// Watches object `name` until `condition` holds, at most `timeout`
/// (`kube::runtime::wait::await_condition` under a timeout). Returns the object as it was when
/// the condition held (`None` if it held on a deleted object, e.g. `conditions::is_deleted`).
pub async fn wait_for<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    condition: impl Condition<K>,
    timeout: Duration,
) -> Result<Option<K>, WaitError>
where
    K: Clone + Debug + Send + DeserializeOwned + Resource + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api, name, condition)).await {
        Ok(Ok(object)) => Ok(object),
        Ok(Err(source)) => Err(WaitError::Watch {
            what: what.to_owned(),
            source,
        }),
        Err(_) => Err(WaitError::Timeout {
            what: what.to_owned(),
            after: timeout,
        }),
    }
}

/// Calls `probe` every [`POLL_INTERVAL`] until it returns `Some`, at most `timeout`. For states
/// that span several objects (a watch on one object cannot see them).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(what, timeout, POLL_INTERVAL, probe).await
}

/// [`eventually`], probing every `interval` (for probes that run a program or are costly).
pub async fn eventually_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: F,
) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        let remaining = timeout.saturating_sub(started.elapsed());
        if let Ok(Some(value)) = tokio::time::timeout(remaining, probe()).await {
            return Ok(value);
        }
        if started.elapsed() >= timeout {
            return Err(WaitError::Timeout {
                what: what.to_owned(),
                after: timeout,
            });
        }
        tokio::time::sleep(interval.min(timeout.saturating_sub(started.elapsed()))).await;
    }
}
