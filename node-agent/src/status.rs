//! The agent's report: its own entry of `ServiceLoadBalancer.status.nodes`.
//!
//! Computing the entry is pure ([`forwarding_condition`], [`node_entry`]); writing it goes
//! through a [`StatusSink`]: [`KubeStatus`] server-side-applies only
//! `status.nodes[node=<this node>]` to the status subresource with field manager
//! `portway-agent/<node>` and `force`, so the API server merges it into the list (keyed by
//! `node`) without touching other nodes' entries or the operator's conditions; [`FileStatus`]
//! writes it to a file in local mode.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{Patch, PatchParams};
use portway_crds::condition::{self, reasons, types};
use portway_crds::names::{API_VERSION, agent_field_manager};
use portway_crds::{DataplaneMode, NodeForwardingStatus, ServiceLoadBalancer};

use crate::forwarding::ForwardingReport;
use crate::rules::RuleSet;

/// Longest condition message written (the API allows 32768 bytes; keep it readable).
pub const MAX_MESSAGE: usize = 1024;

/// What happened in the last reconcile, as the condition sees it.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// SIGTERM: the rules were removed.
    ShuttingDown { removed: bool },
    /// The spec was rejected; `kept` is the generation whose rules stay installed, if any.
    InvalidSpec { error: &'a str, kept: Option<i64> },
    /// The dataplane refused or failed the apply.
    ApplyFailed { error: &'a str },
    /// The rules are installed.
    Applied {
        rules: &'a RuleSet,
        forwarding: &'a ForwardingReport,
        missing_addresses: &'a [IpAddr],
    },
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `Forwarding` condition for an outcome: `(status, reason, message)`. Precedence: shutting
/// down, invalid spec, kernel rejection, nothing to forward from, forwarding disabled, no
/// endpoints, applied.
pub fn forwarding_condition(outcome: &Outcome<'_>) -> (bool, &'static str, String) {
    match outcome {
        Outcome::ShuttingDown { removed } => (
            false,
            reasons::SHUTTING_DOWN,
            if *removed {
                "the agent is stopping and removed its rules".to_owned()
            } else {
                "the agent is stopping; removing its rules failed (see its log)".to_owned()
            },
        ),
        Outcome::InvalidSpec { error, kept } => {
            let mut m = format!("the spec cannot be forwarded: {error}");
            if let Some(g) = kept {
                let _ = write!(m, "; the rules of generation {g} stay installed");
            } else {
                m.push_str("; no rules are installed");
            }
            (false, reasons::INVALID_SPEC, cut(m))
        }
        Outcome::ApplyFailed { error } => (
            false,
            reasons::KERNEL_REJECTED,
            cut(format!("installing the rules failed: {error}")),
        ),
        Outcome::Applied {
            rules,
            forwarding,
            missing_addresses,
        } => {
            let notes = list(rules.notes.iter());
            let missing = if missing_addresses.is_empty() {
                String::new()
            } else {
                format!(
                    "; configured address(es) {} not present in this network namespace",
                    list(missing_addresses.iter())
                )
            };
            if rules.is_empty() {
                return (
                    false,
                    reasons::NO_ADDRESSES,
                    cut(format!(
                        "nothing to forward from: {}{missing}",
                        if notes.is_empty() {
                            "no usable address".to_owned()
                        } else {
                            notes
                        }
                    )),
                );
            }
            let disabled = forwarding.disabled();
            if !disabled.is_empty() {
                let what = list(disabled.iter().map(|(f, sysctl, detail)| {
                    format!("{} not forwarded: {sysctl} {detail}", f.as_str())
                }));
                return (false, reasons::FORWARDING_DISABLED, cut(what));
            }
            let no_eps = rules.ports_without_endpoints();
            if !no_eps.is_empty() {
                let what = list(
                    no_eps
                        .iter()
                        .map(|(f, p, port)| format!("{} {}/{port}", f.as_str(), p.as_str())),
                );
                let kind = if rules.mode == DataplaneMode::Host {
                    "no ready endpoint on this node or in the cluster for"
                } else {
                    "no target for"
                };
                return (
                    false,
                    reasons::NO_ENDPOINTS,
                    cut(format!("{kind} {what} (connections are rejected){missing}")),
                );
            }
            let mut ports: Vec<String> = rules
                .families
                .iter()
                .flat_map(|f| {
                    f.forwards
                        .iter()
                        .map(|fw| format!("{} {}", fw.protocol.as_str(), fw.port))
                })
                .collect();
            ports.sort();
            ports.dedup();
            let mut m = format!(
                "forwarding {} from {}",
                list(ports),
                list(rules.addresses())
            );
            if !notes.is_empty() {
                let _ = write!(m, "; {notes}");
            }
            m.push_str(&missing);
            (true, reasons::RULES_APPLIED, cut(m))
        }
    }
}

/// The node entry to report, keeping `lastTransitionTime` from `old` when the status did not
/// flip.
pub fn node_entry(
    node: &str,
    generation: Option<i64>,
    addresses: &[IpAddr],
    outcome: &Outcome<'_>,
    old: Option<&NodeForwardingStatus>,
    now: &Time,
) -> NodeForwardingStatus {
    let (ok, reason, message) = forwarding_condition(outcome);
    let next = condition::new(types::FORWARDING, ok, reason, message, generation, now);
    let conditions = condition::merge(
        old.map(|o| o.conditions.as_slice()).unwrap_or(&[]),
        vec![next],
    );
    NodeForwardingStatus {
        node: node.to_owned(),
        observed_generation: generation,
        addresses: addresses.iter().take(16).map(|a| a.to_string()).collect(),
        conditions,
    }
}

/// True when writing `next` over `old` would change something besides timestamps.
pub fn differs(old: Option<&NodeForwardingStatus>, next: &NodeForwardingStatus) -> bool {
    match old {
        None => true,
        Some(o) => {
            o.node != next.node
                || o.observed_generation != next.observed_generation
                || o.addresses != next.addresses
                || !condition::same_ignoring_time(&o.conditions, &next.conditions)
        }
    }
}

/// This node's entry in an observed object.
pub fn entry_of<'a>(slb: &'a ServiceLoadBalancer, node: &str) -> Option<&'a NodeForwardingStatus> {
    slb.status
        .as_ref()
        .and_then(|s| s.nodes.iter().find(|n| n.node == node))
}

