//! Helpers of the cluster tests: the connection to the kind cluster (`PORTWAY_E2E_KUBECONFIG`),
//! throwaway namespaces and pools removed even when a test fails, the backend (agnhost
//! `netexec`), LoadBalancer Services, raw HTTP from the test host to node addresses, and the
//! node-side view (`docker exec <node> iptables-save`).
//!
//! Every wait is bounded ([`portway_e2e::wait`]); every test has an overall budget ([`run`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use portway_crds::{LoadBalancerPool, ServiceLoadBalancer, names};
use portway_e2e::{report, wait};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Variant, ZONE_LABEL};

/// A failed step, with what was seen.
pub type R<T> = Result<T, String>;

/// How long a Service may take from creation to answering on every node (agent image already on
/// the nodes, backend ready).
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long clean-up (DaemonSet, agent pods, rules) may take; agents have 30 s of grace.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of one `helm upgrade --wait`.
pub const HELM_TIMEOUT: &str = "5m";
/// Overall budget of one test.
pub const TEST_BUDGET: Duration = Duration::from_secs(600);
/// The backend's HTTP port (agnhost netexec).
pub const BACKEND_PORT: i32 = 8080;

/// The kind cluster under test.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub variant: Variant,
    /// Where the chart is installed (the operator, the agent DaemonSets).
    pub namespace: String,
    pub backend_image: String,
}

impl Cluster {
    /// Connects to the cluster named by `PORTWAY_E2E_KUBECONFIG`, or prints why the test skips.
    /// A bare `KUBECONFIG` is not enough: these tests create pools and `helm uninstall` Portway,
    /// so they run only against a cluster named for them (e2e/run.sh does).
    pub async fn connect_or_skip(test: &str) -> Option<Cluster> {
        let Some(path) = std::env::var_os("PORTWAY_E2E_KUBECONFIG") else {
            let why = if std::env::var_os("KUBECONFIG").is_some() {
                "PORTWAY_E2E_KUBECONFIG is not set (KUBECONFIG alone does not opt a cluster in: the suite creates pools and uninstalls Portway); run e2e/run.sh"
            } else {
                "PORTWAY_E2E_KUBECONFIG is not set; run e2e/run.sh (needs Docker and kind)"
            };
            report::skip(test, why);
            return None;
        };
        let kubeconfig = PathBuf::from(path);
        let kc = Kubeconfig::read_from(&kubeconfig)
            .unwrap_or_else(|e| panic!("{}: {e}", kubeconfig.display()));
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", kubeconfig.display()));
        let client = Client::try_from(config).expect("client");
        let variant = match std::env::var("PORTWAY_E2E_VARIANT") {
            Ok(v) => Variant::from_name(&v)
                .unwrap_or_else(|| panic!("PORTWAY_E2E_VARIANT={v} is not a variant")),
            Err(_) => detect_variant(&client).await,
        };
        Some(Cluster {
            client,
            kubeconfig,
            variant,
            namespace: std::env::var("PORTWAY_E2E_NAMESPACE")
                .unwrap_or_else(|_| "portway-system".to_owned()),
            backend_image: std::env::var("PORTWAY_E2E_BACKEND_IMAGE")
                .unwrap_or_else(|_| "registry.k8s.io/e2e-test-images/agnhost:2.53".to_owned()),
        })
    }

