//! The iptables backend: one atomic `iptables-restore --noflush` batch per family, holding only
//! the difference between the agent's chains in the kernel and the desired ones.
//!
//! Each apply reads the family's tables (`iptables-save`), computes the batch with the pure
//! [`render::diff`], and writes it with `--wait` so it queues behind other users of the xtables
//! lock (kube-proxy, the CNI, other agents) instead of failing. Transient failures (lock held
//! past the wait, EAGAIN from a concurrent nf_tables writer) are retried with bounded
//! exponential backoff, re-reading the tables before each attempt, so a concurrent
//! table replace can delay a port but never lose it. A restore commits each table in one
//! kernel operation (legacy: one table replace under the lock; nft: one transaction), so a
//! reader never sees half a chain.

pub mod exec;
pub mod mode;
pub mod render;
pub mod save;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use portway_crds::{IpFamily, Protocol};

use self::mode::Mode;
use self::render::{ChainNames, DesiredFamily};
use super::{ApplyReport, Dataplane, DataplaneError, FamilyReport, RuleCounter};
use crate::rules::RuleSet;

/// Retry policy for transient failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Batches tried at most (first try included).
    pub attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub initial_backoff: Duration,
    /// Longest wait between tries.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Settings of the backend.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    /// Chain prefix (`PORTWAY`).
    pub prefix: String,
    /// `namespace/name` of the Service (chain id and comments).
    pub service: String,
    /// Seconds `iptables-restore --wait` waits for the xtables lock.
    pub lock_wait_secs: u32,
    pub retry: RetryPolicy,
}

/// The iptables dataplane of one agent in the current network namespace.
#[derive(Debug)]
pub struct IptablesDataplane {
    cfg: Config,
    names: ChainNames,
    /// Families in which this agent may have rules; both are checked on the first apply.
    touched: BTreeMap<IpFamily, bool>,
    /// Port chains installed, for counters: chain name -> (family, protocol, port).
    port_chains: BTreeMap<String, (IpFamily, Protocol, u16)>,
    /// Dumps taken moments ago (by variant detection), used instead of a fresh dump by the
    /// first apply only.
    seed: BTreeMap<IpFamily, (Instant, save::SavedState)>,
}

/// How long start-up dumps may stand in for a fresh read.
const SEED_TTL: Duration = Duration::from_secs(2);

/// `(protocol, port)` of an entry rule (`-p tcp -m tcp --dport 80 ...`).
fn entry_port(spec: &str) -> Option<(Protocol, u16)> {
    let mut protocol = None;
    let mut port = None;
    let mut tokens = spec.split_ascii_whitespace();
    while let Some(t) = tokens.next() {
        match t {
            "-p" => {
                protocol = match tokens.next() {
                    Some("tcp") => Some(Protocol::TCP),
                    Some("udp") => Some(Protocol::UDP),
                    Some("sctp") => Some(Protocol::SCTP),
                    _ => None,
                }
            }
            "--dport" => port = tokens.next().and_then(|p| p.parse().ok()),
            _ => {}
        }
    }
    Some((protocol?, port?))
}

fn family_str(f: IpFamily) -> &'static str {
    match f {
        IpFamily::IPv4 => "IPv4",
        IpFamily::IPv6 => "IPv6",
    }
}

impl IptablesDataplane {
    pub fn new(cfg: Config) -> Self {
        let names = ChainNames::new(&cfg.prefix, &cfg.service);
        Self {
            cfg,
            names,
            // Unknown state: a previous run may have left rules in either family.
            touched: [(IpFamily::IPv4, true), (IpFamily::IPv6, true)].into(),
            port_chains: BTreeMap::new(),
            seed: BTreeMap::new(),
        }
    }

    /// Starts the first apply from dumps just taken (by [`mode::detect`]) instead of dumping
    /// again: two processes less between start and forwarding. If the dumps turn out stale
    /// (the batch is refused), the apply re-reads the tables and tries again at once.
    pub fn with_seed(mut self, dumps: &mode::Dumps) -> Self {
        for (family, dump) in [(IpFamily::IPv4, &dumps.v4), (IpFamily::IPv6, &dumps.v6)] {
            if let Some(text) = dump {
                self.seed
                    .insert(family, (Instant::now(), save::parse(text)));
            }
        }
        self
    }

    pub fn names(&self) -> &ChainNames {
        &self.names
    }

    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    fn tool(&self, family: IpFamily, tool: &str) -> String {
        self.cfg.mode.binary(family == IpFamily::IPv6, tool)
    }

    /// Dumps the family's rules (`-c`: with counters).
    pub async fn save(
        &self,
        family: IpFamily,
        counters: bool,
    ) -> Result<save::SavedState, DataplaneError> {
        let tool = self.tool(family, "save");
        let args: &[&str] = if counters { &["-c"] } else { &[] };
        match exec::run(&tool, args, None, exec::SAVE_TIMEOUT).await {
            Ok(out) if out.success => Ok(save::parse(&out.stdout)),
            Ok(out) => Err(DataplaneError::Read {
                tool,
                family: family_str(family),
                message: out.stderr,
            }),
            Err(exec::ExecError::NotFound(_)) => Err(DataplaneError::Missing {
                tool,
                message: "not found in PATH".into(),
            }),
            Err(e) => Err(DataplaneError::Read {
                tool,
                family: family_str(family),
                message: e.to_string(),
            }),
        }
    }

