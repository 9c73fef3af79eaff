//! ServiceLB benchmarks (issue 5), a plain bench binary:
//!
//! - P4: time of the pure core (`plan::desired_state`) for 5000 LoadBalancer Services on 1000
//!   Nodes, every agent assumed forwarding (so every ingress list is as long as it gets). The
//!   same run also times 500 Services on 100 Nodes as a baseline and prints the ratio.
//! - P5: API writes of a resync over a converged cluster (200 Services) against the tower-test
//!   fake API server: every Service reconciled plus the sweep.
//! - P6: resident memory of a child process (this binary re-executed) holding 1000 Services and
//!   their ServiceLoadBalancers, DaemonSets and EndpointSlices, plus 100 Nodes, in kube-runtime
//!   stores, with the cached assignment computed; the idle child's RSS is printed alongside.

#[path = "../tests/servicelb_support/mod.rs"]
#[allow(dead_code, clippy::all)]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::runtime::reflector;
use portway_crds::{LoadBalancerPool, ServiceLoadBalancer};
use portway_operator::controllers::servicelb::context::{Context, Stores};
use portway_operator::controllers::servicelb::watch::Slim;
use portway_operator::controllers::servicelb::{ServiceLbArgs, reconcile, sweep};
use portway_operator::fixtures::{config, finalized, reported, synthetic, t};
use portway_operator::metrics::Metrics;
use portway_operator::plan::{Key, Observed, desired_state};

const CHILD_ENV: &str = "PORTWAY_BENCH_RSS_CHILD";

fn time_plan(services: usize, nodes: usize, runs: usize) -> Duration {
    let observed = synthetic(services, nodes);
    let mut cfg = config();
    cfg.assume_agents_forwarding = true;
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let d = desired_state(&observed, &cfg);
            let el = start.elapsed();
            assert_eq!(d.services.len(), services);
            std::hint::black_box(d);
            el
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn args() -> ServiceLbArgs {
    ServiceLbArgs {
        load_balancer_class: "portway.dev/servicelb".into(),
        namespace: "portway-system".into(),
        // The image the fixtures' configuration uses, so the converged objects match.
        agent_image: portway_operator::plan::DEFAULT_AGENT_IMAGE.into(),
        agent_service_account: "portway-agent".into(),
        agent_status_cluster_role: "portway-agent-status".into(),
        agent_forwarding_sysctls: false,
        reserved_host_ports: portway_operator::plan::reserved::ReservedPorts(
            portway_operator::plan::reserved::defaults(),
        ),
    }
}

/// Services, ServiceLoadBalancers, DaemonSets, RoleBindings and pools as stored.
type Cluster = (
    Vec<Service>,
    Vec<ServiceLoadBalancer>,
    Vec<DaemonSet>,
    Vec<RoleBinding>,
    Vec<LoadBalancerPool>,
);

/// The cluster after the operator converged it and agents forward on the first 3 nodes.
fn converged(observed: &Observed) -> Cluster {
    // First pass: what the operator writes; second pass: with agents reporting.
    let first = desired_state(observed, &config());
    let slbs: Vec<ServiceLoadBalancer> = first
        .services
        .iter()
        .filter_map(|p| p.service_load_balancer.as_ref())
        .map(|s| reported(s, &["node-00000", "node-00001", "node-00002"]))
        .collect();
    let mut with_reports = observed.clone();
    with_reports.service_load_balancers = slbs.iter().cloned().map(Arc::new).collect();
    let d = desired_state(&with_reports, &config());
    let mut services = Vec::new();
    let mut stored_slbs = Vec::new();
    let mut daemonsets = Vec::new();
    let by_key: std::collections::HashMap<Key, &Arc<Service>> = observed
        .services
        .iter()
        .map(|s| (Key::of(&s.metadata), s))
        .collect();
    for plan in &d.services {
        let Some(svc) = by_key.get(&plan.service) else {
            continue;
        };
        let mut s = finalized((***svc).clone());
        s.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(plan.ingress.as_ref().clone())
                    .filter(|i: &Vec<LoadBalancerIngress>| !i.is_empty()),
            }),
            // Portway's own condition on the Service, as the operator wrote it.
            conditions: plan.service_condition.clone().map(|c| vec![c]),
        });
        services.push(s);
        if let Some(slb) = &plan.service_load_balancer {
            let mut stored = reported(slb, &["node-00000", "node-00001", "node-00002"]);
            if let (Some(st), Some(want)) = (stored.status.as_mut(), slb.status.as_ref()) {
                st.conditions = want.conditions.clone();
                st.observed_generation = Some(1);
                for c in &mut st.conditions {
                    c.observed_generation = Some(1);
                }
            }
            stored_slbs.push(stored);
        }
        if let Some(ds) = &plan.daemonset {
            daemonsets.push(ds.clone());
        }
    }
    let pools = observed
        .pools
        .iter()
        .map(|p| {
            let mut p = (**p).clone();
            p.status = d
                .pools
                .iter()
                .find(|x| Some(&x.name) == p.metadata.name.as_ref())
                .map(|x| x.status.clone());
            p
        })
        .collect();
    (
        services,
        stored_slbs,
        daemonsets,
        d.role_bindings.clone(),
        pools,
    )
}

