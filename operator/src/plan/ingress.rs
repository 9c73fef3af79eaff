//! Which Nodes a Service is published on, and with which addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::LoadBalancerIngress;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use portway_crds::condition::{self, types};
use portway_crds::{IpFamily, NodeAddressType, ServiceLoadBalancer};

use super::assign::NodeInfo;

/// `ipMode` of every published address: traffic to it is delivered to the node as-is.
pub const IP_MODE_VIP: &str = "VIP";

/// Nodes with at least one ready endpoint of the Service (`ready` unset counts as ready, as the
/// EndpointSlice API defines).
pub fn ready_endpoint_nodes(slices: &[Arc<EndpointSlice>]) -> BTreeSet<String> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter(|e| !e.addresses.is_empty())
        .filter_map(|e| e.node_name.clone())
        .collect()
}

/// True when any endpoint of the Service is ready, wherever it runs.
pub fn any_ready_endpoint(slices: &[Arc<EndpointSlice>]) -> bool {
    slices.iter().flat_map(|s| s.endpoints.iter()).any(|e| {
        !e.addresses.is_empty() && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
    })
}

/// Nodes whose agent reports `Forwarding=True` in the ServiceLoadBalancer's `status.nodes`.
pub fn forwarding_nodes(slb: Option<&ServiceLoadBalancer>) -> BTreeSet<String> {
    slb.and_then(|s| s.status.as_ref())
        .map(|st| {
            st.nodes
                .iter()
                .filter(|n| condition::is_true(&n.conditions, types::FORWARDING))
                .map(|n| n.node.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn family(ip: &IpAddr) -> IpFamily {
    if ip.is_ipv4() {
        IpFamily::IPv4
    } else {
        IpFamily::IPv6
    }
}

/// The address of `node` to publish for `fam`: the first of `types` (in order) that the node has
/// an address of that family for.
pub fn node_address(node: &NodeInfo, types: &[NodeAddressType], fam: IpFamily) -> Option<IpAddr> {
    types.iter().find_map(|t| {
        node.addresses
            .iter()
            .find(|(ty, ip)| ty == t.as_str() && family(ip) == fam)
            .map(|(_, ip)| *ip)
    })
}

/// Ingress entries for `nodes` (sorted by name): for each of the Service's families in order, each
/// node's address by the pool's `types` preference. Duplicates are dropped.
pub fn ingress(
    nodes: &[&NodeInfo],
    types: &[NodeAddressType],
    families: &[IpFamily],
) -> Vec<LoadBalancerIngress> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for fam in families {
        for node in nodes {
            if let Some(ip) = node_address(node, types, *fam)
                && seen.insert(ip)
            {
                out.push(LoadBalancerIngress {
                    ip: Some(ip.to_string()),
                    ip_mode: Some(IP_MODE_VIP.to_owned()),
                    ..Default::default()
                });
            }
        }
    }
    out
}
