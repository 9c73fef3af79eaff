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
//!
//! What only a real cluster shows (names `serial_*`: they disturb nodes or the operator, so
//! `e2e/run.sh` runs them one at a time after the others):
//! - `disruption`: a stopped kubelet takes its node out of the ingress until it returns; a
//!   cordoned and drained node keeps serving through its agent; the operator pod deleted under
//!   a steady request loop loses no request.
//! - `latency`: `P10 expose_to_first_request_s`, the median of 10 Services from creation to the
//!   first answer through a node.
//! - `footprint`: the RSS of every Portway process with 20 LoadBalancer Services.
//! - `rollout`: `kubectl rollout restart` and `helm upgrade --wait` to a new operator image
//!   finish with one and with two replicas, a new pod takes the Lease, no request fails.

mod cidrs;
mod cleanup;
mod config;
mod conflict;
mod disruption;
mod footprint;
mod latency;
mod pools;
mod rollout;
mod script;
mod serving;
mod support;
mod traffic;
mod traffic_policy;
mod uninstall;
mod upgrades;
mod workflow;
