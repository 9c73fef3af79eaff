//! The agent's surroundings in network namespaces: a client, the "pod" the agent runs in, and a
//! backend, with TCP and UDP servers and clients; and the Service the agent forwards.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::build::{ok, run, uid};

pub const CLIENT_IP: &str = "10.251.1.2";
pub const POD_IP_CLIENT_SIDE: &str = "10.251.1.1";
pub const POD_IP_BACKEND_SIDE: &str = "10.251.2.1";
pub const BACKEND_IP: &str = "10.251.2.2";
pub const TCP_HOST_PORT: u16 = 18080;
pub const TCP_SERVICE_PORT: u16 = 8080;
pub const UDP_HOST_PORT: u16 = 18053;
pub const UDP_SERVICE_PORT: u16 = 5353;

/// client netns <-veth-> "pod" netns (the agent) <-veth-> backend netns; removed on drop.
pub struct Topology {
    pub client: String,
    pub pod: String,
    pub backend: String,
}

impl Topology {
    pub fn new(tag: &str) -> Self {
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

    pub fn path(ns: &str) -> String {
        format!("/run/netns/{ns}")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `f` on a new thread that has joined network namespace `ns` (only that thread moves).
pub fn in_netns<T: Send + 'static>(
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
pub struct Backend {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Backend {
    pub fn start(ns: &str) -> Self {
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
pub fn tcp_from(ns: &str, addr: SocketAddr) -> Result<String, String> {
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
pub fn udp_from(ns: &str, addr: SocketAddr) -> Result<String, String> {
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
pub fn spec_yaml() -> String {
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

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Portway's rules in the netns `ns`, as the host's `<variant>-save` shows them.
pub fn portway_rules(ns: &str, save: &str) -> Vec<String> {
    let out = run("ip", &["netns", "exec", ns, save]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("PORTWAY"))
        .map(str::to_owned)
        .collect()
}

/// The client-side addresses of the Service's TCP and UDP host ports.
pub fn service_addrs() -> (SocketAddr, SocketAddr) {
    let ip: std::net::IpAddr = POD_IP_CLIENT_SIDE.parse().expect("a constant address");
    (
        SocketAddr::new(ip, TCP_HOST_PORT),
        SocketAddr::new(ip, UDP_HOST_PORT),
    )
}
