//! `portway migrate` on K3s-labelled Nodes and Services: the pools and annotations it prints make
//! Portway serve every Service from exactly the nodes K3s ServiceLB serves it from
//! (k3s-io/k3s `pkg/cloudprovider/servicelb.go`), for hand-written cases, for `examples/k3s/`,
//! and for arbitrary label assignments (proptest). Pure: no cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::api::core::v1::{Node, Service};
use portway_crds::names::{POOL_ANNOTATION, k3s};
use portway_crds::validation::{Kind, validate};
use portway_crds::{LoadBalancerPool, NodeAddressType};
use portway_operator::input::{InputSet, read_paths};
use portway_operator::migrate::servicelb::{
    DEFAULT_POOL, K3sMode, k3s_serving_nodes, pool_name_for,
};
use portway_operator::migrate::{Migration, migrate, render};
use proptest::prelude::*;
use serde_json::{Value, json};

fn node(name: &str, labels: &[(&str, &str)], external: bool) -> Node {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let mut addresses = vec![json!({"type": "InternalIP", "address": "192.168.1.1"})];
    if external {
        addresses.push(json!({"type": "ExternalIP", "address": "203.0.113.1"}));
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": addresses},
    }))
    .expect("node")
}

fn lb_service(ns: &str, name: &str, labels: &[(&str, &str)]) -> Service {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
    }))
    .expect("service")
}

fn labels(meta: &kube::api::ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn pool<'a>(m: &'a Migration, name: &str) -> &'a LoadBalancerPool {
    m.pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no pool {name} in {:?}", pool_names(m)))
}

fn pool_names(m: &Migration) -> Vec<String> {
    m.pools
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// Nodes a pool's node selector picks, sorted.
fn pool_nodes(p: &LoadBalancerPool, nodes: &[Node]) -> Vec<String> {
    let mut v: Vec<String> = nodes
        .iter()
        .filter(|n| p.spec.node_selector.matches(&labels(&n.metadata)))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    v.sort();
    v
}

/// Portway's pool choice without annotations: among auto-assign pools whose Service selector
/// matches (no namespace selectors here), the highest priority, then the smallest name.
fn chosen_by_selectors<'a>(pools: &'a [LoadBalancerPool], svc: &Service) -> Option<&'a str> {
    let svc_labels = labels(&svc.metadata);
    pools
        .iter()
        .filter(|p| p.spec.auto_assign)
        .filter(|p| {
            p.spec
                .service_selector
                .as_ref()
                .is_none_or(|s| s.matches(&svc_labels))
        })
        .min_by(|a, b| {
            b.spec
                .priority
                .cmp(&a.spec.priority)
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        })
        .and_then(|p| p.metadata.name.as_deref())
}

/// The core claim: for every K3s LoadBalancer Service, the pool it is pinned to AND the pool
/// Portway's selectors would choose without the pin both select exactly K3s' nodes.
fn assert_equivalent(nodes: &[Node], services: &[Service], m: &Migration) {
    for svc in services
        .iter()
        .filter(|s| portway_operator::migrate::servicelb::is_k3s_load_balancer(s))
    {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let expected = k3s_serving_nodes(nodes, svc);
        let pin = m
            .pins
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("Service {name} has no pin"));
        assert_eq!(pin.k3s_nodes, expected, "Service {name}");
        assert_eq!(
            pool_nodes(pool(m, &pin.pool), nodes),
            expected,
            "Service {name} pinned to {}",
            pin.pool
        );
        let chosen = chosen_by_selectors(&m.pools, svc)
            .unwrap_or_else(|| panic!("no pool selects Service {name}"));
        assert_eq!(chosen, pin.pool, "selectors and pin disagree for {name}");
    }
}

fn assert_pools_valid(m: &Migration) {
    for p in &m.pools {
        let v = serde_json::to_value(p).expect("pool serializes");
        validate(Kind::LoadBalancerPool, &v, None)
            .unwrap_or_else(|e| panic!("pool {:?} is invalid: {e}", p.metadata.name));
    }
}

