//! The kind cluster configurations of `e2e/kind/`, read with types that mirror kind's
//! `kind.x-k8s.io/v1alpha4` `Cluster` (sigs.k8s.io/kind `pkg/apis/config/v1alpha4/types.go`).
//! kind decodes its config strictly (an unknown field is an error), so these types reject unknown
//! fields too: a typo here fails `cargo test` instead of a CI run on a Docker runner.
//!
//! Both clusters of the end-to-end suite read them: kind itself, and the local harness
//! ([`crate::cluster`]), which takes each node's role and labels and the pod and service subnets
//! from the same file. The offline checks live in `e2e/tests/kind/config.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The three variants, each with its config file `e2e/kind/<name>.yaml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    Ipv4,
    Ipv6,
    DualStack,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Ipv4, Variant::Ipv6, Variant::DualStack];

    /// The name used by `e2e/run.sh`, the workflow matrix and the file name.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Ipv4 => "ipv4",
            Variant::Ipv6 => "ipv6",
            Variant::DualStack => "dual-stack",
        }
    }

    pub fn from_name(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }

    /// kind's `networking.ipFamily` for the variant.
    pub fn ip_family(self) -> IpFamilyConfig {
        match self {
            Variant::Ipv4 => IpFamilyConfig::Ipv4,
            Variant::Ipv6 => IpFamilyConfig::Ipv6,
            Variant::DualStack => IpFamilyConfig::Dual,
        }
    }

    /// Whether the variant's nodes and Services have IPv4 / IPv6.
    pub fn has_v4(self) -> bool {
        self != Variant::Ipv6
    }
    pub fn has_v6(self) -> bool {
        self != Variant::Ipv4
    }

    pub fn path(self) -> PathBuf {
        crate::envtest::workspace_root()
            .join("e2e/kind")
            .join(format!("{}.yaml", self.name()))
    }

    /// Reads and parses the variant's config.
    pub fn config(self) -> Result<KindCluster, String> {
        let path = self.path();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// kind's `Cluster` (v1alpha4).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KindCluster {
    pub kind: String,
    pub api_version: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub nodes: Vec<KindNode>,
    #[serde(default)]
    pub networking: Networking,
    #[serde(default)]
    pub feature_gates: BTreeMap<String, bool>,
    #[serde(default)]
    pub runtime_config: BTreeMap<String, String>,
    #[serde(default)]
    pub kubeadm_config_patches: Vec<String>,
    #[serde(default, rename = "kubeadmConfigPatchesJSON6902")]
    pub kubeadm_config_patches_json6902: Vec<PatchJson6902>,
    #[serde(default)]
    pub containerd_config_patches: Vec<String>,
    #[serde(default, rename = "containerdConfigPatchesJSON6902")]
    pub containerd_config_patches_json6902: Vec<String>,
}

/// kind's `Node`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KindNode {
    /// Defaults to `control-plane` in kind.
    #[serde(default)]
    pub role: Option<NodeRole>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub extra_mounts: Vec<Mount>,
    #[serde(default)]
    pub extra_port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub gpus: Option<String>,
    #[serde(default)]
    pub kubeadm_config_patches: Vec<String>,
    #[serde(default, rename = "kubeadmConfigPatchesJSON6902")]
    pub kubeadm_config_patches_json6902: Vec<PatchJson6902>,
}

