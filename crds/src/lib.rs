//! Portway's API, group `portway.dev`, version `v1alpha1`:
//!
//! - [`LoadBalancerPool`] (cluster-scoped): which Nodes serve which LoadBalancer Services.
//! - [`ClusterCIDR`] (cluster-scoped): pod CIDRs handed to Nodes by node selector.
//! - [`ServiceLoadBalancer`] (namespaced, one per Service): what node agents forward, and what
//!   each of them reports.
//!
//! [`generate`] renders the CRDs; `charts/portway/crds/` holds the checked-in output and a test
//! fails when the two drift apart.

// kube-derive's `printcolumn(..)` repeats `type_ = ..` per column, which clippy mistakes for
// duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod cluster_cidr;
pub mod condition;
pub mod generate;
pub mod names;
pub mod pool;
mod schema;
pub mod selector;
pub mod service_lb;
pub mod testdata;
pub mod validation;

pub use cluster_cidr::{ClusterCIDR, ClusterCIDRSpec, ClusterCIDRStatus, FamilyUsage};
pub use pool::{
    DataplaneMode, LoadBalancerPool, LoadBalancerPoolSpec, LoadBalancerPoolStatus, NodeAddressType,
};
pub use selector::{
    LabelSelector, LabelSelectorOperator, LabelSelectorRequirement, NodeSelector,
    NodeSelectorOperator, NodeSelectorRequirement, NodeSelectorTerm,
};
pub use service_lb::{
    IpFamily, LoadBalancerPort, NodeForwardingStatus, Protocol, ServiceLoadBalancer,
    ServiceLoadBalancerSpec, ServiceLoadBalancerStatus, TrafficPolicy,
};
