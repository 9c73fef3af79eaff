//! `portway-cluster down`: stops the cluster's processes (netd and the components gracefully,
//! then SIGKILL to everything left in the nodes' cgroups: containers and shims), unmounts what
//! kubelet and containerd mounted under the state folder, removes what the nodes' tools left in
//! shared folders (libcni's cache, shim sockets, container log links), the namespaces, links and
//! cgroups, puts kubelet's host sysctls back, deletes the state folder, and then checks that
//! nothing of the cluster is left. Works on a half-done `up` too.

use std::collections::BTreeSet;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::render::cni_network_name;
use super::state::Record;
use super::{ClusterError, Result, cgroup, net, process};

/// How long SIGKILLed processes may take to disappear from the cgroups.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(20);
/// libcni's cache of results (containerd 1.6 does not move it).
pub const CNI_CACHE: &str = "/var/lib/cni/results";
/// Where containerd's shims put their sockets (fixed in containerd 1.6 and 1.7).
pub const SHIM_SOCKETS: &str = "/run/containerd/s";
/// kubelet's container log links (fixed in kubelet).
pub const CONTAINER_LOG_LINKS: &str = "/var/log/containers";

/// Mount points under `prefix`, deepest first (from `/proc/self/mountinfo`, `\040` unescaped).
pub fn mounts_under(mountinfo: &str, prefix: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.clone().take(3).collect();
            if oct.len() == 3
                && oct.chars().all(|d| ('0'..='7').contains(&d))
                && let Ok(v) = u8::from_str_radix(&oct, 8)
            {
                out.push(char::from(v));
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Unix socket paths held open by `pids` (via `/proc/<pid>/fd` and the pid's `net/unix`).
fn sockets_of(pids: &[u32], under: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    for pid in pids {
        let Ok(unix) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) else {
            continue;
        };
        let mut inodes = BTreeSet::new();
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    let t = target.to_string_lossy().into_owned();
                    if let Some(inode) =
                        t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']'))
                    {
                        inodes.insert(inode.to_owned());
                    }
                }
            }
        }
        for line in unix.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let (Some(inode), Some(path)) = (f.get(6), f.get(7)) {
                let path = Path::new(path);
                if inodes.contains(*inode) && path.starts_with(under) {
                    found.insert(path.to_owned());
                }
            }
        }
    }
    found
}

