//! The container images, built and run for real with podman (scripts/build-images.sh):
//! - the operator image runs `--help`, `plan examples/` and `migrate examples/k3s/` as its
//!   non-root user on a read-only root filesystem, and has every flag the Helm chart passes;
//! - the agent image, run with `--cap-drop=ALL --cap-add=NET_ADMIN` (no privileged mode) in a
//!   "pod" network namespace from a local spec file, forwards real TCP and UDP traffic from a client
//!   namespace to a backend namespace, and removes its rules on SIGTERM; with iptables-legacy it
//!   also needs NET_RAW (checked both ways).
//!
//! Skips with a printed reason when not root, when podman or `ip` is missing, or when the local
//! base image (../shared/tools/local-base-image.sh, run by .ci/run) is absent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portway_e2e::report;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd} {args:?}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(cmd: &str, version_flag: &str) -> bool {
    Command::new(cmd)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why this machine cannot run the image tests, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (podman networking in test namespaces needs root)".into());
    }
    if !have("podman", "--version") {
        return Some(
            "podman is not installed (run ../shared/tools/local-base-image.sh, as .ci/run does)"
                .into(),
        );
    }
    if !have("ip", "-V") {
        return Some("iproute2 (`ip`) is not installed".into());
    }
    if !run("podman", &["image", "exists", "debian:bookworm-slim"])
        .status
        .success()
    {
        return Some(
            "no local debian:bookworm-slim base image (run ../shared/tools/local-base-image.sh, as .ci/run does)"
                .into(),
        );
    }
    None
}

/// Unique per test process, so parallel runs never share names (prefix `pwi`).
fn uid() -> u32 {
    std::process::id() % 100_000
}

const TAG_PREFIX: &str = "pwi-test";

fn tag() -> String {
    format!("{TAG_PREFIX}-{}", uid())
}

/// The images, built once per test process; removed when the process ends (see `Images::drop`
/// called from the last test through `IMAGES_USERS`).
struct Images {
    operator: String,
    agent: String,
    build_output: String,
}

static IMAGES: OnceLock<Result<Images, String>> = OnceLock::new();

/// Builds `portway` and `portway-agent` (debug profile, into this test's target dir) if needed,
/// then both images with scripts/build-images.sh.
fn images() -> &'static Result<Images, String> {
    IMAGES.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("cannot locate the target directory")?
            .to_path_buf();
        let target_dir = profile_dir
            .parent()
            .ok_or("cannot locate the target directory")?
            .to_path_buf();
        let build = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .env("CARGO_TARGET_DIR", &target_dir)
            .args([
                "build",
                "--locked",
                "-p",
                "portway-operator",
                "--bin",
                "portway",
                "-p",
                "portway-node-agent",
                "--bin",
                "portway-agent",
            ])
            .output()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !build.status.success() {
            return Err(format!(
                "cargo build of the binaries failed:\n{}",
                String::from_utf8_lossy(&build.stderr)
            ));
        }
        let out = Command::new("bash")
            .current_dir(workspace())
            .arg("scripts/build-images.sh")
            .arg("podman")
            .env("PORTWAY_BIN_DIR", &profile_dir)
            .env("PORTWAY_IMAGE_TAG", tag())
            .output()
            .map_err(|e| format!("build-images.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/build-images.sh podman failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Images {
            operator: format!("portway/operator:{}", tag()),
            agent: format!("portway/agent:{}", tag()),
            build_output: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    })
}

fn images_or_skip(test: &str) -> Option<&'static Images> {
    if let Some(why) = unavailable() {
        report::skip(test, &why);
        return None;
    }
    match images() {
        Ok(i) => Some(i),
        Err(e) => panic!("{test}: {e}"),
    }
}

/// Removes this process' images when the last image test is done.
struct ImageCleanup;

