//! Reading the node netns' rules: which iptables variant kube-proxy wrote, its lines, and the
//! packet counters of Portway's DNAT rules.

use std::collections::BTreeMap;
use std::time::Duration;

use super::TARGET_PORT;
use super::support;

/// The iptables variant whose nat table holds kube-proxy's rule for `cluster_ip`.
pub(super) fn programmed_variant(ns: &str, cluster_ip: &str) -> Result<&'static str, String> {
    let needle = format!("-d {cluster_ip}/32");
    let found: Vec<&'static str> = support::backends()
        .into_iter()
        .filter(|v| {
            support::save_text_with(ns, v, false, &["-t", "nat"])
                .lines()
                .any(|l| l.starts_with("-A KUBE-SERVICES") && l.contains(&needle))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one),
        [] => Err("no KUBE-SERVICES rule yet".into()),
        many => Err(format!("rules in several variants: {many:?}")),
    }
}

/// Whether kube-proxy has a KUBE-SEP rule sending to `address` (either family).
pub(super) fn kube_proxy_has_endpoint(
    ns: &str,
    variant: &str,
    address: &str,
) -> Result<(), String> {
    let v6 = address.contains(':');
    let needle = if v6 {
        format!("--to-destination [{address}]:{TARGET_PORT}")
    } else {
        format!("--to-destination {address}:{TARGET_PORT}")
    };
    support::save_text_with(ns, variant, v6, &["-t", "nat"])
        .lines()
        .any(|l| l.starts_with("-A KUBE-SEP-") && l.contains(&needle))
        .then_some(())
        .ok_or_else(|| format!("no KUBE-SEP rule for {address}"))
}

/// Every rule and chain of both families and all tables that does not mention Portway, counters
/// and `#` comments dropped: what kube-proxy (and the system) own, in a canonical order. Rules of
/// built-in chains keep their order (the agent inserts its jumps there); rules of other chains
/// are sorted per chain, because kube-proxy writes the per-Service rules of its chains (e.g. two
/// Services' lines in KUBE-NODEPORTS) in Go map order, which changes between its own full
/// resyncs, and each of those rules matches only its own Service.
pub(super) fn kube_proxy_lines(ns: &str, variant: &str) -> Vec<String> {
    let mut chains: BTreeMap<(String, String), (String, Vec<String>)> = BTreeMap::new();
    for (family, v6) in [("v4", false), ("v6", true)] {
        let mut table = String::new();
        for line in support::save_text_with(ns, variant, v6, &[]).lines() {
            if line.starts_with('#') || line.to_lowercase().contains("portway") {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                table = format!("{family} {name}");
            } else if let Some(decl) = line.strip_prefix(':') {
                let chain = decl.split(' ').next().unwrap_or_default().to_owned();
                let entry = chains.entry((table.clone(), chain)).or_default();
                entry.0 = strip_counters(line);
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split(' ').next().unwrap_or_default().to_owned();
                let entry = chains.entry((table.clone(), chain)).or_default();
                entry.1.push(line.to_owned());
            }
        }
    }
    let mut out = Vec::new();
    for ((table, chain), (decl, mut rules)) in chains {
        if !BUILT_IN.contains(&chain.as_str()) {
            rules.sort();
        }
        out.push(format!("{table} {decl}"));
        out.extend(rules.into_iter().map(|r| format!("{table} {r}")));
    }
    out
}

const BUILT_IN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// [`kube_proxy_lines`] once two reads 1 s apart agree (kube-proxy syncs the two families one
/// after the other), at most 10 tries.
pub(super) fn settled_lines(ns: &str, variant: &str) -> Vec<String> {
    let mut last = kube_proxy_lines(ns, variant);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        let now = kube_proxy_lines(ns, variant);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("kube-proxy's lines kept changing for 10 s");
}

/// `:CHAIN POLICY [p:b]` -> `:CHAIN POLICY`.
fn strip_counters(line: &str) -> String {
    match (line.starts_with(':'), line.rfind(" [")) {
        (true, Some(i)) if line.ends_with(']') => line[..i].to_owned(),
        _ => line.to_owned(),
    }
}

pub(super) fn assert_same(before: &[String], now: &[String], what: &str) {
    if before == now {
        return;
    }
    let gone: Vec<_> = before.iter().filter(|l| !now.contains(l)).collect();
    let new: Vec<_> = now.iter().filter(|l| !before.contains(l)).collect();
    let at = before
        .iter()
        .zip(now)
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let lo = at.saturating_sub(3);
    panic!(
        "{what} differ: gone {gone:#?}\nnew {new:#?}\nfirst difference at line {at}:\nbefore {:#?}\nnow {:#?}",
        &before[lo..(at + 4).min(before.len())],
        &now[lo..(at + 4).min(now.len())]
    );
}

/// Packets counted by Portway's DNAT rules (nat table, ip6tables with `v6`).
pub(super) fn portway_dnat_packets(ns: &str, variant: &str, v6: bool) -> u64 {
    support::save_text_with(ns, variant, v6, &["-c", "-t", "nat"])
        .lines()
        .filter(|l| l.contains("-A PORTWAY") && l.contains("-j DNAT"))
        .filter_map(|l| {
            let counters = l.strip_prefix('[')?.split(']').next()?;
            counters.split(':').next()?.parse::<u64>().ok()
        })
        .sum()
}
