//! Property tests of the ClusterCIDR allocator over overlapping ClusterCIDRs: random sequences of
//! Nodes joining (some with CIDRs of their own), leaving and operator restarts. After every step
//! the state is checked against brute force: no two Nodes overlap, every allocation comes whole
//! from one ClusterCIDR that selects the Node (both families for dual-stack), the free counts
//! are exact, a Node waits only when every ClusterCIDR that selects it is full, and a restart
//! (rebuilding everything from the Nodes) reproduces the same state.

mod clustercidr_support;

use std::collections::BTreeMap;

use clustercidr_support::cc;
use portway_crds::ClusterCIDR;
use portway_crds::NodeSelectorOperator::{Exists, In};
use portway_operator::cidr::{Allocator, Block, Family, NodeFacts, Origin, status};
use proptest::prelude::*;

fn universe() -> Vec<ClusterCIDR> {
    vec![
        // 16 x /28 and 16 x /124, every Node.
        cc("wide").v4("10.0.0.0/24", 4).v6("fd00::/120", 4).build(),
        // 4 x /27 inside "wide", zone=a only (more specific).
        cc("zone-a")
            .v4("10.0.0.0/25", 5)
            .term(&[("zone", In, &["a"])])
            .build(),
        // 4 x /28 and 4 x /124 inside "wide", zone=b OR any rack, priority 1.
        cc("dual-b")
            .v4("10.0.0.64/26", 4)
            .v6("fd00::/122", 4)
            .priority(1)
            .term(&[("zone", In, &["b"])])
            .term(&[("rack", Exists, &[])])
            .build(),
        // 4 x /123 overlapping "wide" and "dual-b" in IPv6, racks only, priority 2.
        cc("v6-rack")
            .v6("fd00::80/121", 5)
            .priority(2)
            .term(&[("rack", Exists, &[])])
            .build(),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    /// A Node joins without CIDRs: (name index, zone 0..3, rack).
    Join(u8, u8, bool),
    /// A Node joins with a CIDR of its own: (name index, which of a few candidate blocks).
    JoinWithCidr(u8, u8),
    /// A Node object is gone.
    Leave(u8),
    /// The operator restarts and rebuilds from the Nodes.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..28, 0u8..3, any::<bool>()).prop_map(|(n, z, r)| Op::Join(n, z, r)),
        1 => (0u8..28, 0u8..6).prop_map(|(n, b)| Op::JoinWithCidr(n, b)),
        3 => (0u8..28).prop_map(Op::Leave),
        1 => Just(Op::Restart),
    ]
}

/// The "cluster": Node objects as the API server would hold them.
#[derive(Clone, Debug, Default)]
struct Cluster {
    nodes: BTreeMap<String, NodeFacts>,
}

fn labels(zone: u8, rack: bool) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    match zone {
        1 => {
            l.insert("zone".into(), "a".into());
        }
        2 => {
            l.insert("zone".into(), "b".into());
        }
        _ => {}
    }
    if rack {
        l.insert("rack".into(), "r1".into());
    }
    l
}

const OWN_CIDRS: [&str; 6] = [
    "10.0.0.16/28",
    "10.0.0.96/27",
    "10.0.9.0/24",
    "fd00::40/124",
    "fd00::100/120",
    "10.0.0.0/23",
];

/// Lets the waiting Nodes try again, in name order (what the controller does after a release).
fn retry_waiting(alloc: &mut Allocator, cluster: &mut Cluster) {
    let waiting: Vec<String> = cluster
        .nodes
        .values()
        .filter(|n| n.pod_cidrs.is_empty() && alloc.node(&n.name).is_none())
        .map(|n| n.name.clone())
        .collect();
    for name in waiting {
        let f = &cluster.nodes[&name];
        if let Ok(a) = alloc.allocate(&name, &f.labels, None) {
            let n = cluster.nodes.get_mut(&name).unwrap();
            n.pod_cidrs = a.blocks.iter().map(ToString::to_string).collect();
            n.owner_hint = Some(a.cluster_cidr.to_string());
        }
    }
}

fn rebuild(cidrs: &[ClusterCIDR], cluster: &Cluster) -> Allocator {
    let mut a = Allocator::new(cidrs);
    for n in cluster.nodes.values().filter(|n| !n.pod_cidrs.is_empty()) {
        a.adopt(n);
    }
    a
}

