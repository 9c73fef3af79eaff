//! Reads Kubernetes objects from YAML files (a folder or single files), as `portway plan` and
//! `portway migrate` take them. Every document is sorted by kind into typed collections; Portway
//! resources go through the same schema and CEL checks as on the API server, and an invalid one
//! is set aside with its reasons instead of being used. With strict field validation (see
//! [`strict`]) an object with a field its type does not have is set aside too. An object given
//! twice (same apiVersion, kind, namespace and name) is never used: which copy would win would
//! depend on the order of files and documents, so every copy is set aside, naming the others.
//! Nothing here panics on bad input.

pub mod strict;

use std::collections::BTreeMap;
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

/// Start of the reason of every copy of an object given more than once.
pub const DUPLICATE_OBJECT: &str = "duplicate object";

/// Reason of an object without `metadata.name`.
pub const NAME_MISSING: &str = "metadata.name is missing";

/// Whether fields a type does not have reject the object (kubectl's `--validate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Reject it, naming the fields, like the API server with `fieldValidation=Strict`
    /// (`portway plan`).
    #[default]
    Strict,
    /// Drop the fields silently (`portway migrate`, whose input is a dump of a cluster that may
    /// run a newer Kubernetes than the one this binary knows).
    Ignore,
}

/// A document that was read but not used, and why (`rejected` in `portway plan -o json`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// `file#document-index` (`file#document-index.items[i]` for an item of a `List`).
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
    /// Unknown fields: rejected or dropped.
    pub field_validation: FieldValidation,
    /// Where each named object was read (`file#document-index`), to find duplicates.
    pub sources: BTreeMap<ObjectId, Vec<String>>,
}

/// What makes two documents the same object: apiVersion, kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub api_version: String,
    pub kind: String,
    /// Empty when the document names none.
    pub namespace: String,
    pub name: String,
}

impl ObjectId {
    /// The identity of a document; `None` when it has no name.
    pub fn of(doc: &Value) -> Option<Self> {
        let name = doc["metadata"]["name"].as_str().filter(|n| !n.is_empty())?;
        Some(Self {
            api_version: doc["apiVersion"].as_str().unwrap_or_default().to_owned(),
            kind: doc["kind"].as_str().unwrap_or_default().to_owned(),
            namespace: doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            name: name.to_owned(),
        })
    }

    fn names(&self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        meta.name.as_deref() == Some(self.name.as_str())
            && meta.namespace.as_deref().unwrap_or_default() == self.namespace
    }
}

/// Reads `paths` with strict field validation; see [`read_paths_with`].
pub fn read_paths(paths: &[PathBuf]) -> Result<InputSet, InputError> {
    read_paths_with(paths, FieldValidation::Strict)
}

/// Reads `paths` (files or folders; folders are read one level deep, `*.yaml`/`*.yml`). Files
/// are read in path order, each once, whatever the order of `paths`; `skipped` is sorted by
/// source.
pub fn read_paths_with(
    paths: &[PathBuf],
    field_validation: FieldValidation,
) -> Result<InputSet, InputError> {
    let mut set = InputSet {
        field_validation,
        ..InputSet::default()
    };
    let mut files = Vec::new();
    for path in paths {
        files.extend(yaml_files(path)?);
    }
    files.sort();
    files.dedup();
    for file in files {
        let text = read_limited(&file)?;
        set.add_yaml(&file.display().to_string(), &text)
            .map_err(|message| InputError::Yaml {
                path: file.clone(),
                message,
            })?;
    }
    set.skipped.sort_by(order_of_skipped);
    Ok(set)
}

/// Sort key of a source: file, document index, List item index.
pub fn source_order(source: &str) -> (&str, usize, Option<usize>) {
    let Some((file, rest)) = source.rsplit_once('#') else {
        return (source, 0, None);
    };
    let (doc, item) = match rest.split_once(".items[") {
        Some((doc, item)) => (doc, item.trim_end_matches(']').parse().ok()),
        None => (rest, None),
    };
    (file, doc.parse().unwrap_or(usize::MAX), item)
}

