//! The agent's loop: fold watch updates into what is observed, reconcile (pure rules, then the
//! dataplane, then the status), repeat on every change, netlink event and resync tick; on
//! SIGTERM read the `ServiceLoadBalancer` once more and either leave the rules to the next agent
//! on this node or remove every rule and report `ShuttingDown` ([`crate::handover`]).
//!
//! Reconciling is idempotent: the dataplane writes nothing when the kernel already holds the
//! desired rules, and the status is written only when it changed (ignoring timestamps).
//! An invalid spec changes nothing in the kernel: the rules of the last good generation stay
//! and the condition says so.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use portway_crds::{DataplaneMode, IpFamily, NodeForwardingStatus, ServiceLoadBalancer};
use tokio::sync::mpsc;

use crate::dataplane::Dataplane;
use crate::forwarding::{self, ForwardingReport};
use crate::handover::lookup::ExitLookup;
use crate::handover::{self, Decision, KeepReason, RemoveReason, Step};
use crate::metrics::Metrics;
use crate::net::{Netlink, Served, served_addresses};
use crate::rules::{self, Context, RuleSet};
use crate::source::{Observed, SpecState, Update};
use crate::state::StateDir;
use crate::status::{self, Outcome, StatusSink};

/// The network side of a reconcile, behind a trait so the loop can be tested without a kernel.
#[allow(async_fn_in_trait)]
pub trait NetEnv {
    /// Addresses to forward from.
    async fn served(
        &mut self,
        mode: DataplaneMode,
        configured: &[IpAddr],
    ) -> Result<Served, String>;
    /// Checks (and in `Pod` mode turns on) forwarding for the families with rules.
    async fn forwarding(
        &mut self,
        served: &[IpAddr],
        families: &[IpFamily],
        may_change: bool,
    ) -> ForwardingReport;
}

/// The real network namespace, over rtnetlink (and `/proc/sys` for IPv6 forwarding).
#[derive(Debug)]
pub struct KernelNet {
    netlink: Netlink,
    proc_sys: PathBuf,
    last: Option<crate::net::Snapshot>,
}

impl KernelNet {
    pub fn new(netlink: Netlink, proc_sys: PathBuf) -> Self {
        Self {
            netlink,
            proc_sys,
            last: None,
        }
    }
}

impl NetEnv for KernelNet {
    async fn served(
        &mut self,
        mode: DataplaneMode,
        configured: &[IpAddr],
    ) -> Result<Served, String> {
        let snap = self.netlink.snapshot().await.map_err(|e| e.to_string())?;
        let served = served_addresses(&snap, configured, mode);
        self.last = Some(snap);
        Ok(served)
    }

    async fn forwarding(
        &mut self,
        served: &[IpAddr],
        families: &[IpFamily],
        may_change: bool,
    ) -> ForwardingReport {
        let snap = match &self.last {
            Some(s) => s.clone(),
            None => self.netlink.snapshot().await.unwrap_or_default(),
        };
        forwarding::ensure(
            &self.netlink,
            &snap,
            served,
            families,
            may_change,
            &self.proc_sys,
        )
        .await
    }
}

/// Identity and environment of the agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub namespace: String,
    pub name: String,
    pub node: String,
    /// `POD_IPS`: the addresses forwarded from in `Pod` mode.
    pub pod_ips: Vec<IpAddr>,
    /// `HOST_IPS`: forwarded from in `Host` mode; DNAT targets for `Local` in `Pod` mode.
    pub host_ips: Vec<IpAddr>,
    /// Full reconcile interval (re-reads the kernel's rules and repairs drift).
    pub resync: Duration,
    /// Heartbeat interval for the liveness probe.
    pub heartbeat: Duration,
    /// The dataplane this agent's pod was built for, i.e. the network namespace it runs in
    /// (`--dataplane`, set by the operator). `None`: the dataplane of its first applied rules.
    pub dataplane: Option<DataplaneMode>,
    /// Bounds of the decision at SIGTERM.
    pub exit: handover::Policy,
}

/// The rules currently installed and the generation they implement.
#[derive(Clone, Debug)]
struct Applied {
    generation: Option<i64>,
    rules: RuleSet,
}

