//! Shared helpers of Portway's integration and end-to-end tests.
//!
//! - [`envtest`]: a real kube-apiserver + etcd per test (`KUBEBUILDER_ASSETS`), with admin,
//!   impersonating, certificate and service-account-token clients.
//! - [`objects`]: Nodes, EndpointSlices, Services, ServiceAccounts and Pods that kubelets and
//!   controllers would create in a real cluster.
//! - [`apply`]: server-side apply of YAML folders (examples, rendered manifests).
//! - [`wait`]: bounded waits (`await_condition` under a timeout, bounded polling).
//! - [`report`]: skip and summary lines that libtest does not swallow.
//!
//! The tiers and how to run them are described in `docs/testing.md`.

pub mod apply;
pub mod envtest;
pub mod objects;
pub mod report;
pub mod wait;

pub use envtest::{EnvOptions, TestEnv};