    pub fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn all<K>(&self) -> Api<K>
    where
        K: kube::Resource,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::all(self.client.clone())
    }

    /// The Service IP families the variant gives (`ipFamilies` order).
    pub fn families(&self) -> Vec<Family> {
        let mut f = Vec::new();
        if self.variant.has_v4() {
            f.push(Family::V4);
        }
        if self.variant.has_v6() {
            f.push(Family::V6);
        }
        f
    }

    /// Workers (nodes without the control-plane role), by name.
    pub async fn workers(&self) -> R<Vec<Node>> {
        let nodes = self
            .all::<Node>()
            .list(&ListParams::default().labels("!node-role.kubernetes.io/control-plane"))
            .await
            .map_err(|e| format!("list workers: {e}"))?;
        let mut nodes = nodes.items;
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        if nodes.len() < 2 {
            return Err(format!("{} workers; the suite needs two", nodes.len()));
        }
        Ok(nodes)
    }

    /// The worker of zone `zone` (`e2e.portway.dev/zone`).
    pub async fn zone_worker(&self, zone: &str) -> R<Node> {
        self.workers()
            .await?
            .into_iter()
            .find(|n| label(n, ZONE_LABEL) == Some(zone))
            .ok_or_else(|| format!("no worker labelled {ZONE_LABEL}={zone}"))
    }

    /// Runs a shell script in a node's container (`docker exec`; kind's nodes are containers named
    /// like their Node objects).
    pub fn node_exec(&self, node: &str, script: &str) -> R<String> {
        let out = Command::new(node_exec_program())
            .args(["exec", node, "sh", "-c", script])
            .output()
            .map_err(|e| format!("docker exec {node}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "docker exec {node} sh -c {script:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl <args>` against the cluster under test: its stdout, or what went wrong. Async, so
    /// a request loop on the same runtime keeps going while kubectl waits (a drain, a rollout).
    pub async fn kubectl(&self, args: &[&str]) -> R<String> {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        let out = cmd.output().await;
        command_output("kubectl", args, out)
    }

    /// [`Cluster::kubectl`] for `Drop` guards, where nothing else runs any more.
    pub fn kubectl_blocking(&self, args: &[&str]) -> R<String> {
        let out = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output();
        command_output("kubectl", args, out)
    }

    /// `helm <args>` (`$PORTWAY_E2E_HELM`, else `helm` on PATH) against the cluster under test.
    pub async fn helm(&self, args: &[&str]) -> R<String> {
        let helm = helm_program();
        let mut cmd = tokio::process::Command::new(&helm);
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        let out = cmd.output().await;
        command_output(&helm, args, out)
    }

    /// [`Cluster::helm`] for `Drop` guards.
    pub fn helm_blocking(&self, args: &[&str]) -> R<String> {
        let helm = helm_program();
        let out = Command::new(&helm)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output();
        command_output(&helm, args, out)
    }

    /// `helm upgrade --reuse-values --wait` of the release under test with the chart of this
    /// checkout and `sets` (e.g. `["--set-string", "image.tag=x"]`).
    pub async fn helm_upgrade(&self, sets: &[&str]) -> R<()> {
        let args = self.helm_upgrade_args(sets);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.helm(&refs).await.map(|_| ())
    }

    /// [`Cluster::helm_upgrade`] for `Drop` guards.
    pub fn helm_upgrade_blocking(&self, sets: &[&str]) -> R<()> {
        let args = self.helm_upgrade_args(sets);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.helm_blocking(&refs).map(|_| ())
    }

    fn helm_upgrade_args(&self, sets: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "upgrade".into(),
            self.release(),
            self.chart(),
            "--namespace".into(),
            self.namespace.clone(),
            "--reuse-values".into(),
            "--wait".into(),
            "--timeout".into(),
            HELM_TIMEOUT.into(),
        ];
        args.extend(sets.iter().map(|s| (*s).to_owned()));
        args
    }

    /// The chart in this checkout, for `helm upgrade`.
    pub fn chart(&self) -> String {
        portway_e2e::envtest::workspace_root()
            .join("charts/portway")
            .to_string_lossy()
            .into_owned()
    }

    /// The Helm release of Portway under test (`$PORTWAY_E2E_RELEASE`, default `portway`).
    pub fn release(&self) -> String {
        std::env::var("PORTWAY_E2E_RELEASE").unwrap_or_else(|_| "portway".to_owned())
    }

    /// A second tag of both Portway images, loaded into the nodes beside the installed one, for
    /// upgrade tests (`$PORTWAY_E2E_NEXT_IMAGE_TAG`; `e2e/run.sh` loads `e2e-next`).
    pub fn next_image_tag(&self) -> R<String> {
        std::env::var("PORTWAY_E2E_NEXT_IMAGE_TAG").map_err(|_| {
            "PORTWAY_E2E_NEXT_IMAGE_TAG is not set: e2e/run.sh loads a second image tag for upgrade tests".to_owned()
        })
    }

    /// Stops or starts a node's kubelet: `$PORTWAY_E2E_NODE_CTL kubelet stop|start <node>` (the
    /// local harness sets it to its `portway-cluster`), else `systemctl` in the node's container
    /// (kind's nodes run systemd), through the node-exec program.
    pub async fn kubelet(&self, node: &str, action: KubeletAction) -> R<()> {
        let (program, args) = kubelet_command(node, action);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = tokio::process::Command::new(&program)
            .args(&refs)
            .output()
            .await;
        command_output(&program, &refs, out).map(|_| ())
    }

    /// [`Cluster::kubelet`] for `Drop` guards.
    fn kubelet_blocking(&self, node: &str, action: KubeletAction) -> R<()> {
        let (program, args) = kubelet_command(node, action);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = Command::new(&program).args(&refs).output();
        command_output(&program, &refs, out).map(|_| ())
    }

    /// Every iptables rule and chain declaration in a node's network namespace, of both families
    /// and both iptables variants (the agent picks the one the node uses), with counters.
    pub fn node_rules(&self, node: &str) -> R<String> {
        self.node_exec(
            node,
            "for s in iptables-legacy-save iptables-nft-save ip6tables-legacy-save ip6tables-nft-save; do \
               if command -v $s >/dev/null 2>&1; then $s -c 2>/dev/null || true; fi; \
             done",
        )
    }

    /// Lines of Portway's chains on a node: all of them, or those of one Service's agent.
    pub fn portway_lines(&self, node: &str, service: Option<(&str, &str)>) -> R<Vec<String>> {
        let rules = self.node_rules(node)?;
        let needle = match service {
            Some((ns, name)) => chain_prefix(ns, name),
            None => "PORTWAY-".to_owned(),
        };
        Ok(rules
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_owned)
            .collect())
    }

    /// The agent pods of a Service (in the operator's namespace, by the DaemonSet's labels).
    pub async fn agent_pods(&self, ns: &str, name: &str) -> R<Vec<Pod>> {
        let selector = format!(
            "{}={},{}={}",
            names::LABEL_SERVICE_NAMESPACE,
            ns,
            names::LABEL_SERVICE_NAME,
            name
        );
        self.api::<Pod>(&self.namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .map_err(|e| format!("list agent pods: {e}"))
    }

    /// The agent DaemonSets of a Service (there must be at most one).
    pub async fn agent_daemonsets(&self, ns: &str, name: &str) -> R<Vec<DaemonSet>> {
        let selector = format!(
            "{}={},{}={}",
            names::LABEL_SERVICE_NAMESPACE,
            ns,
            names::LABEL_SERVICE_NAME,
            name
        );
        self.api::<DaemonSet>(&self.namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .map_err(|e| format!("list agent DaemonSets: {e}"))
    }

    /// Nodes that run a ready agent pod of the Service.
    pub async fn ready_agent_nodes(&self, ns: &str, name: &str) -> R<BTreeSet<String>> {
        Ok(self
            .agent_pods(ns, name)
            .await?
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect())
    }

    /// Nodes that run any agent pod of the Service (terminating ones included).
    pub async fn agent_nodes(&self, ns: &str, name: &str) -> R<BTreeSet<String>> {
        Ok(self
            .agent_pods(ns, name)
            .await?
            .iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect())
    }

    /// What the cluster says about a Service, for failure messages.
    pub async fn describe(&self, ns: &str, name: &str) -> String {
        let mut out = String::new();
        if let Ok(Some(svc)) = self.api::<Service>(ns).get_opt(name).await {
            out += &format!(
                "Service {ns}/{name}: finalizers {:?}, ingress {}\n",
                svc.metadata.finalizers,
                serde_json::to_string(&svc.status).unwrap_or_default()
            );
        }
        match self.api::<ServiceLoadBalancer>(ns).get_opt(name).await {
            Ok(Some(slb)) => {
                out += &format!(
                    "ServiceLoadBalancer: {}\n",
                    serde_json::to_string(&slb.status).unwrap_or_default()
                )
            }
            Ok(None) => out += "ServiceLoadBalancer: none\n",
            Err(e) => out += &format!("ServiceLoadBalancer: {e}\n"),
        }
        if let Ok(pods) = self.agent_pods(ns, name).await {
            for p in pods {
                out += &format!(
                    "agent pod {} on {:?}: phase {:?}, ready {}\n",
                    p.metadata.name.as_deref().unwrap_or_default(),
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    pod_ready(&p)
                );
            }
        }
        out
    }
}

async fn detect_variant(client: &Client) -> Variant {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    let ips: Vec<IpAddr> = list.items.iter().flat_map(internal_ips).collect();
    match (
        ips.iter().any(IpAddr::is_ipv4),
        ips.iter().any(IpAddr::is_ipv6),
    ) {
        (true, true) => Variant::DualStack,
        (false, true) => Variant::Ipv6,
        _ => Variant::Ipv4,
    }
}

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

pub fn label<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

pub fn name_of(node: &Node) -> String {
    node.metadata.name.clone().unwrap_or_default()
}

/// A node's InternalIPs (kind nodes have no ExternalIP).
pub fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The addresses Portway should publish for `nodes` and `families` (InternalIP per family).
pub fn expected_ingress(nodes: &[Node], families: &[Family]) -> BTreeSet<IpAddr> {
    nodes
        .iter()
        .flat_map(internal_ips)
        .filter(|ip| families.contains(&Family::of(ip)))
        .collect()
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The chain-name prefix of one Service's agent (`PORTWAY-<id>-`), as the agent computes it.
pub fn chain_prefix(ns: &str, name: &str) -> String {
    portway_node_agent::dataplane::iptables::render::ChainNames::new(
        portway_node_agent::dataplane::iptables::render::DEFAULT_PREFIX,
        &format!("{ns}/{name}"),
    )
    .owned_prefix()
}

/// Packets DNATed for one Service agent's TCP host port on a node, as `iptables-save -c` prints
/// its rules (`[packets:bytes] -A ...`). The agent DNATs a port with one target right in its
/// entry chain (`-A PORTWAY-<id>-DNAT ... -p tcp ... --dport <port> ... -j DNAT`) and a port with
/// several in a port chain (`-A PORTWAY-<id>-T<port> ... -j DNAT`); both count. Only Portway's
/// own DNAT rules count, not the jumps into its chains.
pub fn dnat_packets(lines: &[String], ns: &str, name: &str, port: i32) -> u64 {
    let prefix = chain_prefix(ns, name);
    let entry = format!("-A {prefix}DNAT ");
    let port_chain = format!("-A {prefix}T{port} ");
    let dport = format!("--dport {port} ");
    let rules: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("-j DNAT"))
        .filter(|l| {
            l.contains(&port_chain)
                || (l.contains(&entry) && l.contains("-p tcp ") && l.contains(&dport))
        })
        .cloned()
        .collect();
    packets(&rules)
}

/// Which path carried the TCP traffic to a node's published `addresses` on `port`, from the
/// node's `iptables-save -c` lines: (packets on kube-proxy's "loadbalancer IP" rules for them,
/// packets on the CNI portmap plugin's DNAT to a pod's host port). With `ipMode: VIP` kube-proxy
/// (iptables mode) answers for the node's address itself, and its `PREROUTING` jump comes before
/// the CNI's, so a `Pod`-dataplane agent's host port may see nothing (docs/node-agent.md).
pub fn node_port_paths(lines: &[String], addresses: &[IpAddr], port: i32) -> (u64, u64) {
    let dport = format!("--dport {port} ");
    let to_address = |l: &str| {
        addresses.iter().any(|ip| {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            l.contains(&format!("-d {ip}/{bits} "))
        })
    };
    let select = |keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains("-p tcp ") && l.contains(&dport) && keep(l))
            .cloned()
            .collect()
    };
    let proxy = select(&|l| {
        l.contains("-A KUBE-SERVICES ") && l.contains("loadbalancer IP") && to_address(l)
    });
    let host_port = select(&|l| l.contains("-A CNI-DN-") && l.contains("-j DNAT "));
    (packets(&proxy), packets(&host_port))
}

/// Packets counted by `iptables-save -c` on `lines` (`[packets:bytes] -A ...`).
pub fn packets(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix('[')?;
            let (packets, _) = rest.split_once(':')?;
            packets.parse::<u64>().ok()
        })
        .sum()
}

/// A condition of a list by type.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The program and arguments that stop or start a node's kubelet (see [`Cluster::kubelet`]).
fn kubelet_command(node: &str, action: KubeletAction) -> (String, Vec<String>) {
    let verb = match action {
        KubeletAction::Stop => "stop",
        KubeletAction::Start => "start",
    };
    match std::env::var("PORTWAY_E2E_NODE_CTL") {
        Ok(ctl) => (ctl, ["kubelet", verb, node].map(str::to_owned).to_vec()),
        Err(_) => (
            node_exec_program(),
            ["exec", node, "systemctl", verb, "kubelet"]
                .map(str::to_owned)
                .to_vec(),
        ),
    }
}

/// `$PORTWAY_E2E_NODE_EXEC` (called as `<program> exec <node> <command...>`), else `docker`.
fn node_exec_program() -> String {
    std::env::var("PORTWAY_E2E_NODE_EXEC").unwrap_or_else(|_| "docker".to_owned())
}

/// `$PORTWAY_E2E_HELM`, else `helm` on PATH.
fn helm_program() -> String {
    std::env::var("PORTWAY_E2E_HELM").unwrap_or_else(|_| "helm".to_owned())
}

/// A finished command's stdout, or what went wrong (the command, its output).
fn command_output(
    program: &str,
    args: &[&str],
    out: std::io::Result<std::process::Output>,
) -> R<String> {
    let out = out.map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What [`Cluster::kubelet`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeletAction {
    Stop,
    Start,
}

/// Undoes a disruption of a node when the test ends, also when it fails, so later tests find
/// every node schedulable and its kubelet running.
pub struct NodeRestore {
    cluster: Cluster,
    node: String,
    uncordon: bool,
    start_kubelet: bool,
}

impl NodeRestore {
    pub fn new(cluster: &Cluster, node: &str) -> Self {
        NodeRestore {
            cluster: cluster.clone(),
            node: node.to_owned(),
            uncordon: false,
            start_kubelet: false,
        }
    }

    /// Uncordon the node at the end.
    pub fn uncordon(&mut self) {
        self.uncordon = true;
    }

    /// Start the node's kubelet at the end.
    pub fn start_kubelet(&mut self) {
        self.start_kubelet = true;
    }

    /// Nothing left to undo (the test did it itself).
    pub fn done(&mut self) {
        self.uncordon = false;
        self.start_kubelet = false;
    }
}

impl Drop for NodeRestore {
    fn drop(&mut self) {
        if self.start_kubelet {
            let _ = self
                .cluster
                .kubelet_blocking(&self.node, KubeletAction::Start);
        }
        if self.uncordon {
            let _ = self.cluster.kubectl_blocking(&["uncordon", &self.node]);
        }
    }
}

/// Whether a Node's `Ready` condition is `True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until Node `name` is Ready (`true`) or not (`false`).
pub async fn wait_node_ready(
    cluster: &Cluster,
    name: &str,
    ready: bool,
    timeout: Duration,
) -> R<()> {
    let api = cluster.all::<Node>();
    wait::eventually(&format!("Node {name} Ready={ready}"), timeout, || async {
        let node = api.get(name).await.ok()?;
        (node_ready(&node) == ready).then_some(())
    })
    .await
    .map_err(|e| e.to_string())
}

/// Deletes what a test created when the test ends, also when it fails: namespaces (everything
/// in them goes with them) and cluster-scoped objects, with `kubectl` so it works from `Drop`.
pub struct Cleanup {
    kubeconfig: PathBuf,
    items: Vec<(String, String)>,
}

impl Cleanup {
    pub fn new(cluster: &Cluster) -> Self {
        Self {
            kubeconfig: cluster.kubeconfig.clone(),
            items: Vec::new(),
        }
    }

    /// Registers `kind/name` (cluster-scoped, or a namespace) for deletion.
    pub fn add(&mut self, kind: &str, name: &str) {
        self.items.push((kind.to_owned(), name.to_owned()));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Last registered first: Services' namespaces go before the pools they use.
        for (kind, name) in self.items.iter().rev() {
            let _ = Command::new("kubectl")
                .env("KUBECONFIG", &self.kubeconfig)
                .args(["delete", kind, name, "--ignore-not-found", "--wait=false"])
                .output();
        }
    }
}

/// A fresh namespace `pwe-<prefix>-<random>`, deleted by `cleanup`.
pub async fn namespace(cluster: &Cluster, prefix: &str, cleanup: &mut Cleanup) -> R<String> {
    let name = format!("pwe-{prefix}-{}", random_suffix());
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"e2e.portway.dev/test": prefix}},
    }))
    .map_err(|e| e.to_string())?;
    cluster
        .all::<k8s_openapi::api::core::v1::Namespace>()
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|e| format!("create namespace {name}: {e}"))?;
    cleanup.add("namespace", &name);
    Ok(name)
}

