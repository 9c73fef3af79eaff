//! The Helm chart (`charts/portway`), rendered by the real `helm` binary and checked object by
//! object:
//! - `helm lint` passes; `helm template` renders for every combination of the switches;
//! - the operator's ClusterRole grants exactly `portway_operator::permissions` (per enabled
//!   controller) and the agents' ClusterRoles exactly `portway_node_agent::permissions`; agents
//!   have no cluster-wide write;
//! - pods are non-root where they can be (the operator), and never privileged (the agents, which
//!   iptables forces to uid 0, get NET_ADMIN/NET_RAW only);
//! - the CRDs rendered are byte-for-byte the generated files of `charts/portway/crds/`;
//! - `values.schema.json` rejects bad values with the path of the bad value;
//! - every flag the chart passes to `portway run` exists;
//! - the agent ValidatingAdmissionPolicy's CEL, evaluated client-side (kube's `cel` feature);
//! - against a real kube-apiserver (`KUBEBUILDER_ASSETS`): `helm install`/`upgrade`/`uninstall`,
//!   the CRD lifecycle, the default pool's hook-then-adopt path, RBAC and the admission policy.
//!
//! Tests skip with a printed reason when `helm` is missing (scripts/install-test-deps.sh puts it in
//! target/tools/bin) or, for the API-server tier, when `KUBEBUILDER_ASSETS` is unset.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use clap::CommandFactory;
use kube::core::cel::{KubeCelExt, cel};
use portway_e2e::report;
use serde_json::{Value, json};

const RELEASE: &str = "portway";
const NAMESPACE: &str = "portway-system";
const MONITORING_APIS: [&str; 2] = [
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn chart_dir() -> PathBuf {
    workspace().join("charts/portway")
}

/// `helm` on PATH, else `<workspace>/target/tools/bin/helm` (scripts/install-test-deps.sh).
fn find_helm() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("helm"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let p = workspace().join("target/tools/bin/helm");
        p.is_file().then_some(p)
    })
}

struct Helm {
    bin: PathBuf,
}

fn helm_or_skip(test: &str) -> Option<Helm> {
    match find_helm() {
        Some(bin) => Some(Helm { bin }),
        None => {
            report::skip(
                test,
                "helm not found on PATH nor in target/tools/bin (run scripts/install-test-deps.sh)",
            );
            None
        }
    }
}

/// Drops helm's INFO line about the files/crds symlink (expected, see .helmignore).
fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("found symbolic link in path"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Helm {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", self.bin.display()))
    }

    /// `helm template portway charts/portway -n portway-system <args>`: stdout or stderr.
    fn template(&self, args: &[&str]) -> Result<String, String> {
        let chart = chart_dir().display().to_string();
        let mut all = vec!["template", RELEASE, chart.as_str(), "-n", NAMESPACE];
        all.extend_from_slice(args);
        let out = self.run(&all);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(stderr_of(&out))
        }
    }

    /// Renders and parses into objects; panics with helm's message on failure.
    fn render(&self, args: &[&str]) -> Rendered {
        let text = self
            .template(args)
            .unwrap_or_else(|e| panic!("helm template {args:?} failed:\n{e}"));
        Rendered::parse(&text)
    }
}

/// The objects of one rendering.
struct Rendered {
    text: String,
    objects: Vec<Value>,
}

impl Rendered {
    fn parse(text: &str) -> Self {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text)
            .unwrap_or_else(|e| panic!("helm output is not YAML: {e}\n{text}"));
        Self {
            text: text.to_owned(),
            objects: docs.into_iter().filter(|d| !d.is_null()).collect(),
        }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn must(&self, kind: &str, name: &str) -> &Value {
        self.get(kind, name)
            .unwrap_or_else(|| panic!("{kind}/{name} not rendered"))
    }

