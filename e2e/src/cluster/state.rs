//! What `up` records about a cluster in its state folder (`cluster.json`), so that `down`,
//! `status`, `exec`, `load`, `kubelet` and `netd` work from it alone, also after a half-done `up`:
//! the plan, every process it starts, and the host state it changes (kubelet's kernel sysctls,
//! shared folders it creates).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::components::Component;
use super::spec::{ClusterSpec, NodeSpec, SPEC_FILE, STATE_ROOT};
use super::{ClusterError, Result, sys};

/// Host-wide sysctls kubelet sets when `protectKernelDefaults` is off (and would refuse to start
/// over when it is on): `up` records them, `down` puts them back.
pub const KUBELET_SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Shared folders the nodes' tools write into at fixed paths, outside the state folder: libcni's
/// cache, containerd's shim sockets, kubelet's container log links and its device-plugin socket
/// (which the three kubelets share: the last one started holds it; no device plugin is used).
/// `down` removes its entries there, and the folders it created (children before parents).
pub const SHARED_DIRS: [&str; 7] = [
    "/var/lib/cni/results",
    "/var/lib/cni",
    "/run/containerd/s",
    "/run/containerd",
    "/var/log/containers",
    "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet",
];

/// kubelet's device-plugin socket: a fixed path, not under `--root-dir`, so the nodes' kubelets
/// share it. Each removes it and binds it anew at start.
pub const DEVICE_PLUGIN_SOCKET: &str = "/var/lib/kubelet/device-plugins/kubelet.sock";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub spec: ClusterSpec,
    pub k8s_bin: PathBuf,
    pub components: Vec<Component>,
    /// Sysctl values before `up` (`/proc/sys/<key>`).
    pub sysctls: BTreeMap<String, String>,
    /// Which of [`SHARED_DIRS`] did not exist before `up`.
    pub created_dirs: Vec<PathBuf>,
}

impl Record {
    pub fn path(spec: &ClusterSpec) -> PathBuf {
        spec.spec_file()
    }

    pub fn save(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| ClusterError::State(format!("serialize the cluster record: {e}")))?;
        sys::write(&Self::path(&self.spec), text)
    }

    pub fn load(dir: &Path) -> Result<Record> {
        let file = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&file)
            .map_err(ClusterError::io(format!("read {}", file.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| ClusterError::State(format!("{}: {e}", file.display())))
    }

    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.spec.node(name)
    }
}

/// The state root (`PORTWAY_CLUSTER_STATE`, default [`STATE_ROOT`]).
pub fn state_root() -> PathBuf {
    std::env::var_os("PORTWAY_CLUSTER_STATE")
        .map_or_else(|| PathBuf::from(STATE_ROOT), PathBuf::from)
}

/// Every recorded cluster.
pub fn all() -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(state_root()) else {
        return Vec::new();
    };
    let mut records: Vec<Record> = entries
        .flatten()
        .filter_map(|e| Record::load(&e.path()).ok())
        .collect();
    records.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    records
}

/// The cluster `name`, or the only one there is.
pub fn find(name: Option<&str>) -> Result<Record> {
    match name {
        Some(n) => Record::load(&state_root().join(n)),
        None => {
            let mut all = all();
            match all.len() {
                1 => Ok(all.remove(0)),
                0 => Err(ClusterError::State(format!(
                    "no local cluster in {}",
                    state_root().display()
                ))),
                _ => Err(ClusterError::State(format!(
                    "several local clusters ({}): name one with --name",
                    all.iter()
                        .map(|r| r.spec.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
    }
}

/// The cluster that has node `node` (node names carry the cluster's name).
pub fn find_node(node: &str) -> Result<(Record, NodeSpec)> {
    all()
        .into_iter()
        .find_map(|r| {
            let n = r.node(node)?.clone();
            Some((r, n))
        })
        .ok_or_else(|| ClusterError::State(format!("no local cluster has a node {node}")))
}

/// Current values of [`KUBELET_SYSCTLS`].
pub fn read_sysctls() -> BTreeMap<String, String> {
    KUBELET_SYSCTLS
        .iter()
        .filter_map(|k| {
            let v = std::fs::read_to_string(Path::new("/proc/sys").join(k)).ok()?;
            Some(((*k).to_owned(), v.trim().to_owned()))
        })
        .collect()
}
