//! `LoadBalancerPool`: which Nodes serve which LoadBalancer Services. Replaces K3s ServiceLB's
//! `svccontroller.k3s.cattle.io/enablelb` and `lbpool` labels.

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::schema::conditions_schema;
use crate::selector::LabelSelector;

/// Which Nodes serve which LoadBalancer Services.
///
/// A Service is served by the pool named in its `portway.dev/pool` annotation; otherwise by the
/// matching pool (with `autoAssign`) of highest `priority`, ties broken by the pool name in
/// ascending byte order. A Node may belong to several pools.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portway.dev",
    version = "v1alpha1",
    kind = "LoadBalancerPool",
    plural = "loadbalancerpools",
    shortname = "lbpool",
    category = "portway",
    status = "LoadBalancerPoolStatus",
    derive = "PartialEq",
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "Dataplane", type_ = "string", json_path = ".spec.dataplane"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes"),
    printcolumn(name = "Services", type_ = "integer", json_path = ".status.services"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "self.addressTypes.all(t, self.addressTypes.exists_one(u, u == t))"
).message("addressTypes must not repeat a type"))]
pub struct LoadBalancerPoolSpec {
    /// Nodes that serve this pool's Services. `{}` selects every Node.
    pub node_selector: LabelSelector,
    /// Services this pool serves by label. Absent: every Service (subject to `namespaceSelector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Namespaces (by their labels) whose Services this pool serves. Absent: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// When false the pool serves only Services that name it in the `portway.dev/pool`
    /// annotation; the selectors are not consulted.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Higher wins when several pools match a Service; ties go to the smallest pool name.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// Node address types published in `status.loadBalancer.ingress`, in order of preference:
    /// for each Node the first type it has addresses of is used (K3s: ExternalIP, else InternalIP).
    #[serde(default = "default_address_types")]
    #[schemars(length(min = 1, max = 2))]
    pub address_types: Vec<NodeAddressType>,
    /// Where node agents forward: `Pod` (the agent pod's own network namespace, NET_ADMIN only;
    /// client addresses are masqueraded) or `Host` (the node's namespace, host network; keeps the
    /// client address for `externalTrafficPolicy: Local`).
    #[serde(default)]
    pub dataplane: DataplaneMode,
    /// Tolerations of this pool's node agents. Absent: K3s ServiceLB's set (CriticalAddonsOnly,
    /// and the control-plane and master NoSchedule taints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub tolerations: Option<Vec<Toleration>>,
}

fn default_true() -> bool {
    true
}

/// K3s' order: ExternalIP, else InternalIP.
pub fn default_address_types() -> Vec<NodeAddressType> {
    vec![NodeAddressType::ExternalIP, NodeAddressType::InternalIP]
}

/// Node address types that can be published.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeAddressType {
    ExternalIP,
    InternalIP,
}

impl NodeAddressType {
    /// The `NodeAddress.type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExternalIP => "ExternalIP",
            Self::InternalIP => "InternalIP",
        }
    }
}

/// Where a node agent installs its forwarding rules.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
pub enum DataplaneMode {
    /// In the agent pod's network namespace (klipper-lb's placement): NET_ADMIN only.
    #[default]
    Pod,
    /// In the node's network namespace, from a host-network agent pod.
    Host,
}

impl DataplaneMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::Host => "Host",
        }
    }
}

/// Observed state of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `NoNodes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Number of Nodes the node selector matches.
    #[serde(default)]
    pub nodes: i32,
    /// Number of Services this pool serves.
    #[serde(default)]
    pub services: i32,
}
