//! Running the system's tools (`ip`, `nsenter`, `podman`, `ctr`) with their output in errors.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{ClusterError, Result};

/// How a command is shown in errors and logs.
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion; its stdout, or an error with its output.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(ClusterError::io(format!("run {}", show(cmd))))?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command: show(cmd),
            output: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `program args...`.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// `nsenter --net=<netns> -- program args...`: in a node's network namespace without
/// `ip netns exec`'s private /sys remount (which would hide the cgroup mounts).
pub fn in_netns<I, S>(netns: &Path, program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(program)
        .args(args);
    c
}

/// Whether a program is on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// Writes a file, creating its folder.
pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(ClusterError::io(format!("create {}", dir.display())))?;
    }
    std::fs::write(path, contents).map_err(ClusterError::io(format!("write {}", path.display())))
}

/// Creates a folder and its parents.
pub fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(ClusterError::io(format!("create {}", path.display())))
}
