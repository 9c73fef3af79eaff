//! `portway cleanup`: removes everything Portway's ServiceLB controller made in the cluster
//! (see [`crate::cleanup`]). The Helm chart runs it as a `pre-delete` hook so that
//! `helm uninstall` leaves no Portway object and no rule on any node; it is safe to run by hand,
//! and twice.

use std::time::Duration;

use crate::cleanup::{self, Options};
use crate::controllers::servicelb::FALLBACK_NAMESPACE;
use crate::permissions::{self, Permission};

/// Arguments of `portway cleanup`.
#[derive(clap::Args, Debug, Clone, PartialEq)]
#[group(id = "cleanup-args")]
pub struct Args {
    /// The operator's namespace, where the node-agent DaemonSets (and the operator's Deployment)
    /// are.
    #[arg(long, env = "POD_NAMESPACE", default_value = FALLBACK_NAMESPACE)]
    pub namespace: String,
    /// First scale this Deployment (in --namespace) to 0 and wait until its pods are gone, so the
    /// operator cannot re-create what is removed. The Helm hook passes portway-operator.
    #[arg(long, value_name = "DEPLOYMENT")]
    pub stop_operator: Option<String>,
    /// Longest total wait, in seconds, for the operator's and the agents' pods to go. Agent pods
    /// still there at the end are reported and the clean-up goes on.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_seconds: u64,
    /// Also delete the default LoadBalancerPool the Helm chart made for this release (the hook
    /// passes its release name; an install hook creates that pool, so it is no release object).
    #[arg(long, value_name = "RELEASE")]
    pub helm_release: Option<String>,
    /// Print what would be removed; change nothing.
    #[arg(long, default_value_t = false)]
    pub dry_run: bool,
    /// Skip the RBAC check (SelfSubjectAccessReview of every permission the clean-up uses).
    #[arg(long, default_value_t = false)]
    pub skip_permission_check: bool,
}

impl Args {
    /// The library's options.
    pub fn options(&self) -> Options {
        Options {
            namespace: self.namespace.clone(),
            stop_operator: self.stop_operator.clone().filter(|s| !s.is_empty()),
            timeout: Duration::from_secs(self.timeout_seconds),
            poll: Duration::from_secs(2),
            dry_run: self.dry_run,
            helm_release: self.helm_release.clone().filter(|s| !s.is_empty()),
        }
    }
}

/// Why `portway cleanup` failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("cannot build the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach the Kubernetes API (kubeconfig or in-cluster service account): {0}")]
    Client(#[from] kube::Error),
    #[error("{0}")]
    Preflight(#[from] crate::preflight::PreflightError),
    #[error(
        "the clean-up's RBAC is missing {}: grant them (the Helm chart's portway-cleanup ClusterRole and Role do), or run with --skip-permission-check",
        .0.join(", ")
    )]
    MissingPermissions(Vec<String>),
    #[error(transparent)]
    Cleanup(#[from] cleanup::Error),
}

/// Checks the permissions the clean-up will use: [`permissions::CLEANUP`] cluster-wide,
/// [`permissions::CLEANUP_IN_NAMESPACE`] in the namespace (the Deployment scale only when asked
/// to stop the operator, and for that Deployment's name).
pub async fn check_permissions(
    client: &kube::Client,
    opts: &Options,
) -> Result<Vec<String>, crate::preflight::PreflightError> {
    use crate::preflight::{allowed, check_in, describe};
    let mut missing: Vec<String> = check_in(client, permissions::CLEANUP, None)
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();
    let (scale, rest): (Vec<Permission>, Vec<Permission>) = permissions::CLEANUP_IN_NAMESPACE
        .iter()
        .copied()
        .partition(|p| p.resource == "deployments/scale");
    missing.extend(
        check_in(client, &rest, Some(&opts.namespace))
            .await?
            .iter()
            .map(|m| format!("{m} in namespace {}", opts.namespace)),
    );
    if let Some(name) = &opts.stop_operator {
        for p in &scale {
            for verb in p.verbs {
                if !allowed(
                    client,
                    p.group,
                    p.resource,
                    verb,
                    Some(name),
                    Some(&opts.namespace),
                )
                .await?
                {
                    missing.push(format!(
                        "{verb} {} in namespace {}",
                        describe(p, Some(name)),
                        opts.namespace
                    ));
                }
            }
        }
    }
    Ok(missing)
}

async fn run(args: &Args) -> Result<cleanup::Report, CleanupError> {
    let client = kube::Client::try_default().await?;
    let opts = args.options();
    if !args.skip_permission_check {
        let missing = check_permissions(&client, &opts).await?;
        if !missing.is_empty() {
            return Err(CleanupError::MissingPermissions(missing));
        }
    }
    Ok(cleanup::run(&client, &opts).await?)
}

/// Runs `portway cleanup`: exit code 0 when everything Portway made is gone (agent pods still
/// stopping at the deadline are reported, not failed), 1 on any error.
pub fn main(args: &Args) -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portway cleanup: {}", CleanupError::Runtime(e));
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            print!("{}", report.render());
            if report.ok() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("portway cleanup: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
