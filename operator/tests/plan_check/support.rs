//! Running `portway plan` (the binary, or the library on a folder) on YAML written for a test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clap::Parser;
use portway_operator::cli::plan::{Args, Format, Plan, plan_time};
use portway_operator::cli::{Cli, Command as Sub};

/// The workspace root (where `examples/` and `docs/` are).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `portway plan` with `args`, run in the workspace root.
pub fn portway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portway"))
        .arg("plan")
        .args(args)
        .current_dir(root())
        .output()
        .expect("portway runs")
}

/// The exit code, which a signal would leave unset.
pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A folder with `files` (name, YAML) in it.
pub fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    dir
}

/// `portway plan` arguments with every default (as the command line gives them).
pub fn default_args() -> Args {
    let cli = Cli::try_parse_from(["portway", "plan", "unused"]).expect("parses");
    match cli.command {
        Sub::Plan(args) => args,
        other => panic!("not plan: {other:?}"),
    }
}

/// The plan of `paths` (in this order) rendered as `format`, through the library.
pub fn render(paths: &[PathBuf], format: Format) -> String {
    let set = portway_operator::input::read_paths(paths).expect("input reads");
    Plan::new(&set, &default_args().servicelb, plan_time()).render(format)
}

/// Copies `examples/*.yaml` into a new folder, to change one thing in it.
pub fn copy_of_examples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(root().join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "yaml") {
            let name = path.file_name().expect("file name");
            std::fs::copy(&path, dir.path().join(name)).expect("copy");
        }
    }
    dir
}

/// Replaces `from` (which must occur once) with `to` in `file`.
pub fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read");
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} in {}",
        file.display()
    );
    std::fs::write(file, text.replace(from, to)).expect("write");
}
