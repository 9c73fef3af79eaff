//! The plan of a local cluster, from a variant's kind config (`e2e/kind/<variant>.yaml`) and a
//! name: its nodes (kind's names, roles and labels), their network namespaces and addresses on the
//! node network, the pod and Service subnets, and the well-known Service addresses. Pure.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::ClusterError;
use crate::kind::{IpFamilyConfig, KindCluster, NodeRole, Variant};

/// Where every cluster's state (certificates, configs, data, logs, pids) lives, one folder each.
pub const STATE_ROOT: &str = "/var/tmp/portway-cluster";
/// Prefix of everything the harness names in the kernel: network namespaces, cgroups, links.
pub const PREFIX: &str = "pwc";
/// The root network namespace's bridge to which every node's veth is attached.
pub const BRIDGE: &str = "pwc0";
/// The node network (never podman's 10.88.0.0/16): the bridge is `.1`, nodes from `.2` on.
pub const NODE_NET_V4: Ipv4Addr = Ipv4Addr::new(10, 111, 0, 0);
pub const NODE_NET_V4_PREFIX: u8 = 24;
pub const NODE_NET_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x111, 0, 0, 0, 0, 0);
pub const NODE_NET_V6_PREFIX: u8 = 64;
/// The node's interface on the node network, inside its namespace.
pub const NODE_IFACE: &str = "eth0";
/// The API server's port on the control plane's node address.
pub const API_PORT: u16 = 6443;
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Labels and taints kubeadm gives a control plane (kind keeps the taint when it has workers).
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
pub const EXCLUDE_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane:NoSchedule";
/// The file in a cluster's state folder that `up` writes its record to ([`ClusterSpec::spec_file`]).
pub const SPEC_FILE: &str = "cluster.json";
/// Length limit of a Linux interface name.
const IFNAMSIZ: usize = 15;

/// One node of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The Node's name, kind's: `<cluster>-control-plane`, `<cluster>-worker`, `-worker2`, ...
    pub name: String,
    pub index: usize,
    pub role: NodeRole,
    /// Labels the kubelet registers with (the config's; kubelet may set these itself).
    pub kubelet_labels: BTreeMap<String, String>,
    /// Labels set with the admin client after registration (`node-role.kubernetes.io/*`, which
    /// the NodeRestriction admission plugin keeps kubelets from setting).
    pub admin_labels: BTreeMap<String, String>,
    /// Addresses on the node network, primary family first.
    pub ips: Vec<IpAddr>,
}

impl NodeSpec {
    /// Its network namespace's name (`/run/netns/<name>`).
    pub fn netns(&self) -> String {
        format!("{PREFIX}-{}", self.name)
    }

    /// Its network namespace's path, for `nsenter --net=`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.netns())
    }

    /// The root side of its veth pair (on [`BRIDGE`]).
    pub fn host_veth(&self) -> String {
        let name = format!("{PREFIX}0-n{}", self.index);
        debug_assert!(name.len() <= IFNAMSIZ);
        name
    }

    /// Its cgroup (in every hierarchy): the kubelet's `--cgroup-root`, with the node's daemons
    /// in [`NodeSpec::daemon_cgroup`] beside the pods.
    pub fn cgroup_root(&self) -> String {
        format!("/{PREFIX}-{}", self.name)
    }

    /// The cgroup of the node's daemons (containerd and its shims, kubelet, kube-proxy).
    pub fn daemon_cgroup(&self) -> String {
        format!("{}/daemons", self.cgroup_root())
    }

    pub fn is_control_plane(&self) -> bool {
        self.role == NodeRole::ControlPlane
    }

    /// `--node-ip`: every address, primary family first.
    pub fn node_ip_arg(&self) -> String {
        self.ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The whole plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    pub variant: Variant,
    pub nodes: Vec<NodeSpec>,
    pub pod_subnets: Vec<IpNet>,
    pub service_subnets: Vec<IpNet>,
    /// `allowedUnsafeSysctls` of the kind config's KubeletConfiguration patch.
    pub allowed_unsafe_sysctls: Vec<String>,
    /// `state_root/<name>`.
    pub state_dir: PathBuf,
}

