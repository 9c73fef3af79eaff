//! Harness processes: started detached (`setsid`, stdin closed, output appended to
//! `logs/<name>.log`, pid in `pids/<name>.pid`) in a node's network namespace (`nsenter --net`)
//! and cgroup, so they outlive the `up` that started them; stopped by pid with SIGTERM, then
//! SIGKILL after a grace period. A pid is only signalled while its command line is still the
//! recorded program (never a recycled pid).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::components::Component;
use super::spec::ClusterSpec;
use super::{ClusterError, Result, cgroup, sys};

/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

pub fn pid_file(spec: &ClusterSpec, name: &str) -> PathBuf {
    spec.pids_dir().join(format!("{name}.pid"))
}

pub fn log_file(spec: &ClusterSpec, name: &str) -> PathBuf {
    spec.logs_dir().join(format!("{name}.log"))
}

/// Starts a component; returns its pid.
pub fn start(spec: &ClusterSpec, c: &Component) -> Result<u32> {
    let log_path = log_file(spec, &c.name);
    sys::mkdir(&spec.logs_dir())?;
    sys::mkdir(&spec.pids_dir())?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(ClusterError::io(format!("open {}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(ClusterError::io("duplicate a log file"))?;
    let node = c.node.as_deref().and_then(|n| spec.node(n));
    let mut cmd = match node {
        Some(n) => sys::in_netns(&n.netns_path(), &c.program.display().to_string(), &c.args),
        None => {
            let mut cmd = Command::new(&c.program);
            cmd.args(&c.args);
            cmd
        }
    };
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of this process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(ClusterError::io(format!("start {}", sys::show(&cmd))))?;
    let pid = child.id();
    // The pid file first: whatever fails next, `down` can still find and stop the process.
    sys::write(&pid_file(spec, &c.name), pid.to_string())?;
    if let Some(n) = node {
        cgroup::add(&n.daemon_cgroup(), pid)?;
    }
    Ok(pid)
}

/// The pid of a running component (its pid file names a live process running its program).
pub fn running(spec: &ClusterSpec, c: &Component) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(spec, &c.name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_program(pid, &c.program).then_some(pid)
}

/// Whether `pid` runs `program` (after nsenter's exec, or nsenter itself for a moment).
fn is_program(pid: u32, program: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if stat.contains(") Z ") {
        return false; // a zombie is not running
    }
    let base = program
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    cmdline.split(|b| *b == 0).take(4).any(|arg| {
        Path::new(&*String::from_utf8_lossy(arg))
            .file_name()
            .is_some_and(|f| f.to_string_lossy() == base)
    })
}

/// Stops a component: SIGTERM, up to `grace`, SIGKILL. Ok when it is not running (any more).
pub fn stop(spec: &ClusterSpec, c: &Component, grace: Duration) -> Result<()> {
    let Some(pid) = running(spec, c) else {
        let _ = std::fs::remove_file(pid_file(spec, &c.name));
        return Ok(());
    };
    let ipid = i32::try_from(pid).map_err(|e| ClusterError::State(format!("pid {pid}: {e}")))?;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(ipid, libc::SIGTERM) };
    let start = Instant::now();
    while running(spec, c).is_some() {
        if start.elapsed() > grace {
            // SAFETY: as above.
            unsafe { libc::kill(ipid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if running(spec, c).is_some() {
        return Err(ClusterError::State(format!(
            "{} (pid {pid}) does not stop",
            c.name
        )));
    }
    let _ = std::fs::remove_file(pid_file(spec, &c.name));
    Ok(())
}