/// Five hex digits from the clock and the process id: unique enough for parallel tests.
pub fn random_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{:05x}",
        (nanos ^ std::process::id().rotate_left(13)) & 0xfffff
    )
}

/// A LoadBalancerPool that serves only Services naming it (`autoAssign: false`, so it never
/// takes another test's Service), on the nodes `node_selector` selects.
pub async fn pool(
    cluster: &Cluster,
    prefix: &str,
    node_selector: Value,
    dataplane: &str,
    cleanup: &mut Cleanup,
) -> R<String> {
    let name = format!("pwe-{prefix}-{}", random_suffix());
    let pool: LoadBalancerPool = serde_json::from_value(json!({
        "apiVersion": names::API_VERSION,
        "kind": "LoadBalancerPool",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": node_selector,
            "autoAssign": false,
            "dataplane": dataplane,
            "addressTypes": ["InternalIP"],
        },
    }))
    .map_err(|e| format!("pool: {e}"))?;
    cluster
        .all::<LoadBalancerPool>()
        .create(&PostParams::default(), &pool)
        .await
        .map_err(|e| format!("create pool {name}: {e}"))?;
    cleanup.add("loadbalancerpools.portway.dev", &name);
    Ok(name)
}

/// A Deployment of agnhost `netexec` (HTTP on [`BACKEND_PORT`]: `/hostname`, `/clientip`),
/// labelled `app=<name>`, optionally pinned to one zone.
pub fn backend_deployment(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    zone: Option<&str>,
    replicas: i32,
) -> R<Deployment> {
    let node_selector = zone.map(|z| json!({ ZONE_LABEL: z }));
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": node_selector,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "netexec",
                        "image": cluster.backend_image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["netexec", format!("--http-port={BACKEND_PORT}"), "--udp-port=-1"],
                        "ports": [{"containerPort": BACKEND_PORT, "name": "http"}],
                        "readinessProbe": {"tcpSocket": {"port": BACKEND_PORT}, "periodSeconds": 1},
                    }],
                },
            },
        },
    }))
    .map_err(|e| format!("backend: {e}"))
}

