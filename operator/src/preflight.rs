//! Start-up RBAC check: asks the API server (SelfSubjectAccessReview) whether this identity may
//! use every permission in [`crate::permissions::all`], so a missing grant is reported by name at
//! start instead of as a stream of 403s later. SelfSubjectAccessReview itself needs no grant
//! (every authenticated user may create it, via `system:basic-user`).

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::permissions::Permission;

/// One verb on one resource that is not granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub verb: String,
    pub resource: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)
    }
}

/// Why the check could not tell.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("asking the API server whether {what} is allowed: {source}")]
    Review {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// Full name of a permission's resource, e.g. `daemonsets.apps`, `services/status`.
pub fn describe(p: &Permission, name: Option<&str>) -> String {
    let (res, sub) = p.resource.split_once('/').unwrap_or((p.resource, ""));
    let mut s = res.to_owned();
    if !p.group.is_empty() {
        s = format!("{s}.{}", p.group);
    }
    if !sub.is_empty() {
        s = format!("{s}/{sub}");
    }
    if let Some(n) = name {
        s = format!("{s} named {n}");
    }
    s
}

/// Checks every verb of every permission cluster-wide; returns what is missing (empty: all
/// granted).
pub async fn check(
    client: &Client,
    permissions: &[Permission],
) -> Result<Vec<Missing>, PreflightError> {
    check_in(client, permissions, None).await
}

/// [`check`] in one namespace (`None`: cluster-wide), for permissions a Role grants there.
pub async fn check_in(
    client: &Client,
    permissions: &[Permission],
    namespace: Option<&str>,
) -> Result<Vec<Missing>, PreflightError> {
    let mut missing = Vec::new();
    for p in permissions {
        let names: Vec<Option<&str>> = if p.resource_names.is_empty() {
            vec![None]
        } else {
            p.resource_names.iter().map(|n| Some(*n)).collect()
        };
        for verb in p.verbs {
            for name in &names {
                if !allowed(client, p.group, p.resource, verb, *name, namespace).await? {
                    missing.push(Missing {
                        verb: (*verb).to_owned(),
                        resource: describe(p, *name),
                    });
                }
            }
        }
    }
    Ok(missing)
}

/// Asks whether this identity may `verb` the `resource` (or `resource/subresource`) of `group`,
/// optionally only the object `name`, optionally in `namespace`.
pub async fn allowed(
    client: &Client,
    group: &str,
    resource: &str,
    verb: &str,
    name: Option<&str>,
    namespace: Option<&str>,
) -> Result<bool, PreflightError> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_owned()),
                resource: Some(res.to_owned()),
                subresource: (!sub.is_empty()).then(|| sub.to_owned()),
                verb: Some(verb.to_owned()),
                name: name.map(str::to_owned),
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|source| PreflightError::Review {
            what: format!(
                "{verb} {resource}.{group}{}",
                namespace.map(|n| format!(" in {n}")).unwrap_or_default()
            ),
            source,
        })?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}
