//! Identical input, identical bytes: two runs of the binary; and the same documents in any
//! file and document order (a property test that shuffles both, with rejected documents and a
//! duplicate among them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use portway_operator::cli::plan::Format;
use proptest::prelude::*;
use serde_json::Value;

use super::support::{code, portway, render, root, stderr};

#[test]
fn two_runs_print_the_same_bytes_in_every_format_with_the_fixed_time() {
    for format in ["yaml", "wide", "json"] {
        let first = portway(&["examples/", "-o", format]);
        assert_eq!(code(&first), 0, "{}", stderr(&first));
        // A second apart: a wall-clock timestamp (RFC 3339, whole seconds) would differ.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = portway(&["examples/", "-o", format]);
        assert_eq!(
            first.stdout, second.stdout,
            "-o {format} differs between runs"
        );
    }
    let yaml = String::from_utf8(portway(&["examples/"]).stdout).expect("UTF-8");
    let times: Vec<&str> = yaml
        .lines()
        .filter_map(|l| {
            l.trim()
                .trim_start_matches("- ")
                .strip_prefix("lastTransitionTime: ")
        })
        .collect();
    assert!(times.len() >= 8, "{yaml}");
    assert!(
        times
            .iter()
            .all(|t| t.trim_matches('\'').trim_matches('"') == "1970-01-01T00:00:00Z"),
        "{times:?}"
    );
}

/// The documents of `examples/*.yaml` as JSON (which is YAML), per file, plus a file of
/// documents that are rejected: a misspelt pool field, an unknown Service field, and a second
/// worker-1 with another address (so both copies are rejected).
fn corpus() -> Vec<(String, Vec<String>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root().join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        files.push((name, docs.iter().map(Value::to_string).collect()));
    }
    files.sort();
    let extra = [
        r#"{"apiVersion":"portway.dev/v1alpha1","kind":"LoadBalancerPool","metadata":{"name":"typo"},"spec":{"nodeSelector":{},"serviceSelectr":{}}}"#,
        r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"worker-1"},"status":{"addresses":[{"type":"ExternalIP","address":"203.0.113.99"}]}}"#,
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"odd","namespace":"shop"},"spec":{"type":"LoadBalancer","clusterIP":"10.43.9.9","ports":[{"port":9,"prot":"TCP"}]}}"#,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"unused","namespace":"shop"}}"#,
    ];
    files.push(("zz-extra.yaml".into(), extra.map(str::to_owned).to_vec()));
    files
}

/// Writes `files` into `dir`, each file's documents in `orders[i]` order.
fn write(dir: &std::path::Path, files: &[(String, Vec<String>)], orders: &[Vec<usize>]) {
    for ((name, docs), order) in files.iter().zip(orders) {
        let text: Vec<&str> = order.iter().map(|&i| docs[i].as_str()).collect();
        std::fs::write(dir.join(name), text.join("\n---\n")).expect("write");
    }
}

/// `line` with every `file#N` replaced by `file#orders[file][N]` (the document's index in the
/// unshuffled file), and the list of other copies in a duplicate's reason sorted again.
fn unshuffle(line: &str, dir: &str, names: &[String], orders: &[Vec<usize>]) -> String {
    let mut out = line.to_owned();
    for (name, order) in names.iter().zip(orders) {
        let prefix = format!("{dir}/{name}#");
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&prefix) {
            let after = &rest[at + prefix.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let n: usize = after[..digits].parse().expect("a document index");
            result.push_str(&rest[..at]);
            result.push_str(&format!("{prefix}<{}>", order[n]));
            rest = &after[digits..];
        }
        result.push_str(rest);
        out = result;
    }
    if let Some((head, tail)) = out.split_once("also in ")
        && let Some((list, end)) = tail.split_once("; no copy is used")
    {
        let mut others: Vec<&str> = list.split(", ").collect();
        others.sort();
        out = format!("{head}also in {}; no copy is used{end}", others.join(", "));
    }
    out
}

/// Splits a `-o yaml` plan into the lines that name a document's position (rejections, as a
/// sorted list after `unshuffle`) and everything else (the plan proper, in order).
fn split(yaml: &str, dir: &str, names: &[String], orders: &[Vec<usize>]) -> (String, Vec<String>) {
    let mut rest = String::new();
    let mut rejected = Vec::new();
    for line in yaml.lines() {
        if line.starts_with("# skipped ") {
            rejected.push(unshuffle(line, dir, names, orders));
        } else {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    rejected.sort();
    (rest, rejected)
}

/// Shuffles of every file's documents, and of the order the files are named in.
fn shuffles() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>)> {
    let files = corpus();
    let n = files.len();
    let docs: Vec<_> = files
        .iter()
        .map(|(_, d)| Just((0..d.len()).collect::<Vec<usize>>()).prop_shuffle())
        .collect();
    (docs, Just((0..n).collect::<Vec<usize>>()).prop_shuffle())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The plan proper is byte-identical and the rejections are the same documents for the same
    /// reasons, in any order of files and documents; with only the files reordered (command-line
    /// order), every format is byte-identical, rejections included.
    #[test]
    fn the_plan_is_the_same_in_any_file_and_document_order((orders, file_order) in shuffles()) {
        let files = corpus();
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        let identity: Vec<Vec<usize>> = files.iter().map(|(_, d)| (0..d.len()).collect()).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_str().expect("UTF-8").to_owned();
        let paths = |order: &[usize]| -> Vec<PathBuf> {
            order.iter().map(|&i| dir.path().join(&names[i])).collect()
        };
        let sorted: Vec<usize> = (0..names.len()).collect();

        write(dir.path(), &files, &identity);
        let base: BTreeMap<&str, String> = [("yaml", Format::Yaml), ("wide", Format::Wide), ("json", Format::Json)]
            .into_iter()
            .map(|(k, f)| (k, render(&paths(&sorted), f)))
            .collect();
        prop_assert_eq!(base["yaml"].matches("# skipped ").count(), 5, "{}", base["yaml"]);

        // Files in another command-line order: every byte the same.
        for (k, f) in [("yaml", Format::Yaml), ("wide", Format::Wide), ("json", Format::Json)] {
            prop_assert_eq!(&render(&paths(&file_order), f), &base[k], "-o {} depends on the file order", k);
        }

        // Documents shuffled too.
        write(dir.path(), &files, &orders);
        let shuffled = render(&paths(&file_order), Format::Yaml);
        let (plan_a, rejected_a) = split(&base["yaml"], &d, &names, &identity);
        let (plan_b, rejected_b) = split(&shuffled, &d, &names, &orders);
        prop_assert_eq!(plan_a, plan_b, "the plan depends on the document order");
        prop_assert_eq!(rejected_a, rejected_b);
        // The JSON plan, less what names positions, is identical too.
        let strip = |text: &str| {
            let mut v: Value = serde_json::from_str(text).expect("JSON");
            for key in ["rejected", "problems"] {
                v.as_object_mut().expect("object").remove(key);
            }
            v.to_string()
        };
        prop_assert_eq!(strip(&base["json"]), strip(&render(&paths(&file_order), Format::Json)));
    }
}
