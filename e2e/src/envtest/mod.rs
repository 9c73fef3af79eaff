//! A real kube-apiserver and etcd for one test, following controller-runtime's envtest
//! convention: `KUBEBUILDER_ASSETS` names a folder holding the `kube-apiserver` and `etcd`
//! binaries (`setup-envtest use 1.33 -p path` prints one; see docs/testing.md).
//!
//! [`TestEnv::start_or_skip`] starts both on free loopback ports in a temp dir (RBAC on, an admin
//! token, a generated CA and service-account key), waits for `/readyz`, installs Portway's CRDs
//! from `charts/portway/crds/` and waits until they are Established. Dropping the [`TestEnv`] —
//! also while a failing test unwinds — stops both process groups and removes the temp dir.
//! Without the variable it prints one `SKIP` line and returns `None`.
//!
//! There is no kubelet, scheduler or controller-manager: no default ServiceAccounts, no token
//! controller, no garbage collector (owner references never cascade), no Deployment/DaemonSet
//! controllers. Tests create the Nodes, Pods and EndpointSlices they need ([`crate::objects`]).

pub mod clients;
pub mod pki;
pub mod process;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, SelfSubjectReview, TokenRequest, TokenRequestSpec, UserInfo,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::AuthInfo;
use kube::runtime::wait::conditions;
use kube::{Client, Config, ResourceExt};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report;
use crate::wait::{self, WaitError};
use pki::Pki;
use process::ManagedProcess;

/// The environment variable naming the folder with `kube-apiserver` and `etcd`.
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";
/// Set to `1` to keep each test's temp dir (logs, certificates, kubeconfig) for debugging.
pub const KEEP_ENV: &str = "PORTWAY_ENVTEST_KEEP";
/// Overrides [`DEFAULT_START_TIMEOUT`] (seconds), for very slow machines.
pub const START_TIMEOUT_ENV: &str = "PORTWAY_ENVTEST_START_TIMEOUT_SECS";
/// How long etcd plus kube-apiserver may take to become ready (normally about 4 s).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long each CRD may take to become Established.
pub const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);
/// The admin user (group `system:masters`) behind [`TestEnv::client`].
pub const ADMIN_USER: &str = "portway-e2e-admin";
/// Field manager of everything the harness itself applies.
pub const FIELD_MANAGER: &str = "portway-e2e";
/// Issuer (and default audience) of service-account tokens.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Service cluster-IP ranges: dual-stack, and wide enough for the fixed cluster IPs in
/// `examples/services.yaml` (10.43.x.x, fd00:10:43::x).
pub const SERVICE_CLUSTER_IP_RANGES: &str = "10.43.0.0/16,fd00:10:43::/112";
/// Where Portway's CRDs live, relative to the workspace root.
pub const CRD_DIR: &str = "charts/portway/crds";

/// Why the test environment could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(
        "{ASSETS_ENV}={dir} does not hold an executable `{binary}` (see docs/testing.md for how to get the binaries)"
    )]
    MissingBinary { dir: PathBuf, binary: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating certificates and keys: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("{name} exited during start-up ({status}); last lines of {log}:\n{tail}")]
    Exited {
        name: &'static str,
        status: String,
        log: String,
        tail: String,
    },
    #[error("{what} not ready after {after:?}; last lines of {log}:\n{tail}")]
    NotReady {
        what: &'static str,
        after: Duration,
        log: String,
        tail: String,
    },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("building a client: {0}")]
    Client(String),
    #[error("{file}: not a CustomResourceDefinition: {message}")]
    CrdFile { file: String, message: String },
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error("{0}")]
    Other(String),
}

impl EnvError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Kube { what, source }
    }

    /// A start-up failure caused by a port another process grabbed first (worth one more try).
    fn is_port_clash(&self) -> bool {
        matches!(self, Self::Exited { tail, .. } if tail.contains("address already in use"))
    }
}