/// Creates [`backend_deployment`] and waits until its pods are ready.
pub async fn backend(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    zone: Option<&str>,
    replicas: i32,
) -> R<()> {
    let deploy = backend_deployment(cluster, ns, name, zone, replicas)?;
    cluster
        .api::<Deployment>(ns)
        .create(&PostParams::default(), &deploy)
        .await
        .map_err(|e| format!("create backend {ns}/{name}: {e}"))?;
    wait_backend(cluster, ns, name, replicas).await
}

/// Waits until `replicas` pods of the backend are ready.
pub async fn wait_backend(cluster: &Cluster, ns: &str, name: &str, replicas: i32) -> R<()> {
    let api = cluster.api::<Deployment>(ns);
    wait::eventually(
        &format!("backend {ns}/{name} ready"),
        SERVE_TIMEOUT,
        || async {
            let d = api.get(name).await.ok()?;
            let s = d.status?;
            (s.ready_replicas == Some(replicas)
                && s.updated_replicas == Some(replicas)
                && s.replicas == Some(replicas))
            .then_some(())
        },
    )
    .await
    .map_err(|e| e.to_string())
}

/// Options of a test Service.
pub struct ServiceOptions<'a> {
    pub port: i32,
    pub local: bool,
    pub pool: Option<&'a str>,
    /// The backend's `app` label (defaults to the Service's name).
    pub app: Option<&'a str>,
}

