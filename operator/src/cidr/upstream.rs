//! `portway migrate`: upstream `networking.k8s.io/v1alpha1` ClusterCIDR objects (Kubernetes
//! 1.25-1.28, removed in 1.29; still in K3s' docs) to `portway.dev/v1alpha1`. Field names are the
//! same; the conversion checks every field so a bad object is reported, never half-converted.
//!
//! Semantics that change on purpose: upstream ANDed the `nodeSelectorTerms` by mistake
//! (kubernetes#116419); Portway ORs them as core `v1.NodeSelector` does everywhere else, which
//! is what a manifest with several terms meant.

use std::collections::BTreeMap;

use portway_crds::validation::{self, Invalid, Kind};
use portway_crds::{ClusterCIDR, ClusterCIDRSpec, NodeSelector};
use serde_json::Value;

use super::block::{Block, Family};

/// `apiVersion` of the upstream objects.
pub const UPSTREAM_API_VERSION: &str = "networking.k8s.io/v1alpha1";
/// Annotation dropped during conversion (it describes the old object).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Why an upstream ClusterCIDR could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(
        "not an upstream ClusterCIDR: apiVersion {api_version:?}, kind {kind:?} (expected {UPSTREAM_API_VERSION} ClusterCIDR)"
    )]
    NotUpstream { api_version: String, kind: String },
    #[error("upstream ClusterCIDR has no metadata.name")]
    MissingName,
    #[error("ClusterCIDR {name}: {field}: {message}")]
    Field {
        name: String,
        field: &'static str,
        message: String,
    },
    #[error("ClusterCIDR {name}: the converted object is not valid: {source}")]
    Invalid {
        name: String,
        #[source]
        source: Invalid,
    },
}

/// Converts an upstream `networking.k8s.io/v1alpha1` ClusterCIDR (as JSON) to Portway's. Name,
/// labels and annotations are kept; server-set metadata (uid, resourceVersion, finalizers,
/// managedFields, ...) is dropped. `perNodeHostBits` applies to both families, as upstream.
pub fn convert_upstream(upstream: &Value) -> Result<ClusterCIDR, ConvertError> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let api_version = text(upstream.get("apiVersion"));
    let kind = text(upstream.get("kind"));
    if api_version != UPSTREAM_API_VERSION || kind != "ClusterCIDR" {
        return Err(ConvertError::NotUpstream { api_version, kind });
    }
    let meta = upstream.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or(ConvertError::MissingName)?
        .to_owned();
    let field = |field: &'static str, message: String| ConvertError::Field {
        name: name.clone(),
        field,
        message,
    };

    let spec = upstream
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| field("spec", "missing or not an object".into()))?;
    if let Some(unknown) = spec.keys().find(|k| {
        !matches!(
            k.as_str(),
            "nodeSelector" | "perNodeHostBits" | "ipv4" | "ipv6"
        )
    }) {
        return Err(field(
            "spec",
            format!(
                "unknown field {unknown:?} (upstream has nodeSelector, perNodeHostBits, ipv4, ipv6)"
            ),
        ));
    }
    let bits = spec
        .get("perNodeHostBits")
        .ok_or_else(|| field("spec.perNodeHostBits", "required".into()))?;
    let per_node_host_bits = bits
        .as_i64()
        .and_then(|b| i32::try_from(b).ok())
        .ok_or_else(|| field("spec.perNodeHostBits", format!("{bits} is not an integer")))?;

    let range = |key: &'static str, path: &'static str, family: Family| match spec.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => {
            let net: ipnet::IpNet = s
                .parse()
                .map_err(|_| field(path, format!("{s:?} is not a CIDR")))?;
            let block = Block::from_net(net);
            if block.family != family {
                return Err(field(path, format!("{s:?} is not an {family} CIDR")));
            }
            if net.addr() != net.network() {
                return Err(field(
                    path,
                    format!(
                        "{s:?} has host bits set; the network is {block} (check which range was meant)"
                    ),
                ));
            }
            Ok(Some(block.to_string()))
        }
        Some(other) => Err(field(path, format!("{other} is not a string"))),
    };
    let ipv4 = range("ipv4", "spec.ipv4", Family::V4)?;
    let ipv6 = range("ipv6", "spec.ipv6", Family::V6)?;

    let node_selector = match spec.get("nodeSelector") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let sel: NodeSelector = serde_json::from_value(v.clone())
                .map_err(|e| field("spec.nodeSelector", e.to_string()))?;
            (!sel.node_selector_terms.is_empty()).then_some(sel)
        }
    };

    let mut cidr = ClusterCIDR::new(
        &name,
        ClusterCIDRSpec {
            node_selector,
            per_node_host_bits,
            ipv4_per_node_host_bits: None,
            ipv6_per_node_host_bits: None,
            ipv4,
            ipv6,
            priority: 0,
        },
    );
    let string_map = |key: &str| -> Result<Option<BTreeMap<String, String>>, ConvertError> {
        match meta.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let mut map: BTreeMap<String, String> =
                    serde_json::from_value(v.clone()).map_err(|e| ConvertError::Field {
                        name: name.clone(),
                        field: "metadata",
                        message: format!("{key}: {e}"),
                    })?;
                map.remove(LAST_APPLIED);
                Ok((!map.is_empty()).then_some(map))
            }
        }
    };
    cidr.metadata.labels = string_map("labels")?;
    cidr.metadata.annotations = string_map("annotations")?;

    let json = serde_json::to_value(&cidr).map_err(|e| field("spec", e.to_string()))?;
    validation::validate(Kind::ClusterCIDR, &json, None).map_err(|source| {
        ConvertError::Invalid {
            name: name.clone(),
            source,
        }
    })?;
    Ok(cidr)
}
