//! Builders shared by the ClusterCIDR tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use portway_crds::{
    ClusterCIDR, ClusterCIDRSpec, NodeSelector, NodeSelectorOperator, NodeSelectorRequirement,
    NodeSelectorTerm,
};

/// A ClusterCIDR builder.
#[derive(Clone, Debug)]
pub struct Cc {
    name: String,
    spec: ClusterCIDRSpec,
    finalizers: Vec<String>,
    deleting: bool,
    generation: Option<i64>,
    resource_version: Option<String>,
}

pub fn cc(name: &str) -> Cc {
    Cc {
        name: name.into(),
        spec: ClusterCIDRSpec {
            node_selector: None,
            per_node_host_bits: 8,
            ipv4_per_node_host_bits: None,
            ipv6_per_node_host_bits: None,
            ipv4: None,
            ipv6: None,
            priority: 0,
        },
        finalizers: vec![],
        deleting: false,
        generation: Some(1),
        resource_version: None,
    }
}

impl Cc {
    pub fn v4(mut self, range: &str, host_bits: i32) -> Self {
        self.spec.ipv4 = Some(range.into());
        self.spec.ipv4_per_node_host_bits = Some(host_bits);
        self.spec.per_node_host_bits = host_bits;
        self
    }
    pub fn v6(mut self, range: &str, host_bits: i32) -> Self {
        self.spec.ipv6 = Some(range.into());
        self.spec.ipv6_per_node_host_bits = Some(host_bits);
        if self.spec.ipv4.is_none() {
            self.spec.per_node_host_bits = host_bits;
        }
        self
    }
    pub fn priority(mut self, p: i32) -> Self {
        self.spec.priority = p;
        self
    }
    /// Adds a selector term whose requirements are ANDed.
    pub fn term(mut self, reqs: &[(&str, NodeSelectorOperator, &[&str])]) -> Self {
        let term = NodeSelectorTerm {
            match_expressions: reqs
                .iter()
                .map(|(k, op, vals)| NodeSelectorRequirement {
                    key: (*k).into(),
                    operator: *op,
                    values: vals.iter().map(|v| (*v).to_string()).collect(),
                })
                .collect(),
            match_fields: vec![],
        };
        self.spec
            .node_selector
            .get_or_insert_with(NodeSelector::default)
            .node_selector_terms
            .push(term);
        self
    }
    pub fn finalized(mut self) -> Self {
        self.finalizers = vec![portway_crds::names::CLUSTER_CIDR_FINALIZER.into()];
        self
    }
    pub fn deleting(mut self) -> Self {
        self.deleting = true;
        self
    }
    pub fn rv(mut self, rv: &str) -> Self {
        self.resource_version = Some(rv.into());
        self
    }
    pub fn build(self) -> ClusterCIDR {
        let mut c = ClusterCIDR::new(&self.name, self.spec);
        c.metadata.generation = self.generation;
        c.metadata.resource_version = self.resource_version;
        c.metadata.uid = Some(format!("uid-{}", self.name));
        if !self.finalizers.is_empty() {
            c.metadata.finalizers = Some(self.finalizers);
        }
        if self.deleting {
            c.metadata.deletion_timestamp = Some(time(100));
        }
        c
    }
}

/// A Node builder.
#[derive(Clone, Debug, Default)]
pub struct Nd {
    name: String,
    labels: BTreeMap<String, String>,
    pod_cidrs: Vec<String>,
    annotations: BTreeMap<String, String>,
    deleting: bool,
    rv: Option<String>,
}

pub fn node(name: &str) -> Nd {
    Nd {
        name: name.into(),
        ..Nd::default()
    }
}

impl Nd {
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }
    pub fn pod_cidrs(mut self, cidrs: &[&str]) -> Self {
        self.pod_cidrs = cidrs.iter().map(|c| (*c).to_string()).collect();
        self
    }
    pub fn annotate(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }
    pub fn deleting(mut self) -> Self {
        self.deleting = true;
        self
    }
    pub fn rv(mut self, rv: &str) -> Self {
        self.rv = Some(rv.into());
        self
    }
    pub fn build(self) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                uid: Some(format!("uid-{}", self.name)),
                resource_version: self.rv,
                labels: (!self.labels.is_empty()).then_some(self.labels),
                annotations: (!self.annotations.is_empty()).then_some(self.annotations),
                deletion_timestamp: self.deleting.then(|| time(100)),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: self.pod_cidrs.first().cloned(),
                pod_cidrs: (!self.pod_cidrs.is_empty()).then_some(self.pod_cidrs),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }
}

pub fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap())
}

pub mod mock;