    fn operator_args(&self) -> Vec<String> {
        let d = self.must("Deployment", "portway-operator");
        d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One RBAC grant: (apiGroup, resource, verb, resourceName or "*").
type Grant = (String, String, String, String);

fn grants_of_rules(rules: &Value) -> BTreeSet<Grant> {
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    for rule in rules.as_array().into_iter().flatten() {
        let names = {
            let n = strs(&rule["resourceNames"]);
            if n.is_empty() {
                vec!["*".to_owned()]
            } else {
                n
            }
        };
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    for n in &names {
                        out.insert((g.clone(), r.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Every combination of the chart's switches: (serviceLB, clusterCIDR, crds.install, the
/// Prometheus Operator API, cleanup.onUninstall).
fn switch_combinations() -> Vec<(bool, bool, bool, bool, bool)> {
    let both = [true, false];
    let mut out = Vec::new();
    for servicelb in both {
        for clustercidr in both {
            for crds in both {
                for monitoring in both {
                    for cleanup in both {
                        out.push((servicelb, clustercidr, crds, monitoring, cleanup));
                    }
                }
            }
        }
    }
    out
}

/// The grants of a permission list of the operator crate.
fn grants_of_permissions(list: &[portway_operator::permissions::Permission]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for p in list {
        let names: Vec<&str> = if p.resource_names.is_empty() {
            vec!["*"]
        } else {
            p.resource_names.to_vec()
        };
        for v in p.verbs {
            for n in &names {
                out.insert((
                    p.group.to_owned(),
                    p.resource.to_owned(),
                    (*v).to_owned(),
                    (*n).to_owned(),
                ));
            }
        }
    }
    out
}

fn operator_grants(servicelb: bool, clustercidr: bool) -> BTreeSet<Grant> {
    use portway_operator::permissions::{CLUSTERCIDR, COMMON, SERVICELB};
    let mut list: Vec<_> = COMMON.to_vec();
    if servicelb {
        list.extend_from_slice(SERVICELB);
    }
    if clustercidr {
        list.extend_from_slice(CLUSTERCIDR);
    }
    grants_of_permissions(&list)
}

fn agent_grants(list: &[portway_node_agent::permissions::Permission]) -> BTreeSet<Grant> {
    list.iter()
        .flat_map(|p| {
            p.verbs.iter().map(|v| {
                (
                    p.group.to_owned(),
                    p.resource.to_owned(),
                    (*v).to_owned(),
                    "*".to_owned(),
                )
            })
        })
        .collect()
}

fn assert_same_grants(what: &str, rendered: &BTreeSet<Grant>, code: &BTreeSet<Grant>) {
    let missing: Vec<_> = code.difference(rendered).collect();
    let extra: Vec<_> = rendered.difference(code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: the chart drifted from the permission list in code\n  missing (used by the code, not granted): {missing:?}\n  extra (granted, not used): {extra:?}"
    );
}

const READ_VERBS: [&str; 3] = ["get", "list", "watch"];

#[test]
fn helm_lint_passes() {
    let Some(helm) = helm_or_skip("helm_lint_passes") else {
        return;
    };
    let chart = chart_dir().display().to_string();
    for extra in [
        vec![],
        vec!["--set", "serviceLB.enabled=false,clusterCIDR.enabled=false"],
        vec![
            "--set",
            "clusterCIDR.default.enabled=true,clusterCIDR.default.ipv4=10.244.0.0/16",
        ],
    ] {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        args.extend(extra.iter().copied());
        let out = helm.run(&args);
        assert!(
            out.status.success(),
            "helm lint {extra:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr_of(&out)
        );
    }
}

#[test]
fn every_switch_combination_renders_least_privilege() {
    let Some(helm) = helm_or_skip("every_switch_combination_renders_least_privilege") else {
        return;
    };
    let agent_sa = format!("system:serviceaccount:{NAMESPACE}:portway-agent");
    let mut combinations = 0;
    for (servicelb, clustercidr, crds, monitoring, cleanup) in switch_combinations() {
        combinations += 1;
        let sets = format!(
            "serviceLB.enabled={servicelb},clusterCIDR.enabled={clustercidr},crds.install={crds},cleanup.onUninstall={cleanup}"
        );
        let mut args = vec!["--set", sets.as_str()];
        if monitoring {
            for api in MONITORING_APIS {
                args.extend(["--api-versions", api]);
            }
        }
        let r = helm.render(&args);
        let label = format!("[{sets}, monitoring={monitoring}]");

        // Operator: exactly the verbs its enabled controllers use.
        let role = r.must("ClusterRole", "portway-operator");
        assert_same_grants(
            &format!("ClusterRole portway-operator {label}"),
            &grants_of_rules(&role["rules"]),
            &operator_grants(servicelb, clustercidr),
        );

        // The uninstall clean-up hook: exactly permissions::CLEANUP cluster-wide and
        // CLEANUP_IN_NAMESPACE in the release namespace, bound to its own account.
        match (
            r.get("ClusterRole", "portway-cleanup"),
            r.get("Role", "portway-cleanup"),
        ) {
            (Some(cluster), Some(ns)) => {
                assert!(cleanup, "{label}: clean-up RBAC without the hook");
                use portway_operator::permissions::{CLEANUP, CLEANUP_IN_NAMESPACE};
                assert_same_grants(
                    &format!("ClusterRole portway-cleanup {label}"),
                    &grants_of_rules(&cluster["rules"]),
                    &grants_of_permissions(CLEANUP),
                );
                assert_same_grants(
                    &format!("Role portway-cleanup {label}"),
                    &grants_of_rules(&ns["rules"]),
                    &grants_of_permissions(CLEANUP_IN_NAMESPACE),
                );
                assert!(r.get("Job", "portway-cleanup").is_some(), "{label}");
            }
            (None, None) => {
                assert!(!cleanup, "{label}: no clean-up RBAC");
                assert!(r.get("Job", "portway-cleanup").is_none(), "{label}");
            }
            _ => panic!("{label}: only one of the clean-up roles rendered"),
        }
        let args = r.operator_args();
        assert!(
            args.contains(&format!("--servicelb-enabled={servicelb}")),
            "{label}: {args:?}"
        );

        // Agents: reads cluster-wide, status patch only through the operator's
        // per-namespace RoleBindings.
        use portway_node_agent::permissions::{READ, STATUS};
        match r.get("ClusterRole", "portway-agent") {
            Some(agent) => {
                assert!(servicelb, "{label}: agent RBAC without ServiceLB");
                assert_same_grants(
                    &format!("ClusterRole portway-agent {label}"),
                    &grants_of_rules(&agent["rules"]),
                    &agent_grants(READ),
                );
                assert_same_grants(
                    &format!("ClusterRole portway-agent-status {label}"),
                    &grants_of_rules(&r.must("ClusterRole", "portway-agent-status")["rules"]),
                    &agent_grants(STATUS),
                );
            }
            None => assert!(!servicelb, "{label}: no agent ClusterRole"),
        }
        for binding in r
            .of_kind("ClusterRoleBinding")
            .into_iter()
            .chain(r.of_kind("RoleBinding"))
        {
            let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
            let binds_agent = subjects.iter().any(|s| {
                format!(
                    "system:serviceaccount:{}:{}",
                    s["namespace"].as_str().unwrap_or_default(),
                    s["name"].as_str().unwrap_or_default()
                ) == agent_sa
            });
            if !binds_agent {
                continue;
            }
            let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
            assert_ne!(
                role_name, "portway-agent-status",
                "{label}: the chart must not bind the status role; the operator binds it per namespace"
            );
            let role = r.must("ClusterRole", role_name);
            for (group, resource, verb, _) in grants_of_rules(&role["rules"]) {
                assert!(
                    READ_VERBS.contains(&verb.as_str()),
                    "{label}: agents get cluster-wide {verb} on {group}/{resource}"
                );
            }
        }

        assert_eq!(
            r.get("ValidatingAdmissionPolicy", "portway-agent-own-node-status")
                .is_some(),
            servicelb,
            "{label}: admission policy"
        );
        assert_eq!(
            r.of_kind("CustomResourceDefinition").len(),
            if crds { 3 } else { 0 },
            "{label}: CRDs"
        );
        assert_eq!(
            r.of_kind("ServiceMonitor").len(),
            usize::from(monitoring),
            "{label}: ServiceMonitor only where the API exists"
        );
        assert_eq!(
            r.of_kind("PodMonitor").len(),
            usize::from(monitoring && servicelb),
            "{label}: PodMonitor"
        );
        assert_eq!(
            r.of_kind("LoadBalancerPool").len(),
            usize::from(servicelb),
            "{label}: default pool"
        );
        for o in &r.objects {
            let kind = o["kind"].as_str().unwrap_or_default();
            let namespaced = matches!(
                kind,
                "Deployment"
                    | "ServiceAccount"
                    | "Service"
                    | "ServiceMonitor"
                    | "PodMonitor"
                    | "RoleBinding"
                    | "Role"
                    | "Job"
            );
            if namespaced {
                assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{label}: {kind}");
            }
        }
    }
    report::line(&format!(
        "chart: {combinations} switch combinations rendered and checked"
    ));
}

#[test]
fn default_pool_is_a_hook_until_its_api_is_served() {
    let Some(helm) = helm_or_skip("default_pool_is_a_hook_until_its_api_is_served") else {
        return;
    };
    let first = helm.render(&[]);
    let pool = first.must("LoadBalancerPool", "default");
    let ann = &pool["metadata"]["annotations"];
    assert_eq!(ann["helm.sh/hook"], "post-install,post-upgrade");
    assert_eq!(ann["meta.helm.sh/release-name"], RELEASE);
    assert_eq!(ann["meta.helm.sh/release-namespace"], NAMESPACE);
    assert_eq!(
        pool["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
    assert_eq!(pool["spec"]["nodeSelector"], json!({}));
    let pool_json = pool.clone();
    portway_crds::validation::validate(
        portway_crds::validation::Kind::LoadBalancerPool,
        &pool_json,
        None,
    )
    .unwrap_or_else(|e| panic!("the default pool is invalid: {e}"));

    let later = helm.render(&["--api-versions", "portway.dev/v1alpha1/LoadBalancerPool"]);
    let pool = later.must("LoadBalancerPool", "default");
    assert!(
        pool["metadata"]["annotations"].is_null(),
        "once the API is served the pool is a plain release object: {pool}"
    );
    let off = helm.render(&["--set", "defaultPool.enabled=false"]);
    assert!(off.of_kind("LoadBalancerPool").is_empty());
}

/// The rendered CRD documents with helm's `# Source` lines and the chart's inserted metadata
/// (labels, keep annotation) removed, keyed by the file they came from.
fn rendered_crd_texts(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for doc in text.split("\n---\n") {
        let Some(file) = doc
            .lines()
            .find_map(|l| l.strip_prefix("# Source file: charts/portway/crds/"))
        else {
            continue;
        };
        let mut kept = Vec::new();
        let mut in_inserted = false;
        for line in doc.lines() {
            if line.starts_with("# Source") {
                continue;
            }
            if line == "metadata:" {
                kept.push(line);
                in_inserted = true;
                continue;
            }
            if in_inserted {
                if line.starts_with("  labels:")
                    || line.starts_with("  annotations:")
                    || line.starts_with("    ")
                {
                    continue;
                }
                in_inserted = false;
            }
            kept.push(line);
        }
        out.insert(file.to_owned(), kept.join("\n"));
    }
    out
}

#[test]
fn rendered_crds_equal_the_generated_files() {
    let Some(helm) = helm_or_skip("rendered_crds_equal_the_generated_files") else {
        return;
    };
    let r = helm.render(&[]);
    let rendered = rendered_crd_texts(&r.text);
    let dir = chart_dir().join("crds");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("charts/portway/crds")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(
        rendered.keys().cloned().collect::<Vec<_>>(),
        files,
        "every generated CRD file is rendered, and nothing else"
    );
    for name in &files {
        let on_disk = std::fs::read_to_string(dir.join(name)).expect("readable");
        assert_eq!(
            rendered[name].trim_end(),
            on_disk.trim_end(),
            "{name}: rendered CRD differs from the generated file beyond the inserted metadata"
        );
    }
    // And as objects: only labels and the keep annotation were added.
    for crd in r.of_kind("CustomResourceDefinition") {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}"
        );
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "portway"
        );
        let file = format!("{name}.yaml");
        let on_disk: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(dir.join(&file)).expect("readable"))
                .expect("generated CRD parses");
        let mut stripped = (*crd).clone();
        if let Some(meta) = stripped["metadata"].as_object_mut() {
            meta.remove("labels");
            meta.remove("annotations");
        }
        assert_eq!(stripped, on_disk, "{file}");
    }
    let no_keep = helm.render(&["--set", "crds.keep=false"]);
    for crd in no_keep.of_kind("CustomResourceDefinition") {
        assert!(crd["metadata"]["annotations"].is_null(), "{crd}");
    }
}

#[test]
fn bad_values_are_rejected_with_the_path() {
    let Some(helm) = helm_or_skip("bad_values_are_rejected_with_the_path") else {
        return;
    };
    let cases: &[(&str, &str, &str)] = &[
        (
            "negative replicas",
            "operator:\n  replicas: -1\n",
            "/operator/replicas",
        ),
        (
            "misspelt key",
            "serviceLb:\n  enabled: false\n",
            "serviceLb",
        ),
        (
            "string for a switch",
            "serviceLB:\n  enabled: \"no\"\n",
            "/serviceLB/enabled",
        ),
        (
            "unknown pull policy",
            "image:\n  pullPolicy: Sometimes\n",
            "/image/pullPolicy",
        ),
        (
            "prefix out of range",
            "clusterCIDR:\n  default:\n    enabled: true\n    ipv4: 10.0.0.0/33\n",
            "/clusterCIDR/default/ipv4",
        ),
        (
            "default ClusterCIDR without a range",
            "clusterCIDR:\n  default:\n    enabled: true\n",
            "/clusterCIDR/default",
        ),
        (
            "unknown dataplane",
            "defaultPool:\n  dataplane: Bridge\n",
            "/defaultPool/dataplane",
        ),
        (
            "repeated address type",
            "defaultPool:\n  addressTypes: [ExternalIP, ExternalIP]\n",
            "/defaultPool/addressTypes",
        ),
        (
            "reserved port beyond 65535",
            "serviceLB:\n  reservedHostPorts: [TCP/70000=x]\n",
            "/serviceLB/reservedHostPorts/0",
        ),
        (
            "reserved port without an owner",
            "serviceLB:\n  reservedHostPorts: [TCP/8080]\n",
            "/serviceLB/reservedHostPorts/0",
        ),
        (
            "class that is not a qualified name",
            "serviceLB:\n  loadBalancerClass: not a class\n",
            "/serviceLB/loadBalancerClass",
        ),
        (
            "port out of range",
            "metrics:\n  port: 70000\n",
            "/metrics/port",
        ),
        (
            "number for a switch",
            "agent:\n  forwardingSysctls: 1\n",
            "/agent/forwardingSysctls",
        ),
        (
            "extra arg that is no flag",
            "operator:\n  extraArgs: [run]\n",
            "/operator/extraArgs",
        ),
        (
            "pool priority out of range",
            "defaultPool:\n  priority: 5000\n",
            "/defaultPool/priority",
        ),
        (
            "toleration with a bad operator",
            "operator:\n  tolerations:\n  - key: a\n    operator: Maybe\n",
            "/operator/tolerations",
        ),
        (
            "clean-up timeout too short",
            "cleanup:\n  timeoutSeconds: 0\n",
            "/cleanup/timeoutSeconds",
        ),
        (
            "string for the clean-up switch",
            "cleanup:\n  onUninstall: \"yes\"\n",
            "/cleanup/onUninstall",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = chart_dir().display().to_string();
    for (i, (what, yaml, path)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.yaml"));
        std::fs::write(&file, yaml).expect("write");
        let f = file.display().to_string();
        match helm.template(&["-f", &f]) {
            Ok(_) => panic!("{what}: helm template accepted\n{yaml}"),
            Err(e) => assert!(
                e.contains(path) && e.contains("schema"),
                "{what}: the error does not name {path}:\n{e}"
            ),
        }
        let out = helm.run(&["lint", chart.as_str(), "-f", &f]);
        assert!(!out.status.success(), "{what}: helm lint accepted\n{yaml}");
    }
    report::line(&format!(
        "chart: {} bad values files rejected by helm template and helm lint",
        cases.len()
    ));
}

/// Long flags (`--name`) the chart passes to `portway run`.
fn chart_flags(r: &Rendered) -> BTreeSet<String> {
    r.operator_args()
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect()
}

/// Long flags of `portway run`, from its clap definition.
fn run_flags_from_clap() -> BTreeSet<String> {
    let cmd = portway_operator::cli::Cli::command();
    let run = cmd
        .get_subcommands()
        .find(|c| c.get_name() == "run")
        .expect("portway has a `run` subcommand");
    run.get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect()
}

/// The built `portway` binary next to this test's (cargo builds it for the operator's own
/// integration tests), if present.
fn built_portway() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("portway");
    bin.is_file().then_some(bin)
}

#[test]
fn every_flag_the_chart_passes_exists() {
    let Some(helm) = helm_or_skip("every_flag_the_chart_passes_exists") else {
        return;
    };
    let everything_on = helm.render(&[
        "--set",
        "clusterCIDR.default.enabled=true,clusterCIDR.default.ipv4=10.244.0.0/16,clusterCIDR.default.ipv6=fd00:10:244::/56",
    ]);
    let used = chart_flags(&everything_on);
    assert!(used.len() >= 8, "{used:?}");
    let known = run_flags_from_clap();
    let unknown: Vec<_> = used.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "the chart passes flags `portway run` does not have: {unknown:?} (known: {known:?})"
    );
    // The same against the built binary's --help, when cargo has built it.
    match built_portway() {
        Some(bin) => {
            let out = Command::new(&bin)
                .args(["run", "--help"])
                .output()
                .expect("portway run --help");
            assert!(out.status.success());
            let help = String::from_utf8_lossy(&out.stdout);
            for flag in &used {
                assert!(
                    help.contains(&format!("--{flag}")),
                    "`{} run --help` has no --{flag}",
                    bin.display()
                );
            }
        }
        None => report::line(
            "every_flag_the_chart_passes_exists: portway binary not built next to this test; checked against the clap definition only",
        ),
    }
}

#[test]
fn pods_are_non_root_where_they_can_be() {
    let Some(helm) = helm_or_skip("pods_are_non_root_where_they_can_be") else {
        return;
    };
    let r = helm.render(&[]);
    let d = r.must("Deployment", "portway-operator");
    let pod = &d["spec"]["template"]["spec"];
    // The uninstall clean-up Job runs the same binary, as non-root too.
    let job = &r.must("Job", "portway-cleanup")["spec"]["template"]["spec"];
    assert_eq!(job["securityContext"]["runAsNonRoot"], true);
    assert!(job["securityContext"]["runAsUser"].as_i64().unwrap_or(0) > 0);
    let sc = &job["containers"][0]["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(job["hostNetwork"].is_null());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_i64().unwrap_or(0) > 0);
    assert!(pod["hostNetwork"].is_null() && pod["hostPID"].is_null());
    for c in pod["containers"].as_array().expect("containers") {
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{c}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{c}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
        assert!(sc["privileged"].is_null() || sc["privileged"] == false);
        assert!(sc["capabilities"]["add"].is_null(), "{c}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        let env = c["env"].as_array().expect("env");
        assert!(env.iter().any(|e| e["name"] == "POD_NAMESPACE"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"));
    }

    // The agents cannot be non-root (iptables needs uid 0 with the capability), but the
    // DaemonSets the operator builds (same core as `portway plan`) are never privileged.
    let daemonsets = planned_agent_daemonsets();
    assert!(daemonsets.len() >= 3, "examples give several DaemonSets");
    for ds in daemonsets {
        let pod = &ds["spec"]["template"]["spec"];
        for c in pod["containers"].as_array().expect("containers") {
            let sc = &c["securityContext"];
            assert!(
                sc["privileged"].is_null() || sc["privileged"] == false,
                "{c}"
            );
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{c}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
            let added: BTreeSet<&str> = sc["capabilities"]["add"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            assert!(
                added.is_subset(&BTreeSet::from(["NET_ADMIN", "NET_RAW"])),
                "agent capabilities {added:?}"
            );
        }
    }
}

#[test]
fn uninstall_hook_runs_portway_cleanup_before_the_release_goes() {
    use clap::Parser;
    use portway_operator::cli::{Cli, Command as PortwayCommand};
    let Some(helm) = helm_or_skip("uninstall_hook_runs_portway_cleanup_before_the_release_goes")
    else {
        return;
    };
    let r = helm.render(&[]);
    let hook_objects = [
        ("ServiceAccount", "portway-cleanup"),
        ("ClusterRole", "portway-cleanup"),
        ("ClusterRoleBinding", "portway-cleanup"),
        ("Role", "portway-cleanup"),
        ("RoleBinding", "portway-cleanup"),
        ("Job", "portway-cleanup"),
    ];
    let weight = |o: &Value| -> i64 {
        o["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no hook weight: {o}"))
    };
    let job = r.must("Job", "portway-cleanup");
    for (kind, name) in hook_objects {
        let o = r.must(kind, name);
        let ann = &o["metadata"]["annotations"];
        assert_eq!(ann["helm.sh/hook"], "pre-delete", "{kind}/{name}");
        let policy: BTreeSet<&str> = ann["helm.sh/hook-delete-policy"]
            .as_str()
            .unwrap_or_default()
            .split(',')
            .collect();
        assert!(
            policy.contains("hook-succeeded") && policy.contains("before-hook-creation"),
            "{kind}/{name}: hook objects must not linger: {policy:?}"
        );
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/part-of"], "portway",
            "{kind}/{name}"
        );
        if kind != "Job" {
            assert!(
                weight(o) < weight(job),
                "{kind}/{name} must exist before the Job runs"
            );
        }
    }
    // Nothing else runs at pre-delete (the default pool is a post-install/upgrade hook).
    let pre_delete = r
        .objects
        .iter()
        .filter(|o| o["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete")
        .count();
    assert_eq!(pre_delete, hook_objects.len());
    // The bindings give the hook's own account exactly the clean-up roles.
    let subject =
        json!([{"kind": "ServiceAccount", "name": "portway-cleanup", "namespace": NAMESPACE}]);
    for (binding, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        let b = r.must(binding, "portway-cleanup");
        assert_eq!(b["subjects"], subject, "{binding}");
        assert_eq!(b["roleRef"]["kind"], role_kind);
        assert_eq!(b["roleRef"]["name"], "portway-cleanup");
    }

    // The Job: `portway cleanup` of this release's namespace, stopping this release's operator,
    // as the hook's account, with the operator's image and security context.
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "portway-cleanup");
    assert_eq!(pod["restartPolicy"], "Never");
    let operator_pod = &r.must("Deployment", "portway-operator")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], operator_pod["containers"][0]["image"]);
    assert_eq!(
        container["securityContext"],
        operator_pod["containers"][0]["securityContext"]
    );
    assert_eq!(pod["securityContext"], operator_pod["securityContext"]);
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let cli = Cli::try_parse_from(std::iter::once("portway".to_owned()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("the hook's args {args:?} do not parse: {e}"));
    let PortwayCommand::Cleanup(cleanup) = cli.command else {
        panic!("the hook does not run `portway cleanup`: {args:?}");
    };
    assert_eq!(cleanup.namespace, NAMESPACE);
    assert_eq!(cleanup.stop_operator.as_deref(), Some("portway-operator"));
    assert_eq!(
        cleanup.stop_operator.as_deref(),
        r.must("Deployment", "portway-operator")["metadata"]["name"].as_str()
    );
    assert!(!cleanup.dry_run && !cleanup.skip_permission_check);
    assert_eq!(
        cleanup.helm_release.as_deref(),
        Some(RELEASE),
        "the hook removes this release's default pool"
    );
    let deadline = job["spec"]["activeDeadlineSeconds"]
        .as_u64()
        .expect("deadline");
    assert!(
        deadline > cleanup.timeout_seconds,
        "the Job's deadline {deadline}s must leave the clean-up its own {}s",
        cleanup.timeout_seconds
    );
    // The operator's Deployment scale it may patch is named in its Role.
    let role = r.must("Role", "portway-cleanup");
    assert!(grants_of_rules(&role["rules"]).contains(&(
        "apps".into(),
        "deployments/scale".into(),
        "patch".into(),
        "portway-operator".into()
    )));

    // Switches: off renders nothing; the timeout reaches the flag; the host network follows the
    // operator's (the clean-up must start wherever the operator could).
    let off = helm.render(&["--set", "cleanup.onUninstall=false"]);
    assert!(
        off.objects
            .iter()
            .all(|o| o["metadata"]["annotations"]["helm.sh/hook"] != "pre-delete")
    );
    let longer = helm.render(&[
        "--set",
        "cleanup.timeoutSeconds=240,operator.hostNetwork=true",
    ]);
    let job = longer.must("Job", "portway-cleanup");
    assert!(
        job["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .contains(&json!("--timeout-seconds=240"))
    );
    assert_eq!(job["spec"]["template"]["spec"]["hostNetwork"], true);
}

/// DaemonSets the operator's core builds for `examples/` (what `portway plan examples/` prints).
fn planned_agent_daemonsets() -> Vec<Value> {
    let set = portway_operator::input::read_paths(&[workspace().join("examples")])
        .expect("examples read");
    let observed = portway_operator::cli::plan::observed(&set);
    let mut config =
        portway_operator::plan::Config::new(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    config.namespace = NAMESPACE.to_owned();
    portway_operator::plan::desired_state(&observed, &config)
        .services
        .iter()
        .filter_map(|s| s.daemonset.as_ref())
        .map(|ds| serde_json::to_value(ds).expect("serializes"))
        .collect()
}

#[test]
fn pod_monitor_selects_the_agent_pods_and_their_metrics_port() {
    let Some(helm) = helm_or_skip("pod_monitor_selects_the_agent_pods_and_their_metrics_port")
    else {
        return;
    };
    let mut args = Vec::new();
    for api in MONITORING_APIS {
        args.extend(["--api-versions", api]);
    }
    let r = helm.render(&args);
    let pm = &r.of_kind("PodMonitor")[0]["spec"];
    let selector: BTreeMap<String, String> =
        serde_json::from_value(pm["selector"]["matchLabels"].clone()).expect("matchLabels");
    let port = pm["podMetricsEndpoints"][0]["port"]
        .as_str()
        .expect("port name");
    assert_eq!(pm["namespaceSelector"]["matchNames"], json!([NAMESPACE]));
    let mut with_metrics = 0;
    for ds in planned_agent_daemonsets() {
        assert_eq!(ds["metadata"]["namespace"], NAMESPACE);
        let labels: BTreeMap<String, String> =
            serde_json::from_value(ds["spec"]["template"]["metadata"]["labels"].clone())
                .expect("pod labels");
        for (k, v) in &selector {
            assert_eq!(
                labels.get(k),
                Some(v),
                "agent pods lack {k}={v}: {labels:?}"
            );
        }
        let ports = ds["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if ports.iter().any(|p| p["name"] == port) {
            with_metrics += 1;
        }
    }
    assert!(
        with_metrics >= 1,
        "no Pod-dataplane agent exposes a `{port}` port"
    );
    // The operator's ServiceMonitor selects the metrics Service, which selects the operator pods.
    let sm = &r.of_kind("ServiceMonitor")[0]["spec"];
    let svc = r.must("Service", "portway-operator-metrics");
    let svc_labels: BTreeMap<String, String> =
        serde_json::from_value(svc["metadata"]["labels"].clone()).expect("labels");
    let wanted: BTreeMap<String, String> =
        serde_json::from_value(sm["selector"]["matchLabels"].clone()).expect("matchLabels");
    assert!(wanted.iter().all(|(k, v)| svc_labels.get(k) == Some(v)));
    let pod_labels: BTreeMap<String, String> = serde_json::from_value(
        r.must("Deployment", "portway-operator")["spec"]["template"]["metadata"]["labels"].clone(),
    )
    .expect("pod labels");
    let svc_selector: BTreeMap<String, String> =
        serde_json::from_value(svc["spec"]["selector"].clone()).expect("selector");
    assert!(
        svc_selector
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    );
    assert_eq!(sm["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
}

#[test]
fn host_network_operator_starts_on_nodes_without_pod_cidrs() {
    let Some(helm) = helm_or_skip("host_network_operator_starts_on_nodes_without_pod_cidrs") else {
        return;
    };
    let not_ready = json!({"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"});
    let pod =
        |r: &Rendered| r.must("Deployment", "portway-operator")["spec"]["template"]["spec"].clone();
    let default = pod(&helm.render(&[]));
    assert!(default["hostNetwork"].is_null());
    assert!(
        !default["tolerations"]
            .as_array()
            .expect("tolerations")
            .contains(&not_ready)
    );
    let host = pod(&helm.render(&["--set", "operator.hostNetwork=true"]));
    assert_eq!(host["hostNetwork"], true);
    assert_eq!(host["dnsPolicy"], "ClusterFirstWithHostNet");
    assert!(
        host["tolerations"]
            .as_array()
            .expect("tolerations")
            .contains(&not_ready)
    );
    // Still non-root and unprivileged on the host network.
    assert_eq!(host["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        host["containers"][0]["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
}

/// What the operator would plan for one LoadBalancer Service on `port` with the flags `r`
/// renders: (PortConflict reason, DaemonSet planned).
fn quickstart_service_with(r: &Rendered, port: i32) -> (String, bool) {
    let flags: Vec<String> = r
        .operator_args()
        .into_iter()
        .skip_while(|a| a == "run")
        .collect();
    let args = portway_e2e::operator::run_args(&flags).expect("the chart's flags parse");
    let config = args
        .servicelb
        .config(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    let objects = [
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w1"},
               "status": {"addresses": [{"type": "InternalIP", "address": "10.1.0.1"}]}}),
        json!({"apiVersion": "portway.dev/v1alpha1", "kind": "LoadBalancerPool",
               "metadata": {"name": "default"}, "spec": {"nodeSelector": {}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
               "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                        "ipFamilies": ["IPv4"],
                        "ports": [{"protocol": "TCP", "port": port, "targetPort": 80}]}}),
    ];
    let observed = portway_operator::plan::Observed {
        nodes: vec![std::sync::Arc::new(
            serde_json::from_value(objects[0].clone()).expect("node"),
        )],
        pools: vec![std::sync::Arc::new(
            serde_json::from_value(objects[1].clone()).expect("pool"),
        )],
        services: vec![std::sync::Arc::new(
            serde_json::from_value(objects[2].clone()).expect("service"),
        )],
        ..Default::default()
    };
    let d = portway_operator::plan::desired_state(&observed, &config);
    let plan = d.services.first().expect("a plan for default/web");
    let conflict = portway_crds::condition::find(
        &plan.conditions,
        portway_crds::condition::types::PORT_CONFLICT,
    )
    .map(|c| c.reason.clone())
    .unwrap_or_default();
    (conflict, plan.daemonset.is_some())
}

/// The README quickstart (`operator.hostNetwork=true`, then `kubectl expose --port=8080`) used to
/// strand the operator: its metrics port 8080 was a host port, and the Service's agents, at
/// system-node-critical priority, preempted it for that port. The chart now keeps the metrics
/// port off the usual application ports, reserves it from Services whenever it is a host port,
/// and rolls a host-network operator without a surge pod that could not bind it.
#[test]
fn host_network_operator_keeps_its_port_and_rolls_out() {
    let Some(helm) = helm_or_skip("host_network_operator_keeps_its_port_and_rolls_out") else {
        return;
    };
    let reserved = |r: &Rendered| -> Vec<String> {
        let args = r.operator_args();
        let flag = args
            .iter()
            .find_map(|a| a.strip_prefix("--reserved-host-ports="))
            .expect("--reserved-host-ports");
        portway_operator::plan::reserved::parse_list(flag)
            .expect("the chart's reserved ports parse")
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let strategy =
        |r: &Rendered| r.must("Deployment", "portway-operator")["spec"]["strategy"].clone();
    let quickstart = ["--set", "operator.hostNetwork=true"];

    let default = helm.render(&[]);
    assert_eq!(reserved(&default), ["TCP/10250=kubelet"]);
    assert_eq!(
        strategy(&default),
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    let host = helm.render(&quickstart);
    assert_eq!(
        reserved(&host),
        ["TCP/9463=portway-operator-metrics", "TCP/10250=kubelet"]
    );
    assert_eq!(
        strategy(&host),
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}})
    );
    // The quickstart's Service on 8080 is served; one on the operator's port is refused clearly.
    assert_eq!(
        quickstart_service_with(&host, 8080),
        ("NoConflict".to_owned(), true)
    );
    assert_eq!(
        quickstart_service_with(&host, 9463),
        ("PortReserved".to_owned(), false)
    );
    let moved = helm.render(&["--set", "operator.hostNetwork=true,metrics.port=8080"]);
    assert_eq!(
        quickstart_service_with(&moved, 8080),
        ("PortReserved".to_owned(), false)
    );
    // Without the host network the metrics port is the pod's own: nothing to reserve.
    assert_eq!(
        quickstart_service_with(&default, 9463),
        ("NoConflict".to_owned(), true)
    );
    // A strategy of the user's wins; two replicas prefer different nodes.
    let own = helm.render(&["--set", "operator.updateStrategy.type=Recreate"]);
    assert_eq!(strategy(&own), json!({"type": "Recreate"}));
    let two = helm.render(&["--set", "operator.replicas=2"]);
    let anti = &two.must("Deployment", "portway-operator")["spec"]["template"]["spec"]["affinity"]
        ["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert!(
        default.must("Deployment", "portway-operator")["spec"]["template"]["spec"]["affinity"]
            .is_null()
    );
}

// ---------------------------------------------------------------------------------------------
// The ValidatingAdmissionPolicy's CEL, evaluated client-side.
//
// kube-cel's `VapEvaluator` binds `request` without `userInfo.extra` and `subResource`, which this
// policy needs, and without `variables`; so the policy is evaluated here with kube-cel's CEL
// context (Kubernetes' CEL libraries) and the same order as the API server: matchConditions,
// then variables, then validations.

struct Policy {
    match_conditions: Vec<String>,
    variables: Vec<(String, String)>,
    validations: Vec<(String, Option<String>, Option<String>)>,
}

impl Policy {
    fn from_rendered(r: &Rendered) -> Self {
        let vap = r.must("ValidatingAdmissionPolicy", "portway-agent-own-node-status");
        let s = &vap["spec"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Self {
            match_conditions: s["matchConditions"]
                .as_array()
                .expect("matchConditions")
                .iter()
                .filter_map(|m| text(&m["expression"]))
                .collect(),
            variables: s["variables"]
                .as_array()
                .expect("variables")
                .iter()
                .filter_map(|v| Some((text(&v["name"])?, text(&v["expression"])?)))
                .collect(),
            validations: s["validations"]
                .as_array()
                .expect("validations")
                .iter()
                .filter_map(|v| {
                    Some((
                        text(&v["expression"])?,
                        text(&v["message"]),
                        text(&v["messageExpression"]),
                    ))
                })
                .collect(),
        }
    }

    /// `Ok` when admitted (or not matched), `Err(messages)` when denied.
    fn admit(&self, request: &Value, object: &Value, old: &Value) -> Result<(), Vec<String>> {
        let mut ctx = cel::Context::default().with_all();
        ctx.add_variable_from_value("request", to_cel(request));
        ctx.add_variable_from_value("object", to_cel(object));
        ctx.add_variable_from_value("oldObject", to_cel(old));
        let eval = |ctx: &cel::Context, expr: &str| -> Result<cel::Value, String> {
            let program =
                cel::Program::compile(expr).map_err(|e| format!("compile {expr:?}: {e}"))?;
            program
                .execute(ctx)
                .map_err(|e| format!("evaluate {expr:?}: {e}"))
        };
        for m in &self.match_conditions {
            match eval(&ctx, m) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => return Ok(()),
                other => return Err(vec![format!("matchCondition {m}: {other:?}")]),
            }
        }
        let mut vars: Vec<(String, cel::Value)> = Vec::new();
        for (name, expr) in &self.variables {
            let value = eval(&ctx, expr).map_err(|e| vec![e])?;
            vars.push((name.clone(), value));
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> = vars
                .iter()
                .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), v.clone()))
                .collect();
            ctx.add_variable_from_value("variables", cel::Value::Map(cel::objects::Map::from(map)));
        }
        let mut denied = Vec::new();
        for (expr, message, message_expression) in &self.validations {
            match eval(&ctx, expr) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    let msg = message_expression
                        .as_deref()
                        .and_then(|me| match eval(&ctx, me) {
                            Ok(cel::Value::String(s)) => Some(s.to_string()),
                            _ => None,
                        })
                        .or_else(|| message.clone())
                        .unwrap_or_else(|| format!("failed: {expr}"));
                    denied.push(msg);
                }
                other => denied.push(format!("error in {expr}: {other:?}")),
            }
        }
        if denied.is_empty() {
            Ok(())
        } else {
            Err(denied)
        }
    }
}

/// JSON to CEL as the API server sees unstructured objects (integers as int).
fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => cel::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(o) => {
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> = o
                .iter()
                .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            cel::Value::Map(cel::objects::Map::from(map))
        }
    }
}

fn entry(node: &str, address: &str, status: &str) -> Value {
    json!({
        "node": node,
        "observedGeneration": 1,
        "addresses": [address],
        "conditions": [{"type": "Forwarding", "status": status, "reason": "RulesApplied",
                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    })
}

/// The DaemonSet serving `shop/web`, and a pod of it.
const WEB_DAEMONSET: &str = "portway-shop-web";
const WEB_AGENT_POD: &str = "portway-shop-web-x7k2p";

fn slb(nodes: Vec<Value>) -> Value {
    json!({
        "apiVersion": "portway.dev/v1alpha1",
        "kind": "ServiceLoadBalancer",
        "metadata": {"name": "web", "namespace": "shop", "generation": 1,
                     "labels": {"portway.dev/agent-daemonset": WEB_DAEMONSET}},
        "spec": {"pool": "default", "ports": [{"protocol": "TCP", "port": 80, "hostPort": 80}]},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Forwarding",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "nodes": nodes,
        },
    })
}

fn agent_request(operation: &str, sub_resource: &str, node: Option<&str>) -> Value {
    agent_request_from(operation, sub_resource, node, WEB_AGENT_POD)
}

fn agent_request_from(operation: &str, sub_resource: &str, node: Option<&str>, pod: &str) -> Value {
    let mut extra = serde_json::Map::new();
    if let Some(n) = node {
        extra.insert("authentication.kubernetes.io/node-name".into(), json!([n]));
        extra.insert("authentication.kubernetes.io/pod-name".into(), json!([pod]));
    }
    json!({
        "operation": operation,
        "subResource": sub_resource,
        "namespace": "shop",
        "name": "web",
        "userInfo": {
            "username": format!("system:serviceaccount:{NAMESPACE}:portway-agent"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NAMESPACE}")],
            "extra": extra,
        },
    })
}

#[test]
fn admission_policy_cel_lets_an_agent_write_only_its_own_node_entry() {
    let Some(helm) =
        helm_or_skip("admission_policy_cel_lets_an_agent_write_only_its_own_node_entry")
    else {
        return;
    };
    let policy = Policy::from_rendered(&helm.render(&[]));
    let a = || entry("node-a", "192.0.2.1", "True");
    let b = || entry("node-b", "192.0.2.2", "True");
    let old = slb(vec![a(), b()]);
    let upd = |node| agent_request("UPDATE", "status", Some(node));

    type Case = (&'static str, Value, Value, Value, Option<&'static str>);
    let mut changed_conditions = slb(vec![a(), b()]);
    changed_conditions["status"]["conditions"][0]["status"] = json!("False");
    let mut changed_generation = slb(vec![a(), b()]);
    changed_generation["status"]["observedGeneration"] = json!(7);
    let own_change = || slb(vec![entry("node-a", "192.0.2.1", "False"), b()]);
    let from_pod = |pod| agent_request_from("UPDATE", "status", Some("node-a"), pod);
    let unlabelled = || {
        let mut o = slb(vec![a(), b()]);
        o["metadata"]["labels"] = json!({});
        o
    };
    let labelled = |daemonset: &str| {
        let mut o = slb(vec![a(), b()]);
        o["metadata"]["labels"]["portway.dev/agent-daemonset"] = json!(daemonset);
        o
    };
    let cases: Vec<Case> = vec![
        (
            "own entry changed",
            upd("node-a"),
            slb(vec![entry("node-a", "192.0.2.1", "False"), b()]),
            old.clone(),
            None,
        ),
        (
            "own entry added",
            upd("node-c"),
            slb(vec![a(), b(), entry("node-c", "192.0.2.3", "True")]),
            old.clone(),
            None,
        ),
        (
            "own entry removed",
            upd("node-a"),
            slb(vec![b()]),
            old.clone(),
            None,
        ),
        (
            "own entry added to an empty list",
            upd("node-a"),
            slb(vec![a()]),
            slb(vec![]),
            None,
        ),
        (
            "nothing changed",
            upd("node-a"),
            old.clone(),
            old.clone(),
            None,
        ),
        (
            "other node's entry changed",
            upd("node-a"),
            slb(vec![a(), entry("node-b", "198.51.100.9", "True")]),
            old.clone(),
            Some("only the status.nodes entry of that node"),
        ),
        (
            "other node's entry removed",
            upd("node-a"),
            slb(vec![a()]),
            old.clone(),
            Some("only the status.nodes entry of that node"),
        ),
        (
            "entry for another node added",
            upd("node-a"),
            slb(vec![a(), b(), entry("node-c", "192.0.2.3", "True")]),
            old.clone(),
            Some("only the status.nodes entry of that node"),
        ),
        (
            "entries reordered",
            upd("node-c"),
            slb(vec![b(), a()]),
            old.clone(),
            Some("only the status.nodes entry of that node"),
        ),
        (
            "operator conditions changed",
            upd("node-a"),
            changed_conditions,
            old.clone(),
            Some("status.conditions"),
        ),
        (
            "observedGeneration changed",
            upd("node-a"),
            changed_generation,
            old.clone(),
            Some("status.conditions"),
        ),
        (
            "token without a node",
            agent_request("UPDATE", "status", None),
            old.clone(),
            old.clone(),
            Some("carries no node name"),
        ),
        (
            "agent of another Service's DaemonSet",
            from_pod("portway-shop-api-x7k2p"),
            own_change(),
            old.clone(),
            Some("may write only the ServiceLoadBalancer of its own Service"),
        ),
        (
            "agent of a DaemonSet whose name extends this one",
            from_pod("portway-shop-web-2-x7k2p"),
            own_change(),
            old.clone(),
            Some("whose agents are the pods of DaemonSet portway-shop-web"),
        ),
        (
            "a pod that only starts with the DaemonSet's name",
            from_pod("portway-shop-web-x7k2p-1"),
            own_change(),
            old.clone(),
            Some("of its own Service"),
        ),
        (
            "object not labelled by the operator yet",
            upd("node-a"),
            own_change(),
            unlabelled(),
            Some("not named yet"),
        ),
        (
            "label that is not a DaemonSet name (a regex)",
            from_pod("anything-x7k2p"),
            own_change(),
            labelled(".*"),
            Some("not named yet"),
        ),
        (
            "token bound to no pod",
            from_pod(""),
            own_change(),
            old.clone(),
            Some("in pod (none)"),
        ),
        (
            "spec update",
            agent_request("UPDATE", "", Some("node-a")),
            old.clone(),
            old.clone(),
            Some("only update the status subresource"),
        ),
        (
            "create",
            agent_request("CREATE", "", Some("node-a")),
            old.clone(),
            Value::Null,
            Some("only update the status subresource"),
        ),
        (
            "delete",
            agent_request("DELETE", "", Some("node-a")),
            Value::Null,
            old.clone(),
            Some("only update the status subresource"),
        ),
    ];
    for (what, request, object, old_object, denial) in &cases {
        let result = policy.admit(request, object, old_object);
        match (denial, &result) {
            (None, Ok(())) => {}
            (Some(text), Err(messages)) => assert!(
                messages.iter().any(|m| m.contains(text)),
                "{what}: denied, but not for {text:?}: {messages:?}"
            ),
            _ => panic!("{what}: expected {denial:?}, got {result:?}"),
        }
    }
    // Anyone else (the operator, an admin) is not matched at all.
    let mut operator = upd("node-a");
    operator["userInfo"]["username"] = json!(format!(
        "system:serviceaccount:{NAMESPACE}:portway-operator"
    ));
    assert_eq!(policy.admit(&operator, &slb(vec![]), &old), Ok(()));
    report::line(&format!(
        "chart: admission policy CEL: {} agent requests evaluated ({} admitted, {} denied)",
        cases.len() + 1,
        cases.iter().filter(|c| c.4.is_none()).count() + 1,
        cases.iter().filter(|c| c.4.is_some()).count()
    ));
}

// ---------------------------------------------------------------------------------------------
// Against a real kube-apiserver + etcd (KUBEBUILDER_ASSETS): install, upgrade, uninstall.

/// Runs helm against `kubeconfig`; returns (success, stdout+stderr).
fn helm_cluster(helm: &Helm, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let kc = kubeconfig.display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--kubeconfig", kc.as_str()]);
    let out = helm.run(&all);
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr_of(&out)
        ),
    )
}

fn must_helm(helm: &Helm, kubeconfig: &Path, args: &[&str]) -> String {
    let (ok, out) = helm_cluster(helm, kubeconfig, args);
    assert!(ok, "helm {args:?} failed:\n{out}");
    out
}

async fn exists<K>(api: &kube::Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.ok().flatten().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_uninstall_against_a_real_api_server() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::{Api, ResourceExt};
    use portway_crds::LoadBalancerPool;

    const TEST: &str = "helm_install_upgrade_uninstall_against_a_real_api_server";
    let Some(helm) = helm_or_skip(TEST) else {
        return;
    };
    let options = portway_e2e::EnvOptions {
        install_crds: false,
        ..portway_e2e::EnvOptions::default()
    };
    let Some(env) = portway_e2e::TestEnv::start_or_skip_with(TEST, options).await else {
        return;
    };
    let kc = env.kubeconfig_path().expect("kubeconfig");
    let chart = chart_dir().display().to_string();
    let client = env.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pools: Api<LoadBalancerPool> = Api::all(client.clone());
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let install = [
        "install",
        RELEASE,
        chart.as_str(),
        "-n",
        NAMESPACE,
        "--create-namespace",
    ];
    // --reset-values: without it, an upgrade with no value flags reuses the previous release's.
    let upgrade = [
        "upgrade",
        RELEASE,
        chart.as_str(),
        "-n",
        NAMESPACE,
        "--reset-values",
    ];

    // A bad value: rejected before anything is created.
    let (ok, out) = helm_cluster(
        &helm,
        &kc,
        &[&install[..], &["--set", "operator.replicas=-3"]].concat(),
    );
    assert!(!ok && out.contains("/operator/replicas"), "{out}");
    assert!(
        crds.list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );

    // 1. Plain install: CRDs from templates, the default pool through its post-install hook.
    must_helm(&helm, &kc, &install);
    let listed = crds.list(&Default::default()).await.expect("list CRDs");
    let names: BTreeSet<String> = listed.items.iter().map(|c| c.name_any()).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "clustercidrs.portway.dev".to_owned(),
            "loadbalancerpools.portway.dev".to_owned(),
            "serviceloadbalancers.portway.dev".to_owned()
        ])
    );
    for crd in &listed.items {
        let ann = crd.annotations();
        assert_eq!(
            ann.get("helm.sh/resource-policy").map(String::as_str),
            Some("keep")
        );
        assert_eq!(
            ann.get("meta.helm.sh/release-name").map(String::as_str),
            Some(RELEASE)
        );
    }
    let pool = pools
        .get("default")
        .await
        .expect("default pool created by the hook");
    let pool_uid = pool.uid();
    assert!(exists(&deployments, "portway-operator").await);
    for role in ["portway-operator", "portway-agent", "portway-agent-status"] {
        assert!(exists(&roles, role).await, "ClusterRole {role}");
    }
    assert!(exists(&policies, "portway-agent-own-node-status").await);
    let manifest = must_helm(&helm, &kc, &["get", "manifest", RELEASE, "-n", NAMESPACE]);
    assert!(
        !manifest.contains("\nkind: LoadBalancerPool"),
        "the pool is a hook at first"
    );

