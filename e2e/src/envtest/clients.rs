//! Client recipes that can cross threads: a [`ClientSpec`] holds the server, its CA and an
//! [`Identity`], and builds the `kube::Client` where it is used. An in-process operator runs on
//! its own runtime (so that stopping it abruptly drops its connections too, as a killed process
//! would), and a client must be built on the runtime that drives it. A spec can also record every
//! request of its clients in a [`RequestLog`].

use std::time::Duration;

use kube::client::ClientBuilder;
use kube::{Client, Config};
use secrecy::SecretString;

use super::{EnvError, TestEnv};
use crate::requests::RequestLog;

/// Who a client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The admin user (`system:masters`).
    Admin,
    /// A bearer token, e.g. a ServiceAccount token from [`TestEnv::service_account_token`].
    Token(String),
    /// The admin, impersonating `user` in `groups`.
    Impersonate { user: String, groups: Vec<String> },
}

impl Identity {
    /// Impersonation of ServiceAccount `namespace/name` with the groups the API server gives
    /// ServiceAccounts (impersonation carries no `extra`, e.g. no node-name claim).
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Identity::Impersonate {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        }
    }
}

/// Everything needed to build a client for one test server. `Send + 'static`; cheap to clone.
#[derive(Clone)]
pub struct ClientSpec {
    url: String,
    ca_der: Vec<u8>,
    admin_token: String,
    identity: Identity,
    log: Option<RequestLog>,
}

impl std::fmt::Debug for ClientSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let identity = match &self.identity {
            Identity::Token(_) => "Token(..)".to_owned(),
            other => format!("{other:?}"),
        };
        f.debug_struct("ClientSpec")
            .field("url", &self.url)
            .field("identity", &identity)
            .field("recorded", &self.log.is_some())
            .finish()
    }
}

impl ClientSpec {
    /// Records every request of the clients built from this spec into `log`.
    pub fn recorded(mut self, log: &RequestLog) -> Self {
        self.log = Some(log.clone());
        self
    }

    /// The identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Builds a client (with its own connection pool). Call it on the runtime that uses it.
    pub fn build(&self) -> Result<Client, EnvError> {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|e| EnvError::Client(format!("{}: {e}", self.url)))?;
        let mut config = Config::new(uri);
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config.connect_timeout = Some(Duration::from_secs(5));
        config.default_namespace = "default".to_owned();
        let auth = &mut config.auth_info;
        match &self.identity {
            Identity::Admin => auth.token = Some(SecretString::from(self.admin_token.clone())),
            Identity::Token(token) => auth.token = Some(SecretString::from(token.clone())),
            Identity::Impersonate { user, groups } => {
                auth.token = Some(SecretString::from(self.admin_token.clone()));
                auth.impersonate = Some(user.clone());
                auth.impersonate_groups = Some(groups.clone());
            }
        }
        let builder =
            ClientBuilder::try_from(config).map_err(|e| EnvError::Client(e.to_string()))?;
        Ok(match &self.log {
            Some(log) => builder.with_layer(&log.layer()).build(),
            None => builder.build(),
        })
    }
}

impl TestEnv {
    /// A recipe for clients of this server acting as `identity`.
    pub fn client_spec(&self, identity: Identity) -> ClientSpec {
        ClientSpec {
            url: self.url.clone(),
            ca_der: self.pki.ca_der(),
            admin_token: self.admin_token.clone(),
            identity,
            log: None,
        }
    }
}
