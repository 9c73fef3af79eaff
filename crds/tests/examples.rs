//! Every document in `examples/` deserializes into its type, and every Portway resource there
//! passes the same schema and CEL checks the API server applies.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use portway_crds::validation::{Kind, validate};
use portway_crds::{ClusterCIDR, LoadBalancerPool, ServiceLoadBalancer};
use serde_json::Value;

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn typed<T: serde::de::DeserializeOwned>(doc: &Value, file: &str) {
    if let Err(e) = serde_json::from_value::<T>(doc.clone()) {
        panic!(
            "{file}: {} does not deserialize: {e}",
            doc["metadata"]["name"]
        );
    }
}

#[test]
fn every_example_deserializes_and_validates() {
    let mut files: Vec<_> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "examples: {files:?}");
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for path in &files {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).expect("readable");
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Namespace" => typed::<Namespace>(&doc, &file),
                "Node" => typed::<Node>(&doc, &file),
                "Service" => typed::<Service>(&doc, &file),
                "EndpointSlice" => typed::<EndpointSlice>(&doc, &file),
                "LoadBalancerPool" => typed::<LoadBalancerPool>(&doc, &file),
                "ClusterCIDR" => typed::<ClusterCIDR>(&doc, &file),
                "ServiceLoadBalancer" => typed::<ServiceLoadBalancer>(&doc, &file),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
            if let Some(k) = Kind::from_kind(&kind)
                && let Err(e) = validate(k, &doc, None)
            {
                panic!("{file}: {e}");
            }
            *counts.entry(kind).or_default() += 1;
        }
    }
    for kind in [
        "Node",
        "Service",
        "EndpointSlice",
        "LoadBalancerPool",
        "ClusterCIDR",
    ] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) >= 2,
            "need several {kind}s: {counts:?}"
        );
    }
}