    // 2. Upgrade: the pool becomes a release object, adopted in place (same uid).
    must_helm(&helm, &kc, &upgrade);
    let pool = pools
        .get("default")
        .await
        .expect("default pool after upgrade");
    assert_eq!(
        pool.uid(),
        pool_uid,
        "the pool must be adopted, not re-created"
    );
    let manifest = must_helm(&helm, &kc, &["get", "manifest", RELEASE, "-n", NAMESPACE]);
    assert!(
        manifest.contains("\nkind: LoadBalancerPool"),
        "adopted into the release"
    );

    // 3. ServiceLB off (K3s --disable=servicelb): its objects go, the operator is told.
    must_helm(
        &helm,
        &kc,
        &[&upgrade[..], &["--set", "serviceLB.enabled=false"]].concat(),
    );
    assert!(!exists(&pools, "default").await);
    assert!(!exists(&roles, "portway-agent").await);
    assert!(!exists(&policies, "portway-agent-own-node-status").await);
    let d = deployments
        .get("portway-operator")
        .await
        .expect("deployment");
    let args = d
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        args.contains(&"--servicelb-enabled=false".to_owned()),
        "{args:?}"
    );
    must_helm(&helm, &kc, &upgrade);
    assert!(
        exists(&pools, "default").await,
        "back on: a plain release object now"
    );

    // 4. crds.install=false on upgrade: dropped from the release, but kept (resource policy).
    must_helm(
        &helm,
        &kc,
        &[&upgrade[..], &["--set", "crds.install=false"]].concat(),
    );
    assert_eq!(
        crds.list(&Default::default())
            .await
            .expect("list")
            .items
            .len(),
        3
    );
    must_helm(&helm, &kc, &upgrade);

    // 5. Uninstall: everything of the release goes except the kept CRDs. `--no-hooks`: there is
    //    no job controller here to run the pre-delete clean-up Job (Helm would wait for it);
    //    helm_uninstall_hook_leaves_nothing_behind_against_a_real_api_server plays its part.
    must_helm(
        &helm,
        &kc,
        &["uninstall", RELEASE, "-n", NAMESPACE, "--no-hooks"],
    );
    assert_eq!(
        crds.list(&Default::default())
            .await
            .expect("list")
            .items
            .len(),
        3,
        "CRDs are kept on uninstall"
    );
    assert!(!exists(&deployments, "portway-operator").await);
    for role in ["portway-operator", "portway-agent", "portway-agent-status"] {
        assert!(
            !exists(&roles, role).await,
            "ClusterRole {role} left behind"
        );
    }
    assert!(!exists(&policies, "portway-agent-own-node-status").await);
    assert!(
        !exists(&pools, "default").await,
        "the default pool belongs to the release"
    );

    // 6. Reinstall under the same name adopts the kept CRDs; under another name they must be
    //    left to the first owner (crds.install=false), as docs/install.md says.
    must_helm(&helm, &kc, &install);
    assert!(
        exists(&pools, "default").await,
        "CRD served: the pool is a plain object now"
    );
    must_helm(
        &helm,
        &kc,
        &["uninstall", RELEASE, "-n", NAMESPACE, "--no-hooks"],
    );
    let other = [
        "install",
        "portway-b",
        chart.as_str(),
        "-n",
        "portway-b",
        "--create-namespace",
    ];
    let (ok, out) = helm_cluster(&helm, &kc, &other);
    assert!(!ok && out.contains("cannot be imported"), "{out}");
    must_helm(
        &helm,
        &kc,
        &[&other[..], &["--set", "crds.install=false"]].concat(),
    );
    must_helm(
        &helm,
        &kc,
        &["uninstall", "portway-b", "-n", "portway-b", "--no-hooks"],
    );
    report::line(&format!(
        "{TEST}: install, 4 upgrades, uninstall, 2 reinstalls against a real API server"
    ));
}

