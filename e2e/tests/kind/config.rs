//! The kind cluster configurations of `e2e/kind/` (types in [`portway_e2e::kind`]), checked
//! offline: one control plane and two or three workers with the zone labels the tests' pools
//! select by; the variant's IP family, pod and service subnets; kube-controller-manager patched
//! to `--allocate-node-cidrs=false` by a version-less kubeadm patch (kind applies it to the
//! v1beta3 and the v1beta4 kubeadm config alike).

use ipnet::IpNet;
pub use portway_e2e::kind::*;
use serde_json::Value;

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
