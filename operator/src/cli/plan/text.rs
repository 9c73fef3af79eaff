//! `-o yaml` (the objects, with comments) and `-o wide` (tables) of `portway plan`.

use std::fmt::Write as _;

use portway_crds::condition::{self, types};
use serde::Serialize;

use super::{Plan, pool_status_object, ready_reason, service_status_object};
use crate::plan;

fn yaml<T: Serialize>(v: &T) -> String {
    match serde_saphyr::to_string(v) {
        Ok(s) => s,
        Err(e) => format!("# cannot render as YAML: {e}\n"),
    }
}

fn comment_lines(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "# {line}");
    }
}

fn ingress_list(p: &plan::ServicePlan) -> String {
    let ips: Vec<&str> = p.ingress.iter().filter_map(|i| i.ip.as_deref()).collect();
    if ips.is_empty() {
        "-".to_owned()
    } else {
        ips.join(",")
    }
}

/// `-o yaml`: every object the operator would write, as YAML documents with comments.
pub fn render_yaml(plan: &Plan<'_>) -> String {
    let (d, cidrs) = (&plan.desired, &plan.cidrs);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# portway plan: {} LoadBalancer Services served, {} ignored; agents assumed forwarding on every usable node",
        d.services
            .iter()
            .filter(|s| s.service_load_balancer.is_some())
            .count(),
        d.ignored.len()
    );
    for s in &plan.rejected {
        let _ = writeln!(out, "# skipped {} ({}): {}", s.object, s.source, s.reason);
    }
    for p in &d.services {
        let (reason, message) = ready_reason(p);
        let _ = writeln!(out, "---");
        let _ = writeln!(
            out,
            "# Service {}: {} ({reason}); pool {}; ingress {}",
            p.service,
            p.state.as_str(),
            p.pool.as_deref().unwrap_or("-"),
            ingress_list(p)
        );
        comment_lines(&mut out, &message);
        if !p.stale_node_entries.is_empty() {
            let _ = writeln!(
                out,
                "# stale status.nodes entries the operator removes: {}",
                p.stale_node_entries.join(", ")
            );
        }
        if let Some(ds) = &p.daemonset {
            out.push_str(&yaml(ds));
            let _ = writeln!(out, "---");
        } else {
            let _ = writeln!(out, "# no DaemonSet");
        }
        if let Some(slb) = &p.service_load_balancer {
            out.push_str(&yaml(slb));
            let _ = writeln!(out, "---");
        }
        let _ = writeln!(out, "# Service status written by the operator:");
        out.push_str(&yaml(&service_status_object(p)));
    }
    for (key, why) in &d.ignored {
        let _ = writeln!(out, "---\n# Service {key} ignored: {why}");
    }
    for rb in &d.role_bindings {
        let _ = writeln!(out, "---");
        out.push_str(&yaml(rb));
    }
    for pool in &d.pools {
        let _ = writeln!(out, "---");
        out.push_str(&yaml(&pool_status_object(pool)));
    }
    let _ = writeln!(out, "---");
    match cidrs {
        Ok(plan) => {
            let _ = writeln!(out, "# Pod CIDRs per Node (ClusterCIDR controller):");
            out.push_str(&yaml(plan));
        }
        Err(e) => {
            let _ = writeln!(out, "# Pod CIDRs per Node: not shown: {e}");
        }
    }
    out
}