/// The `portway.dev/LoadBalancer` condition of a Service, as (status, reason).
fn portway_condition(svc: &k8s_openapi::api::core::v1::Service) -> Option<(String, String)> {
    svc.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "portway.dev/LoadBalancer"))
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Field paths under `status` that `manager` owns on `svc` (its managedFields entry for the
/// status subresource), e.g. `f:conditions > k:{"type":"portway.dev/LoadBalancer"} > f:reason`.
fn owned_status_fields(svc: &k8s_openapi::api::core::v1::Service, manager: &str) -> Vec<String> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        if let Some(map) = v.as_object() {
            for (k, child) in map {
                if k == "." {
                    continue;
                }
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix} > {k}")
                };
                if child
                    .as_object()
                    .is_some_and(|m| m.keys().any(|k| k != "."))
                {
                    walk(&path, child, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    for e in svc.metadata.managed_fields.iter().flatten() {
        if e.manager.as_deref() == Some(manager)
            && e.subresource.as_deref() == Some("status")
            && let Some(f) = e.fields_v1.as_ref()
        {
            walk("", &f.0["f:status"], &mut out);
        }
    }
    out
}

/// `helm uninstall` with the chart's pre-delete hook, against a real API server. There is no
/// job controller or kubelet here, so the test plays them: when Helm has created the hook's Job
/// (and is waiting for it, the release still intact), the test runs the Job's `portway cleanup`
/// command in-process as the hook's ServiceAccount (impersonated, so the chart's hook RBAC is
/// what is tested) and then marks the Job complete. Before that, the real operator ran
/// in-process as the chart's operator ServiceAccount and made what it makes: a DaemonSet,
/// ServiceLoadBalancer, agent RoleBinding, finalizer, ingress and `portway.dev/LoadBalancer`
/// condition (next to another controller's condition, which server-side apply must leave alone).
/// Afterwards nothing Portway made is left, look-alikes are untouched, the hook's objects are
/// gone, and a second `portway cleanup` writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_uninstall_hook_leaves_nothing_behind_against_a_real_api_server() {
    use clap::Parser;
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use kube::api::{ListParams, Patch, PatchParams, PostParams};
    use kube::{Api, ResourceExt};
    use portway_crds::ServiceLoadBalancer;
    use portway_e2e::Identity;
    use portway_e2e::requests::RequestLog;
    use portway_node_agent::status::{KubeStatus, StatusSink};
    use portway_operator::cli::{Cli, Command as PortwayCommand};

    const TEST: &str = "helm_uninstall_hook_leaves_nothing_behind_against_a_real_api_server";
    const WAIT: Duration = Duration::from_secs(60);
    let Some(helm) = helm_or_skip(TEST) else {
        return;
    };
    let options = portway_e2e::EnvOptions {
        install_crds: false,
        ..portway_e2e::EnvOptions::default()
    };
    let Some(env) = portway_e2e::TestEnv::start_or_skip_with(TEST, options).await else {
        return;
    };
    let kc = env.kubeconfig_path().expect("kubeconfig");
    let chart = chart_dir().display().to_string();
    let admin = env.client();
    must_helm(
        &helm,
        &kc,
        &[
            "install",
            RELEASE,
            chart.as_str(),
            "-n",
            NAMESPACE,
            "--create-namespace",
        ],
    );

    // What a cluster has: Nodes, a namespace with three LoadBalancer Services (Portway's, one it
    // cannot place, another class's with its own finalizer), and a DaemonSet that is not
    // Portway's in Portway's namespace.
    for (node, ip) in [("node-a", "192.0.2.1"), ("node-b", "192.0.2.2")] {
        portway_e2e::objects::create_node(
            &admin,
            &portway_e2e::objects::node(node, &[], &[("InternalIP", ip)]),
        )
        .await
        .expect("node");
    }
    portway_e2e::objects::ensure_namespace(&admin, "shop")
        .await
        .expect("namespace");
    let services: Api<Service> = Api::namespaced(admin.clone(), "shop");
    let mut web =
        portway_e2e::objects::load_balancer_service("shop", "web", &[("http", "TCP", 80)]);
    services
        .create(&PostParams::default(), &web)
        .await
        .expect("web");
    web = portway_e2e::objects::load_balancer_service("shop", "lost", &[("http", "TCP", 81)]);
    web.metadata.annotations = Some([("portway.dev/pool".to_owned(), "missing".to_owned())].into());
    services
        .create(&PostParams::default(), &web)
        .await
        .expect("lost");
    let mut other =
        portway_e2e::objects::load_balancer_service("shop", "other", &[("http", "TCP", 82)]);
    other.metadata.finalizers = Some(vec!["example.com/keep".to_owned()]);
    if let Some(spec) = other.spec.as_mut() {
        spec.load_balancer_class = Some("example.com/lb".to_owned());
    }
    services
        .create(&PostParams::default(), &other)
        .await
        .expect("other");
    let foreign = json!({"type": "example.com/Ready", "status": "True", "reason": "Fine",
        "message": "set by another controller", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    services
        .patch_status(
            "web",
            &PatchParams::apply("example.com").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop"},
                "status": {"conditions": [foreign]}})),
        )
        .await
        .expect("another controller's condition");
    let daemonsets: Api<DaemonSet> = Api::namespaced(admin.clone(), NAMESPACE);
    let not_ours: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "log-shipper", "labels": {"app": "log-shipper"}},
        "spec": {"selector": {"matchLabels": {"app": "log-shipper"}},
                 "template": {"metadata": {"labels": {"app": "log-shipper"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }))
    .expect("daemonset");
    daemonsets
        .create(&PostParams::default(), &not_ours)
        .await
        .expect("a DaemonSet that is not Portway's");
    let other_version = services
        .get("other")
        .await
        .expect("other")
        .resource_version();

    // 1. The real operator, as the chart's operator ServiceAccount.
    let mut flags = portway_e2e::operator::base_flags(NAMESPACE);
    flags.push("--clustercidr-enabled=false".to_owned());
    let args = portway_e2e::operator::run_args(&flags).expect("flags");
    let op_log = RequestLog::new();
    let operator = portway_e2e::operator::Operator::start(
        "chart-uninstall",
        args,
        env.client_spec(Identity::service_account(NAMESPACE, "portway-operator"))
            .recorded(&op_log),
        env.dir().expect("dir"),
    )
    .expect("operator");
    let slbs: Api<ServiceLoadBalancer> = Api::namespaced(admin.clone(), "shop");
    let generation =
        portway_e2e::wait::eventually("the operator to place shop/web", WAIT, || async {
            let ds = daemonsets.get_opt("portway-shop-web").await.ok()??;
            let slb = slbs.get_opt("web").await.ok()??;
            let rb = Api::<RoleBinding>::namespaced(admin.clone(), "shop")
                .get_opt("portway-agent-status")
                .await
                .ok()??;
            let _ = (ds, rb);
            slb.metadata.generation
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(40)));
    // An agent on node-a reports Forwarding (the agent's own status code, as field manager
    // portway-agent/node-a): the operator publishes node-a and the Service turns Serving.
    let entry = portway_crds::NodeForwardingStatus {
        node: "node-a".to_owned(),
        observed_generation: Some(generation),
        addresses: vec!["10.42.0.5".to_owned()],
        conditions: vec![portway_crds::condition::new(
            "Forwarding",
            true,
            "RulesApplied",
            "forwarding",
            Some(generation),
            &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).expect("now"),
            ),
        )],
    };
    KubeStatus::new(admin.clone(), "shop", "web", "node-a")
        .publish(&entry)
        .await
        .expect("agent report");
    let served = portway_e2e::wait::eventually("shop/web to be Serving", WAIT, || async {
        let svc = services.get("web").await.ok()?;
        let ingress = svc
            .status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .clone()?;
        (portway_condition(&svc) == Some(("True".into(), "Serving".into())) && !ingress.is_empty())
            .then_some(svc)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(40)));
    let lost = portway_e2e::wait::eventually("shop/lost to say PoolNotFound", WAIT, || async {
        let svc = services.get("lost").await.ok()?;
        (portway_condition(&svc) == Some(("False".into(), "PoolNotFound".into()))).then_some(svc)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", operator.log_tail(40)));
    assert!(
        lost.finalizers().is_empty(),
        "an unplaced Service gets no finalizer"
    );
    // Server-side apply of a list-map keyed by type: the operator owns only its own entry, the
    // other controller's condition is still there.
    let conditions: Vec<String> = served
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|c| c.iter().map(|c| c.type_.clone()).collect())
        .unwrap_or_default();
    assert_eq!(
        conditions,
        ["example.com/Ready", "portway.dev/LoadBalancer"],
        "another controller's condition must survive Portway's writes"
    );
    let mut owned: Vec<String> = owned_status_fields(&served, "servicelb.portway.dev")
        .iter()
        .map(|p| p.split(" > ").take(2).collect::<Vec<_>>().join(" > "))
        .collect();
    owned.sort();
    owned.dedup();
    assert_eq!(
        owned,
        [
            "f:conditions > k:{\"type\":\"portway.dev/LoadBalancer\"}",
            "f:loadBalancer > f:ingress"
        ],
        "Portway's field manager owns exactly its condition and the ingress"
    );
    assert!(
        served
            .finalizers()
            .iter()
            .any(|f| f == "servicelb.portway.dev/cleanup")
    );

    // 2. `helm uninstall` (in the background: it waits for the hook's Job).
    let uninstall = {
        let bin = helm.bin.clone();
        let kc = kc.clone();
        std::thread::spawn(move || {
            Command::new(bin)
                .args(["uninstall", RELEASE, "-n", NAMESPACE, "--timeout", "3m"])
                .arg("--kubeconfig")
                .arg(kc)
                .output()
        })
    };
    let jobs: Api<Job> = Api::namespaced(admin.clone(), NAMESPACE);
    let job =
        portway_e2e::wait::eventually("Helm to create the pre-delete hook Job", WAIT, || async {
            jobs.get_opt("portway-cleanup").await.ok()?
        })
        .await
        .expect("the hook Job");
    // Pre-delete: the release is still all there, and so is the hook's RBAC.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NAMESPACE);
    assert!(exists(&deployments, "portway-operator").await);
    assert!(exists(&Api::<ClusterRole>::all(admin.clone()), "portway-operator").await);
    assert!(exists(&Api::<ClusterRole>::all(admin.clone()), "portway-cleanup").await);
    assert!(
        exists(
            &Api::<Role>::namespaced(admin.clone(), NAMESPACE),
            "portway-cleanup"
        )
        .await
    );

    // The kubelet's part: stopping the operator's pods is what the Job's scale-down achieves in
    // a cluster; the in-process operator is stopped the way SIGTERM stops it.
    operator.stop().await.expect("operator stops");
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let sa = pod.service_account_name.clone().expect("service account");
    let argv: Vec<String> = std::iter::once("portway".to_owned())
        .chain(pod.containers[0].args.clone().unwrap_or_default())
        .collect();
    let PortwayCommand::Cleanup(cleanup_args) = Cli::try_parse_from(&argv).expect("args").command
    else {
        panic!("the hook Job does not run portway cleanup: {argv:?}");
    };
    let mut opts = cleanup_args.options();
    opts.poll = Duration::from_millis(200);
    let as_hook = env
        .client_spec(Identity::service_account(NAMESPACE, &sa))
        .build()
        .expect("hook client");
    let missing = portway_operator::cli::cleanup::check_permissions(&as_hook, &opts)
        .await
        .expect("access reviews");
    assert!(missing.is_empty(), "the hook's RBAC lacks {missing:?}");
    let report = portway_operator::cleanup::run(&as_hook, &opts)
        .await
        .expect("portway cleanup as the hook's ServiceAccount");
    assert!(report.ok(), "{}", report.render());
    assert_eq!(
        report.deleted_daemonsets,
        [portway_operator::plan::Key::new(
            NAMESPACE,
            "portway-shop-web"
        )]
    );
    assert_eq!(report.deleted_service_load_balancers.len(), 1);
    assert_eq!(report.deleted_role_bindings.len(), 1);
    assert_eq!(report.removed_finalizers.len(), 1);
    assert_eq!(report.withdrawn_statuses.len(), 2, "{}", report.render());
    assert_eq!(
        report.deleted_pools,
        ["default"],
        "the default pool a post-install hook made is no release object: the hook removes it"
    );
    let stopped = deployments
        .get("portway-operator")
        .await
        .expect("deployment");
    assert_eq!(
        stopped.spec.and_then(|s| s.replicas),
        Some(0),
        "the hook scaled the operator to 0 before anything was removed"
    );

    // The job controller's part: the Job succeeded.
    let now = jiff::Timestamp::now().to_string();
    jobs.patch_status(
        "portway-cleanup",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "startTime": now, "completionTime": now, "succeeded": 1, "active": 0, "ready": 0,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods", "lastProbeTime": now, "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods", "lastProbeTime": now, "lastTransitionTime": now},
            ]}})),
    )
    .await
    .expect("mark the Job complete");
    let out = uninstall
        .join()
        .expect("helm thread")
        .expect("helm uninstall runs");
    assert!(
        out.status.success(),
        "helm uninstall: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );

    // 3. Nothing Portway made is left; what is not Portway's is untouched.
    let managed = "app.kubernetes.io/managed-by=portway";
    let left_ds = Api::<DaemonSet>::all(admin.clone())
        .list(&ListParams::default().labels(managed))
        .await
        .expect("daemonsets");
    assert!(
        left_ds.items.is_empty(),
        "{:?}",
        left_ds
            .items
            .iter()
            .map(|d| d.name_any())
            .collect::<Vec<_>>()
    );
    assert!(
        exists(&daemonsets, "log-shipper").await,
        "not Portway's: kept"
    );
    let left_slbs = Api::<ServiceLoadBalancer>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .expect("slbs");
    assert!(left_slbs.items.is_empty());
    let left_rbs = Api::<RoleBinding>::all(admin.clone())
        .list(&ListParams::default().labels(managed))
        .await
        .expect("rolebindings");
    assert!(left_rbs.items.is_empty());
    for name in ["web", "lost"] {
        let svc = services.get(name).await.expect("service");
        assert!(
            !svc.finalizers()
                .iter()
                .any(|f| f == "servicelb.portway.dev/cleanup"),
            "{name}: finalizer left"
        );
        assert_eq!(portway_condition(&svc), None, "{name}: condition left");
        assert!(
            owned_status_fields(&svc, "servicelb.portway.dev").is_empty(),
            "{name}: Portway still owns status fields"
        );
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.clone())
            .unwrap_or_default();
        assert!(ingress.is_empty(), "{name}: ingress left: {ingress:?}");
    }
    let web_after = services.get("web").await.expect("web");
    assert_eq!(
        web_after
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|c| c.iter().map(|c| c.type_.clone()).collect::<Vec<_>>()),
        Some(vec!["example.com/Ready".to_owned()]),
        "the other controller's condition survives the clean-up"
    );
    let other_after = services.get("other").await.expect("other");
    assert_eq!(
        other_after.resource_version(),
        other_version,
        "another class's Service untouched"
    );
    // The hook's objects went with its success; the release's with the uninstall.
    assert!(!exists(&jobs, "portway-cleanup").await);
    assert!(
        !exists(
            &Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE),
            "portway-cleanup"
        )
        .await
    );
    assert!(!exists(&Api::<ClusterRole>::all(admin.clone()), "portway-cleanup").await);
    assert!(
        !exists(
            &Api::<ClusterRoleBinding>::all(admin.clone()),
            "portway-cleanup"
        )
        .await
    );
    assert!(
        !exists(
            &Api::<Role>::namespaced(admin.clone(), NAMESPACE),
            "portway-cleanup"
        )
        .await
    );
    assert!(
        !exists(
            &Api::<RoleBinding>::namespaced(admin.clone(), NAMESPACE),
            "portway-cleanup"
        )
        .await
    );
    assert!(!exists(&deployments, "portway-operator").await);
    let left_pools = Api::<portway_crds::LoadBalancerPool>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .expect("pools");
    assert!(
        left_pools.items.is_empty(),
        "pools left: {:?}",
        left_pools
            .items
            .iter()
            .map(|p| p.name_any())
            .collect::<Vec<_>>()
    );

    // 4. Idempotent: a second run (by hand, after the uninstall) finds nothing and writes nothing.
    let log = RequestLog::new();
    let recorded = env
        .client_spec(Identity::Admin)
        .recorded(&log)
        .build()
        .expect("client");
    let again = portway_operator::cleanup::run(&recorded, &opts)
        .await
        .expect("second run");
    let writes: Vec<_> = log.all().into_iter().filter(|r| r.is_write()).collect();
    assert!(
        writes.is_empty(),
        "{}",
        portway_e2e::requests::describe(&writes)
    );
    assert_eq!(again.writes, 0);
    assert_eq!(
        again.operator,
        Some(portway_operator::cleanup::OperatorStop::Absent)
    );
    report::line(&format!(
        "{TEST}: operator made 1 DaemonSet, 1 ServiceLoadBalancer, 1 RoleBinding, 1 finalizer, 2 conditions, the chart 1 default pool; the pre-delete hook's portway cleanup ({} writes, as portway-cleanup) removed them all; 0 left, look-alikes untouched, hook objects gone; second run: 0 writes",
        report.writes
    ));
}