    /// Brings one family to `desired` for chains starting with `owned`.
    async fn converge(
        &self,
        family: IpFamily,
        desired: &DesiredFamily,
        owned: &str,
        mut seed: Option<save::SavedState>,
    ) -> Result<FamilyReport, DataplaneError> {
        let started = Instant::now();
        let restore = self.tool(family, "restore");
        let wait = self.cfg.lock_wait_secs.to_string();
        let mut report = FamilyReport {
            family: Some(family),
            ..FamilyReport::default()
        };
        let mut last_error = String::new();
        let mut attempt = 0;
        while attempt < self.cfg.retry.attempts.max(1) {
            attempt += 1;
            report.attempts = attempt;
            let seeded = seed.is_some();
            let read = match seed.take() {
                Some(s) => Ok(s),
                None => self.save(family, false).await,
            };
            let current = match read {
                Ok(c) => c,
                // With nothing to install, a family whose tools or kernel tables are missing
                // (no IPv6 in this kernel, say) has nothing of ours to remove either.
                Err(e) if desired.rule_count() == 0 && attempt == 1 => {
                    tracing::debug!(family = family_str(family), error = %e, "family not readable; nothing to remove");
                    report.duration = started.elapsed();
                    return Ok(report);
                }
                Err(e) => return Err(e),
            };
            let Some(batch) = render::diff(&current, desired, owned) else {
                report.rules_installed = render::owned_rules(&current, owned).len();
                report.duration = started.elapsed();
                return Ok(report);
            };
            tracing::debug!(family = family_str(family), attempt, script = %batch.script, "iptables-restore batch");
            let timeout = Duration::from_secs(u64::from(self.cfg.lock_wait_secs) + 20);
            let outcome = exec::run(
                &restore,
                &["--noflush", "--wait", &wait],
                Some(&batch.script),
                timeout,
            )
            .await;
            match outcome {
                Ok(out) if out.success => {
                    report.changed = true;
                    report.rules_written +=
                        batch.summary.rules_written + batch.summary.jumps_inserted;
                    report.rules_installed = desired.rule_count();
                    report.duration = started.elapsed();
                    if seeded {
                        // Forwarding is on; now make sure the start-up dump was not stale
                        // (a fresh read must find nothing left to do).
                        attempt -= 1;
                        continue;
                    }
                    return Ok(report);
                }
                Ok(out) if exec::is_transient(&out.stderr) => {
                    last_error = out.stderr;
                }
                Ok(out) if seeded => {
                    // The seed may have been stale: read the tables and try again at once.
                    tracing::debug!(family = family_str(family), error = %out.stderr, "batch from the start-up dump refused; re-reading");
                    attempt -= 1;
                    continue;
                }
                Ok(out) => {
                    return Err(DataplaneError::Rejected {
                        tool: restore,
                        family: family_str(family),
                        message: if out.stderr.is_empty() {
                            format!("exit status {:?}", out.code)
                        } else {
                            out.stderr
                        },
                    });
                }
                Err(exec::ExecError::NotFound(_)) => {
                    return Err(DataplaneError::Missing {
                        tool: restore,
                        message: "not found in PATH".into(),
                    });
                }
                Err(e @ exec::ExecError::Timeout { .. }) => last_error = e.to_string(),
                Err(e) => {
                    return Err(DataplaneError::Rejected {
                        tool: restore,
                        family: family_str(family),
                        message: e.to_string(),
                    });
                }
            }
            if attempt < self.cfg.retry.attempts {
                let wait = self.cfg.retry.backoff(attempt);
                tracing::warn!(family = family_str(family), attempt, error = %last_error, retry_in_ms = wait.as_millis() as u64, "transient iptables failure; retrying");
                tokio::time::sleep(wait).await;
            }
        }
        Err(DataplaneError::Busy {
            tool: restore,
            family: family_str(family),
            attempts: report.attempts,
            message: last_error,
        })
    }

