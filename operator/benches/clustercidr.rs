//! ClusterCIDR allocation benchmark: `cargo bench -p portway-operator --bench clustercidr`.
//!
//! Times `plan_for_nodes` (order Nodes by name, rank candidates, allocate, render the result,
//! compute statuses) for 5 000 and 50 000 new Nodes over four ClusterCIDRs (a dual-stack default
//! with 65 536 blocks per family, and three selective ones, one of which runs full).
//!
//! Each of nine rounds times ten 5 000-Node plans back to back (their mean is the round's
//! 5 000-Node time) and then one 50 000-Node plan, so both halves of a round do the same work
//! and see the same load on a shared machine; the medians over the rounds are printed. Times are
//! the thread's CPU time where the platform reports it (time other processes hold the CPU does
//! not count), else wall-clock time; the wall-clock ratio is printed on stderr too. The ratio is
//! measured in the same run, so it does not depend on the machine's speed (10 is linear).

use std::hint::black_box;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use portway_crds::{
    ClusterCIDR, ClusterCIDRSpec, NodeSelector, NodeSelectorOperator, NodeSelectorRequirement,
    NodeSelectorTerm,
};
use portway_operator::cidr::plan_for_nodes;

fn selector(key: &str, op: NodeSelectorOperator, values: &[&str]) -> Option<NodeSelector> {
    Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: vec![NodeSelectorRequirement {
                key: key.into(),
                operator: op,
                values: values.iter().map(|v| (*v).to_string()).collect(),
            }],
            match_fields: vec![],
        }],
    })
}

fn cidr(
    name: &str,
    v4: &str,
    v4_bits: i32,
    v6: Option<(&str, i32)>,
    sel: Option<NodeSelector>,
    priority: i32,
) -> ClusterCIDR {
    ClusterCIDR::new(
        name,
        ClusterCIDRSpec {
            node_selector: sel,
            per_node_host_bits: v4_bits,
            ipv4_per_node_host_bits: None,
            ipv6_per_node_host_bits: v6.map(|(_, b)| b),
            ipv4: Some(v4.into()),
            ipv6: v6.map(|(r, _)| r.into()),
            priority,
        },
    )
}

fn cidrs() -> Vec<ClusterCIDR> {
    use NodeSelectorOperator::{Exists, In};
    vec![
        cidr(
            "default",
            "10.0.0.0/8",
            8,
            Some(("fd00:10::/48", 64)),
            None,
            -100,
        ),
        cidr(
            "rack-a",
            "172.16.0.0/12",
            8,
            None,
            selector("rack", In, &["a"]),
            0,
        ),
        cidr(
            "edge",
            "192.168.0.0/16",
            6,
            None,
            selector("edge", Exists, &[]),
            5,
        ),
        // Small and selective: full after 64 Nodes, the rest fall through to "default".
        cidr(
            "gpu",
            "10.250.0.0/18",
            12,
            None,
            selector("gpu", Exists, &[]),
            10,
        ),
    ]
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let mut labels = std::collections::BTreeMap::new();
            labels.insert("kubernetes.io/hostname".to_string(), format!("node-{i:06}"));
            if i % 10 == 0 {
                labels.insert("rack".into(), "a".into());
            }
            if i % 50 == 0 {
                labels.insert("edge".into(), String::new());
            }
            if i % 97 == 0 {
                labels.insert("gpu".into(), "1".into());
            }
            Node {
                metadata: ObjectMeta {
                    name: Some(format!("node-{i:06}")),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                ..Node::default()
            }
        })
        .collect()
}

/// CPU time of the calling thread (Linux `CLOCK_THREAD_CPUTIME_ID`): unlike wall-clock time it
/// does not count the time other processes on a shared machine hold the CPU, which would skew
/// the ratio of the two sizes. `None` elsewhere (wall-clock time is used then).
#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Option<Duration> {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec (two 64-bit fields on 64-bit Linux) and the
    // clock id is a constant the kernel knows; clock_gettime writes only into `ts`.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0 && cfg!(target_pointer_width = "64"))
        .then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// (wall-clock, thread CPU) time of one plan.
fn time_once(nodes: &[Node], cidrs: &[ClusterCIDR]) -> (Duration, Option<Duration>) {
    let cpu_start = thread_cpu_time();
    let start = Instant::now();
    let plan = plan_for_nodes(black_box(nodes), black_box(cidrs));
    let wall = start.elapsed();
    let cpu = cpu_start
        .zip(thread_cpu_time())
        .map(|(a, b)| b.saturating_sub(a));
    let plan = black_box(plan).expect("the benchmark input is valid");
    assert_eq!(plan.nodes.len(), nodes.len());
    assert!(
        plan.nodes.iter().all(|n| !n.pod_cidrs.is_empty()),
        "every Node got CIDRs"
    );
    (wall, cpu)
}

/// The time that counts: thread CPU time where the platform measures it, else wall-clock.
fn counted((wall, cpu): (Duration, Option<Duration>)) -> Duration {
    cpu.unwrap_or(wall)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let cidrs = cidrs();
    let small = nodes(5_000);
    let large = nodes(50_000);
    // Warm up (page faults of the first large run, caches).
    time_once(&small, &cidrs);
    time_once(&large, &cidrs);
    // Each round times ten 5 000-Node plans back to back (their mean is the 5 000-Node time)
    // and then one 50 000-Node plan: equal work, so both halves of a round are exposed alike to
    // whatever else the machine is doing. The medians over the rounds are reported.
    let rounds = 9;
    let (mut small_ms, mut ratios, mut walls) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let mut t_small = Duration::ZERO;
        let mut w_small = Duration::ZERO;
        for _ in 0..10 {
            let t = time_once(&small, &cidrs);
            w_small += t.0;
            t_small += counted(t);
        }
        let t_small = t_small / 10;
        let t = time_once(&large, &cidrs);
        small_ms.push(t_small.as_secs_f64() * 1000.0);
        ratios.push(counted(t).as_secs_f64() / t_small.as_secs_f64());
        walls.push(t.0.as_secs_f64() / (w_small / 10).as_secs_f64());
    }
    eprintln!(
        "clustercidr: {} rounds, {} time; 5000-Node plan per round {:?} ms; 50k/5k per round {:?}; wall-clock 50k/5k median {:.2}",
        rounds,
        if thread_cpu_time().is_some() {
            "thread CPU"
        } else {
            "wall-clock"
        },
        small_ms
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        ratios
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        median(walls),
    );
    println!(
        "P4 cidr_alloc_5000nodes_ms={:.2} (goal < 100)",
        median(small_ms)
    );
    println!(
        "P4 cidr_alloc_scaling_50k_over_5k={:.2} (goal <= 12)",
        median(ratios)
    );
}
