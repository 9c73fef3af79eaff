//! The nodes' cgroups, in every mounted hierarchy (cgroup v1 controllers, named hierarchies and
//! the v2 tree of a hybrid setup): `/pwc-<node>` is the kubelet's `--cgroup-root`, the node's
//! daemons (containerd and its shims, kubelet, kube-proxy, and etcd, kube-apiserver,
//! kube-scheduler on the control plane) sit in `/pwc-<node>/daemons`. `down` kills every process
//! left in the tree and removes it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{ClusterError, Result};

/// Mount points of cgroup hierarchies (v1 and v2).
pub fn hierarchies() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// Creates `path` in every hierarchy (cpuset levels get their parent's cpus and mems).
pub fn create(path: &str) -> Result<()> {
    for h in hierarchies() {
        let mut dir = h.clone();
        for part in rel(path).split('/') {
            let parent = dir.clone();
            dir.push(part);
            if dir.exists() {
                continue;
            }
            std::fs::create_dir(&dir)
                .map_err(ClusterError::io(format!("create cgroup {}", dir.display())))?;
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = std::fs::read_to_string(parent.join(f)) {
                    std::fs::write(dir.join(f), v.trim())
                        .map_err(ClusterError::io(format!("write {}", dir.join(f).display())))?;
                }
            }
        }
    }
    Ok(())
}

/// Moves a process into `path` in every hierarchy.
pub fn add(path: &str, pid: u32) -> Result<()> {
    for h in hierarchies() {
        let procs = h.join(rel(path)).join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .map_err(ClusterError::io(format!("write {}", procs.display())))?;
    }
    Ok(())
}

/// Every cgroup folder under `path` (itself included), deepest first, in every hierarchy.
fn tree(path: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_owned());
    }
    let mut out = Vec::new();
    for h in hierarchies() {
        let top = h.join(rel(path));
        if top.is_dir() {
            walk(&top, &mut out);
        }
    }
    out
}

/// Every process in the tree under `path`.
pub fn procs(path: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = tree(path)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// SIGKILLs every process under `path` until none is left (bounded by `timeout`); the pids that
/// survived.
pub fn kill_all(path: &str, timeout: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids = procs(path);
        if pids.is_empty() || start.elapsed() > timeout {
            return pids;
        }
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes the tree under `path` in every hierarchy; the folders that could not be removed.
pub fn remove(path: &str) -> Vec<PathBuf> {
    tree(path)
        .into_iter()
        .filter(|d| std::fs::remove_dir(d).is_err() && d.exists())
        .collect()
}