/// Asks the API server whether `user` may do `verb` on `group/resource[/sub]` (named `name`, in
/// `namespace`).
async fn may(
    client: &kube::Client,
    user: &str,
    (group, resource, verb, name): (&str, &str, &str, &str),
    namespace: &str,
) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{NAMESPACE}"),
                "system:authenticated".to_owned(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                verb: Some(verb.to_owned()),
                name: (name != "*").then(|| name.to_owned()),
                namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: kube::Api<SubjectAccessReview> = kube::Api::all(client.clone());
    let done = api
        .create(&Default::default(), &review)
        .await
        .expect("SubjectAccessReview");
    done.status.is_some_and(|s| s.allowed)
}

fn slb_object(nodes: Vec<Value>) -> Value {
    json!({
        "apiVersion": "portway.dev/v1alpha1",
        "kind": "ServiceLoadBalancer",
        "metadata": {"name": "web", "namespace": "shop",
                     "labels": {"portway.dev/agent-daemonset": WEB_DAEMONSET}},
        "spec": {
            "pool": "default",
            "ports": [{"protocol": "TCP", "port": 80, "hostPort": 80}],
            "clusterIPs": ["10.43.0.80"],
            "ipFamilies": ["IPv4"],
        },
        "status": {"nodes": nodes},
    })
}

