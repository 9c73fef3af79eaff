//! Configuration files of the local cluster, rendered from its plan. Pure.
//!
//! JSON is written wherever the consumer reads YAML (kubeconfigs, KubeletConfiguration,
//! KubeProxyConfiguration, static pods): JSON is YAML, and `serde_json` renders it exactly.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::pki;
use super::registry::Mirror;
use super::spec::{CLUSTER_DOMAIN, CONTROL_PLANE_TAINT, ClusterSpec, NodeSpec};

/// The CNI network's bridge inside each node's namespace.
pub const CNI_BRIDGE: &str = "cni0";
/// The CNI config file netd writes when a Node gets its pod CIDRs.
pub const CNI_CONFLIST: &str = "10-portway-cluster.conflist";
/// Where Debian's containernetworking-plugins install bridge, host-local, portmap, loopback.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The containerd namespace of the CRI plugin (where images must be imported).
pub const CONTAINERD_NAMESPACE: &str = "k8s.io";

/// A kubeconfig for `stem` (see [`pki`]) with files referenced by path.
pub fn kubeconfig(spec: &ClusterSpec, stem: &str) -> Value {
    let pki = spec.pki_dir();
    let path = |name: String| pki.join(name).display().to_string();
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": spec.name, "cluster": {
            "server": spec.api_server_url(),
            "certificate-authority": path(pki::CA_CERT.to_owned()),
        }}],
        "users": [{"name": stem, "user": {
            "client-certificate": path(pki::cert_file(stem)),
            "client-key": path(pki::key_file(stem)),
        }}],
        "contexts": [{"name": spec.name, "context": {"cluster": spec.name, "user": stem}}],
        "current-context": spec.name,
    })
}

/// The kubeconfig file of an identity stem.
pub fn kubeconfig_path(spec: &ClusterSpec, stem: &str) -> std::path::PathBuf {
    spec.kubeconfig_dir().join(format!("{stem}.kubeconfig"))
}

/// A node's KubeletConfiguration: cgroupfs under the node's own cgroup root, its own containerd,
/// client-certificate authentication, relaxed eviction (all nodes share one disk), no image GC.
pub fn kubelet_config(spec: &ClusterSpec, node: &NodeSpec) -> Value {
    let pki = spec.pki_dir();
    let dir = spec.node_dir(node);
    let serving = pki::kubelet_serving_stem(&node.name);
    let taints = if node.is_control_plane() {
        let (key, effect) = CONTROL_PLANE_TAINT
            .split_once(':')
            .unwrap_or((CONTROL_PLANE_TAINT, ""));
        json!([{"key": key, "effect": effect}])
    } else {
        json!([])
    };
    let mut config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": if spec.has_v6() { "::" } else { "0.0.0.0" },
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": pki.join(pki::CA_CERT)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": pki.join(pki::cert_file(&serving)),
        "tlsPrivateKeyFile": pki.join(pki::key_file(&serving)),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root(),
        "cgroupsPerQOS": true,
        "enforceNodeAllocatable": ["pods"],
        "failCgroupV1": false,
        "containerRuntimeEndpoint": format!("unix://{}", spec.containerd_socket(node).display()),
        "podLogsDir": dir.join("pod-logs"),
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": spec.dns_service_ip().map(|ip| vec![ip.to_string()]).unwrap_or_default(),
        // No host resolver for pods: nothing resolves outside the cluster (nothing leaves it).
        "resolvConf": "",
        "failSwapOn": false,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "registerWithTaints": taints,
        "rotateCertificates": false,
        "serializeImagePulls": false,
        "maxPods": 110,
    });
    if node.is_control_plane() {
        config["staticPodPath"] = json!(spec.static_pod_dir(node));
    }
    if !spec.allowed_unsafe_sysctls.is_empty() {
        config["allowedUnsafeSysctls"] = json!(spec.allowed_unsafe_sysctls);
    }
    config
}

/// kube-proxy in iptables mode for one node; it leaves the host-wide conntrack sysctls alone.
pub fn kube_proxy_config(spec: &ClusterSpec, node: &NodeSpec) -> Value {
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "hostnameOverride": node.name,
        "clusterCIDR": spec.pod_cidr_arg(),
        "detectLocalMode": "ClusterCIDR",
        "clientConnection": {"kubeconfig": kubeconfig_path(spec, pki::PROXY)},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": if spec.has_v6() { "[::]:10256" } else { "0.0.0.0:10256" },
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"minSyncPeriod": "1s", "syncPeriod": "30s"},
    })
}

