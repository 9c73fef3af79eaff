//! The agent RoleBindings (BRIEF contract 3): one `portway-agent-status` RoleBinding in every
//! namespace with a placed Service, granting the agents' ServiceAccount the ClusterRole that
//! lets them patch `serviceloadbalancers/status` there, and nowhere else.

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::assign::Assignment;
use super::{Config, names};

/// The RoleBinding for `namespace`.
pub fn role_binding(namespace: &str, config: &Config) -> RoleBinding {
    use portway_crds::names as n;
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(names::AGENT_ROLE_BINDING.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                [
                    (n::LABEL_MANAGED_BY.to_owned(), n::MANAGED_BY.to_owned()),
                    (
                        n::LABEL_COMPONENT.to_owned(),
                        n::COMPONENT_NODE_AGENT.to_owned(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: config.agent_status_cluster_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: config.agent_service_account.clone(),
            namespace: Some(config.namespace.clone()),
            api_group: None,
        }]),
    }
}

/// Desired RoleBindings, sorted by namespace.
pub fn role_bindings(assignment: &Assignment, config: &Config) -> Vec<RoleBinding> {
    let namespaces: BTreeSet<&str> = assignment
        .services
        .values()
        .filter(|a| a.is_placed())
        .map(|a| a.key.namespace.as_str())
        .collect();
    namespaces
        .into_iter()
        .map(|ns| role_binding(ns, config))
        .collect()
}
