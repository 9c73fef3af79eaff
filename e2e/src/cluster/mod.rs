//! A real multi-node Kubernetes cluster on this one Linux machine, without Docker or kind, for the
//! end-to-end suite (`e2e/tests/kind`): `portway-cluster up|down|status|exec|load|kubelet`
//! (`e2e/src/bin/portway-cluster.rs`). Described in `docs/e2e.md`.
//!
//! From a folder of upstream binaries (`PORTWAY_K8S_BIN`: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kubelet, kube-proxy) and Debian's containerd, runc and
//! CNI plugins, it starts the nodes of a kind config (`e2e/kind/<variant>.yaml`): each node in its
//! own network namespace on the bridge `pwc0` (node network 10.111.0.0/24, fd00:10:111::/64), with
//! its own containerd, kubelet (own root folder and cgroup root, cgroupfs) and kube-proxy
//! (iptables). The control plane also runs etcd, kube-apiserver and kube-scheduler, and
//! kube-controller-manager as a static pod (`--allocate-node-cidrs=false`: Portway allocates pod
//! CIDRs). The harness's `netd` plays kindnet: it writes each node's CNI config when the Node gets
//! its pod CIDRs, routes the pod CIDRs between the nodes, and keeps the DNS stand-in's records.
//! A registry mirror ([`registry`], Debian's `docker-registry` on the bridge) serves the nodes'
//! pulls of docker.io and registry.k8s.io images, seeded with stand-ins built from Debian's
//! packages ([`seed`]): no registry is reachable, and the node network is closed.
//!
//! Pure parts (unit-tested offline): [`spec`] (the plan), [`pki`], [`render`] (config files),
//! [`components`] (command lines, static pod, DNS objects), [`images`] (image recipes), the
//! mirror's addresses and config ([`registry`]) and the stand-ins' recipes ([`seed`]).
//! Thin shells: [`sys`], [`net`], [`cgroup`], [`process`], [`state`], [`up`], [`down`], [`netd`],
//! [`status`].

pub mod cgroup;
pub mod components;
pub mod down;
pub mod images;
pub mod net;
pub mod netd;
pub mod pki;
pub mod process;
pub mod registry;
pub mod render;
pub mod seed;
pub mod spec;
pub mod state;
pub mod status;
pub mod sys;
pub mod up;

use std::path::PathBuf;

/// The folder of upstream Kubernetes binaries.
pub const K8S_BIN_ENV: &str = "PORTWAY_K8S_BIN";

/// Everything that can go wrong, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("e2e/kind/{variant}.yaml: {why}")]
    Config { variant: &'static str, why: String },
    #[error("cluster name {0:?}: use 1-32 lower-case letters, digits and '-'")]
    Name(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command}: {output}")]
    Command { command: String, output: String },
    #[error("certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    State(String),
    #[error("{K8S_BIN_ENV}={dir}: missing {missing:?}")]
    Binaries { dir: PathBuf, missing: Vec<String> },
    #[error(transparent)]
    Wait(#[from] crate::wait::WaitError),
}

impl ClusterError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
        let what = what.into();
        move |source| ClusterError::Io { what, source }
    }

    /// A kube client error with what was being done.
    pub fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ClusterError {
        let what = what.into();
        move |source| ClusterError::Kube { what, source }
    }
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
