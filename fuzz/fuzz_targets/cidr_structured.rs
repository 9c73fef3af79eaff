//! The pod-CIDR planner on structured input: overlapping and nested ClusterCIDRs of both
//! families, odd host bits, priorities, selectors, Nodes that already hold CIDRs (valid, foreign,
//! overlapping or garbage) or are being deleted. Properties: no panic; allocated CIDRs never
//! overlap any other Node's; each allocated CIDR lies in the ClusterCIDR named for it and has its
//! per-node size; the plan does not depend on input order.
#![no_main]

use arbitrary::Arbitrary;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use libfuzzer_sys::fuzz_target;
use portway_crds::{
    ClusterCIDR, ClusterCIDRSpec, NodeSelector, NodeSelectorOperator, NodeSelectorRequirement,
    NodeSelectorTerm,
};
use portway_operator::cidr::{NodeCidrState, plan_for_nodes};
use serde_json::json;

const V4: [&str; 8] = [
    "10.0.0.0/24",
    "10.0.0.0/23",
    "10.0.1.0/24",
    "10.0.0.0/16",
    "10.0.0.128/25",
    "192.168.0.0/30",
    "10.0.0.0/8",
    "10.0.0.1/24",
];
const V6: [&str; 6] = [
    "fd00::/120",
    "fd00::/64",
    "fd00::/56",
    "fd00:0:0:1::/64",
    "fd00::/48",
    "fd00::1/64",
];
const POD: [&str; 9] = [
    "10.0.0.0/24",
    "10.0.1.0/24",
    "10.0.0.0/25",
    "fd00::/64",
    "banana",
    "10.0.0.0/16",
    "192.168.0.0/30",
    "fd00:0:0:1::/64",
    "",
];

#[derive(Arbitrary, Debug)]
struct Cidr {
    v4: Option<u8>,
    v6: Option<u8>,
    bits: u8,
    v6_bits: Option<u8>,
    priority: i8,
    selector: Option<(bool, u8)>,
}

#[derive(Arbitrary, Debug)]
struct NodeM {
    zone: u8,
    pod: Vec<u8>,
    deleting: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    cidrs: Vec<Cidr>,
    nodes: Vec<NodeM>,
}

fn pick<'a>(pool: &[&'a str], i: u8) -> &'a str {
    pool[usize::from(i) % pool.len()]
}

fuzz_target!(|input: Input| {
    if input.cidrs.len() > 12 || input.nodes.len() > 64 {
        return;
    }
    let cidrs: Vec<ClusterCIDR> = input
        .cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let node_selector = c.selector.map(|(not_in, zone)| NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: vec![NodeSelectorRequirement {
                        key: "zone".into(),
                        operator: if not_in {
                            NodeSelectorOperator::NotIn
                        } else {
                            NodeSelectorOperator::In
                        },
                        values: vec![format!("z{}", zone % 3)],
                    }],
                    match_fields: vec![],
                }],
            });
            ClusterCIDR::new(
                &format!("c{i}"),
                ClusterCIDRSpec {
                    node_selector,
                    per_node_host_bits: i32::from(c.bits % 40),
                    ipv4_per_node_host_bits: None,
                    ipv6_per_node_host_bits: c.v6_bits.map(|b| i32::from(b % 130)),
                    ipv4: c.v4.map(|i| pick(&V4, i).to_owned()),
                    ipv6: c.v6.map(|i| pick(&V6, i).to_owned()),
                    priority: i32::from(c.priority),
                },
            )
        })
        .collect();
    let nodes: Vec<Node> = input
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let pods: Vec<&str> = n.pod.iter().take(2).map(|p| pick(&POD, *p)).collect();
            serde_json::from_value(json!({
                "metadata": {
                    "name": format!("n{i:02}"),
                    "labels": {"zone": format!("z{}", n.zone % 3)},
                    "deletionTimestamp": if n.deleting { Some("2026-01-01T00:00:00Z") } else { None },
                },
                "spec": {"podCIDR": pods.first(), "podCIDRs": pods},
            }))
            .ok()
        })
        .collect();
    let Ok(plan) = plan_for_nodes(&nodes, &cidrs) else {
        return;
    };
    if let Some(o) = portway_fuzz::overlap(&plan) {
        panic!("pod CIDRs overlap: {o}");
    }
    for n in plan
        .nodes
        .iter()
        .filter(|n| n.state == NodeCidrState::Allocated)
    {
        let owner = n
            .cluster_cidr
            .as_deref()
            .expect("an allocation names its ClusterCIDR");
        let spec = &cidrs
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(owner))
            .expect("owner exists")
            .spec;
        for c in &n.pod_cidrs {
            let block: IpNet = c.parse().expect("allocated CIDRs parse");
            let (range, bits) = match block {
                IpNet::V4(_) => (spec.ipv4.as_deref(), spec.ipv4_host_bits()),
                IpNet::V6(_) => (spec.ipv6.as_deref(), spec.ipv6_host_bits()),
            };
            let range: IpNet = range
                .expect("family configured")
                .parse()
                .expect("range parses");
            assert!(
                range.contains(&block),
                "{} got {block} outside {owner} {range}",
                n.node
            );
            let host_bits = i32::from(block.max_prefix_len() - block.prefix_len());
            assert_eq!(host_bits, bits, "{} got {block} from {owner}", n.node);
        }
    }
    let mut reversed_nodes = nodes.clone();
    reversed_nodes.reverse();
    let mut reversed_cidrs = cidrs.clone();
    reversed_cidrs.reverse();
    assert_eq!(
        plan_for_nodes(&reversed_nodes, &reversed_cidrs).ok(),
        Some(plan),
        "depends on input order"
    );
});
