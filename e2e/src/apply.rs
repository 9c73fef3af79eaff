//! Server-side apply of arbitrary YAML documents (examples, rendered chart manifests), like
//! `kubectl apply --server-side`: kinds are resolved through discovery, namespaces and CRDs go
//! first, and a document's `status` is written through the `/status` subresource afterwards
//! (an apply of the object itself ignores it), the way a kubelet or controller would.
//!
//! The status goes in as a JSON merge patch, not an apply: a dual-stack Node has two
//! `InternalIP` addresses, but the server's SSA schema keys `status.addresses` by `type`, so an
//! apply that carries them fails with "duplicate entries for key [type=\"InternalIP\"]"
//! (kubernetes/kubernetes#101029, #121896). Kubelets patch, too. (Applies that do not carry the
//! addresses, e.g. of `spec.podCIDRs`, work on such Nodes: checked against v1.33.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, ApiCapabilities, ApiResource, Scope};
use serde_json::{Value, json};

/// One YAML document and where it came from.
#[derive(Clone, Debug)]
pub struct Document {
    /// `file#index`.
    pub source: String,
    pub value: Value,
}

impl Document {
    /// `Kind/namespace/name` (namespace omitted when absent).
    pub fn describe(&self) -> String {
        let kind = self.value["kind"].as_str().unwrap_or("?");
        let name = self.value["metadata"]["name"].as_str().unwrap_or("?");
        match self.value["metadata"]["namespace"].as_str() {
            Some(ns) => format!("{kind}/{ns}/{name}"),
            None => format!("{kind}/{name}"),
        }
    }

    /// The document's `kind`.
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }
}

/// Why a document could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{source_doc}: {message}")]
    Document { source_doc: String, message: String },
    #[error("{source_doc} ({object}): {what}: {error}")]
    Kube {
        source_doc: String,
        object: String,
        what: &'static str,
        #[source]
        error: Box<kube::Error>,
    },
}

/// Reads every document of `paths` (files, or folders read one level deep: `*.yaml`/`*.yml`,
/// sorted by name). Empty documents are dropped.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>, ApplyError> {
    let mut docs = Vec::new();
    for path in paths {
        for file in yaml_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|e| ApplyError::Read {
                path: file.display().to_string(),
                message: e.to_string(),
            })?;
            docs.extend(parse_documents(&file.display().to_string(), &text)?);
        }
    }
    Ok(docs)
}

/// Parses multi-document YAML text.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Document>, ApplyError> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| ApplyError::Read {
        path: source.to_owned(),
        message: e.to_string(),
    })?;
    let mut docs = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        if value.is_null() {
            continue;
        }
        // A `kind: List` (what `kubectl get -o yaml` prints) stands for its items.
        if value["kind"] == "List"
            && let Some(items) = value["items"].as_array()
        {
            docs.extend(items.iter().enumerate().map(|(j, item)| Document {
                source: format!("{source}#{i}.items[{j}]"),
                value: item.clone(),
            }));
            continue;
        }
        docs.push(Document {
            source: format!("{source}#{i}"),
            value,
        });
    }
    Ok(docs)
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, ApplyError> {
    if !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| ApplyError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Apply order: Namespaces, then CRDs, then identities and RBAC, then everything else; stable
/// within a rank.
pub fn apply_rank(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "CustomResourceDefinition" => 1,
        "ServiceAccount" | "ClusterRole" | "Role" => 2,
        "ClusterRoleBinding" | "RoleBinding" => 3,
        _ => 4,
    }
}

/// Sorts documents into [`apply_rank`] order.
pub fn sort_for_apply(docs: &mut [Document]) {
    docs.sort_by_key(|d| apply_rank(d.kind()));
}

/// Applies documents with one field manager, resolving kinds through discovery (cached).
pub struct Applier {
    client: Client,
    field_manager: String,
    kinds: HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>,
}

impl Applier {
    pub fn new(client: Client, field_manager: &str) -> Self {
        Self {
            client,
            field_manager: field_manager.to_owned(),
            kinds: HashMap::new(),
        }
    }