/// A LoadBalancer Service to the backend; dual-stack clusters get a dual-stack Service.
pub fn service_object(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    opts: &ServiceOptions<'_>,
) -> R<Service> {
    let annotations = opts.pool.map(|p| json!({ names::POOL_ANNOTATION: p }));
    let policy = if cluster.variant == Variant::DualStack {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            "ipFamilyPolicy": policy,
            "externalTrafficPolicy": if opts.local { "Local" } else { "Cluster" },
            "selector": {"app": opts.app.unwrap_or(name)},
            "ports": [{"name": "http", "protocol": "TCP", "port": opts.port, "targetPort": BACKEND_PORT}],
        },
    }))
    .map_err(|e| format!("service: {e}"))
}

/// Creates [`service_object`].
pub async fn service(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    opts: &ServiceOptions<'_>,
) -> R<Service> {
    let svc = service_object(cluster, ns, name, opts)?;
    cluster
        .api::<Service>(ns)
        .create(&PostParams::default(), &svc)
        .await
        .map_err(|e| format!("create Service {ns}/{name}: {e}"))
}

/// The IPs of a Service's `status.loadBalancer.ingress`.
pub fn ingress_ips(svc: &Service) -> BTreeSet<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| {
            i.iter()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the Service's ingress is exactly `expected`.
pub async fn wait_ingress(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    expected: &BTreeSet<IpAddr>,
    timeout: Duration,
) -> R<()> {
    let api = cluster.api::<Service>(ns);
    let result = wait::eventually(
        &format!("ingress of {ns}/{name} = {expected:?}"),
        timeout,
        || async {
            let svc = api.get(name).await.ok()?;
            (ingress_ips(&svc) == *expected).then_some(())
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("{e}\n{}", cluster.describe(ns, name).await)),
    }
}

/// Waits until the Service's ready agent pods run on exactly `expected` nodes. An agent reports
/// `Forwarding=True` as soon as its rules are in; kubelet marks its pod ready at the next run of
/// its readiness probe (every 5 s), so a Ready ServiceLoadBalancer does not yet mean ready pods.
pub async fn wait_ready_agents(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    expected: &BTreeSet<String>,
    timeout: Duration,
) -> R<()> {
    let result = wait::eventually(
        &format!("ready agents of {ns}/{name} on {expected:?}"),
        timeout,
        || async {
            let ready = cluster.ready_agent_nodes(ns, name).await.ok()?;
            (ready == *expected).then_some(())
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("{e}\n{}", cluster.describe(ns, name).await)),
    }
}

/// Waits until the Service's ServiceLoadBalancer has condition `type_` with `status` and
/// `reason`; returns it.
pub async fn wait_slb_condition(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
    timeout: Duration,
) -> R<Condition> {
    let api = cluster.api::<ServiceLoadBalancer>(ns);
    let result = wait::eventually(
        &format!("{ns}/{name}: {type_}={status} ({reason})"),
        timeout,
        || async {
            let slb = api.get(name).await.ok()?;
            let c = condition(&slb.status?.conditions, type_)?.clone();
            (c.status == status && c.reason == reason).then_some(c)
        },
    )
    .await;
    match result {
        Ok(c) => Ok(c),
        Err(e) => Err(format!("{e}\n{}", cluster.describe(ns, name).await)),
    }
}

/// One HTTP/1.0 GET of `path` from the test host to `ip:port`: the body, and the local address
/// the connection came from (what the backend should see as client address when it is kept).
pub async fn http_get(ip: IpAddr, port: i32, path: &str) -> R<(String, SocketAddr)> {
    let port = u16::try_from(port).map_err(|e| e.to_string())?;
    let addr = SocketAddr::new(ip, port);
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let local = stream.local_addr()?;
        let host = match ip {
            IpAddr::V4(_) => ip.to_string(),
            IpAddr::V6(_) => format!("[{ip}]"),
        };
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>((String::from_utf8_lossy(&buf).into_owned(), local))
    };
    let (response, local) = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| format!("GET http://{addr}{path}: no answer in 5 s"))?
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}{path}: not HTTP: {response:?}"))?;
    if !head.starts_with("HTTP/1.") || head.split(' ').nth(1) != Some("200") {
        return Err(format!(
            "GET http://{addr}{path}: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok((body.trim().to_owned(), local))
}

/// Retries [`http_get`] until it answers, at most `timeout` (forwarding may trail the ingress
/// by a moment on a busy node).
pub async fn http_get_eventually(
    ip: IpAddr,
    port: i32,
    path: &str,
    timeout: Duration,
) -> R<(String, SocketAddr)> {
    let last = std::sync::Mutex::new(String::new());
    let result = wait::eventually(&format!("GET {ip}:{port}{path}"), timeout, || async {
        match http_get(ip, port, path).await {
            Ok(ok) => Some(ok),
            Err(e) => {
                if let Ok(mut l) = last.lock() {
                    *l = e;
                }
                None
            }
        }
    })
    .await;
    result.map_err(|e| {
        let last = last.lock().map(|l| l.clone()).unwrap_or_default();
        format!("{e}; last error: {last}")
    })
}

/// The backend pods' names (what `/hostname` answers).
pub async fn backend_pods(cluster: &Cluster, ns: &str, app: &str) -> R<BTreeMap<String, Pod>> {
    let pods = cluster
        .api::<Pod>(ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map_err(|e| format!("list backend pods: {e}"))?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| Some((p.metadata.name.clone()?, p)))
        .collect())
}

/// Merge-patches a pool's spec.
pub async fn patch_pool(cluster: &Cluster, name: &str, spec: Value) -> R<()> {
    cluster
        .all::<LoadBalancerPool>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("patch pool {name}: {e}"))
}

