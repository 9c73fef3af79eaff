//! The agent's rule builder on structured input (typed specs, addresses, EndpointSlices) built
//! from boundary values, then the renderer. Properties: no panic; sane rule sets; the result does
//! not depend on the order of addresses and endpoints; the render touches only Portway's chains
//! and is a fixed point once installed.
#![no_main]

use arbitrary::Arbitrary;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;
use portway_crds::{
    DataplaneMode, IpFamily, LoadBalancerPort, Protocol, ServiceLoadBalancerSpec, TrafficPolicy,
};
use portway_node_agent::rules::{self, Context};
use serde_json::json;

const IPS: [&str; 16] = [
    "10.96.0.10",
    "10.96.0.11",
    "fd00:10:96::10",
    "fd00:10:96::11",
    "0.0.0.0",
    "::",
    "127.0.0.1",
    "::1",
    "224.0.0.1",
    "169.254.1.1",
    "fe80::1",
    "::ffff:10.0.0.1",
    "255.255.255.255",
    "10.244.1.7",
    "fd00:10:244:1::7",
    "not-an-ip",
];
const RANGES: [&str; 10] = [
    "203.0.113.0/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "::/0",
    "2001:db8::/32",
    "10.0.0.1/32",
    "10.0.0.0/33",
    "::ffff:10.0.0.0/104",
    " 192.0.2.0/24 ",
    "x",
];
const NAMES: [&str; 8] = [
    "",
    "http",
    "https",
    "dns-udp",
    "-bad",
    "UPPER",
    "a\"b",
    "p-63-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];

#[derive(Arbitrary, Debug)]
struct Port {
    name: u8,
    protocol: u8,
    port: i32,
    host_port: i32,
    node_port: Option<i32>,
}

#[derive(Arbitrary, Debug)]
struct Endpoint {
    address: u8,
    ready: Option<bool>,
    node: bool,
    port_name: u8,
    port: i32,
    protocol: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    host: bool,
    local: bool,
    ports: Vec<Port>,
    v6_first: bool,
    families: u8,
    cluster_ips: Vec<u8>,
    ranges: Vec<u8>,
    locals: Vec<u8>,
    host_ips: Vec<u8>,
    endpoints: Vec<Endpoint>,
}

fn protocol(i: u8) -> Protocol {
    [Protocol::TCP, Protocol::UDP, Protocol::SCTP][usize::from(i) % 3]
}

fn pick<'a>(pool: &[&'a str], i: u8) -> &'a str {
    pool[usize::from(i) % pool.len()]
}

fn slice(endpoints: &[Endpoint], family_v6: bool) -> EndpointSlice {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|e| {
            json!({
                "addresses": [pick(&IPS, e.address)],
                "conditions": {"ready": e.ready},
                "nodeName": if e.node { "worker-1" } else { "worker-2" },
            })
        })
        .collect();
    let ports: Vec<_> = endpoints
        .iter()
        .map(|e| json!({"name": pick(&NAMES, e.port_name), "port": e.port, "protocol": protocol(e.protocol).as_str()}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("web-{family_v6}"), "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": if family_v6 { "IPv6" } else { "IPv4" },
        "endpoints": eps, "ports": ports,
    }))
    .unwrap_or_default()
}

fuzz_target!(|input: Input| {
    if input.ports.len() > 120 || input.endpoints.len() > 300 {
        return;
    }
    let families = match input.families % 4 {
        0 => vec![IpFamily::IPv4],
        1 => vec![IpFamily::IPv6],
        2 if input.v6_first => vec![IpFamily::IPv6, IpFamily::IPv4],
        2 => vec![IpFamily::IPv4, IpFamily::IPv6],
        _ => vec![],
    };
    let spec = ServiceLoadBalancerSpec {
        pool: "default".into(),
        dataplane: if input.host {
            DataplaneMode::Host
        } else {
            DataplaneMode::Pod
        },
        ports: input
            .ports
            .iter()
            .map(|p| LoadBalancerPort {
                name: pick(&NAMES, p.name).to_owned(),
                protocol: protocol(p.protocol),
                port: p.port,
                host_port: p.host_port,
                node_port: p.node_port,
            })
            .collect(),
        cluster_ips: input
            .cluster_ips
            .iter()
            .take(3)
            .map(|i| pick(&IPS, *i).to_owned())
            .collect(),
        ip_families: families,
        external_traffic_policy: if input.local {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        },
        source_ranges: input
            .ranges
            .iter()
            .take(300)
            .map(|i| pick(&RANGES, *i).to_owned())
            .collect(),
    };
    let addrs = |v: &[u8]| -> Vec<_> {
        v.iter()
            .take(20)
            .filter_map(|i| pick(&IPS, *i).parse().ok())
            .collect()
    };
    let ctx = Context {
        namespace: "shop".into(),
        name: "web".into(),
        node_name: "worker-1".into(),
        local_addresses: addrs(&input.locals),
        host_ips: addrs(&input.host_ips),
        endpoint_slices: vec![
            slice(&input.endpoints, false),
            slice(&input.endpoints, true),
        ],
    };
    let built = rules::build(&spec, &ctx);
    let mut shuffled = ctx.clone();
    shuffled.local_addresses.reverse();
    shuffled.host_ips.reverse();
    shuffled.endpoint_slices.reverse();
    for s in &mut shuffled.endpoint_slices {
        s.endpoints.reverse();
    }
    assert_eq!(
        rules::build(&spec, &shuffled),
        built,
        "depends on input order"
    );
    if let Ok(rs) = built {
        portway_fuzz::check_rule_set(&rs);
        portway_fuzz::check_render(&rs, "shop/web");
    }
});