struct Filled {
    ctx: Arc<Context>,
    fake: support::Fake,
}

fn stores_with(
    observed: &Observed,
    services: Vec<Service>,
    slbs: Vec<ServiceLoadBalancer>,
    daemonsets: Vec<DaemonSet>,
    rbs: Vec<RoleBinding>,
    pools: Vec<LoadBalancerPool>,
) -> Filled {
    let (client, fake) = support::Fake::start();
    let (sr, mut sw) = reflector::store::<Service>();
    let (nr, mut nw) = reflector::store();
    let (er, mut ew) = reflector::store::<EndpointSlice>();
    let (pr, mut pw) = reflector::store::<LoadBalancerPool>();
    let (nsr, mut nsw) = reflector::store();
    let (br, mut bw) = reflector::store::<ServiceLoadBalancer>();
    let (dr, mut dw) = reflector::store::<DaemonSet>();
    let (rr, mut rw) = reflector::store::<RoleBinding>();
    // What the operator's watches keep of each object (controllers::servicelb::watch::Slim).
    fn slim<K: Slim>(v: Vec<K>) -> Vec<K> {
        v.into_iter()
            .map(|mut o| {
                o.slim();
                o
            })
            .collect()
    }
    let nodes = observed.nodes.iter().map(|n| (**n).clone()).collect();
    let slices = observed
        .endpoint_slices
        .iter()
        .map(|n| (**n).clone())
        .collect();
    support::fill(&mut sw, slim(services));
    support::fill(&mut nw, slim(nodes));
    support::fill(&mut ew, slim(slices));
    support::fill(&mut pw, slim(pools));
    support::fill(&mut nsw, vec![]);
    support::fill(&mut bw, slim(slbs));
    support::fill(&mut dw, slim(daemonsets));
    support::fill(&mut rw, slim(rbs));
    // Keep the writers alive with the stores (a dropped writer is fine for reads, but be explicit).
    std::mem::forget((sw, nw, ew, pw, nsw, bw, dw, rw));
    let stores = Stores {
        services: sr,
        nodes: nr,
        endpoint_slices: er,
        pools: pr,
        namespaces: nsr,
        service_load_balancers: br,
        daemonsets: dr,
        role_bindings: rr,
    };
    let metrics = Metrics::register(&prometheus::Registry::new()).expect("metrics");
    let ctx = Arc::new(Context::new(
        client,
        args(),
        stores,
        metrics,
        Arc::new(|| t(5000)),
        None,
    ));
    Filled { ctx, fake }
}

