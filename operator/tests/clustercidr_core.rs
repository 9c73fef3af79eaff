//! Table-driven tests of the pure ClusterCIDR core: selection, ordering, dual-stack, adoption,
//! exhaustion and recovery, huge IPv6 ranges, statuses, `portway plan` and upstream conversion.

mod clustercidr_support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clustercidr_support::{cc, node};
use portway_crds::NodeSelectorOperator::{DoesNotExist, Exists, In, NotIn};
use portway_crds::condition::{reasons, types};
use portway_operator::cidr::{
    Allocator, Block, CidrPlan, CidrPlanError, Family, NodeCidrState, NodeFacts, Unavailable,
    convert_upstream, plan_for_nodes,
};
use serde_json::json;

fn facts(name: &str, labels: &[(&str, &str)]) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        ..NodeFacts::default()
    }
}

fn alloc_one(
    a: &mut Allocator,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<(String, Vec<String>), Unavailable> {
    let f = facts(name, labels);
    a.allocate(&f.name, &f.labels, None).map(|x| {
        (
            x.cluster_cidr.to_string(),
            x.blocks.iter().map(ToString::to_string).collect(),
        )
    })
}

fn cond<'a>(
    plan: &'a CidrPlan,
    cidr: &str,
    t: &str,
) -> &'a portway_operator::cidr::PlannedCondition {
    plan.cluster_cidrs
        .iter()
        .find(|c| c.name == cidr)
        .and_then(|c| c.conditions.iter().find(|x| x.type_ == t))
        .unwrap_or_else(|| panic!("{cidr} has no {t}"))
}

#[test]
fn examples_folder_plans_adoption_and_allocation() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let input = portway_operator::input::read_paths(&[root]).unwrap();
    let plan = plan_for_nodes(&input.nodes, &input.cluster_cidrs).unwrap();
    let get = |n: &str| plan.node(n).unwrap();
    // worker-1 already had CIDRs: adopted, never moved.
    assert_eq!(get("worker-1").state, NodeCidrState::Adopted);
    assert_eq!(
        get("worker-1").pod_cidrs,
        ["10.42.1.0/24", "fd00:10:42:1::/64"]
    );
    assert_eq!(get("worker-1").cluster_cidr.as_deref(), Some("default"));
    // New Nodes, in name order, get the lowest free blocks, skipping the adopted ones.
    assert_eq!(get("cp-1").pod_cidrs, ["10.42.0.0/24", "fd00:10:42::/64"]);
    assert_eq!(
        get("worker-2").pod_cidrs,
        ["10.42.2.0/24", "fd00:10:42:2::/64"]
    );
    // Edge Nodes match plant-7 (priority 10, IPv4 only, /26 per Node).
    assert_eq!(get("edge-1").pod_cidrs, ["10.77.64.0/26"]);
    assert_eq!(get("edge-2").pod_cidrs, ["10.77.64.64/26"]);
    assert_eq!(get("edge-2").cluster_cidr.as_deref(), Some("plant-7"));
    let default = plan
        .cluster_cidrs
        .iter()
        .find(|c| c.name == "default")
        .unwrap();
    assert_eq!(default.ipv4.as_ref().unwrap().allocated, 3);
    assert_eq!(default.ipv4.as_ref().unwrap().capacity, 256);
    assert_eq!(default.ipv6.as_ref().unwrap().capacity, 65536);
    assert_eq!(cond(&plan, "default", types::READY).status, "True");
    let table = plan.table();
    assert!(
        table.contains("edge-1") && table.contains("10.77.64.0/26"),
        "{table}"
    );
    assert!(table.lines().next().unwrap().starts_with("NODE"), "{table}");
    let yaml = serde_saphyr::to_string(&plan).unwrap();
    assert!(
        yaml.contains("podCIDRs:")
            && yaml.contains("clusterCIDRs:")
            && yaml.contains("clusterCIDR: plant-7"),
        "{yaml}"
    );
}

