//! What a stopping agent does with its rules (issue 15): leave them to the next agent of the
//! same Service on the same node (a rolling update, a new image, a deleted or killed pod), or
//! remove them (the node no longer serves the Service, or the Service is gone).
//!
//! At SIGTERM the agent reads its `ServiceLoadBalancer` once more, fresh from the API server
//! (local mode: the spec file), and [`decide`]s from three of its fields only, parsed leniently
//! ([`facts_from_object`]) so that a spec this agent cannot forward never blocks the decision:
//! `metadata.deletionTimestamp`, `spec.dataplane` and `status.targetNodes` (the nodes the
//! operator's DaemonSet targets, written before the DaemonSet changes).
//!
//! | read at exit                                  | decision | why |
//! |-----------------------------------------------|----------|-----|
//! | not found (404, spec file missing)            | remove   | the Service is deleted, or no longer Portway's |
//! | `deletionTimestamp` set                       | remove   | it is being deleted |
//! | this node not in `targetNodes` (or no list)   | remove   | the node left the pool, is blocked, or the operator predates the list |
//! | `dataplane` is not the agent's own            | remove   | the next agent runs in another network namespace |
//! | this node listed, same dataplane              | keep     | a successor comes to this node and adopts the rules |
//! | cannot be parsed                              | keep     | like an invalid spec: the installed rules stay |
//! | no answer (unreachable, timeout, 5xx, 403)    | keep     | keep serving; the next agent adopts or removes them, `portway-agent cleanup` removes them |
//!
//! [`next`] bounds the reading: in the `Host` dataplane a "keep" read earlier than
//! [`Policy::confirm`] after SIGTERM is read again then (the operator may be removing the node
//! at this very moment, reacting to the same Node change as the DaemonSet controller), and an
//! unanswered read is retried until [`Policy::deadline`]. In the `Pod` dataplane the rules die
//! with the pod's network namespace whatever the agent does, so one read decides and the agent
//! exits at once.

pub mod lookup;

use std::time::Duration;

use portway_crds::DataplaneMode;
use serde_json::Value;

/// The fields of a `ServiceLoadBalancer` the decision reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlbFacts {
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `spec.dataplane` (default `Pod`).
    pub dataplane: DataplaneMode,
    /// `status.targetNodes` (empty when absent).
    pub target_nodes: Vec<String>,
}

/// What the stopping agent read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The object does not exist.
    Gone,
    Present(SlbFacts),
    /// It exists but one of the decision's fields has an unexpected shape.
    Unreadable(String),
    /// The read failed or timed out.
    Unreachable(String),
}

/// Why the rules stay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// The node is still a target: the next agent adopts the rules.
    Successor,
    /// The object could not be parsed.
    Unreadable,
    /// The API server did not answer.
    Unreachable,
}

/// Why the rules go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    ServiceGone,
    ServiceDeleting,
    NodeNotTargeted,
    DataplaneChanged,
}

/// The decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep(KeepReason),
    Remove(RemoveReason),
}

impl Decision {
    /// Short label for logs and tests.
    pub fn label(self) -> &'static str {
        match self {
            Self::Keep(KeepReason::Successor) => "keep: node still targeted",
            Self::Keep(KeepReason::Unreadable) => "keep: ServiceLoadBalancer unreadable",
            Self::Keep(KeepReason::Unreachable) => "keep: API server unreachable",
            Self::Remove(RemoveReason::ServiceGone) => "remove: ServiceLoadBalancer gone",
            Self::Remove(RemoveReason::ServiceDeleting) => "remove: ServiceLoadBalancer deleting",
            Self::Remove(RemoveReason::NodeNotTargeted) => "remove: node not targeted",
            Self::Remove(RemoveReason::DataplaneChanged) => "remove: dataplane changed",
        }
    }
}

