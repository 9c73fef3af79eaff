//! Running the iptables tools: bounded in time, killed with the agent, stderr kept for errors.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Longest a dump may take.
pub const SAVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Output of a finished tool.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A tool could not be run to completion.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{0} was not found")]
    NotFound(String),
    #[error("running {program}: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {seconds} s")]
    Timeout { program: String, seconds: u64 },
}

/// Runs `program args`, feeding `stdin`, and waits at most `timeout`. The child gets
/// `PR_SET_PDEATHSIG(SIGKILL)`: if the agent is killed while a batch waits for the xtables lock,
/// the batch dies with it instead of landing later over a restarted agent's rules (each batch is
/// one atomic table commit, so killing it never leaves half a batch).
pub async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output, ExecError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ExecError::NotFound(program.to_owned())
        } else {
            ExecError::Io {
                program: program.to_owned(),
                source: e,
            }
        }
    })?;
    let io_err = |source| ExecError::Io {
        program: program.to_owned(),
        source,
    };
    let work = async {
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await.map_err(io_err)?;
            pipe.shutdown().await.map_err(io_err)?;
            drop(pipe);
        }
        child.wait_with_output().await.map_err(io_err)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(out)) => Ok(Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ExecError::Timeout {
            program: program.to_owned(),
            seconds: timeout.as_secs(),
        }),
    }
}

/// True when a failed restore is worth retrying: the xtables lock was held past `--wait`, or
/// the kernel answered EAGAIN/EBUSY (nf_tables generation races with another writer).
pub fn is_transient(stderr: &str) -> bool {
    const PATTERNS: &[&str] = &[
        "xtables lock",
        "Another app is currently holding",
        "Resource temporarily unavailable",
        "Device or resource busy",
        "Stopped waiting",
    ];
    PATTERNS.iter().any(|p| stderr.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_lock_and_eagain_as_transient() {
        assert!(is_transient(
            "Another app is currently holding the xtables lock. Stopped waiting after 5s."
        ));
        assert!(is_transient(
            "iptables-restore: line 3 failed: Resource temporarily unavailable"
        ));
        assert!(!is_transient(
            "line 8: RULE_APPEND failed (Invalid argument): rule in chain PREROUTING"
        ));
    }

    #[tokio::test]
    async fn runs_feeds_stdin_and_reports_missing_tools() {
        let out = run("cat", &[], Some("hello"), Duration::from_secs(5))
            .await
            .expect("cat runs");
        assert!(out.success);
        assert_eq!(out.stdout, "hello");
        let missing = run("portway-no-such-tool", &[], None, Duration::from_secs(5)).await;
        assert!(matches!(missing, Err(ExecError::NotFound(_))));
        let slow = run("sleep", &["5"], None, Duration::from_millis(50)).await;
        assert!(matches!(slow, Err(ExecError::Timeout { .. })));
    }
}
