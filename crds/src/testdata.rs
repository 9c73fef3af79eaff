//! The table of invalid resources in `crds/testdata/invalid-resources.yaml`, shared by the offline
//! tests (schema + CEL evaluated here) and the integration tier (a real kube-apiserver).

use serde::Deserialize;
use serde_json::Value;

use crate::validation::Check;

/// Path of the table, relative to the workspace root.
pub const INVALID_RESOURCES: &str = "crds/testdata/invalid-resources.yaml";

/// One invalid resource and how it must be rejected.
#[derive(Clone, Debug, Deserialize)]
pub struct InvalidCase {
    /// Unique name of the case.
    pub case: String,
    /// Why the object is invalid, in words.
    #[serde(default)]
    pub why: String,
    /// `Schema` or `Cel`.
    pub check: CheckName,
    /// Field path the rejection must name.
    pub field: String,
    /// For CEL rules: the rule's message, which the API server repeats verbatim.
    #[serde(default)]
    pub message: Option<String>,
    /// The object to create (or to update to, when `old` is set).
    pub object: Value,
    /// The stored object, for transition rules.
    #[serde(default)]
    pub old: Option<Value>,
}

/// Which check must reject the case.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum CheckName {
    Schema,
    Cel,
}

impl From<CheckName> for Check {
    fn from(c: CheckName) -> Self {
        match c {
            CheckName::Schema => Check::Schema,
            CheckName::Cel => Check::Cel,
        }
    }
}

/// The table could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid-resources table: {0}")]
pub struct TableError(String);

/// Parses the multi-document YAML table.
pub fn parse_invalid_cases(yaml: &str) -> Result<Vec<InvalidCase>, TableError> {
    serde_saphyr::from_multiple::<InvalidCase>(yaml).map_err(|e| TableError(e.to_string()))
}
