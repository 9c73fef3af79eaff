//! What runs on each node and how: command lines of etcd, kube-apiserver, kube-scheduler,
//! containerd, kubelet and kube-proxy (harness processes in the node's network namespace), the
//! kube-controller-manager static pod, and the cluster DNS stand-in's objects. Pure.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::pki;
use super::render::kubeconfig_path;
use super::spec::{API_PORT, CLUSTER_DOMAIN, ClusterSpec, NodeSpec};

/// The upstream binaries the harness needs from `PORTWAY_K8S_BIN`.
pub const K8S_BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
];

/// A process the harness starts and stops: its name (pid and log file), program, arguments,
/// and the node whose namespace and cgroup it runs in (`None`: the root namespace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub node: Option<String>,
}

impl Component {
    fn on(node: &NodeSpec, name: &str, program: PathBuf, args: Vec<String>) -> Self {
        Self {
            name: format!("{}.{name}", node.name),
            program,
            args,
            node: Some(node.name.clone()),
        }
    }
}

fn arg(k: &str, v: impl std::fmt::Display) -> String {
    format!("--{k}={v}")
}

fn p(path: PathBuf) -> String {
    path.display().to_string()
}

/// etcd on the control plane's loopback (plain HTTP inside its namespace; data is throwaway).
pub fn etcd(spec: &ClusterSpec, bin: &Path) -> Component {
    let cp = spec.control_plane();
    Component::on(
        cp,
        "etcd",
        bin.join("etcd"),
        vec![
            arg("name", "portway-cluster"),
            arg("data-dir", spec.etcd_dir().display()),
            arg("listen-client-urls", "http://127.0.0.1:2379"),
            arg("advertise-client-urls", "http://127.0.0.1:2379"),
            arg("listen-peer-urls", "http://127.0.0.1:2380"),
            arg("initial-advertise-peer-urls", "http://127.0.0.1:2380"),
            arg("initial-cluster", "portway-cluster=http://127.0.0.1:2380"),
            arg("listen-metrics-urls", "http://127.0.0.1:2381"),
            "--unsafe-no-fsync".to_owned(),
            arg("log-level", "warn"),
        ],
    )
}

/// kube-apiserver on the control plane's node address(es).
pub fn apiserver(spec: &ClusterSpec, bin: &Path) -> Component {
    let cp = spec.control_plane();
    let pki = spec.pki_dir();
    Component::on(
        cp,
        "kube-apiserver",
        bin.join("kube-apiserver"),
        vec![
            arg("etcd-servers", "http://127.0.0.1:2379"),
            arg("advertise-address", cp.ips[0]),
            arg("bind-address", if spec.has_v6() { "::" } else { "0.0.0.0" }),
            arg("secure-port", API_PORT),
            arg("tls-cert-file", p(pki.join(pki::cert_file(pki::APISERVER)))),
            arg(
                "tls-private-key-file",
                p(pki.join(pki::key_file(pki::APISERVER))),
            ),
            arg("client-ca-file", p(pki.join(pki::CA_CERT))),
            arg(
                "kubelet-client-certificate",
                p(pki.join(pki::cert_file(pki::APISERVER_KUBELET_CLIENT))),
            ),
            arg(
                "kubelet-client-key",
                p(pki.join(pki::key_file(pki::APISERVER_KUBELET_CLIENT))),
            ),
            arg("kubelet-preferred-address-types", "InternalIP"),
            arg("kubelet-certificate-authority", p(pki.join(pki::CA_CERT))),
            arg("service-account-key-file", p(pki.join(pki::SA_PUB))),
            arg("service-account-signing-key-file", p(pki.join(pki::SA_KEY))),
            arg(
                "service-account-issuer",
                format!("https://kubernetes.default.svc.{CLUSTER_DOMAIN}"),
            ),
            arg("service-cluster-ip-range", spec.service_cidr_arg()),
            arg("authorization-mode", "Node,RBAC"),
            arg("enable-admission-plugins", "NodeRestriction"),
            arg("allow-privileged", "true"),
            arg("profiling", "false"),
            arg("v", 1),
        ],
    )
}

/// kube-scheduler on the control plane (a harness process; only the controller manager is a
/// static pod, because the suite reads its flags from its pod).
pub fn scheduler(spec: &ClusterSpec, bin: &Path) -> Component {
    let kc = p(kubeconfig_path(spec, pki::SCHEDULER));
    Component::on(
        spec.control_plane(),
        "kube-scheduler",
        bin.join("kube-scheduler"),
        vec![
            arg("kubeconfig", &kc),
            arg("authentication-kubeconfig", &kc),
            arg("authorization-kubeconfig", &kc),
            arg("leader-elect", "false"),
            arg("bind-address", "127.0.0.1"),
            arg("v", 1),
        ],
    )
}

