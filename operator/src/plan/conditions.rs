//! Events for what changed between the observed conditions and the new ones, and the one
//! condition Portway writes on the Service itself. Conditions keep their `lastTransitionTime`
//! unless their status flips ([`portway_crds::condition::merge`]), and an Event is planned only on
//! a change, so a resync with nothing new publishes nothing.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use portway_crds::condition::{self, reasons, status, types};

use super::{EventType, PlannedEvent, ServicePlan, ServiceState};

/// Longest condition message the API server accepts (`metav1.Condition.message`).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;

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
                // The PortConflict condition's Event already tells of a port conflict.
                if !reason_changed
                    || c.reason == reasons::PORT_IN_USE
                    || c.reason == reasons::PORT_RESERVED
                {
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

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Portway's conditions on the Service's own `status.conditions` (only ever one type, so a list).
pub fn own_service_conditions(svc: &Service) -> &[Condition] {
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .map(|c| {
            // The API server keeps conditions in the order they were added; ours is one entry.
            let i = c
                .iter()
                .position(|c| c.type_ == types::SERVICE_LOAD_BALANCER);
            i.map(|i| &c[i..=i]).unwrap_or(&[])
        })
        .unwrap_or(&[])
}

/// The `portway.dev/LoadBalancer` condition of a Service Portway is responsible for: True
/// (`Serving`) once addresses are published, else False with the reason and what to fix. `None`
/// for a Service that is not (or no longer) Portway's, whose condition must go. Keeps the
/// Service's current `lastTransitionTime` when the status does not flip.
pub fn service_condition(plan: &ServicePlan, service: &Service, now: &Time) -> Option<Condition> {
    let ready = condition::find(&plan.conditions, types::READY)?;
    let pool = plan.pool.as_deref().unwrap_or("-");
    let detail = format!(
        "details: kubectl get serviceloadbalancer -n {} {}",
        plan.service.namespace, plan.service.name
    );
    let (ok, reason, message) = match plan.state {
        ServiceState::CleaningUp => return None,
        ServiceState::Serving => (
            true,
            reasons::SERVING,
            format!("{} (LoadBalancerPool {pool})", ready.message),
        ),
        ServiceState::PortConflict if ready.reason == reasons::PORT_RESERVED => (
            false,
            reasons::PORT_RESERVED,
            format!("{}. Change this Service's port", ready.message),
        ),
        ServiceState::PortConflict => (
            false,
            reasons::PORT_CONFLICT,
            format!(
                "{}. Change this Service's port, or give the Services disjoint pools (a pool serviceSelector or the portway.dev/pool annotation)",
                ready.message
            ),
        ),
        ServiceState::NoNodes => (
            false,
            reasons::POOL_HAS_NO_NODES,
            format!(
                "{}: label Nodes to match its nodeSelector, or choose another pool",
                ready.message
            ),
        ),
        ServiceState::NoEndpoints => (
            false,
            reasons::NO_READY_ENDPOINTS,
            format!(
                "{}: run a ready backend Pod on a node of LoadBalancerPool {pool}, or use externalTrafficPolicy Cluster",
                ready.message
            ),
        ),
        ServiceState::Waiting => (
            false,
            ready.reason.as_str(),
            format!("{} ({detail})", ready.message),
        ),
        ServiceState::NoPool if ready.reason == reasons::POOL_NOT_FOUND => (
            false,
            reasons::POOL_NOT_FOUND,
            format!(
                "{}: create that pool or correct the annotation",
                ready.message
            ),
        ),
        ServiceState::NoPool => (false, reasons::NO_MATCHING_POOL, ready.message.clone()),
        ServiceState::Invalid => (
            false,
            reasons::INVALID_SERVICE,
            format!("{}; fix the Service's spec", ready.message),
        ),
    };
    let next = condition::new(
        types::SERVICE_LOAD_BALANCER,
        ok,
        reason,
        truncate(&message, MAX_MESSAGE_BYTES),
        service.metadata.generation,
        now,
    );
    condition::merge(own_service_conditions(service), vec![next]).pop()
}