/// One agent.
pub struct Agent<D: Dataplane, S: StatusSink, N: NetEnv> {
    cfg: AgentConfig,
    dataplane: D,
    sink: S,
    net: N,
    state: Option<StateDir>,
    metrics: Arc<Metrics>,
    applied: Option<Applied>,
    /// The kernel was cleaned since the last apply (a missing Service needs it once).
    clean: bool,
    /// The last entry written successfully.
    reported: Option<NodeForwardingStatus>,
    /// An entry that still has to be written (the last write failed).
    pending: Option<NodeForwardingStatus>,
    ready: bool,
    /// The network namespace's dataplane: [`AgentConfig::dataplane`], else the mode of the first
    /// rules applied.
    netns: Option<DataplaneMode>,
    clock: fn() -> Time,
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// What one reconcile did (for tests and logs).
#[derive(Clone, Debug, PartialEq)]
pub struct ReconcileSummary {
    /// The entry the agent wants reported, if any.
    pub entry: Option<NodeForwardingStatus>,
    /// A status write was attempted.
    pub wrote_status: bool,
    /// The dataplane wrote rules.
    pub changed_rules: bool,
    pub ready: bool,
}

impl<D: Dataplane, S: StatusSink, N: NetEnv> Agent<D, S, N> {
    pub fn new(
        cfg: AgentConfig,
        dataplane: D,
        sink: S,
        net: N,
        state: Option<StateDir>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let netns = cfg.dataplane;
        Self {
            cfg,
            dataplane,
            sink,
            net,
            state,
            metrics,
            applied: None,
            clean: false,
            reported: None,
            pending: None,
            ready: false,
            netns,
            clock: now,
        }
    }

    /// Pins the clock (tests).
    pub fn with_clock(mut self, clock: fn() -> Time) -> Self {
        self.clock = clock;
        self
    }

    pub fn dataplane(&mut self) -> &mut D {
        &mut self.dataplane
    }

    fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
        if let Some(s) = &self.state
            && let Err(e) = s.set_ready(ready)
        {
            tracing::warn!(error = %e, "cannot update the ready file");
        }
    }

    async fn report(
        &mut self,
        slb: Option<&ServiceLoadBalancer>,
        generation: Option<i64>,
        addresses: &[IpAddr],
        outcome: Outcome<'_>,
    ) -> (Option<NodeForwardingStatus>, bool) {
        let observed_entry = slb.and_then(|s| status::entry_of(s, &self.cfg.node));
        let old = observed_entry.or(self.reported.as_ref());
        let entry = status::node_entry(
            &self.cfg.node,
            generation,
            addresses,
            &outcome,
            old,
            &(self.clock)(),
        );
        // Skip the write when the stored entry (or, before the watch shows it, the last one
        // written) already says the same.
        let base = match (observed_entry, &self.reported) {
            (Some(o), _) => Some(o),
            (None, Some(r)) => Some(r),
            (None, None) => None,
        };
        if !status::differs(base, &entry) && self.pending.is_none() {
            self.metrics
                .status_writes
                .with_label_values(&["skipped"])
                .inc();
            return (Some(entry), false);
        }
        let wrote = self.publish(entry.clone()).await;
        (Some(entry), wrote)
    }

    async fn publish(&mut self, entry: NodeForwardingStatus) -> bool {
        match self.sink.publish(&entry).await {
            Ok(()) => {
                self.metrics
                    .status_writes
                    .with_label_values(&["written"])
                    .inc();
                self.reported = Some(entry);
                self.pending = None;
                true
            }
            Err(e) => {
                self.metrics
                    .status_writes
                    .with_label_values(&["error"])
                    .inc();
                tracing::warn!(error = %e, "writing the node status failed; will retry");
                self.pending = Some(entry);
                true
            }
        }
    }

    /// Retries a status write that failed.
    pub async fn retry_status(&mut self) {
        if let Some(entry) = self.pending.take() {
            self.publish(entry).await;
        }
    }

