//! The real node agent's control loop in-process, minus the kernel: `portway_node_agent`'s
//! watch source (`kube_source`: its ServiceLoadBalancer by name, its EndpointSlices by label),
//! its reconcile loop (`agent::run`: pure rules, then the dataplane, then its status entry) and
//! its status sink (`KubeStatus`: server-side apply of its own `status.nodes` entry), with a
//! dataplane that records the rule sets instead of calling iptables and a network that reports
//! fixed addresses with forwarding on. Used where the agent's API access is the point (RBAC, the
//! admission policy, the operator reading the reports); its forwarding is tested for real in
//! network namespaces by the node-agent crate.
//!
//! Like [`crate::operator::Operator`] it runs on its own thread and runtime; dropping it stops it.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portway_crds::{DataplaneMode, IpFamily};
use portway_node_agent::agent::{Agent, AgentConfig, NetEnv, Stopped, run};
use portway_node_agent::dataplane::{
    ApplyReport, Dataplane, DataplaneError, FamilyReport, RuleCounter,
};
use portway_node_agent::forwarding::{FamilyState, ForwardingReport};
use portway_node_agent::handover::{self, lookup::KubeLookup};
use portway_node_agent::metrics::Metrics;
use portway_node_agent::net::Served;
use portway_node_agent::rules::RuleSet;
use portway_node_agent::source::kube_source;
use portway_node_agent::status::KubeStatus;
use tokio::sync::{mpsc, oneshot};

use crate::envtest::clients::ClientSpec;
use crate::report;

/// How long a stopping agent may take (it reads its ServiceLoadBalancer, then leaves its rules
/// or removes them and reports `ShuttingDown`).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Rule sets the agent asked its dataplane for, in order.
#[derive(Clone, Debug, Default)]
pub struct Applied(Arc<Mutex<Vec<RuleSet>>>);

impl Applied {
    fn push(&self, rules: RuleSet) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(rules);
    }

    /// Every rule set applied so far (the last one is what the kernel would hold).
    pub fn all(&self) -> Vec<RuleSet> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A dataplane that accepts every rule set and records it.
struct RecordingDataplane {
    applied: Applied,
}

impl Dataplane for RecordingDataplane {
    async fn apply(&mut self, rules: &RuleSet) -> Result<ApplyReport, DataplaneError> {
        let changed = self.applied.all().last() != Some(rules);
        self.applied.push(rules.clone());
        Ok(ApplyReport {
            families: rules
                .families
                .iter()
                .map(|f| FamilyReport {
                    family: Some(f.family),
                    changed,
                    ..FamilyReport::default()
                })
                .collect(),
        })
    }

    async fn cleanup(&mut self) -> Result<ApplyReport, DataplaneError> {
        Ok(ApplyReport::default())
    }

    async fn counters(&mut self) -> Result<Vec<RuleCounter>, DataplaneError> {
        Ok(Vec::new())
    }

    fn describe(&self) -> String {
        "recording (no kernel)".to_owned()
    }
}

/// A network namespace holding exactly the configured addresses, forwarding on.
struct FixedNet;

impl NetEnv for FixedNet {
    async fn served(
        &mut self,
        _mode: DataplaneMode,
        configured: &[IpAddr],
    ) -> Result<Served, String> {
        Ok(Served {
            addresses: configured.to_vec(),
            missing: Vec::new(),
        })
    }

    async fn forwarding(
        &mut self,
        _served: &[IpAddr],
        families: &[IpFamily],
        _may_change: bool,
    ) -> ForwardingReport {
        ForwardingReport {
            families: families.iter().map(|f| (*f, FamilyState::On)).collect(),
        }
    }
}

/// One agent: of Service `namespace/name` on `node`.
pub struct NodeAgent {
    node: String,
    applied: Applied,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Option<Stopped>>>,
}

impl NodeAgent {
    /// Starts the agent of Service `namespace/name` on `node` with a client from `client` (for
    /// the real thing: a token bound to the agent's Pod), forwarding from `pod_ips`.
    pub fn start(
        client: ClientSpec,
        namespace: &str,
        name: &str,
        node: &str,
        pod_ips: Vec<IpAddr>,
    ) -> std::io::Result<Self> {
        let applied = Applied::default();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let cfg = AgentConfig {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            pod_ips,
            host_ips: Vec::new(),
            resync: Duration::from_secs(60),
            heartbeat: Duration::from_secs(10),
            // The dataplane of its first rules (the Service's pool decides it).
            dataplane: None,
            exit: handover::Policy::default(),
        };
        let dataplane = RecordingDataplane {
            applied: applied.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("agent-{node}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                let result = runtime.block_on(async move {
                    let client = client.build().ok()?;
                    let metrics = Arc::new(Metrics::new().ok()?);
                    let sink =
                        KubeStatus::new(client.clone(), &cfg.namespace, &cfg.name, &cfg.node);
                    let (tx, rx) = mpsc::channel(16);
                    let lookup = KubeLookup::new(client.clone(), &cfg.namespace, &cfg.name);
                    kube_source(client, &cfg.namespace, &cfg.name, tx);
                    let agent = Agent::new(cfg, dataplane, sink, FixedNet, None, metrics);
                    let shutdown = async {
                        let _ = stop_rx.await;
                    };
                    Some(run(agent, rx, None, shutdown, lookup, false).await)
                });
                runtime.shutdown_background();
                result
            })?;
        Ok(Self {
            node: node.to_owned(),
            applied,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The rule sets applied so far.
    pub fn applied(&self) -> Vec<RuleSet> {
        self.applied.all()
    }

    /// Stops it as SIGTERM does: it reads its ServiceLoadBalancer and leaves its rules to a
    /// successor (its node is still a target) or removes them and reports `ShuttingDown`.
    /// Returns how it stopped (`None`: it never got going, e.g. no client).
    pub async fn stop(mut self) -> Option<Stopped> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let started = Instant::now();
        while self.thread.as_ref().is_some_and(|t| !t.is_finished())
            && started.elapsed() < STOP_TIMEOUT
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match self.thread.take() {
            Some(t) if t.is_finished() => t.join().ok().flatten(),
            Some(t) => {
                self.thread = Some(t);
                None
            }
            None => None,
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(thread) = self.thread.take() else {
            return;
        };
        let started = Instant::now();
        while !thread.is_finished() && started.elapsed() < STOP_TIMEOUT {
            std::thread::sleep(Duration::from_millis(20));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            report::line(&format!(
                "agent on {}: did not stop within {STOP_TIMEOUT:?}; its thread is left behind",
                self.node
            ));
        }
    }
}
