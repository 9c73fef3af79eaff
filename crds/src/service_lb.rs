//! `ServiceLoadBalancer`: one per LoadBalancer Service Portway serves, in the Service's namespace
//! and with the Service's name, owned by it. The operator writes the spec (what every node agent
//! of the Service must forward) and the overall conditions; each node agent writes only its own
//! entry of `status.nodes` (field manager `portway-agent/<node>`, list keyed by `node`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::pool::DataplaneMode;
use crate::schema::conditions_schema;

/// What the node agents of one LoadBalancer Service forward.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portway.dev",
    version = "v1alpha1",
    kind = "ServiceLoadBalancer",
    plural = "serviceloadbalancers",
    shortname = "slb",
    category = "portway",
    namespaced,
    status = "ServiceLoadBalancerStatus",
    derive = "PartialEq",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(name = "Dataplane", type_ = "string", json_path = ".spec.dataplane"),
    printcolumn(
        name = "Policy",
        type_ = "string",
        json_path = ".spec.externalTrafficPolicy"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new(
        "self.ports.all(p, self.ports.exists_one(q, q.protocol == p.protocol && q.hostPort == p.hostPort))"
    ).message("ports must not repeat a protocol and hostPort pair"),
    validation = kube::core::Rule::new("size(self.clusterIPs) == size(self.ipFamilies)")
        .message("clusterIPs and ipFamilies must have the same length"),
    validation = kube::core::Rule::new(
        "self.externalTrafficPolicy != 'Local' || self.ports.all(p, has(p.nodePort))"
    ).message("externalTrafficPolicy Local needs a nodePort on every port"),
)]
pub struct ServiceLoadBalancerSpec {
    /// The `LoadBalancerPool` serving the Service.
    #[schemars(length(min = 1, max = 253))]
    pub pool: String,
    /// Where agents forward (copied from the pool).
    #[serde(default)]
    pub dataplane: DataplaneMode,
    /// Ports to claim on each node and forward.
    #[schemars(length(min = 1, max = 100))]
    pub ports: Vec<LoadBalancerPort>,
    /// The Service's cluster IPs, one per family, in `ipFamilies` order.
    #[serde(rename = "clusterIPs", default)]
    #[schemars(length(max = 2), inner(length(max = 45)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(ip, isIP(ip))")
        .message("clusterIPs must be IP addresses"))]
    pub cluster_ips: Vec<String>,
    /// The Service's IP families, primary first.
    #[serde(default)]
    #[schemars(length(max = 2))]
    #[x_kube(validation = kube::core::Rule::new("self.all(f, self.exists_one(g, g == f))")
        .message("ipFamilies must not repeat a family"))]
    pub ip_families: Vec<IpFamily>,
    /// `Cluster` or `Local`, from the Service.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    /// Client CIDRs allowed in (`loadBalancerSourceRanges`); empty allows every client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 43)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(r, isCIDR(r))")
        .message("sourceRanges must be CIDRs such as 203.0.113.0/24"))]
    pub source_ranges: Vec<String>,
}

/// One forwarded port.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerPort {
    /// The Service port's name (matches EndpointSlice port names); empty for single-port Services.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 63))]
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: Protocol,
    /// The Service port (destination port on the cluster IP).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// The port claimed on each node and published in the ingress (equal to `port`).
    #[schemars(range(min = 1, max = 65535))]
    pub host_port: i32,
    /// The Service's NodePort (used for `externalTrafficPolicy: Local` in `Pod` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub node_port: Option<i32>,
}

/// Transport protocols Portway forwards.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum Protocol {
    TCP,
    UDP,
    SCTP,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TCP => "TCP",
            Self::UDP => "UDP",
            Self::SCTP => "SCTP",
        }
    }
}

/// IP families.
#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

impl IpFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IPv4 => "IPv4",
            Self::IPv6 => "IPv6",
        }
    }
}

/// A Service's `externalTrafficPolicy`.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// Observed state: overall conditions (operator) and one entry per node (its agent).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLoadBalancerStatus {
    /// The `metadata.generation` the operator's conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `PoolSelected`, `PortConflict`, `EndpointsReady` (written by the operator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The Nodes the Service's node-agent DaemonSet targets (the pool's usable Nodes), sorted.
    /// Written by the operator before it changes the DaemonSet, so an agent stopping because its
    /// node left this list already sees it left. A stopping agent whose node is listed leaves
    /// its rules to the next agent on that node (hitless upgrades); any other stops remove them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5000), inner(length(min = 1, max = 253)))]
    pub target_nodes: Vec<String>,
    /// One entry per node agent, each written only by that node's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["node"],
        "maxItems" = 5000
    ))]
    pub nodes: Vec<NodeForwardingStatus>,
}

/// What one node agent reports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeForwardingStatus {
    /// The Node's name (the list key).
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// The ServiceLoadBalancer generation the agent's rules implement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Addresses the agent forwards from (the node's or the pod's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 45)))]
    pub addresses: Vec<String>,
    /// `Forwarding` with reason `RulesApplied`, `NoEndpoints`, `KernelRejected`, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