fn unmount(point: &Path) -> Result<()> {
    let c = std::ffi::CString::new(point.as_os_str().as_encoded_bytes())
        .map_err(|e| ClusterError::State(format!("{}: {e}", point.display())))?;
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(ClusterError::io(format!("umount {}", point.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Takes the cluster down; the list of what is left (empty: nothing).
pub fn down(record: &Record) -> Vec<String> {
    let spec = &record.spec;
    let mut problems = Vec::new();
    // 1. netd first (it would rewrite files), then the components in reverse start order.
    for c in record.components.iter().rev() {
        let grace = if c.name.ends_with(".containerd") {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        };
        if let Err(e) = process::stop(spec, c, grace) {
            problems.push(e.to_string());
        }
    }
    // 2. Everything left in the nodes' cgroups: containers, shims. Note the shims' sockets first.
    let mut shim_sockets = BTreeSet::new();
    for node in &spec.nodes {
        let pids = cgroup::procs(&node.cgroup_root());
        shim_sockets.extend(sockets_of(&pids, Path::new(SHIM_SOCKETS)));
        let left = cgroup::kill_all(&node.cgroup_root(), KILL_TIMEOUT);
        if !left.is_empty() {
            problems.push(format!("{}: processes {left:?} survive SIGKILL", node.name));
        }
    }
    // 3. Mounts under the state folder (pod volumes, rootfs, shm, pod network namespaces).
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mounts_under(&mountinfo, &spec.state_dir) {
        if let Err(e) = unmount(&point) {
            problems.push(e.to_string());
        }
    }
    // 4. Shared folders: shim sockets, libcni's cache entries, kubelet's log links.
    for s in &shim_sockets {
        let _ = std::fs::remove_file(s);
    }
    // libcni caches per network and sandbox: ours (`pwc-<cluster>-<id>-eth0`) and containerd's
    // loopback (`cni-loopback-<id>-lo`) for the sandboxes of these nodes.
    let net_name = format!("{}-", cni_network_name(spec));
    let sandboxes = sandbox_ids(record);
    remove_entries(Path::new(CNI_CACHE), |p, _| {
        p.file_name().is_some_and(|f| {
            let f = f.to_string_lossy();
            f.starts_with(&net_name) || sandboxes.iter().any(|id| f.contains(id.as_str()))
        })
    });
    remove_entries(Path::new(CONTAINER_LOG_LINKS), |p, _| {
        std::fs::read_link(p).is_ok_and(|t| t.starts_with(&spec.state_dir))
    });
    for d in &record.created_dirs {
        // Only sockets (shims', kubelet's device-plugin socket), and the folder only when empty:
        // something else may have moved in meanwhile.
        remove_entries(d, |_, ft| ft.is_socket());
        let _ = std::fs::remove_dir(d);
    }
    // 5. Network namespaces, links; cgroups.
    problems.extend(net::remove(spec));
    for node in &spec.nodes {
        for d in cgroup::remove(&node.cgroup_root()) {
            problems.push(format!("cgroup {} is not removable", d.display()));
        }
    }
    // 6. kubelet's host sysctls back as they were.
    for (k, v) in &record.sysctls {
        let path = Path::new("/proc/sys").join(k);
        if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() != v)
            && let Err(e) = std::fs::write(&path, v)
        {
            problems.push(format!("restore {}={v}: {e}", path.display()));
        }
    }
    // 7. The state folder (only when nothing is mounted in it any more).
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let still = mounts_under(&mountinfo, &spec.state_dir);
    if still.is_empty() {
        if let Err(e) = std::fs::remove_dir_all(&spec.state_dir) {
            problems.push(format!("remove {}: {e}", spec.state_dir.display()));
        }
    } else {
        problems.push(format!("still mounted: {still:?}"));
    }
    problems.extend(leftovers(record));
    problems
}

/// The pod sandbox ids the nodes' containerd created (folder names of its CRI sandboxes).
fn sandbox_ids(record: &Record) -> Vec<String> {
    let spec = &record.spec;
    spec.nodes
        .iter()
        .flat_map(|n| {
            let dir = spec
                .node_dir(n)
                .join("containerd/root/io.containerd.grpc.v1.cri/sandboxes");
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|id| id.len() == 64)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn remove_entries(dir: &Path, pick: impl Fn(&Path, std::fs::FileType) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if let Ok(ft) = e.file_type()
            && pick(&e.path(), ft)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What of the cluster still exists: namespaces, links, cgroups, mounts, processes, files.
pub fn leftovers(record: &Record) -> Vec<String> {
    let spec = &record.spec;
    let mut left = Vec::new();
    for node in &spec.nodes {
        if node.netns_path().exists() {
            left.push(format!("netns {}", node.netns()));
        }
        if net::link_exists(&node.host_veth()) {
            left.push(format!("link {}", node.host_veth()));
        }
        for h in cgroup::hierarchies() {
            let d = h.join(node.cgroup_root().trim_start_matches('/'));
            if d.exists() {
                left.push(format!("cgroup {}", d.display()));
            }
        }
    }
    if net::link_exists(super::spec::BRIDGE) {
        left.push(format!("link {}", super::spec::BRIDGE));
    }
    if spec.state_dir.exists() {
        left.push(format!("folder {}", spec.state_dir.display()));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts_under(&mountinfo, &spec.state_dir) {
        left.push(format!("mount {}", m.display()));
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_a_folder_deepest_first() {
        let info = "\
36 25 0:32 / /var/tmp/portway-cluster/c/nodes/w/kubelet/pods/x/volumes/a rw - tmpfs tmpfs rw
37 25 0:33 / /var/tmp/portway-cluster/c/nodes/w/containerd/state/io.containerd.runtime.v2.task/k8s.io/id/rootfs rw - overlay overlay rw
38 25 0:34 / /var/tmp/other rw - tmpfs tmpfs rw
39 25 0:35 / /var/tmp/portway-cluster/c/with\\040space rw - tmpfs tmpfs rw
40 25 0:36 / /var/tmp/portway-cluster/cc rw - tmpfs tmpfs rw";
        let got = mounts_under(info, Path::new("/var/tmp/portway-cluster/c"));
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].ends_with("rootfs"), "deepest first: {got:?}");
        assert!(got.contains(&PathBuf::from("/var/tmp/portway-cluster/c/with space")));
        assert!(
            !got.iter()
                .any(|p| p.starts_with("/var/tmp/portway-cluster/cc")),
            "a sibling with a longer name is not inside"
        );
    }
}
