//! A record of every request a client sends, taken in its tower stack (below kube's `Api`, so
//! nothing the code under test does can bypass it). Tests use it to prove "zero writes": the
//! operator's own write metric only counts what the operator chooses to count, this log sees
//! each HTTP request that leaves the client.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request, Response};
use kube::client::Body;
use tower::{Layer, Service};

/// One request as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, e.g. `/apis/apps/v1/namespaces/x/daemonsets/y?fieldManager=...`.
    pub path: String,
    pub at: Instant,
    /// The response's HTTP status; `None` until it came, or when the request failed in transport.
    pub status: Option<u16>,
}

impl Recorded {
    /// Everything but GET (get, list, watch) and HEAD: POST, PUT, PATCH, DELETE.
    pub fn is_write(&self) -> bool {
        !matches!(self.method, Method::GET | Method::HEAD | Method::OPTIONS)
    }

    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split('?').next().unwrap_or(&self.path)
    }

    /// The resource addressed, `plural` or `plural/subresource` (e.g. `services/status`), from
    /// `/api/v1/...` and `/apis/<group>/<version>/...` paths, namespaced or not.
    pub fn resource(&self) -> String {
        let segments: Vec<&str> = self
            .path_only()
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let rest: &[&str] = match segments.first() {
            Some(&"api") => segments.get(2..).unwrap_or_default(),
            Some(&"apis") => segments.get(3..).unwrap_or_default(),
            _ => &segments,
        };
        let rest = match rest {
            ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
            other => other,
        };
        match rest {
            [plural, _, sub, ..] => format!("{plural}/{sub}"),
            [plural, ..] => (*plural).to_owned(),
            [] => String::new(),
        }
    }

    /// True when the path addresses `resource` (a plural, e.g. `leases`, `daemonsets`, or
    /// `serviceloadbalancers/status` for a subresource).
    pub fn is_resource(&self, resource: &str) -> bool {
        let path = self.path_only();
        let segments: Vec<&str> = path.split('/').collect();
        match resource.split_once('/') {
            None => segments.contains(&resource),
            Some((plural, sub)) => segments.windows(3).any(|w| w[0] == plural && w[2] == sub),
        }
    }
}

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(code) => write!(f, "{} {} -> {code}", self.method, self.path),
            None => write!(f, "{} {}", self.method, self.path),
        }
    }
}

/// Shared, append-only log of the requests of one or more clients. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct RequestLog {
    inner: Arc<Mutex<Vec<Recorded>>>,
}

/// A position in a [`RequestLog`]: [`RequestLog::since`] returns what came after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(usize);

impl Mark {
    /// The beginning of every log.
    pub const START: Mark = Mark(0);
}

impl RequestLog {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, method: &Method, path: &str) -> usize {
        let mut log = self.lock();
        log.push(Recorded {
            method: method.clone(),
            path: path.to_owned(),
            at: Instant::now(),
            status: None,
        });
        log.len() - 1
    }

    fn set_status(&self, index: usize, status: u16) {
        if let Some(r) = self.lock().get_mut(index) {
            r.status = Some(status);
        }
    }

    /// The tower layer that records into this log (add it with `ClientBuilder::with_layer`).
    pub fn layer(&self) -> RecordLayer {
        RecordLayer { log: self.clone() }
    }

    /// The current end of the log.
    pub fn mark(&self) -> Mark {
        Mark(self.lock().len())
    }

    /// Every request recorded so far.
    pub fn all(&self) -> Vec<Recorded> {
        self.lock().clone()
    }

    /// Requests recorded after `mark`.
    pub fn since(&self, mark: Mark) -> Vec<Recorded> {
        self.lock()
            .get(mark.0..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    /// Writes recorded after `mark`, except those addressing one of `ignored` resources (e.g.
    /// `leases`: a leader renews its Lease every few seconds whatever else happens).
    pub fn writes_since(&self, mark: Mark, ignored: &[&str]) -> Vec<Recorded> {
        self.since(mark)
            .into_iter()
            .filter(Recorded::is_write)
            .filter(|r| !ignored.iter().any(|i| r.is_resource(i)))
            .collect()
    }

    /// Requests after `mark` that the server answered with `status` (e.g. 403).
    pub fn answered_since(&self, mark: Mark, status: u16) -> Vec<Recorded> {
        self.since(mark)
            .into_iter()
            .filter(|r| r.status == Some(status))
            .collect()
    }
}

/// Records every request (and its response status) of the service it wraps.
#[derive(Clone, Debug)]
pub struct RecordLayer {
    log: RequestLog,
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            log: self.log.clone(),
        }
    }
}

