//! Reads Kubernetes objects from YAML files (a folder or single files), as `portway plan` and
//! `portway migrate` take them. Every document is sorted by kind into typed collections; Portway
//! resources go through the same schema and CEL checks as on the API server, and an invalid one
//! is set aside with its reasons instead of being used. Nothing here panics on bad input.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use portway_crds::validation::{self, Kind};
use portway_crds::{ClusterCIDR, LoadBalancerPool, ServiceLoadBalancer};
use serde_json::Value;

/// Largest file read (hostile input guard); a Kubernetes object is at most 1.5 MiB in etcd.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why input could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, more than the {MAX_FILE_BYTES}-byte limit")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: no .yaml or .yml files found")]
    Empty { path: PathBuf },
}

/// A document that was read but not used, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    /// `file#document-index`.
    pub source: String,
    /// `Kind/namespace/name` as far as known.
    pub object: String,
    /// Why it was not used.
    pub reason: String,
}

/// Everything read, by kind.
#[derive(Clone, Debug, Default)]
pub struct InputSet {
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<Node>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub pools: Vec<LoadBalancerPool>,
    pub cluster_cidrs: Vec<ClusterCIDR>,
    pub service_load_balancers: Vec<ServiceLoadBalancer>,
    /// Upstream `networking.k8s.io/v1alpha1` ClusterCIDRs, kept raw for `portway migrate`.
    pub upstream_cluster_cidrs: Vec<Value>,
    /// Documents that were invalid, of unknown kinds, or duplicates.
    pub skipped: Vec<Skipped>,
}

/// Reads `paths` (files or folders; folders are read one level deep, `*.yaml`/`*.yml`, sorted).
pub fn read_paths(paths: &[PathBuf]) -> Result<InputSet, InputError> {
    let mut set = InputSet::default();
    for path in paths {
        for file in yaml_files(path)? {
            let text = read_limited(&file)?;
            set.add_yaml(&file.display().to_string(), &text)
                .map_err(|message| InputError::Yaml {
                    path: file.clone(),
                    message,
                })?;
        }
    }
    Ok(set)
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, InputError> {
    let read_err = |source| InputError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(InputError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(files)
}

fn read_limited(path: &Path) -> Result<String, InputError> {
    let read_err = |source| InputError::Read {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_FILE_BYTES {
        return Err(InputError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    std::fs::read_to_string(path).map_err(read_err)
}

fn object_ref(doc: &Value) -> String {
    let kind = doc["kind"].as_str().unwrap_or("?");
    let name = doc["metadata"]["name"].as_str().unwrap_or("?");
    match doc["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

impl InputSet {
    /// Adds every document of a YAML stream; `source` names it in messages. Fails only when the
    /// stream is not YAML at all; bad documents are recorded in `skipped`.
    pub fn add_yaml(&mut self, source: &str, text: &str) -> Result<(), String> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
        for (i, doc) in docs.into_iter().enumerate() {
            if doc.is_null() {
                continue;
            }
            let src = format!("{source}#{i}");
            if doc["kind"].as_str() == Some("List") {
                let items = doc["items"].as_array().cloned().unwrap_or_default();
                for item in items {
                    self.add_value(&src, item);
                }
            } else {
                self.add_value(&src, doc);
            }
        }
        Ok(())
    }

    /// Adds one object given as JSON.
    pub fn add_value(&mut self, source: &str, doc: Value) {
        let object = object_ref(&doc);
        let skip = |reason: String| Skipped {
            source: source.to_owned(),
            object: object.clone(),
            reason,
        };
        if doc["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            self.skipped.push(skip("metadata.name is missing".into()));
            return;
        }
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        if let Some(k) = Kind::from_kind(&kind)
            && api_version == portway_crds::names::API_VERSION
            && let Err(invalid) = validation::validate(k, &doc, None)
        {
            self.skipped.push(skip(invalid.to_string()));
            return;
        }
        let result = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => push(&mut self.namespaces, doc),
            ("v1", "Node") => push(&mut self.nodes, doc),
            ("v1", "Service") => push(&mut self.services, doc),
            ("discovery.k8s.io/v1", "EndpointSlice") => push(&mut self.endpoint_slices, doc),
            ("portway.dev/v1alpha1", "LoadBalancerPool") => push(&mut self.pools, doc),
            ("portway.dev/v1alpha1", "ClusterCIDR") => push(&mut self.cluster_cidrs, doc),
            ("portway.dev/v1alpha1", "ServiceLoadBalancer") => {
                push(&mut self.service_load_balancers, doc)
            }
            ("networking.k8s.io/v1alpha1", "ClusterCIDR") => {
                self.upstream_cluster_cidrs.push(doc);
                Ok(())
            }
            _ => Err(format!(
                "kind {kind:?} of apiVersion {api_version:?} is not used"
            )),
        };
        if let Err(reason) = result {
            self.skipped.push(skip(reason));
        }
    }
}

fn push<T: serde::de::DeserializeOwned>(into: &mut Vec<T>, doc: Value) -> Result<(), String> {
    let obj = serde_json::from_value(doc).map_err(|e| format!("does not deserialize: {e}"))?;
    into.push(obj);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_read_by_kind() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let set = read_paths(&[dir]).expect("examples read");
        assert!(set.skipped.is_empty(), "{:?}", set.skipped);
        assert_eq!(set.nodes.len(), 5);
        assert!(set.services.len() >= 4);
        assert!(set.pools.len() >= 2);
        assert!(set.cluster_cidrs.len() >= 2);
        assert!(set.endpoint_slices.len() >= 3);
    }

    #[test]
    fn invalid_and_unknown_documents_are_skipped_with_reasons() {
        let mut set = InputSet::default();
        let yaml = r#"
apiVersion: portway.dev/v1alpha1
kind: ClusterCIDR
metadata: {name: bad}
spec: {perNodeHostBits: 8, ipv4: "10.42.1.0/16"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
---
apiVersion: v1
kind: Node
metadata: {}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {ports: "not a list"}
"#;
        set.add_yaml("t.yaml", yaml).expect("yaml parses");
        assert_eq!(set.skipped.len(), 4, "{:?}", set.skipped);
        assert!(
            set.skipped[0].reason.contains("ipv4 must be an IPv4 CIDR"),
            "{:?}",
            set.skipped[0]
        );
        assert!(set.cluster_cidrs.is_empty() && set.services.is_empty() && set.nodes.is_empty());
    }

    #[test]
    fn non_yaml_is_an_error_not_a_panic() {
        let mut set = InputSet::default();
        assert!(set.add_yaml("t.yaml", "a: [unclosed").is_err());
    }
}