/// The two binaries.
#[derive(Clone, Debug)]
pub struct Assets {
    pub dir: PathBuf,
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
}

impl Assets {
    /// Reads [`ASSETS_ENV`]: `Ok(None)` when unset or empty (the tier is skipped), an error
    /// when it names a folder without the binaries (a misconfiguration must not look like a skip).
    pub fn from_env() -> Result<Option<Self>, EnvError> {
        match std::env::var_os(ASSETS_ENV) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => Self::in_dir(PathBuf::from(v)).map(Some),
        }
    }

    /// The binaries in `dir`.
    pub fn in_dir(dir: PathBuf) -> Result<Self, EnvError> {
        let find = |binary: &'static str| {
            let path = dir.join(binary);
            if is_executable(&path) {
                Ok(path)
            } else {
                Err(EnvError::MissingBinary {
                    dir: dir.clone(),
                    binary,
                })
            }
        };
        Ok(Self {
            etcd: find("etcd")?,
            kube_apiserver: find("kube-apiserver")?,
            dir: dir.clone(),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What to start.
#[derive(Clone, Debug)]
pub struct EnvOptions {
    /// Install the CRDs from [`CRD_DIR`] and wait until they are Established (default true).
    pub install_crds: bool,
    /// Extra kube-apiserver flags (`--flag=value`), appended after the harness' own.
    pub extra_apiserver_args: Vec<String>,
    /// Bound on etcd + kube-apiserver start-up.
    pub start_timeout: Duration,
}

impl Default for EnvOptions {
    fn default() -> Self {
        let start_timeout = std::env::var(START_TIMEOUT_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_START_TIMEOUT);
        Self {
            install_crds: true,
            extra_apiserver_args: Vec::new(),
            start_timeout,
        }
    }
}

/// How long start-up took, for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartTimings {
    pub etcd_ready: Duration,
    pub apiserver_ready: Duration,
    pub crds_established: Duration,
}

/// A running etcd + kube-apiserver for one test. Stopped and removed on drop.
pub struct TestEnv {
    test: String,
    // Dropped (stopped) explicitly in `Drop`, API server first.
    apiserver: ManagedProcess,
    etcd: ManagedProcess,
    pki: Pki,
    url: String,
    admin_token: String,
    client: Client,
    timings: StartTimings,
    crds: Vec<CustomResourceDefinition>,
    namespaces: AtomicU32,
    // Last: removed after both processes are gone.
    dir: Option<tempfile::TempDir>,
}

impl TestEnv {
    /// Starts the environment for `test`, or prints `SKIP <test>: ...` and returns `None` when
    /// [`ASSETS_ENV`] is not set. Panics with the servers' log tail when start-up fails, and
    /// when the variable is set but the binaries are missing (a misconfiguration, not a skip).
    pub async fn start_or_skip(test: &str) -> Option<Self> {
        Self::start_or_skip_with(test, EnvOptions::default()).await
    }

    /// [`Self::start_or_skip`] with options.
    pub async fn start_or_skip_with(test: &str, options: EnvOptions) -> Option<Self> {
        let assets = match Assets::from_env() {
            Ok(Some(assets)) => assets,
            Ok(None) => {
                report::skip(
                    test,
                    &format!("{ASSETS_ENV} is not set; see docs/testing.md"),
                );
                return None;
            }
            Err(e) => panic!("{test}: {e}"),
        };
        match Self::start(test, &assets, options).await {
            Ok(env) => Some(env),
            Err(e) => panic!("{test}: cannot start the test API server: {e}"),
        }
    }

    /// Starts etcd and kube-apiserver from `assets`; retries twice when a picked port was taken.
    pub async fn start(test: &str, assets: &Assets, options: EnvOptions) -> Result<Self, EnvError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(test, assets, &options).await {
                Err(e) if attempt < 3 && e.is_port_clash() => continue,
                other => return other,
            }
        }
    }

    async fn start_once(
        test: &str,
        assets: &Assets,
        options: &EnvOptions,
    ) -> Result<Self, EnvError> {
        let started = Instant::now();
        let deadline = started + options.start_timeout;
        let dir = tempfile::Builder::new()
            .prefix("portway-envtest-")
            .tempdir()
            .map_err(EnvError::io("creating the temp dir"))?;
        let root = dir.path().to_owned();

        let pki = Pki::generate()?;
        let admin_token = random_hex(24)?;
        let write = |name: &str, contents: &str| {
            std::fs::write(root.join(name), contents)
                .map_err(EnvError::io(format!("writing {name}")))
        };
        write("ca.crt", &pki.ca_pem())?;
        write("apiserver.crt", &pki.serving.cert_pem)?;
        write("apiserver.key", &pki.serving.key_pem)?;
        write("sa.key", &pki.sa_signing_key_pem)?;
        write("sa.pub", &pki.sa_public_key_pem)?;
        write(
            "tokens.csv",
            &format!("{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n"),
        )?;

        let [etcd_client, etcd_peer, api_port] = free_ports()?;
        let p = |name: &str| root.join(name).display().to_string();
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_args = vec![
            format!("--data-dir={}", p("etcd-data")),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync=true".to_owned(),
            "--log-level=warn".to_owned(),
        ];
        let mut etcd =
            ManagedProcess::spawn("etcd", &assets.etcd, &etcd_args, &root.join("etcd.log"))
                .map_err(EnvError::io(format!("starting {}", assets.etcd.display())))?;
        wait_etcd_healthy(&mut etcd, etcd_client, deadline, started).await?;
        let etcd_ready = started.elapsed();

        let mut apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".to_owned(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGES}"),
            "--endpoint-reconciler-type=none".to_owned(),
            format!("--cert-dir={}", p("certs")),
        ];
        apiserver_args.extend(options.extra_apiserver_args.iter().cloned());
        let mut apiserver = ManagedProcess::spawn(
            "kube-apiserver",
            &assets.kube_apiserver,
            &apiserver_args,
            &root.join("kube-apiserver.log"),
        )
        .map_err(EnvError::io(format!(
            "starting {}",
            assets.kube_apiserver.display()
        )))?;

        let url = format!("https://127.0.0.1:{api_port}");
        let client = build_client(&url, &pki, |auth| {
            auth.token = Some(SecretString::from(admin_token.clone()));
        })?;
        wait_apiserver_ready(&mut apiserver, &client, deadline, started).await?;
        let apiserver_ready = started.elapsed();

        write(
            "kubeconfig",
            &kubeconfig(&url, &root.join("ca.crt"), &admin_token),
        )?;

        let mut env = Self {
            test: test.to_owned(),
            apiserver,
            etcd,
            pki,
            url,
            admin_token,
            client,
            timings: StartTimings {
                etcd_ready,
                apiserver_ready,
                crds_established: Duration::ZERO,
            },
            crds: Vec::new(),
            namespaces: AtomicU32::new(0),
            dir: Some(dir),
        };
        if options.install_crds {
            let crd_dir = workspace_root().join(CRD_DIR);
            env.crds = install_crds(&env.client, &crd_dir).await?;
            env.timings.crds_established = started.elapsed();
        }
        Ok(env)
    }

    /// The test this environment belongs to.
    pub fn test_name(&self) -> &str {
        &self.test
    }

    /// An admin client (`system:masters`). Cheap to clone.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A new admin client with its own connection pool, e.g. one per simulated component.
    pub fn new_client(&self) -> Result<Client, EnvError> {
        let token = self.admin_token.clone();
        build_client(&self.url, &self.pki, |auth| {
            auth.token = Some(SecretString::from(token));
        })
    }

    /// A client that authenticates with a bearer `token` (e.g. a service-account token).
    pub fn client_with_token(&self, token: &str) -> Result<Client, EnvError> {
        build_client(&self.url, &self.pki, |auth| {
            auth.token = Some(SecretString::from(token.to_owned()));
        })
    }

    /// An admin client that impersonates `user` in `groups` (`Impersonate-User`/`-Group`);
    /// every request is authorized as that user. For a ServiceAccount pass
    /// `system:serviceaccount:<ns>:<name>` and the groups `system:serviceaccounts`,
    /// `system:serviceaccounts:<ns>`, `system:authenticated`. Impersonation carries no `extra`
    /// claims: use [`Self::pod_bound_client`] when the node-name claim matters.
    pub fn client_impersonating(&self, user: &str, groups: &[&str]) -> Result<Client, EnvError> {
        let token = self.admin_token.clone();
        build_client(&self.url, &self.pki, |auth| {
            auth.token = Some(SecretString::from(token));
            auth.impersonate = Some(user.to_owned());
            auth.impersonate_groups = Some(groups.iter().map(|g| (*g).to_owned()).collect());
        })
    }

    /// A client authenticating with a client certificate for `user` (CN) in `group` (O), e.g.
    /// `system:node:worker-1` in `system:nodes`.
    pub fn client_with_cert(&self, user: &str, group: Option<&str>) -> Result<Client, EnvError> {
        let pair = self.pki.client_cert(user, group)?;
        let root = self.dir()?.to_owned();
        let n = self.namespaces.fetch_add(1, Ordering::Relaxed);
        let cert = root.join(format!("client-{n}.crt"));
        let key = root.join(format!("client-{n}.key"));
        std::fs::write(&cert, &pair.cert_pem).map_err(EnvError::io("writing a client cert"))?;
        std::fs::write(&key, &pair.key_pem).map_err(EnvError::io("writing a client key"))?;
        build_client(&self.url, &self.pki, |auth| {
            auth.client_certificate = Some(cert.display().to_string());
            auth.client_key = Some(key.display().to_string());
        })
    }

    /// Mints a token for ServiceAccount `namespace/name` with the TokenRequest API
    /// (`serviceaccounts/token`, which needs no controller-manager), valid for an hour. With
    /// `bound_pod`, the token is bound to that Pod: it dies with the Pod, and when the Pod is on
    /// a node the API server adds `authentication.kubernetes.io/node-name` (and `node-uid`) to
    /// the user's extra info.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        bound_pod: Option<&Pod>,
    ) -> Result<String, EnvError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let request = TokenRequest {
            metadata: ObjectMeta::default(),
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                bound_object_ref: bound_pod.map(|pod| BoundObjectReference {
                    api_version: Some("v1".to_owned()),
                    kind: Some("Pod".to_owned()),
                    name: Some(pod.name_any()),
                    uid: pod.uid(),
                }),
            },
            status: None,
        };
        let issued = api
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .map_err(EnvError::kube(format!(
                "TokenRequest for {namespace}/{name}"
            )))?;
        issued
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                EnvError::Other(format!("TokenRequest for {namespace}/{name}: no token"))
            })
    }

    /// A client acting as ServiceAccount `namespace/name` with a token bound to `pod`, exactly
    /// as an agent pod's projected token authenticates.
    pub async fn pod_bound_client(
        &self,
        namespace: &str,
        service_account: &str,
        pod: &Pod,
    ) -> Result<Client, EnvError> {
        let token = self
            .service_account_token(namespace, service_account, Some(pod))
            .await?;
        self.client_with_token(&token)
    }

    /// Who `client` is, as the API server sees it (SelfSubjectReview).
    pub async fn whoami(client: &Client) -> Result<UserInfo, EnvError> {
        let api: Api<SelfSubjectReview> = Api::all(client.clone());
        let review = SelfSubjectReview::default();
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(EnvError::kube("SelfSubjectReview"))?;
        reviewed
            .status
            .and_then(|s| s.user_info)
            .ok_or_else(|| EnvError::Other("SelfSubjectReview returned no userInfo".into()))
    }

    /// Creates a namespace `<prefix>-<n>` (unique within this environment) and returns its name.
    pub async fn namespace(&self, prefix: &str) -> Result<String, EnvError> {
        let n = self.namespaces.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{n}");
        let api: Api<Namespace> = Api::all(self.client());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    "portway.dev/e2e-test".to_owned(),
                    sanitize_label(&self.test),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .map_err(EnvError::kube(format!("creating namespace {name}")))?;
        Ok(name)
    }

    /// The CRDs installed at start, as the server returned them once Established.
    pub fn installed_crds(&self) -> &[CustomResourceDefinition] {
        &self.crds
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig for the admin user (for `kubectl --kubeconfig` or a child process).
    pub fn kubeconfig_path(&self) -> Result<PathBuf, EnvError> {
        Ok(self.dir()?.join("kubeconfig"))
    }

    /// The CA certificate (PEM) the server's certificate chains to.
    pub fn ca_pem(&self) -> String {
        self.pki.ca_pem()
    }

    /// Process ids of kube-apiserver and etcd (each leads its own process group).
    pub fn pids(&self) -> [u32; 2] {
        [self.apiserver.pid(), self.etcd.pid()]
    }

    /// The temp dir holding data, logs and certificates (removed on drop).
    pub fn dir(&self) -> Result<&Path, EnvError> {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .ok_or_else(|| EnvError::Other("the environment was stopped".into()))
    }

    /// How long start-up took.
    pub fn timings(&self) -> StartTimings {
        self.timings
    }

    /// The last `lines` lines of the kube-apiserver log.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        self.apiserver.log_tail(lines)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if failing {
            report::line(&format!(
                "{}: test failed; last kube-apiserver log lines:\n{}",
                self.test,
                self.apiserver.log_tail(15)
            ));
        }
        self.apiserver.stop();
        self.etcd.stop();
        if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            report::line(&format!("{}: kept {}", self.test, kept.display()));
        }
        // Otherwise `dir` (a TempDir) is removed when this struct's fields drop.
    }
}

