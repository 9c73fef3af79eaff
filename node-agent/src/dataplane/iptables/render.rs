//! Pure rendering of a [`RuleSet`] into iptables chains, and the diff against a parsed
//! `iptables-save` dump that yields the minimal `iptables-restore --noflush` batch.
//!
//! Layout (per family, per agent; `<P>` is the chain prefix, `PORTWAY` in production, and
//! `<ID>` ten base32 characters of a hash of `namespace/name`, so agents of different Services
//! sharing the node's netns never share a chain):
//!
//! | table  | chain            | hooked from (inserted first)  | content |
//! |--------|------------------|-------------------------------|---------|
//! | nat    | `<P>-<ID>-DNAT`  | PREROUTING (+ OUTPUT in Host) | per port and local address: DNAT to the one target, or jump to the port chain |
//! | nat    | `<P>-<ID>-T80`.. | (from DNAT)                   | ports with several targets: DNAT spread with `statistic --mode random` |
//! | nat    | `<P>-<ID>-SNAT`  | POSTROUTING                   | MASQUERADE connections DNATed from our address (Pod) or address:port (Host) |
//! | filter | `<P>-<ID>-FW`    | INPUT, FORWARD (`ctstate NEW`)| source-range check per port; REJECT ports without endpoints |
//! | filter | `<P>-<ID>-SRC`   | (from FW)                     | `RETURN` for each allowed range, then `DROP` |
//!
//! Every rule is rendered exactly as `iptables-save` prints it back (option order, `/32`
//! suffixes, probability digits, quoted comments), so comparing desired text with the dump
//! tells whether anything must change, and an agent that finds its rules in place writes
//! nothing. The batch declares (and thereby flushes) only chains whose content differs,
//! inserts or deletes only the agent's own jump rules in built-in chains, and deletes chains
//! the agent no longer needs; it never touches another rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use portway_crds::{IpFamily, Protocol};

use super::save::{SavedState, target_of};
use crate::rules::{FamilyRules, RuleSet};

/// The production chain prefix.
pub const DEFAULT_PREFIX: &str = "PORTWAY";

/// The tables the agent writes, in batch order.
pub const TABLES: [&str; 2] = ["nat", "filter"];

/// Chain names of one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainNames {
    prefix: String,
    id: String,
    comment: String,
}

/// 64-bit FNV-1a: a stable, dependency-free hash for chain ids (not for security; the id only
/// keeps different Services' chains apart, and a collision needs ~2^25 Services on one node).
fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Ten RFC 4648 base32 characters of `v` (50 bits).
fn base32_10(v: u64) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..10)
        .map(|i| char::from(ALPHABET[((v >> (59 - 5 * i)) & 31) as usize]))
        .collect()
}

impl ChainNames {
    /// Names for the agent of `service` (`namespace/name`). `prefix` must be at most 10
    /// characters of `[A-Z0-9-]` so that every name stays within iptables' 28-character limit;
    /// other characters are dropped.
    pub fn new(prefix: &str, service: &str) -> Self {
        let prefix: String = prefix
            .chars()
            .filter(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '-')
            .take(10)
            .collect();
        let prefix = if prefix.is_empty() {
            DEFAULT_PREFIX.to_owned()
        } else {
            prefix
        };
        let comment: String = service
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '/' | '_' | ':'))
            .take(160)
            .collect();
        Self {
            prefix,
            id: base32_10(fnv1a64(service.as_bytes())),
            comment,
        }
    }

    /// The common prefix of all chains of every agent (`PORTWAY-`).
    pub fn family_prefix(&self) -> String {
        format!("{}-", self.prefix)
    }

    /// The common prefix of this agent's chains (`PORTWAY-<ID>-`).
    pub fn owned_prefix(&self) -> String {
        format!("{}-{}-", self.prefix, self.id)
    }

    pub fn dnat(&self) -> String {
        format!("{}DNAT", self.owned_prefix())
    }
    pub fn snat(&self) -> String {
        format!("{}SNAT", self.owned_prefix())
    }
    pub fn fw(&self) -> String {
        format!("{}FW", self.owned_prefix())
    }
    pub fn src(&self) -> String {
        format!("{}SRC", self.owned_prefix())
    }
    pub fn port(&self, protocol: Protocol, port: u16) -> String {
        let p = match protocol {
            Protocol::TCP => 'T',
            Protocol::UDP => 'U',
            Protocol::SCTP => 'S',
        };
        format!("{}{p}{port}", self.owned_prefix())
    }

    /// Comment on the agent's jump rules in built-in chains.
    pub fn jump_comment(&self) -> String {
        format!("portway:{}", self.comment)
    }

    fn entry_comment(&self, name: &str, protocol: Protocol, port: u16) -> String {
        if name.is_empty() {
            format!("{}:{}/{}", self.comment, proto_lower(protocol), port)
        } else {
            format!("{}:{}", self.comment, name)
        }
    }
}

