//! Real-kernel test kit: network namespaces with veths, servers and clients inside them, the
//! agent binary run in local mode, and rule inspection. Everything is bounded in time and
//! removed by Drop guards. Names start with `pwa`.
//!
//! Shared by the integration tests and the `dataplane` bench (`#[path]` include), so some items
//! are unused in some of them.
#![allow(dead_code)]

pub mod handover;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portway_node_agent::dataplane::iptables::render::{self, ChainNames};
use portway_node_agent::dataplane::iptables::save;
use portway_node_agent::rules::{self, Context};

/// The agent binary under test: cargo's own in the node agent's tests and bench; in another
/// package that includes this kit with `#[path]` (the e2e crate), `portway-agent` in the target
/// folder of the running test (`cargo build -p portway-node-agent` puts it there). It may not
/// exist there; callers outside this package check.
pub fn agent_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_portway-agent") {
        Some(bin) => PathBuf::from(bin),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("portway-agent")))
            .unwrap_or_else(|| PathBuf::from("portway-agent")),
    }
}

/// Why real-kernel tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: network namespaces and iptables need uid 0".into());
    }
    if !runs("ip", &["-V"]) {
        return Some("`ip` (iproute2) is not installed".into());
    }
    if backends().is_empty() {
        return Some("neither iptables-legacy nor iptables-nft tools work here".into());
    }
    None
}

/// Prints a line that stays visible in `cargo test` output: libtest captures `print!`, not
/// direct writes to the process's stderr. For skip reasons and summary lines.
pub fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Skips the calling test with a printed reason (returns true when it must stop).
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(reason) => {
            note(&format!("SKIP {test}: {reason}"));
            true
        }
        None => false,
    }
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// iptables variants whose tools run here (`legacy`, `nft`).
pub fn backends() -> Vec<&'static str> {
    ["legacy", "nft"]
        .into_iter()
        .filter(|m| {
            runs(&format!("iptables-{m}-restore"), &["--version"])
                && runs(&format!("ip6tables-{m}-restore"), &["--version"])
        })
        .collect()
}

/// Runs a command, panicking with its output when it fails (test setup).
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique short tag for names: `pwa<pid mod 10^5>x<n>`.
pub fn unique_tag() -> String {
    format!(
        "pwa{}x{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A network namespace, deleted (with every process in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        sh("ip", &["netns", "add", name]);
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// `ip netns exec <ns> program args`, returning the output whatever the status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        Command::new("ip")
            .args(&all)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {program}: {e}"))
    }

    /// Sets a sysctl inside the netns.
    pub fn sysctl(&self, key: &str, value: &str) {
        let out = self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]);
        assert!(
            out.status.success(),
            "sysctl {key}={value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `f` on a thread that has entered network namespace `ns` (sockets created there stay
/// in that namespace).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("thread in netns {ns} panicked"))
}

/// Addresses of the three-namespace topology.
pub mod addr {
    pub const CLIENT4: &str = "10.71.1.2";
    pub const CLIENT4_DENIED: &str = "10.71.1.3";
    pub const NODE4: &str = "10.71.1.1";
    pub const NODE4_INNER: &str = "10.71.2.1";
    pub const BACKEND4: &str = "10.71.2.2";
    pub const CLIENT6: &str = "fd71:1::2";
    pub const CLIENT6_DENIED: &str = "fd71:1::3";
    pub const NODE6: &str = "fd71:1::1";
    pub const NODE6_INNER: &str = "fd71:2::1";
    pub const BACKEND6: &str = "fd71:2::2";
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// client <-> node (the agent's netns: the pod's or the node's) <-> backend.
pub struct Topology {
    pub tag: String,
    // Field order = drop order: namespaces go after everything that uses them.
    pub client: Netns,
    pub node: Netns,
    pub backend: Netns,
}

/// Forwarding settings of the node netns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeForwarding {
    /// Like a Kubernetes node: IPv4 and IPv6 forwarding on.
    On,
    /// Like a fresh pod netns: both off (the agent must turn them on).
    Off,
}