    /// True while a status write is owed.
    pub fn status_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Makes the kernel and the status match what is observed.
    pub async fn reconcile(&mut self, observed: &Observed) -> ReconcileSummary {
        let mut summary = ReconcileSummary {
            entry: None,
            wrote_status: false,
            changed_rules: false,
            ready: self.ready,
        };
        match &observed.spec {
            SpecState::Unknown => {}
            SpecState::Missing => {
                // The Service is gone (or not served yet): nothing to forward, nobody to report to.
                if self.applied.is_some() || !self.clean {
                    match self.dataplane.cleanup().await {
                        Ok(r) => {
                            summary.changed_rules = r.changed();
                            self.applied = None;
                            self.clean = true;
                        }
                        Err(e) => {
                            self.metrics
                                .apply_errors
                                .with_label_values(&[e.metric_label()])
                                .inc();
                            tracing::warn!(error = %e, "removing rules of a deleted Service failed");
                        }
                    }
                }
                self.set_ready(false);
            }
            SpecState::Unreadable { generation, error } => {
                let kept = self.applied.as_ref().and_then(|a| a.generation);
                tracing::warn!(%error, "the ServiceLoadBalancer cannot be read; keeping the installed rules");
                let addresses = self
                    .applied
                    .as_ref()
                    .map(|a| a.rules.addresses())
                    .unwrap_or_default();
                let (entry, wrote) = self
                    .report(
                        None,
                        *generation,
                        &addresses,
                        Outcome::InvalidSpec { error, kept },
                    )
                    .await;
                summary.entry = entry;
                summary.wrote_status = wrote;
            }
            SpecState::Present(slb) => {
                self.reconcile_present(slb, observed, &mut summary).await;
            }
        }
        summary.ready = self.ready;
        summary
    }

