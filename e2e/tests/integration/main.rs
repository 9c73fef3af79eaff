//! Portway's integration tier: a real kube-apiserver + etcd per test, started by
//! `portway_e2e::envtest` from the binaries in `KUBEBUILDER_ASSETS`.
//!
//! Run: `KUBEBUILDER_ASSETS=<dir> cargo test -p portway-e2e --test integration` (docs/testing.md).
//! Without the variable every test prints `SKIP <test>: ...` and returns.
//!
//! - `harness`: the harness itself (clean-up after a failing test, the kinds of clients).
//! - `crds`: the CRDs install and are Established; `examples/` applies cleanly.
//! - `bad_input`: the invalid-resources table is refused by the server as the offline checks say.
//! - `status_ssa`: agents' per-node status entries and the operator's writes under SSA.
//! - `tokens`: pod-bound service-account tokens carry the node name (for the agent VAP).
//! - `servicelb`: the real operator in-process: Service -> ServiceLoadBalancer + DaemonSet,
//!   ingress from agents' reports, zero writes on resync and restart, clean-up, port conflicts.
//! - `operator_status`: agents' entries survive the real operator's status and spec writes.
//! - `clustercidr`: pod CIDRs for new Nodes, adoption with zero writes after a restart, Exhausted.
//! - `leader`: two replicas on one Lease; only the holder writes; a killed leader hands over.
//! - `rbac`: the chart's RBAC and admission policy with the real operator (as its ServiceAccount)
//!   and agents (pod-bound tokens): enough for the operator, nothing beyond their own entry for
//!   agents.
//! - `kube_proxy`: a real kube-proxy (iptables mode) and the agent's `Host` dataplane in one
//!   netns with real traffic: both serve, neither touches the other's rules (root only).
//! - `common`: starting operator replicas, simulated agents, Events, waiting for quiet.

mod bad_input;
mod clustercidr;
mod common;
mod crds;
mod harness;
mod kube_proxy;
mod leader;
mod operator_status;
mod rbac;
mod servicelb;
mod status_ssa;
mod tokens;
