//! `ClusterCIDR`: pod CIDR ranges handed to Nodes, the successor of the removed upstream
//! `networking.k8s.io/v1alpha1` ClusterCIDR (KEP-2593). Field names match upstream's, so an
//! upstream or K3s manifest converts by changing `apiVersion` alone.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::schema::conditions_schema;
use crate::selector::NodeSelector;

/// Pod CIDRs for the Nodes that match `nodeSelector`: each such Node without `spec.podCIDRs` gets
/// one CIDR per configured family. The spec is immutable, as upstream's was.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portway.dev",
    version = "v1alpha1",
    kind = "ClusterCIDR",
    plural = "clustercidrs",
    shortname = "ccidr",
    category = "portway",
    status = "ClusterCIDRStatus",
    derive = "PartialEq",
    printcolumn(name = "IPv4", type_ = "string", json_path = ".spec.ipv4"),
    printcolumn(name = "IPv6", type_ = "string", json_path = ".spec.ipv6"),
    printcolumn(
        name = "HostBits",
        type_ = "integer",
        json_path = ".spec.perNodeHostBits"
    ),
    printcolumn(
        name = "Priority",
        type_ = "integer",
        json_path = ".spec.priority",
        priority = 1
    ),
    printcolumn(
        name = "IPv4Used",
        type_ = "integer",
        json_path = ".status.ipv4.allocated"
    ),
    printcolumn(
        name = "IPv6Used",
        type_ = "integer",
        json_path = ".status.ipv6.allocated"
    ),
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
// The host-bits rules skip ranges that are not CIDRs of their family: the field rules on `ipv4`
// and `ipv6` reject those with a clear message, where `cidr()` would fail at run time and add an
// engine-specific "parse error ... evaluating rule" cause (seen on a real API server).
#[x_kube(
    validation = kube::core::Rule::new("self == oldSelf")
        .message("spec is immutable: create a new ClusterCIDR instead"),
    validation = kube::core::Rule::new("has(self.ipv4) || has(self.ipv6)")
        .message("at least one of ipv4 and ipv6 must be set"),
    validation = kube::core::Rule::new(
        "!has(self.ipv4) || !isCIDR(self.ipv4) || cidr(self.ipv4).ip().family() != 4 || (has(self.ipv4PerNodeHostBits) ? self.ipv4PerNodeHostBits : self.perNodeHostBits) <= 32 - cidr(self.ipv4).prefixLength()"
    ).message("IPv4 per-node host bits must not exceed the host bits of the ipv4 range (32 - prefix length)"),
    validation = kube::core::Rule::new(
        "!has(self.ipv6) || !isCIDR(self.ipv6) || cidr(self.ipv6).ip().family() != 6 || (has(self.ipv6PerNodeHostBits) ? self.ipv6PerNodeHostBits : self.perNodeHostBits) <= 128 - cidr(self.ipv6).prefixLength()"
    ).message("IPv6 per-node host bits must not exceed the host bits of the ipv6 range (128 - prefix length)"),
    validation = kube::core::Rule::new(
        "!has(self.ipv4) || has(self.ipv4PerNodeHostBits) || self.perNodeHostBits <= 32"
    ).message("perNodeHostBits is larger than 32: set ipv4PerNodeHostBits for the IPv4 range"),
)]
pub struct ClusterCIDRSpec {
    /// Nodes this ClusterCIDR serves: terms are ORed, requirements within a term ANDed. Absent
    /// or without terms: every Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<NodeSelector>,
    /// Host bits of each Node's CIDR (8 gives an IPv4 /24 and an IPv6 /120), for both families
    /// unless overridden per family below.
    #[schemars(range(min = 4, max = 128))]
    pub per_node_host_bits: i32,
    /// Portway extension: IPv4 host bits per Node, overriding `perNodeHostBits`.
    #[serde(
        default,
        rename = "ipv4PerNodeHostBits",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 4, max = 32))]
    pub ipv4_per_node_host_bits: Option<i32>,
    /// Portway extension: IPv6 host bits per Node, overriding `perNodeHostBits` (64 gives a /64).
    #[serde(
        default,
        rename = "ipv6PerNodeHostBits",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 4, max = 128))]
    pub ipv6_per_node_host_bits: Option<i32>,
    /// IPv4 range in canonical CIDR form, e.g. `10.42.0.0/16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 18))]
    #[x_kube(validation = kube::core::Rule::new(
        "isCIDR(self) && cidr(self).ip().family() == 4 && string(cidr(self).masked()) == self"
    ).message("ipv4 must be an IPv4 CIDR with no host bits set, e.g. 10.42.0.0/16"))]
    pub ipv4: Option<String>,
    /// IPv6 range in canonical CIDR form, e.g. `fd00:10:42::/56`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 43))]
    #[x_kube(validation = kube::core::Rule::new(
        "isCIDR(self) && cidr(self).ip().family() == 6 && string(cidr(self).masked()) == self"
    ).message("ipv6 must be an IPv6 CIDR in canonical form with no host bits set, e.g. fd00:10:42::/56"))]
    pub ipv6: Option<String>,
    /// Portway extension: higher wins when several ClusterCIDRs match a Node.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
}

impl ClusterCIDRSpec {
    /// Effective IPv4 host bits.
    pub fn ipv4_host_bits(&self) -> i32 {
        self.ipv4_per_node_host_bits
            .unwrap_or(self.per_node_host_bits)
    }
    /// Effective IPv6 host bits.
    pub fn ipv6_host_bits(&self) -> i32 {
        self.ipv6_per_node_host_bits
            .unwrap_or(self.per_node_host_bits)
    }
}

/// Observed state of a ClusterCIDR.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCIDRStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `NearlyFull` (90 % or more allocated), `Exhausted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// IPv4 usage, when `spec.ipv4` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<FamilyUsage>,
    /// IPv6 usage, when `spec.ipv6` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyUsage>,
}

/// Allocation figures of one address family.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FamilyUsage {
    /// Node CIDRs handed out.
    pub allocated: i64,
    /// Node CIDRs the range holds; saturates at 2^63-1 for huge IPv6 ranges.
    pub capacity: i64,
}