impl ClusterSpec {
    /// The plan for `variant` named `name`, with state under `state_root`.
    pub fn new(
        name: &str,
        variant: Variant,
        config: &KindCluster,
        state_root: &Path,
    ) -> Result<Self, ClusterError> {
        check_name(name)?;
        let invalid = |why: String| ClusterError::Config {
            variant: variant.name(),
            why,
        };
        let family = config.networking.ip_family.unwrap_or(IpFamilyConfig::Ipv4);
        let pod_subnets = config.pod_subnets().map_err(invalid)?;
        let service_subnets = config.service_subnets().map_err(invalid)?;
        let allowed_unsafe_sysctls = crate::kind::kubelet_allowed_unsafe_sysctls(
            &config.kubeadm_patches().map_err(invalid)?,
        );
        let mut nodes = Vec::new();
        let mut workers = 0;
        for (index, n) in config.nodes.iter().enumerate() {
            let role = n.role();
            let node_name = match role {
                NodeRole::ControlPlane if nodes.iter().any(NodeSpec::is_control_plane) => {
                    return Err(invalid("more than one control plane".into()));
                }
                NodeRole::ControlPlane => format!("{name}-control-plane"),
                NodeRole::Worker => {
                    workers += 1;
                    if workers == 1 {
                        format!("{name}-worker")
                    } else {
                        format!("{name}-worker{workers}")
                    }
                }
            };
            let mut admin_labels = BTreeMap::new();
            if role == NodeRole::ControlPlane {
                admin_labels.insert(CONTROL_PLANE_LABEL.to_owned(), String::new());
                admin_labels.insert(EXCLUDE_LB_LABEL.to_owned(), String::new());
            }
            nodes.push(NodeSpec {
                name: node_name,
                index,
                role,
                kubelet_labels: n.labels.clone(),
                admin_labels,
                ips: node_ips(family, index),
            });
        }
        if !nodes.iter().any(NodeSpec::is_control_plane) {
            return Err(invalid("no control-plane node".into()));
        }
        // The control plane first: it starts first and is nodes[0] everywhere.
        nodes.sort_by_key(|n| !n.is_control_plane());
        Ok(Self {
            name: name.to_owned(),
            variant,
            nodes,
            pod_subnets,
            service_subnets,
            allowed_unsafe_sysctls,
            state_dir: state_root.join(name),
        })
    }

    pub fn control_plane(&self) -> &NodeSpec {
        // `new` guarantees a control plane, sorted first.
        &self.nodes[0]
    }

    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The API server's address as clients write it (`https://10.111.0.2:6443`).
    pub fn api_server_url(&self) -> String {
        let ip = self.control_plane().ips[0];
        match ip {
            IpAddr::V4(v4) => format!("https://{v4}:{API_PORT}"),
            IpAddr::V6(v6) => format!("https://[{v6}]:{API_PORT}"),
        }
    }

    /// The `kubernetes` Service's addresses: the first address of each Service subnet.
    pub fn kubernetes_service_ips(&self) -> Vec<IpAddr> {
        self.service_subnets
            .iter()
            .filter_map(|s| nth_address(s, 1))
            .collect()
    }

    /// The cluster DNS Service's address: the tenth of the primary Service subnet (kubeadm's).
    pub fn dns_service_ip(&self) -> Option<IpAddr> {
        self.service_subnets
            .first()
            .and_then(|s| nth_address(s, 10))
    }

    /// `--service-cluster-ip-range`.
    pub fn service_cidr_arg(&self) -> String {
        join(&self.service_subnets)
    }

    /// `kube-proxy`'s `clusterCIDR`.
    pub fn pod_cidr_arg(&self) -> String {
        join(&self.pod_subnets)
    }

    pub fn has_v4(&self) -> bool {
        self.nodes.iter().flat_map(|n| &n.ips).any(IpAddr::is_ipv4)
    }

    pub fn has_v6(&self) -> bool {
        self.nodes.iter().flat_map(|n| &n.ips).any(IpAddr::is_ipv6)
    }

    /// The root namespace's addresses on the bridge, primary family first.
    pub fn bridge_ips(&self) -> Vec<IpAddr> {
        let mut a = Vec::new();
        if self.has_v4() {
            a.push(IpAddr::V4(v4_host(1)));
        }
        if self.has_v6() {
            a.push(IpAddr::V6(v6_host(1)));
        }
        a
    }