    async fn reconcile_present(
        &mut self,
        slb: &ServiceLoadBalancer,
        observed: &Observed,
        summary: &mut ReconcileSummary,
    ) {
        let spec = &slb.spec;
        let generation = slb.metadata.generation;
        let mode = spec.dataplane;
        if let Some(own) = self.cfg.dataplane
            && own != mode
        {
            // The pool's dataplane changed: this pod runs in the other kind of network namespace
            // and is about to be replaced. Installing the new mode's rules here would put them
            // in the wrong netns (and Pod mode would switch on the node's forwarding).
            tracing::warn!(
                agent = own.as_str(),
                spec = mode.as_str(),
                "the ServiceLoadBalancer asks for another dataplane than this agent's pod runs; keeping the installed rules until the pod is replaced"
            );
            return;
        }
        if mode == DataplaneMode::Host && !observed.slices_synced {
            // Installing before the endpoints are known would reject traffic for a moment.
            return;
        }
        let configured = match mode {
            DataplaneMode::Pod => &self.cfg.pod_ips,
            DataplaneMode::Host => &self.cfg.host_ips,
        };
        let served = match self.net.served(mode, configured).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading addresses failed; keeping the installed rules");
                return;
            }
        };
        let ctx = Context {
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            node_name: self.cfg.node.clone(),
            local_addresses: served.addresses.clone(),
            host_ips: self.cfg.host_ips.clone(),
            endpoint_slices: observed.slices.clone(),
        };
        let rules = match rules::build(spec, &ctx) {
            Ok(r) => r,
            Err(e) => {
                let kept = self.applied.as_ref().and_then(|a| a.generation);
                tracing::warn!(error = %e, generation, "invalid spec; keeping the installed rules");
                let error = e.to_string();
                let addresses = self
                    .applied
                    .as_ref()
                    .map(|a| a.rules.addresses())
                    .unwrap_or_default();
                let (entry, wrote) = self
                    .report(
                        Some(slb),
                        generation,
                        &addresses,
                        Outcome::InvalidSpec {
                            error: &error,
                            kept,
                        },
                    )
                    .await;
                summary.entry = entry;
                summary.wrote_status = wrote;
                return;
            }
        };
        let families = rules.family_list();
        let fwd = self
            .net
            .forwarding(&served.addresses, &families, mode == DataplaneMode::Pod)
            .await;
        for (family, state) in &fwd.families {
            let on = !matches!(state, forwarding::FamilyState::Off { .. });
            self.metrics
                .forwarding
                .with_label_values(&[family.as_str()])
                .set(i64::from(on));
            if let forwarding::FamilyState::TurnedOn { how } = state {
                tracing::info!(family = family.as_str(), %how, "turned forwarding on");
            }
        }
        match self.dataplane.apply(&rules).await {
            Ok(report) => {
                self.metrics.record_apply(&report);
                summary.changed_rules = report.changed();
                if report.changed() {
                    tracing::info!(
                        generation,
                        forwards = rules.forward_count(),
                        rules = report.rules_installed(),
                        dataplane = %self.dataplane.describe(),
                        "rules applied"
                    );
                }
                let has_rules = !rules.is_empty();
                self.clean = !has_rules;
                if self.netns.is_none() {
                    self.netns = Some(mode);
                }
                self.applied = Some(Applied {
                    generation,
                    rules: rules.clone(),
                });
                self.set_ready(has_rules);
                let (entry, wrote) = self
                    .report(
                        Some(slb),
                        generation,
                        &rules.addresses(),
                        Outcome::Applied {
                            rules: &rules,
                            forwarding: &fwd,
                            missing_addresses: &served.missing,
                        },
                    )
                    .await;
                summary.entry = entry;
                summary.wrote_status = wrote;
            }
            Err(e) => {
                self.metrics
                    .apply_errors
                    .with_label_values(&[e.metric_label()])
                    .inc();
                tracing::error!(error = %e, "applying rules failed");
                self.set_ready(false);
                let error = e.to_string();
                let (entry, wrote) = self
                    .report(
                        Some(slb),
                        generation,
                        &rules.addresses(),
                        Outcome::ApplyFailed { error: &error },
                    )
                    .await;
                summary.entry = entry;
                summary.wrote_status = wrote;
            }
        }
    }

    /// Reads the `ServiceLoadBalancer` at exit and decides, bounded by [`AgentConfig::exit`]
    /// (see [`handover::next`]).
    pub async fn decide_exit<L: ExitLookup>(&self, lookup: &mut L) -> Decision {
        let policy = self.cfg.exit;
        let started = tokio::time::Instant::now();
        loop {
            let seen = lookup.read(policy.read_timeout).await;
            let decision = handover::decide(&self.cfg.node, self.netns, &seen);
            let elapsed = started.elapsed();
            match handover::next(decision, self.netns, elapsed, &policy) {
                Step::Finish => {
                    if let handover::Seen::Unreachable(e) | handover::Seen::Unreadable(e) = &seen {
                        tracing::warn!(error = %e, decision = decision.label(), "could not read the ServiceLoadBalancer at exit");
                    }
                    return decision;
                }
                Step::ReadAgain(wait) => {
                    tracing::info!(
                        decision = decision.label(),
                        wait_ms = wait.as_millis() as u64,
                        "reading the ServiceLoadBalancer again before leaving the rules"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Acts on the exit decision: leaves the rules (and the status entry) as they are, or
    /// removes every rule and reports `ShuttingDown`.
    pub async fn finish(&mut self, decision: Decision, observed: &Observed) -> Stopped {
        self.set_ready(false);
        match decision {
            Decision::Keep(reason) => {
                let forwards = self.applied.as_ref().map(|a| a.rules.forward_count());
                tracing::info!(
                    decision = decision.label(),
                    forwards,
                    "stopping: leaving the rules in place for the next agent of this Service on this node"
                );
                if reason == KeepReason::Unreachable {
                    tracing::warn!(
                        "the API server did not answer: the rules stay; the next agent of this Service on this node adopts or removes them, `portway-agent cleanup` removes them by hand"
                    );
                }
                Stopped::Kept(reason)
            }
            Decision::Remove(reason) => {
                tracing::info!(decision = decision.label(), "stopping: removing every rule");
                if self.remove_and_report(observed).await {
                    Stopped::Removed(reason)
                } else {
                    Stopped::RemoveFailed(reason)
                }
            }
        }
    }

    /// Removes every rule, drops readiness and reports `ShuttingDown` (when an object exists to
    /// report on).
    pub async fn remove_and_report(&mut self, observed: &Observed) -> bool {
        self.set_ready(false);
        let removed = match self.dataplane.cleanup().await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "removing the rules failed");
                false
            }
        };
        self.applied = None;
        self.clean = removed;
        let (slb, generation) = match &observed.spec {
            SpecState::Present(slb) => (Some(slb.as_ref()), slb.metadata.generation),
            SpecState::Unreadable { generation, .. } => (None, *generation),
            SpecState::Unknown | SpecState::Missing => return removed,
        };
        self.pending = None;
        let observed_entry = slb.and_then(|s| status::entry_of(s, &self.cfg.node));
        let old = observed_entry.or(self.reported.as_ref());
        let entry = status::node_entry(
            &self.cfg.node,
            generation,
            &[],
            &Outcome::ShuttingDown { removed },
            old,
            &(self.clock)(),
        );
        self.publish(entry).await;
        removed
    }

    /// Refreshes the per-rule counters of the metrics.
    pub async fn refresh_counters(&mut self) {
        match self.dataplane.counters().await {
            Ok(c) => self.metrics.record_counters(&c),
            Err(e) => tracing::debug!(error = %e, "reading rule counters failed"),
        }
    }
}

/// How the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The rules stay for the next agent.
    Kept(KeepReason),
    /// Every rule was removed.
    Removed(RemoveReason),
    /// Removing the rules failed.
    RemoveFailed(RemoveReason),
}

