//! The properties Portway's fuzz targets check, shared by the targets in `fuzz_targets/`.
//! A violated property panics, which libFuzzer reports as a crash with the input saved under
//! `fuzz/artifacts/<target>/`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use portway_node_agent::dataplane::iptables::render::{
    self, ChainNames, DEFAULT_PREFIX, DesiredFamily,
};
use portway_node_agent::dataplane::iptables::save::{self, SavedState};
use portway_node_agent::rules::{self, Context, MAX_TARGETS_PER_PORT, RuleSet};
use portway_operator::cidr::CidrPlan;
use portway_operator::input::InputSet;
use portway_operator::plan::{self, Config, Observed};

/// `metav1.Condition.message` limit of the API server.
pub const MAX_CONDITION_MESSAGE: usize = 32768;

pub fn epoch() -> Time {
    Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([10, 0, 0, 1]))
}

/// A rule set is sane: ports non-zero, destinations present and usable, bounded targets.
pub fn check_rule_set(rs: &RuleSet) {
    for f in &rs.families {
        for fw in &f.forwards {
            assert!(fw.port != 0, "forward on port 0: {fw:?}");
            assert!(
                !fw.destinations.is_empty(),
                "forward without destination: {fw:?}"
            );
            for d in &fw.destinations {
                assert!(rules::is_usable(d), "forward from unusable {d}");
                assert_eq!(
                    rules::family_of(d),
                    f.family,
                    "{d} in the {:?} rules",
                    f.family
                );
            }
            assert!(
                fw.targets.len() <= MAX_TARGETS_PER_PORT,
                "{} targets",
                fw.targets.len()
            );
            for t in &fw.targets {
                assert_eq!(rules::family_of(&t.ip()), f.family, "target {t}");
                assert!(t.port() != 0, "target port 0: {t}");
            }
        }
    }
}