/// A node's containerd (config version 2, containerd 1.6/1.7): every path of its own (root,
/// state, sockets, runc state, pod network namespaces), runc with cgroupfs, the local pause image,
/// CNI config from the node's folder, and the harness's registry mirror for the upstream
/// registries (see [`containerd_mirrors`]).
pub fn containerd_config(
    spec: &ClusterSpec,
    node: &NodeSpec,
    sandbox_image: &str,
    mirrors: &[Mirror],
) -> String {
    let dir = spec.node_dir(node).join("containerd");
    let d = |p: &str| dir.join(p).display().to_string();
    let socket = spec.containerd_socket(node).display().to_string();
    let conf_dir = spec.cni_conf_dir(node).display().to_string();
    format!(
        r#"# portway-cluster: containerd of node {node}
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  netns_mounts_under_state_dir = true
  enable_selinux = false
  # This machine's root lacks CAP_SYS_RESOURCE: a negative oom_score_adj (kubelet asks -998 for
  # sandboxes) cannot be set, so runc would fail; keep scores at containerd's own or above.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
{mirrors}"#,
        node = node.name,
        root = d("root"),
        state = d("state"),
        opt = d("opt"),
        runc = d("runc"),
        mirrors = containerd_mirrors(mirrors),
    )
}

/// containerd 1.6's CRI `registry.mirrors` (the form kind's local-registry recipe patched in
/// before `config_path`): each upstream host pulls from its mirror endpoints, plain HTTP taken
/// from the URL's scheme; containerd falls back to the upstream itself only after them (which
/// fails on the closed node network).
pub fn containerd_mirrors(mirrors: &[Mirror]) -> String {
    const CRI: &str = r#"plugins."io.containerd.grpc.v1.cri""#;
    if mirrors.is_empty() {
        return String::new();
    }
    let mut out = format!("  [{CRI}.registry]\n    [{CRI}.registry.mirrors]\n");
    for m in mirrors {
        out += &format!(
            "      [{CRI}.registry.mirrors.\"{host}\"]\n        endpoint = [\"{endpoint}\"]\n",
            host = m.host,
            endpoint = m.endpoint
        );
    }
    out
}

/// The CNI network's name (also the prefix of libcni's cache entries, removed by `down`).
pub fn cni_network_name(spec: &ClusterSpec) -> String {
    format!("{}-{}", super::spec::PREFIX, spec.name)
}