/// The CIDR plan as two tables: what each Node has or gets, and each ClusterCIDR's use.
fn cidr_tables(plan: &crate::cidr::CidrPlan) -> String {
    let mut nodes = vec![
        ["NODE", "CIDR STATE", "CLUSTERCIDR", "POD CIDRS", "REASON"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for n in &plan.nodes {
        nodes.push(vec![
            n.node.clone(),
            n.state.as_str().to_owned(),
            n.cluster_cidr.clone().unwrap_or_else(|| "-".to_owned()),
            if n.pod_cidrs.is_empty() {
                "-".to_owned()
            } else {
                n.pod_cidrs.join(",")
            },
            n.reason.clone().unwrap_or_default(),
        ]);
    }
    let usage = |u: &Option<portway_crds::FamilyUsage>| {
        u.as_ref()
            .map(|u| format!("{}/{}", u.allocated, u.capacity))
            .unwrap_or_else(|| "-".to_owned())
    };
    let mut ccs = vec![
        [
            "CLUSTERCIDR",
            "IPV4 USED",
            "IPV6 USED",
            "READY",
            "NEARLYFULL",
            "EXHAUSTED",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for c in &plan.cluster_cidrs {
        let status = |t: &str| {
            c.conditions
                .iter()
                .find(|x| x.type_ == t)
                .map(|x| x.status.clone())
                .unwrap_or_else(|| "-".to_owned())
        };
        ccs.push(vec![
            c.name.clone(),
            usage(&c.ipv4),
            usage(&c.ipv6),
            status(portway_crds::condition::types::READY),
            status(portway_crds::condition::types::NEARLY_FULL),
            status(portway_crds::condition::types::EXHAUSTED),
        ]);
    }
    let mut out = table(&nodes);
    out.push('\n');
    out.push_str(&table(&ccs));
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[c]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// `-o wide`: Services, pools, pod CIDRs and ClusterCIDRs as tables.
pub fn render_wide(plan: &Plan<'_>) -> String {
    let (d, cidrs) = (&plan.desired, &plan.cidrs);
    let mut rows = vec![vec![
        "SERVICE".to_owned(),
        "STATE".to_owned(),
        "POOL".to_owned(),
        "DATAPLANE".to_owned(),
        "POLICY".to_owned(),
        "PORTS".to_owned(),
        "DAEMONSET".to_owned(),
        "INGRESS".to_owned(),
        "REASON".to_owned(),
    ]];
    for p in &d.services {
        let slb = p.service_load_balancer.as_ref();
        let ports = slb
            .map(|s| {
                s.spec
                    .ports
                    .iter()
                    .map(|p| format!("{}/{}", p.protocol.as_str(), p.port))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "-".to_owned());
        rows.push(vec![
            p.service.to_string(),
            p.state.as_str().to_owned(),
            p.pool.clone().unwrap_or_else(|| "-".to_owned()),
            slb.map(|s| s.spec.dataplane.as_str().to_owned())
                .unwrap_or_else(|| "-".to_owned()),
            slb.map(|s| format!("{:?}", s.spec.external_traffic_policy))
                .unwrap_or_else(|| "-".to_owned()),
            ports,
            p.daemonset
                .as_ref()
                .and_then(|d| d.metadata.name.clone())
                .unwrap_or_else(|| "-".to_owned()),
            ingress_list(p),
            ready_reason(p).0,
        ]);
    }
    for (key, why) in &d.ignored {
        rows.push(vec![
            key.to_string(),
            "ignored".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            why.clone(),
        ]);
    }
    let mut out = table(&rows);
    let problems: Vec<String> = d
        .services
        .iter()
        .filter(|p| p.state != plan::ServiceState::Serving)
        .map(|p| format!("{}: {}", p.service, ready_reason(p).1))
        .collect();
    if !problems.is_empty() {
        out.push('\n');
        for line in problems {
            let _ = writeln!(out, "{line}");
        }
    }
    out.push('\n');
    let mut pools = vec![vec![
        "POOL".to_owned(),
        "NODES".to_owned(),
        "SERVICES".to_owned(),
        "READY".to_owned(),
    ]];
    for p in &d.pools {
        pools.push(vec![
            p.name.clone(),
            p.status.nodes.to_string(),
            p.status.services.to_string(),
            condition::find(&p.status.conditions, types::READY)
                .map(|c| c.status.clone())
                .unwrap_or_default(),
        ]);
    }
    out.push_str(&table(&pools));
    out.push('\n');
    match cidrs {
        Ok(plan) => out.push_str(&cidr_tables(plan)),
        Err(e) => {
            let _ = writeln!(out, "Pod CIDRs per Node: not shown: {e}");
        }
    }
    for s in &plan.rejected {
        let _ = writeln!(out, "skipped {} ({}): {}", s.object, s.source, s.reason);
    }
    out
}
