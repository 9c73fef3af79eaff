//! Files under the state dir (`/run/portway`) that the exec probes read: `ready` exists only
//! while the agent's rules are applied; `heartbeat` is touched while its watch loop runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub const READY_FILE: &str = "ready";
pub const HEARTBEAT_FILE: &str = "heartbeat";
/// Local mode writes the node status here.
pub const STATUS_FILE: &str = "status.json";

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.path)
    }

    /// Creates or removes `ready`.
    pub fn set_ready(&self, ready: bool) -> std::io::Result<()> {
        let p = self.path.join(READY_FILE);
        if ready {
            std::fs::write(p, b"")
        } else {
            match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }

    /// Rewrites `heartbeat` (updating its mtime).
    pub fn touch_heartbeat(&self) -> std::io::Result<()> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        std::fs::write(self.path.join(HEARTBEAT_FILE), now.as_secs().to_string())
    }
}

/// `probe ready`: Ok when `ready` exists.
pub fn probe_ready(dir: &Path) -> Result<(), String> {
    if dir.join(READY_FILE).exists() {
        Ok(())
    } else {
        Err(format!(
            "{} does not exist: rules are not applied",
            dir.join(READY_FILE).display()
        ))
    }
}

/// `probe live`: Ok when `heartbeat` was touched within `max_age`.
pub fn probe_live(dir: &Path, max_age: Duration) -> Result<(), String> {
    let p = dir.join(HEARTBEAT_FILE);
    let modified = std::fs::metadata(&p)
        .and_then(|m| m.modified())
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default();
    if age <= max_age {
        Ok(())
    } else {
        Err(format!(
            "{} is {} s old (limit {} s): the watch loop is stuck",
            p.display(),
            age.as_secs(),
            max_age.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_heartbeat_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = StateDir::new(dir.path().join("portway"));
        s.create().expect("create");
        assert!(probe_ready(s.path()).is_err());
        assert!(probe_live(s.path(), Duration::from_secs(60)).is_err());
        s.set_ready(true).expect("ready");
        s.touch_heartbeat().expect("heartbeat");
        assert!(probe_ready(s.path()).is_ok());
        assert!(probe_live(s.path(), Duration::from_secs(60)).is_ok());
        s.set_ready(false).expect("unready");
        s.set_ready(false).expect("unready twice is fine");
        assert!(probe_ready(s.path()).is_err());
    }
}