impl Drop for ImageCleanup {
    fn drop(&mut self) {
        if let Some(Ok(i)) = IMAGES.get() {
            for name in [&i.operator, &i.agent] {
                let _ = run("podman", &["rmi", "-f", name, &format!("docker.io/{name}")]);
            }
        }
    }
}

static RUNNING: std::sync::Mutex<u32> = std::sync::Mutex::new(0);
const IMAGE_TESTS: u32 = 2;

/// Counts finished image tests; the last one removes the images.
struct Finished;

impl Drop for Finished {
    fn drop(&mut self) {
        let mut n = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        if *n == IMAGE_TESTS {
            drop(ImageCleanup);
        }
    }
}

fn podman_run(args: &[&str]) -> Output {
    let mut all = vec!["run", "--rm"];
    all.extend_from_slice(args);
    run("podman", &all)
}

#[test]
fn operator_image_runs_as_non_root_and_plans_the_examples() {
    const TEST: &str = "operator_image_runs_as_non_root_and_plans_the_examples";
    let _finished = Finished;
    let Some(images) = images_or_skip(TEST) else {
        return;
    };
    let img = images.operator.as_str();
    let user = ok(
        "podman",
        &["image", "inspect", "--format", "{{.Config.User}}", img],
    );
    assert_eq!(user.trim(), "65532:65532");
    let id = podman_run(&["--read-only", "--entrypoint", "/usr/bin/id", img, "-u"]);
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), "65532");

    let help = podman_run(&["--read-only", "--cap-drop=ALL", img, "--help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for cmd in ["run", "plan", "migrate", "crd"] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }

    let plan = podman_run(&["--read-only", "--cap-drop=ALL", img, "plan", "examples/"]);
    let stdout = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&plan.stderr)
    );
    assert!(stdout.contains("kind: DaemonSet"), "{stdout}");
    assert!(stdout.contains("kind: ServiceLoadBalancer"), "{stdout}");

    let migrate = podman_run(&[
        "--read-only",
        "--cap-drop=ALL",
        img,
        "migrate",
        "examples/k3s",
    ]);
    assert!(migrate.status.success());
    assert!(String::from_utf8_lossy(&migrate.stdout).contains("kind: LoadBalancerPool"));

    // The built binary has every flag the Helm chart passes to `portway run`.
    let run_help = podman_run(&["--read-only", img, "run", "--help"]);
    let run_help = String::from_utf8_lossy(&run_help.stdout).into_owned();
    let chart_args = chart_operator_args();
    match chart_args {
        Some(args) => {
            for flag in args {
                assert!(
                    run_help.contains(&format!("{flag} "))
                        || run_help.contains(&format!("{flag}\n")),
                    "the image's `portway run --help` has no {flag}"
                );
            }
        }
        None => report::line(&format!(
            "{TEST}: helm not found; chart flags not compared with the image's binary"
        )),
    }
    for line in images.build_output.lines() {
        report::line(&format!("image size: {line}"));
    }
}

/// `--flag` names the chart passes to `portway run` (everything switched on), if helm exists.
fn chart_operator_args() -> Option<Vec<String>> {
    let helm = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("helm"))
                .find(|p| p.is_file())
        })
        .or_else(|| {
            let p = workspace().join("target/tools/bin/helm");
            p.is_file().then_some(p)
        })?;
    let out = Command::new(helm)
        .args([
            "template",
            "portway",
            &workspace().join("charts/portway").display().to_string(),
            "--show-only",
            "templates/deployment.yaml",
            "--set",
            "clusterCIDR.default.enabled=true,clusterCIDR.default.ipv4=10.244.0.0/16",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).ok()?;
    let args = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")?
        .pointer("/spec/template/spec/containers/0/args")?
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_owned())
        .collect();
    Some(args)
}

// ---------------------------------------------------------------------------------------------
// The agent image in network namespaces.

