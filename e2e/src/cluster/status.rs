//! `portway-cluster status`: per node, its processes (pid or `down`) and its readiness and pod
//! CIDRs as the API server reports them.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use super::state::Record;
use super::{process, up};

/// The status text of one cluster.
pub async fn status(record: &Record) -> String {
    let spec = &record.spec;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {} ({}), API {}, kubeconfig {}",
        spec.name,
        spec.variant.name(),
        spec.api_server_url(),
        spec.admin_kubeconfig().display()
    );
    let nodes = match up::admin_client(spec).await {
        Ok(c) => Api::<Node>::all(c)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = &nodes {
        let _ = writeln!(out, "  API server: {e}");
    }
    for node in &spec.nodes {
        let api = nodes.as_ref().ok().and_then(|l| {
            l.iter()
                .find(|n| n.metadata.name.as_deref() == Some(&node.name))
        });
        let ready = api
            .and_then(|n| {
                n.status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| c.status.clone())
            })
            .unwrap_or_else(|| "unknown".into());
        let cidrs = api
            .and_then(|n| n.spec.as_ref()?.pod_cidrs.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} {} Ready={ready} podCIDRs={cidrs:?}",
            node.name,
            node.node_ip_arg()
        );
        for c in record
            .components
            .iter()
            .filter(|c| c.node.as_deref() == Some(node.name.as_str()))
        {
            let state = process::running(spec, c)
                .map_or_else(|| "down".to_owned(), |pid| format!("pid {pid}"));
            let _ = writeln!(
                out,
                "    {:<24} {state}",
                c.name.trim_start_matches(&format!("{}.", node.name))
            );
        }
    }
    for c in record.components.iter().filter(|c| c.node.is_none()) {
        let state =
            process::running(spec, c).map_or_else(|| "down".to_owned(), |pid| format!("pid {pid}"));
        let _ = writeln!(out, "  {:<26} {state}", c.name);
    }
    out
}
