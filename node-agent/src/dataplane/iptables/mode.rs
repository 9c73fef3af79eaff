//! Which iptables the node uses: `legacy` (the x_tables kernel API) or `nft` (nf_tables through
//! the iptables-nft compatibility layer). Both can hold rules at the same time, and a rule added
//! with the wrong one is not ordered against the others, so an agent in the node's netns must
//! use whichever kubelet, kube-proxy and the CNI use.
//!
//! Detection follows Kubernetes' iptables wrapper (kubernetes-sigs/iptables-wrappers):
//! 1. kubelet's hint chains (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY`) in the nft tables:
//!    nft; in the legacy tables: legacy;
//! 2. otherwise (no kubelet in this netns, e.g. a pod's own netns, or an older kubelet) the
//!    older wrapper's rule count: legacy when the legacy tables hold more rules than the nft
//!    ones;
//! 3. otherwise nft.
//!
//! The dumps are taken concurrently (four short processes). `iptables-legacy-save` is run
//! without `-t`, since naming a table would make the kernel create it.

use std::fmt;

use super::exec;

/// An iptables variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `iptables-legacy-*`.
    Legacy,
    /// `iptables-nft-*`.
    Nft,
    /// Whatever `iptables-*` is installed (images that ship only one variant).
    Plain,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Legacy => "legacy",
            Self::Nft => "nft",
            Self::Plain => "plain",
        }
    }

    /// Binary of `tool` (`save` or `restore`) for a family.
    pub fn binary(self, v6: bool, tool: &str) -> String {
        let base = if v6 { "ip6tables" } else { "iptables" };
        match self {
            Self::Legacy => format!("{base}-legacy-{tool}"),
            Self::Nft => format!("{base}-nft-{tool}"),
            Self::Plain => format!("{base}-{tool}"),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `--iptables` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ModeChoice {
    /// Detect like Kubernetes' iptables wrapper.
    #[default]
    Auto,
    Legacy,
    Nft,
}

/// The outcome of detection and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    pub mode: Mode,
    pub reason: String,
    /// The chosen variant's dumps taken for the decision (empty unless detected): the first
    /// apply starts from them instead of dumping the tables again.
    pub dumps: Dumps,
}

fn has_kubelet_chains(dump: &str) -> bool {
    dump.lines()
        .any(|l| l.starts_with(":KUBE-IPTABLES-HINT ") || l.starts_with(":KUBE-KUBELET-CANARY "))
}

fn rule_lines(dump: &str) -> usize {
    dump.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Dumps of one variant (`None`: the variant's tools are missing or failed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dumps {
    pub v4: Option<String>,
    pub v6: Option<String>,
}

impl Dumps {
    fn available(&self) -> bool {
        self.v4.is_some() || self.v6.is_some()
    }
    fn kubelet(&self) -> bool {
        [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .any(|d| has_kubelet_chains(d))
    }
    fn rules(&self) -> usize {
        [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .map(|d| rule_lines(d))
            .sum()
    }
}

/// The pure decision of [`detect`].
pub fn decide(nft: &Dumps, legacy: &Dumps) -> Detection {
    if !nft.available() && !legacy.available() {
        return Detection {
            dumps: Dumps::default(),
            mode: Mode::Plain,
            reason: "neither iptables-nft nor iptables-legacy tools run; using plain iptables"
                .into(),
        };
    }
    if !legacy.available() {
        return Detection {
            dumps: Dumps::default(),
            mode: Mode::Nft,
            reason: "iptables-legacy tools are not available".into(),
        };
    }
    if !nft.available() {
        return Detection {
            dumps: Dumps::default(),
            mode: Mode::Legacy,
            reason: "iptables-nft tools are not available".into(),
        };
    }
    if nft.kubelet() {
        return Detection {
            dumps: Dumps::default(),
            mode: Mode::Nft,
            reason: "kubelet's KUBE-IPTABLES-HINT/KUBE-KUBELET-CANARY chains are in nf_tables"
                .into(),
        };
    }
    if legacy.kubelet() {
        return Detection {
            dumps: Dumps::default(),
            mode: Mode::Legacy,
            reason:
                "kubelet's KUBE-IPTABLES-HINT/KUBE-KUBELET-CANARY chains are in the legacy tables"
                    .into(),
        };
    }
    let (l, n) = (legacy.rules(), nft.rules());
    if l > n {
        Detection {
            dumps: Dumps::default(),
            mode: Mode::Legacy,
            reason: format!("the legacy tables hold more rules ({l}) than nf_tables ({n})"),
        }
    } else {
        Detection {
            dumps: Dumps::default(),
            mode: Mode::Nft,
            reason: format!(
                "no kubelet hint chains; nf_tables holds {n} rules, the legacy tables {l}: defaulting to nft"
            ),
        }
    }
}

async fn dump(binary: String) -> Option<String> {
    exec::run(&binary, &[], None, exec::SAVE_TIMEOUT)
        .await
        .ok()
        .filter(|o| o.success)
        .map(|o| o.stdout)
}

/// Detects the variant in the current netns.
pub async fn detect() -> Detection {
    let (n4, n6, l4, l6) = tokio::join!(
        dump(Mode::Nft.binary(false, "save")),
        dump(Mode::Nft.binary(true, "save")),
        dump(Mode::Legacy.binary(false, "save")),
        dump(Mode::Legacy.binary(true, "save")),
    );
    let nft = Dumps { v4: n4, v6: n6 };
    let legacy = Dumps { v4: l4, v6: l6 };
    let mut d = decide(&nft, &legacy);
    d.dumps = match d.mode {
        Mode::Nft => nft,
        Mode::Legacy => legacy,
        Mode::Plain => Dumps::default(),
    };
    d
}

/// Resolves the `--iptables` flag.
pub async fn resolve(choice: ModeChoice) -> Detection {
    match choice {
        ModeChoice::Auto => detect().await,
        ModeChoice::Legacy => Detection {
            dumps: Dumps::default(),
            mode: Mode::Legacy,
            reason: "--iptables legacy".into(),
        },
        ModeChoice::Nft => Detection {
            dumps: Dumps::default(),
            mode: Mode::Nft,
            reason: "--iptables nft".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v4: &str) -> Dumps {
        Dumps {
            v4: Some(v4.to_owned()),
            v6: Some(String::new()),
        }
    }

    #[test]
    fn kubelet_hint_decides_first() {
        let hint = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
        let many = "*filter\n-A INPUT -j A\n-A INPUT -j B\n-A INPUT -j C\nCOMMIT\n";
        assert_eq!(decide(&d(hint), &d(many)).mode, Mode::Nft);
        assert_eq!(decide(&d(many), &d(hint)).mode, Mode::Legacy);
    }

    #[test]
    fn rule_count_then_default_nft() {
        let one = "*filter\n-A INPUT -j A\nCOMMIT\n";
        assert_eq!(decide(&d(""), &d(one)).mode, Mode::Legacy);
        assert_eq!(decide(&d(one), &d(one)).mode, Mode::Nft);
        assert_eq!(decide(&d(""), &d("")).mode, Mode::Nft);
    }

    #[test]
    fn missing_variants() {
        let none = Dumps::default();
        assert_eq!(decide(&none, &d("")).mode, Mode::Legacy);
        assert_eq!(decide(&d(""), &none).mode, Mode::Nft);
        assert_eq!(decide(&none, &none).mode, Mode::Plain);
        assert_eq!(Mode::Plain.binary(true, "restore"), "ip6tables-restore");
        assert_eq!(Mode::Legacy.binary(false, "save"), "iptables-legacy-save");
    }
}
