//! `portway migrate`'s output: one YAML stream for `kubectl apply --server-side`, with the notes
//! as comments. The Service documents carry only name, namespace and the `portway.dev/pool`
//! annotation: server-side apply then adds the annotation and touches nothing else of the Service
//! (a client-side `kubectl apply` of such a partial document could drop fields recorded in an
//! older last-applied-configuration, hence `--server-side`).

use std::fmt::Write as _;

use portway_crds::names::POOL_ANNOTATION;
use serde::Serialize;
use serde_json::json;

use super::Migration;
use super::servicelb::K3sMode;

/// Field manager the printed apply command uses.
pub const FIELD_MANAGER: &str = "portway-migrate";

fn yaml<T: Serialize>(v: &T) -> Result<String, String> {
    serde_saphyr::to_string(v).map_err(|e| e.to_string())
}

fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "# {line}");
    }
}

/// Renders `m` as a YAML stream; `source` names the input in the header.
pub fn yaml_stream(m: &Migration, source: &str) -> Result<String, String> {
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "portway migrate: K3s ServiceLB labels and upstream ClusterCIDRs of {source}\n\
             {} pools, {} Service annotations, {} ClusterCIDRs.\n\
             Apply with: kubectl apply --server-side --field-manager={FIELD_MANAGER} -f <this file>\n\
             (server-side apply: each Service document only adds the {POOL_ANNOTATION} annotation).",
            m.pools.len(),
            m.pins.len(),
            m.cluster_cidrs.len()
        ),
    );
    let mode = match m.mode {
        K3sMode::AllNodes => "every node serves",
        K3sMode::EnableLbLabels => "enablelb/lbpool node labels in use",
    };
    comment(&mut out, &format!("K3s mode: {mode}"));
    for note in &m.notes {
        comment(&mut out, &format!("note: {note}"));
    }
    for e in &m.errors {
        comment(&mut out, &format!("NOT CONVERTED: {e}"));
    }
    for pool in &m.pools {
        out.push_str("---\n");
        out.push_str(&yaml(pool)?);
    }
    for pin in &m.pins {
        out.push_str("---\n");
        let nodes = if pin.k3s_nodes.is_empty() {
            "no node".to_owned()
        } else {
            pin.k3s_nodes.join(", ")
        };
        comment(&mut out, &format!("K3s serves it from: {nodes}"));
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": pin.name,
                "namespace": pin.namespace,
                "annotations": {POOL_ANNOTATION: pin.pool},
            },
        });
        out.push_str(&yaml(&doc)?);
    }
    for cidr in &m.cluster_cidrs {
        out.push_str("---\n");
        out.push_str(&yaml(cidr)?);
    }
    Ok(out)
}