/// A node's CNI conflist over its pod CIDRs (kindnet's role): a bridge with hairpin mode and
/// host-local addresses from each CIDR, and portmap for hostPort (Portway's Pod dataplane).
/// containerd adds the loopback network itself. No masquerade: other nodes route pod CIDRs.
pub fn cni_conflist(spec: &ClusterSpec, node: &NodeSpec, pod_cidrs: &[IpNet]) -> Value {
    let ranges: Vec<Value> = pod_cidrs
        .iter()
        .map(|c| json!([{"subnet": c.to_string()}]))
        .collect();
    let routes: Vec<Value> = pod_cidrs
        .iter()
        .map(|c| json!({"dst": if c.addr().is_ipv4() { "0.0.0.0/0" } else { "::/0" }}))
        .collect();
    json!({
        "cniVersion": "0.4.0",
        "name": cni_network_name(spec),
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": spec.node_dir(node).join("cni/ipam"),
                    "ranges": ranges,
                    "routes": routes,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// The routes a node needs to the other nodes' pod CIDRs: `(cidr, via)` with `via` the other
/// node's address of the CIDR's family.
pub fn pod_routes<'a>(
    node: &str,
    cidrs_by_node: impl IntoIterator<Item = (&'a str, &'a [IpNet], &'a [IpAddr])>,
) -> Vec<(IpNet, IpAddr)> {
    let mut routes = Vec::new();
    for (other, cidrs, ips) in cidrs_by_node {
        if other == node {
            continue;
        }
        for c in cidrs {
            if let Some(via) = ips.iter().find(|ip| ip.is_ipv4() == c.addr().is_ipv4()) {
                routes.push((*c, *via));
            }
        }
    }
    routes
}

/// The DNS stand-in's record file from Services: `<name>.<namespace>.svc.<domain> <ip>` per
/// cluster IP (headless Services have none and are left out).
pub fn dns_records<'a>(
    services: impl IntoIterator<Item = (&'a str, &'a str, &'a [String])>,
) -> String {
    let mut out = String::from("# portway-cluster netd: the cluster's Services\n");
    for (ns, name, ips) in services {
        for ip in ips.iter().filter(|ip| ip.parse::<IpAddr>().is_ok()) {
            out += &format!("{name}.{ns}.svc.{CLUSTER_DOMAIN} {ip}\n");
        }
    }
    out
}

/// Writes `contents` to `path` atomically (a temp file renamed over it): readers such as
/// containerd's CNI watcher never see half a file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::tests_support::spec;
    use crate::kind::Variant;

    #[test]
    fn kubeconfigs_parse_and_point_at_the_control_plane() {
        let s = spec(Variant::Ipv4);
        let text = kubeconfig(&s, pki::ADMIN).to_string();
        let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap_or_else(|e| panic!("{e}"));
        let cluster = kc.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some("https://10.111.0.2:6443"));
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some("/state/t/pki/ca.crt")
        );
        let user = kc.auth_infos[0].auth_info.as_ref().expect("user");
        assert_eq!(user.client_key.as_deref(), Some("/state/t/pki/admin.key"));
        assert_eq!(
            kubeconfig_path(&s, "kube-proxy"),
            Path::new("/state/t/kubeconfig/kube-proxy.kubeconfig")
        );
    }

    #[test]
    fn kubelets_use_their_own_cgroup_runtime_and_dns() {
        let s = spec(Variant::Ipv4);
        let cp = kubelet_config(&s, s.control_plane());
        assert_eq!(cp["cgroupDriver"], "cgroupfs");
        assert_eq!(cp["cgroupRoot"], "/pwc-t-control-plane");
        assert_eq!(cp["failSwapOn"], false);
        assert_eq!(cp["clusterDNS"], json!(["10.96.0.10"]));
        assert_eq!(cp["staticPodPath"], "/state/t/n0/manifests");
        assert_eq!(
            cp["registerWithTaints"][0]["key"],
            "node-role.kubernetes.io/control-plane"
        );
        assert_eq!(
            cp["containerRuntimeEndpoint"],
            "unix:///state/t/n0/containerd.sock"
        );
        let w = kubelet_config(&s, &s.nodes[1]);
        assert!(w.get("staticPodPath").is_none());
        assert_eq!(w["registerWithTaints"], json!([]));
        assert_eq!(w["address"], "0.0.0.0");
        assert_eq!(
            kubelet_config(&spec(Variant::Ipv6), &s.nodes[1])["address"],
            "::"
        );
    }

    /// The IPv6 variants' kind configs let kubelets allow the forwarding sysctls that IPv6
    /// Pod-dataplane agents need; the harness follows the config like kind does.
    #[test]
    fn kubelets_allow_the_unsafe_sysctls_the_kind_config_allows() {
        for (variant, want) in [
            (Variant::Ipv4, json!(null)),
            (
                Variant::DualStack,
                json!(["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]),
            ),
            (
                Variant::Ipv6,
                json!(["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]),
            ),
        ] {
            let s = spec(variant);
            for node in &s.nodes {
                assert_eq!(
                    kubelet_config(&s, node)["allowedUnsafeSysctls"],
                    want,
                    "{}",
                    variant.name()
                );
            }
        }
    }

    #[test]
    fn kube_proxy_is_iptables_and_leaves_host_sysctls() {
        let s = spec(Variant::DualStack);
        let p = kube_proxy_config(&s, &s.nodes[2]);
        assert_eq!(p["mode"], "iptables");
        assert_eq!(p["hostnameOverride"], "t-worker2");
        assert_eq!(p["clusterCIDR"], "10.244.0.0/16,fd00:10:244::/56");
        assert_eq!(p["conntrack"]["maxPerCore"], 0);
    }

    #[test]
    fn containerd_keeps_to_its_node_folder() {
        let s = spec(Variant::Ipv4);
        let mirrors = crate::cluster::registry::mirrors("10.111.0.1:5001".parse().expect("addr"));
        let c = containerd_config(&s, &s.nodes[1], "localhost/p:1", &mirrors);
        for want in [
            "root = \"/state/t/n1/containerd/root\"",
            "address = \"/state/t/n1/containerd.sock\"",
            "sandbox_image = \"localhost/p:1\"",
            "SystemdCgroup = false",
            "Root = \"/state/t/n1/containerd/runc\"",
            "netns_mounts_under_state_dir = true",
            "restrict_oom_score_adj = true",
            "conf_dir = \"/state/t/n1/cni/net.d\"",
            "snapshotter = \"overlayfs\"",
            "[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n        endpoint = [\"http://10.111.0.1:5001\"]",
        ] {
            assert!(c.contains(want), "{want} missing:\n{c}");
        }
    }

    #[test]
    fn containerd_mirrors_render_as_cri_registry_tables() {
        let mirrors = crate::cluster::registry::mirrors("10.111.0.1:5001".parse().expect("addr"));
        let text = containerd_mirrors(&mirrors);
        assert_eq!(
            text,
            r#"  [plugins."io.containerd.grpc.v1.cri".registry]
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors]
      [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
        endpoint = ["http://10.111.0.1:5001"]
      [plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.k8s.io"]
        endpoint = ["http://10.111.0.1:5001/v2/registry.k8s.io"]
"#
        );
        assert_eq!(containerd_mirrors(&[]), "");
        // The whole file is one TOML document with the mirrors where containerd 1.6 reads them.
        let s = spec(Variant::Ipv6);
        let v6 = crate::cluster::registry::mirrors("[fd00:10:111::1]:5001".parse().expect("addr"));
        let c = containerd_config(&s, &s.nodes[0], "p", &v6);
        let doc: toml_edit::DocumentMut = c.parse().unwrap_or_else(|e| panic!("{e}\n{c}"));
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        let endpoint = |host: &str| {
            cri["registry"]["mirrors"][host]["endpoint"]
                .as_array()
                .and_then(|a| a.get(0))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        assert_eq!(
            endpoint("docker.io").as_deref(),
            Some("http://[fd00:10:111::1]:5001")
        );
        assert_eq!(
            endpoint("registry.k8s.io").as_deref(),
            Some("http://[fd00:10:111::1]:5001/v2/registry.k8s.io")
        );
        assert_eq!(cri["sandbox_image"].as_str(), Some("p"));
        assert_eq!(cri["cni"]["max_conf_num"].as_integer(), Some(1));
    }

    #[test]
    fn cni_follows_the_pod_cidrs() {
        let s = spec(Variant::DualStack);
        let cidrs: Vec<IpNet> = vec![
            "10.244.1.0/24".parse().expect("n"),
            "fd00:10:244:1::/64".parse().expect("n"),
        ];
        let c = cni_conflist(&s, &s.nodes[1], &cidrs);
        let bridge = &c["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["hairpinMode"], true);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(
            bridge["ipam"]["ranges"],
            json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert_eq!(
            bridge["ipam"]["routes"],
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
        assert_eq!(bridge["ipam"]["dataDir"], "/state/t/n1/cni/ipam");
        assert_eq!(
            c["plugins"][1],
            json!({"type": "portmap", "capabilities": {"portMappings": true}})
        );
        assert_eq!(c["name"], "pwc-t");
    }

    #[test]
    fn routes_go_to_other_nodes_by_family() {
        let a: Vec<IpNet> = vec![
            "10.244.0.0/24".parse().expect("n"),
            "fd00:10:244::/64".parse().expect("n"),
        ];
        let b: Vec<IpNet> = vec!["10.244.1.0/24".parse().expect("n")];
        let a_ips: Vec<IpAddr> = vec![
            "10.111.0.2".parse().expect("ip"),
            "fd00:10:111::2".parse().expect("ip"),
        ];
        let b_ips: Vec<IpAddr> = vec!["10.111.0.3".parse().expect("ip")];
        let nodes = [
            ("a", a.as_slice(), a_ips.as_slice()),
            ("b", b.as_slice(), b_ips.as_slice()),
        ];
        let on_b = pod_routes("b", nodes);
        assert_eq!(
            on_b,
            vec![(a[0], a_ips[0]), (a[1], a_ips[1])],
            "b reaches both of a's CIDRs via a's address of that family"
        );
        assert_eq!(pod_routes("a", nodes), vec![(b[0], b_ips[0])]);
    }

    #[test]
    fn dns_records_list_cluster_ips_only() {
        let ips = vec!["10.96.0.1".to_owned(), "fd00:10:96::1".to_owned()];
        let none = vec!["None".to_owned()];
        let text = dns_records([
            ("default", "kubernetes", ips.as_slice()),
            ("x", "headless", none.as_slice()),
        ]);
        assert!(
            text.contains("kubernetes.default.svc.cluster.local 10.96.0.1\n"),
            "{text}"
        );
        assert!(
            text.contains("kubernetes.default.svc.cluster.local fd00:10:96::1\n"),
            "{text}"
        );
        assert!(!text.contains("headless"), "{text}");
    }
}
