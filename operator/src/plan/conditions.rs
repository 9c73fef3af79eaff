//! Events for what changed between the observed conditions and the new ones. Conditions keep
//! their `lastTransitionTime` unless their status flips ([`portway_crds::condition::merge`]), and
//! an Event is planned only on a change, so a resync with nothing new publishes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use portway_crds::condition::{self, reasons, status, types};

use super::{EventType, PlannedEvent};

/// Event action strings.
pub mod actions {
    pub const SELECT_POOL: &str = "SelectPool";
    pub const CLAIM_PORTS: &str = "ClaimPorts";
    pub const PUBLISH: &str = "Publish";
    pub const VALIDATE: &str = "Validate";
}

fn event(type_: EventType, reason: &str, note: &str, action: &str) -> PlannedEvent {
    PlannedEvent {
        type_,
        reason: reason.to_owned(),
        note: note.to_owned(),
        action: action.to_owned(),
    }
}

/// Events for the transitions from `old` to `new` conditions of a placed Service.
pub fn transition_events(old: &[Condition], new: &[Condition]) -> Vec<PlannedEvent> {
    let mut out = Vec::new();
    let changed = |c: &Condition| {
        condition::find(old, &c.type_)
            .is_none_or(|o| o.status != c.status || o.reason != c.reason || o.message != c.message)
    };
    for c in new {
        if !changed(c) {
            continue;
        }
        let is_true = c.status == status::TRUE;
        match c.type_.as_str() {
            types::POOL_SELECTED if is_true => {
                out.push(event(
                    EventType::Normal,
                    &c.reason,
                    &c.message,
                    actions::SELECT_POOL,
                ));
            }
            types::PORT_CONFLICT if is_true => {
                out.push(event(
                    EventType::Warning,
                    &c.reason,
                    &c.message,
                    actions::CLAIM_PORTS,
                ));
            }
            types::PORT_CONFLICT => {
                let was_conflict = condition::is_true(old, types::PORT_CONFLICT);
                if was_conflict {
                    out.push(event(
                        EventType::Normal,
                        reasons::NO_CONFLICT,
                        &c.message,
                        actions::CLAIM_PORTS,
                    ));
                }
            }
            types::READY => {
                // A reason change is news; a message change alone (e.g. a count) is not.
                let reason_changed = condition::find(old, types::READY)
                    .is_none_or(|o| o.status != c.status || o.reason != c.reason);
                if !reason_changed || c.reason == reasons::PORT_IN_USE {
                    continue;
                }
                let ty = match c.reason.as_str() {
                    reasons::AGENTS_FORWARDING | reasons::AGENTS_NOT_FORWARDING => {
                        EventType::Normal
                    }
                    _ => EventType::Warning,
                };
                out.push(event(ty, &c.reason, &c.message, actions::PUBLISH));
            }
            _ => {}
        }
    }
    out
}

/// The Event of a Service Portway cannot place (no ServiceLoadBalancer holds its conditions;
/// the shell publishes it once per change of message).
pub fn unplaced_event(ready: &Condition) -> PlannedEvent {
    let action = if ready.reason == reasons::INVALID_SERVICE {
        actions::VALIDATE
    } else {
        actions::SELECT_POOL
    };
    event(EventType::Warning, &ready.reason, &ready.message, action)
}
