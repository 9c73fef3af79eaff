//! A mocked API server for request-sequence tests (tower-test, as kube-rs' controller-rs
//! fixtures): every request is recorded in order (method, path and query, JSON body) and
//! answered by a test-supplied responder; watch requests can be left hanging.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::Value;

/// One request the client sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Req {
    pub method: String,
    /// Path and query, e.g. `/api/v1/nodes/n1?&fieldManager=...`.
    pub uri: String,
    pub body: Value,
}

impl Req {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }
    pub fn query(&self) -> &str {
        self.uri.split_once('?').map(|(_, q)| q).unwrap_or_default()
    }
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
    /// `METHOD path` (without the query), for compact assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path())
    }
}

/// How to answer.
pub enum Reply {
    Json(u16, Value),
    /// Never answer (a watch that has nothing to say).
    Hang,
}

/// A Kubernetes `Status` error body.
pub fn status_error(code: u16, reason: &str, message: &str) -> Reply {
    Reply::Json(
        code,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "code": code, "reason": reason, "message": message,
        }),
    )
}

/// The recorded requests.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Req>>>);

impl Log {
    pub fn all(&self) -> Vec<Req> {
        self.0.lock().unwrap().clone()
    }
    /// Takes the requests recorded so far.
    pub fn take(&self) -> Vec<Req> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    pub fn writes(&self) -> Vec<Req> {
        self.all().into_iter().filter(Req::is_write).collect()
    }
}

/// A client whose requests go to `responder`.
pub fn client<F>(responder: F) -> (Client, Log)
where
    F: FnMut(&Req) -> Reply + Send + 'static,
{
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Log::default();
    let recorded = log.clone();
    tokio::spawn(async move {
        let mut responder = responder;
        let mut handle = Box::pin(handle);
        let mut hanging = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let uri = request
                .uri()
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default();
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .unwrap_or_default();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let req = Req { method, uri, body };
            let reply = responder(&req);
            recorded.0.lock().unwrap().push(req);
            match reply {
                Reply::Json(code, value) => {
                    let response = Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&value).unwrap()))
                        .unwrap();
                    send.send_response(response);
                }
                Reply::Hang => hanging.push(send),
            }
        }
    });
    (Client::new(service, "default"), log)
}
