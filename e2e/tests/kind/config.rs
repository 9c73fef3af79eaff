//! The kind cluster configurations of `e2e/kind/`, read with types that mirror kind's
//! `kind.x-k8s.io/v1alpha4` `Cluster` (sigs.k8s.io/kind `pkg/apis/config/v1alpha4/types.go`).
//! kind decodes its config strictly (an unknown field is an error), so these types reject unknown
//! fields too: a typo here fails `cargo test` instead of a CI run on a Docker runner.
//!
//! The tests check what the suite relies on: one control plane and two or three workers with the
//! zone labels the tests' pools select by; the variant's IP family, pod and service subnets;
//! kube-controller-manager patched to `--allocate-node-cidrs=false` by a version-less kubeadm
//! patch (kind applies it to the v1beta3 and the v1beta4 kubeadm config alike).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

/// The three variants, each with its config file `e2e/kind/<name>.yaml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
        portway_e2e::envtest::workspace_root()
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

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
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

#[test]
fn kind_configs_are_strict_v1alpha4_and_fit_the_suite() {
    for variant in Variant::ALL {
        let name = variant.name();
        let c = variant
            .config()
            .unwrap_or_else(|e| panic!("{name}: not a kind v1alpha4 Cluster: {e}"));
        assert_eq!(c.kind, "Cluster", "{name}");
        assert_eq!(c.api_version, "kind.x-k8s.io/v1alpha4", "{name}");
        // Topology: one control plane, two or three workers, each worker in a zone; zones a and b
        // exist (the pool tests move Services between them).
        let control_planes = c
            .nodes
            .iter()
            .filter(|n| n.role() == NodeRole::ControlPlane)
            .count();
        let zones = c.worker_zones();
        assert_eq!(control_planes, 1, "{name}: control planes");
        assert!(
            (2..=3).contains(&zones.len()),
            "{name}: {} workers",
            zones.len()
        );
        assert!(
            zones.iter().all(Option::is_some),
            "{name}: a worker without zone label"
        );
        assert!(
            zones.contains(&Some("a")) && zones.contains(&Some("b")),
            "{name}: {zones:?}"
        );
        // Nothing pins images per node: e2e/run.sh chooses the node image (KIND_NODE_IMAGE).
        assert!(
            c.nodes.iter().all(|n| n.image.is_none()),
            "{name}: per-node image"
        );
        // Networking of the variant.
        assert_eq!(c.networking.ip_family, Some(variant.ip_family()), "{name}");
        assert!(
            !c.networking.disable_default_cni,
            "{name}: kindnet is the CNI under test"
        );
        let pods = c.pod_subnets().unwrap_or_else(|e| panic!("{name}: {e}"));
        let services = c
            .service_subnets()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for (what, nets) in [("podSubnet", &pods), ("serviceSubnet", &services)] {
            let v4 = nets.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
            let v6 = nets.iter().filter(|n| matches!(n, IpNet::V6(_))).count();
            assert_eq!(
                (v4, v6),
                (usize::from(variant.has_v4()), usize::from(variant.has_v6())),
                "{name}: {what} families"
            );
            if variant == Variant::DualStack {
                assert!(
                    matches!(nets[0], IpNet::V4(_)),
                    "{name}: {what} must list IPv4 first"
                );
            }
        }
        // The chart's default ClusterCIDR gives each node a /24 and a /64: the pod subnets must
        // hold more than the cluster's nodes, and pods and services must not overlap.
        for p in &pods {
            let per_node = match p {
                IpNet::V4(_) => 24,
                IpNet::V6(_) => 64,
            };
            assert!(
                p.prefix_len() < per_node && per_node - p.prefix_len() >= 2,
                "{name}: {p} is too small for a /{per_node} per node"
            );
            for s in &services {
                assert!(
                    !p.contains(&s.network()) && !s.contains(&p.network()),
                    "{name}: {p} overlaps {s}"
                );
            }
        }
        // kube-controller-manager leaves pod CIDRs to Portway, through a patch that names no
        // kubeadm apiVersion (kind then applies it to v1beta3 and v1beta4 configs alike).
        let patches = c
            .kubeadm_patches()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            patches.iter().all(|p| p.get("apiVersion").is_none()),
            "{name}: a kubeadm patch pins an apiVersion: {patches:?}"
        );
        let args = controller_manager_args(&patches);
        assert_eq!(
            args.get("allocate-node-cidrs").map(String::as_str),
            Some("false"),
            "{name}: kube-controller-manager args {args:?}"
        );
    }
}

