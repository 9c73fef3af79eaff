//! Exit codes: 0 printed; 1 with `--strict` when something is rejected or not served; 2 usage or
//! I/O error. Each is run through the binary.

use super::support::{code, folder, portway, stderr, stdout};

const POOL: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: w1}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}]}
---
apiVersion: portway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: all}
spec: {nodeSelector: {}}
"#;

const SERVED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {type: LoadBalancer, clusterIP: 10.43.0.10, ports: [{name: http, port: 80, protocol: TCP}]}
"#;

fn run(dir: &tempfile::TempDir, extra: &[&str]) -> std::process::Output {
    let path = dir.path().to_str().expect("UTF-8 path");
    let mut args = vec![path];
    args.extend_from_slice(extra);
    portway(&args)
}

#[test]
fn exit_0_when_everything_is_accepted_and_served_with_or_without_strict() {
    for args in [
        &["examples/"][..],
        &["examples/", "--strict"],
        &["examples/", "--strict", "-o", "json"],
    ] {
        let out = portway(args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    }
    let dir = folder(&[("a.yaml", POOL), ("b.yaml", SERVED)]);
    assert_eq!(code(&run(&dir, &["--strict"])), 0);
}

#[test]
fn exit_1_with_strict_when_a_document_is_rejected_0_without() {
    let typo = format!(
        "{SERVED}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, lables: {{}}}}\n"
    );
    let dir = folder(&[("a.yaml", POOL), ("b.yaml", &typo)]);
    let lenient = run(&dir, &[]);
    assert_eq!(code(&lenient), 0, "{}", stderr(&lenient));
    assert!(
        stdout(&lenient).contains("# skipped Namespace/shop ("),
        "{}",
        stdout(&lenient)
    );
    let strict = run(&dir, &["--strict"]);
    assert_eq!(code(&strict), 1);
    let err = stderr(&strict);
    assert!(err.contains("--strict: 1 problem(s)"), "{err}");
    assert!(
        err.contains(r#"Namespace/shop ("#)
            && err.contains(
                r#"#1): Rejected: strict decoding error: unknown field "metadata.lables""#
            ),
        "{err}"
    );
    // The plan is printed all the same.
    assert_eq!(stdout(&strict), stdout(&lenient));
}

#[test]
fn exit_1_with_strict_when_a_service_is_not_served() {
    let lost = SERVED.replace(
        "namespace: shop}",
        "namespace: shop, annotations: {portway.dev/pool: nowhere}}",
    );
    let dir = folder(&[("a.yaml", POOL), ("b.yaml", &lost)]);
    assert_eq!(code(&run(&dir, &[])), 0);
    let out = run(&dir, &["--strict"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("Service shop/web: PoolNotFound: no_pool ("),
        "{}",
        stderr(&out)
    );

    // Two Services on one port of the only node: the newer one is in PortConflict.
    let conflict = format!(
        "{SERVED}---\n{}",
        SERVED
            .replace("name: web,", "name: web2,")
            .replace("10.43.0.10", "10.43.0.12")
    );
    let dir = folder(&[("a.yaml", POOL), ("b.yaml", &conflict)]);
    let out = run(&dir, &["--strict"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains(": PortConflict: port_conflict ("),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exit_1_with_strict_when_a_node_gets_no_pod_cidr() {
    let cidr = "apiVersion: portway.dev/v1alpha1\nkind: ClusterCIDR\nmetadata: {name: tiny}\nspec: {perNodeHostBits: 8, ipv4: 10.42.0.0/24, nodeSelector: {nodeSelectorTerms: [{matchExpressions: [{key: a, operator: Exists}]}]}}\n";
    let dir = folder(&[("a.yaml", POOL), ("b.yaml", SERVED), ("c.yaml", cidr)]);
    let out = run(&dir, &["--strict"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Node w1: NoPodCIDR: Waiting: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exit_2_on_usage_and_io_errors() {
    let missing = portway(&["no/such/dir"]);
    assert_eq!(code(&missing), 2);
    assert!(
        stderr(&missing).contains("cannot read no/such/dir"),
        "{}",
        stderr(&missing)
    );
    let not_yaml = folder(&[("a.yaml", "a: [unclosed")]);
    assert_eq!(code(&run(&not_yaml, &["--strict"])), 2);
    let empty = folder(&[("readme.txt", "no YAML here")]);
    assert_eq!(code(&run(&empty, &[])), 2);
    assert_eq!(code(&portway(&["examples/", "--no-such-flag"])), 2);
    assert_eq!(code(&portway(&[])), 2, "no path");
    assert_eq!(code(&portway(&["--diff", "examples/"])), 2, "one tree");
    assert_eq!(code(&portway(&["--diff", "examples/", "no/such/dir"])), 2);
}

#[test]
fn help_documents_the_exit_codes_and_the_fixed_time() {
    let out = portway(&["--help"]);
    assert_eq!(code(&out), 0);
    let help = stdout(&out);
    for want in [
        "Exit codes:",
        "  0  the plan (or diff) was printed",
        "  1  with --strict:",
        "  2  usage error",
        "1970-01-01T00:00:00Z",
        "--diff <DIR_A> <DIR_B>",
        "--strict",
        "json",
    ] {
        assert!(help.contains(want), "no {want:?} in\n{help}");
    }
}
