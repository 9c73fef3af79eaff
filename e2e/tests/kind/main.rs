//! Portway's end-to-end tier on kind, and the offline checks of what it runs on.
//!
//! Offline (run by `cargo test --workspace`, no Docker needed):
//! - `config`: the kind configs of `e2e/kind/` parsed with kind's v1alpha4 schema (strict).
//! - `script`: `e2e/run.sh` is valid, skips with one line for each missing tool, and installs a
//!   default ClusterCIDR equal to each variant's pod subnet (rendered through the real chart).
//! - `workflow`: `.github/workflows/{e2e,ci}.yml` run every variant and the test command.
//!
//! Against a kind cluster (`#[ignore]`d; `e2e/run.sh [ipv4|ipv6|dual-stack]` creates the cluster,
//! installs Portway and runs them with `PORTWAY_E2E_KUBECONFIG` set; without it each prints a
//! `SKIP` line):
//! - `serving`: a LoadBalancer Service gets the workers' addresses and answers on each.
//! - `traffic_policy`: eTP Local publishes only endpoint nodes and keeps the client address.
//! - `pools`: a pool change moves the DaemonSet, the ingress and the traffic.
//! - `conflict`: two Services on one port give `PortConflict`.
//! - `cidrs`: nodes' pod CIDRs come from the default ClusterCIDR, and pods use them.
//! - `cleanup`: deleting a Service removes its DaemonSet and the agents' rules on the nodes.
//! - `upgrades`: operator restart, agent rollout restart and `helm upgrade` to a new agent image
//!   under traffic: 0 failed requests and long-lived connections kept in the Host dataplane, the
//!   Pod dataplane's gap reported (run alone, before `uninstall`).
//! - `uninstall`: `helm uninstall` leaves no Portway workload, object or rule (run last).

mod cidrs;
mod cleanup;
mod config;
mod conflict;
mod pools;
mod script;
mod serving;
mod support;
mod traffic_policy;
mod uninstall;
mod upgrades;
mod workflow;