#[test]
fn selector_terms_are_ored_and_requirements_anded() {
    // One term: zone=a AND gpu exists. Second term: rack NotIn (1) AND no "spare" label.
    let cidrs = vec![
        cc("sel")
            .v4("10.1.0.0/16", 8)
            .term(&[("zone", In, &["a"]), ("gpu", Exists, &[])])
            .term(&[
                ("rack", NotIn, &["1"]),
                ("spare", DoesNotExist, &[]),
                ("rack", Exists, &[]),
            ])
            .build(),
    ];
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("zone", "a"), ("gpu", "1")], true),   // term 1
        (&[("zone", "a")], false),                // term 1 half: AND
        (&[("rack", "2")], true),                 // term 2: OR
        (&[("rack", "1")], false),                // NotIn
        (&[("rack", "2"), ("spare", "")], false), // DoesNotExist
        (&[("zone", "b"), ("gpu", "1"), ("rack", "1")], false),
        (&[], false),
    ];
    for (i, (labels, selected)) in cases.iter().enumerate() {
        let mut a = Allocator::new(&cidrs);
        let got = alloc_one(&mut a, &format!("n{i}"), labels);
        assert_eq!(got.is_ok(), *selected, "case {i} {labels:?}: {got:?}");
        if !selected {
            assert!(matches!(got, Err(Unavailable::NoMatch { .. })), "case {i}");
        }
    }
}

