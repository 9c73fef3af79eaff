//! The invalid-resources table (`crds/testdata/invalid-resources.yaml`), which the offline checks
//! in `crds/tests` prove with a JSON-schema validator and client-side CEL, is refused by a real
//! API server the same way: HTTP 422, a cause at the case's field, and for CEL cases the rule's
//! exact message. Nothing is stored. Beyond the case's own cause, every cause the server gives
//! must be one the offline validator gives too (same field; for CEL the same message), and the
//! other way round.

use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, Status};
use portway_crds::testdata::{CheckName, INVALID_RESOURCES, InvalidCase, parse_invalid_cases};
use portway_crds::validation::{self, Check, Kind};
use portway_crds::{ClusterCIDR, LoadBalancerPool, ServiceLoadBalancer};
use portway_e2e::envtest::workspace_root;
use portway_e2e::{TestEnv, report};
use serde_json::{Value, json};

fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::LoadBalancerPool => ApiResource::erase::<LoadBalancerPool>(&()),
        Kind::ClusterCIDR => ApiResource::erase::<ClusterCIDR>(&()),
        Kind::ServiceLoadBalancer => ApiResource::erase::<ServiceLoadBalancer>(&()),
    }
}

/// What the server said about one case.
enum Outcome {
    /// Refused; the `Status` of the refusal and, for an update, the stored object's
    /// resourceVersion before it.
    Refused(Box<Status>, Option<String>),
    /// Stored: the table says it must not be.
    Accepted,
    /// The `old` object of a transition case was itself refused.
    OldRefused(String),
    /// Some other failure (transport, unexpected kind of error).
    Failed(String),
}

/// Gives the object a unique name (the case's) and, for namespaced kinds, the test namespace,
/// so that cases never collide. Nothing else is changed.
fn place(object: &Value, case: &str, namespace: Option<&str>) -> Value {
    let mut object = object.clone();
    object["metadata"]["name"] = json!(case);
    if let Some(ns) = namespace {
        object["metadata"]["namespace"] = json!(ns);
    }
    object
}

fn dynamic(value: &Value) -> Result<DynamicObject, String> {
    serde_json::from_value(value.clone()).map_err(|e| format!("not an object: {e}"))
}

