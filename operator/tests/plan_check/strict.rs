//! Strict like the API server: unknown fields (Portway and core objects) and duplicate objects
//! are rejected, keeping the `# skipped <object> (<file>#<doc>): <reason>` form, and are in the
//! JSON output too.

use portway_operator::cli::plan::Format;
use serde_json::Value;

use super::support::{folder, render};

const NODES: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: w1, labels: {role: worker}}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: w2, labels: {role: storage}}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
"#;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {type: LoadBalancer, clusterIP: 10.43.0.10, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {type: LoadBalancer, clusterIP: 10.43.0.11, ports: [{name: pg, port: 5432, protocol: TCP}]}
"#;

/// The issue's first case: `serviceSelectr` would make the pool serve every Service.
const MISSPELT_POOL: &str = r#"
apiVersion: portway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: web-only}
spec:
  nodeSelector: {matchLabels: {role: worker}}
  serviceSelectr: {matchLabels: {app: web}}
"#;

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON")
}

#[test]
fn a_misspelt_pool_field_rejects_the_pool_with_the_field_path() {
    let dir = folder(&[
        ("nodes.yaml", NODES),
        ("pool.yaml", MISSPELT_POOL),
        ("services.yaml", SERVICES),
    ]);
    let pool = dir.path().join("pool.yaml");
    let yaml = render(&[dir.path().to_owned()], Format::Yaml);
    let want = format!(
        "# skipped LoadBalancerPool/web-only ({}#0): strict decoding error: unknown field \"spec.serviceSelectr\"\n",
        pool.display()
    );
    assert!(yaml.contains(&want), "no {want:?} in\n{yaml}");
    // Not used: no Service is served by it (it would have served both).
    let doc = json(&render(&[dir.path().to_owned()], Format::Json));
    assert_eq!(doc["pools"], serde_json::json!([]));
    let states: Vec<(&str, &str)> = doc["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or("?"),
                s["reason"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        states,
        [("db", "NoMatchingPool"), ("web", "NoMatchingPool")]
    );
    assert_eq!(doc["rejected"][0]["object"], "LoadBalancerPool/web-only");
    assert_eq!(
        doc["rejected"][0]["reason"],
        "strict decoding error: unknown field \"spec.serviceSelectr\""
    );
}

#[test]
fn unknown_fields_in_core_objects_metadata_and_status_are_rejected() {
    let bad = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, lables: {app: web}}
spec: {type: LoadBalancer, clusterIP: 10.43.0.10, ports: [{name: http, port: 80, protocl: TCP}]}
---
apiVersion: v1
kind: Node
metadata: {name: w3}
status: {addresses: [{type: InternalIP, address: 192.168.0.3}], adresses: []}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.42.0.5], conditions: {ready: true}, nodeName: w1, nodname: w1}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
spec: {finalizers: [kubernetes]}
status: {phase: Active}
"#;
    let dir = folder(&[("nodes.yaml", NODES), ("bad.yaml", bad)]);
    let file = dir.path().join("bad.yaml");
    let yaml = render(&[dir.path().to_owned()], Format::Yaml);
    for (doc, object, fields) in [
        (
            0,
            "Service/shop/web",
            r#"unknown field "metadata.lables", unknown field "spec.ports[0].protocl""#,
        ),
        (1, "Node/w3", r#"unknown field "status.adresses""#),
        (
            2,
            "EndpointSlice/shop/web-1",
            r#"unknown field "endpoints[0].nodname""#,
        ),
    ] {
        let want = format!(
            "# skipped {object} ({}#{doc}): strict decoding error: {fields}\n",
            file.display()
        );
        assert!(yaml.contains(&want), "no {want:?} in\n{yaml}");
    }
    // The Namespace's spec and status are known fields: it is used.
    assert!(!yaml.contains("Namespace/shop"), "{yaml}");
    assert_eq!(yaml.matches("# skipped").count(), 3, "{yaml}");
}

#[test]
fn a_duplicate_node_is_an_error_naming_both_files_and_used_in_neither_order() {
    let svc = r#"
apiVersion: portway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: all}
spec: {nodeSelector: {}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {type: LoadBalancer, clusterIP: 10.43.0.10, ports: [{name: http, port: 80, protocol: TCP}]}
"#;
    let one = "apiVersion: v1\nkind: Node\nmetadata: {name: dup}\nstatus: {addresses: [{type: InternalIP, address: 192.0.2.1}]}\n";
    let other = "apiVersion: v1\nkind: Node\nmetadata: {name: dup}\nstatus: {addresses: [{type: InternalIP, address: 192.0.2.99}]}\n";
    let extra = "apiVersion: v1\nkind: Node\nmetadata: {name: other}\nstatus: {addresses: [{type: InternalIP, address: 192.0.2.7}]}\n";
    let dir = folder(&[
        ("a.yaml", one),
        ("b.yaml", &format!("{extra}---\n{other}")),
        ("svc.yaml", svc),
    ]);
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    let forward = render(
        &[a.clone(), b.clone(), dir.path().join("svc.yaml")],
        Format::Yaml,
    );
    let backward = render(
        &[dir.path().join("svc.yaml"), b.clone(), a.clone()],
        Format::Yaml,
    );
    assert_eq!(forward, backward, "the order of files matters");
    for (at, other) in [
        (format!("{}#0", a.display()), format!("{}#1", b.display())),
        (format!("{}#1", b.display()), format!("{}#0", a.display())),
    ] {
        let want = format!(
            "# skipped Node/dup ({at}): duplicate object: the same apiVersion, kind, namespace and name are also in {other}; no copy is used\n"
        );
        assert!(forward.contains(&want), "no {want:?} in\n{forward}");
    }
    // Neither address is published: only the other Node's.
    assert!(forward.contains("ingress 192.0.2.7\n"), "{forward}");
    assert!(
        !forward.contains("192.0.2.1\n") && !forward.contains("192.0.2.99"),
        "{forward}"
    );
    let doc = json(&render(&[dir.path().to_owned()], Format::Json));
    let dups: Vec<&str> = doc["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .filter_map(|r| r["source"].as_str())
        .collect();
    assert_eq!(dups.len(), 2, "{doc:#}");
    // The node list of the pod CIDR plan is computed without the duplicate too.
    assert!(doc.get("podCIDRError").is_none(), "{doc:#}");
}