#[test]
fn without_enablelb_every_node_serves_and_lbpool_is_ignored() {
    let nodes = vec![
        node("a", &[], false),
        node("b", &[(k3s::LB_POOL_LABEL, "x")], false),
        node(
            "c",
            &[("node-role.kubernetes.io/control-plane", "true")],
            false,
        ),
    ];
    let services = vec![
        lb_service("default", "plain", &[]),
        lb_service("default", "pooled", &[(k3s::LB_POOL_LABEL, "x")]),
    ];
    let m = migrate(&nodes, &services, &[]);
    assert_eq!(m.mode, K3sMode::AllNodes);
    assert_eq!(pool_names(&m), vec![DEFAULT_POOL]);
    assert!(pool(&m, DEFAULT_POOL).spec.node_selector.is_empty());
    assert_eq!(m.pins.len(), 2);
    assert!(m.pins.iter().all(|p| p.pool == DEFAULT_POOL));
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("default/pooled") && n.contains("has no effect")),
        "{:?}",
        m.notes
    );
    assert_equivalent(&nodes, &services, &m);
    assert_pools_valid(&m);
}

#[test]
fn enablelb_restricts_to_true_nodes_and_lbpool_narrows_further() {
    let nodes = vec![
        node("server", &[], false),
        node(
            "a1",
            &[(k3s::ENABLE_LB_LABEL, "true"), (k3s::LB_POOL_LABEL, "dmz")],
            false,
        ),
        node("a2", &[(k3s::ENABLE_LB_LABEL, "true")], false),
        node(
            "a3",
            &[(k3s::ENABLE_LB_LABEL, "false"), (k3s::LB_POOL_LABEL, "dmz")],
            false,
        ),
        node(
            "a4",
            &[(k3s::ENABLE_LB_LABEL, "true"), (k3s::LB_POOL_LABEL, "lab")],
            false,
        ),
    ];
    let services = vec![
        lb_service("default", "plain", &[]),
        lb_service("default", "dmz", &[(k3s::LB_POOL_LABEL, "dmz")]),
        lb_service("default", "empty-pool", &[(k3s::LB_POOL_LABEL, "")]),
        lb_service("default", "nowhere", &[(k3s::LB_POOL_LABEL, "factory")]),
    ];
    let m = migrate(&nodes, &services, &[]);
    assert_eq!(m.mode, K3sMode::EnableLbLabels);
    assert_eq!(
        pool_names(&m),
        vec![
            "k3s-lbpool-dmz",
            "k3s-lbpool-factory",
            "k3s-lbpool-lab",
            DEFAULT_POOL
        ]
    );
    assert_eq!(
        pool_nodes(pool(&m, DEFAULT_POOL), &nodes),
        vec!["a1", "a2", "a4"]
    );
    // a3 has lbpool=dmz but enablelb=false: K3s does not use it.
    assert_eq!(pool_nodes(pool(&m, "k3s-lbpool-dmz"), &nodes), vec!["a1"]);
    assert!(pool_nodes(pool(&m, "k3s-lbpool-factory"), &nodes).is_empty());
    let pin = |name: &str| {
        m.pins
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.pool.clone())
    };
    assert_eq!(pin("plain").as_deref(), Some(DEFAULT_POOL));
    assert_eq!(pin("empty-pool").as_deref(), Some(DEFAULT_POOL));
    assert_eq!(pin("dmz").as_deref(), Some("k3s-lbpool-dmz"));
    assert_eq!(pin("nowhere").as_deref(), Some("k3s-lbpool-factory"));
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("default/nowhere") && n.contains("NoNodes")),
        "{:?}",
        m.notes
    );
    assert_equivalent(&nodes, &services, &m);
    assert_pools_valid(&m);
}

#[test]
fn enablelb_false_everywhere_means_no_node_serves() {
    let nodes = vec![
        node("a", &[(k3s::ENABLE_LB_LABEL, "false")], false),
        node("b", &[], false),
    ];
    let services = vec![lb_service("default", "s", &[])];
    let m = migrate(&nodes, &services, &[]);
    assert_eq!(m.mode, K3sMode::EnableLbLabels);
    assert!(pool_nodes(pool(&m, DEFAULT_POOL), &nodes).is_empty());
    assert!(k3s_serving_nodes(&nodes, &services[0]).is_empty());
    assert_equivalent(&nodes, &services, &m);
}

