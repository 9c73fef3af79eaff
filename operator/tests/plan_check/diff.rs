//! `--diff DIR_A DIR_B`: Services gaining or losing nodes and ingress, DaemonSets added, removed
//! and changed, pod CIDRs moved; text and JSON; `--strict` judges DIR_B.

use serde_json::Value;

use super::support::{code, copy_of_examples, edit, folder, portway, stderr, stdout};

/// The `workers` pool leaves worker-2 out.
fn workers_without_worker_2(dir: &tempfile::TempDir) {
    edit(
        &dir.path().join("pools.yaml"),
        "    - key: node-role.portway.dev/edge\n      operator: DoesNotExist\n",
        "    - key: node-role.portway.dev/edge\n      operator: DoesNotExist\n    - key: kubernetes.io/hostname\n      operator: NotIn\n      values: [worker-2]\n",
    );
}

fn diff(b: &tempfile::TempDir, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--diff", "examples/", b.path().to_str().expect("UTF-8")];
    args.extend_from_slice(extra);
    portway(&args)
}

#[test]
fn the_same_tree_has_no_changes() {
    let out = portway(&["--diff", "examples/", "examples/", "--strict"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "# portway plan --diff examples/ examples/: no changes\n"
    );
}

#[test]
fn a_pool_change_shows_services_losing_nodes_and_ingress_and_changed_daemonsets() {
    let b = copy_of_examples();
    workers_without_worker_2(&b);
    let out = diff(&b, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "~ Service shop/storefront: nodes -worker-2; ingress -203.0.113.12\n",
        "~ Service infra/dns: nodes -worker-2\n",
        "~ DaemonSet portway-system/portway-shop-storefront: metadata.annotations[portway.dev/desired-hash], spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions\n",
        "~ LoadBalancerPool workers: nodes 2, services 2, ready True -> nodes 1, services 2, ready True\n",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    assert!(
        text.starts_with("# portway plan --diff examples/ "),
        "{text}"
    );
    assert!(!text.contains("Node "), "no pod CIDR moves:\n{text}");
    assert!(!text.contains("factory/mqtt"), "{text}");

    let json: Value = serde_json::from_slice(&diff(&b, &["-o", "json"]).stdout).expect("JSON");
    let storefront = json["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "storefront")
        .expect("storefront changed");
    assert_eq!(storefront["change"], "changed");
    assert_eq!(storefront["nodesRemoved"], serde_json::json!(["worker-2"]));
    assert_eq!(
        storefront["ingressRemoved"],
        serde_json::json!(["203.0.113.12"])
    );
    assert_eq!(
        storefront["to"]["ingress"],
        serde_json::json!(["203.0.113.11"])
    );
    let names: Vec<&str> = json["daemonSets"]
        .as_array()
        .expect("daemonSets")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["portway-infra-dns", "portway-shop-storefront"]);
    let ds = &json["daemonSets"][1];
    assert_eq!(ds["change"], "changed");
    assert_eq!(
        ds["fields"],
        serde_json::json!([
            "metadata.annotations[portway.dev/desired-hash]",
            "spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions"
        ])
    );
}

#[test]
fn added_and_removed_services_add_and_remove_their_daemonsets() {
    let b = copy_of_examples();
    // admin goes; a new Service on the workers pool comes.
    edit(
        &b.path().join("services.yaml"),
        "    portway.dev/pool: public-dc-a\n",
        "    portway.dev/pool: gone\n",
    );
    let new = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {type: LoadBalancer, clusterIP: 10.43.0.99, ports: [{name: h, port: 9000, protocol: TCP}]}\n";
    std::fs::write(b.path().join("new.yaml"), new).expect("write");
    let text = stdout(&diff(&b, &[]));
    for want in [
        "+ Service shop/api: serving (Serving), pool workers, nodes worker-1,worker-2, ingress 203.0.113.11,203.0.113.12\n",
        "~ Service shop/admin: state serving (Serving) -> no_pool (PoolNotFound); pool public-dc-a -> -; nodes -worker-1; ingress -203.0.113.11\n",
        "+ DaemonSet portway-system/portway-shop-api\n",
        "- DaemonSet portway-system/portway-shop-admin\n",
        "~ LoadBalancerPool public-dc-a: nodes 1, services 1, ready True -> nodes 1, services 0, ready True\n",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    // DIR_B has a Service that is not served: --strict says so.
    let out = diff(&b, &["--strict"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("Service shop/admin: PoolNotFound"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_cluster_cidr_change_moves_pod_cidrs() {
    let b = copy_of_examples();
    edit(
        &b.path().join("clustercidrs.yaml"),
        "ipv4: 10.77.64.0/20",
        "ipv4: 10.78.0.0/20",
    );
    let text = stdout(&diff(&b, &[]));
    for want in [
        "~ Node edge-1: pod CIDRs 10.77.64.0/26 (plant-7, Allocated) -> 10.78.0.0/26 (plant-7, Allocated)\n",
        "~ Node edge-2: pod CIDRs 10.77.64.64/26 (plant-7, Allocated) -> 10.78.0.64/26 (plant-7, Allocated)\n",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    assert!(text.contains(": 2 changes\n"), "{text}");
}

#[test]
fn strict_diff_judges_the_new_tree_only() {
    let bad = folder(&[(
        "a.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, lables: {}}\n",
    )]);
    let good = folder(&[(
        "a.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
    )]);
    let (bad, good) = (
        bad.path().to_str().expect("UTF-8").to_owned(),
        good.path().to_str().expect("UTF-8").to_owned(),
    );
    let fixed = portway(&["--diff", &bad, &good, "--strict"]);
    assert_eq!(code(&fixed), 0, "{}", stderr(&fixed));
    let broken = portway(&["--diff", &good, &bad, "--strict"]);
    assert_eq!(code(&broken), 1);
    assert!(
        stdout(&broken).contains("# skipped Namespace/x ("),
        "DIR_B's rejections are listed:\n{}",
        stdout(&broken)
    );
}

#[test]
fn paths_besides_the_two_trees_are_read_on_both_sides() {
    // The trees hold what a GitOps repository holds; the Nodes come from a dump of the cluster.
    let (a, b) = (copy_of_examples(), copy_of_examples());
    for dir in [&a, &b] {
        std::fs::remove_file(dir.path().join("nodes.yaml")).expect("remove");
    }
    workers_without_worker_2(&b);
    let (a_path, b_path) = (
        a.path().to_str().expect("UTF-8"),
        b.path().to_str().expect("UTF-8"),
    );
    let shared = portway(&["examples/nodes.yaml", "--diff", a_path, b_path, "--strict"]);
    assert_eq!(code(&shared), 0, "{}", stderr(&shared));
    let full = copy_of_examples();
    workers_without_worker_2(&full);
    let whole = diff(&full, &[]);
    let body = |text: String| text.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(stdout(&shared)), body(stdout(&whole)));
    assert!(stdout(&shared).contains("~ Service shop/storefront: nodes -worker-2"));
}