#[test]
fn candidate_order_is_priority_specificity_fullness_host_bits_name() {
    let zone_a: &[(&str, &str)] = &[("zone", "a"), ("tier", "x")];
    // (cidrs, expected winner for a node labelled zone=a,tier=x)
    let cases: Vec<(Vec<portway_crds::ClusterCIDR>, &str)> = vec![
        // priority wins over a more specific selector
        (
            vec![
                cc("specific")
                    .v4("10.1.0.0/16", 8)
                    .term(&[("zone", In, &["a"]), ("tier", Exists, &[])])
                    .build(),
                cc("prio").v4("10.2.0.0/16", 8).priority(5).build(),
            ],
            "prio",
        ),
        // same priority: the most specific selector wins over an empty one
        (
            vec![
                cc("any").v4("10.1.0.0/16", 8).build(),
                cc("zone")
                    .v4("10.2.0.0/16", 8)
                    .term(&[("zone", In, &["a"])])
                    .build(),
            ],
            "zone",
        ),
        // same specificity: fewer free CIDRs wins (a /20 of /24s has 16, a /16 has 256)
        (
            vec![
                cc("big").v4("10.1.0.0/16", 8).build(),
                cc("small").v4("10.2.0.0/20", 8).build(),
            ],
            "small",
        ),
        // same free count: smaller host bits wins (/26s out of a /22 vs /24s out of a /20: 16 each)
        (
            vec![
                cc("a-wide").v4("10.1.0.0/20", 8).build(),
                cc("b-narrow").v4("10.2.0.0/22", 6).build(),
            ],
            "b-narrow",
        ),
        // everything equal: name
        (
            vec![
                cc("zeta").v4("10.1.0.0/16", 8).build(),
                cc("alpha").v4("10.2.0.0/16", 8).build(),
            ],
            "alpha",
        ),
    ];
    for (i, (cidrs, want)) in cases.into_iter().enumerate() {
        let mut a = Allocator::new(&cidrs);
        let (got, _) = alloc_one(&mut a, "n", zone_a).unwrap();
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn dual_stack_nodes_get_both_families_from_the_same_cluster_cidr() {
    // "first" has priority but only one free IPv6 /64; the second Node must not get IPv4 from
    // "first" and IPv6 from elsewhere.
    let cidrs = vec![
        cc("first")
            .v4("10.1.0.0/16", 8)
            .v6("fd00:1::/124", 4)
            .priority(10)
            .build(),
        cc("second")
            .v4("10.2.0.0/16", 8)
            .v6("fd00:2::/48", 64)
            .build(),
    ];
    let mut a = Allocator::new(&cidrs);
    assert_eq!(
        alloc_one(&mut a, "n1", &[]).unwrap(),
        (
            "first".into(),
            vec!["10.1.0.0/24".into(), "fd00:1::/124".into()]
        )
    );
    assert_eq!(
        alloc_one(&mut a, "n2", &[]).unwrap(),
        (
            "second".into(),
            vec!["10.2.0.0/24".into(), "fd00:2::/64".into()]
        )
    );
    // "first" kept its IPv4 blocks: nothing was taken from it for n2.
    assert_eq!(a.pool("first").unwrap().free(Family::V4), 255);
}

#[test]
fn exhaustion_is_reported_and_a_deleted_node_frees_its_cidr() {
    let cidrs = vec![cc("tiny").v4("10.9.0.0/26", 4).build()]; // 4 blocks of /28
    let nodes: Vec<_> = (0..5).map(|i| node(&format!("n{i}")).build()).collect();
    let plan = plan_for_nodes(&nodes, &cidrs).unwrap();
    let n4 = plan.node("n4").unwrap();
    assert_eq!(n4.state, NodeCidrState::Waiting);
    assert!(
        n4.reason
            .as_deref()
            .unwrap()
            .contains("tiny (IPv4 10.9.0.0/26 has no free /28)"),
        "{n4:?}"
    );
    let ex = cond(&plan, "tiny", types::EXHAUSTED);
    assert_eq!(
        (ex.status.as_str(), ex.reason.as_str()),
        ("True", reasons::NO_FREE_CIDRS)
    );
    assert!(
        ex.message.contains("1 Node(s) wait for a pod CIDR: n4"),
        "{}",
        ex.message
    );
    assert_eq!(cond(&plan, "tiny", types::READY).status, "False");
    assert_eq!(cond(&plan, "tiny", types::NEARLY_FULL).status, "True");

    // The Node n1 is gone: its /28 goes to the waiting Node, and only then.
    let mut a = Allocator::new(&cidrs);
    for i in 0..4 {
        alloc_one(&mut a, &format!("n{i}"), &[]).unwrap();
    }
    assert!(matches!(
        alloc_one(&mut a, "n4", &[]),
        Err(Unavailable::Exhausted { .. })
    ));
    let freed = a.release("n1").unwrap();
    assert_eq!(freed.pod_cidrs(), ["10.9.0.16/28"]);
    assert_eq!(alloc_one(&mut a, "n4", &[]).unwrap().1, ["10.9.0.16/28"]);
    assert!(a.release("n1").is_none(), "released once");
}

#[test]
fn ipv6_48_with_64s_holds_exactly_65536_nodes_without_preallocation() {
    let cidrs = vec![cc("v6").v6("fd00:10:42::/48", 64).build()];
    let mut a = Allocator::new(&cidrs);
    let before = a.footprint();
    assert_eq!(
        before.free_runs, 1,
        "an empty /48 is one run, not 65536 entries"
    );
    let empty = BTreeMap::new();
    let mut last = None;
    for i in 0..65536u32 {
        let got = a.allocate(&format!("n{i}"), &empty, None).unwrap();
        last = Some(got.blocks[0]);
    }
    assert_eq!(last.unwrap().to_string(), "fd00:10:42:ffff::/64");
    let fp = a.footprint();
    assert_eq!(fp.occupied_blocks, 65536);
    assert_eq!(fp.free_runs, 0);
    let over = a.allocate("one-too-many", &empty, None);
    assert!(
        matches!(over, Err(Unavailable::Exhausted { .. })),
        "{over:?}"
    );
    let u = a.usage("v6", Family::V6).unwrap();
    assert_eq!((u.allocated, u.capacity, u.free), (65536, 65536, 0));
    // Recovery: one Node gone, exactly one more fits.
    a.release("n12345").unwrap();
    assert_eq!(
        a.allocate("one-too-many", &empty, None).unwrap().blocks[0].to_string(),
        "fd00:10:42:3039::/64"
    );
}

#[test]
fn ipv6_32_with_64s_has_2_pow_32_capacity_and_memory_follows_nodes() {
    let cidrs = vec![cc("v6").v6("2001:db8::/32", 64).build()];
    let mut a = Allocator::new(&cidrs);
    let empty = BTreeMap::new();
    for i in 0..1000 {
        a.allocate(&format!("n{i}"), &empty, None).unwrap();
    }
    let u = a.usage("v6", Family::V6).unwrap();
    assert_eq!(u.capacity, 1u128 << 32);
    assert_eq!(u.free, (1u128 << 32) - 1000);
    let fp = a.footprint();
    assert_eq!(
        (fp.nodes, fp.occupied_blocks, fp.free_runs),
        (1000, 1000, 1)
    );
    // Releasing every other Node splits the free space into at most one run per gap.
    for i in (0..1000).step_by(2) {
        a.release(&format!("n{i}"));
    }
    assert!(a.footprint().free_runs <= 501);
    let plan = plan_for_nodes(&[node("x").build()], &cidrs).unwrap();
    assert_eq!(
        plan.cluster_cidrs[0].ipv6.as_ref().unwrap().capacity,
        4_294_967_296
    );
}

#[test]
fn capacity_saturates_at_i64_max() {
    let cidrs = vec![cc("all").v6("::/0", 4).build()];
    let plan = plan_for_nodes(&[node("x").build()], &cidrs).unwrap();
    assert_eq!(plan.node("x").unwrap().pod_cidrs, ["::/124"]);
    let u = plan.cluster_cidrs[0].ipv6.as_ref().unwrap();
    assert_eq!((u.allocated, u.capacity), (1, i64::MAX));
}

#[test]
fn overlapping_cluster_cidrs_never_hand_out_overlapping_blocks() {
    // "wide" gives /24s from 10.0.0.0/16; "narrow" (priority) gives /22s from 10.0.0.0/20.
    let cidrs = vec![
        cc("wide").v4("10.0.0.0/16", 8).build(),
        cc("narrow")
            .v4("10.0.0.0/20", 10)
            .priority(1)
            .term(&[("size", In, &["big"])])
            .build(),
    ];
    let mut a = Allocator::new(&cidrs);
    assert_eq!(alloc_one(&mut a, "w1", &[]).unwrap().1, ["10.0.0.0/24"]);
    // The first /22 is partly used by w1: narrow skips to 10.0.4.0/22.
    assert_eq!(
        alloc_one(&mut a, "b1", &[("size", "big")]).unwrap(),
        ("narrow".into(), vec!["10.0.4.0/22".into()])
    );
    // wide continues after w1 but skips the /22 that b1 holds.
    let got: Vec<String> = (2..8)
        .map(|i| alloc_one(&mut a, &format!("w{i}"), &[]).unwrap().1[0].clone())
        .collect();
    assert_eq!(
        got,
        [
            "10.0.1.0/24",
            "10.0.2.0/24",
            "10.0.3.0/24",
            "10.0.8.0/24",
            "10.0.9.0/24",
            "10.0.10.0/24"
        ]
    );
    assert_eq!(
        a.pool("narrow").unwrap().free(Family::V4),
        1,
        "only 10.0.12.0/22 is still free"
    );
    // When w1..w3 go, narrow's first /22 is free again only once all of them are gone.
    a.release("w1");
    a.release("w2");
    assert_eq!(a.pool("narrow").unwrap().free(Family::V4), 1);
    a.release("w3");
    a.release("w4");
    assert_eq!(a.pool("narrow").unwrap().free(Family::V4), 2);
    assert_eq!(
        alloc_one(&mut a, "b2", &[("size", "big")]).unwrap().1,
        ["10.0.0.0/22"]
    );
}

#[test]
fn existing_pod_cidrs_are_adopted_never_moved_and_problems_reported() {
    let cidrs = vec![
        cc("default")
            .v4("10.42.0.0/16", 8)
            .v6("fd00::/48", 64)
            .build(),
    ];
    let nodes = vec![
        node("adopted")
            .pod_cidrs(&["10.42.0.0/24", "fd00::/64"])
            .build(),
        node("foreign").pod_cidrs(&["10.99.0.0/24"]).build(),
        node("clash").pod_cidrs(&["10.42.0.128/25"]).build(),
        node("wide").pod_cidrs(&["10.42.2.0/23"]).build(),
        node("new").build(),
    ];
    let plan = plan_for_nodes(&nodes, &cidrs).unwrap();
    let get = |n: &str| plan.node(n).unwrap();
    assert_eq!(get("adopted").state, NodeCidrState::Adopted);
    assert_eq!(get("foreign").state, NodeCidrState::Foreign);
    assert!(
        get("foreign")
            .reason
            .as_deref()
            .unwrap()
            .contains("10.99.0.0/24")
    );
    // "adopted" comes first by name, so "clash" is the one reported as overlapping it.
    assert_eq!(get("clash").state, NodeCidrState::Conflict);
    assert!(get("clash").reason.as_deref().unwrap().contains("adopted"));
    // A /23 in a range of /24s is kept and blocks two /24s; the new Node skips all of them.
    assert_eq!(get("wide").state, NodeCidrState::Adopted);
    assert_eq!(get("new").pod_cidrs, ["10.42.1.0/24", "fd00:0:0:1::/64"]);
    let f = cond(&plan, "default", types::FOREIGN_POD_CIDRS);
    assert_eq!(
        (f.status.as_str(), f.reason.as_str()),
        ("True", reasons::FOREIGN_POD_CIDR)
    );
    assert!(
        f.message.contains("foreign (10.99.0.0/24)"),
        "{}",
        f.message
    );
    // Old clusters set only spec.podCIDR.
    let mut old = node("old").build();
    old.spec.as_mut().unwrap().pod_cidr = Some("10.42.7.0/24".into());
    let plan = plan_for_nodes(&[old, node("new").build()], &cidrs).unwrap();
    assert_eq!(plan.node("old").unwrap().state, NodeCidrState::Adopted);
    assert_eq!(plan.node("new").unwrap().pod_cidrs[0], "10.42.0.0/24");
}

#[test]
fn owner_annotation_attributes_blocks_in_overlapping_ranges() {
    let ann = portway_crds::names::CLUSTER_CIDR_ANNOTATION;
    let cidrs = vec![
        cc("a").v4("10.0.0.0/16", 8).build(),
        cc("b").v4("10.0.0.0/16", 8).build(),
    ];
    let nodes = vec![
        node("hinted")
            .pod_cidrs(&["10.0.5.0/24"])
            .annotate(ann, "b")
            .build(),
        node("plain").pod_cidrs(&["10.0.6.0/24"]).build(),
    ];
    let plan = plan_for_nodes(&nodes, &cidrs).unwrap();
    assert_eq!(
        plan.node("hinted").unwrap().cluster_cidr.as_deref(),
        Some("b")
    );
    assert_eq!(
        plan.node("plain").unwrap().cluster_cidr.as_deref(),
        Some("a")
    );
}

#[test]
fn terminating_invalid_and_deleting_objects() {
    let cidrs = vec![
        cc("going")
            .v4("10.1.0.0/16", 8)
            .priority(9)
            .deleting()
            .build(),
        cc("broken").v4("10.2.0.1/16", 8).priority(8).build(),
        cc("fallback").v4("10.3.0.0/16", 8).build(),
    ];
    let nodes = vec![
        node("kept").pod_cidrs(&["10.1.0.0/24"]).build(),
        node("new").build(),
        node("leaving").deleting().build(),
    ];
    let plan = plan_for_nodes(&nodes, &cidrs).unwrap();
    assert_eq!(
        plan.node("kept").unwrap().cluster_cidr.as_deref(),
        Some("going")
    );
    assert_eq!(
        plan.node("new").unwrap().cluster_cidr.as_deref(),
        Some("fallback")
    );
    assert_eq!(plan.node("leaving").unwrap().state, NodeCidrState::Waiting);
    let r = cond(&plan, "going", types::READY);
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", reasons::TERMINATING)
    );
    assert!(
        r.message.contains("1 Node CIDR(s) still come from it"),
        "{}",
        r.message
    );
    let r = cond(&plan, "broken", types::READY);
    assert_eq!(
        (r.status.as_str(), r.reason.as_str()),
        ("False", reasons::INVALID_SPEC_CIDR)
    );
    assert!(r.message.contains("host bits set"), "{}", r.message);
    assert_eq!(cond(&plan, "broken", types::EXHAUSTED).status, "Unknown");

    // Nothing else selects: the Node waits and the reason names the ClusterCIDRs skipped.
    let only = vec![cidrs[0].clone()];
    let plan = plan_for_nodes(&[node("new").build()], &only).unwrap();
    let why = plan.node("new").unwrap().reason.clone().unwrap();
    assert!(
        why.contains("no ClusterCIDR selects this Node") && why.contains("going"),
        "{why}"
    );
}

#[test]
fn nearly_full_turns_on_at_ninety_percent() {
    let cidrs = vec![cc("ten").v4("10.0.0.0/24", 4).build()]; // 16 blocks
    let n = |k: usize| {
        (0..k)
            .map(|i| node(&format!("n{i:02}")).build())
            .collect::<Vec<_>>()
    };
    let plan = plan_for_nodes(&n(14), &cidrs).unwrap(); // 87.5 %
    assert_eq!(cond(&plan, "ten", types::NEARLY_FULL).status, "False");
    let plan = plan_for_nodes(&n(15), &cidrs).unwrap(); // 93.75 %
    let c = cond(&plan, "ten", types::NEARLY_FULL);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", reasons::ABOVE_THRESHOLD)
    );
    assert!(
        c.message.contains("15 of 16 /28 in use (93 %)"),
        "{}",
        c.message
    );
    assert_eq!(cond(&plan, "ten", types::EXHAUSTED).status, "False");
    assert_eq!(cond(&plan, "ten", types::READY).status, "True");
}