const CLIENT_IP: &str = "10.251.1.2";
const POD_IP_CLIENT_SIDE: &str = "10.251.1.1";
const POD_IP_BACKEND_SIDE: &str = "10.251.2.1";
const BACKEND_IP: &str = "10.251.2.2";
const TCP_HOST_PORT: u16 = 18080;
const TCP_SERVICE_PORT: u16 = 8080;
const UDP_HOST_PORT: u16 = 18053;
const UDP_SERVICE_PORT: u16 = 5353;

/// client netns <-veth-> "pod" netns (the agent) <-veth-> backend netns; removed on drop.
struct Topology {
    client: String,
    pod: String,
    backend: String,
}

impl Topology {
    fn new(tag: &str) -> Self {
        let id = uid();
        let t = Self {
            client: format!("pwi-{id}-{tag}c"),
            pod: format!("pwi-{id}-{tag}p"),
            backend: format!("pwi-{id}-{tag}b"),
        };
        t.remove();
        for ns in [&t.client, &t.pod, &t.backend] {
            ok("ip", &["netns", "add", ns]);
        }
        let (c, pc, pb, b) = (
            format!("pwi{id}{tag}c"),
            format!("pwi{id}{tag}x"),
            format!("pwi{id}{tag}y"),
            format!("pwi{id}{tag}b"),
        );
        let ip = |ns: &str, args: &[&str]| {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            ok("ip", &all);
        };
        ip(
            &t.client,
            &[
                "link", "add", &c, "type", "veth", "peer", "name", &pc, "netns", &t.pod,
            ],
        );
        ip(
            &t.backend,
            &[
                "link", "add", &b, "type", "veth", "peer", "name", &pb, "netns", &t.pod,
            ],
        );
        ip(
            &t.client,
            &["addr", "add", &format!("{CLIENT_IP}/24"), "dev", &c],
        );
        ip(
            &t.pod,
            &[
                "addr",
                "add",
                &format!("{POD_IP_CLIENT_SIDE}/24"),
                "dev",
                &pc,
            ],
        );
        ip(
            &t.pod,
            &[
                "addr",
                "add",
                &format!("{POD_IP_BACKEND_SIDE}/24"),
                "dev",
                &pb,
            ],
        );
        ip(
            &t.backend,
            &["addr", "add", &format!("{BACKEND_IP}/24"), "dev", &b],
        );
        for (ns, dev) in [
            (&t.client, &c),
            (&t.pod, &pc),
            (&t.pod, &pb),
            (&t.backend, &b),
        ] {
            ip(ns, &["link", "set", dev, "up"]);
            ip(ns, &["link", "set", "lo", "up"]);
        }
        ip(
            &t.client,
            &["route", "add", "default", "via", POD_IP_CLIENT_SIDE],
        );
        ip(
            &t.backend,
            &["route", "add", "default", "via", POD_IP_BACKEND_SIDE],
        );
        t
    }

    fn remove(&self) {
        for ns in [&self.client, &self.pod, &self.backend] {
            let _ = run("ip", &["netns", "delete", ns]);
        }
    }

    fn path(ns: &str) -> String {
        format!("/run/netns/{ns}")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `f` on a new thread that has joined network namespace `ns` (only that thread moves).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<std::io::Result<T>> {
    let path = Topology::path(ns);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    })
}

