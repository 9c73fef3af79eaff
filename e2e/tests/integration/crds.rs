//! The CRDs install on a real API server and every example applies cleanly.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use portway_crds::{ClusterCIDR, LoadBalancerPool, ServiceLoadBalancer};
use portway_e2e::apply::{self, Applier, Document};
use portway_e2e::envtest::{self, CRD_DIR, FIELD_MANAGER};
use portway_e2e::{TestEnv, report};
use serde::de::DeserializeOwned;

fn condition<'a>(crd: &'a CustomResourceDefinition, type_: &str) -> Option<&'a str> {
    crd.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

#[tokio::test]
async fn crds_install_and_become_established() {
    let Some(env) = TestEnv::start_or_skip("crds_install_and_become_established").await else {
        return;
    };
    let client = env.client();
    let on_disk =
        apply::read_documents(&[envtest::workspace_root().join(CRD_DIR)]).expect("CRD files read");
    let generated: BTreeMap<String, CustomResourceDefinition> = portway_crds::generate::crds()
        .into_iter()
        .map(|c| (c.name_any(), c))
        .collect();
    assert_eq!(on_disk.len(), generated.len(), "one file per generated CRD");
    assert_eq!(env.installed_crds().len(), generated.len());

    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (name, want) in &generated {
        let got = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(condition(&got, "Established"), Some("True"), "{name}");
        assert_eq!(condition(&got, "NamesAccepted"), Some("True"), "{name}");
        // The server marks schemas it cannot treat as structural; there must be none.
        assert_eq!(condition(&got, "NonStructuralSchema"), None, "{name}");
        let accepted = got
            .status
            .as_ref()
            .and_then(|s| s.accepted_names.as_ref())
            .expect("accepted names");
        assert_eq!(accepted.kind, want.spec.names.kind, "{name}");
        assert_eq!(accepted.short_names, want.spec.names.short_names, "{name}");
        assert_eq!(accepted.categories, want.spec.names.categories, "{name}");
        let versions: Vec<_> = got
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        assert_eq!(versions, [("v1alpha1", true, true)], "{name}");
        // The server stored the schema we sent (no pruning of unknown schema keywords).
        assert_eq!(
            got.spec.versions[0].schema, want.spec.versions[0].schema,
            "{name}: stored schema differs from the generated one"
        );
    }

    // The typed clients of the API types talk to the installed CRDs.
    let ns = env.namespace("crds").await.expect("namespace");
    let pools = Api::<LoadBalancerPool>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list LoadBalancerPools");
    let cidrs = Api::<ClusterCIDR>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list ClusterCIDRs");
    let slbs = Api::<ServiceLoadBalancer>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("list ServiceLoadBalancers");
    assert_eq!(pools.items.len() + cidrs.items.len() + slbs.items.len(), 0);
    let t = env.timings();
    report::line(&format!(
        "api-server crds: {} installed and Established (etcd {:?}, apiserver ready {:?}, CRDs {:?})",
        generated.len(),
        t.etcd_ready,
        t.apiserver_ready,
        t.crds_established
    ));
}

fn examples_dir() -> PathBuf {
    envtest::workspace_root().join("examples")
}

fn count_by_kind(docs: &[Document]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for d in docs {
        *counts.entry(d.kind().to_owned()).or_default() += 1;
    }
    counts
}

async fn stored<K>(client: &Client, doc: &Document) -> K
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = doc.value["metadata"]["name"].as_str().expect("name");
    Api::<K>::all(client.clone())
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", doc.describe()))
}