fn check(cidrs: &[ClusterCIDR], alloc: &Allocator, cluster: &Cluster) -> Result<(), TestCaseError> {
    // 1. No two Nodes overlap (Nodes only bring their own CIDR when it is free).
    let held: Vec<(&str, Block)> = alloc
        .nodes()
        .flat_map(|(n, r)| r.blocks().into_iter().map(move |b| (n, b)))
        .collect();
    for (i, (n1, b1)) in held.iter().enumerate() {
        for (n2, b2) in &held[i + 1..] {
            prop_assert!(!b1.overlaps(*b2), "{n1} {b1} overlaps {n2} {b2}");
        }
    }
    // 2. Allocations come whole from one selecting ClusterCIDR, one Node block per family.
    for (name, rec) in alloc.nodes() {
        let facts = &cluster.nodes[name];
        prop_assert_eq!(
            rec.pod_cidrs(),
            facts.pod_cidrs.clone(),
            "record = Node for {}",
            name
        );
        if rec.origin != Origin::Allocated {
            continue;
        }
        let owner = rec.owner().expect("allocated Nodes have one owner");
        let pool = alloc.pool(owner).unwrap();
        let spec = pool.spec.as_ref().unwrap();
        prop_assert!(
            spec.selects(name, &facts.labels).is_some(),
            "{owner} selects {name}"
        );
        let want: Vec<Family> = spec.ranges().map(|r| r.range.family).collect();
        let got: Vec<Family> = rec.blocks().iter().map(|b| b.family).collect();
        prop_assert_eq!(got, want, "one block per family of {}", owner);
        for b in rec.blocks() {
            prop_assert!(
                spec.family(b.family).unwrap().is_node_block(b),
                "{b} is a Node block of {owner}"
            );
        }
    }
    // 3. Free and allocated counts are exact (brute force over every Node block).
    for pool in alloc.pools() {
        let Ok(spec) = &pool.spec else { continue };
        for r in spec.ranges() {
            let free = (0..r.capacity())
                .filter(|&i| held.iter().all(|(_, b)| !b.overlaps(r.block(i))))
                .count() as u128;
            prop_assert_eq!(
                pool.free(r.range.family),
                free,
                "free {} {}",
                pool.name,
                r.range
            );
            let attributed = alloc
                .nodes()
                .flat_map(|(_, rec)| rec.cidrs.iter())
                .filter(|a| {
                    a.block.family == r.range.family && a.owner.as_deref() == Some(&*pool.name)
                })
                .count() as u64;
            prop_assert_eq!(pool.allocated(r.range.family), attributed);
        }
    }
    // 4. A Node waits only when every ClusterCIDR that selects it is full in some family.
    for n in cluster.nodes.values().filter(|n| n.pod_cidrs.is_empty()) {
        for pool in alloc.pools() {
            let Ok(spec) = &pool.spec else { continue };
            if spec.selects(&n.name, &n.labels).is_none() {
                continue;
            }
            let full = spec.ranges().any(|r| pool.free(r.range.family) == 0);
            prop_assert!(full, "{} waits although {} has room", n.name, pool.name);
        }
    }
    // 5. Restarting reproduces the same state (same CIDRs, owners, counts, conditions).
    let again = rebuild(cidrs, cluster);
    for (name, rec) in alloc.nodes() {
        let other = again.node(name).expect("adopted");
        prop_assert_eq!(other.blocks(), rec.blocks());
        let owners = |r: &portway_operator::cidr::NodeRecord| {
            r.cidrs
                .iter()
                .map(|a| a.owner.as_deref().map(str::to_owned))
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(owners(other), owners(rec), "owners of {}", name);
    }
    prop_assert_eq!(again.node_count(), alloc.node_count());
    for (p, q) in alloc.pools().zip(again.pools()) {
        for f in Family::ALL {
            prop_assert_eq!(p.free(f), q.free(f));
            prop_assert_eq!(p.allocated(f), q.allocated(f));
        }
        prop_assert_eq!(
            status::conditions(alloc, p, &[]),
            status::conditions(&again, q, &[])
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn no_overlap_exact_counts_and_restart_reproduces(ops in proptest::collection::vec(op(), 1..70)) {
        let cidrs = universe();
        let mut alloc = Allocator::new(&cidrs);
        let mut cluster = Cluster::default();
        for op in ops {
            match op {
                Op::Join(i, zone, rack) => {
                    let name = format!("n{i:02}");
                    if cluster.nodes.contains_key(&name) { continue; }
                    let facts = NodeFacts { name: name.clone(), labels: labels(zone, rack), ..NodeFacts::default() };
                    cluster.nodes.insert(name.clone(), facts.clone());
                    if let Ok(a) = alloc.allocate(&name, &facts.labels, None) {
                        let n = cluster.nodes.get_mut(&name).unwrap();
                        n.pod_cidrs = a.blocks.iter().map(ToString::to_string).collect();
                        n.owner_hint = Some(a.cluster_cidr.to_string());
                    }
                }
                Op::JoinWithCidr(i, which) => {
                    let name = format!("n{i:02}");
                    if cluster.nodes.contains_key(&name) { continue; }
                    let block = Block::parse_canonical(OWN_CIDRS[usize::from(which)]).unwrap();
                    let taken = alloc.nodes().any(|(_, r)| r.blocks().iter().any(|b| b.overlaps(block)));
                    if taken { continue; }
                    let facts = NodeFacts {
                        name: name.clone(),
                        pod_cidrs: vec![block.to_string()],
                        ..NodeFacts::default()
                    };
                    let report = alloc.adopt(&facts);
                    prop_assert!(report.overlaps.is_empty());
                    cluster.nodes.insert(name, facts);
                }
                Op::Leave(i) => {
                    let name = format!("n{i:02}");
                    if cluster.nodes.remove(&name).is_some() {
                        alloc.release(&name);
                        retry_waiting(&mut alloc, &mut cluster);
                    }
                }
                Op::Restart => {
                    alloc = rebuild(&cidrs, &cluster);
                    retry_waiting(&mut alloc, &mut cluster);
                }
            }
            check(&cidrs, &alloc, &cluster)?;
        }
    }

    #[test]
    fn allocation_is_deterministic(names in proptest::collection::vec((0u8..40, 0u8..3, any::<bool>()), 1..40)) {
        let cidrs = universe();
        let run = || {
            let mut a = Allocator::new(&cidrs);
            names
                .iter()
                .map(|(i, z, r)| a.allocate(&format!("n{i}"), &labels(*z, *r), None).map(|x| x.blocks).ok())
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(run(), run());
    }
}
