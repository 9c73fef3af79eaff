//! `portway-cluster up`: checks the machine, records the plan, writes certificates and configs,
//! builds the node network, starts the registry mirror (filled from the seed store), then the
//! control plane, each node's containerd (loaded with the harness images, pulling through the
//! mirror), kubelet and kube-proxy, and netd; labels the nodes and deploys the DNS stand-in. The nodes stay NotReady until Portway's ClusterCIDR gives them pod CIDRs (netd then
//! writes their CNI config): that is the chicken and egg `docs/e2e.md` describes for kind too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use super::components::{self, Component, K8S_BINARIES};
use super::render::{self, CNI_BIN_DIR};
use super::spec::ClusterSpec;
use super::state::{self, DEVICE_PLUGIN_SOCKET, Record, SHARED_DIRS};
use super::{ClusterError, Result, cgroup, images, net, pki, process, registry, seed, sys};
use crate::envtest::process::log_tail;
use crate::kind::Variant;
use crate::wait::eventually_every;

/// The field manager of the harness's writes.
pub const FIELD_MANAGER: &str = "portway-cluster";
/// Tools `up` needs on `PATH`, each with the Debian package that has it.
pub const TOOLS: [(&str, &str); 10] = [
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("sysctl", "procps"),
    ("containerd", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("runc", "runc"),
    ("ctr", "containerd"),
    ("iptables", "iptables"),
    ("podman", "podman"),
    (registry::PROGRAM, "docker-registry"),
];
/// CNI plugins the nodes use (containerd adds loopback itself).
pub const CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "portmap", "loopback"];

pub struct UpOptions {
    pub name: String,
    pub variant: Variant,
    pub k8s_bin: PathBuf,
    /// Folder of the static test programs (pause, agnhost, dns) for the harness images.
    pub testbins: PathBuf,
    /// Rebuild the harness images even when they exist.
    pub rebuild_images: bool,
    pub timeout: Duration,
}

/// Everything missing on this machine for `up`, as one message per item.
pub fn preflight(k8s_bin: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (network namespaces, cgroups, mounts)".to_owned());
    }
    for (t, package) in TOOLS {
        if !sys::on_path(t) {
            missing.push(format!("{t} on PATH (apt-get install {package})"));
        }
    }
    for p in CNI_PLUGINS {
        if !Path::new(CNI_BIN_DIR).join(p).is_file() {
            missing.push(format!("{CNI_BIN_DIR}/{p} (containernetworking-plugins)"));
        }
    }
    for b in K8S_BINARIES {
        if !k8s_bin.join(b).is_file() {
            missing.push(format!("{}/{b}", k8s_bin.display()));
        }
    }
    missing
}

/// Every process of the cluster, in start order (`down` stops them in reverse: the mirror last).
pub fn components(spec: &ClusterSpec, k8s_bin: &Path, exe: &Path) -> Vec<Component> {
    let mut c = vec![
        components::registry(spec),
        components::etcd(spec, k8s_bin),
        components::apiserver(spec, k8s_bin),
    ];
    c.extend(spec.nodes.iter().map(|n| components::containerd(spec, n)));
    c.extend(
        spec.nodes
            .iter()
            .map(|n| components::kubelet(spec, n, k8s_bin)),
    );
    c.push(components::scheduler(spec, k8s_bin));
    c.extend(
        spec.nodes
            .iter()
            .map(|n| components::kube_proxy(spec, n, k8s_bin)),
    );
    c.push(components::netd(spec, exe));
    c
}

fn json_text(v: &serde_json::Value) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| ClusterError::State(format!("render: {e}")))
}