/// Applies `entry` to web's status through `slbs` and asserts the API server denies it with a
/// message containing `needle`.
async fn expect_denied(
    who: &str,
    slbs: &kube::Api<kube::api::DynamicObject>,
    params: &kube::api::PatchParams,
    entry: Value,
    needle: &str,
) {
    match slbs
        .patch_status(
            "web",
            params,
            &kube::api::Patch::Apply(slb_object(vec![entry])),
        )
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert!(status.message.contains(needle), "{who}: {}", status.message)
        }
        other => panic!("{who} was admitted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_and_admission_policy_hold_on_a_real_api_server() {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
    use kube::Api;
    use kube::api::{Patch, PatchParams, PostParams};
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};

    const TEST: &str = "chart_rbac_and_admission_policy_hold_on_a_real_api_server";
    let Some(helm) = helm_or_skip(TEST) else {
        return;
    };
    let options = portway_e2e::EnvOptions {
        install_crds: false,
        ..portway_e2e::EnvOptions::default()
    };
    let Some(env) = portway_e2e::TestEnv::start_or_skip_with(TEST, options).await else {
        return;
    };
    let kc = env.kubeconfig_path().expect("kubeconfig");
    let chart = chart_dir().display().to_string();
    must_helm(
        &helm,
        &kc,
        &[
            "install",
            RELEASE,
            chart.as_str(),
            "-n",
            NAMESPACE,
            "--create-namespace",
        ],
    );
    let admin = env.client();
    let operator = format!("system:serviceaccount:{NAMESPACE}:portway-operator");
    let agent = format!("system:serviceaccount:{NAMESPACE}:portway-agent");

    // 1. The operator may do exactly what its code uses (both controllers on), nothing else.
    let granted = operator_grants(true, true);
    for (g, r, v, n) in &granted {
        assert!(
            may(&admin, &operator, (g, r, v, n), "").await,
            "the operator is denied {v} {g}/{r} ({n})"
        );
    }
    let never: [(&str, &str, &str, &str); 4] = [
        ("", "secrets", "get", "*"),
        (
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "create",
            "*",
        ),
        ("", "pods/exec", "create", "*"),
        (
            "rbac.authorization.k8s.io",
            "clusterroles",
            "bind",
            "cluster-admin",
        ),
    ];
    for (g, r, v, n) in never {
        assert!(
            !granted.contains(&(g.to_owned(), r.to_owned(), v.to_owned(), n.to_owned())),
            "test premise"
        );
        assert!(
            !may(&admin, &operator, (g, r, v, n), "").await,
            "the operator may {v} {g}/{r} ({n})"
        );
    }

    // 2. Agents read cluster-wide and write nowhere until the operator binds the status role.
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in ["shop", "other"] {
        let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns");
        namespaces
            .create(&PostParams::default(), &n)
            .await
            .expect("namespace");
    }
    for (g, r, v, _) in agent_grants(portway_node_agent::permissions::READ) {
        assert!(
            may(&admin, &agent, (&g, &r, &v, "*"), "").await,
            "agent {v} {r}"
        );
    }
    let status_patch = ("portway.dev", "serviceloadbalancers/status", "patch", "*");
    assert!(!may(&admin, &agent, status_patch, "shop").await);
    for (g, r) in [("portway.dev", "serviceloadbalancers"), ("", "services")] {
        for v in ["create", "update", "patch", "delete"] {
            assert!(
                !may(&admin, &agent, (g, r, v, "*"), "").await,
                "agent {v} {r}"
            );
        }
    }

    // 3. The operator (impersonated) binds the status role in one namespace, as it does for each
    //    namespace with a served Service: that needs its `bind` grant on exactly that role.
    let as_operator = env
        .client_impersonating(
            &operator,
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{NAMESPACE}"),
            ],
        )
        .expect("impersonating client");
    let binding = RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some("portway-agent-status".to_owned()),
            namespace: Some("shop".to_owned()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: "portway-agent-status".to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: "portway-agent".to_owned(),
            namespace: Some(NAMESPACE.to_owned()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(as_operator.clone(), "shop")
        .create(&PostParams::default(), &binding)
        .await
        .expect("the operator creates the agents' status RoleBinding");
    let mut escalate = binding.clone();
    escalate.metadata.name = Some("escalate".to_owned());
    escalate.role_ref.name = "cluster-admin".to_owned();
    assert!(
        Api::<RoleBinding>::namespaced(as_operator, "shop")
            .create(&PostParams::default(), &escalate)
            .await
            .is_err(),
        "the operator must not bind any other role"
    );
    assert!(may(&admin, &agent, status_patch, "shop").await);
    assert!(!may(&admin, &agent, status_patch, "other").await);

    // 4. The admission policy: an agent with a token bound to a pod on node-a may write only the
    //    node-a entry.
    for node in ["node-a", "node-b"] {
        portway_e2e::objects::create_node(&admin, &portway_e2e::objects::node(node, &[], &[]))
            .await
            .expect("node");
    }
    let pod = portway_e2e::objects::create_pod_on_node(
        &admin,
        NAMESPACE,
        WEB_AGENT_POD,
        "node-a",
        "portway-agent",
    )
    .await
    .expect("agent pod");
    let agent_client = env
        .pod_bound_client(NAMESPACE, "portway-agent", &pod)
        .await
        .expect("pod-bound agent client");
    let who = portway_e2e::TestEnv::whoami(&agent_client)
        .await
        .expect("whoami");
    assert_eq!(
        who.extra
            .as_ref()
            .and_then(|e| e.get("authentication.kubernetes.io/node-name"))
            .cloned(),
        Some(vec!["node-a".to_owned()]),
        "the API server binds the node name into the token"
    );
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("portway.dev", "v1alpha1", "ServiceLoadBalancer"),
        "serviceloadbalancers",
    );
    let admin_slbs: Api<DynamicObject> = Api::namespaced_with(admin.clone(), "shop", &ar);
    let created: DynamicObject = serde_json::from_value(slb_object(vec![])).expect("slb object");
    admin_slbs
        .create(&PostParams::default(), &created)
        .await
        .expect("ServiceLoadBalancer");
    let b_entry = entry("node-b", "192.0.2.2", "True");
    admin_slbs
        .patch_status(
            "web",
            &PatchParams::apply("portway-agent/node-b").force(),
            &Patch::Apply(slb_object(vec![b_entry.clone()])),
        )
        .await
        .expect("node-b's entry (written as admin)");

    let agent_slbs: Api<DynamicObject> = Api::namespaced_with(agent_client, "shop", &ar);
    let own = PatchParams::apply("portway-agent/node-a").force();
    agent_slbs
        .patch_status(
            "web",
            &own,
            &Patch::Apply(slb_object(vec![entry("node-a", "192.0.2.1", "True")])),
        )
        .await
        .expect("the agent writes its own entry");

    // The policy is loaded asynchronously after install; poll until it denies (bounded).
    let forged = slb_object(vec![entry("node-b", "198.51.100.66", "False")]);
    let denial = portway_e2e::wait::eventually(
        "the admission policy to deny a forged node-b entry",
        Duration::from_secs(30),
        || async {
            match agent_slbs
                .patch_status("web", &own, &Patch::Apply(forged.clone()))
                .await
            {
                Err(kube::Error::Api(status)) => Some(status.message.clone()),
                _ => None,
            }
        },
    )
    .await;
    let message = denial.expect("denied");
    assert!(
        message.contains("may change only the status.nodes entry of that node"),
        "{message}"
    );
    // Dropping another node's entry with a merge patch: denied too.
    let merge = json!({"status": {"nodes": [entry("node-a", "192.0.2.1", "True")]}});
    match agent_slbs
        .patch_status("web", &PatchParams::default(), &Patch::Merge(merge))
        .await
    {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains("only the status.nodes entry"),
            "{}",
            status.message
        ),
        other => panic!("removing node-b's entry was not denied: {other:?}"),
    }
    // An agent of another Service's DaemonSet on the same node may not write web's entry.
    let other_pod = portway_e2e::objects::create_pod_on_node(
        &admin,
        NAMESPACE,
        "portway-shop-api-x7k2p",
        "node-a",
        "portway-agent",
    )
    .await
    .expect("other Service's agent pod");
    let other_slbs: Api<DynamicObject> = Api::namespaced_with(
        env.pod_bound_client(NAMESPACE, "portway-agent", &other_pod)
            .await
            .expect("pod-bound client"),
        "shop",
        &ar,
    );
    expect_denied(
        "another Service's agent",
        &other_slbs,
        &own,
        entry("node-a", "203.0.113.6", "True"),
        "may write only the ServiceLoadBalancer of its own Service",
    )
    .await;
    // The spec is out of reach (RBAC), and so is a token that is not bound to a node.
    assert!(
        agent_slbs
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"pool": "stolen"}})),
            )
            .await
            .is_err()
    );
    let unbound = env
        .service_account_token(NAMESPACE, "portway-agent", None)
        .await
        .expect("unbound token");
    let unbound_slbs: Api<DynamicObject> = Api::namespaced_with(
        env.client_with_token(&unbound).expect("client"),
        "shop",
        &ar,
    );
    expect_denied(
        "an unbound token",
        &unbound_slbs,
        &own,
        entry("node-a", "192.0.2.1", "True"),
        "carries no node name",
    )
    .await;
    let after = admin_slbs.get("web").await.expect("slb");
    let nodes = after.data["status"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let b_after = nodes
        .iter()
        .find(|n| n["node"] == "node-b")
        .expect("node-b kept");
    assert_eq!(b_after["addresses"], b_entry["addresses"]);
    report::line(&format!(
        "{TEST}: {} operator grants allowed, {} refused; agent reads allowed, writes refused; status RoleBinding by the operator; admission policy: own entry admitted, 4 forgeries denied",
        granted.len(),
        never.len()
    ));
}

