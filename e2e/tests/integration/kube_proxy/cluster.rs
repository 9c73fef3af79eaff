//! The API objects kube-proxy watches and the agents' local files made from the same objects.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use portway_e2e::objects;
use serde_json::json;

use super::support::{self, AgentProc, addr};
use super::{
    BACKEND4_B, BACKEND6_B, CLUSTER_IP, CLUSTER_IP6, LOCAL_CLUSTER_IP, LOCAL_CLUSTER_IP6,
    LOCAL_NODE_PORT, LOCAL_PORT, LOCAL_SERVICE, LOCAL_UDP_NODE_PORT, LOCAL_UDP_PORT, NODE,
    NODE_PORT, PORT, SERVICE, TARGET_PORT, UDP_NODE_PORT, UDP_PORT, UDP_TARGET_PORT,
};

/// The EndpointSlices the test switches between, each an IPv4 and an IPv6 slice.
pub(super) struct Slices {
    pub one_backend: [EndpointSlice; 2],
    pub two_backends: [EndpointSlice; 2],
    pub local: [EndpointSlice; 2],
}

/// Creates the Node (InternalIPs = the node netns' IPv4 and IPv6 addresses, a pod CIDR of each
/// family), both Services dual-stack with the node's two addresses published as Portway's
/// operator does (`ipMode: VIP`) and their EndpointSlices (one backend per family each).
pub(super) async fn create(client: &Client, ns: &str) -> Slices {
    objects::create_node(
        client,
        &objects::node(
            NODE,
            &[],
            &[("InternalIP", addr::NODE4), ("InternalIP", addr::NODE6)],
        ),
    )
    .await
    .expect("node");
    let nodes: Api<Node> = Api::all(client.clone());
    let pod_cidr = json!({"spec": {
        "podCIDR": "10.244.1.0/24",
        "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]
    }});
    nodes
        .patch(NODE, &PatchParams::default(), &Patch::Merge(pod_cidr))
        .await
        .expect("node podCIDR");
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for (name, cluster_ips, tcp, udp) in [
        (
            SERVICE,
            [CLUSTER_IP, CLUSTER_IP6],
            (PORT, NODE_PORT),
            (UDP_PORT, UDP_NODE_PORT),
        ),
        (
            LOCAL_SERVICE,
            [LOCAL_CLUSTER_IP, LOCAL_CLUSTER_IP6],
            (LOCAL_PORT, LOCAL_NODE_PORT),
            (LOCAL_UDP_PORT, LOCAL_UDP_NODE_PORT),
        ),
    ] {
        let svc = service(ns, name, cluster_ips, tcp, udp);
        services
            .create(&PostParams::default(), &svc)
            .await
            .expect("service");
        let ingress = json!({"status": {"loadBalancer": {"ingress": [
            {"ip": addr::NODE4, "ipMode": "VIP"},
            {"ip": addr::NODE6, "ipMode": "VIP"}
        ]}}});
        services
            .patch_status(name, &PatchParams::default(), &Patch::Merge(ingress))
            .await
            .expect("service ingress");
    }
    let slices = Slices {
        one_backend: slices_of(ns, SERVICE, &[addr::BACKEND4], &[addr::BACKEND6]),
        two_backends: slices_of(
            ns,
            SERVICE,
            &[addr::BACKEND4, BACKEND4_B],
            &[addr::BACKEND6, BACKEND6_B],
        ),
        local: slices_of(ns, LOCAL_SERVICE, &[addr::BACKEND4], &[addr::BACKEND6]),
    };
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    for slice in slices.one_backend.iter().chain(&slices.local) {
        api.create(&PostParams::default(), slice)
            .await
            .expect("endpointslice");
    }
    slices
}

/// Sets label `portway.dev/kp-resync=<value>` on the Node: kube-proxy resyncs in full.
pub(super) async fn relabel_node(client: &Client, value: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = json!({"metadata": {"labels": {"portway.dev/kp-resync": value}}});
    nodes
        .patch(NODE, &PatchParams::default(), &Patch::Merge(labels))
        .await
        .expect("node label");
}

