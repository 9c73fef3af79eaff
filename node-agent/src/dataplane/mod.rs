//! The dataplane: something that makes the kernel forward exactly a [`RuleSet`].
//!
//! [`Dataplane`] is the seam between the pure core and the kernel. The production backend is
//! [`iptables::IptablesDataplane`] (atomic `iptables-restore --noflush` batches, one per family,
//! Portway's own chains only). See `docs/design-dataplane.md` for why it drives
//! `iptables-restore` instead of the `iptables` crate, which runs one process per rule and has
//! no atomic batch.

pub mod iptables;

use std::time::Duration;

use portway_crds::{IpFamily, Protocol};

use crate::rules::RuleSet;

/// What one apply did, per family.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApplyReport {
    pub families: Vec<FamilyReport>,
}

impl ApplyReport {
    /// True when any family's rules were written.
    pub fn changed(&self) -> bool {
        self.families.iter().any(|f| f.changed)
    }

    /// Rules the agent now has installed, over all families.
    pub fn rules_installed(&self) -> usize {
        self.families.iter().map(|f| f.rules_installed).sum()
    }
}

/// The outcome of applying one family.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FamilyReport {
    pub family: Option<IpFamily>,
    /// A batch was written.
    pub changed: bool,
    /// Rules written by the batch.
    pub rules_written: usize,
    /// Rules of this agent in the kernel afterwards.
    pub rules_installed: usize,
    /// Batches tried (more than one after transient failures).
    pub attempts: u32,
    /// Wall time of the family's apply, including retries.
    pub duration: Duration,
}

/// Kernel packet and byte counters of one DNAT target rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCounter {
    pub family: IpFamily,
    pub protocol: Protocol,
    pub port: u16,
    /// The DNAT destination (`ip:port`).
    pub target: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Why the dataplane could not do its job. Every variant names the family and carries the
/// tool's own message.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel or the tool refused the batch (bad rule, missing module, no such table).
    #[error("{tool} rejected the {family} rules: {message}")]
    Rejected {
        tool: String,
        family: &'static str,
        message: String,
    },
    /// Transient failures (xtables lock held, EAGAIN) persisted through every retry.
    #[error("{tool} kept failing for {family} after {attempts} attempts: {message}")]
    Busy {
        tool: String,
        family: &'static str,
        attempts: u32,
        message: String,
    },
    /// A tool is not installed.
    #[error("{tool} is not installed or not executable: {message}")]
    Missing { tool: String, message: String },
    /// Reading the current rules failed.
    #[error("{tool} could not read the {family} rules: {message}")]
    Read {
        tool: String,
        family: &'static str,
        message: String,
    },
}

impl DataplaneError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "rejected",
            Self::Busy { .. } => "busy",
            Self::Missing { .. } => "missing_tool",
            Self::Read { .. } => "read",
        }
    }
}

/// A place rules live. Implementations must be idempotent: applying the same rules twice
/// changes nothing the second time, and `apply` after a crash (any partial state of the
/// agent's own rules) converges to exactly the desired rules with no duplicates.
#[allow(async_fn_in_trait)]
pub trait Dataplane {
    /// Makes the kernel hold exactly `rules` for this agent (an empty set removes everything).
    async fn apply(&mut self, rules: &RuleSet) -> Result<ApplyReport, DataplaneError>;
    /// Removes every rule and chain of this agent.
    async fn cleanup(&mut self) -> Result<ApplyReport, DataplaneError>;
    /// Per-target counters of the installed rules (empty where the backend has none).
    async fn counters(&mut self) -> Result<Vec<RuleCounter>, DataplaneError>;
    /// A name for logs (`iptables-nft`, `iptables-legacy`).
    fn describe(&self) -> String;
}