/// Runs the loop until `shutdown` resolves (SIGTERM/SIGINT), then decides with `lookup` whether
/// the rules stay or go.
pub async fn run<D: Dataplane, S: StatusSink, N: NetEnv, L: ExitLookup>(
    mut agent: Agent<D, S, N>,
    mut updates: mpsc::Receiver<Update>,
    mut net_events: Option<UnboundedReceiver<()>>,
    shutdown: impl std::future::Future<Output = ()>,
    mut lookup: L,
    refresh_counters: bool,
) -> Stopped {
    tokio::pin!(shutdown);
    let mut observed = Observed::default();
    let mut resync = tokio::time::interval(agent.cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(agent.cfg.heartbeat);
    let mut counters = tokio::time::interval(crate::metrics::COUNTER_REFRESH);
    let mut status_retry = tokio::time::interval(Duration::from_secs(5));
    let mut watch_alive = true;
    let beat = |agent: &Agent<D, S, N>| {
        if let Some(s) = &agent.state
            && let Err(e) = s.touch_heartbeat()
        {
            tracing::warn!(error = %e, "cannot touch the heartbeat file");
        }
    };
    beat(&agent);
    loop {
        let mut dirty = false;
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            u = updates.recv(), if watch_alive => match u {
                Some(u) => {
                    observed.update(u);
                    dirty = true;
                }
                None => {
                    tracing::error!("the watch ended; the liveness probe will fail");
                    watch_alive = false;
                }
            },
            Some(()) = async {
                match net_events.as_mut() {
                    Some(rx) => rx.next().await,
                    None => std::future::pending().await,
                }
            } => {
                // Group a burst of link/address messages into one reconcile.
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Some(rx) = net_events.as_mut() {
                    while rx.try_recv().is_ok() {}
                }
                dirty = true;
            }
            _ = resync.tick() => dirty = true,
            _ = heartbeat.tick() => {
                if watch_alive {
                    beat(&agent);
                }
            }
            _ = counters.tick(), if refresh_counters => agent.refresh_counters().await,
            _ = status_retry.tick(), if agent.status_pending() => agent.retry_status().await,
        }
        // Fold every update already queued into this reconcile.
        while let Ok(u) = updates.try_recv() {
            observed.update(u);
            dirty = true;
        }
        if dirty {
            agent.reconcile(&observed).await;
        }
    }
    tracing::info!("stopping: reading the ServiceLoadBalancer to decide about the rules");
    let decision = agent.decide_exit(&mut lookup).await;
    agent.finish(decision, &observed).await
}

#[cfg(test)]
mod tests;
