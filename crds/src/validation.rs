//! Offline admission: checks an object against a CRD's OpenAPI schema (with a JSON-schema
//! validator) and its CEL rules (with kube's client-side CEL engine), as the API server would.
//! `portway plan` uses it to reject invalid input with the API server's own messages, and the
//! tests use it to prove every rule can fail.

use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::{ClusterCIDR, LoadBalancerPool, ServiceLoadBalancer};

/// The Portway kinds that can be validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    LoadBalancerPool,
    ClusterCIDR,
    ServiceLoadBalancer,
}

impl Kind {
    /// The kind for a `kind` string, if it is one of Portway's.
    pub fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "LoadBalancerPool" => Some(Self::LoadBalancerPool),
            "ClusterCIDR" => Some(Self::ClusterCIDR),
            "ServiceLoadBalancer" => Some(Self::ServiceLoadBalancer),
            _ => None,
        }
    }

    fn crd(self) -> CustomResourceDefinition {
        match self {
            Self::LoadBalancerPool => LoadBalancerPool::crd(),
            Self::ClusterCIDR => ClusterCIDR::crd(),
            Self::ServiceLoadBalancer => ServiceLoadBalancer::crd(),
        }
    }
}

/// Which check rejected the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The OpenAPI schema (types, enums, ranges, lengths, patterns, required fields).
    Schema,
    /// A CEL rule (`x-kubernetes-validations`).
    Cel,
}

/// One reason an object is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which check failed.
    pub check: Check,
    /// JSON path of the offending field, e.g. `spec.ipv4`.
    pub path: String,
    /// Human-readable message; for CEL rules exactly the rule's `message`.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The object is invalid; every violation found is listed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("invalid {kind:?}: {}", .violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    pub kind: Kind,
    pub violations: Vec<Violation>,
}

struct Compiled {
    schema: Value,
    json_schema: Option<jsonschema::Validator>,
}

fn compiled(kind: Kind) -> &'static Compiled {
    static POOL: OnceLock<Compiled> = OnceLock::new();
    static CIDR: OnceLock<Compiled> = OnceLock::new();
    static SLB: OnceLock<Compiled> = OnceLock::new();
    let cell = match kind {
        Kind::LoadBalancerPool => &POOL,
        Kind::ClusterCIDR => &CIDR,
        Kind::ServiceLoadBalancer => &SLB,
    };
    cell.get_or_init(|| {
        let crd = kind.crd();
        let schema = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        let json_schema = jsonschema::draft4::new(&with_nullable_types(schema.clone())).ok();
        Compiled {
            schema,
            json_schema,
        }
    })
}

/// The OpenAPI v3 schema of `kind`'s CRD (its only version), as JSON; `null` if it has none.
/// Built once, with the validator [`validate`] uses.
pub fn schema(kind: Kind) -> &'static Value {
    &compiled(kind).schema
}

/// OpenAPI's `nullable: true` as JSON-schema: `type: X` becomes `type: [X, "null"]`.
fn with_nullable_types(mut schema: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if map.get("nullable") == Some(&Value::Bool(true))
                    && let Some(Value::String(t)) = map.get("type").cloned()
                {
                    map.insert("type".into(), serde_json::json!([t, "null"]));
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut schema);
    schema
}

/// Validates `object` (a whole resource as JSON) as the API server would on create (`old` =
/// `None`) or update (`old` = the stored object, for transition rules such as immutability).
pub fn validate(kind: Kind, object: &Value, old: Option<&Value>) -> Result<(), Invalid> {
    let compiled = compiled(kind);
    let mut violations = Vec::new();
    match &compiled.json_schema {
        Some(validator) => {
            for e in validator.iter_errors(object) {
                let mut path = json_pointer_to_path(e.instance_path().as_str());
                // The API server reports a missing required field at the field's own path
                // (`spec.nodeSelector: Required value`), not at the object that lacks it.
                if let jsonschema::error::ValidationErrorKind::Required {
                    property: Value::String(property),
                } = e.kind()
                {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(property);
                }
                violations.push(Violation {
                    check: Check::Schema,
                    path,
                    message: e.to_string(),
                });
            }
        }
        None => violations.push(Violation {
            check: Check::Schema,
            path: String::new(),
            message: "the CRD's OpenAPI schema does not compile".into(),
        }),
    }
    // CEL rules run only on objects that pass the schema, as in the API server.
    if violations.is_empty()
        && let Err(errors) =
            kube::core::cel::Validator::new().validate(&compiled.schema, object, old)
    {
        for e in errors.into_vec() {
            violations.push(Violation {
                check: Check::Cel,
                path: e.field_path.clone(),
                message: e.message.clone(),
            });
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Invalid { kind, violations })
    }
}

/// `/spec/ports/0/port` -> `spec.ports[0].port`.
fn json_pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_paths_read_like_kubernetes_field_paths() {
        assert_eq!(
            json_pointer_to_path("/spec/ports/0/port"),
            "spec.ports[0].port"
        );
        assert_eq!(json_pointer_to_path(""), "");
        assert_eq!(
            json_pointer_to_path("/metadata/labels/a~1b"),
            "metadata.labels.a/b"
        );
    }

    #[test]
    fn every_kind_compiles_its_schema() {
        for kind in [
            Kind::LoadBalancerPool,
            Kind::ClusterCIDR,
            Kind::ServiceLoadBalancer,
        ] {
            assert!(compiled(kind).json_schema.is_some(), "{kind:?}");
        }
    }
}