/// Deletes a Service and waits until it, its DaemonSet, its ServiceLoadBalancer and its agent
/// pods are gone.
pub async fn delete_service_and_wait(cluster: &Cluster, ns: &str, name: &str) -> R<()> {
    cluster
        .api::<Service>(ns)
        .delete(name, &DeleteParams::default())
        .await
        .map_err(|e| format!("delete Service {ns}/{name}: {e}"))?;
    let result = wait::eventually(
        &format!("Service {ns}/{name}, its DaemonSet, ServiceLoadBalancer and agents gone"),
        CLEANUP_TIMEOUT,
        || async {
            let svc = cluster.api::<Service>(ns).get_opt(name).await.ok()?;
            let slb = cluster
                .api::<ServiceLoadBalancer>(ns)
                .get_opt(name)
                .await
                .ok()?;
            let ds = cluster.agent_daemonsets(ns, name).await.ok()?;
            let pods = cluster.agent_pods(ns, name).await.ok()?;
            (svc.is_none() && slb.is_none() && ds.is_empty() && pods.is_empty()).then_some(())
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("{e}\n{}", cluster.describe(ns, name).await)),
    }
}

/// A Service on the default pool (Pod dataplane, every worker) with a two-pod backend, served
/// from every worker: its namespace, and the workers' published addresses.
pub async fn served_on_workers(
    cluster: &Cluster,
    prefix: &str,
    port: i32,
    cleanup: &mut Cleanup,
) -> R<(String, BTreeSet<IpAddr>)> {
    let ns = namespace(cluster, prefix, cleanup).await?;
    backend(cluster, &ns, "web", None, 2).await?;
    let opts = ServiceOptions {
        port,
        local: false,
        pool: None,
        app: None,
    };
    service(cluster, &ns, "web", &opts).await?;
    let workers = cluster.workers().await?;
    let expected = expected_ingress(&workers, &cluster.families());
    wait_ingress(cluster, &ns, "web", &expected, SERVE_TIMEOUT).await?;
    for ip in &expected {
        http_get_eventually(*ip, port, "/hostname", SERVE_TIMEOUT).await?;
    }
    Ok((ns, expected))
}