/// The workspace root (the e2e crate's parent folder).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// Reads every `*.yaml` CRD in `dir`, applies it (server-side apply) and waits until each is
/// Established; returns them as the server holds them then.
pub async fn install_crds(
    client: &Client,
    dir: &Path,
) -> Result<Vec<CustomResourceDefinition>, EnvError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(EnvError::io(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EnvError::Other(format!(
            "no CRD files in {}",
            dir.display()
        )));
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .map_err(EnvError::io(format!("reading {}", file.display())))?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).map_err(|e| EnvError::CrdFile {
                file: file.display().to_string(),
                message: e.to_string(),
            })?;
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(EnvError::kube(format!("installing CRD {}", file.display())))?;
        names.push(name);
    }
    let mut established = Vec::new();
    for name in names {
        let crd = wait::wait_for(
            api.clone(),
            &name,
            &format!("CRD {name} Established"),
            conditions::is_crd_established(),
            CRD_ESTABLISHED_TIMEOUT,
        )
        .await?
        .ok_or_else(|| EnvError::Other(format!("CRD {name} was deleted while installing")))?;
        established.push(crd);
    }
    Ok(established)
}

fn build_client(
    url: &str,
    pki: &Pki,
    auth: impl FnOnce(&mut AuthInfo),
) -> Result<Client, EnvError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| EnvError::Client(format!("{url}: {e}")))?;
    let mut config = Config::new(uri);
    config.root_cert = Some(vec![pki.ca_der()]);
    config.connect_timeout = Some(Duration::from_secs(5));
    config.default_namespace = "default".to_owned();
    auth(&mut config.auth_info);
    Client::try_from(config).map_err(|e| EnvError::Client(e.to_string()))
}