// ---------------------------------------------------------------------------------------------
// `portway migrate --from-cluster` against a real API server (here because this file owns the
// API-server tier of the packaging work): read-only, and its output applies as is.

/// The `portway` binary of this workspace, built (debug) into this test's target dir if needed.
fn portway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--locked",
            "-p",
            "portway-operator",
            "--bin",
            "portway",
        ])
        .output()
        .expect("cargo build");
    assert!(
        out.status.success(),
        "cargo build portway: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir.join("portway")
}

fn migrate_docs(stdout: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stdout);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("migrate prints YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_from_cluster_is_read_only_and_its_output_applies() {
    use k8s_openapi::api::core::v1::{Namespace, Node, Service};
    use kube::api::PostParams;
    use kube::{Api, ResourceExt};
    use portway_e2e::apply::{Applier, parse_documents, read_documents};

    const TEST: &str = "migrate_from_cluster_is_read_only_and_its_output_applies";
    let Some(env) = portway_e2e::TestEnv::start_or_skip(TEST).await else {
        return;
    };
    let admin = env.client();
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in ["web", "iot"] {
        let n: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns");
        namespaces
            .create(&PostParams::default(), &n)
            .await
            .expect("namespace");
    }
    let k3s = workspace().join("examples/k3s");
    let docs =
        read_documents(&[k3s.join("nodes.yaml"), k3s.join("services.yaml")]).expect("examples/k3s");
    Applier::new(admin.clone(), "k3s")
        .apply_all(&docs, None)
        .await
        .expect("the K3s sample applies");
    let versions = |nodes: Vec<Node>, services: Vec<Service>| -> BTreeMap<String, String> {
        nodes
            .iter()
            .map(|n| {
                (
                    format!("Node/{}", n.name_any()),
                    n.resource_version().unwrap_or_default(),
                )
            })
            .chain(services.iter().map(|s| {
                (
                    format!(
                        "Service/{}/{}",
                        s.namespace().unwrap_or_default(),
                        s.name_any()
                    ),
                    s.resource_version().unwrap_or_default(),
                )
            }))
            .collect()
    };
    let nodes: Api<Node> = Api::all(admin.clone());
    let services: Api<Service> = Api::all(admin.clone());
    let before = versions(
        nodes.list(&Default::default()).await.expect("nodes").items,
        services
            .list(&Default::default())
            .await
            .expect("services")
            .items,
    );

    let bin = portway_binary();
    let out = Command::new(&bin)
        .args(["migrate", "--from-cluster"])
        .env("KUBECONFIG", env.kubeconfig_path().expect("kubeconfig"))
        .output()
        .expect("portway migrate --from-cluster");
    assert!(
        out.status.success(),
        "migrate --from-cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_cluster = migrate_docs(&out.stdout);
    let after = versions(
        nodes.list(&Default::default()).await.expect("nodes").items,
        services
            .list(&Default::default())
            .await
            .expect("services")
            .items,
    );
    assert_eq!(before, after, "migrate --from-cluster wrote to the cluster");

    // Same pools and annotations as from the folder (the upstream ClusterCIDR API is not served
    // by Kubernetes 1.29+, so the folder's ClusterCIDR has no cluster counterpart).
    let folder = Command::new(&bin)
        .args(["migrate"])
        .arg(&k3s)
        .output()
        .expect("portway migrate examples/k3s");
    let not_cidr = |d: &&Value| d["kind"] != "ClusterCIDR";
    assert_eq!(
        from_cluster.iter().filter(not_cidr).collect::<Vec<_>>(),
        migrate_docs(&folder.stdout)
            .iter()
            .filter(not_cidr)
            .collect::<Vec<_>>()
    );

    // The output applies as printed (server-side apply, as docs/install.md says): the real
    // server accepts the pools (schema and CEL) and only adds the annotation to the Services.
    let text = String::from_utf8_lossy(&out.stdout);
    let printed = parse_documents("migrate", &text).expect("documents");
    Applier::new(admin.clone(), "portway-migrate")
        .apply_all(&printed, None)
        .await
        .expect("the migration applies");
    let pools: Api<portway_crds::LoadBalancerPool> = Api::all(admin.clone());
    let mut names: Vec<String> = pools
        .list(&Default::default())
        .await
        .expect("pools")
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["k3s-lbpool-dmz", "k3s-lbpool-factory", "k3s-servicelb"]
    );
    let shop: Api<Service> = Api::namespaced(admin.clone(), "web");
    let svc = shop.get("shop").await.expect("shop");
    assert_eq!(
        svc.annotations()
            .get("portway.dev/pool")
            .map(String::as_str),
        Some("k3s-lbpool-dmz")
    );
    let spec = svc.spec.expect("spec kept");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.43.80.15"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    assert_eq!(spec.ports.map(|p| p.len()), Some(1));
    assert_eq!(
        svc.metadata
            .labels
            .and_then(|l| l.get("app").cloned())
            .as_deref(),
        Some("shop"),
        "labels kept"
    );
    report::line(&format!(
        "{TEST}: {} documents from the cluster, no write while reading, all applied",
        from_cluster.len()
    ));
}