fn proto_lower(p: Protocol) -> &'static str {
    match p {
        Protocol::TCP => "tcp",
        Protocol::UDP => "udp",
        Protocol::SCTP => "sctp",
    }
}

/// Formats an IPv6 address as glibc's `inet_ntop` does (which `iptables-save` uses): like
/// RFC 5952, but addresses whose first 96 bits are zero (and that are not `::`/`::1`-like) or
/// IPv4-mapped print their last 32 bits dotted.
pub fn fmt_ipv6(a: &Ipv6Addr) -> String {
    let w = a.segments();
    // Longest run of zero words (first one wins ties), length >= 2.
    let (mut best_start, mut best_len) = (usize::MAX, 0usize);
    let mut i = 0;
    while i < 8 {
        if w[i] == 0 {
            let start = i;
            while i < 8 && w[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                best_start = start;
                best_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    if best_len < 2 {
        best_start = usize::MAX;
        best_len = 0;
    }
    let mut out = String::new();
    let mut i = 0;
    while i < 8 {
        if i == best_start {
            out.push(':');
            i += best_len;
            if i == 8 {
                out.push(':');
            }
            continue;
        }
        if i != 0 {
            out.push(':');
        }
        if i == 6 && best_start == 0 && (best_len == 6 || (best_len == 5 && w[5] == 0xffff)) {
            let o = a.octets();
            let _ = write!(out, "{}.{}.{}.{}", o[12], o[13], o[14], o[15]);
            break;
        }
        let _ = write!(out, "{:x}", w[i]);
        i += 1;
    }
    out
}

/// An address as iptables prints it.
pub fn fmt_ip(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => fmt_ipv6(a),
    }
}

fn fmt_host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{}/32", fmt_ip(ip)),
        IpAddr::V6(_) => format!("{}/128", fmt_ip(ip)),
    }
}

fn fmt_net(n: &IpNet) -> String {
    format!("{}/{}", fmt_ip(&n.network()), n.prefix_len())
}

fn fmt_target(t: &SocketAddr) -> String {
    match t {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", fmt_ipv6(a.ip()), a.port()),
    }
}

/// `statistic --probability` as iptables stores (2^31 fixed point) and prints (`%.11f`) it.
pub fn fmt_probability(p: f64) -> String {
    let fixed = (p.clamp(0.0, 1.0) * 2_147_483_648.0).round();
    format!("{:.11}", fixed / 2_147_483_648.0)
}

/// A jump rule from a built-in chain to one of the agent's chains.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Jump {
    /// The built-in chain.
    pub from: &'static str,
    /// The rule specification (as `iptables-save` prints it).
    pub spec: String,
    /// The agent chain jumped to.
    pub target: String,
}

/// The desired content of one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredTable {
    /// Agent chains and their rule specifications, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Jumps from built-in chains, each wanted exactly once.
    pub jumps: Vec<Jump>,
}

/// The desired content of one family's tables (`nat`, `filter`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredFamily {
    pub tables: BTreeMap<&'static str, DesiredTable>,
}

impl DesiredFamily {
    /// Number of rules (chain rules plus jumps).
    pub fn rule_count(&self) -> usize {
        self.tables
            .values()
            .map(|t| t.chains.values().map(Vec::len).sum::<usize>() + t.jumps.len())
            .sum()
    }

    fn table(&self, name: &str) -> Option<&DesiredTable> {
        self.tables.get(name)
    }
}