/// Decides from what was read at exit. `node` is this agent's node; `netns` the dataplane the
/// agent itself runs in (`None`: unknown, the dataplane check is skipped).
pub fn decide(node: &str, netns: Option<DataplaneMode>, seen: &Seen) -> Decision {
    match seen {
        Seen::Gone => Decision::Remove(RemoveReason::ServiceGone),
        Seen::Unreachable(_) => Decision::Keep(KeepReason::Unreachable),
        Seen::Unreadable(_) => Decision::Keep(KeepReason::Unreadable),
        Seen::Present(f) if f.deleting => Decision::Remove(RemoveReason::ServiceDeleting),
        Seen::Present(f) if !f.target_nodes.iter().any(|n| n == node) => {
            Decision::Remove(RemoveReason::NodeNotTargeted)
        }
        Seen::Present(f) if netns.is_some_and(|m| m != f.dataplane) => {
            Decision::Remove(RemoveReason::DataplaneChanged)
        }
        Seen::Present(_) => Decision::Keep(KeepReason::Successor),
    }
}

/// Bounds of the exit decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Longest time spent reading (Host dataplane), from SIGTERM; well inside the pod's
    /// `terminationGracePeriodSeconds` (30).
    pub deadline: Duration,
    /// Host dataplane: a "keep" must come from a read at least this long after SIGTERM.
    pub confirm: Duration,
    /// Host dataplane: wait between reads the API server did not answer.
    pub retry: Duration,
    /// Longest wait for one read.
    pub read_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(10),
            confirm: Duration::from_secs(2),
            retry: Duration::from_millis(500),
            read_timeout: Duration::from_secs(2),
        }
    }
}

/// What to do after a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Act on the decision.
    Finish,
    /// Read again after this wait.
    ReadAgain(Duration),
}

/// The step after a read that gave `decision`, `elapsed` after SIGTERM.
pub fn next(
    decision: Decision,
    netns: Option<DataplaneMode>,
    elapsed: Duration,
    policy: &Policy,
) -> Step {
    if netns != Some(DataplaneMode::Host) {
        return Step::Finish;
    }
    match decision {
        Decision::Remove(_) | Decision::Keep(KeepReason::Unreadable) => Step::Finish,
        Decision::Keep(KeepReason::Successor) if elapsed < policy.confirm => {
            Step::ReadAgain(policy.confirm - elapsed)
        }
        Decision::Keep(KeepReason::Successor) => Step::Finish,
        Decision::Keep(KeepReason::Unreachable)
            if elapsed + policy.retry + policy.read_timeout <= policy.deadline =>
        {
            Step::ReadAgain(policy.retry)
        }
        Decision::Keep(KeepReason::Unreachable) => Step::Finish,
    }
}

fn dataplane_of(spec: Option<&Value>) -> Result<DataplaneMode, String> {
    match spec.and_then(|s| s.get("dataplane")) {
        None | Some(Value::Null) => Ok(DataplaneMode::Pod),
        Some(Value::String(s)) if s == "Pod" => Ok(DataplaneMode::Pod),
        Some(Value::String(s)) if s == "Host" => Ok(DataplaneMode::Host),
        Some(other) => Err(format!("spec.dataplane {other} is neither Pod nor Host")),
    }
}

fn targets_of(status: Option<&Value>) -> Result<Vec<String>, String> {
    match status.and_then(|s| s.get("targetNodes")) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("status.targetNodes holds {i}, not a node name"))
            })
            .collect(),
        Some(other) => Err(format!("status.targetNodes is {other}, not a list")),
    }
}

/// The decision's fields of a whole `ServiceLoadBalancer` object (JSON from the API server).
pub fn facts_from_object(doc: &Value) -> Result<SlbFacts, String> {
    if !doc.is_object() {
        return Err("not an object".into());
    }
    let deleting = doc
        .get("metadata")
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some_and(|t| !t.is_null());
    Ok(SlbFacts {
        deleting,
        dataplane: dataplane_of(doc.get("spec"))?,
        target_nodes: targets_of(doc.get("status"))?,
    })
}

/// The decision's fields of a local spec file's document: a whole object, or a bare spec (as
/// [`crate::source::parse_spec_file`] tells them apart), which has no status, so no node is
/// listed.
pub fn facts_from_document(doc: &Value) -> Result<SlbFacts, String> {
    if !doc.is_object() {
        return Err("not an object".into());
    }
    if doc.get("kind").is_some() || doc.get("apiVersion").is_some() {
        return facts_from_object(doc);
    }
    Ok(SlbFacts {
        deleting: false,
        dataplane: dataplane_of(Some(doc))?,
        target_nodes: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