    async fn converge_all(
        &mut self,
        desired: BTreeMap<IpFamily, DesiredFamily>,
        owned: &str,
    ) -> Result<ApplyReport, DataplaneError> {
        let families: Vec<(IpFamily, DesiredFamily)> = desired
            .into_iter()
            .filter(|(f, d)| d.rule_count() > 0 || self.touched.get(f).copied().unwrap_or(true))
            .collect();
        // Both families concurrently: their tools are separate processes (legacy ones
        // serialise on the xtables lock by themselves).
        let mut v4 = None;
        let mut v6 = None;
        for (f, d) in families {
            match f {
                IpFamily::IPv4 => v4 = Some(d),
                IpFamily::IPv6 => v6 = Some(d),
            }
        }
        let fresh = |s: Option<(Instant, save::SavedState)>| {
            s.filter(|(at, _)| at.elapsed() < SEED_TTL).map(|(_, s)| s)
        };
        let seed4 = fresh(self.seed.remove(&IpFamily::IPv4));
        let seed6 = fresh(self.seed.remove(&IpFamily::IPv6));
        self.seed.clear();
        let (r4, r6) = tokio::join!(
            async {
                match &v4 {
                    Some(d) => Some(self.converge(IpFamily::IPv4, d, owned, seed4).await),
                    None => None,
                }
            },
            async {
                match &v6 {
                    Some(d) => Some(self.converge(IpFamily::IPv6, d, owned, seed6).await),
                    None => None,
                }
            }
        );
        let mut report = ApplyReport::default();
        let mut first_error = None;
        for (family, result, d) in [(IpFamily::IPv4, r4, &v4), (IpFamily::IPv6, r6, &v6)] {
            match result {
                Some(Ok(r)) => {
                    self.touched
                        .insert(family, d.as_ref().is_some_and(|d| d.rule_count() > 0));
                    report.families.push(r);
                }
                Some(Err(e)) => {
                    self.touched.insert(family, true);
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
                None => {}
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Removes the rules of every Portway agent (chains starting with `<prefix>-`) in this netns:
    /// `portway-agent cleanup --all`.
    pub async fn cleanup_every_agent(&mut self) -> Result<ApplyReport, DataplaneError> {
        let owned = self.names.family_prefix();
        let empty = [
            (IpFamily::IPv4, DesiredFamily::default()),
            (IpFamily::IPv6, DesiredFamily::default()),
        ]
        .into();
        self.touched = [(IpFamily::IPv4, true), (IpFamily::IPv6, true)].into();
        self.converge_all(empty, &owned).await
    }

    /// The batch an apply would write now, per family (for `portway-agent rules --diff`).
    pub async fn plan(
        &self,
        rules: &RuleSet,
    ) -> Result<BTreeMap<IpFamily, Option<render::Batch>>, DataplaneError> {
        let owned = self.names.owned_prefix();
        let mut out = BTreeMap::new();
        for (family, d) in render::desired_all(rules, &self.names) {
            let current = self.save(family, false).await?;
            out.insert(family, render::diff(&current, &d, &owned));
        }
        Ok(out)
    }
}

impl Dataplane for IptablesDataplane {
    async fn apply(&mut self, rules: &RuleSet) -> Result<ApplyReport, DataplaneError> {
        let desired = render::desired_all(rules, &self.names);
        let owned = self.names.owned_prefix();
        let report = self.converge_all(desired, &owned).await?;
        let names = &self.names;
        let port_chains = rules
            .families
            .iter()
            .flat_map(|f| {
                f.forwards.iter().map(move |fw| {
                    (
                        names.port(fw.protocol, fw.port),
                        (f.family, fw.protocol, fw.port),
                    )
                })
            })
            .collect();
        self.port_chains = port_chains;
        Ok(report)
    }

    async fn cleanup(&mut self) -> Result<ApplyReport, DataplaneError> {
        let owned = self.names.owned_prefix();
        let empty = [
            (IpFamily::IPv4, DesiredFamily::default()),
            (IpFamily::IPv6, DesiredFamily::default()),
        ]
        .into();
        self.touched = [(IpFamily::IPv4, true), (IpFamily::IPv6, true)].into();
        let report = self.converge_all(empty, &owned).await?;
        self.port_chains.clear();
        Ok(report)
    }

    async fn counters(&mut self) -> Result<Vec<RuleCounter>, DataplaneError> {
        let mut out = Vec::new();
        let dnat_chain = self.names.dnat();
        for family in [IpFamily::IPv4, IpFamily::IPv6] {
            if !self.port_chains.values().any(|(f, _, _)| *f == family) {
                continue;
            }
            let state = self.save(family, true).await?;
            let Some(nat) = state.table("nat") else {
                continue;
            };
            // Single-target ports DNAT in the entry chain; others in their port chain.
            let mut rules: Vec<(Protocol, u16, &save::SavedRule)> = nat
                .rules_of(&dnat_chain)
                .iter()
                .filter(|r| r.target() == Some("DNAT"))
                .filter_map(|r| entry_port(&r.spec).map(|(p, n)| (p, n, r)))
                .collect();
            for (chain, (f, protocol, port)) in &self.port_chains {
                if *f == family {
                    rules.extend(nat.rules_of(chain).iter().map(|r| (*protocol, *port, r)));
                }
            }
            for (protocol, port, rule) in rules {
                let target = rule
                    .spec
                    .split_once("--to-destination ")
                    .map(|(_, t)| t.split_ascii_whitespace().next().unwrap_or(t))
                    .unwrap_or_default()
                    .to_owned();
                let (packets, bytes) = rule.counters.unwrap_or_default();
                out.push(RuleCounter {
                    family,
                    protocol,
                    port,
                    target,
                    packets,
                    bytes,
                });
            }
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("iptables-{}", self.cfg.mode)
    }
}