    async fn resolve(
        &mut self,
        doc: &Document,
    ) -> Result<(ApiResource, ApiCapabilities), ApplyError> {
        let bad = |message: &str| ApplyError::Document {
            source_doc: doc.source.clone(),
            message: message.to_owned(),
        };
        let api_version = doc.value["apiVersion"]
            .as_str()
            .ok_or_else(|| bad("no apiVersion"))?;
        let kind = doc.value["kind"].as_str().ok_or_else(|| bad("no kind"))?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        if let Some(found) = self.kinds.get(&gvk) {
            return Ok(found.clone());
        }
        let found = discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|error| ApplyError::Kube {
                source_doc: doc.source.clone(),
                object: doc.describe(),
                what: "discovering the kind",
                error: Box::new(error),
            })?;
        self.kinds.insert(gvk, found.clone());
        Ok(found)
    }

    /// Server-side applies `doc` without its `status` (force), then writes the `status` through
    /// `/status` (JSON merge patch) when it has one and the kind has that subresource. Namespaced documents without a namespace go to
    /// `default_namespace`. Returns the object as stored.
    pub async fn apply(
        &mut self,
        doc: &Document,
        default_namespace: Option<&str>,
    ) -> Result<DynamicObject, ApplyError> {
        let (resource, caps) = self.resolve(doc).await?;
        let bad = |message: &str| ApplyError::Document {
            source_doc: doc.source.clone(),
            message: message.to_owned(),
        };
        let name = doc.value["metadata"]["name"]
            .as_str()
            .ok_or_else(|| bad("no metadata.name"))?
            .to_owned();
        let mut body = doc.value.clone();
        let status = body
            .as_object_mut()
            .and_then(|o| o.remove("status"))
            .filter(|s| !s.is_null());
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(self.client.clone(), &resource),
            Scope::Namespaced => {
                let ns = match doc.value["metadata"]["namespace"].as_str() {
                    Some(ns) => ns.to_owned(),
                    None => {
                        let ns = default_namespace
                            .ok_or_else(|| bad("namespaced kind without a namespace"))?;
                        body["metadata"]["namespace"] = json!(ns);
                        ns.to_owned()
                    }
                };
                Api::namespaced_with(self.client.clone(), &ns, &resource)
            }
        };
        let params = PatchParams::apply(&self.field_manager).force();
        let kube_err = |what: &'static str| {
            let source_doc = doc.source.clone();
            let object = doc.describe();
            move |error| ApplyError::Kube {
                source_doc,
                object,
                what,
                error: Box::new(error),
            }
        };
        let mut stored = api
            .patch(&name, &params, &Patch::Apply(&body))
            .await
            .map_err(kube_err("server-side apply"))?;
        let has_status_subresource = caps.subresources.iter().any(|(r, _)| r.plural == "status");
        if let Some(status) = status
            && has_status_subresource
        {
            stored = api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "status": status })),
                )
                .await
                .map_err(kube_err("writing status"))?;
        }
        Ok(stored)
    }

    /// Applies all `docs` in [`apply_rank`] order; stops at the first error.
    pub async fn apply_all(
        &mut self,
        docs: &[Document],
        default_namespace: Option<&str>,
    ) -> Result<Vec<DynamicObject>, ApplyError> {
        let mut ordered = docs.to_vec();
        sort_for_apply(&mut ordered);
        let mut stored = Vec::with_capacity(ordered.len());
        for doc in &ordered {
            stored.push(self.apply(doc, default_namespace).await?);
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_expand_and_empty_documents_drop() {
        let text = "kind: List\napiVersion: v1\nitems:\n- {apiVersion: v1, kind: Node, metadata: {name: a}}\n- {apiVersion: v1, kind: Node, metadata: {name: b}}\n---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
        let docs = parse_documents("t.yaml", text).expect("parses");
        let names: Vec<String> = docs.iter().map(Document::describe).collect();
        assert_eq!(names, ["Node/a", "Node/b", "Namespace/x"]);
        assert_eq!(docs[1].source, "t.yaml#0.items[1]");
    }

    #[test]
    fn namespaces_and_crds_go_first() {
        let mut docs = parse_documents(
            "t.yaml",
            "kind: Service\n---\nkind: RoleBinding\n---\nkind: CustomResourceDefinition\n---\nkind: Namespace\n---\nkind: ClusterRole\n",
        )
        .expect("parses");
        sort_for_apply(&mut docs);
        let kinds: Vec<&str> = docs.iter().map(Document::kind).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "CustomResourceDefinition",
                "ClusterRole",
                "RoleBinding",
                "Service"
            ]
        );
    }
}