/// A node's containerd.
pub fn containerd(spec: &ClusterSpec, node: &NodeSpec) -> Component {
    let config = spec.node_dir(node).join("containerd/config.toml");
    Component::on(
        node,
        "containerd",
        PathBuf::from("containerd"),
        vec![arg("config", p(config))],
    )
}

/// A node's kubelet.
pub fn kubelet(spec: &ClusterSpec, node: &NodeSpec, bin: &Path) -> Component {
    let dir = spec.node_dir(node);
    let mut args = vec![
        arg("config", p(dir.join("kubelet-config.yaml"))),
        arg(
            "kubeconfig",
            p(kubeconfig_path(spec, &pki::kubelet_stem(&node.name))),
        ),
        arg("root-dir", p(dir.join("kubelet"))),
        arg("hostname-override", &node.name),
        arg("node-ip", node.node_ip_arg()),
        arg("v", 1),
    ];
    if !node.kubelet_labels.is_empty() {
        let labels: Vec<String> = node
            .kubelet_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        args.push(arg("node-labels", labels.join(",")));
    }
    Component::on(node, "kubelet", bin.join("kubelet"), args)
}

/// A node's kube-proxy.
pub fn kube_proxy(spec: &ClusterSpec, node: &NodeSpec, bin: &Path) -> Component {
    let config = spec.node_dir(node).join("kube-proxy-config.yaml");
    Component::on(
        node,
        "kube-proxy",
        bin.join("kube-proxy"),
        vec![arg("config", p(config)), arg("v", 1)],
    )
}

/// The harness's own watcher (`portway-cluster netd`), in the root namespace.
pub fn netd(spec: &ClusterSpec, exe: &Path) -> Component {
    Component {
        name: "netd".to_owned(),
        program: exe.to_owned(),
        args: vec!["netd".to_owned(), "--name".to_owned(), spec.name.clone()],
        node: None,
    }
}

/// The registry mirror (`docker-registry serve`), in the root namespace on the bridge's address.
pub fn registry(spec: &ClusterSpec) -> Component {
    Component {
        name: "registry".to_owned(),
        program: PathBuf::from(super::registry::PROGRAM),
        args: vec!["serve".to_owned(), p(super::registry::config_path(spec))],
        node: None,
    }
}

/// kube-controller-manager's flags: it leaves pod CIDRs to Portway's ClusterCIDR.
pub fn controller_manager_command(spec: &ClusterSpec) -> Vec<String> {
    let pki = spec.pki_dir();
    let kc = p(kubeconfig_path(spec, pki::CONTROLLER_MANAGER));
    vec![
        "/usr/local/bin/kube-controller-manager".to_owned(),
        "--allocate-node-cidrs=false".to_owned(),
        arg("kubeconfig", &kc),
        arg("authentication-kubeconfig", &kc),
        arg("authorization-kubeconfig", &kc),
        arg("service-cluster-ip-range", spec.service_cidr_arg()),
        arg("service-account-private-key-file", p(pki.join(pki::SA_KEY))),
        arg("root-ca-file", p(pki.join(pki::CA_CERT))),
        arg("cluster-signing-cert-file", p(pki.join(pki::CA_CERT))),
        arg("cluster-signing-key-file", p(pki.join(pki::CA_KEY))),
        "--use-service-account-credentials=true".to_owned(),
        "--controllers=*,bootstrapsigner,tokencleaner".to_owned(),
        "--leader-elect=false".to_owned(),
        "--bind-address=127.0.0.1".to_owned(),
        "--v=1".to_owned(),
    ]
}

/// The static pod of kube-controller-manager (on the control plane, host network), as kubeadm
/// writes one: kind's clusters have it, and the suite's `cidrs` test reads its flags from it.
pub fn controller_manager_pod(spec: &ClusterSpec, image: &str) -> Value {
    let dirs = [
        ("pki", spec.pki_dir()),
        ("kubeconfig", spec.kubeconfig_dir()),
    ];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "kube-controller-manager",
            "namespace": "kube-system",
            "labels": {"component": "kube-controller-manager", "tier": "control-plane"},
        },
        "spec": {
            "hostNetwork": true,
            "priorityClassName": "system-node-critical",
            "containers": [{
                "name": "kube-controller-manager",
                "image": image,
                "imagePullPolicy": "Never",
                "command": controller_manager_command(spec),
                "volumeMounts": dirs.iter().map(|(n, d)| json!({"name": n, "mountPath": d, "readOnly": true})).collect::<Vec<_>>(),
            }],
            "volumes": dirs.iter().map(|(n, d)| json!({"name": n, "hostPath": {"path": d, "type": "Directory"}})).collect::<Vec<_>>(),
        },
    })
}