/// Order of [`InputSet::skipped`]: by source, then object and reason.
pub fn order_of_skipped(a: &Skipped, b: &Skipped) -> std::cmp::Ordering {
    source_order(&a.source)
        .cmp(&source_order(&b.source))
        .then_with(|| a.object.cmp(&b.object))
        .then_with(|| a.reason.cmp(&b.reason))
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
                for (j, item) in items.into_iter().enumerate() {
                    self.add_value(&format!("{src}.items[{j}]"), item);
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
        let Some(id) = ObjectId::of(&doc) else {
            self.skipped.push(Skipped {
                source: source.to_owned(),
                object,
                reason: NAME_MISSING.into(),
            });
            return;
        };
        let sources = self.sources.entry(id.clone()).or_default();
        sources.push(source.to_owned());
        if sources.len() > 1 {
            self.reject_duplicates(&id, &object);
            return;
        }
        if let Err(reason) = self.accept(doc) {
            self.skipped.push(Skipped {
                source: source.to_owned(),
                object,
                reason,
            });
        }
    }

    /// Checks `doc` and adds it to its collection, or says why not.
    fn accept(&mut self, doc: Value) -> Result<(), String> {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let strict = self.field_validation == FieldValidation::Strict;
        if let Some(k) = Kind::from_kind(&kind)
            && api_version == portway_crds::names::API_VERSION
        {
            // Decoding comes before validation on the API server too: an unknown field is
            // reported alone.
            let unknown = if strict {
                strict::unknown_crd_fields(k, &doc)
            } else {
                Vec::new()
            };
            if !unknown.is_empty() {
                return Err(strict::reason(&unknown));
            }
            validation::validate(k, &doc, None).map_err(|invalid| invalid.to_string())?;
        }
        let Some(collection) = Collection::of(&api_version, &kind) else {
            return Err(format!(
                "kind {kind:?} of apiVersion {api_version:?} is not used"
            ));
        };
        // The schema walk above already checked the fields of Portway objects.
        let check_core = strict && !collection.is_portway();
        match collection {
            Collection::Namespaces => push(&mut self.namespaces, doc, check_core),
            Collection::Nodes => push(&mut self.nodes, doc, check_core),
            Collection::Services => push(&mut self.services, doc, check_core),
            Collection::EndpointSlices => push(&mut self.endpoint_slices, doc, check_core),
            Collection::Pools => push(&mut self.pools, doc, false),
            Collection::ClusterCidrs => push(&mut self.cluster_cidrs, doc, false),
            Collection::ServiceLoadBalancers => push(&mut self.service_load_balancers, doc, false),
            Collection::UpstreamClusterCidrs => {
                self.upstream_cluster_cidrs.push(doc);
                Ok(())
            }
        }
    }

    /// `id` was given more than once: no copy is used, and each copy names the others.
    fn reject_duplicates(&mut self, id: &ObjectId, object: &str) {
        let mut sources = self.sources.get(id).cloned().unwrap_or_default();
        sources.sort_by(|a, b| source_order(a).cmp(&source_order(b)));
        if let Some(collection) = Collection::of(&id.api_version, &id.kind) {
            self.remove(collection, id);
        }
        self.skipped.retain(|s| !sources.contains(&s.source));
        for source in &sources {
            let others: Vec<&str> = sources
                .iter()
                .filter(|o| *o != source)
                .map(String::as_str)
                .collect();
            self.skipped.push(Skipped {
                source: source.clone(),
                object: object.to_owned(),
                reason: format!(
                    "{DUPLICATE_OBJECT}: the same apiVersion, kind, namespace and name are also in {}; no copy is used",
                    others.join(", ")
                ),
            });
        }
    }

    fn remove(&mut self, collection: Collection, id: &ObjectId) {
        fn drop_from<T: kube::Resource>(objects: &mut Vec<T>, id: &ObjectId) {
            objects.retain(|o| !id.names(o.meta()));
        }
        match collection {
            Collection::Namespaces => drop_from(&mut self.namespaces, id),
            Collection::Nodes => drop_from(&mut self.nodes, id),
            Collection::Services => drop_from(&mut self.services, id),
            Collection::EndpointSlices => drop_from(&mut self.endpoint_slices, id),
            Collection::Pools => drop_from(&mut self.pools, id),
            Collection::ClusterCidrs => drop_from(&mut self.cluster_cidrs, id),
            Collection::ServiceLoadBalancers => drop_from(&mut self.service_load_balancers, id),
            Collection::UpstreamClusterCidrs => self
                .upstream_cluster_cidrs
                .retain(|doc| ObjectId::of(doc).as_ref() != Some(id)),
        }
    }
}