/// What [`served_in_both_dataplanes`] set up.
pub struct BothDataplanes {
    pub ns: String,
    pub workers: Vec<Node>,
    /// The workers' published addresses, the same for both Services.
    pub expected: BTreeSet<IpAddr>,
}

/// `host-web` on port `host_port` of a `Host`-dataplane pool of the zoned workers and `pod-web`
/// on port `pod_port` of the default (`Pod`) pool, both before a `web` backend of `replicas`
/// pods, published on every worker and answering on every published address.
pub async fn served_in_both_dataplanes(
    cluster: &Cluster,
    prefix: &str,
    (host_port, pod_port): (i32, i32),
    replicas: i32,
    cleanup: &mut Cleanup,
) -> R<BothDataplanes> {
    let zoned = json!({"matchExpressions": [{"key": ZONE_LABEL, "operator": "Exists"}]});
    let pool = pool(cluster, prefix, zoned, "Host", cleanup).await?;
    let ns = namespace(cluster, prefix, cleanup).await?;
    backend(cluster, &ns, "web", None, replicas).await?;
    let host = ServiceOptions {
        port: host_port,
        local: false,
        pool: Some(&pool),
        app: Some("web"),
    };
    let pod = ServiceOptions {
        port: pod_port,
        local: false,
        pool: None,
        app: Some("web"),
    };
    service(cluster, &ns, "host-web", &host).await?;
    service(cluster, &ns, "pod-web", &pod).await?;
    let workers = cluster.workers().await?;
    let expected = expected_ingress(&workers, &cluster.families());
    wait_ingress(cluster, &ns, "host-web", &expected, SERVE_TIMEOUT).await?;
    wait_ingress(cluster, &ns, "pod-web", &expected, SERVE_TIMEOUT).await?;
    for ip in &expected {
        http_get_eventually(*ip, host_port, "/hostname", SERVE_TIMEOUT).await?;
        http_get_eventually(*ip, pod_port, "/hostname", SERVE_TIMEOUT).await?;
    }
    Ok(BothDataplanes {
        ns,
        workers,
        expected,
    })
}

/// The operator Deployment's pods (by the chart's component label).
pub async fn operator_pods(cluster: &Cluster) -> R<Vec<Pod>> {
    cluster
        .api::<Pod>(&cluster.namespace)
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await
        .map(|l| l.items)
        .map_err(|e| format!("list operator pods: {e}"))
}

/// Ready operator pods that are not terminating.
pub async fn ready_operator_pods(cluster: &Cluster) -> R<BTreeSet<String>> {
    Ok(operator_pods(cluster)
        .await?
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect())
}