    /// The root namespace's addresses on the bridge, with prefix length.
    pub fn bridge_addrs(&self) -> Vec<String> {
        self.bridge_ips()
            .into_iter()
            .map(|ip| match ip {
                IpAddr::V4(_) => format!("{ip}/{NODE_NET_V4_PREFIX}"),
                IpAddr::V6(_) => format!("{ip}/{NODE_NET_V6_PREFIX}"),
            })
            .collect()
    }

    // --- where things live ----------------------------------------------------------------------

    pub fn pki_dir(&self) -> PathBuf {
        self.state_dir.join("pki")
    }
    pub fn kubeconfig_dir(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }
    /// The admin kubeconfig (`system:masters`), what `portway-cluster kubeconfig` prints.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig_dir().join("admin.kubeconfig")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn pids_dir(&self) -> PathBuf {
        self.state_dir.join("pids")
    }
    pub fn etcd_dir(&self) -> PathBuf {
        self.state_dir.join("etcd")
    }
    /// The registry mirror's folder: its config and its storage (`data/`).
    pub fn registry_dir(&self) -> PathBuf {
        self.state_dir.join("registry")
    }
    /// The DNS stand-in's record file folder (a hostPath of the `coredns` pods).
    pub fn dns_dir(&self) -> PathBuf {
        self.state_dir.join("dns")
    }
    /// A node's folder, `n<index>`: short, because unix socket paths (containerd's, kubelet's
    /// `pod-resources/kubelet.sock`) are limited to about 104 bytes.
    pub fn node_dir(&self, node: &NodeSpec) -> PathBuf {
        self.state_dir.join(format!("n{}", node.index))
    }
    pub fn containerd_socket(&self, node: &NodeSpec) -> PathBuf {
        self.node_dir(node).join("containerd.sock")
    }
    pub fn cni_conf_dir(&self, node: &NodeSpec) -> PathBuf {
        self.node_dir(node).join("cni/net.d")
    }
    pub fn static_pod_dir(&self, node: &NodeSpec) -> PathBuf {
        self.node_dir(node).join("manifests")
    }
    /// The marker `up` writes last: the cluster was started completely.
    pub fn spec_file(&self) -> PathBuf {
        self.state_dir.join(SPEC_FILE)
    }
}

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The node network address of node `index` (the bridge has host 1).
fn node_ips(family: IpFamilyConfig, index: usize) -> Vec<IpAddr> {
    let host = u8::try_from(index + 2).unwrap_or(u8::MAX);
    match family {
        IpFamilyConfig::Ipv4 => vec![IpAddr::V4(v4_host(host))],
        IpFamilyConfig::Ipv6 => vec![IpAddr::V6(v6_host(host))],
        IpFamilyConfig::Dual => vec![IpAddr::V4(v4_host(host)), IpAddr::V6(v6_host(host))],
    }
}

fn v4_host(host: u8) -> Ipv4Addr {
    let [a, b, c, _] = NODE_NET_V4.octets();
    Ipv4Addr::new(a, b, c, host)
}

fn v6_host(host: u8) -> Ipv6Addr {
    let mut s = NODE_NET_V6.segments();
    s[7] = u16::from(host);
    Ipv6Addr::from(s)
}

/// The `n`th address of a subnet (`n` = 1 is the first after the network address).
pub fn nth_address(net: &IpNet, n: u32) -> Option<IpAddr> {
    match net {
        IpNet::V4(v4) => {
            let base = u32::from(v4.network());
            let ip = Ipv4Addr::from(base.checked_add(n)?);
            v4.contains(&ip).then_some(IpAddr::V4(ip))
        }
        IpNet::V6(v6) => {
            let base = u128::from(v6.network());
            let ip = Ipv6Addr::from(base.checked_add(u128::from(n))?);
            v6.contains(&ip).then_some(IpAddr::V6(ip))
        }
    }
}

/// The longest cluster name: unix socket paths under the state folder must stay short.
pub const MAX_NAME_LEN: usize = 32;

/// Cluster names become Node names, namespace names, cgroup names and part of socket paths: a
/// DNS label of at most [`MAX_NAME_LEN`] bytes.
pub fn check_name(name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Name(name.to_owned()))
    }
}

/// The default cluster name of a variant (as `e2e/run.sh` names kind clusters).
pub fn default_name(variant: Variant) -> String {
    format!("portway-e2e-{}", variant.name())
}