/// Renders the rules of one family. An empty `FamilyRules` (or `None`) renders nothing.
pub fn desired(rules: Option<&FamilyRules>, names: &ChainNames) -> DesiredFamily {
    let mut out = DesiredFamily::default();
    let Some(rules) = rules.filter(|r| !r.forwards.is_empty()) else {
        return out;
    };
    let v6 = rules.family == IpFamily::IPv6;
    let jump_comment = names.jump_comment();

    // nat
    let mut nat = DesiredTable::default();
    let mut dnat = Vec::new();
    let mut snat = Vec::new();
    // Pod mode: the addresses whose DNATed connections are masqueraded (one rule each).
    let mut snat_addresses = BTreeSet::new();
    for fw in &rules.forwards {
        if fw.targets.is_empty() {
            continue;
        }
        let proto = proto_lower(fw.protocol);
        // One target: DNAT right in the entry rule (no chain, no jump: a third of the rules
        // for the common case). Several: a port chain spreading over them.
        let action = match fw.targets.as_slice() {
            [one] => format!("DNAT --to-destination {}", fmt_target(one)),
            many => {
                let port_chain = names.port(fw.protocol, fw.port);
                let n = many.len();
                let lines = many
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        if i + 1 < n {
                            format!(
                                "-p {proto} -m statistic --mode random --probability {} -j DNAT --to-destination {}",
                                fmt_probability(1.0 / (n - i) as f64),
                                fmt_target(t)
                            )
                        } else {
                            format!("-p {proto} -j DNAT --to-destination {}", fmt_target(t))
                        }
                    })
                    .collect();
                nat.chains.insert(port_chain.clone(), lines);
                port_chain
            }
        };
        for dst in &fw.destinations {
            dnat.push(format!(
                "-d {} -p {proto} -m {proto} --dport {} -j {action}",
                fmt_host(dst),
                fw.port
            ));
            if fw.masquerade {
                if rules.shared_netns {
                    snat.push(format!(
                        "-p {proto} -m conntrack --ctstate DNAT --ctorigdst {} --ctorigdstport {} -j MASQUERADE --random-fully",
                        fmt_ip(dst),
                        fw.port
                    ));
                } else {
                    snat_addresses.insert(*dst);
                }
            }
        }
    }
    for dst in &snat_addresses {
        snat.push(format!(
            "-m conntrack --ctstate DNAT --ctorigdst {} -j MASQUERADE --random-fully",
            fmt_ip(dst)
        ));
    }
    if !dnat.is_empty() {
        let chain = names.dnat();
        let spec = format!("-m comment --comment \"{jump_comment}\" -j {chain}");
        nat.jumps.push(Jump {
            from: "PREROUTING",
            spec: spec.clone(),
            target: chain.clone(),
        });
        if rules.shared_netns {
            nat.jumps.push(Jump {
                from: "OUTPUT",
                spec,
                target: chain.clone(),
            });
        }
        nat.chains.insert(chain, dnat);
    }
    if !snat.is_empty() {
        let chain = names.snat();
        nat.jumps.push(Jump {
            from: "POSTROUTING",
            spec: format!("-m comment --comment \"{jump_comment}\" -j {chain}"),
            target: chain.clone(),
        });
        nat.chains.insert(chain, snat);
    }
    if !nat.chains.is_empty() {
        out.tables.insert("nat", nat);
    }

    // filter
    let mut filter = DesiredTable::default();
    let mut fw_rules = Vec::new();
    if let Some(allowed) = &rules.allowed_sources {
        let src_chain = names.src();
        for fw in &rules.forwards {
            let proto = proto_lower(fw.protocol);
            for dst in &fw.destinations {
                fw_rules.push(format!(
                    "-p {proto} -m conntrack --ctorigdst {} --ctorigdstport {} -j {src_chain}",
                    fmt_ip(dst),
                    fw.port
                ));
            }
        }
        let mut src = Vec::with_capacity(allowed.len() + 1);
        for net in allowed {
            if net.prefix_len() == 0 {
                // iptables prints "any source" without -s.
                src.push("-j RETURN".to_owned());
            } else {
                src.push(format!("-s {} -j RETURN", fmt_net(net)));
            }
        }
        src.push("-j DROP".to_owned());
        filter.chains.insert(src_chain, src);
    }
    let reject_with = if v6 {
        "icmp6-port-unreachable"
    } else {
        "icmp-port-unreachable"
    };
    for fw in rules.forwards.iter().filter(|f| f.targets.is_empty()) {
        let proto = proto_lower(fw.protocol);
        let comment = format!(
            "{} has no endpoints",
            names.entry_comment(&fw.name, fw.protocol, fw.port)
        );
        for dst in &fw.destinations {
            fw_rules.push(format!(
                "-d {} -p {proto} -m {proto} --dport {} -m comment --comment \"{comment}\" -j REJECT --reject-with {reject_with}",
                fmt_host(dst),
                fw.port
            ));
        }
    }
    if !fw_rules.is_empty() {
        let chain = names.fw();
        let spec = format!(
            "-m conntrack --ctstate NEW -m comment --comment \"{jump_comment}\" -j {chain}"
        );
        for from in ["INPUT", "FORWARD"] {
            filter.jumps.push(Jump {
                from,
                spec: spec.clone(),
                target: chain.clone(),
            });
        }
        filter.chains.insert(chain, fw_rules);
    }
    if !filter.chains.is_empty() {
        out.tables.insert("filter", filter);
    }
    out
}

/// Renders every family of a rule set.
pub fn desired_all(rules: &RuleSet, names: &ChainNames) -> BTreeMap<IpFamily, DesiredFamily> {
    [IpFamily::IPv4, IpFamily::IPv6]
        .into_iter()
        .map(|f| {
            let fr = rules.families.iter().find(|r| r.family == f);
            (f, desired(fr, names))
        })
        .collect()
}

/// What a batch changes, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Chains (re)written.
    pub chains_written: usize,
    /// Rules written into them.
    pub rules_written: usize,
    /// Jump rules inserted.
    pub jumps_inserted: usize,
    /// Jump rules deleted (duplicates, stale).
    pub jumps_deleted: usize,
    /// Chains deleted.
    pub chains_deleted: usize,
}