/// The holder identity of the operator's Lease (`<pod name>_<pid>`), if it is held.
pub async fn lease_holder(cluster: &Cluster) -> Option<String> {
    let lease = cluster
        .api::<Lease>(&cluster.namespace)
        .get(portway_operator::controllers::lease::LEASE_NAME)
        .await
        .ok()?;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// The pod of a Lease holder identity (`<pod name>_<pid>`).
pub fn holder_pod(identity: &str) -> Option<&str> {
    identity.rsplit_once('_').map(|(pod, _)| pod)
}

/// Runs a test body under [`TEST_BUDGET`] and turns its error into a panic with the message.
pub async fn run<F: Future<Output = R<()>>>(test: &str, body: F) {
    match tokio::time::timeout(TEST_BUDGET, body).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{test}: {e}"),
        Err(_) => panic!("{test}: over its budget of {TEST_BUDGET:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use portway_crds::{IpFamily, Protocol};
    use portway_node_agent::dataplane::iptables::render::{self, ChainNames, DEFAULT_PREFIX};
    use portway_node_agent::rules::{FamilyRules, Forward};

    use super::{dnat_packets, node_port_paths};

    #[test]
    fn node_port_paths_tells_kube_proxy_from_the_host_port() {
        // As a worker of the local cluster showed them (ipMode VIP, then Proxy).
        let lines: Vec<String> = [
            r#"[4:240] -A KUBE-SERVICES -d 10.111.0.3/32 -p tcp -m comment --comment "default/web loadbalancer IP" -m tcp --dport 18080 -j KUBE-EXT-LOLE4ISW44XBNF3G"#,
            r#"[9:540] -A KUBE-SERVICES -d 10.111.0.4/32 -p tcp -m comment --comment "default/web loadbalancer IP" -m tcp --dport 18080 -j KUBE-EXT-LOLE4ISW44XBNF3G"#,
            r#"[5:300] -A KUBE-SERVICES -d 10.96.171.188/32 -p tcp -m comment --comment "default/web cluster IP" -m tcp --dport 18080 -j KUBE-SVC-LOLE4ISW44XBNF3G"#,
            r#"[2:120] -A CNI-DN-b75be9099bf472c20dfd5 -s 10.244.1.0/24 -p tcp -m tcp --dport 18080 -j CNI-HOSTPORT-SETMARK"#,
            r#"[5:300] -A CNI-DN-b75be9099bf472c20dfd5 -p tcp -m tcp --dport 18080 -j DNAT --to-destination 10.244.1.4:18080"#,
            r#"[3:180] -A CNI-DN-0123456789abcdef01234 -p tcp -m tcp --dport 18081 -j DNAT --to-destination 10.244.1.7:18081"#,
            r#"[6:360] -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name" -m multiport --dports 18080 -j CNI-DN-b75be9099bf472c20dfd5"#,
        ]
        .map(str::to_owned)
        .to_vec();
        let here = [IpAddr::from([10, 111, 0, 3])];
        // Only this node's address, only this port, only the DNAT (not the mark, not the jump).
        assert_eq!(node_port_paths(&lines, &here, 18080), (4, 5));
        assert_eq!(node_port_paths(&lines, &here, 18081), (0, 3));
        let v6 = ["fd00:10:111::3".parse::<IpAddr>().unwrap()];
        let lines6 = vec![
            r#"[7:560] -A KUBE-SERVICES -d fd00:10:111::3/128 -p tcp -m comment --comment "default/web loadbalancer IP" -m tcp --dport 18080 -j KUBE-EXT-X"#.to_owned(),
        ];
        assert_eq!(node_port_paths(&lines6, &v6, 18080), (7, 0));
        assert_eq!(node_port_paths(&lines6, &here, 18080), (0, 0));
    }

    /// `iptables-save -c` lines of what the agent renders for `ns/name` forwarding TCP `port`
    /// (and UDP on the same port, which must not count) to `targets`, every rule counted 7.
    fn counted_rules(ns: &str, name: &str, port: u16, targets: &[&str]) -> Vec<String> {
        let forward = |protocol| Forward {
            name: String::new(),
            protocol,
            port,
            destinations: vec!["10.0.0.7".parse::<IpAddr>().expect("ip")],
            targets: targets
                .iter()
                .map(|t| t.parse::<SocketAddr>().expect("target"))
                .collect(),
            masquerade: true,
        };
        let rules = FamilyRules {
            family: IpFamily::IPv4,
            forwards: vec![forward(Protocol::TCP), forward(Protocol::UDP)],
            allowed_sources: None,
            shared_netns: false,
        };
        let names = ChainNames::new(DEFAULT_PREFIX, &format!("{ns}/{name}"));
        let desired = render::desired(Some(&rules), &names);
        desired
            .tables
            .values()
            .flat_map(|t| t.chains.iter())
            .flat_map(|(chain, specs)| specs.iter().map(move |s| format!("[7:420] -A {chain} {s}")))
            .collect()
    }

    /// The traffic_policy test could not pass: with one backend the agent DNATs in its entry
    /// chain, and only port chains were counted.
    #[test]
    fn dnat_packets_counts_one_target_and_several() {
        let one = counted_rules("e2e-tp", "echo", 18081, &["10.244.1.5:8080"]);
        assert_eq!(dnat_packets(&one, "e2e-tp", "echo", 18081), 7, "{one:#?}");
        let two = counted_rules(
            "e2e-tp",
            "echo",
            18081,
            &["10.244.1.5:8080", "10.244.2.6:8080"],
        );
        assert_eq!(dnat_packets(&two, "e2e-tp", "echo", 18081), 14, "{two:#?}");
        // Another port, another Service: nothing.
        assert_eq!(dnat_packets(&one, "e2e-tp", "echo", 18082), 0);
        assert_eq!(dnat_packets(&one, "e2e-tp", "other", 18081), 0);
    }
}