impl Topology {
    /// Deletes the backend netns (its veth, and so the node's `n1` with its addresses, go
    /// with it), as when the Service's pod vanishes.
    pub fn delete_backend(&mut self) {
        let old = std::mem::replace(
            &mut self.backend,
            Netns {
                name: String::new(),
            },
        );
        drop(old);
    }

    /// Recreates the backend netns and its link to the node.
    pub fn recreate_backend(&mut self) {
        let name = format!("{}b", self.tag);
        self.backend = Netns::new(&name);
        let backend = &self.backend;
        let node = &self.node;
        backend.ip(&[
            "link", "add", "b0", "type", "veth", "peer", "name", "n1", "netns", &node.name,
        ]);
        backend.ip(&[
            "addr",
            "add",
            &format!("{}/24", addr::BACKEND4),
            "dev",
            "b0",
        ]);
        backend.ip(&[
            "addr",
            "add",
            &format!("{}/64", addr::BACKEND6),
            "dev",
            "b0",
            "nodad",
        ]);
        backend.ip(&["link", "set", "b0", "up"]);
        node.ip(&[
            "addr",
            "add",
            &format!("{}/24", addr::NODE4_INNER),
            "dev",
            "n1",
        ]);
        node.ip(&[
            "addr",
            "add",
            &format!("{}/64", addr::NODE6_INNER),
            "dev",
            "n1",
            "nodad",
        ]);
        node.ip(&["link", "set", "n1", "up"]);
        backend.ip(&["route", "add", "default", "via", addr::NODE4_INNER]);
        backend.ip(&["-6", "route", "add", "default", "via", addr::NODE6_INNER]);
        node.sysctl("net.ipv4.conf.n1.forwarding", "1");
        backend.sysctl("net.ipv4.conf.all.rp_filter", "0");
    }

    pub fn new(forwarding: NodeForwarding) -> Self {
        let tag = unique_tag();
        let client = Netns::new(&format!("{tag}c"));
        let node = Netns::new(&format!("{tag}n"));
        let backend = Netns::new(&format!("{tag}b"));
        // veths are created inside the namespaces, so their names cannot collide with
        // anything on the host.
        client.ip(&[
            "link", "add", "c0", "type", "veth", "peer", "name", "n0", "netns", &node.name,
        ]);
        backend.ip(&[
            "link", "add", "b0", "type", "veth", "peer", "name", "n1", "netns", &node.name,
        ]);
        for (ns, dev, addrs) in [
            (
                &client,
                "c0",
                vec![
                    format!("{}/24", addr::CLIENT4),
                    format!("{}/24", addr::CLIENT4_DENIED),
                    format!("{}/64", addr::CLIENT6),
                    format!("{}/64", addr::CLIENT6_DENIED),
                ],
            ),
            (
                &node,
                "n0",
                vec![format!("{}/24", addr::NODE4), format!("{}/64", addr::NODE6)],
            ),
            (
                &node,
                "n1",
                vec![
                    format!("{}/24", addr::NODE4_INNER),
                    format!("{}/64", addr::NODE6_INNER),
                ],
            ),
            (
                &backend,
                "b0",
                vec![
                    format!("{}/24", addr::BACKEND4),
                    format!("{}/64", addr::BACKEND6),
                ],
            ),
        ] {
            for a in addrs {
                if a.contains(':') {
                    ns.ip(&["addr", "add", &a, "dev", dev, "nodad"]);
                } else {
                    ns.ip(&["addr", "add", &a, "dev", dev]);
                }
            }
            ns.ip(&["link", "set", dev, "up"]);
        }
        client.ip(&["route", "add", "default", "via", addr::NODE4]);
        client.ip(&["-6", "route", "add", "default", "via", addr::NODE6]);
        backend.ip(&["route", "add", "default", "via", addr::NODE4_INNER]);
        backend.ip(&["-6", "route", "add", "default", "via", addr::NODE6_INNER]);
        let on = if forwarding == NodeForwarding::On {
            "1"
        } else {
            "0"
        };
        // New namespaces inherit IPv4 settings from the host; set them explicitly.
        node.sysctl("net.ipv4.conf.all.forwarding", on);
        node.sysctl("net.ipv4.conf.default.forwarding", on);
        node.sysctl("net.ipv4.conf.n0.forwarding", on);
        node.sysctl("net.ipv4.conf.n1.forwarding", on);
        node.sysctl("net.ipv6.conf.all.forwarding", on);
        for ns in [&client, &node, &backend] {
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
        }
        Self {
            tag,
            client,
            node,
            backend,
        }
    }
}

