//! ServiceLB controller (shell): watches Services, Nodes, EndpointSlices, pools, Namespaces,
//! ServiceLoadBalancers, DaemonSets and RoleBindings; calls the pure core; writes what differs.

mod args;

pub use args::{FALLBACK_NAMESPACE, ServiceLbArgs};