#[test]
fn other_classes_cluster_ips_and_existing_annotations_are_left_alone() {
    let nodes = vec![node("a", &[], false)];
    let mut classed = lb_service("default", "classed", &[]);
    if let Some(spec) = classed.spec.as_mut() {
        spec.load_balancer_class = Some("example.com/other".into());
    }
    let mut cluster_ip = lb_service("default", "internal", &[]);
    if let Some(spec) = cluster_ip.spec.as_mut() {
        spec.type_ = Some("ClusterIP".into());
    }
    let mut same = lb_service("default", "same", &[]);
    same.metadata.annotations = Some(BTreeMap::from([(
        POOL_ANNOTATION.to_owned(),
        DEFAULT_POOL.to_owned(),
    )]));
    let mut other = lb_service("default", "other", &[]);
    other.metadata.annotations = Some(BTreeMap::from([(
        POOL_ANNOTATION.to_owned(),
        "mine".to_owned(),
    )]));
    let m = migrate(&nodes, &[classed, cluster_ip, same, other], &[]);
    assert!(m.pins.is_empty(), "{:?}", m.pins);
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("default/classed") && n.contains("example.com/other"))
    );
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("default/other") && n.contains("kept"))
    );
    assert!(!m.notes.iter().any(|n| n.contains("default/internal")));
}

#[test]
fn mixed_external_addresses_publish_external_only_like_k3s() {
    let nodes = vec![node("a", &[], true), node("b", &[], false)];
    let m = migrate(&nodes, &[], &[]);
    assert_eq!(
        pool(&m, DEFAULT_POOL).spec.address_types,
        vec![NodeAddressType::ExternalIP]
    );
    assert!(m.notes.iter().any(|n| n.contains("ExternalIP")));
    // All or none with an ExternalIP: Portway's default order gives K3s' answer.
    for external in [true, false] {
        let nodes = vec![node("a", &[], external), node("b", &[], external)];
        let m = migrate(&nodes, &[], &[]);
        assert_eq!(
            pool(&m, DEFAULT_POOL).spec.address_types,
            vec![NodeAddressType::ExternalIP, NodeAddressType::InternalIP]
        );
    }
}

#[test]
fn awkward_lbpool_values_get_valid_distinct_pool_names() {
    let values = ["Edge", "edge", "plant_7", "a.b", &"x".repeat(63)];
    let nodes: Vec<Node> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            node(
                &format!("n{i}"),
                &[(k3s::ENABLE_LB_LABEL, "true"), (k3s::LB_POOL_LABEL, v)],
                false,
            )
        })
        .collect();
    let services: Vec<Service> = values
        .iter()
        .enumerate()
        .map(|(i, v)| lb_service("default", &format!("s{i}"), &[(k3s::LB_POOL_LABEL, v)]))
        .collect();
    let m = migrate(&nodes, &services, &[]);
    let mut names = pool_names(&m);
    names.dedup();
    assert_eq!(names.len(), values.len() + 1, "{names:?}");
    for v in values {
        assert!(pool_name_for(v).len() <= 63);
    }
    assert_equivalent(&nodes, &services, &m);
    assert_pools_valid(&m);
}