/// A restore batch and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Input for `iptables-restore --noflush`.
    pub script: String,
    pub summary: BatchSummary,
}

/// Computes the minimal batch that turns `current` into `desired` for the chains starting with
/// `owned` (an agent's `PORTWAY-<ID>-`, or `PORTWAY-` to remove every agent's rules).
/// Returns `None` when nothing differs.
///
/// Rules in built-in chains that jump to an owned chain are the agent's jumps: each desired
/// jump is kept exactly once (duplicates from a crashed run are deleted, a missing one is
/// inserted first in its chain), and any other is deleted. No other rule is touched.
pub fn diff(current: &SavedState, desired: &DesiredFamily, owned: &str) -> Option<Batch> {
    let mut script = String::new();
    let mut summary = BatchSummary::default();
    for table in TABLES {
        let want = desired.table(table).cloned().unwrap_or_default();
        let have = current.table(table);
        let have_chains: BTreeSet<&str> = have
            .map(|t| {
                t.chains
                    .iter()
                    .map(String::as_str)
                    .filter(|c| c.starts_with(owned))
                    .collect()
            })
            .unwrap_or_default();

        // Chains to (re)write: desired chains that are missing or differ.
        let mut rewrite: Vec<&String> = Vec::new();
        for (chain, rules) in &want.chains {
            let same = have_chains.contains(chain.as_str())
                && have.is_some_and(|t| {
                    let cur = t.rules_of(chain);
                    cur.len() == rules.len() && cur.iter().zip(rules).all(|(c, d)| c.spec == *d)
                });
            if !same {
                rewrite.push(chain);
            }
        }
        // Chains to delete: owned chains that are not desired.
        let stale: Vec<&str> = have_chains
            .iter()
            .filter(|c| !want.chains.contains_key(**c))
            .copied()
            .collect();

        // Jumps in built-in (and any non-owned) chains that target owned chains.
        let mut deletes: Vec<(String, String)> = Vec::new();
        let mut inserts: Vec<&Jump> = Vec::new();
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        if let Some(t) = have {
            for (chain, rules) in &t.rules {
                if chain.starts_with(owned) {
                    continue;
                }
                for r in rules {
                    let Some(target) = target_of(&r.spec) else {
                        continue;
                    };
                    if !target.starts_with(owned) {
                        continue;
                    }
                    let wanted = want
                        .jumps
                        .iter()
                        .any(|j| j.from == chain.as_str() && j.spec == r.spec);
                    let count = seen.entry((chain.clone(), r.spec.clone())).or_insert(0);
                    *count += 1;
                    if !wanted || *count > 1 {
                        deletes.push((chain.clone(), r.spec.clone()));
                    }
                }
            }
        }
        for j in &want.jumps {
            if !seen.contains_key(&(j.from.to_owned(), j.spec.clone())) {
                inserts.push(j);
            }
        }

        if rewrite.is_empty() && stale.is_empty() && deletes.is_empty() && inserts.is_empty() {
            continue;
        }
        let _ = writeln!(script, "*{table}");
        for chain in &rewrite {
            let _ = writeln!(script, ":{chain} - [0:0]");
        }
        for chain in &stale {
            let _ = writeln!(script, ":{chain} - [0:0]");
        }
        for (chain, spec) in &deletes {
            let _ = writeln!(script, "-D {chain} {spec}");
        }
        for chain in &rewrite {
            if let Some(rules) = want.chains.get(*chain) {
                for r in rules {
                    let _ = writeln!(script, "-A {chain} {r}");
                }
                summary.rules_written += rules.len();
            }
        }
        // Insert in reverse so that, when several jumps go into one chain, they end up in
        // desired order at its top.
        for j in inserts.iter().rev() {
            let _ = writeln!(script, "-I {} 1 {}", j.from, j.spec);
        }
        for chain in &stale {
            let _ = writeln!(script, "-X {chain}");
        }
        let _ = writeln!(script, "COMMIT");
        summary.chains_written += rewrite.len();
        summary.jumps_inserted += inserts.len();
        summary.jumps_deleted += deletes.len();
        summary.chains_deleted += stale.len();
    }
    if script.is_empty() {
        None
    } else {
        Some(Batch { script, summary })
    }
}

/// The owned rules found in a dump: chain rules and jumps to owned chains, as
/// `(table, chain, spec)` in dump order. Used for counting and duplicate checks.
pub fn owned_rules(current: &SavedState, owned: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (table, t) in &current.tables {
        for (chain, rules) in &t.rules {
            for r in rules {
                let mine = chain.starts_with(owned)
                    || target_of(&r.spec).is_some_and(|x| x.starts_with(owned));
                if mine {
                    out.push((table.clone(), chain.clone(), r.spec.clone()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
