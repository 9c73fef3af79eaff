//! Label and node selectors with the wire format of `metav1.LabelSelector` and
//! `v1.NodeSelector`, but with enumerated operators and CEL rules, so a malformed selector is
//! rejected by the API server instead of silently matching nothing. Matching is pure and lives
//! here, next to the types, so the operator, `portway plan` and the tests share one meaning.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Regular expression of a label key: an optional DNS-subdomain prefix and a name (as in
/// Kubernetes' `validation.IsQualifiedName`).
pub const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
/// Regular expression of a label value (possibly empty).
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// Selects objects by their labels, exactly like `metav1.LabelSelector`: every `matchLabels`
/// entry and every `matchExpressions` requirement must hold. An empty selector matches
/// everything.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$') && size(self[k]) <= 63 && self[k].matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$'))"
    ).message("matchLabels keys must be qualified names and values valid label values (at most 63 characters)"))]
    // `maxLength` on the values bounds the CEL cost estimate: without it the API server's
    // estimator assumes request-sized strings and refuses the CRD ("estimated rule cost exceeds
    // budget by factor of 24.2x"). Keys cannot be bounded in a structural schema; the key regex
    // alone fits the budget.
    #[schemars(extend(
        "maxProperties" = 64,
        "additionalProperties" = { "type": "string", "maxLength": 63 }
    ))]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements (`In`, `NotIn`, `Exists`, `DoesNotExist`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based requirement of a `LabelSelector`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(self.operator == 'In' || self.operator == 'NotIn') == (has(self.values) && size(self.values) > 0)"
).message("values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist"))]
pub struct LabelSelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317), regex(pattern = LABEL_KEY_PATTERN))]
    pub key: String,
    /// How the key's value relates to `values`.
    pub operator: LabelSelectorOperator,
    /// The values for `In` and `NotIn`; empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63), regex(pattern = LABEL_VALUE_PATTERN)))]
    pub values: Vec<String>,
}

/// Operators of a `LabelSelectorRequirement`.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LabelSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// True when `labels` satisfy every part of this selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// True when the selector has no terms (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Number of terms; used as "specificity" when ordering candidates.
    pub fn term_count(&self) -> usize {
        self.match_labels.len() + self.match_expressions.len()
    }
}

impl LabelSelectorRequirement {
    /// True when `labels` satisfy this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            LabelSelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            LabelSelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            LabelSelectorOperator::Exists => value.is_some(),
            LabelSelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// Selects Nodes like core `v1.NodeSelector`: the terms are ORed, the requirements inside a
/// term are ANDed (upstream's ClusterCIDR ANDed the terms by mistake, kubernetes#116419). An
/// absent selector or one without terms matches every Node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    /// Alternatives: a Node matches when it matches any one term.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// One alternative of a `NodeSelector`; all of its requirements must hold.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.matchExpressions) && size(self.matchExpressions) > 0) || (has(self.matchFields) && size(self.matchFields) > 0)"
).message("a nodeSelectorTerm needs at least one matchExpressions or matchFields requirement (an empty term would match no Node)"))]
pub struct NodeSelectorTerm {
    /// Requirements on the Node's labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<NodeSelectorRequirement>,
    /// Requirements on the Node's fields; only `metadata.name` is supported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(r, r.key == 'metadata.name' && (r.operator == 'In' || r.operator == 'NotIn'))"
    ).message("matchFields supports only the key metadata.name with In or NotIn"))]
    pub match_fields: Vec<NodeSelectorRequirement>,
}

/// One requirement of a `NodeSelectorTerm`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new(
        "(self.operator == 'In' || self.operator == 'NotIn') == (has(self.values) && size(self.values) > 0)"
    ).message("values must be non-empty for In and NotIn"),
    validation = kube::core::Rule::new(
        "(self.operator == 'Exists' || self.operator == 'DoesNotExist') ? !has(self.values) || size(self.values) == 0 : true"
    ).message("values must be empty for Exists and DoesNotExist"),
    validation = kube::core::Rule::new(
        "(self.operator == 'Gt' || self.operator == 'Lt') ? has(self.values) && size(self.values) == 1 && self.values[0].matches('^-?[0-9]{1,18}$') : true"
    ).message("Gt and Lt need exactly one integer value"),
)]
pub struct NodeSelectorRequirement {
    /// The label key (or `metadata.name` in `matchFields`).
    #[schemars(length(min = 1, max = 317), regex(pattern = LABEL_KEY_PATTERN))]
    pub key: String,
    /// How the key's value relates to `values`.
    pub operator: NodeSelectorOperator,
    /// Values for `In`/`NotIn`; exactly one integer for `Gt`/`Lt`; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub values: Vec<String>,
}

