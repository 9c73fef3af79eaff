//! The agent as the tests run it: its image in a podman container in the "pod" netns, or one
//! architecture's binary under qemu-user directly in that netns (with the host's iptables tools).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::build::{Arch, ok, run, uid};
use super::netns::{POD_IP_BACKEND_SIDE, POD_IP_CLIENT_SIDE, Topology};

/// A running agent container; removed (`podman rm -f`) on drop.
pub struct AgentContainer {
    name: String,
}

impl AgentContainer {
    pub fn start(
        image: &str,
        topo: &Topology,
        spec_dir: &Path,
        caps: &[&str],
        iptables: &str,
    ) -> Self {
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

    pub fn ready(&self) -> bool {
        run(
            "podman",
            &["exec", &self.name, "portway-agent", "probe", "ready"],
        )
        .status
        .success()
    }

    pub fn logs(&self) -> String {
        let out = run("podman", &["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `podman stop` (SIGTERM, then SIGKILL after 20 s); true when it exited 0.
    pub fn stop(&self) -> bool {
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

/// `portway-agent` of another architecture run by qemu-user in the pod netns, in local mode, with
/// this machine's iptables tools (those of the other architecture's image cannot reach the kernel
/// under qemu-user: see the cross-architecture image test). Killed on drop.
pub struct QemuAgent {
    child: Child,
    state: tempfile::TempDir,
    log: PathBuf,
}

impl QemuAgent {
    pub fn start(arch: Arch, bin: &Path, topo: &Topology, spec: &Path) -> Self {
        let state = tempfile::tempdir().expect("state dir");
        let log = state.path().join("agent.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let pod_ips = format!("{POD_IP_CLIENT_SIDE},{POD_IP_BACKEND_SIDE}");
        let child = Command::new("ip")
            .args(["netns", "exec", &topo.pod, &arch.qemu()])
            .arg(bin)
            .args(["run", "--spec-file"])
            .arg(spec)
            .args(["--node", "pwi-node", "--pod-ips", &pod_ips])
            .args(["--iptables", "auto", "--state-dir"])
            .arg(state.path().join("run"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} {}: {e}", arch.qemu(), bin.display()));
        Self { child, state, log }
    }

    pub fn ready(&self) -> bool {
        self.state.path().join("run/ready").exists()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then up to 20 s for a clean exit; true when it exited 0.
    pub fn stop(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for QemuAgent {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