/// The cluster DNS stand-in: a `coredns` Deployment (the name kind and `e2e/run.sh` know) behind
/// the `kube-dns` Service at the cluster DNS address, answering from the record file that netd
/// writes into the state folder (a hostPath: every node shares this machine's file system).
pub fn dns_objects(spec: &ClusterSpec, image: &str) -> Vec<Value> {
    let labels = json!({"k8s-app": "kube-dns"});
    let families: Vec<&str> = spec
        .service_subnets
        .iter()
        .map(|s| if s.addr().is_ipv4() { "IPv4" } else { "IPv6" })
        .collect();
    vec![
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "terminationGracePeriodSeconds": 1,
                        "tolerations": [
                            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"},
                            {"key": "CriticalAddonsOnly", "operator": "Exists"},
                        ],
                        "containers": [{
                            "name": "coredns",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "args": ["--records=/records/hosts", format!("--domain={CLUSTER_DOMAIN}"), "--port=53"],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            ],
                            "readinessProbe": {"tcpSocket": {"port": 53}, "periodSeconds": 2},
                            "volumeMounts": [{"name": "records", "mountPath": "/records", "readOnly": true}],
                        }],
                        "volumes": [{"name": "records", "hostPath": {"path": spec.dns_dir(), "type": "Directory"}}],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": spec.dns_service_ip().map(|ip| ip.to_string()),
                "ipFamilies": [families.first().copied().unwrap_or("IPv4")],
                "ipFamilyPolicy": "SingleStack",
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::tests_support::spec;
    use crate::kind::Variant;

    #[test]
    fn control_plane_flags() {
        let s = spec(Variant::DualStack);
        let bin = Path::new("/k8s");
        let api = apiserver(&s, bin);
        assert_eq!(api.node.as_deref(), Some("t-control-plane"));
        assert_eq!(api.name, "t-control-plane.kube-apiserver");
        for want in [
            "--service-cluster-ip-range=10.96.0.0/16,fd00:10:96::/112",
            "--advertise-address=10.111.0.2",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--bind-address=::",
        ] {
            assert!(
                api.args.iter().any(|a| a == want),
                "{want} not in {:?}",
                api.args
            );
        }
        let kcm = controller_manager_command(&s);
        assert!(
            kcm.iter().any(|a| a == "--allocate-node-cidrs=false"),
            "{kcm:?}"
        );
        let pod = controller_manager_pod(&s, "img");
        assert_eq!(
            pod["metadata"]["labels"]["component"],
            "kube-controller-manager"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["command"],
            json!(kcm),
            "the suite reads command"
        );
        assert_eq!(pod["spec"]["hostNetwork"], true);
    }

    #[test]
    fn node_processes() {
        let s = spec(Variant::Ipv4);
        let w = &s.nodes[1];
        let k = kubelet(&s, w, Path::new("/k8s"));
        assert_eq!(k.program, Path::new("/k8s/kubelet"));
        assert!(
            k.args.contains(&"--node-ip=10.111.0.3".to_owned()),
            "{:?}",
            k.args
        );
        assert!(
            k.args
                .contains(&"--node-labels=e2e.portway.dev/zone=a".to_owned()),
            "{:?}",
            k.args
        );
        assert!(
            k.args
                .contains(&"--root-dir=/state/t/n1/kubelet".to_owned())
        );
        let cp = kubelet(&s, s.control_plane(), Path::new("/k8s"));
        assert!(
            !cp.args.iter().any(|a| a.starts_with("--node-labels")),
            "control-plane labels come from the admin"
        );
        assert_eq!(
            containerd(&s, w).args,
            vec!["--config=/state/t/n1/containerd/config.toml".to_owned()]
        );
        assert_eq!(netd(&s, Path::new("/x/portway-cluster")).node, None);
        let r = registry(&s);
        assert_eq!(r.node, None, "the mirror runs in the root namespace");
        assert_eq!(r.program, Path::new("docker-registry"));
        assert_eq!(r.args, ["serve", "/state/t/registry/config.yml"]);
    }

    #[test]
    fn dns_sits_at_the_cluster_dns_address() {
        let s = spec(Variant::Ipv6);
        let objs = dns_objects(&s, "img");
        assert_eq!(objs[0]["metadata"]["name"], "coredns");
        assert_eq!(objs[1]["spec"]["clusterIP"], "fd00:10:96::a");
        assert_eq!(objs[1]["spec"]["ipFamilies"], json!(["IPv6"]));
        assert_eq!(
            objs[0]["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"],
            "/state/t/dns"
        );
    }
}