/// Certificates, kubeconfigs, node configs, the static pod, the DNS record folder and the
/// mirror's config.
pub fn write_files(spec: &ClusterSpec) -> Result<()> {
    let mirror = registry::addr(spec)?;
    sys::write(
        &registry::config_path(spec),
        json_text(&registry::config(&registry::data_dir(spec), mirror))?,
    )?;
    let mirrors = registry::mirrors(mirror);
    for (name, contents) in pki::generate(spec)? {
        sys::write(&spec.pki_dir().join(name), contents)?;
    }
    // A kubeconfig per client identity but the API server's own (it reads its files by flag).
    for id in pki::identities(spec)
        .iter()
        .filter(|id| id.stem != pki::APISERVER_KUBELET_CLIENT)
    {
        sys::write(
            &render::kubeconfig_path(spec, &id.stem),
            json_text(&render::kubeconfig(spec, &id.stem))?,
        )?;
    }
    for node in &spec.nodes {
        let dir = spec.node_dir(node);
        sys::write(
            &dir.join("kubelet-config.yaml"),
            json_text(&render::kubelet_config(spec, node))?,
        )?;
        sys::write(
            &dir.join("kube-proxy-config.yaml"),
            json_text(&render::kube_proxy_config(spec, node))?,
        )?;
        sys::write(
            &dir.join("containerd/config.toml"),
            render::containerd_config(spec, node, &images::pause_image(), &mirrors),
        )?;
        sys::mkdir(&spec.cni_conf_dir(node))?;
        sys::mkdir(&dir.join("kubelet"))?;
        sys::mkdir(&dir.join("pod-logs"))?;
        if node.is_control_plane() {
            let pod = components::controller_manager_pod(spec, &images::controller_manager_image());
            sys::write(
                &spec
                    .static_pod_dir(node)
                    .join("kube-controller-manager.yaml"),
                json_text(&pod)?,
            )?;
        }
    }
    sys::write(
        &spec.dns_dir().join("hosts"),
        render::dns_records(std::iter::empty()),
    )?;
    sys::mkdir(&spec.etcd_dir())
}

/// The admin client of a cluster.
pub async fn admin_client(spec: &ClusterSpec) -> Result<Client> {
    let path = spec.admin_kubeconfig();
    let kc = Kubeconfig::read_from(&path)
        .map_err(|e| ClusterError::State(format!("{}: {e}", path.display())))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| ClusterError::State(format!("{}: {e}", path.display())))?;
    Client::try_from(config).map_err(ClusterError::kube("admin client"))
}

/// How often `up`'s waits probe (some probes run `ctr` or list every Node).
pub const POLL: Duration = Duration::from_millis(500);

fn start_all(record: &Record, names: impl Fn(&Component) -> bool) -> Result<()> {
    for c in record.components.iter().filter(|c| names(c)) {
        let pid = process::start(&record.spec, c)?;
        eprintln!("portway-cluster: started {} (pid {pid})", c.name);
    }
    Ok(())
}

/// Starts the kubelets one at a time, each after the previous one has bound the shared
/// [`DEVICE_PLUGIN_SOCKET`]. Started together, two kubelets can interleave their remove and bind
/// (remove, remove, bind, bind): the loser logs "Failed to start ContainerManager ... bind:
/// address already in use" and never registers its node (seen once in about ten `up`s).
async fn start_kubelets(record: &Record, timeout: Duration) -> Result<()> {
    let socket = Path::new(DEVICE_PLUGIN_SOCKET);
    for c in record.components.iter().filter(|c| is(c, "kubelet")) {
        let started = SystemTime::now();
        let pid = process::start(&record.spec, c)?;
        eprintln!("portway-cluster: started {} (pid {pid})", c.name);
        eventually_every(
            &format!("{} to bind {DEVICE_PLUGIN_SOCKET}", c.name),
            timeout,
            POLL,
            || async { bound_since(changed_at(socket), started).then_some(()) },
        )
        .await?;
    }
    Ok(())
}

