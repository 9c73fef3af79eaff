//! The CRDs checked in under `charts/portway/crds/` are exactly what the types generate, and they
//! are structural schemas: every node typed, no unexplained `x-kubernetes-preserve-unknown-fields`.

use std::path::PathBuf;

use portway_crds::generate;
use serde_json::Value;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/portway/crds")
}

#[test]
fn checked_in_crds_match_the_generator() {
    let rendered = generate::render_all().expect("CRDs render");
    let mut stale = Vec::new();
    for (name, yaml) in &rendered {
        let path = crd_dir().join(name);
        match std::fs::read_to_string(&path) {
            Ok(on_disk) if &on_disk == yaml => {}
            Ok(_) => stale.push(format!("{} differs", path.display())),
            Err(e) => stale.push(format!("{}: {e}", path.display())),
        }
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(crd_dir())
        .expect("charts/portway/crds exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = rendered.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    if on_disk != expected {
        stale.push(format!(
            "files on disk {on_disk:?}, generator makes {expected:?}"
        ));
    }
    assert!(
        stale.is_empty(),
        "CRDs drifted from the types; regenerate with `cargo run -p portway-crds --bin crdgen -- --write charts/portway/crds`:\n{}",
        stale.join("\n")
    );
}

/// Walks a schema and reports every node that is not structural.
fn check_structural(path: &str, schema: &Value, problems: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    if obj.contains_key("x-kubernetes-preserve-unknown-fields") {
        problems.push(format!("{path}: x-kubernetes-preserve-unknown-fields"));
    }
    for key in ["anyOf", "oneOf", "allOf", "not", "$ref"] {
        if obj.contains_key(key) {
            problems.push(format!("{path}: uses {key}"));
        }
    }
    if !obj.contains_key("type") && !obj.contains_key("x-kubernetes-int-or-string") {
        problems.push(format!("{path}: no type"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            check_structural(&format!("{path}.{k}"), v, problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(&format!("{path}[]"), items, problems);
    }
    if let Some(additional) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        check_structural(&format!("{path}{{}}"), additional, problems);
    }
}

#[test]
fn crds_are_structural() {
    for crd in generate::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let version = &crd.spec.versions[0];
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("schema"),
        )
        .expect("json");
        let mut problems = Vec::new();
        check_structural(&name, &schema, &mut problems);
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert_eq!(crd.spec.group, "portway.dev");
        assert!(
            crd.spec
                .names
                .categories
                .as_ref()
                .is_some_and(|c| c.contains(&"portway".into())),
            "{name}: category"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}: short name"
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3),
            "{name}: printer columns"
        );
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: status subresource"
        );
    }
}
