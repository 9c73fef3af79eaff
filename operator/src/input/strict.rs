//! Strict field validation, as the API server does it for `kubectl apply` (whose default is
//! `--validate=strict`, the request's `fieldValidation=Strict`): a field the object's type does
//! not have rejects the object with `strict decoding error: unknown field "spec.serviceSelectr"`
//! instead of being dropped silently.
//!
//! - Core objects (Node, Service, EndpointSlice, Namespace) are decoded into their k8s-openapi
//!   types through `serde_ignored`, which reports the path of every field the type's
//!   deserializer skips. The types are those of the Kubernetes API version the operator is built
//!   for (k8s-openapi's `v1_33` feature), so a field added by a later Kubernetes is unknown here.
//! - Portway objects are walked against their CRD's structural schema, as the API server's
//!   pruning does (`properties`, `additionalProperties`, `items`,
//!   `x-kubernetes-preserve-unknown-fields`); `apiVersion` and `kind` are always known and
//!   `metadata` is an `ObjectMeta`, decoded strictly like a core object's.
//!
//! Paths are written as the API server writes them: `spec.ports[0].nme`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portway_crds::validation::{self, Kind};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Start of the reason of an object rejected for unknown fields (the API server's words).
pub const STRICT_DECODING_ERROR: &str = "strict decoding error";

/// Fields every object has besides those of its schema's root.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Decodes `doc` as `T` and returns it with the paths of the fields `T` does not have, sorted.
pub fn decode<T: DeserializeOwned>(doc: Value) -> Result<(T, Vec<String>), serde_json::Error> {
    let mut unknown = Vec::new();
    let obj = serde_ignored::deserialize(doc, |path| unknown.push(render(&path)))?;
    unknown.sort();
    Ok((obj, unknown))
}

/// Paths of the fields of a Portway object (a whole resource as JSON) that its CRD's schema
/// does not have, sorted.
pub fn unknown_crd_fields(kind: Kind, doc: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Value::Object(map) = doc {
        let schema = validation::schema(kind);
        for (key, value) in map {
            if key == "metadata" {
                // The API server decodes a custom resource's metadata as an ObjectMeta.
                // A metadata of the wrong shape is the schema check's to report.
                if let Ok((_, fields)) = decode::<ObjectMeta>(value.clone()) {
                    unknown.extend(fields.into_iter().map(|f| format!("metadata.{f}")));
                }
            } else if ROOT_FIELDS.contains(&key.as_str()) {
                continue;
            } else {
                walk_property(schema, key, value, "", &mut unknown);
            }
        }
    }
    unknown.sort();
    unknown
}

/// The reason an object with unknown fields is rejected, in the API server's words:
/// `strict decoding error: unknown field "spec.a", unknown field "spec.b"`.
pub fn reason(unknown: &[String]) -> String {
    let fields: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    format!("{STRICT_DECODING_ERROR}: {}", fields.join(", "))
}

/// Checks `value`, found under `key` of an object whose schema is `parent`.
fn walk_property(parent: &Value, key: &str, value: &Value, path: &str, out: &mut Vec<String>) {
    let field = if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    };
    if let Some(schema) = parent.get("properties").and_then(|p| p.get(key)) {
        walk(schema, value, &field, out);
        return;
    }
    match parent.get("additionalProperties") {
        Some(Value::Bool(true)) => {}
        // A map entry: the API server writes its path `matchLabels[key]`.
        Some(schema @ Value::Object(_)) => walk(schema, value, &format!("{path}[{key}]"), out),
        _ if preserves_unknown(parent) => {}
        _ => out.push(field),
    }
}

/// Checks `value` against `schema`, found at `path`.
fn walk(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                walk_property(schema, key, v, path, out);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
}

/// `spec.ports[0].nme` for serde_ignored's path.
fn render(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render(parent)),
        Path::Map { parent, key } => {
            let parent = render(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render(parent),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Node, Service};
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_fields_of_a_core_object_are_found_with_their_paths() {
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "lables": {"a": "b"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 81, "nme": "x"}],
                     "selector": {"any-key": "is a map entry"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipmode": "VIP"}]}},
        });
        let (decoded, unknown) = decode::<Service>(svc).expect("decodes");
        assert_eq!(
            unknown,
            [
                "metadata.lables",
                "spec.ports[1].nme",
                "status.loadBalancer.ingress[0].ipmode"
            ]
        );
        assert_eq!(decoded.metadata.name.as_deref(), Some("web"));
        let (_, unknown) = decode::<Node>(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n", "creationTimestamp": null, "labels": {"x": "y"}},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.2"}]},
        }))
        .expect("decodes");
        assert!(unknown.is_empty(), "{unknown:?}");
    }

    #[test]
    fn unknown_fields_of_a_portway_object_are_found_against_the_crd_schema() {
        let pool = json!({
            "apiVersion": "portway.dev/v1alpha1", "kind": "LoadBalancerPool",
            "metadata": {"name": "p", "annotatons": {}},
            "spec": {
                "serviceSelectr": {"matchLabels": {"a": "b"}},
                "nodeSelector": {"matchLabels": {"any.key/x": "v"},
                                 "matchExpressions": [{"key": "k", "operator": "Exists", "valeus": []}]},
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
            },
            "status": {"nodes": 1, "conditions": [{"type": "Ready", "status": "True", "reason": "R",
                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z", "extra": 1}]},
            "extra": true,
        });
        assert_eq!(
            unknown_crd_fields(Kind::LoadBalancerPool, &pool),
            [
                "extra",
                "metadata.annotatons",
                "spec.nodeSelector.matchExpressions[0].valeus",
                "spec.serviceSelectr",
                "status.conditions[0].extra",
            ]
        );
        assert_eq!(
            reason(&["spec.a".into(), "spec.b".into()]),
            r#"strict decoding error: unknown field "spec.a", unknown field "spec.b""#
        );
    }

    #[test]
    fn every_shipped_example_has_only_known_fields() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).expect("examples/") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|x| x != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
            for doc in docs {
                let kind = doc["kind"].as_str().unwrap_or_default();
                if let Some(k) = Kind::from_kind(kind) {
                    assert_eq!(unknown_crd_fields(k, &doc), Vec::<String>::new(), "{doc}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 4, "only {checked} Portway objects in examples/");
    }
}