#[tokio::test]
async fn examples_apply_cleanly() {
    let Some(env) = TestEnv::start_or_skip("examples_apply_cleanly").await else {
        return;
    };
    let client = env.client();
    let docs = apply::read_documents(&[examples_dir()]).expect("examples read");
    let counts = count_by_kind(&docs);
    for kind in [
        "Namespace",
        "Node",
        "Service",
        "EndpointSlice",
        "LoadBalancerPool",
        "ClusterCIDR",
    ] {
        assert!(
            counts.get(kind).is_some_and(|n| *n > 0),
            "examples have no {kind}"
        );
    }

    let mut applier = Applier::new(client.clone(), FIELD_MANAGER);
    let applied = applier
        .apply_all(&docs, None)
        .await
        .unwrap_or_else(|e| panic!("examples/ does not apply: {e}"));
    assert_eq!(applied.len(), docs.len());

    // Everything is stored, with what the files say.
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("namespaces");
    for doc in docs.iter().filter(|d| d.kind() == "Namespace") {
        let name = doc.value["metadata"]["name"].as_str().expect("name");
        assert!(
            namespaces.items.iter().any(|n| n.name_any() == name),
            "{name}"
        );
    }
    for doc in docs.iter().filter(|d| d.kind() == "Node") {
        let node: Node = stored(&client, doc).await;
        let want = doc.value["status"]["addresses"]
            .as_array()
            .map_or(0, Vec::len);
        let got = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map_or(0, Vec::len);
        assert_eq!(
            got,
            want,
            "{}: status.addresses written through /status",
            doc.describe()
        );
        let pod_cidrs = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidrs.clone())
            .unwrap_or_default();
        let want_cidrs: Vec<String> = doc.value["spec"]["podCIDRs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(pod_cidrs, want_cidrs, "{}", doc.describe());
    }
    for doc in docs.iter().filter(|d| d.kind() == "Service") {
        let ns = doc.value["metadata"]["namespace"]
            .as_str()
            .expect("namespace");
        let name = doc.value["metadata"]["name"].as_str().expect("name");
        let svc = Api::<Service>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .expect("service");
        let spec = svc.spec.expect("spec");
        let want: Vec<String> = doc.value["spec"]["clusterIPs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            spec.cluster_ips.unwrap_or_default(),
            want,
            "{}",
            doc.describe()
        );
    }
    for doc in docs.iter().filter(|d| d.kind() == "EndpointSlice") {
        let ns = doc.value["metadata"]["namespace"]
            .as_str()
            .expect("namespace");
        let name = doc.value["metadata"]["name"].as_str().expect("name");
        let slice = Api::<EndpointSlice>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .expect("endpointslice");
        let want = doc.value["endpoints"].as_array().map_or(0, Vec::len);
        assert_eq!(slice.endpoints.len(), want, "{}", doc.describe());
    }
    // Portway objects come back with exactly the spec the types read from the file: the
    // server's defaulting agrees with serde's defaults.
    for doc in docs.iter().filter(|d| d.kind() == "LoadBalancerPool") {
        let from_file: LoadBalancerPool =
            serde_json::from_value(doc.value.clone()).expect("file parses");
        let got: LoadBalancerPool = stored(&client, doc).await;
        assert_eq!(got.spec, from_file.spec, "{}", doc.describe());
    }
    for doc in docs.iter().filter(|d| d.kind() == "ClusterCIDR") {
        let from_file: ClusterCIDR =
            serde_json::from_value(doc.value.clone()).expect("file parses");
        let got: ClusterCIDR = stored(&client, doc).await;
        assert_eq!(got.spec, from_file.spec, "{}", doc.describe());
    }
    report::line(&format!(
        "api-server examples: {} documents applied ({})",
        docs.len(),
        counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
}

/// `examples/k3s/` describes a different cluster (a K3s one, input of `portway migrate`). Its
/// core objects apply to a real server; its upstream `networking.k8s.io/v1alpha1` ClusterCIDR
/// does not, because Kubernetes removed that API in 1.29 (which is why Portway brings it back).
#[tokio::test]
async fn k3s_example_cluster_applies() {
    let Some(env) = TestEnv::start_or_skip("k3s_example_cluster_applies").await else {
        return;
    };
    let client = env.client();
    let docs = apply::read_documents(&[examples_dir().join("k3s")]).expect("examples/k3s read");
    let (upstream, core): (Vec<Document>, Vec<Document>) = docs
        .into_iter()
        .partition(|d| d.value["apiVersion"] == "networking.k8s.io/v1alpha1");
    assert!(
        !upstream.is_empty(),
        "examples/k3s has an upstream ClusterCIDR"
    );
    assert!(!core.is_empty());

    // A K3s cluster has these namespaces; this server has only the built-in ones.
    let mut namespaces: Vec<&str> = core
        .iter()
        .filter_map(|d| d.value["metadata"]["namespace"].as_str())
        .collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        if ns_api.get_opt(ns).await.expect("get namespace").is_none() {
            let doc = Document {
                source: "test".into(),
                value: serde_json::json!({
                    "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
                }),
            };
            Applier::new(client.clone(), FIELD_MANAGER)
                .apply(&doc, None)
                .await
                .expect("namespace");
        }
    }
    let mut applier = Applier::new(client.clone(), FIELD_MANAGER);
    let applied = applier
        .apply_all(&core, None)
        .await
        .unwrap_or_else(|e| panic!("examples/k3s does not apply: {e}"));
    assert_eq!(applied.len(), core.len());

    for doc in &upstream {
        let err = applier
            .apply(doc, None)
            .await
            .expect_err("networking.k8s.io/v1alpha1 ClusterCIDR is not served since 1.29");
        assert!(
            matches!(
                &err,
                apply::ApplyError::Kube {
                    what: "discovering the kind",
                    ..
                }
            ),
            "{}: expected the kind to be unknown to the server, got: {err}",
            doc.describe()
        );
    }
    report::line(&format!(
        "api-server examples/k3s: {} documents applied; {} upstream ClusterCIDR refused (API removed in 1.29)",
        core.len(),
        upstream.len()
    ));
}