/// The server-side-apply body: identity plus `status.nodes` holding only this node's entry.
pub fn apply_body(namespace: &str, name: &str, entry: &NodeForwardingStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "ServiceLoadBalancer",
        "metadata": { "name": name, "namespace": namespace },
        "status": { "nodes": [entry] },
    })
}

/// Why a status could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("applying the status of {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying the status of {0} timed out")]
    Timeout(String),
    #[error("writing {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where the node entry goes.
#[allow(async_fn_in_trait)]
pub trait StatusSink {
    async fn publish(&mut self, entry: &NodeForwardingStatus) -> Result<(), StatusError>;
}

/// Server-side apply to the API server.
#[derive(Clone)]
pub struct KubeStatus {
    api: Api<ServiceLoadBalancer>,
    namespace: String,
    name: String,
    params: PatchParams,
    timeout: Duration,
}

impl KubeStatus {
    pub fn new(client: kube::Client, namespace: &str, name: &str, node: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            params: PatchParams::apply(&agent_field_manager(node)).force(),
            timeout: Duration::from_secs(15),
        }
    }
}

impl StatusSink for KubeStatus {
    async fn publish(&mut self, entry: &NodeForwardingStatus) -> Result<(), StatusError> {
        let body = apply_body(&self.namespace, &self.name, entry);
        let patch = Patch::Apply(&body);
        let call = self.api.patch_status(&self.name, &self.params, &patch);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(StatusError::Kube {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                source,
            }),
            Err(_) => Err(StatusError::Timeout(format!(
                "{}/{}",
                self.namespace, self.name
            ))),
        }
    }
}

/// Local mode: the entry as JSON in a file (written atomically), for tests and benchmarks.
#[derive(Clone, Debug)]
pub struct FileStatus {
    pub path: PathBuf,
}

impl StatusSink for FileStatus {
    async fn publish(&mut self, entry: &NodeForwardingStatus) -> Result<(), StatusError> {
        let err = |source| StatusError::File {
            path: self.path.display().to_string(),
            source,
        };
        let text =
            serde_json::to_string_pretty(entry).map_err(|e| err(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("tmp");
        tokio::fs::write(&tmp, text).await.map_err(err)?;
        tokio::fs::rename(&tmp, &self.path).await.map_err(err)
    }
}

#[cfg(test)]
pub(crate) mod tests;
