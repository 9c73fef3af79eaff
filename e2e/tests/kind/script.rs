//! `e2e/run.sh` checked without Docker: it is valid bash (and shellcheck-clean where shellcheck
//! is installed), it skips with one `SKIP` line and exit 0 for each missing tool (exit 1 under
//! `PORTWAY_E2E_REQUIRE=1`), it skips on this very machine when no Docker daemon answers, and
//! the pod subnets and chart arguments it would use match the kind configs and render, through
//! the real chart, into an operator that allocates exactly those pod CIDRs.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ipnet::IpNet;
use portway_e2e::report;
use serde_json::Value;

use crate::config::Variant;

fn run_sh() -> PathBuf {
    portway_e2e::envtest::workspace_root().join("e2e/run.sh")
}

/// The full path of `tool` on the test's PATH.
fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_sh_is_valid_bash_and_shellcheck_clean() {
    let out = Command::new("bash")
        .arg("-n")
        .arg(run_sh())
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "bash -n: {:?}", text(&out));
    match which("shellcheck") {
        Some(shellcheck) => {
            let out = Command::new(shellcheck)
                .arg(run_sh())
                .output()
                .expect("shellcheck runs");
            assert!(
                out.status.success(),
                "shellcheck e2e/run.sh: {:?}",
                text(&out)
            );
        }
        None => report::skip(
            "run_sh_is_valid_bash_and_shellcheck_clean (shellcheck part)",
            "shellcheck is not installed (apt-get install shellcheck); bash -n passed",
        ),
    }
}

