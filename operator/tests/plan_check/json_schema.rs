//! `-o json` against the checked-in schemas (`docs/schemas/`): the examples, a plan with every
//! kind of problem, and a diff; and the schemas are strict enough to fail.

use serde_json::Value;

use super::support::{code, copy_of_examples, edit, folder, portway, root, stderr};

fn schema(name: &str) -> jsonschema::Validator {
    let path = root().join("docs/schemas").join(name);
    let text = std::fs::read_to_string(&path).expect("schema file");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::draft202012::new(&schema).expect("schema compiles")
}

fn errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path().as_str()))
        .collect()
}

fn json_of(args: &[&str]) -> Value {
    let out = portway(args);
    assert!(matches!(code(&out), 0 | 1), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

#[test]
fn plan_json_of_the_examples_matches_its_schema() {
    let v = schema("plan.schema.json");
    let doc = json_of(&["examples/", "-o", "json"]);
    assert_eq!(errors(&v, &doc), Vec::<String>::new());
    assert_eq!(doc["services"].as_array().map(Vec::len), Some(4));
    assert_eq!(doc["ignoredServices"][0]["name"], "cloud-lb");
    assert_eq!(doc["summary"]["servicesServed"], 4);
    assert_eq!(doc["summary"]["problems"], 0);
    let storefront = &doc["services"][3];
    assert_eq!(storefront["name"], "storefront");
    assert_eq!(storefront["state"], "serving");
    assert_eq!(
        storefront["nodes"],
        serde_json::json!(["worker-1", "worker-2"])
    );
    assert_eq!(storefront["ingress"][1]["ip"], "203.0.113.12");
    let kinds: Vec<&str> = doc["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    for kind in [
        "DaemonSet",
        "ServiceLoadBalancer",
        "Service",
        "RoleBinding",
        "LoadBalancerPool",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    assert_eq!(doc["nodes"][1]["podCIDRs"][0], "10.77.64.0/26");
}

#[test]
fn plan_json_with_rejections_problems_and_no_cidr_plan_matches_its_schema() {
    let yaml = r#"
apiVersion: v1
kind: Node
metadata: {name: w1}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: lost, namespace: shop, annotations: {portway.dev/pool: nowhere}}
spec: {type: LoadBalancer, clusterIP: 10.43.0.11, ports: [{port: 81, protocol: TCP}]}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: cm}}
- {apiVersion: portway.dev/v1alpha1, kind: ClusterCIDR, metadata: {name: c}, spec: {perNodeHostBits: 8, ipv4: 10.42.0.0/16, typo: 1}}
"#;
    let dir = folder(&[("a.yaml", yaml)]);
    let doc = json_of(&[dir.path().to_str().expect("UTF-8"), "-o", "json"]);
    assert_eq!(
        errors(&schema("plan.schema.json"), &doc),
        Vec::<String>::new()
    );
    assert_eq!(doc["rejected"].as_array().map(Vec::len), Some(2), "{doc:#}");
    assert!(
        doc["rejected"][1]["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("a.yaml#2.items[1]"))
    );
    let reasons: Vec<&str> = doc["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["Rejected", "Rejected", "PoolNotFound"]);
}

#[test]
fn the_schemas_reject_what_the_output_must_not_be() {
    let v = schema("plan.schema.json");
    let good = json_of(&["examples/", "-o", "json"]);
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut doc = good.clone();
        f(&mut doc);
        doc
    };
    for (what, doc) in [
        (
            "unknown state",
            broken(&|d| d["services"][0]["state"] = "fine".into()),
        ),
        (
            "wall-clock time",
            broken(&|d| d["time"] = "2026-05-01T10:00:00Z".into()),
        ),
        (
            "missing rejected",
            broken(&|d| {
                d.as_object_mut().map(|o| o.remove("rejected"));
            }),
        ),
        (
            "unlisted field",
            broken(&|d| d["services"][0]["extra"] = true.into()),
        ),
        (
            "source without #doc",
            broken(&|d| {
                d["rejected"] =
                    serde_json::json!([{"source": "a.yaml", "object": "x", "reason": "y"}]);
            }),
        ),
    ] {
        assert!(
            !errors(&v, &doc).is_empty(),
            "the schema accepts a plan with {what}"
        );
    }
    let d = schema("plan-diff.schema.json");
    let bad = serde_json::json!({
        "format": "portway.dev/plan-diff/v1", "from": "a", "to": "b",
        "services": [{"namespace": "n", "name": "s", "change": "added",
                      "nodesAdded": [], "nodesRemoved": [], "ingressAdded": [], "ingressRemoved": []}],
        "daemonSets": [], "pools": [], "nodes": [], "rejected": [], "problems": []
    });
    assert!(
        !errors(&d, &bad).is_empty(),
        "an added Service without `to` is accepted"
    );
}

#[test]
fn diff_json_matches_its_schema() {
    let b = copy_of_examples();
    edit(
        &b.path().join("pools.yaml"),
        "      portway.dev/site: plant-7\n  namespaceSelector:",
        "      portway.dev/site: plant-7\n      portway.dev/rack: r2\n  namespaceSelector:",
    );
    let doc = json_of(&[
        "--diff",
        "examples/",
        b.path().to_str().expect("UTF-8"),
        "-o",
        "json",
    ]);
    assert_eq!(
        errors(&schema("plan-diff.schema.json"), &doc),
        Vec::<String>::new()
    );
    assert!(
        !doc["services"].as_array().expect("services").is_empty(),
        "{doc:#}"
    );
    let same = json_of(&["--diff", "examples/", "examples/", "-o", "json"]);
    assert_eq!(
        errors(&schema("plan-diff.schema.json"), &same),
        Vec::<String>::new()
    );
}