/// A TCP server in a netns that answers each connection with `<peer ip>\n` and then echoes
/// every byte (so a connection can be kept open and checked later). Stops on drop.
pub struct TcpServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    pub fn start(ns: &str, addr: SocketAddr) -> Self {
        let listener = in_netns(ns, move || {
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let s2 = s.clone();
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                            let _ = conn.write_all(format!("{}\n", peer.ip()).as_bytes());
                            let mut buf = [0u8; 65536];
                            while !s2.load(Ordering::SeqCst) {
                                match conn.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if conn.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP server in a netns that answers each datagram with the sender's IP. Stops on drop.
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    pub fn start(ns: &str, addr: SocketAddr) -> Self {
        let sock = in_netns(ns, move || {
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"))
        });
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(peer.ip().to_string().as_bytes(), peer);
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn socket_for(
    dst: &SocketAddr,
    kind: socket2::Type,
    proto: socket2::Protocol,
) -> std::io::Result<socket2::Socket> {
    let domain = if dst.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    socket2::Socket::new(domain, kind, Some(proto))
}

/// Opens a TCP connection from netns `ns` (optionally from source address `src`) and reads the
/// peer address the server saw.
pub fn tcp_connect(
    ns: &str,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<(TcpStream, String), String> {
    in_netns(ns, move || {
        let sock = socket_for(&dst, socket2::Type::STREAM, socket2::Protocol::TCP)
            .map_err(|e| e.to_string())?;
        if let Some(src) = src {
            sock.bind(&SocketAddr::new(src, 0).into())
                .map_err(|e| format!("bind {src}: {e}"))?;
        }
        sock.connect_timeout(&dst.into(), timeout)
            .map_err(|e| format!("connect {dst}: {e}"))?;
        let mut stream: TcpStream = sock.into();
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 64 {
            match stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) => line.push(byte[0]),
                Ok(_) => return Err(format!("{dst}: closed before the greeting")),
                Err(e) => return Err(format!("{dst}: reading the greeting: {e}")),
            }
        }
        Ok((stream, String::from_utf8_lossy(&line).into_owned()))
    })
}

/// The source address the backend saw for a TCP connection.
pub fn tcp_whoami(
    ns: &str,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<String, String> {
    tcp_connect(ns, src, dst, timeout).map(|(_, peer)| peer)
}

/// Sends `payload` over an open connection and checks it is echoed.
pub fn tcp_echo(stream: &mut TcpStream, payload: &[u8]) -> Result<(), String> {
    stream.write_all(payload).map_err(|e| e.to_string())?;
    let mut got = vec![0u8; payload.len()];
    stream.read_exact(&mut got).map_err(|e| e.to_string())?;
    if got == payload {
        Ok(())
    } else {
        Err("echo mismatch".into())
    }
}

/// The source address the backend saw for a UDP datagram (retries a few times: UDP).
pub fn udp_whoami(
    ns: &str,
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<String, String> {
    in_netns(ns, move || {
        let bind = match (src, dst) {
            (Some(s), _) => SocketAddr::new(s, 0),
            (None, SocketAddr::V4(_)) => "0.0.0.0:0".parse().expect("any"),
            (None, SocketAddr::V6(_)) => "[::]:0".parse().expect("any"),
        };
        let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        let tries = 3u32;
        sock.set_read_timeout(Some(timeout / tries))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 256];
        let mut last = String::new();
        for _ in 0..tries {
            sock.send_to(b"who", dst).map_err(|e| e.to_string())?;
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("udp {dst}: {last}"))
    })
}

/// Polls `f` until it returns Ok or `timeout` passes.
pub fn eventually<T>(
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut last = String::from("never tried");
    while start.elapsed() < timeout {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!("after {timeout:?}: {last}"))
}

/// Writes a file atomically (so the agent never reads half of it).
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The agent binary running in local mode in a netns. Killed on drop.
pub struct AgentProc {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub ns: String,
    pub mode: String,
    pub log: PathBuf,
}

/// How to start an agent.
#[derive(Clone, Debug)]
pub struct AgentOpts {
    pub mode: String,
    pub pod_ips: Vec<String>,
    pub host_ips: Vec<String>,
    pub node: String,
    /// Service name (namespace is always `shop`).
    pub service: String,
    pub extra_env: Vec<(String, String)>,
    pub extra_args: Vec<String>,
    /// Wrap the agent in `unshare -m sh -c "mount --bind -o ro /proc/sys /proc/sys; exec ..."`.
    pub readonly_proc_sys: bool,
}

impl AgentOpts {
    pub fn pod(mode: &str) -> Self {
        Self {
            mode: mode.into(),
            pod_ips: vec![addr::NODE4.into(), addr::NODE6.into()],
            host_ips: vec!["192.0.2.10".into()],
            node: "node-a".into(),
            service: "web".into(),
            extra_env: vec![],
            extra_args: vec![],
            readonly_proc_sys: false,
        }
    }

    pub fn host(mode: &str) -> Self {
        Self {
            host_ips: vec![addr::NODE4.into(), addr::NODE6.into()],
            pod_ips: vec![],
            ..Self::pod(mode)
        }
    }
}

impl AgentProc {
    /// Starts an agent for the spec in `dir/spec.yaml` (and `dir/endpoints.yaml`, if present).
    pub fn start_in(ns: &Netns, dir: tempfile::TempDir, opts: &AgentOpts) -> Self {
        let state = dir.path().join("state");
        let log = dir.path().join(format!(
            "agent-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let mut args: Vec<String> = vec![
            "run".into(),
            "--spec-file".into(),
            dir.path().join("spec.yaml").display().to_string(),
            "--namespace".into(),
            "shop".into(),
            "--service".into(),
            opts.service.clone(),
            "--node".into(),
            opts.node.clone(),
            "--iptables".into(),
            opts.mode.clone(),
            "--state-dir".into(),
            state.display().to_string(),
            "--resync-seconds".into(),
            "1".into(),
            "--poll-ms".into(),
            "50".into(),
            "--pod-ips".into(),
            opts.pod_ips.join(","),
            "--host-ips".into(),
            opts.host_ips.join(","),
        ];
        let eps = dir.path().join("endpoints.yaml");
        if eps.exists() {
            args.push("--endpoints-file".into());
            args.push(eps.display().to_string());
        }
        args.extend(opts.extra_args.iter().cloned());
        let logf = File::create(&log).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name]);
        if opts.readonly_proc_sys {
            let quoted: Vec<String> = std::iter::once(agent_bin().display().to_string())
                .chain(args.iter().cloned())
                .map(|a| format!("'{a}'"))
                .collect();
            cmd.args([
                "unshare",
                "-m",
                "sh",
                "-c",
                &format!(
                    "mount --bind -o ro /proc/sys /proc/sys && exec {}",
                    quoted.join(" ")
                ),
            ]);
        } else {
            cmd.arg(agent_bin()).args(&args);
        }
        cmd.env("RUST_LOG", "portway_node_agent=debug,info")
            .envs(opts.extra_env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf);
        let child = cmd.spawn().expect("start the agent");
        Self {
            child,
            dir,
            ns: ns.name.clone(),
            mode: opts.mode.clone(),
            log,
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the `ready` file exists.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let ready = self.state_dir().join("ready");
        eventually(timeout, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("agent exited: {status}"));
            }
            if ready.exists() {
                Ok(())
            } else {
                Err("not ready".into())
            }
        })
        .map_err(|e| format!("{e}\nlog:\n{}", self.log_text()))
    }

    /// The local status file.
    pub fn status(&self) -> serde_json::Value {
        std::fs::read(self.state_dir().join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The `Forwarding` condition's reason.
    pub fn reason(&self) -> String {
        self.status()["conditions"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn wait_reason(
        &self,
        reason: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        eventually(timeout, || {
            let s = self.status();
            if s["conditions"][0]["reason"] == reason {
                Ok(s)
            } else {
                Err(format!("status {s}"))
            }
        })
        .map_err(|e| format!("{e}\nlog:\n{}", self.log_text()))
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// SIGTERM and wait (bounded) for the exit.
    pub fn sigterm(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.wait_exit(timeout)
    }

    /// SIGKILL and reap.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGHUP (local mode: re-read the files now).
    pub fn sighup(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        );
    }

    /// Hands the state directory over (to restart an agent with the same files).
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.sigkill();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// A temp dir holding `spec.yaml` (and `endpoints.yaml` when given).
pub fn spec_dir(spec: &str, endpoints: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_atomic(&dir.path().join("spec.yaml"), spec);
    if let Some(e) = endpoints {
        write_atomic(&dir.path().join("endpoints.yaml"), e);
    }
    dir
}

/// `iptables-save` (or `ip6tables-save`) of a netns.
pub fn save_text(ns: &str, mode: &str, v6: bool) -> String {
    save_text_with(ns, mode, v6, &[])
}

/// [`save_text`] with extra arguments (e.g. `-c`, `-t nat`).
pub fn save_text_with(ns: &str, mode: &str, v6: bool, args: &[&str]) -> String {
    let tool = if v6 {
        format!("ip6tables-{mode}-save")
    } else {
        format!("iptables-{mode}-save")
    };
    let out = Command::new("ip")
        .args(["netns", "exec", ns, &tool])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lines of both families mentioning Portway (chains, jumps, comments).
pub fn portway_lines(ns: &str, mode: &str) -> Vec<String> {
    [false, true]
        .into_iter()
        .flat_map(|v6| {
            save_text(ns, mode, v6)
                .lines()
                .filter(|l| l.contains("PORTWAY") || l.to_lowercase().contains("portway"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The agent's owned rules in the kernel, both families, as a multiset of
/// `family table chain spec` lines.
pub fn installed(ns: &str, mode: &str) -> BTreeMap<String, usize> {
    installed_for(ns, mode, "web")
}

/// [`installed`] for the agent of Service `shop/<service>`.
pub fn installed_for(ns: &str, mode: &str, service: &str) -> BTreeMap<String, usize> {
    let names = ChainNames::new("PORTWAY", &format!("shop/{service}"));
    let mut out = BTreeMap::new();
    for v6 in [false, true] {
        let state = save::parse(&save_text(ns, mode, v6));
        for (table, chain, spec) in render::owned_rules(&state, &names.owned_prefix()) {
            *out.entry(format!("{} {table} {chain} {spec}", if v6 { 6 } else { 4 }))
                .or_insert(0) += 1;
        }
    }
    out
}

/// The rules the agent must hold for a spec, as the same multiset as [`installed`].
pub fn expected(spec_yaml: &str, ctx: &Context) -> BTreeMap<String, usize> {
    let slb = match portway_node_agent::source::parse_spec_file(spec_yaml, "shop", "web") {
        portway_node_agent::source::SpecState::Present(s) => s,
        other => panic!("bad test spec: {other:?}"),
    };
    let rs = rules::build(&slb.spec, ctx).expect("valid test spec");
    let names = ChainNames::new("PORTWAY", "shop/web");
    let mut out = BTreeMap::new();
    for (family, d) in render::desired_all(&rs, &names) {
        let f = if family == portway_crds::IpFamily::IPv6 {
            6
        } else {
            4
        };
        for (table, t) in &d.tables {
            for (chain, rules) in &t.chains {
                for r in rules {
                    *out.entry(format!("{f} {table} {chain} {r}")).or_insert(0) += 1;
                }
            }
            for j in &t.jumps {
                *out.entry(format!("{f} {table} {} {}", j.from, j.spec))
                    .or_insert(0) += 1;
            }
        }
    }
    out
}

/// A context for [`expected`].
pub fn context(local: &[&str], host_ips: &[&str], slices: Option<&str>) -> Context {
    Context {
        namespace: "shop".into(),
        name: "web".into(),
        node_name: "node-a".into(),
        local_addresses: local.iter().map(|a| ip(a)).collect(),
        host_ips: host_ips.iter().map(|a| ip(a)).collect(),
        endpoint_slices: slices
            .map(|s| portway_node_agent::source::parse_endpoints_file(s).expect("slices"))
            .unwrap_or_default(),
    }
}

/// Waits until the installed rules equal the expected ones.
pub fn wait_converged(
    ns: &str,
    mode: &str,
    want: &BTreeMap<String, usize>,
    timeout: Duration,
) -> Result<(), String> {
    eventually(timeout, || {
        let have = installed(ns, mode);
        if &have == want {
            Ok(())
        } else {
            let missing: Vec<_> = want
                .keys()
                .filter(|k| have.get(*k) != want.get(*k))
                .collect();
            let extra: Vec<_> = have
                .keys()
                .filter(|k| have.get(*k) != want.get(*k))
                .collect();
            Err(format!(
                "missing/miscounted {missing:?}\nextra/miscounted {extra:?}"
            ))
        }
    })
}

/// Number of rule lines that appear more than once.
pub fn duplicates(rules: &BTreeMap<String, usize>) -> usize {
    rules.values().filter(|n| **n > 1).map(|n| n - 1).sum()
}

/// Whether SCTP sockets can be opened here (kernel module present).
pub fn sctp_available() -> Result<(), String> {
    socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::from(libc::IPPROTO_SCTP)),
    )
    .map(|_| ())
    .map_err(|e| format!("the kernel cannot open SCTP sockets ({e})"))
}

/// An SCTP (one-to-one style) server answering each association with `<peer ip>\n`. Only
/// used where [`sctp_available`] is Ok.
pub struct SctpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SctpServer {
    pub fn start(ns: &str, addr: SocketAddr) -> Self {
        let sock = in_netns(ns, move || {
            let s = socket_for(
                &addr,
                socket2::Type::STREAM,
                socket2::Protocol::from(libc::IPPROTO_SCTP),
            )
            .expect("sctp socket");
            s.bind(&addr.into()).expect("bind sctp");
            s.listen(16).expect("listen sctp");
            s.set_nonblocking(true).expect("nonblocking");
            s
        });
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match sock.accept() {
                    Ok((mut conn, peer)) => {
                        let ip = peer
                            .as_socket()
                            .map(|p| p.ip().to_string())
                            .unwrap_or_default();
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(format!("{ip}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SctpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The source address an SCTP server saw.
pub fn sctp_whoami(ns: &str, dst: SocketAddr, timeout: Duration) -> Result<String, String> {
    in_netns(ns, move || {
        let mut sock = socket_for(
            &dst,
            socket2::Type::STREAM,
            socket2::Protocol::from(libc::IPPROTO_SCTP),
        )
        .map_err(|e| e.to_string())?;
        sock.connect_timeout(&dst.into(), timeout)
            .map_err(|e| format!("connect {dst}: {e}"))?;
        sock.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = sock.read(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
    })
}

/// `GET path` over plain HTTP/1.1 from inside netns `ns`; returns the body.
pub fn http_get(ns: &str, addr: SocketAddr, path: &str) -> Result<String, String> {
    let path = path.to_owned();
    in_netns(ns, move || {
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .ok_or_else(|| format!("no HTTP body in {text:?}"))
    })
}

/// The value of one sample line of a Prometheus exposition, e.g.
/// `portway_agent_applies_total{family="IPv4",result="changed"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l[series.len()..].trim().parse().ok())
}

/// A process holding an exclusive flock on `path` (an xtables lock file) until dropped.
pub struct LockHolder {
    child: Child,
}

impl LockHolder {
    pub fn hold(path: &Path) -> Self {
        let child = Command::new("flock")
            .args(["-o", "-x", &path.display().to_string(), "sleep", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("flock");
        // Wait until the lock is really held.
        let held = eventually(Duration::from_secs(5), || {
            let probe = Command::new("flock")
                .args(["-n", "-x", &path.display().to_string(), "true"])
                .status()
                .map_err(|e| e.to_string())?;
            if probe.success() {
                Err("not held yet".into())
            } else {
                Ok(())
            }
        });
        held.expect("the lock is held");
        Self { child }
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Child process ids of `pid` (all threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

/// The command line of a process.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}