/// A folder of fake tools: every name in `real` links to the real binary, every `(name, script)`
/// in `fakes` is a shell script. Nothing else is on the PATH.
fn fake_path(real: &[&str], fakes: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for tool in real {
        let target = which(tool).unwrap_or_else(|| panic!("{tool} is not on PATH"));
        std::os::unix::fs::symlink(target, dir.path().join(tool)).expect("symlink");
    }
    for (name, script) in fakes {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write fake");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir
}

fn run_with_path(path: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let bash = which("bash").expect("bash on PATH");
    let mut cmd = Command::new(bash);
    cmd.arg(run_sh()).args(args).env_clear().env("PATH", path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run.sh runs")
}

/// What run.sh needs before its tool checks.
const BASICS: [&str; 3] = ["dirname", "sed", "head"];

/// (what, fake tools, expected first line).
type Case = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static str,
);

#[test]
fn run_sh_skips_for_each_missing_tool_and_fails_when_required() {
    let ok = "exit 0";
    let cases: [Case; 4] = [
        ("no docker", vec![], "SKIP e2e (ipv4): docker not found"),
        (
            "docker without a daemon",
            vec![(
                "docker",
                "echo 'Cannot connect to the Docker daemon' >&2; exit 1",
            )],
            "SKIP e2e (ipv4): docker is installed but its daemon is not reachable",
        ),
        (
            "no kind",
            vec![("docker", ok)],
            "SKIP e2e (ipv4): kind not found",
        ),
        (
            "no kubectl",
            vec![("docker", ok), ("kind", ok)],
            "SKIP e2e (ipv4): kubectl not found",
        ),
    ];
    let mut tried = 0;
    for (what, fakes, expected) in &cases {
        let bin = fake_path(&BASICS, fakes);
        let out = run_with_path(bin.path(), &[], &["ipv4"]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{what}: {stdout}{stderr}");
        assert!(
            stdout
                .lines()
                .next()
                .is_some_and(|l| l.starts_with(expected)),
            "{what}: expected {expected:?}, got {stdout:?} {stderr:?}"
        );
        assert_eq!(
            stdout.lines().count(),
            1,
            "{what}: one line only: {stdout:?}"
        );
        assert!(!stdout.contains("PASS"), "{what}: {stdout}");
        // CI sets PORTWAY_E2E_REQUIRE=1: the same situation is then a failure.
        let out = run_with_path(bin.path(), &[("PORTWAY_E2E_REQUIRE", "1")], &["ipv4"]);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what} required: {stdout}{stderr}"
        );
        assert!(stdout.starts_with(expected), "{what} required: {stdout}");
        tried += 1;
    }
    // A bad variant is a usage error, not a skip.
    let bin = fake_path(&BASICS, &[]);
    let out = run_with_path(bin.path(), &[], &["ipv5"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    report::line(&format!(
        "run.sh: {tried} missing-tool cases skip with exit 0 (exit 1 under PORTWAY_E2E_REQUIRE=1)"
    ));
}

/// The local cluster (`--cluster local`) skips with one line without its Kubernetes binaries,
/// fails under `PORTWAY_E2E_REQUIRE=1`, and an unknown cluster is a usage error.
#[test]
fn run_sh_local_cluster_skips_without_its_binaries_and_fails_when_required() {
    let bin = fake_path(&BASICS, &[]);
    let empty = tempfile::tempdir().expect("temp dir");
    let empty_dir = empty.path().display().to_string();
    let no_etcd = format!("SKIP e2e (local ipv4): PORTWAY_K8S_BIN={empty_dir} has no etcd");
    // (what, environment, expected first line)
    type EnvCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [EnvCase<'_>; 2] = [
        (
            "no PORTWAY_K8S_BIN",
            vec![],
            "SKIP e2e (local ipv4): PORTWAY_K8S_BIN is not set",
        ),
        (
            "an empty PORTWAY_K8S_BIN",
            vec![("PORTWAY_K8S_BIN", empty_dir.as_str())],
            no_etcd.as_str(),
        ),
    ];
    for (what, env, expected) in &cases {
        let out = run_with_path(bin.path(), env, &["--cluster", "local", "ipv4"]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{what}: {stdout}{stderr}");
        assert!(
            stdout.starts_with(expected),
            "{what}: expected {expected:?}, got {stdout:?} {stderr:?}"
        );
        assert_eq!(
            stdout.lines().count(),
            1,
            "{what}: one line only: {stdout:?}"
        );
        assert!(
            !stdout.contains("passed"),
            "{what}: a skip reports no pass: {stdout}"
        );
        let mut required = env.clone();
        required.push(("PORTWAY_E2E_REQUIRE", "1"));
        let out = run_with_path(bin.path(), &required, &["--cluster=local", "ipv4"]);
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what} required: {stdout}{stderr}"
        );
        assert!(stdout.starts_with(expected), "{what} required: {stdout}");
    }
    let out = run_with_path(bin.path(), &[], &["--cluster", "minikube", "ipv4"]);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    report::line(
        "run.sh --cluster local: skips with exit 0 without PORTWAY_K8S_BIN or its binaries (exit 1 under PORTWAY_E2E_REQUIRE=1)",
    );
}

#[test]
fn run_sh_skips_on_this_machine_without_docker() {
    let docker_works = which("docker").is_some_and(|d| {
        Command::new(d)
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if docker_works {
        // Running it would create a real cluster; e2e/run.sh is the way to do that.
        report::skip(
            "run_sh_skips_on_this_machine_without_docker",
            "a Docker daemon answers here, so e2e/run.sh would run the real suite",
        );
        return;
    }
    let out = Command::new("bash")
        .arg(run_sh())
        .env_remove("PORTWAY_E2E_REQUIRE")
        .output()
        .expect("run.sh runs");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("SKIP e2e (ipv4): docker"),
        "{stdout}{stderr}"
    );
    report::line(&format!("run.sh here: {}", stdout.trim()));
}

/// `e2e/run.sh --print-plan <variant>`: `key=value` lines; `chart_arg` repeats.
fn plan(variant: Variant) -> (BTreeMap<String, String>, Vec<String>) {
    let out = Command::new("bash")
        .arg(run_sh())
        .args(["--print-plan", variant.name()])
        .output()
        .expect("run.sh runs");
    assert!(out.status.success(), "{:?}", text(&out));
    let mut keys = BTreeMap::new();
    let mut chart_args = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (k, v) = line.split_once('=').expect("key=value");
        if k == "chart_arg" {
            chart_args.push(v.to_owned());
        } else {
            keys.insert(k.to_owned(), v.to_owned());
        }
    }
    (keys, chart_args)
}

fn helm() -> Option<PathBuf> {
    which("helm").or_else(|| {
        let local = portway_e2e::envtest::workspace_root().join("target/tools/bin/helm");
        local.is_file().then_some(local)
    })
}

/// Every document `helm template` renders, as JSON.
fn render(helm: &Path, chart_args: &[String]) -> Vec<Value> {
    let out = Command::new(helm)
        .arg("template")
        .args(chart_args)
        .output()
        .expect("helm runs");
    assert!(out.status.success(), "helm template: {:?}", text(&out));
    let yaml = String::from_utf8_lossy(&out.stdout);
    serde_saphyr::from_multiple::<Value>(&yaml)
        .expect("rendered YAML")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn run_sh_installs_a_default_cluster_cidr_equal_to_each_pod_subnet() {
    let helm = helm();
    if helm.is_none() {
        report::skip(
            "run_sh_installs_a_default_cluster_cidr_equal_to_each_pod_subnet (helm part)",
            "helm not found (bash scripts/install-test-deps.sh); the script's plan is still checked",
        );
    }
    for variant in Variant::ALL {
        let name = variant.name();
        let (keys, chart_args) = plan(variant);
        let config = variant.config().expect("kind config");
        let subnets = config.pod_subnets().expect("pod subnets");
        let v4: Vec<String> = subnets
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .map(ToString::to_string)
            .collect();
        let v6: Vec<String> = subnets
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)))
            .map(ToString::to_string)
            .collect();
        assert_eq!(keys["cidr_v4"], v4.join(","), "{name}");
        assert_eq!(keys["cidr_v6"], v6.join(","), "{name}");
        assert_eq!(
            keys["config"],
            variant.path().display().to_string(),
            "{name}"
        );
        let Some(helm) = &helm else { continue };
        let docs = render(helm, &chart_args);
        let find = |kind: &str, name: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{name}: no {kind} {name} rendered"))
        };
        let deploy = find("Deployment", "portway-operator");
        let pod = &deploy["spec"]["template"]["spec"];
        let args: Vec<&str> = pod["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let expected_cidrs: Vec<String> = v4.iter().chain(&v6).cloned().collect();
        let flag = format!("--default-cluster-cidr={}", expected_cidrs.join(","));
        assert!(
            args.contains(&flag.as_str()),
            "{name}: {flag} not in {args:?}"
        );
        assert!(
            args.contains(&"--clustercidr-enabled=true"),
            "{name}: {args:?}"
        );
        assert!(
            args.contains(&"--agent-image=portway/agent:e2e"),
            "{name}: {args:?}"
        );
        assert_eq!(
            pod["containers"][0]["image"], "portway/operator:e2e",
            "{name}"
        );
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Never", "{name}");
        // IPv6 Services in the Pod dataplane need the forwarding sysctl in the agent pods; the
        // variant's kubelets must allow what the chart then asks for.
        let sysctls = args.contains(&"--agent-forwarding-sysctls=true");
        assert_eq!(sysctls, variant.has_v6(), "{name}: {args:?}");
        let allowed = portway_e2e::kind::kubelet_allowed_unsafe_sysctls(
            &config.kubeadm_patches().expect("patches"),
        );
        if sysctls {
            for s in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
                assert!(
                    allowed.iter().any(|a| a == s),
                    "{name}: kubelets do not allow {s}"
                );
            }
        }
        // The chicken-and-egg: the operator must start before any node is Ready.
        assert_eq!(pod["hostNetwork"], true, "{name}");
        let tolerates_not_ready = pod["tolerations"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["key"] == "node.kubernetes.io/not-ready"));
        assert!(tolerates_not_ready, "{name}: {}", pod["tolerations"]);
        // The default pool serves from the workers only (the tests expect their addresses).
        let pool = find("LoadBalancerPool", "default");
        let expr = &pool["spec"]["nodeSelector"]["matchExpressions"][0];
        assert_eq!(
            expr["key"], "node-role.kubernetes.io/control-plane",
            "{name}"
        );
        assert_eq!(expr["operator"], "DoesNotExist", "{name}");
    }
}
