//! `portway migrate`, the pure part: K3s ServiceLB's node and Service labels, and upstream
//! `networking.k8s.io/v1alpha1` ClusterCIDRs, turned into the Portway resources that serve the same
//! Services from the same nodes. No I/O: the CLI (`cli::migrate`) reads a folder or a cluster and
//! prints [`render::yaml_stream`] of [`migrate`]'s result.
//!
//! K3s' rules (k3s-io/k3s `pkg/cloudprovider/servicelb.go`, `newDaemonSet` and
//! `nodeHasDaemonSetLabel`), reproduced by [`servicelb`]:
//! - if no Node carries the `svccontroller.k3s.cattle.io/enablelb` label (with any value), every
//!   Node serves every LoadBalancer Service, and `lbpool` labels are ignored;
//! - once any Node carries it, only Nodes with `enablelb=true` serve, and a Service labelled
//!   `svccontroller.k3s.cattle.io/lbpool=<x>` (non-empty) is served only by those of them that are
//!   labelled `lbpool=<x>` too;
//! - Services with a `spec.loadBalancerClass` are not K3s' (the cloud-provider service controller
//!   skips them).

pub mod render;
pub mod servicelb;

use k8s_openapi::api::core::v1::{Node, Service};
use portway_crds::{ClusterCIDR, LoadBalancerPool};
use serde_json::Value;

pub use servicelb::{K3sMode, ServicePin};

/// Everything `portway migrate` prints.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Migration {
    /// How the K3s cluster chose its serving nodes.
    pub mode: K3sMode,
    /// The pools that reproduce K3s' node choice, sorted by name.
    pub pools: Vec<LoadBalancerPool>,
    /// The `portway.dev/pool` annotation each served Service gets, sorted by namespace/name.
    pub pins: Vec<ServicePin>,
    /// Converted ClusterCIDRs, in input order.
    pub cluster_cidrs: Vec<ClusterCIDR>,
    /// Facts the user should know (ignored labels, pools without nodes, K3s behaviour that
    /// Portway expresses differently); printed as comments.
    pub notes: Vec<String>,
    /// Objects that could not be converted, with the reason.
    pub errors: Vec<MigrateError>,
}

/// An object `portway migrate` could not convert.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{object}: {reason}")]
pub struct MigrateError {
    /// `Kind/name` of the object.
    pub object: String,
    /// Why it was not converted.
    pub reason: String,
}

/// Converts K3s-labelled Nodes and Services and upstream ClusterCIDRs (as JSON).
pub fn migrate(nodes: &[Node], services: &[Service], upstream_cidrs: &[Value]) -> Migration {
    let lb = servicelb::convert(nodes, services);
    let mut migration = Migration {
        mode: lb.mode,
        pools: lb.pools,
        pins: lb.pins,
        notes: lb.notes,
        ..Migration::default()
    };
    for upstream in upstream_cidrs {
        let name = upstream["metadata"]["name"].as_str().unwrap_or("?");
        match crate::cidr::convert_upstream(upstream) {
            Ok(cidr) => migration.cluster_cidrs.push(cidr),
            Err(e) => migration.errors.push(MigrateError {
                object: format!("ClusterCIDR.networking.k8s.io/{name}"),
                reason: e.to_string(),
            }),
        }
    }
    migration
}
