//! Where a stopping agent reads its `ServiceLoadBalancer`: a fresh `get` from the API server
//! ([`KubeLookup`], the agent's existing `get` permission), or the local spec file
//! ([`FileLookup`]). Each read is bounded by a timeout and never fails: what went wrong becomes
//! [`Seen::Unreachable`] or [`Seen::Unreadable`].

use std::path::PathBuf;
use std::time::Duration;

use kube::Api;
use kube::api::{ApiResource, DynamicObject};
use portway_crds::ServiceLoadBalancer;
use serde_json::Value;

use super::{Seen, SlbFacts, facts_from_document, facts_from_object};

/// One read of the agent's `ServiceLoadBalancer`.
#[allow(async_fn_in_trait)]
pub trait ExitLookup {
    async fn read(&mut self, timeout: Duration) -> Seen;
}

fn seen_of(facts: Result<SlbFacts, String>) -> Seen {
    match facts {
        Ok(f) => Seen::Present(f),
        Err(e) => Seen::Unreadable(e),
    }
}

/// `GET` of the object by name, as an untyped object (the typed one may not deserialize if the
/// spec has a shape this agent does not know).
#[derive(Clone)]
pub struct KubeLookup {
    api: Api<DynamicObject>,
    name: String,
}

impl KubeLookup {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        let resource = ApiResource::erase::<ServiceLoadBalancer>(&());
        Self {
            api: Api::namespaced_with(client, namespace, &resource),
            name: name.to_owned(),
        }
    }
}

impl ExitLookup for KubeLookup {
    async fn read(&mut self, timeout: Duration) -> Seen {
        match tokio::time::timeout(timeout, self.api.get_opt(&self.name)).await {
            Err(_) => Seen::Unreachable(format!("no answer within {} ms", timeout.as_millis())),
            Ok(Err(e)) => Seen::Unreachable(e.to_string()),
            Ok(Ok(None)) => Seen::Gone,
            Ok(Ok(Some(obj))) => match serde_json::to_value(&obj) {
                Ok(doc) => seen_of(facts_from_object(&doc)),
                Err(e) => Seen::Unreadable(e.to_string()),
            },
        }
    }
}

/// Local mode: the spec file (a missing file is a deleted Service, as for the running agent).
#[derive(Clone, Debug)]
pub struct FileLookup {
    pub path: PathBuf,
}

impl ExitLookup for FileLookup {
    async fn read(&mut self, timeout: Duration) -> Seen {
        let text = match tokio::time::timeout(timeout, tokio::fs::read_to_string(&self.path)).await
        {
            Err(_) => return Seen::Unreachable(format!("{}: read timed out", self.path.display())),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Seen::Gone,
            Ok(Err(e)) => return Seen::Unreachable(format!("{}: {e}", self.path.display())),
            Ok(Ok(t)) => t,
        };
        match serde_saphyr::from_str::<Value>(&text) {
            Ok(doc) => seen_of(facts_from_document(&doc)),
            Err(e) => Seen::Unreadable(format!("{}: not YAML: {e}", self.path.display())),
        }
    }
}