impl KindNode {
    pub fn role(&self) -> NodeRole {
        self.role.unwrap_or(NodeRole::ControlPlane)
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum NodeRole {
    #[serde(rename = "control-plane")]
    ControlPlane,
    #[serde(rename = "worker")]
    Worker,
}

/// kind's `Networking`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Networking {
    #[serde(default)]
    pub ip_family: Option<IpFamilyConfig>,
    #[serde(default)]
    pub api_server_port: Option<i32>,
    #[serde(default)]
    pub api_server_address: Option<String>,
    #[serde(default)]
    pub pod_subnet: Option<String>,
    #[serde(default)]
    pub service_subnet: Option<String>,
    #[serde(default, rename = "disableDefaultCNI")]
    pub disable_default_cni: bool,
    #[serde(default)]
    pub kube_proxy_mode: Option<ProxyMode>,
    #[serde(default)]
    pub dns_search: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IpFamilyConfig {
    Ipv4,
    Ipv6,
    Dual,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Iptables,
    Ipvs,
    Nftables,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchJson6902 {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub patch: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mount {
    #[serde(default)]
    pub container_path: String,
    #[serde(default)]
    pub host_path: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub selinux_relabel: bool,
    #[serde(default)]
    pub propagation: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortMapping {
    #[serde(default)]
    pub container_port: i32,
    #[serde(default)]
    pub host_port: i32,
    #[serde(default)]
    pub listen_address: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
}

impl KindCluster {
    /// `networking.podSubnet` split into its CIDRs.
    pub fn pod_subnets(&self) -> Result<Vec<IpNet>, String> {
        subnets(self.networking.pod_subnet.as_deref(), "podSubnet")
    }

    /// `networking.serviceSubnet` split into its CIDRs.
    pub fn service_subnets(&self) -> Result<Vec<IpNet>, String> {
        subnets(self.networking.service_subnet.as_deref(), "serviceSubnet")
    }

    /// Every kubeadm merge patch, cluster-level first, parsed as YAML.
    pub fn kubeadm_patches(&self) -> Result<Vec<Value>, String> {
        self.kubeadm_config_patches
            .iter()
            .chain(self.nodes.iter().flat_map(|n| &n.kubeadm_config_patches))
            .map(|p| serde_saphyr::from_str::<Value>(p).map_err(|e| format!("{e}: {p}")))
            .collect()
    }

    /// The workers' zone labels (`e2e.portway.dev/zone`), in node order.
    pub fn worker_zones(&self) -> Vec<Option<&str>> {
        self.nodes
            .iter()
            .filter(|n| n.role() == NodeRole::Worker)
            .map(|n| n.labels.get(ZONE_LABEL).map(String::as_str))
            .collect()
    }
}

/// The worker label the tests' pools select by.
pub const ZONE_LABEL: &str = "e2e.portway.dev/zone";

fn subnets(raw: Option<&str>, field: &str) -> Result<Vec<IpNet>, String> {
    let raw = raw.ok_or_else(|| format!("networking.{field} is not set"))?;
    raw.split(',')
        .map(|s| {
            let net: IpNet = s
                .trim()
                .parse()
                .map_err(|e| format!("networking.{field} {s:?}: {e}"))?;
            if net.trunc() != net {
                return Err(format!("networking.{field} {s:?} has host bits set"));
            }
            Ok(net)
        })
        .collect()
}

/// The kube-controller-manager extra args that the patches set, whichever kubeadm form they use
/// (a map in v1beta3, a `{name, value}` list in v1beta4).
pub fn controller_manager_args(patches: &[Value]) -> BTreeMap<String, String> {
    let mut args = BTreeMap::new();
    for p in patches
        .iter()
        .filter(|p| p["kind"] == "ClusterConfiguration")
    {
        match &p["controllerManager"]["extraArgs"] {
            Value::Object(map) => {
                for (k, v) in map {
                    args.insert(k.clone(), v.as_str().unwrap_or_default().to_owned());
                }
            }
            Value::Array(list) => {
                for item in list {
                    if let (Some(k), Some(v)) = (item["name"].as_str(), item["value"].as_str()) {
                        args.insert(k.to_owned(), v.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    args
}

/// The sysctls kubelets may set in pods although Kubernetes counts them unsafe
/// (`KubeletConfiguration.allowedUnsafeSysctls`), from the patches' KubeletConfiguration.
pub fn kubelet_allowed_unsafe_sysctls(patches: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = patches
        .iter()
        .filter(|p| p["kind"] == "KubeletConfiguration")
        .flat_map(|p| {
            p["allowedUnsafeSysctls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}
