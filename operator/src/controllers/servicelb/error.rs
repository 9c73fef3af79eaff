//! Errors of the ServiceLB controller. `category()` feeds both the metric label and the Event
//! reason of a failed reconcile.

/// A failed step of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API request failed.
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    /// An object could not be turned into a request body.
    #[error("encoding {object}: {source}")]
    Encode {
        object: String,
        #[source]
        source: serde_json::Error,
    },
    /// The stores have not finished their first list yet.
    #[error("caches are not synced yet")]
    NotReady,
}

impl Error {
    pub(crate) fn kube(
        action: &'static str,
        object: impl std::fmt::Display,
        source: kube::Error,
    ) -> Self {
        Self::Kube {
            action,
            object: object.to_string(),
            source,
        }
    }

    /// Short category: `conflict`, `server`, `forbidden`, `not_found`, `invalid`, `throttled`,
    /// `api`, `transport`, `encode`, `not_ready`.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } => kube_category(source),
            Self::Encode { .. } => "encode",
            Self::NotReady => "not_ready",
        }
    }
}

/// Category of a kube error.
pub fn kube_category(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) => match s.code {
            409 => "conflict",
            403 => "forbidden",
            404 => "not_found",
            422 => "invalid",
            429 => "throttled",
            500..=599 => "server",
            _ => "api",
        },
        _ => "transport",
    }
}

/// True when the API server answered 404 Not Found.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
