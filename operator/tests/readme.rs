//! The README's promises: its first commands are the main job and the test command, and the
//! `plan -o wide` output it shows is what `portway plan` prints for the shipped examples.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).expect("README.md")
}

/// The fenced block that follows the first line containing `marker`.
fn block_after(text: &str, marker: &str) -> String {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("README has no {marker:?}"));
    let rest = &text[start..];
    let open = rest.find("```").expect("a fenced block");
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    let close = body.find("\n```").expect("closing fence");
    body[..close].to_owned()
}

#[test]
fn the_first_commands_are_plan_on_the_examples_and_the_test_script() {
    let first = block_after(&readme(), "## First commands");
    let commands: Vec<&str> = first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        commands,
        [
            "cargo run -p portway-operator -- plan examples/",
            "./scripts/test.sh"
        ]
    );
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "exec ./scripts/test.sh"),
        ".ci/run must run the README's test command"
    );
}

#[test]
fn the_plan_table_in_the_readme_is_what_plan_prints() {
    let shown = block_after(&readme(), "With `-o wide`:");
    let out = Command::new(env!("CARGO_BIN_EXE_portway"))
        .args(["plan", "examples/", "-o", "wide"])
        .current_dir(root())
        .output()
        .expect("portway plan runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    assert_eq!(
        shown.trim_end(),
        printed.trim_end(),
        "README.md shows an outdated `portway plan examples/ -o wide`; paste the new output"
    );
}

/// Every `portway plan` command the pull-request check docs tell users to copy parses.
#[test]
fn the_pull_request_check_commands_parse() {
    use clap::Parser;
    let docs = std::fs::read_to_string(root().join("docs/check-pull-requests.md"))
        .expect("docs/check-pull-requests.md");
    let section = {
        let text = readme();
        let start = text
            .find("## Check pull requests")
            .expect("a Check pull requests section");
        text[start..].to_owned()
    };
    assert!(
        section.contains("(docs/check-pull-requests.md)"),
        "README links the page"
    );
    let mut checked = 0;
    for text in [docs.as_str(), section.as_str()] {
        for line in text.lines() {
            let line = line
                .trim()
                .trim_start_matches("$ ")
                .trim_start_matches("run: ");
            if !line.starts_with("portway plan") {
                continue;
            }
            // Up to a redirect or comment; shell quotes and variables become plain words.
            let command = line.split(['>', '#']).next().unwrap_or_default();
            let words: Vec<String> = command
                .split_whitespace()
                .map(|w| w.replace('"', ""))
                .collect();
            if let Err(e) = portway_operator::cli::Cli::try_parse_from(&words) {
                panic!("{line:?} does not parse: {e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} commands found");
}
