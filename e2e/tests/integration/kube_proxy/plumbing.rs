//! kube-proxy as a child process in the node netns, its `iptables` tools, and the relay that
//! lets it reach the API server on the root netns' loopback.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use portway_e2e::envtest::process::ManagedProcess;
use portway_e2e::report;

use super::support;
use super::{CLUSTER_CIDR, NODE, SYNC_PERIOD};

/// A folder of `iptables`, `iptables-save`, ... (both families) linking to the `variant` tools,
/// to put first on kube-proxy's `PATH` (the xtables multi-binaries act on their `argv[0]`).
pub(super) fn iptables_tools(dir: &Path, variant: &str) -> PathBuf {
    let tools = dir.join(format!("iptables-{variant}-tools"));
    std::fs::create_dir_all(&tools).expect("tools dir");
    for family in ["iptables", "ip6tables"] {
        for suffix in ["", "-save", "-restore"] {
            let target = which(&format!("{family}-{variant}{suffix}"));
            std::os::unix::fs::symlink(&target, tools.join(format!("{family}{suffix}")))
                .unwrap_or_else(|e| panic!("linking {}: {e}", target.display()));
        }
    }
    tools
}

/// `program`'s path on `PATH`.
fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// kube-proxy in iptables mode in the node netns, its process group stopped on drop.
pub(super) struct KubeProxy {
    test: &'static str,
    process: ManagedProcess,
    log: PathBuf,
}

impl KubeProxy {
    pub(super) fn start(
        test: &'static str,
        ns: &str,
        bin: &Path,
        kubeconfig: &Path,
        tools: &Path,
        log: &Path,
    ) -> Self {
        let path = std::env::var("PATH").unwrap_or_default();
        let args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            ns.into(),
            "env".into(),
            format!("PATH={}:{path}", tools.display()),
            bin.display().to_string(),
            "--proxy-mode=iptables".into(),
            format!("--hostname-override={NODE}"),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            format!("--iptables-sync-period={}s", SYNC_PERIOD.as_secs()),
            "--iptables-min-sync-period=0s".into(),
            "--conntrack-max-per-core=0".into(),
            "--conntrack-tcp-timeout-established=0s".into(),
            "--conntrack-tcp-timeout-close-wait=0s".into(),
            // Its own netns: these ports clash with nothing (port 0 is refused).
            "--metrics-bind-address=127.0.0.1:10249".into(),
            "--healthz-bind-address=127.0.0.1:10256".into(),
            "-v=2".into(),
        ];
        let process = ManagedProcess::spawn("kube-proxy", Path::new("ip"), &args, log)
            .unwrap_or_else(|e| panic!("starting kube-proxy: {e}"));
        Self {
            test,
            process,
            log: log.to_owned(),
        }
    }

    pub(super) fn running(&mut self) -> Result<(), String> {
        match self.process.exit_status() {
            None => Ok(()),
            Some(status) => Err(format!("kube-proxy exited: {status}")),
        }
    }

    /// kube-proxy's log so far (empty while it cannot be read).
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every started sync has completed.
    pub(super) fn idle(&self) -> bool {
        let log = self.log_text();
        log.matches("Syncing iptables rules").count()
            == log.matches("SyncProxyRules complete").count()
    }

    /// Started full syncs (`fullSync=true`).
    pub(super) fn full_syncs(&self) -> usize {
        self.log_text().matches("fullSync=true").count()
    }

    /// Completed rule syncs so far (`SyncProxyRules complete`, one per family and sync).
    pub(super) fn syncs(&self) -> usize {
        self.log_text().matches("SyncProxyRules complete").count()
    }

    /// Whether kube-proxy found its canary chain gone (someone flushed its tables).
    pub(super) fn saw_flush(&self) -> bool {
        self.log_text().contains("canary deleted")
    }

    pub(super) fn tail(&self) -> String {
        format!("kube-proxy log tail:\n{}", self.process.log_tail(40))
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            report::line(&format!("{}: {}", self.test, self.tail()));
        }
        self.process.stop();
    }
}

/// A TCP relay from 127.0.0.1:<port> in a netns to an address in the root netns (for
/// kube-proxy, whose API server listens on the root netns' loopback). Stops on drop.
pub(super) struct Relay {
    pub(super) port: u16,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub(super) fn start(ns: &str, upstream: SocketAddr) -> Self {
        let listener = support::in_netns(ns, || {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("relay bind in the node netns")
        });
        listener.set_nonblocking(true).expect("relay nonblocking");
        let port = listener.local_addr().expect("relay port").port();
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, o) = (stop.clone(), open.clone());
        // Spawned from the test thread: upstream connections are made in the root netns.
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
                        else {
                            continue;
                        };
                        let _ = down.set_nonblocking(false);
                        if let Ok(mut list) = o.lock() {
                            list.extend(down.try_clone().ok());
                            list.extend(up.try_clone().ok());
                        }
                        pipe(&down, &up);
                        pipe(&up, &down);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            port,
            stop,
            open,
            thread: Some(thread),
        }
    }
}

/// Copies `from` to `to` on a thread until EOF or an error, then shuts `to`'s write side.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(list) = self.open.lock() {
            for s in list.iter() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}
