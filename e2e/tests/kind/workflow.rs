//! The GitHub workflows parse, and run what they claim: the e2e matrix covers exactly the kind
//! variants of `e2e/kind/`, each job runs `e2e/run.sh <variant>` with missing tools made fatal
//! (a runner without Docker must not turn green), installs a pinned kind and helm; `ci.yml` runs
//! the test command; the fuzz job runs every target for a fixed time.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::config::Variant;

fn workflow(name: &str) -> Value {
    let path = portway_e2e::envtest::workspace_root()
        .join(".github/workflows")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"))
}

/// Every `run:` script of a job, joined.
fn scripts(job: &Value) -> String {
    job["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn step<'a>(job: &'a Value, run_contains: &str) -> &'a Value {
    job["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["run"].as_str().is_some_and(|r| r.contains(run_contains)))
        .unwrap_or_else(|| panic!("no step runs {run_contains:?}"))
}

#[test]
fn e2e_workflow_runs_every_variant_on_a_docker_runner() {
    let wf = workflow("e2e.yml");
    let job = &wf["jobs"]["kind"];
    assert_eq!(job["runs-on"], "ubuntu-latest");
    assert!(job["timeout-minutes"].as_i64().is_some_and(|m| m <= 90));
    let matrix: BTreeSet<&str> = job["strategy"]["matrix"]["variant"]
        .as_array()
        .expect("matrix.variant")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let variants: BTreeSet<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
    assert_eq!(matrix, variants);
    // Each variant has its config file, and the job runs the script for its variant.
    for v in Variant::ALL {
        assert!(v.path().is_file(), "{}", v.path().display());
    }
    let run = step(job, "e2e/run.sh");
    assert_eq!(
        run["run"].as_str().map(str::trim),
        Some("e2e/run.sh ${{ matrix.variant }}")
    );
    assert_eq!(run["env"]["PORTWAY_E2E_REQUIRE"], "1");
    let all = scripts(job);
    assert!(all.contains("sha256sum -c"), "kind is not verified");
    assert!(
        wf["env"]["KIND_VERSION"]
            .as_str()
            .is_some_and(|v| v.starts_with("v0.")),
        "kind is not pinned"
    );
    assert!(all.contains("scripts/install-test-deps.sh"), "helm");
    assert!(
        all.contains("net.ipv6.conf.all.forwarding=1"),
        "IPv6 forwarding"
    );
}

#[test]
fn ci_workflow_runs_the_test_command_and_the_fuzzers() {
    let wf = workflow("ci.yml");
    let test = scripts(&wf["jobs"]["test"]);
    assert!(test.contains(".ci/run"), "{test}");
    let fuzz = scripts(&wf["jobs"]["fuzz"]);
    assert!(fuzz.contains("bash fuzz/run.sh 60"), "{fuzz}");
    assert!(fuzz.contains("cargo +nightly install cargo-fuzz"), "{fuzz}");
    // fuzz/run.sh runs every target for the given time and fails on a crash.
    let run = std::fs::read_to_string(portway_e2e::envtest::workspace_root().join("fuzz/run.sh"))
        .expect("fuzz/run.sh");
    assert!(run.contains("cargo +nightly fuzz list") && run.contains("-max_total_time="));
    // Both workflows trigger on pull requests.
    for name in ["ci.yml", "e2e.yml"] {
        let on = &workflow(name)["on"];
        assert!(on.get("pull_request").is_some(), "{name}: {on}");
    }
}