/// The service of [`RecordLayer`].
#[derive(Clone, Debug)]
pub struct Record<S> {
    inner: S,
    log: RequestLog,
}

impl<S, B> Service<Request<Body>> for Record<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| req.uri().path().to_owned());
        let index = self.log.record(req.method(), &path);
        let log = self.log.clone();
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await;
            if let Ok(r) = &response {
                log.set_status(index, r.status().as_u16());
            }
            response
        })
    }
}

/// Resources a running operator writes whatever the state of the cluster: the Lease it renews
/// every 2 s and the start-up RBAC check (SelfSubjectAccessReviews are POSTs that store nothing).
pub const HOUSEKEEPING: &[&str] = &["leases", "selfsubjectaccessreviews"];

/// The distinct `METHOD resource` pairs of `requests`, sorted, for summaries.
pub fn kinds(requests: &[Recorded]) -> Vec<String> {
    let set: std::collections::BTreeSet<String> = requests
        .iter()
        .map(|r| format!("{} {}", r.method, r.resource()))
        .collect();
    set.into_iter().collect()
}

/// One line per request, for assertion messages.
pub fn describe(requests: &[Recorded]) -> String {
    if requests.is_empty() {
        return "(none)".to_owned();
    }
    requests
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(method: Method, path: &str) -> Recorded {
        Recorded {
            method,
            path: path.to_owned(),
            at: Instant::now(),
            status: Some(200),
        }
    }

    #[test]
    fn resources_and_subresources_are_told_apart() {
        let status = rec(
            Method::PATCH,
            "/apis/portway.dev/v1alpha1/namespaces/a/serviceloadbalancers/web/status?fieldManager=x",
        );
        assert!(status.is_write());
        assert!(status.is_resource("serviceloadbalancers/status"));
        assert!(status.is_resource("serviceloadbalancers"));
        let spec = rec(
            Method::PATCH,
            "/apis/portway.dev/v1alpha1/namespaces/a/serviceloadbalancers/web",
        );
        assert!(!spec.is_resource("serviceloadbalancers/status"));
        let lease = rec(
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/p/leases/portway-operator",
        );
        assert!(lease.is_resource("leases") && !lease.is_resource("daemonsets"));
        assert!(!rec(Method::GET, "/api/v1/nodes?watch=true").is_write());
        assert_eq!(status.resource(), "serviceloadbalancers/status");
        assert_eq!(spec.resource(), "serviceloadbalancers");
        assert_eq!(lease.resource(), "leases");
        assert_eq!(rec(Method::PATCH, "/api/v1/nodes/n1").resource(), "nodes");
        assert_eq!(
            rec(Method::POST, "/apis/events.k8s.io/v1/namespaces/a/events").resource(),
            "events"
        );
        assert_eq!(
            rec(Method::POST, "/api/v1/namespaces").resource(),
            "namespaces"
        );
        assert_eq!(
            rec(Method::DELETE, "/api/v1/namespaces/a").resource(),
            "namespaces"
        );
    }

    #[test]
    fn marks_split_the_log_and_housekeeping_is_ignored() {
        let log = RequestLog::new();
        log.record(&Method::POST, "/apis/apps/v1/namespaces/p/daemonsets");
        let mark = log.mark();
        log.record(&Method::GET, "/api/v1/services");
        log.record(
            &Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/p/leases/portway-operator",
        );
        log.record(&Method::DELETE, "/apis/apps/v1/namespaces/p/daemonsets/x");
        assert_eq!(log.since(mark).len(), 3);
        let writes = log.writes_since(mark, HOUSEKEEPING);
        assert_eq!(writes.len(), 1, "{}", describe(&writes));
        assert_eq!(writes[0].method, Method::DELETE);
        assert_eq!(log.all().len(), 4);
    }
}