/// The collection of [`InputSet`] a kind goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Collection {
    Namespaces,
    Nodes,
    Services,
    EndpointSlices,
    Pools,
    ClusterCidrs,
    ServiceLoadBalancers,
    UpstreamClusterCidrs,
}

impl Collection {
    fn of(api_version: &str, kind: &str) -> Option<Self> {
        Some(match (api_version, kind) {
            ("v1", "Namespace") => Self::Namespaces,
            ("v1", "Node") => Self::Nodes,
            ("v1", "Service") => Self::Services,
            ("discovery.k8s.io/v1", "EndpointSlice") => Self::EndpointSlices,
            ("portway.dev/v1alpha1", "LoadBalancerPool") => Self::Pools,
            ("portway.dev/v1alpha1", "ClusterCIDR") => Self::ClusterCidrs,
            ("portway.dev/v1alpha1", "ServiceLoadBalancer") => Self::ServiceLoadBalancers,
            ("networking.k8s.io/v1alpha1", "ClusterCIDR") => Self::UpstreamClusterCidrs,
            _ => return None,
        })
    }

    fn is_portway(self) -> bool {
        matches!(
            self,
            Self::Pools | Self::ClusterCidrs | Self::ServiceLoadBalancers
        )
    }
}

/// Decodes `doc` into `into`; with `check_unknown`, a field the type does not have rejects it.
fn push<T: serde::de::DeserializeOwned>(
    into: &mut Vec<T>,
    doc: Value,
    check_unknown: bool,
) -> Result<(), String> {
    let (obj, unknown) =
        strict::decode::<T>(doc).map_err(|e| format!("does not deserialize: {e}"))?;
    if check_unknown && !unknown.is_empty() {
        return Err(strict::reason(&unknown));
    }
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

    const NODE_A: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: worker-1}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
"#;

    const NODE_B: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: worker-1}