#[test]
fn rendered_yaml_reads_back_as_valid_objects() {
    let nodes = vec![
        node(
            "a1",
            &[(k3s::ENABLE_LB_LABEL, "true"), (k3s::LB_POOL_LABEL, "dmz")],
            true,
        ),
        node("a2", &[(k3s::ENABLE_LB_LABEL, "true")], true),
    ];
    let services = vec![
        lb_service("web", "shop", &[(k3s::LB_POOL_LABEL, "dmz")]),
        lb_service("kube-system", "traefik", &[]),
    ];
    let m = migrate(&nodes, &services, &[]);
    let yaml = render::yaml_stream(&m, "test").expect("renders");
    assert!(yaml.contains("kubectl apply --server-side"), "{yaml}");
    let mut set = InputSet::default();
    set.add_yaml("out.yaml", &yaml).expect("output is YAML");
    assert!(set.skipped.is_empty(), "{:?}", set.skipped);
    assert_eq!(set.pools, m.pools);
    let annotated: BTreeMap<String, String> = set
        .services
        .iter()
        .map(|s| {
            (
                format!(
                    "{}/{}",
                    s.metadata.namespace.as_deref().unwrap_or_default(),
                    s.metadata.name.as_deref().unwrap_or_default()
                ),
                s.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(POOL_ANNOTATION))
                    .cloned()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        annotated,
        BTreeMap::from([
            ("kube-system/traefik".to_owned(), DEFAULT_POOL.to_owned()),
            ("web/shop".to_owned(), "k3s-lbpool-dmz".to_owned()),
        ])
    );
    // Service documents carry nothing but identity and the annotation (server-side apply safe).
    for s in &set.services {
        assert!(s.spec.is_none() && s.status.is_none() && s.metadata.labels.is_none());
    }
}

fn examples_k3s() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/k3s")
}

#[test]
fn examples_k3s_folder_converts() {
    let set = read_paths(&[examples_k3s()]).expect("examples/k3s reads");
    assert!(set.skipped.is_empty(), "{:?}", set.skipped);
    let m = migrate(&set.nodes, &set.services, &set.upstream_cluster_cidrs);
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    assert_eq!(m.mode, K3sMode::EnableLbLabels);
    assert_eq!(
        pool_names(&m),
        vec!["k3s-lbpool-dmz", "k3s-lbpool-factory", DEFAULT_POOL]
    );
    let pins: BTreeMap<String, (String, Vec<String>)> = m
        .pins
        .iter()
        .map(|p| {
            (
                format!("{}/{}", p.namespace, p.name),
                (p.pool.clone(), p.k3s_nodes.clone()),
            )
        })
        .collect();
    let nodes = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        pins,
        BTreeMap::from([
            (
                "iot/mqtt".to_owned(),
                ("k3s-lbpool-factory".to_owned(), vec![])
            ),
            (
                "kube-system/traefik".to_owned(),
                (
                    DEFAULT_POOL.to_owned(),
                    nodes(&["k3s-agent-1", "k3s-agent-2", "k3s-agent-3"])
                )
            ),
            (
                "web/shop".to_owned(),
                (
                    "k3s-lbpool-dmz".to_owned(),
                    nodes(&["k3s-agent-1", "k3s-agent-2"])
                )
            ),
        ])
    );
    // k3s-agent-3 has no ExternalIP: K3s advertises only the others' ExternalIPs.
    assert_eq!(
        pool(&m, DEFAULT_POOL).spec.address_types,
        vec![NodeAddressType::ExternalIP]
    );
    assert_eq!(m.cluster_cidrs.len(), 1);
    let cidr = &m.cluster_cidrs[0];
    assert_eq!(cidr.metadata.name.as_deref(), Some("edge-pods"));
    assert_eq!(cidr.spec.ipv4.as_deref(), Some("10.42.0.0/16"));
    assert_eq!(cidr.spec.ipv6.as_deref(), Some("fd00:42::/56"));
    assert_equivalent(&set.nodes, &set.services, &m);
    assert_pools_valid(&m);
    let cidr_json = serde_json::to_value(cidr).expect("serializes");
    validate(Kind::ClusterCIDR, &cidr_json, None).expect("converted ClusterCIDR is valid");
}

#[test]
fn the_binary_prints_an_applyable_stream_and_fails_cleanly_on_bad_input() {
    let bin = env!("CARGO_BIN_EXE_portway");
    let out = Command::new(bin)
        .args(["migrate"])
        .arg(examples_k3s())
        .output()
        .expect("portway runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&stdout).expect("stdout is YAML");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "LoadBalancerPool",
            "LoadBalancerPool",
            "LoadBalancerPool",
            "Service",
            "Service",
            "Service",
            "ClusterCIDR"
        ]
    );

    // An upstream ClusterCIDR that cannot convert: exit 1, nothing on stdout, the reason on stderr.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: networking.k8s.io/v1alpha1\nkind: ClusterCIDR\nmetadata: {name: broken}\nspec: {perNodeHostBits: 8, ipv4: not-a-cidr}\n",
    )
    .expect("write");
    let out = Command::new(bin)
        .args(["migrate"])
        .arg(dir.path())
        .output()
        .expect("portway runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken"));
    let out = Command::new(bin)
        .args(["migrate", "--keep-going"])
        .arg(dir.path())
        .output()
        .expect("portway runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT CONVERTED"));

    // A path that does not exist: exit 2.
    let out = Command::new(bin)
        .args(["migrate", "/nonexistent/pwi-k3s"])
        .output()
        .expect("portway runs");
    assert_eq!(out.status.code(), Some(2));
}