/// Three distinct free loopback ports (all held open together while picking, so they differ).
fn free_ports() -> Result<[u16; 3], EnvError> {
    let bind = || {
        TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .map_err(EnvError::io("picking a free port"))
    };
    let listeners = [bind()?, bind()?, bind()?];
    let mut ports = [0u16; 3];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(EnvError::io("reading a picked port"))?
            .port();
    }
    Ok(ports)
}

fn random_hex(bytes: usize) -> Result<String, EnvError> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(EnvError::io("reading /dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn check_running(process: &mut ManagedProcess) -> Result<(), EnvError> {
    match process.exit_status() {
        None => Ok(()),
        Some(status) => Err(EnvError::Exited {
            name: process.name(),
            status: status.to_string(),
            log: process.log_path().display().to_string(),
            tail: process.log_tail(30),
        }),
    }
}

fn not_ready(process: &ManagedProcess, what: &'static str, started: Instant) -> EnvError {
    EnvError::NotReady {
        what,
        after: started.elapsed(),
        log: process.log_path().display().to_string(),
        tail: process.log_tail(30),
    }
}

const POLL: Duration = Duration::from_millis(100);

async fn wait_etcd_healthy(
    etcd: &mut ManagedProcess,
    port: u16,
    deadline: Instant,
    started: Instant,
) -> Result<(), EnvError> {
    loop {
        check_running(etcd)?;
        let probe = tokio::time::timeout(Duration::from_secs(2), etcd_health(port)).await;
        if matches!(probe, Ok(Ok(true))) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(not_ready(etcd, "etcd /health", started));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `GET /health` over plain HTTP/1.0 (etcd's client URL is not TLS here).
async fn etcd_health(port: u16) -> std::io::Result<bool> {
    let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    Ok(text.starts_with("HTTP/1.") && text.contains("\"health\":\"true\""))
}

async fn wait_apiserver_ready(
    apiserver: &mut ManagedProcess,
    client: &Client,
    deadline: Instant,
    started: Instant,
) -> Result<(), EnvError> {
    loop {
        check_running(apiserver)?;
        if let Ok(request) = http::Request::get("/readyz").body(Vec::new()) {
            let probe = tokio::time::timeout(Duration::from_secs(2), client.request_text(request));
            if let Ok(Ok(body)) = probe.await
                && body.trim() == "ok"
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(not_ready(apiserver, "kube-apiserver /readyz", started));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn kubeconfig(url: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: {ADMIN_USER}\n  user:\n    token: {token}\ncontexts:\n- name: envtest\n  context:\n    cluster: envtest\n    user: {ADMIN_USER}\ncurrent-context: envtest\n",
        ca = ca.display()
    )
}

/// A label value from a test name (at most 63 characters of `[A-Za-z0-9._-]`).
fn sanitize_label(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_the_binaries_is_an_error_not_a_skip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Assets::in_dir(dir.path().to_owned()).expect_err("no binaries");
        assert!(
            matches!(err, EnvError::MissingBinary { binary: "etcd", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("docs/testing.md"));
    }

    #[test]
    fn free_ports_are_distinct() {
        let [a, b, c] = free_ports().expect("ports");
        assert!(a != b && b != c && a != c);
    }

    #[test]
    fn test_names_become_label_values() {
        assert_eq!(sanitize_label("status_ssa::agents"), "status_ssa__agents");
        assert_eq!(sanitize_label(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn pki_signs_what_the_server_and_clients_need() {
        let pki = Pki::generate().expect("pki");
        assert!(
            pki.serving
                .cert_pem
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert!(pki.sa_signing_key_pem.contains("PRIVATE KEY"));
        assert!(pki.sa_public_key_pem.contains("PUBLIC KEY"));
        let client = pki
            .client_cert("system:node:a", Some("system:nodes"))
            .expect("client");
        assert!(client.cert_pem.contains("CERTIFICATE"));
    }
}
