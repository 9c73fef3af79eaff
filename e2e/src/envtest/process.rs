//! A child process (etcd, kube-apiserver) that cannot outlive its test.
//!
//! Each child runs in its own process group and gets `SIGKILL` from the kernel if the thread that
//! started it dies (`PR_SET_PDEATHSIG`), so even a test binary killed with `SIGKILL` leaves no
//! server behind. Dropping a [`ManagedProcess`] sends `SIGTERM` to the whole group, waits a
//! bounded time, then sends `SIGKILL` and reaps the child.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a child gets to exit after `SIGTERM` before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running child process in its own process group, with output in a log file.
#[derive(Debug)]
pub struct ManagedProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
    stopped: bool,
}

impl ManagedProcess {
    /// Starts `program args..` in a new process group, stdout and stderr appended to `log`.
    ///
    /// Call this from the thread that will live as long as the process should (a test's own
    /// thread or a tokio worker), never from `spawn_blocking`: the parent-death signal fires when
    /// the spawning *thread* exits.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> std::io::Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        Ok(Self {
            name,
            child,
            log: log.to_owned(),
            exited: None,
            stopped: false,
        })
    }

    /// The process id (also its process-group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process is (`etcd`, `kube-apiserver`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The log file holding its output.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited (reaped without blocking).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Stops the whole process group: `SIGTERM`, up to [`STOP_GRACE`], then `SIGKILL`. Idempotent.
    pub fn stop(&mut self) {
        // Signal the group once only: after the leader is reaped and the group is empty, its
        // id may be reused by an unrelated process.
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let pgid = self.pid() as libc::pid_t;
        if self.exit_status().is_none() {
            signal_group(pgid, libc::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while self.exit_status().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Also reaches any helper the leader may have started in its group.
        signal_group(pgid, libc::SIGKILL);
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared. ESRCH
    // (group already gone) is the expected outcome after a clean exit and is ignored.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Whether a process with this id still exists (and is not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; `Z` (zombie) and `X` (dead) are not running.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The last `lines` lines of a log file (reads at most the final 64 KiB).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