/// Arbitrary K3s clusters: up to 8 nodes, each with or without `enablelb` (true, false, other)
/// and an `lbpool` out of a few values; up to 6 Services with or without an `lbpool`.
fn arb_cluster() -> impl Strategy<Value = (Vec<Node>, Vec<Service>)> {
    let enable = prop_oneof![
        Just(None),
        Just(Some("true")),
        Just(Some("false")),
        Just(Some("yes"))
    ];
    let pool = prop_oneof![
        Just(None),
        Just(Some("")),
        Just(Some("a")),
        Just(Some("b")),
        Just(Some("C_c"))
    ];
    let nodes = prop::collection::vec((enable, pool.clone(), any::<bool>()), 0..8);
    let services = prop::collection::vec(pool, 0..6);
    (nodes, services).prop_map(|(ns, ss)| {
        let nodes = ns
            .into_iter()
            .enumerate()
            .map(|(i, (e, p, ext))| {
                let mut l = Vec::new();
                if let Some(e) = e {
                    l.push((k3s::ENABLE_LB_LABEL, e));
                }
                if let Some(p) = p {
                    l.push((k3s::LB_POOL_LABEL, p));
                }
                node(&format!("n{i}"), &l, ext)
            })
            .collect();
        let services = ss
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let l: Vec<(&str, &str)> = p.map(|p| (k3s::LB_POOL_LABEL, p)).into_iter().collect();
                lb_service("default", &format!("s{i}"), &l)
            })
            .collect();
        (nodes, services)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_k3s_labelling_is_reproduced((nodes, services) in arb_cluster()) {
        let m = migrate(&nodes, &services, &[]);
        assert_equivalent(&nodes, &services, &m);
        assert_pools_valid(&m);
        prop_assert_eq!(m.pins.len(), services.len());
        prop_assert_eq!(&m, &migrate(&nodes, &services, &[]));
    }
}

/// The operator's own core (`portway plan`'s) picks the pool each pin names, from the selectors
/// and priorities alone and with the annotations applied.
#[test]
fn the_operator_core_assigns_the_same_pools() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use portway_operator::plan::{Config, desired_state};

    let set = read_paths(&[examples_k3s()]).expect("examples/k3s reads");
    let m = migrate(&set.nodes, &set.services, &set.upstream_cluster_cidrs);
    let config = Config::new(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    for annotate in [false, true] {
        let mut input = InputSet {
            nodes: set.nodes.clone(),
            services: set.services.clone(),
            pools: m.pools.clone(),
            ..InputSet::default()
        };
        if annotate {
            for pin in &m.pins {
                let svc = input
                    .services
                    .iter_mut()
                    .find(|s| s.metadata.name.as_deref() == Some(pin.name.as_str()))
                    .expect("pinned Service exists");
                svc.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(POOL_ANNOTATION.to_owned(), pin.pool.clone());
            }
        }
        let desired = desired_state(&portway_operator::cli::plan::observed(&input), &config);
        for pin in &m.pins {
            let plan = desired
                .services
                .iter()
                .find(|p| p.service.name == pin.name && p.service.namespace == pin.namespace)
                .unwrap_or_else(|| {
                    panic!("the core does not serve {}/{}", pin.namespace, pin.name)
                });
            assert_eq!(
                plan.pool.as_deref(),
                Some(pin.pool.as_str()),
                "{}/{} (annotations applied: {annotate})",
                pin.namespace,
                pin.name
            );
        }
    }
}