#[test]
fn a_typo_in_a_kind_config_is_refused() {
    // The strictness the test above relies on: kind refuses unknown fields, so must we.
    for bad in [
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking:\n  podSubnets: 10.0.0.0/16\n",
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: worker\n  label: {a: b}\n",
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: master\n",
        "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnetworking:\n  ipFamily: ipv5\n",
    ] {
        assert!(
            serde_saphyr::from_str::<KindCluster>(bad).is_err(),
            "accepted: {bad}"
        );
    }
    // Both kubeadm forms of extraArgs are understood.
    let v1beta4: Value = serde_saphyr::from_str(
        "kind: ClusterConfiguration\ncontrollerManager:\n  extraArgs:\n  - name: allocate-node-cidrs\n    value: \"false\"\n",
    )
    .expect("yaml");
    assert_eq!(
        controller_manager_args(&[v1beta4]).get("allocate-node-cidrs"),
        Some(&"false".to_owned())
    );
}

#[test]
fn every_v1alpha4_field_is_mirrored() {
    // A config that sets every field of kind's v1alpha4 schema: it parses, and each value lands
    // where kind would read it (so the strict types above refuse only what kind refuses).
    let yaml = r#"
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
name: all-fields
featureGates: {InPlacePodVerticalScaling: true}
runtimeConfig: {"api/alpha": "false"}
networking:
  ipFamily: dual
  apiServerPort: 6443
  apiServerAddress: 127.0.0.1
  podSubnet: 10.244.0.0/16,fd00:10:244::/56
  serviceSubnet: 10.96.0.0/16,fd00:10:96::/112
  disableDefaultCNI: true
  kubeProxyMode: nftables
  dnsSearch: [example.test]
kubeadmConfigPatches: ["kind: ClusterConfiguration\n"]
kubeadmConfigPatchesJSON6902:
- {group: kubeadm.k8s.io, version: v1beta3, kind: ClusterConfiguration, patch: "[]"}
containerdConfigPatches: ["[plugins]\n"]
containerdConfigPatchesJSON6902: ["[]"]
nodes:
- role: control-plane
  image: kindest/node:v1.33.1
  labels: {a: b}
  gpus: all
  extraMounts:
  - {containerPath: /c, hostPath: /h, readOnly: true, selinuxRelabel: true, propagation: HostToContainer}
  extraPortMappings:
  - {containerPort: 80, hostPort: 8080, listenAddress: 127.0.0.1, protocol: TCP}
  kubeadmConfigPatches: ["kind: InitConfiguration\n"]
  kubeadmConfigPatchesJSON6902:
  - {group: kubeadm.k8s.io, version: v1beta3, kind: InitConfiguration, patch: "[]"}
"#;
    let c: KindCluster = serde_saphyr::from_str(yaml).expect("every field parses");
    assert_eq!(c.name.as_deref(), Some("all-fields"));
    assert_eq!(
        c.feature_gates.get("InPlacePodVerticalScaling"),
        Some(&true)
    );
    assert_eq!(
        c.runtime_config.get("api/alpha").map(String::as_str),
        Some("false")
    );
    let n = &c.networking;
    assert_eq!(n.ip_family, Some(IpFamilyConfig::Dual));
    assert_eq!(
        (n.api_server_port, n.api_server_address.as_deref()),
        (Some(6443), Some("127.0.0.1"))
    );
    assert!(n.disable_default_cni);
    assert_eq!(n.kube_proxy_mode, Some(ProxyMode::Nftables));
    assert_eq!(
        n.dns_search.as_deref(),
        Some(&["example.test".to_owned()][..])
    );
    assert_eq!(c.pod_subnets().expect("pods").len(), 2);
    assert_eq!(
        c.kubeadm_config_patches_json6902[0].kind,
        "ClusterConfiguration"
    );
    let p = &c.kubeadm_config_patches_json6902[0];
    assert_eq!(
        (p.group.as_str(), p.version.as_str(), p.patch.as_str()),
        ("kubeadm.k8s.io", "v1beta3", "[]")
    );
    assert_eq!(c.containerd_config_patches, ["[plugins]\n"]);
    assert_eq!(c.containerd_config_patches_json6902, ["[]"]);
    let node = &c.nodes[0];
    assert_eq!(node.role(), NodeRole::ControlPlane);
    assert_eq!(node.image.as_deref(), Some("kindest/node:v1.33.1"));
    assert_eq!(node.gpus.as_deref(), Some("all"));
    let m = &node.extra_mounts[0];
    assert_eq!(
        (m.container_path.as_str(), m.host_path.as_str()),
        ("/c", "/h")
    );
    assert!(m.read_only && m.selinux_relabel);
    assert_eq!(m.propagation.as_deref(), Some("HostToContainer"));
    let pm = &node.extra_port_mappings[0];
    assert_eq!((pm.container_port, pm.host_port), (80, 8080));
    assert_eq!(
        (pm.listen_address.as_deref(), pm.protocol.as_deref()),
        (Some("127.0.0.1"), Some("TCP"))
    );
    assert_eq!(
        node.kubeadm_config_patches_json6902[0].kind,
        "InitConfiguration"
    );
    assert_eq!(c.kubeadm_patches().expect("patches").len(), 2);
}