async fn submit(api: &Api<DynamicObject>, case: &InvalidCase, ns: Option<&str>) -> Outcome {
    let object = place(&case.object, &case.case, ns);
    let pp = PostParams::default();
    let mut old_version = None;
    let result = match &case.old {
        None => match dynamic(&object) {
            Ok(obj) => api.create(&pp, &obj).await,
            Err(e) => return Outcome::Failed(e),
        },
        Some(old) => {
            let old = place(old, &case.case, ns);
            let created = match dynamic(&old) {
                Ok(obj) => api.create(&pp, &obj).await,
                Err(e) => return Outcome::Failed(e),
            };
            let stored = match created {
                Ok(stored) => stored,
                Err(e) => return Outcome::OldRefused(e.to_string()),
            };
            old_version = stored.metadata.resource_version.clone();
            let mut update = object.clone();
            update["metadata"]["resourceVersion"] = json!(old_version);
            match dynamic(&update) {
                Ok(obj) => api.replace(&case.case, &pp, &obj).await,
                Err(e) => return Outcome::Failed(e),
            }
        }
    };
    match result {
        Ok(_) => Outcome::Accepted,
        Err(kube::Error::Api(status)) => Outcome::Refused(status, old_version),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// The server's causes as `field: message`, without the "some validation rules were not
/// checked" placeholder the server adds when the schema already failed.
fn causes(status: &Status) -> Vec<(String, String)> {
    status
        .details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .filter(|c| !c.field.is_empty() && c.field != "<nil>")
                .map(|c| (c.field.clone(), c.message.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn bad_input_table_is_rejected_like_offline() {
    let Some(env) = TestEnv::start_or_skip("bad_input_table_is_rejected_like_offline").await else {
        return;
    };
    let client = env.client();
    let ns = env.namespace("bad-input").await.expect("namespace");
    let path = workspace_root().join(INVALID_RESOURCES);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases = parse_invalid_cases(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(!cases.is_empty());

    let mut mismatches = Vec::new();
    let mut differences = Vec::new();
    for case in &cases {
        let kind_name = case.object["kind"].as_str().unwrap_or_default();
        let kind = Kind::from_kind(kind_name)
            .unwrap_or_else(|| panic!("{}: unknown kind {kind_name}", case.case));
        let namespaced = kind == Kind::ServiceLoadBalancer;
        let ar = api_resource(kind);
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(client.clone(), &ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let outcome = submit(&api, case, namespaced.then_some(ns.as_str())).await;

        let (status, old_version) = match outcome {
            Outcome::Refused(status, old_version) => (status, old_version),
            Outcome::Accepted => {
                mismatches.push(format!("{}: accepted by the server", case.case));
                let _ = api.delete(&case.case, &DeleteParams::default()).await;
                continue;
            }
            Outcome::OldRefused(e) => {
                mismatches.push(format!(
                    "{}: the valid `old` object was refused: {e}",
                    case.case
                ));
                continue;
            }
            Outcome::Failed(e) => {
                mismatches.push(format!("{}: {e}", case.case));
                continue;
            }
        };
        let server = causes(&status);
        let mut problems = Vec::new();
        if status.code != 422 || status.reason != "Invalid" {
            problems.push(format!(
                "HTTP {} {} (want 422 Invalid)",
                status.code, status.reason
            ));
        }
        let at_field: Vec<&(String, String)> =
            server.iter().filter(|(f, _)| *f == case.field).collect();
        if at_field.is_empty() {
            problems.push(format!("no cause at {}", case.field));
        }
        if case.check == CheckName::Cel {
            let message = case.message.as_deref().unwrap_or_default();
            if !at_field.iter().any(|(_, m)| m.contains(message)) {
                problems.push(format!(
                    "no cause at {} with message {message:?}",
                    case.field
                ));
            }
        }
        if !problems.is_empty() {
            mismatches.push(format!(
                "{}: {}; server said: {}",
                case.case,
                problems.join("; "),
                status.message
            ));
        }

        // Nothing was stored: a refused create leaves no object, a refused update leaves the
        // old one untouched.
        match api.get_opt(&case.case).await {
            Ok(None) if case.old.is_none() => {}
            Ok(Some(obj)) if case.old.is_some() => {
                if obj.metadata.resource_version != old_version {
                    mismatches.push(format!(
                        "{}: the refused update changed the stored object",
                        case.case
                    ));
                }
                let _ = api.delete(&case.case, &DeleteParams::default()).await;
            }
            Ok(found) => mismatches.push(format!(
                "{}: after the refusal the object {}",
                case.case,
                if found.is_some() { "exists" } else { "is gone" }
            )),
            Err(e) => mismatches.push(format!("{}: reading back: {e}", case.case)),
        }

        // Compare every cause with what the offline validator reports for the same object.
        let offline = match validation::validate(kind, &case.object, case.old.as_ref()) {
            Ok(()) => Vec::new(),
            Err(invalid) => invalid.violations,
        };
        for (field, message) in &server {
            let explained = offline.iter().any(|v| {
                v.path == *field && (v.check == Check::Schema || message.contains(&v.message))
            });
            if !explained {
                differences.push(format!(
                    "{}: server-only cause {field}: {message}",
                    case.case
                ));
            }
        }
        for v in &offline {
            let seen = server.iter().any(|(field, message)| {
                v.path == *field && (v.check == Check::Schema || message.contains(&v.message))
            });
            if !seen {
                differences.push(format!(
                    "{}: offline-only {:?} violation {}: {}",
                    case.case, v.check, v.path, v.message
                ));
            }
        }
    }

    report::line(&format!(
        "api-server bad-input: {} tried, {} rejected as offline; {} causes differ from the offline checks",
        cases.len(),
        cases.len() - mismatches.len(),
        differences.len()
    ));
    for m in &mismatches {
        report::line(&format!("  MISMATCH {m}"));
    }
    for d in &differences {
        report::line(&format!("  DIFFERENCE {d}"));
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases not rejected as the offline checks say:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    // Every cause, not only the case's own: `portway plan` shows users the offline causes, so
    // they must be the server's.
    assert!(
        differences.is_empty(),
        "the server and the offline checks report different causes:\n{}",
        differences.join("\n")
    );
}