/// TCP and UDP servers in the backend netns that answer `backend saw <peer>`; stop on drop.
struct Backend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Backend {
    fn start(ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let tx = ready_tx.clone();
        let tcp = in_netns(ns, move || {
            let listener =
                std::net::TcpListener::bind((BACKEND_IP, TCP_SERVICE_PORT)).expect("bind tcp");
            listener.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 64];
                        let _ = conn.read(&mut buf);
                        let _ = conn.write_all(format!("backend saw {}", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        let s = stop.clone();
        let udp = in_netns(ns, move || {
            let sock = UdpSocket::bind((BACKEND_IP, UDP_SERVICE_PORT)).expect("bind udp");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            let _ = ready_tx.send(());
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("backend saw {}", peer.ip()).as_bytes(), peer);
                }
            }
        });
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("backend servers start");
        }
        Self {
            stop,
            threads: vec![tcp, udp],
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TCP exchange from the client netns to `addr`; the backend's answer.
fn tcp_from(ns: &str, addr: SocketAddr) -> Result<String, String> {
    in_netns(ns, move || -> Result<String, String> {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        conn.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        Ok(answer)
    })
    .join()
    .map_err(|_| "client thread panicked".to_owned())?
    .map_err(|e| format!("setns: {e}"))?
}

/// One UDP exchange from the client netns to `addr`.
fn udp_from(ns: &str, addr: SocketAddr) -> Result<String, String> {
    in_netns(ns, move || -> Result<String, String> {
        let sock = UdpSocket::bind((CLIENT_IP, 0)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        sock.send_to(b"ping", addr).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let (n, _) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("no UDP answer from {addr}: {e}"))?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .join()
    .map_err(|_| "client thread panicked".to_owned())?
    .map_err(|e| format!("setns: {e}"))?
}

/// The Service the agent forwards: TCP 18080 -> 10.251.2.2:8080, UDP 18053 -> 10.251.2.2:5353
/// (the backend stands in for the Service's cluster IP; no kube-proxy here).
fn spec_yaml() -> String {
    format!(
        "apiVersion: portway.dev/v1alpha1
kind: ServiceLoadBalancer
metadata:
  name: web
  namespace: pwi
spec:
  pool: default
  dataplane: Pod
  externalTrafficPolicy: Cluster
  clusterIPs: [{BACKEND_IP}]
  ipFamilies: [IPv4]
  ports:
  - {{name: http, protocol: TCP, port: {TCP_SERVICE_PORT}, hostPort: {TCP_HOST_PORT}}}
  - {{name: dns, protocol: UDP, port: {UDP_SERVICE_PORT}, hostPort: {UDP_HOST_PORT}}}
"
    )
}

/// A running agent container; removed (`podman rm -f`) on drop.
struct AgentContainer {
    name: String,
}

impl AgentContainer {
    fn start(image: &str, topo: &Topology, spec_dir: &Path, caps: &[&str], iptables: &str) -> Self {
        let name = format!("pwi-agent-{}-{}", uid(), iptables);
        let _ = run("podman", &["rm", "-f", &name]);
        let network = format!("ns:{}", Topology::path(&topo.pod));
        let volume = format!("{}:/spec:ro", spec_dir.display());
        let pod_ips = format!("{POD_IP_CLIENT_SIDE},{POD_IP_BACKEND_SIDE}");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &network,
            "--read-only",
            "--security-opt",
            "no-new-privileges",
            "--cap-drop=ALL",
        ];
        let cap_args: Vec<String> = caps.iter().map(|c| format!("--cap-add={c}")).collect();
        args.extend(cap_args.iter().map(String::as_str));
        args.extend([
            "-v",
            &volume,
            image,
            "run",
            "--spec-file",
            "/spec/web.yaml",
            "--node",
            "pwi-node",
            "--pod-ips",
            &pod_ips,
            "--iptables",
            iptables,
            "--state-dir",
            "/run/portway",
        ]);
        ok("podman", &args);
        Self { name }
    }

    fn ready(&self) -> bool {
        run(
            "podman",
            &["exec", &self.name, "portway-agent", "probe", "ready"],
        )
        .status
        .success()
    }

    fn logs(&self) -> String {
        let out = run("podman", &["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `podman stop` (SIGTERM, then SIGKILL after 20 s); true when it exited 0.
    fn stop(&self) -> bool {
        let _ = run("podman", &["stop", "-t", "20", &self.name]);
        let code = ok(
            "podman",
            &["inspect", "--format", "{{.State.ExitCode}}", &self.name],
        );
        code.trim() == "0"
    }
}

impl Drop for AgentContainer {
    fn drop(&mut self) {
        let _ = run("podman", &["rm", "-f", &self.name]);
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Portway's rules in the pod netns, as `<variant>-save` shows them.
fn portway_rules(ns: &str, save: &str) -> Vec<String> {
    let out = run("ip", &["netns", "exec", ns, save]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("PORTWAY"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn agent_image_forwards_with_net_admin_only_and_cleans_up() {
    const TEST: &str = "agent_image_forwards_with_net_admin_only_and_cleans_up";
    let _finished = Finished;
    let Some(images) = images_or_skip(TEST) else {
        return;
    };
    let spec_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(spec_dir.path().join("web.yaml"), spec_yaml()).expect("spec");
    let tcp_addr: SocketAddr = format!("{POD_IP_CLIENT_SIDE}:{TCP_HOST_PORT}")
        .parse()
        .expect("addr");
    let udp_addr: SocketAddr = format!("{POD_IP_CLIENT_SIDE}:{UDP_HOST_PORT}")
        .parse()
        .expect("addr");

    // (iptables variant, capabilities, expected to forward)
    let runs: [(&str, &[&str], bool); 3] = [
        ("auto", &["NET_ADMIN"], true),
        ("legacy", &["NET_ADMIN", "NET_RAW"], true),
        ("legacy", &["NET_ADMIN"], false),
    ];
    for (i, (variant, caps, forwards)) in runs.into_iter().enumerate() {
        let what = format!("--iptables {variant} with {caps:?}");
        let topo = Topology::new(&i.to_string());
        let _backend = Backend::start(&topo.backend);
        // Without the agent nothing listens on the pod's address.
        assert!(
            tcp_from(&topo.client, tcp_addr).is_err(),
            "{what}: port open before the agent"
        );

        let agent = AgentContainer::start(&images.agent, &topo, spec_dir.path(), caps, variant);
        let ready = wait_until(Duration::from_secs(20), || agent.ready());
        if !forwards {
            assert!(
                !ready,
                "{what}: ready although iptables-legacy has no NET_RAW"
            );
            assert!(
                tcp_from(&topo.client, tcp_addr).is_err(),
                "{what}: forwarded"
            );
            report::line(&format!(
                "{TEST}: {what}: not ready, nothing forwarded (iptables-legacy needs NET_RAW)"
            ));
            continue;
        }
        assert!(
            ready,
            "{what}: agent not ready in 20 s; logs:\n{}",
            agent.logs()
        );
        let answer = tcp_from(&topo.client, tcp_addr)
            .unwrap_or_else(|e| panic!("{what}: TCP: {e}; logs:\n{}", agent.logs()));
        // Pod dataplane masquerades: the backend sees the pod's address, not the client's.
        assert_eq!(
            answer,
            format!("backend saw {POD_IP_BACKEND_SIDE}"),
            "{what}"
        );
        let answer = udp_from(&topo.client, udp_addr)
            .unwrap_or_else(|e| panic!("{what}: UDP: {e}; logs:\n{}", agent.logs()));
        assert_eq!(
            answer,
            format!("backend saw {POD_IP_BACKEND_SIDE}"),
            "{what}"
        );
        let save = if variant == "legacy" {
            "iptables-legacy-save"
        } else {
            "iptables-nft-save"
        };
        let rules = portway_rules(&topo.pod, save);
        assert!(!rules.is_empty(), "{what}: no PORTWAY rules in {save}");

        assert!(
            agent.stop(),
            "{what}: the agent did not exit cleanly on SIGTERM:\n{}",
            agent.logs()
        );
        for save in ["iptables-nft-save", "iptables-legacy-save"] {
            let left = portway_rules(&topo.pod, save);
            assert!(left.is_empty(), "{what}: left behind in {save}: {left:?}");
        }
        assert!(
            tcp_from(&topo.client, tcp_addr).is_err(),
            "{what}: still forwarding after stop"
        );
        report::line(&format!(
            "{TEST}: {what}: TCP and UDP forwarded, {} rules, none left after SIGTERM",
            rules.len()
        ));
    }
}