/// Operators of a `NodeSelectorRequirement`.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

impl NodeSelector {
    /// True when the Node named `name` with `labels` matches any term (or there are no terms).
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector_terms.is_empty()
            || self
                .node_selector_terms
                .iter()
                .any(|t| t.matches(name, labels))
    }

    /// Specificity used to order candidates: the largest number of requirements of any term that
    /// matches this node (0 for an empty selector).
    pub fn specificity(&self, name: &str, labels: &BTreeMap<String, String>) -> usize {
        self.node_selector_terms
            .iter()
            .filter(|t| t.matches(name, labels))
            .map(|t| t.match_expressions.len() + t.match_fields.len())
            .max()
            .unwrap_or(0)
    }
}

impl NodeSelectorTerm {
    /// True when every requirement holds. An empty term matches nothing (core v1 semantics; the
    /// CRD rejects empty terms anyway).
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if self.match_expressions.is_empty() && self.match_fields.is_empty() {
            return false;
        }
        self.match_expressions
            .iter()
            .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
            && self.match_fields.iter().all(|r| {
                let field = (r.key == "metadata.name").then_some(name);
                r.matches(field)
            })
    }
}

impl NodeSelectorRequirement {
    /// True when the requirement holds for `value` (the label's value, `None` when absent).
    pub fn matches(&self, value: Option<&str>) -> bool {
        let contains = |v: &str| self.values.iter().any(|x| x == v);
        match self.operator {
            NodeSelectorOperator::In => value.is_some_and(contains),
            NodeSelectorOperator::NotIn => value.is_none_or(|v| !contains(v)),
            NodeSelectorOperator::Exists => value.is_some(),
            NodeSelectorOperator::DoesNotExist => value.is_none(),
            NodeSelectorOperator::Gt | NodeSelectorOperator::Lt => {
                let (Some(v), Some(bound)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|b| b.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == NodeSelectorOperator::Gt {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: NodeSelectorOperator, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn label_selector_semantics() {
        let sel = LabelSelector {
            match_labels: labels(&[("zone", "a")]),
            match_expressions: vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: LabelSelectorOperator::NotIn,
                values: vec!["db".into()],
            }],
        };
        assert!(sel.matches(&labels(&[("zone", "a")])));
        assert!(sel.matches(&labels(&[("zone", "a"), ("tier", "web")])));
        assert!(!sel.matches(&labels(&[("zone", "a"), ("tier", "db")])));
        assert!(!sel.matches(&labels(&[("zone", "b")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }

    #[test]
    fn node_selector_terms_are_ored_and_requirements_anded() {
        use NodeSelectorOperator::*;
        let sel = NodeSelector {
            node_selector_terms: vec![
                NodeSelectorTerm {
                    match_expressions: vec![req("zone", In, &["a"]), req("gpu", Exists, &[])],
                    match_fields: vec![],
                },
                NodeSelectorTerm {
                    match_expressions: vec![],
                    match_fields: vec![req("metadata.name", In, &["edge-1"])],
                },
            ],
        };
        assert!(sel.matches("n1", &labels(&[("zone", "a"), ("gpu", "1")])));
        assert!(
            !sel.matches("n1", &labels(&[("zone", "a")])),
            "AND inside a term"
        );
        assert!(sel.matches("edge-1", &labels(&[])), "OR across terms");
        assert!(!sel.matches("edge-2", &labels(&[("gpu", "1")])));
        assert!(NodeSelector::default().matches("any", &labels(&[])));
        assert_eq!(
            sel.specificity("n1", &labels(&[("zone", "a"), ("gpu", "1")])),
            2
        );
    }

    #[test]
    fn gt_lt_compare_integers_and_reject_garbage() {
        use NodeSelectorOperator::*;
        assert!(req("rack", Gt, &["3"]).matches(Some("10")));
        assert!(!req("rack", Gt, &["3"]).matches(Some("3")));
        assert!(req("rack", Lt, &["3"]).matches(Some("-1")));
        assert!(!req("rack", Lt, &["3"]).matches(Some("x")));
        assert!(!req("rack", Lt, &["x"]).matches(Some("1")));
        assert!(!req("rack", Lt, &["3"]).matches(None));
    }
}