/// When `path`'s inode last changed (its creation, for a socket), if it exists.
fn changed_at(path: &Path) -> Option<SystemTime> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).ok()?;
    let secs = u64::try_from(meta.ctime()).ok()?;
    let nanos = u32::try_from(meta.ctime_nsec()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Whether a socket changed at `changed` was bound by a process started at `started`. (The inode
/// number cannot tell: a file system may reuse the one just freed by the removal.)
fn bound_since(changed: Option<SystemTime>, started: SystemTime) -> bool {
    changed.is_some_and(|t| t >= started)
}

fn is(c: &Component, suffix: &str) -> bool {
    c.name == suffix || c.name.ends_with(&format!(".{suffix}"))
}

/// Builds the harness images that are missing (or all with `rebuild`).
pub fn ensure_images(testbins: &Path, k8s_bin: &Path, rebuild: bool) -> Result<()> {
    for r in images::recipes(testbins, k8s_bin) {
        if rebuild || !images::exists(&r.name) {
            eprintln!("portway-cluster: building image {}", r.name);
            images::build(&r)?;
        }
    }
    Ok(())
}

/// Imports images into the given nodes' containerd.
pub fn load_images(
    spec: &ClusterSpec,
    images_: &[String],
    nodes: &[&super::spec::NodeSpec],
) -> Result<()> {
    let tmp = tempfile::tempdir().map_err(ClusterError::io("temp folder for image archives"))?;
    for image in images_ {
        let archive = images::save(image, tmp.path())?;
        for node in nodes {
            images::import(&spec.containerd_socket(node), &archive)?;
        }
    }
    Ok(())
}

pub async fn up(opts: &UpOptions) -> Result<Record> {
    let started = Instant::now();
    let missing = preflight(&opts.k8s_bin);
    if !missing.is_empty() {
        return Err(ClusterError::State(format!(
            "this machine lacks: {}",
            missing.join("; ")
        )));
    }
    let config = opts.variant.config().map_err(|why| ClusterError::Config {
        variant: opts.variant.name(),
        why,
    })?;
    let spec = ClusterSpec::new(&opts.name, opts.variant, &config, &state::state_root())?;
    if spec.state_dir.exists() {
        return Err(ClusterError::State(format!(
            "{} exists: cluster {} is up or was not taken down (portway-cluster down --name {})",
            spec.state_dir.display(),
            spec.name,
            spec.name
        )));
    }
    if net::link_exists(super::spec::BRIDGE) {
        return Err(ClusterError::State(format!(
            "link {} exists: another local cluster is up (portway-cluster status); one at a time",
            super::spec::BRIDGE
        )));
    }
    ensure_images(&opts.testbins, &opts.k8s_bin, opts.rebuild_images)?;

    let exe =
        std::env::current_exe().map_err(ClusterError::io("find portway-cluster's own path"))?;
    let record = Record {
        components: components(&spec, &opts.k8s_bin, &exe),
        k8s_bin: opts.k8s_bin.clone(),
        sysctls: state::read_sysctls(),
        created_dirs: SHARED_DIRS
            .iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect(),
        spec,
    };
    sys::mkdir(&record.spec.state_dir)?;
    record.save()?;
    let spec = &record.spec;
    write_files(spec)?;
    net::create_bridge(spec)?;
    for node in &spec.nodes {
        net::create_node(spec, node)?;
        cgroup::create(&node.daemon_cgroup())?;
    }
    eprintln!(
        "portway-cluster: network and cgroups ready ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    start_mirror(spec, &record, opts.timeout).await?;
    eprintln!(
        "portway-cluster: registry mirror on {} ({:.1} s)",
        registry::base_url(registry::addr(spec)?),
        started.elapsed().as_secs_f64()
    );

    start_all(&record, |c| is(c, "etcd") || is(c, "kube-apiserver"))?;
    let client = admin_client(spec).await?;
    eventually_every("kube-apiserver /readyz", opts.timeout, POLL, || async {
        let req = http::Request::get("/readyz").body(Vec::new()).ok()?;
        client
            .request_text(req)
            .await
            .ok()
            .filter(|t| t.trim() == "ok")
    })
    .await?;
    eprintln!(
        "portway-cluster: API server ready ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    start_all(&record, |c| is(c, "containerd"))?;
    for node in &spec.nodes {
        let socket = spec.containerd_socket(node);
        eventually_every(
            &format!("containerd of {}", node.name),
            opts.timeout,
            POLL,
            || async { sys::run(sys::cmd("ctr", ["--address"]).arg(&socket).arg("version")).ok() },
        )
        .await?;
    }
    let all: Vec<&super::spec::NodeSpec> = spec.nodes.iter().collect();
    load_images(spec, &[images::pause_image(), images::dns_image()], &all)?;
    load_images(
        spec,
        &[images::controller_manager_image()],
        &[spec.control_plane()],
    )?;
    eprintln!(
        "portway-cluster: containerd up, harness images loaded ({:.1} s)",
        started.elapsed().as_secs_f64()
    );

    start_kubelets(&record, opts.timeout).await?;
    start_all(&record, |c| {
        is(c, "kube-scheduler") || is(c, "kube-proxy") || is(c, "netd")
    })?;
    let nodes: Api<Node> = Api::all(client.clone());
    eventually_every("every node registered", opts.timeout, POLL, || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        spec.nodes
            .iter()
            .all(|n| {
                list.items
                    .iter()
                    .any(|o| o.metadata.name.as_deref() == Some(n.name.as_str()))
            })
            .then_some(())
    })
    .await?;
    for node in spec.nodes.iter().filter(|n| !n.admin_labels.is_empty()) {
        nodes
            .patch(
                &node.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": node.admin_labels}})),
            )
            .await
            .map_err(ClusterError::kube(format!("label node {}", node.name)))?;
    }
    apply_dns(spec, &client).await?;
    eprintln!("portway-cluster: nodes registered and labelled, DNS stand-in deployed");
    Ok(record)
}

/// Fills the mirror's storage from the seed store, starts it and waits until it answers.
async fn start_mirror(spec: &ClusterSpec, record: &Record, timeout: Duration) -> Result<()> {
    let store = seed::store();
    if !registry::fill_from(&seed::store_registry(&store), &registry::data_dir(spec))? {
        eprintln!(
            "portway-cluster: the registry mirror starts empty: no seed store in {} \
             (`portway-cluster images --seed` builds the nginx stand-in; without it `image: nginx` \
             cannot be pulled)",
            store.display()
        );
    }
    start_all(record, |c| is(c, "registry"))?;
    let addr = registry::addr(spec)?;
    let component = record
        .component("registry")
        .ok_or_else(|| ClusterError::State("no registry component".into()))?;
    // Fails at once when the registry exits (its port taken, say), with the end of its log.
    eventually_every("the registry mirror", timeout, POLL, || async move {
        if registry::answers(addr) {
            Some(Ok(()))
        } else if process::running(spec, component).is_none() {
            let tail = log_tail(&process::log_file(spec, &component.name), 3);
            Some(Err(ClusterError::State(format!(
                "the registry mirror on {addr} exited: {}",
                tail.replace('\n', " | ")
            ))))
        } else {
            None
        }
    })
    .await?
}

/// Server-side applies the DNS stand-in's Deployment and Service.
pub async fn apply_dns(spec: &ClusterSpec, client: &Client) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let objs = components::dns_objects(spec, &images::dns_image());
    let [deploy, svc] = objs.as_slice() else {
        return Err(ClusterError::State(
            "DNS objects: expected a Deployment and a Service".into(),
        ));
    };
    Api::<Deployment>::namespaced(client.clone(), "kube-system")
        .patch("coredns", &params, &Patch::Apply(deploy))
        .await
        .map_err(ClusterError::kube("apply deployment/coredns"))?;
    Api::<Service>::namespaced(client.clone(), "kube-system")
        .patch("kube-dns", &params, &Patch::Apply(svc))
        .await
        .map_err(ClusterError::kube("apply service/kube-dns"))?;
    Ok(())
}

/// Versions of the pieces, one line each (`<tool> <version>`).
pub fn versions(k8s_bin: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let first_line = |mut c: std::process::Command| {
        sys::run(&mut c)
            .ok()
            .and_then(|o| o.lines().next().map(|l| l.trim().to_owned()))
            .unwrap_or_else(|| "?".into())
    };
    for b in [
        "kube-apiserver",
        "kubelet",
        "kube-proxy",
        "kube-scheduler",
        "kube-controller-manager",
    ] {
        let v = first_line(sys::cmd(
            &k8s_bin.join(b).display().to_string(),
            ["--version"],
        ));
        out.push(format!("{b}: {v}"));
    }
    let etcd = first_line(sys::cmd(
        &k8s_bin.join("etcd").display().to_string(),
        ["--version"],
    ));
    out.push(format!("etcd: {}", etcd.trim_start_matches("etcd ")));
    out.push(first_line(sys::cmd("containerd", ["--version"])));
    out.push(first_line(sys::cmd("runc", ["--version"])));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_counts_as_bound_only_when_it_changed_after_the_start() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(!bound_since(None, start), "no socket yet");
        assert!(
            !bound_since(Some(start - Duration::from_millis(1)), start),
            "the previous kubelet's socket"
        );
        assert!(bound_since(Some(start), start));
        assert!(bound_since(Some(start + Duration::from_millis(300)), start));
    }

    #[test]
    fn changed_at_reads_a_files_inode_change_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubelet.sock");
        assert_eq!(changed_at(&path), None);
        std::fs::write(&path, b"").unwrap();
        let t = changed_at(&path).expect("a file that exists has a ctime");
        let age = SystemTime::now().duration_since(t).unwrap_or_default();
        assert!(
            age < Duration::from_secs(60),
            "ctime {t:?} is not this file's creation"
        );
    }

    #[test]
    fn every_node_has_a_kubelet_component_for_start_kubelets() {
        let config = Variant::Ipv4.config().unwrap();
        let spec = ClusterSpec::new("pwc-t", Variant::Ipv4, &config, Path::new("/tmp/x")).unwrap();
        let all = components(&spec, Path::new("/k8s"), Path::new("/exe"));
        let kubelets = all.iter().filter(|c| is(c, "kubelet")).count();
        assert_eq!(kubelets, spec.nodes.len());
    }
}