#[test]
fn plan_rejects_duplicate_names() {
    let cidrs = vec![cc("a").v4("10.0.0.0/16", 8).build()];
    let dup = vec![node("x").build(), node("x").build()];
    assert_eq!(
        plan_for_nodes(&dup, &cidrs).unwrap_err(),
        CidrPlanError::DuplicateNode("x".into())
    );
    let two = vec![cidrs[0].clone(), cidrs[0].clone()];
    assert_eq!(
        plan_for_nodes(&[], &two).unwrap_err(),
        CidrPlanError::DuplicateClusterCidr("a".into())
    );
}

#[test]
fn block_ranges_are_aligned() {
    let b = Block::parse_canonical("10.42.0.0/16").unwrap();
    assert_eq!(b.supernet(8).to_string(), "10.0.0.0/8");
}

#[test]
fn upstream_objects_convert_or_fail_clearly() {
    let upstream = json!({
        "apiVersion": "networking.k8s.io/v1alpha1",
        "kind": "ClusterCIDR",
        "metadata": {
            "name": "dual",
            "uid": "1234",
            "resourceVersion": "99",
            "finalizers": ["networking.k8s.io/cluster-cidr-finalizer"],
            "labels": {"team": "net"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
        },
        "spec": {
            "perNodeHostBits": 8,
            "ipv4": "10.244.0.0/16",
            "ipv6": "fd00:10:244:0::/56",
            "nodeSelector": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}
            ]}
        }
    });
    let c = convert_upstream(&upstream).unwrap();
    assert_eq!(c.metadata.name.as_deref(), Some("dual"));
    assert_eq!(c.metadata.uid, None);
    assert_eq!(c.metadata.finalizers, None);
    assert_eq!(c.metadata.labels.as_ref().unwrap()["team"], "net");
    assert_eq!(c.metadata.annotations, None);
    assert_eq!(c.spec.per_node_host_bits, 8);
    assert_eq!(c.spec.ipv4.as_deref(), Some("10.244.0.0/16"));
    assert_eq!(
        c.spec.ipv6.as_deref(),
        Some("fd00:10:244::/56"),
        "canonicalised"
    );
    assert_eq!(
        c.spec
            .node_selector
            .as_ref()
            .unwrap()
            .node_selector_terms
            .len(),
        2
    );
    let as_json = serde_json::to_value(&c).unwrap();
    assert_eq!(as_json["apiVersion"], "portway.dev/v1alpha1");
    portway_crds::validation::validate(portway_crds::validation::Kind::ClusterCIDR, &as_json, None)
        .unwrap();
    // OR semantics (upstream ANDed the terms, kubernetes#116419): zone=b alone is selected.
    let plan = plan_for_nodes(&[node("b").label("zone", "b").build()], &[c]).unwrap();
    assert_eq!(plan.node("b").unwrap().state, NodeCidrState::Allocated);

    let with = |patch: serde_json::Value| {
        let mut v = upstream.clone();
        json_merge(&mut v, patch);
        convert_upstream(&v).unwrap_err().to_string()
    };
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            json!({"apiVersion": "portway.dev/v1alpha1"}),
            "not an upstream ClusterCIDR",
        ),
        (json!({"kind": "Node"}), "not an upstream ClusterCIDR"),
        (json!({"metadata": {"name": ""}}), "no metadata.name"),
        (
            json!({"spec": {"ipv4": "10.244.1.0/16"}}),
            "host bits set; the network is 10.244.0.0/16",
        ),
        (
            json!({"spec": {"ipv4": "fd00::/64"}}),
            "is not an IPv4 CIDR",
        ),
        (
            json!({"spec": {"ipv6": "banana"}}),
            "spec.ipv6: \"banana\" is not a CIDR",
        ),
        (
            json!({"spec": {"perNodeHostBits": "8"}}),
            "spec.perNodeHostBits: \"8\" is not an integer",
        ),
        (
            json!({"spec": {"perNodeHostBits": 20, "ipv4": "10.0.0.0/16"}}),
            "per-node host bits must not exceed",
        ),
        (json!({"spec": {"extra": 1}}), "unknown field \"extra\""),
        (
            json!({"spec": {"nodeSelector": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "Maybe"}]}]}}}),
            "spec.nodeSelector",
        ),
    ];
    for (patch, want) in cases {
        let err = with(patch.clone());
        assert!(err.contains(want), "{patch}: {err}");
    }
    let mut no_bits = upstream.clone();
    no_bits["spec"]
        .as_object_mut()
        .unwrap()
        .remove("perNodeHostBits");
    assert!(
        convert_upstream(&no_bits)
            .unwrap_err()
            .to_string()
            .contains("perNodeHostBits: required")
    );
}

fn json_merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                json_merge(t.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}
