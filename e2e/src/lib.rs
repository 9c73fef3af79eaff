//! Shared helpers of Portway's integration and end-to-end tests.
//!
//! - [`envtest`]: a real kube-apiserver + etcd per test (`KUBEBUILDER_ASSETS`), with admin,
//!   impersonating, certificate and service-account-token clients.
//! - [`objects`]: Nodes, EndpointSlices, Services, ServiceAccounts and Pods that kubelets and
//!   controllers would create in a real cluster.
//! - [`apply`]: server-side apply of YAML folders (examples, rendered manifests).
//! - [`cluster`]: a real multi-node cluster on this machine without Docker (`portway-cluster`).
//! - [`kind`]: the end-to-end clusters' configs (`e2e/kind/<variant>.yaml`, kind's v1alpha4).
//! - [`wait`]: bounded waits (`await_condition` under a timeout, bounded polling).
//! - [`report`]: skip and summary lines that libtest does not swallow.
//! - [`requests`]: a record of every request a client sends (proves "zero writes").
//! - [`operator`]: the real operator (`portway run`) in-process, on its own runtime, as any
//!   identity; stopped cleanly or killed.
//! - [`agent`]: the real node agent's watch, loop and status sink in-process, without a kernel.
//!
//! The tiers and how to run them are described in `docs/testing.md`.

pub mod agent;
pub mod apply;
pub mod cluster;
pub mod envtest;
pub mod kind;
pub mod objects;
pub mod operator;
pub mod report;
pub mod requests;
pub mod wait;

pub use envtest::clients::{ClientSpec, Identity};
pub use envtest::{EnvOptions, TestEnv};