/// The plans the unit tests of the cluster modules use: cluster `t`, state under `/state`.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn spec(variant: Variant) -> ClusterSpec {
        let config = variant.config().unwrap_or_else(|e| panic!("{e}"));
        ClusterSpec::new("t", variant, &config, Path::new("/state"))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::spec;
    use super::*;

    #[test]
    fn nodes_are_named_labelled_and_addressed_like_kind() {
        let s = spec(Variant::Ipv4);
        let names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["t-control-plane", "t-worker", "t-worker2"]);
        let cp = s.control_plane();
        assert!(cp.admin_labels.contains_key(CONTROL_PLANE_LABEL));
        assert_eq!(cp.ips, vec!["10.111.0.2".parse::<IpAddr>().expect("ip")]);
        assert_eq!(
            s.nodes[1]
                .kubelet_labels
                .get(crate::kind::ZONE_LABEL)
                .map(String::as_str),
            Some("a")
        );
        assert_eq!(
            s.nodes[2]
                .kubelet_labels
                .get(crate::kind::ZONE_LABEL)
                .map(String::as_str),
            Some("b")
        );
        assert!(s.nodes[1].admin_labels.is_empty());
        assert_eq!(s.nodes[2].netns(), "pwc-t-worker2");
        assert_eq!(s.nodes[2].host_veth(), "pwc0-n2");
        assert_eq!(s.nodes[2].cgroup_root(), "/pwc-t-worker2");
        assert_eq!(s.api_server_url(), "https://10.111.0.2:6443");
        assert_eq!(s.bridge_addrs(), vec!["10.111.0.1/24".to_owned()]);
        assert_eq!(
            s.admin_kubeconfig(),
            Path::new("/state/t/kubeconfig/admin.kubeconfig")
        );
    }

    #[test]
    fn service_addresses_and_families_follow_the_variant() {
        let v4 = spec(Variant::Ipv4);
        assert_eq!(
            v4.kubernetes_service_ips(),
            vec!["10.96.0.1".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(v4.dns_service_ip(), "10.96.0.10".parse().ok());
        assert_eq!(v4.service_cidr_arg(), "10.96.0.0/16");

        let v6 = spec(Variant::Ipv6);
        assert!(v6.has_v6() && !v6.has_v4());
        assert_eq!(v6.api_server_url(), "https://[fd00:10:111::2]:6443");
        assert_eq!(v6.dns_service_ip(), "fd00:10:96::a".parse().ok());

        let dual = spec(Variant::DualStack);
        assert_eq!(dual.nodes[1].node_ip_arg(), "10.111.0.3,fd00:10:111::3");
        assert_eq!(dual.kubernetes_service_ips().len(), 2);
        assert_eq!(dual.pod_cidr_arg(), "10.244.0.0/16,fd00:10:244::/56");
        assert_eq!(
            dual.bridge_addrs(),
            vec!["10.111.0.1/24".to_owned(), "fd00:10:111::1/64".to_owned()]
        );
    }

    #[test]
    fn the_node_network_is_not_podmans() {
        let podman: IpNet = "10.88.0.0/16".parse().expect("net");
        for variant in Variant::ALL {
            for ip in spec(variant).nodes.iter().flat_map(|n| n.ips.clone()) {
                assert!(!podman.contains(&ip), "{ip}");
            }
        }
    }

    #[test]
    fn socket_paths_fit_for_the_longest_name() {
        let config = Variant::DualStack
            .config()
            .unwrap_or_else(|e| panic!("{e}"));
        let name = "x".repeat(MAX_NAME_LEN);
        let s = ClusterSpec::new(&name, Variant::DualStack, &config, Path::new(STATE_ROOT))
            .unwrap_or_else(|e| panic!("{e}"));
        for node in &s.nodes {
            let ttrpc = format!("{}.ttrpc", s.containerd_socket(node).display());
            let kubelet = s.node_dir(node).join("kubelet/pod-resources/kubelet.sock");
            // containerd refuses paths over 104 bytes; sun_path holds 107 and a NUL.
            assert!(ttrpc.len() <= 104, "{ttrpc}");
            assert!(kubelet.as_os_str().len() <= 104, "{}", kubelet.display());
        }
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in [
            "",
            "Upper",
            "a_b",
            "-a",
            "a-",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("portway-e2e-dual-stack").is_ok());
        assert_eq!(default_name(Variant::DualStack), "portway-e2e-dual-stack");
        assert_eq!(nth_address(&"10.0.0.0/30".parse().expect("net"), 4), None);
    }
}