status: {addresses: [{type: InternalIP, address: 192.0.2.99}]}
"#;

    #[test]
    fn every_copy_of_a_duplicate_object_is_rejected_naming_the_others() {
        let pool = "apiVersion: portway.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata: {name: p}\nspec: {nodeSelector: {}}\n";
        let other = "apiVersion: v1\nkind: Node\nmetadata: {name: worker-2}\n";
        let mut set = InputSet::default();
        set.add_yaml("a.yaml", &format!("{NODE_A}---\n{pool}---\n{other}"))
            .expect("yaml");
        set.add_yaml("b.yaml", &format!("{pool}---\n{NODE_B}"))
            .expect("yaml");
        set.add_yaml("c.yaml", NODE_A).expect("yaml");
        set.skipped.sort_by(order_of_skipped);
        let got: Vec<(&str, &str)> = set
            .skipped
            .iter()
            .map(|s| (s.source.as_str(), s.reason.as_str()))
            .collect();
        let dup = |others: &str| {
            format!(
                "{DUPLICATE_OBJECT}: the same apiVersion, kind, namespace and name are also in {others}; no copy is used"
            )
        };
        assert_eq!(
            got,
            [
                ("a.yaml#0", dup("b.yaml#1, c.yaml#0").as_str()),
                ("a.yaml#1", dup("b.yaml#0").as_str()),
                ("b.yaml#0", dup("a.yaml#1").as_str()),
                ("b.yaml#1", dup("a.yaml#0, c.yaml#0").as_str()),
                ("c.yaml#0", dup("a.yaml#0, b.yaml#1").as_str()),
            ]
        );
        assert_eq!(set.skipped[0].object, "Node/worker-1");
        assert_eq!(set.skipped[1].object, "LoadBalancerPool/p");
        // Neither copy is used, whatever the order; the other Node is.
        let names: Vec<_> = set.nodes.iter().map(|n| n.metadata.name.clone()).collect();
        assert_eq!(names, [Some("worker-2".to_owned())]);
        assert!(set.pools.is_empty());
    }

    #[test]
    fn an_invalid_copy_is_a_duplicate_too_and_list_items_have_their_own_source() {
        let mut set = InputSet::default();
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}\n- {}\n",
            "{apiVersion: v1, kind: Namespace, metadata: {name: shop}}",
            "{apiVersion: v1, kind: Namespace, metadata: {name: shop}, spce: {}}"
        );
        set.add_yaml("l.yaml", &list).expect("yaml");
        assert!(set.namespaces.is_empty());
        let sources: Vec<&str> = set.skipped.iter().map(|s| s.source.as_str()).collect();
        assert_eq!(sources, ["l.yaml#0.items[0]", "l.yaml#0.items[1]"]);
        assert!(
            set.skipped[0]
                .reason
                .ends_with("also in l.yaml#0.items[1]; no copy is used")
        );
        assert_eq!(source_order("l.yaml#0.items[1]"), ("l.yaml", 0, Some(1)));
        assert!(source_order("a.yaml#10") > source_order("a.yaml#9"));
    }

    #[test]
    fn unknown_fields_reject_core_and_portway_objects_unless_ignored() {
        let yaml = r#"
apiVersion: portway.dev/v1alpha1
kind: LoadBalancerPool
metadata: {name: typo}
spec: {nodeSelector: {}, serviceSelectr: {matchLabels: {app: web}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {type: LoadBalancer, ports: [{port: 80, targetPrt: 8080}]}
"#;
        let mut set = InputSet::default();
        set.add_yaml("t.yaml", yaml).expect("yaml");
        let reasons: Vec<&str> = set.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                r#"strict decoding error: unknown field "spec.serviceSelectr""#,
                r#"strict decoding error: unknown field "spec.ports[0].targetPrt""#,
            ]
        );
        assert!(set.pools.is_empty() && set.services.is_empty());

        let mut lenient = InputSet {
            field_validation: FieldValidation::Ignore,
            ..InputSet::default()
        };
        lenient.add_yaml("t.yaml", yaml).expect("yaml");
        assert!(lenient.skipped.is_empty(), "{:?}", lenient.skipped);
        assert_eq!((lenient.pools.len(), lenient.services.len()), (1, 1));
    }

    #[test]
    fn files_are_read_once_in_path_order_whatever_the_order_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, NODE_A).expect("write");
        std::fs::write(&b, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
            .expect("write");
        let one = read_paths(&[b.clone(), a.clone()]).expect("reads");
        let two = read_paths(&[a.clone(), dir.path().to_owned(), b]).expect("reads");
        assert_eq!(one.skipped, two.skipped);
        assert_eq!(one.nodes, two.nodes);
        assert_eq!(two.nodes.len(), 1, "a.yaml read twice is not a duplicate");
    }

    #[test]
    fn non_yaml_is_an_error_not_a_panic() {
        let mut set = InputSet::default();
        assert!(set.add_yaml("t.yaml", "a: [unclosed").is_err());
    }
}