fn noop_resync_writes(services: usize) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let observed = synthetic(services, 20);
        let (svcs, slbs, dss, rbs, pools) = converged(&observed);
        let filled = stores_with(&observed, svcs.clone(), slbs, dss, rbs, pools);
        for svc in &svcs {
            reconcile::reconcile(Arc::new(svc.clone()), filled.ctx.clone())
                .await
                .expect("reconcile");
        }
        sweep::sweep(&filled.ctx).await.expect("sweep");
        let writes = filled.fake.writes();
        for w in writes.iter().take(5) {
            eprintln!("unexpected write: {} {}", w.method, w.path);
        }
        writes.len()
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The objects a cluster with 1000 served Services holds, one JSON document per line (what the
/// API server would send), written by the parent so the child does not carry the generator's
/// temporary allocations.
fn write_cluster(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let observed = synthetic(1000, 100);
    let (svcs, slbs, dss, rbs, pools) = converged(&observed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut line = |kind: &str, v: serde_json::Value| writeln!(f, "{kind}\t{v}");
    for o in svcs {
        line("Service", serde_json::to_value(o)?)?;
    }
    for o in slbs {
        line("ServiceLoadBalancer", serde_json::to_value(o)?)?;
    }
    for o in dss {
        line("DaemonSet", serde_json::to_value(o)?)?;
    }
    for o in rbs {
        line("RoleBinding", serde_json::to_value(o)?)?;
    }
    for o in pools {
        line("LoadBalancerPool", serde_json::to_value(o)?)?;
    }
    for o in &observed.nodes {
        line("Node", serde_json::to_value(o.as_ref())?)?;
    }
    for o in &observed.endpoint_slices {
        line("EndpointSlice", serde_json::to_value(o.as_ref())?)?;
    }
    Ok(())
}

fn parse_slim<K: Slim + serde::de::DeserializeOwned>(json: &str) -> K {
    let mut o: K = serde_json::from_str(json).expect("object");
    o.slim();
    o
}

/// Child process: read the cluster like a watch would, keep it in kube-runtime stores, build the
/// cached assignment, run one sweep (the whole desired state), and report RSS in KiB.
fn child(mode: &str, path: Option<String>) {
    use std::io::BufRead;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let kib = rt.block_on(async {
        let Some(path) = path.filter(|_| mode != "idle") else {
            return rss_kib();
        };
        let file = std::io::BufReader::new(std::fs::File::open(path).expect("cluster file"));
        let (mut svcs, mut slbs, mut dss, mut rbs, mut pools) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut observed = Observed::default();
        for line in file.lines() {
            let line = line.expect("line");
            let Some((kind, json)) = line.split_once('\t') else {
                continue;
            };
            match kind {
                // As the watch does: each object is slimmed as it arrives.
                "Service" => svcs.push(parse_slim(json)),
                "ServiceLoadBalancer" => slbs.push(parse_slim(json)),
                "DaemonSet" => dss.push(parse_slim(json)),
                "RoleBinding" => rbs.push(parse_slim(json)),
                "LoadBalancerPool" => pools.push(parse_slim(json)),
                "Node" => observed.nodes.push(Arc::new(parse_slim(json))),
                "EndpointSlice" => observed.endpoint_slices.push(Arc::new(parse_slim(json))),
                _ => {}
            }
        }
        eprintln!("rss after parse: {} KiB", rss_kib());
        let filled = stores_with(&observed, svcs, slbs, dss, rbs, pools);
        drop(observed);
        eprintln!("rss after stores: {} KiB", rss_kib());
        let assignment = filled.ctx.assignment();
        std::hint::black_box(&assignment);
        eprintln!("rss after assignment: {} KiB", rss_kib());
        // One sweep: the whole desired state, as the operator computes after changes.
        sweep::sweep(&filled.ctx).await.expect("sweep");
        rss_kib()
    });
    println!("{kib}");
}

fn run_child(mode: &str, path: &std::path::Path) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let out = std::process::Command::new(exe)
        .env(CHILD_ENV, mode)
        .env("PORTWAY_BENCH_CLUSTER", path)
        .output()
        .ok()?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let kib: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child(&mode, std::env::var("PORTWAY_BENCH_CLUSTER").ok());
        return;
    }
    // cargo bench passes --bench; nothing else to parse.
    let baseline = time_plan(500, 100, 5);
    let p4 = time_plan(5000, 1000, 3);
    println!(
        "baseline plan_500svc_100nodes_ms={:.1}; 5000x1000 / 500x100 = {:.1}x (100x the Service*Node product)",
        baseline.as_secs_f64() * 1000.0,
        p4.as_secs_f64() / baseline.as_secs_f64().max(1e-9)
    );
    println!(
        "P4 plan_5000svc_1000nodes_ms={:.1} (goal < 1000)",
        p4.as_secs_f64() * 1000.0
    );

    let writes = noop_resync_writes(200);
    println!("P5 noop_resync_writes={writes} (goal 0)");

    let dir = std::env::temp_dir().join(format!("portway-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("cluster.ndjson");
    let written = write_cluster(&path).is_ok();
    let result = if written {
        (run_child("idle", &path), run_child("stores", &path))
    } else {
        (None, None)
    };
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        (Some(idle), Some(full)) => {
            println!("baseline idle_process_rss_mb={idle:.1}");
            println!("P6 operator_rss_mb_1000svc={full:.1} (goal < 40)");
        }
        _ => println!(
            "P6 operator_rss_mb_1000svc=unmeasured (goal < 40): the child process did not report (no /proc?)"
        ),
    }
}