/// A dual-stack LoadBalancer Service (`RequireDualStack`, IPv4 first, both cluster IPs fixed)
/// with a TCP port `http` -> [`TARGET_PORT`] and a UDP port `dns` -> [`UDP_TARGET_PORT`], each
/// `(port, nodePort)` fixed; eTP Local for [`LOCAL_SERVICE`], else Cluster.
fn service(
    ns: &str,
    name: &str,
    cluster_ips: [&str; 2],
    (port, node_port): (u16, u16),
    (udp_port, udp_node_port): (u16, u16),
) -> Service {
    let policy = if name == LOCAL_SERVICE {
        "Local"
    } else {
        "Cluster"
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": cluster_ips[0],
            "clusterIPs": cluster_ips,
            "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": "RequireDualStack",
            "externalTrafficPolicy": policy,
            "ports": [{"name": "http", "protocol": "TCP", "port": port,
                       "targetPort": TARGET_PORT, "nodePort": node_port},
                      {"name": "dns", "protocol": "UDP", "port": udp_port,
                       "targetPort": UDP_TARGET_PORT, "nodePort": udp_node_port}]
        }
    }))
    .expect("service object")
}

/// The EndpointSlices `<service>-v4` with `v4` and `<service>-v6` with `v6`.
fn slices_of(ns: &str, service: &str, v4: &[&str], v6: &[&str]) -> [EndpointSlice; 2] {
    [
        slice_of(ns, service, "IPv4", v4),
        slice_of(ns, service, "IPv6", v6),
    ]
}

/// The EndpointSlice `<service>-v4` (or `-v6`) with `backends` on this node, ready.
fn slice_of(ns: &str, service: &str, family: &str, backends: &[&str]) -> EndpointSlice {
    let endpoints: Vec<objects::TestEndpoint<'_>> = backends
        .iter()
        .map(|address| objects::TestEndpoint {
            address,
            node: NODE,
            ready: true,
        })
        .collect();
    objects::endpoint_slice(
        ns,
        service,
        &format!("{service}-{}", if family == "IPv6" { "v6" } else { "v4" }),
        family,
        &[
            ("http", "TCP", i32::from(TARGET_PORT)),
            ("dns", "UDP", i32::from(UDP_TARGET_PORT)),
        ],
        &endpoints,
    )
}

/// Replaces the EndpointSlices of the same names with `slices`.
pub(super) async fn replace_slices(api: &Api<EndpointSlice>, slices: &[EndpointSlice]) {
    for slice in slices {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let current = api.get(&name).await.expect("get endpointslice");
        let mut slice = slice.clone();
        slice.metadata.resource_version = current.metadata.resource_version;
        api.replace(&name, &PostParams::default(), &slice)
            .await
            .expect("replace endpointslice");
    }
}

/// The agent's local spec file for one dual-stack Service in `Host` mode: the TCP port `http`
/// and the UDP port `dns`, each `(port = hostPort, nodePort)`.
pub(super) fn agent_spec(
    policy: &str,
    (port, node_port): (u16, u16),
    (udp_port, udp_node_port): (u16, u16),
    cluster_ips: [&str; 2],
) -> String {
    format!(
        "pool: p
dataplane: Host
externalTrafficPolicy: {policy}
ports:
- {{name: http, protocol: TCP, port: {port}, hostPort: {port}, nodePort: {node_port}}}
- {{name: dns, protocol: UDP, port: {udp_port}, hostPort: {udp_port}, nodePort: {udp_node_port}}}
clusterIPs: ['{}', '{}']
ipFamilies: [IPv4, IPv6]
",
        cluster_ips[0], cluster_ips[1]
    )
}

/// The agent's endpoints file: the same EndpointSlices the test writes to the API, as a `List`.
pub(super) fn endpoints_file(slices: &[EndpointSlice]) -> String {
    serde_json::to_string(&json!({ "items": slices })).expect("endpoints json")
}

/// Rewrites the agent's endpoints file and tells it to re-read now.
pub(super) fn write_endpoints(agent: &AgentProc, slices: &[EndpointSlice]) {
    support::write_atomic(
        &agent.dir.path().join("endpoints.yaml"),
        &endpoints_file(slices),
    );
    agent.sighup();
}

/// The rule context the agent of [`SERVICE`] works from.
pub(super) fn context(slices: &[EndpointSlice]) -> portway_node_agent::rules::Context {
    let mut ctx = support::context(
        &[addr::NODE4, addr::NODE6],
        &[addr::NODE4, addr::NODE6],
        Some(&endpoints_file(slices)),
    );
    ctx.node_name = NODE.into();
    ctx
}