const BUILTIN: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// What `iptables-save` would print for exactly `desired` (plus the built-in chains).
pub fn dump(desired: &DesiredFamily) -> String {
    let mut s = String::new();
    for (table, t) in &desired.tables {
        let _ = writeln!(s, "*{table}");
        for b in BUILTIN {
            let _ = writeln!(s, ":{b} ACCEPT [0:0]");
        }
        for c in t.chains.keys() {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        for j in &t.jumps {
            let _ = writeln!(s, "-A {} {}", j.from, j.spec);
        }
        for (c, rules) in &t.chains {
            for r in rules {
                let _ = writeln!(s, "-A {c} {r}");
            }
        }
        let _ = writeln!(s, "COMMIT");
    }
    s
}

/// Renders `rs` as the agent would for Service `service` and checks the batch it would apply
/// to an empty netns: only Portway's own chains are written, jumps go only from built-in chains
/// to its chains, every line is one iptables-restore command; and once those rules are in place
/// (as iptables-save prints them back), the agent has nothing left to write.
pub fn check_render(rs: &RuleSet, service: &str) {
    let names = ChainNames::new(DEFAULT_PREFIX, service);
    let owned = names.owned_prefix();
    for (family, desired) in render::desired_all(rs, &names) {
        if let Some(batch) = render::diff(&SavedState::default(), &desired, &owned) {
            for line in batch.script.lines() {
                assert!(
                    !line.contains('\r') && !line.contains('\0'),
                    "{family:?}: control character in {line:?}"
                );
                let mut words = line.split(' ');
                match words.next().unwrap_or_default() {
                    "*nat" | "*filter" | "COMMIT" => {}
                    chain if chain.starts_with(':') => {
                        assert!(
                            chain[1..].starts_with(&owned),
                            "{family:?}: declares {chain}"
                        )
                    }
                    "-A" => {
                        let chain = words.next().unwrap_or_default();
                        assert!(
                            chain.starts_with(&owned),
                            "{family:?}: appends to {chain}: {line}"
                        );
                    }
                    "-I" => {
                        let chain = words.next().unwrap_or_default();
                        assert!(BUILTIN.contains(&chain), "{family:?}: inserts into {chain}");
                        let spec = words.skip(1).collect::<Vec<&str>>().join(" ");
                        let target = save::target_of(&spec).unwrap_or_default();
                        assert!(
                            target.starts_with(&owned),
                            "{family:?}: jump to {target}: {line}"
                        );
                    }
                    other => panic!("{family:?}: unexpected command {other:?} in {line:?}"),
                }
            }
        }
        let installed = save::parse(&dump(&desired));
        let again = render::diff(&installed, &desired, &owned);
        assert!(
            again.is_none(),
            "{family:?}: rules in place, yet the agent would write:\n{}\n--- dump:\n{}",
            again.map(|b| b.script).unwrap_or_default(),
            dump(&desired)
        );
    }
}

/// Two Nodes with overlapping pod CIDRs where at least one was allocated by the plan.
pub fn overlap(plan: &CidrPlan) -> Option<String> {
    plan.new_overlap()
        .map(|((n1, b1), (n2, b2))| format!("{n1} {b1} overlaps {n2} {b2}"))
}

/// Agent context with addresses of both families.
pub fn dual_context(namespace: &str, name: &str) -> Context {
    Context {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        node_name: "worker-1".to_owned(),
        local_addresses: vec![ip("10.42.1.5"), ip("fd00:42:1::5")],
        host_ips: vec![ip("203.0.113.11"), ip("2001:db8::11")],
        endpoint_slices: Vec::new(),
    }
}

/// Keeps the first object per kind/namespace/name (a cluster holds no duplicates).
fn dedup(o: &mut Observed) {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    fn by_key<T>(v: &mut Vec<Arc<T>>, meta: impl Fn(&T) -> &ObjectMeta) {
        let mut seen = BTreeSet::new();
        v.retain(|x| {
            let m = meta(x);
            seen.insert((m.namespace.clone(), m.name.clone()))
        });
    }
    by_key(&mut o.services, |x| &x.metadata);
    by_key(&mut o.nodes, |x| &x.metadata);
    by_key(&mut o.pools, |x| &x.metadata);
    by_key(&mut o.endpoint_slices, |x| &x.metadata);
    by_key(&mut o.namespaces, |x| &x.metadata);
}

/// `portway plan` on a YAML stream, and what must hold of its result.
pub fn check_plan_yaml(text: &str) {
    let mut set = InputSet::default();
    if set.add_yaml("fuzz", text).is_err() {
        return;
    }
    let mut observed = portway_operator::cli::plan::observed(&set);
    dedup(&mut observed);
    let mut config = Config::new(epoch());
    config.assume_agents_forwarding = true;
    let desired = plan::desired_state(&observed, &config);
    let mut reversed = observed.clone();
    reversed.services.reverse();
    reversed.nodes.reverse();
    reversed.pools.reverse();
    reversed.endpoint_slices.reverse();
    reversed.namespaces.reverse();
    assert!(
        plan::desired_state(&reversed, &config) == desired,
        "desired_state depends on input order"
    );
    for p in &desired.services {
        if let Some(slb) = &p.service_load_balancer {
            let ctx = dual_context(
                slb.metadata.namespace.as_deref().unwrap_or_default(),
                slb.metadata.name.as_deref().unwrap_or_default(),
            );
            if let Err(e) = rules::build(&slb.spec, &ctx) {
                panic!(
                    "the operator planned {} but the agent refuses it: {e}",
                    p.service
                );
            }
            for c in slb.status.iter().flat_map(|s| &s.conditions) {
                assert!(
                    c.message.len() <= MAX_CONDITION_MESSAGE,
                    "{} byte message",
                    c.message.len()
                );
            }
        }
    }
    if let Ok(cidrs) = portway_operator::cidr::plan_for_nodes(&set.nodes, &set.cluster_cidrs)
        && let Some(o) = overlap(&cidrs)
    {
        panic!("pod CIDRs overlap: {o}");
    }
}
