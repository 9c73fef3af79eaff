//! A scripted fake API server on tower-test's mock service: records every request (method,
//! path, query, body) in order, answers like the API server would (echoes applies, 404s
//! deletes of unknown objects), and injects faults (409, 500) for requests matching a rule.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use serde_json::{Value, json};

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    /// When it arrived (tokio time, so paused-time tests see backoff gaps).
    pub at: tokio::time::Instant,
    /// The status code the fake answered with.
    pub code: u16,
}

impl Seen {
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
    /// `METHOD path` without the query.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// A planned fault: the next `times` requests whose `METHOD path` contains `needle` (ends with
/// it, when the needle ends with `$`) get `code`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub needle: String,
    pub code: u16,
    pub times: usize,
}

/// A needle and the answers still to give for it.
pub type Sequence = (String, VecDeque<(u16, Value)>);

#[derive(Clone, Default)]
pub struct Fake {
    pub log: Arc<Mutex<Vec<Seen>>>,
    pub faults: Arc<Mutex<VecDeque<Fault>>>,
    /// Bodies returned for GETs whose path contains the key.
    pub gets: Arc<Mutex<Vec<(String, u16, Value)>>>,
    /// Objects by path, as stored by applies (deep-merged) and seeded by tests.
    pub objects: Arc<Mutex<std::collections::HashMap<String, Value>>>,
    /// Answers for GETs whose `path?query` contains the key, in turn (the last one repeats):
    /// lists that change between polls.
    pub sequences: Arc<Mutex<Vec<Sequence>>>,
}

/// JSON merge: objects recursively, everything else replaced.
pub fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": reason, "message": message})
}

impl Fake {
    /// A client talking to a new fake server (spawned on the current runtime).
    pub fn start() -> (Client, Fake) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = Fake::default();
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    body,
                    at: tokio::time::Instant::now(),
                    code: 0,
                };
                let (code, reply) = server.answer(&seen);
                let mut seen = seen;
                seen.code = code;
                server.log.lock().unwrap().push(seen);
                let resp = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap();
                send.send_response(resp);
            }
        });
        (Client::new(svc, "default"), fake)
    }

    pub fn fail(&self, needle: &str, code: u16, times: usize) {
        self.faults.lock().unwrap().push_back(Fault {
            needle: needle.into(),
            code,
            times,
        });
    }

    /// Stores `object` at `path` (what a later status patch merges into).
    pub fn seed(&self, path: &str, object: Value) {
        self.objects.lock().unwrap().insert(path.to_owned(), object);
    }

    /// Answers GETs whose `path?query` contains `needle` (every `*`-separated part of it) with
    /// `answers` in turn; the last one repeats. Checked before [`Fake::on_get`] and seeded
    /// objects.
    pub fn on_get_seq(&self, needle: &str, answers: Vec<(u16, Value)>) {
        self.sequences
            .lock()
            .unwrap()
            .push((needle.into(), answers.into_iter().collect()));
    }

    fn sequence_answer(&self, seen: &Seen) -> Option<(u16, Value)> {
        if seen.method != "GET" {
            return None;
        }
        let target = format!("{}?{}", seen.path, seen.query);
        let mut seqs = self.sequences.lock().unwrap();
        let (_, answers) = seqs
            .iter_mut()
            .find(|(k, a)| !a.is_empty() && k.split('*').all(|part| target.contains(part)))?;
        if answers.len() > 1 {
            answers.pop_front()
        } else {
            answers.front().cloned()
        }
    }

    pub fn on_get(&self, needle: &str, code: u16, body: Value) {
        self.gets.lock().unwrap().push((needle.into(), code, body));
    }

    fn answer(&self, seen: &Seen) -> (u16, Value) {
        let line = seen.line();
        {
            let mut faults = self.faults.lock().unwrap();
            if let Some(f) = faults.iter_mut().find(|f| {
                f.times > 0
                    && match f.needle.strip_suffix('$') {
                        // `needle$`: the line ends with it (a path, not its subresources).
                        Some(end) => line.ends_with(end),
                        None => line.contains(&f.needle),
                    }
            }) {
                f.times -= 1;
                let code = f.code;
                let reason = match code {
                    409 => "Conflict",
                    422 => "Invalid",
                    500 => "InternalError",
                    _ => "Failure",
                };
                return (
                    code,
                    status(code, reason, &format!("injected {code} for {line}")),
                );
            }
        }
        if let Some(answer) = self.sequence_answer(seen) {
            return answer;
        }
        match seen.method.as_str() {
            "GET"
                if self
                    .objects
                    .lock()
                    .unwrap()
                    .get(&seen.path)
                    .is_some_and(|o| !o.is_null()) =>
            {
                (200, self.objects.lock().unwrap()[&seen.path].clone())
            }
            "GET" => {
                let gets = self.gets.lock().unwrap();
                match gets.iter().find(|(k, _, _)| seen.path.contains(k.as_str())) {
                    Some((_, code, body)) => (*code, body.clone()),
                    None => (404, status(404, "NotFound", "not found")),
                }
            }
            "DELETE" => {
                self.objects.lock().unwrap().remove(&seen.path);
                (200, status(200, "", "deleted"))
            }
            "PATCH" if seen.body.is_array() => self.json_patch(seen),
            _ => {
                // Merge what was sent into what is stored (status patches into the object).
                let key = seen.path.trim_end_matches("/status").to_owned();
                let mut objects = self.objects.lock().unwrap();
                let stored = objects.entry(key).or_insert(Value::Null);
                let version = stored["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1);
                if seen.method == "POST" || seen.method == "PUT" {
                    *stored = Value::Null;
                }
                merge(stored, &seen.body);
                if stored.is_object() {
                    if stored["metadata"].is_null() {
                        stored["metadata"] = json!({});
                    }
                    stored["metadata"]["generation"] = json!(1);
                    stored["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                    if stored["metadata"]["name"].is_null() {
                        stored["metadata"]["name"] =
                            json!(seen.path.rsplit('/').next().unwrap_or(""));
                    }
                }
                let obj = stored.clone();
                (if seen.method == "POST" { 201 } else { 200 }, obj)
            }
        }
    }

    /// A JSON Patch (`application/json-patch+json`), as the API server applies it: every
    /// operation in order to the stored object, all or nothing; a failed `test` (or a missing
    /// path) is 422, an unknown object 404.
    fn json_patch(&self, seen: &Seen) -> (u16, Value) {
        let key = seen.path.trim_end_matches("/status").to_owned();
        let mut objects = self.objects.lock().unwrap();
        let Some(stored) = objects.get_mut(&key).filter(|o| !o.is_null()) else {
            return (404, status(404, "NotFound", "not found"));
        };
        let patch: json_patch::Patch = match serde_json::from_value(seen.body.clone()) {
            Ok(p) => p,
            Err(e) => return (400, status(400, "BadRequest", &e.to_string())),
        };
        let mut next = stored.clone();
        if let Err(e) = json_patch::patch(&mut next, &patch) {
            return (422, status(422, "Invalid", &e.to_string()));
        }
        let version = next["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        next["metadata"]["resourceVersion"] = json!((version + 1).to_string());
        *stored = next.clone();
        (200, next)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Requests the fake answered with success.
    pub fn succeeded(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.code < 300)
            .collect()
    }

    pub fn writes(&self) -> Vec<Seen> {
        self.requests().into_iter().filter(Seen::is_write).collect()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

/// Fills a store as a completed first list would.
pub fn fill<K>(writer: &mut Writer<K>, objects: Vec<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}
