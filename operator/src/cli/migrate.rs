//! `portway migrate`: prints the Portway resources that replace K3s ServiceLB's node and Service
//! labels (and upstream `networking.k8s.io/v1alpha1` ClusterCIDRs), from a folder of YAML or,
//! read-only, from the cluster in the kubeconfig. The conversion itself is pure
//! ([`crate::migrate`]); this module only reads and prints.
//!
//! Exit status: 0 when everything converted; 1 when some object could not be converted (nothing
//! is printed on stdout then, unless `--keep-going`, so a pipe into `kubectl apply` never applies
//! half a migration by accident); 2 when the input cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::input::{self, InputSet};
use crate::migrate::{self, render};

/// Arguments of `portway migrate`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    portway migrate examples/k3s/ > portway-migration.yaml\n  \
    kubectl get nodes,services -A -o yaml > k3s.yaml && portway migrate k3s.yaml\n  \
    portway migrate --from-cluster | kubectl apply --server-side --field-manager=portway-migrate -f -")]
pub struct Args {
    /// YAML files or folders (read one level deep) with Nodes, Services and upstream
    /// ClusterCIDRs, e.g. the output of `kubectl get nodes,services -A -o yaml`.
    #[arg(
        required_unless_present = "from_cluster",
        conflicts_with = "from_cluster"
    )]
    pub paths: Vec<PathBuf>,
    /// Read Nodes, Services and networking.k8s.io/v1alpha1 ClusterCIDRs from the cluster in the
    /// kubeconfig instead (read-only: list requests only).
    #[arg(long)]
    pub from_cluster: bool,
    /// Print what converted even when some objects could not be converted (they are listed on
    /// stderr and as comments).
    #[arg(long)]
    pub keep_going: bool,
}

/// Why the input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Input(#[from] input::InputError),
    #[error("cannot reach the cluster in the kubeconfig: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot list {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("a listed {what} does not convert to JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Runs `portway migrate`.
pub fn main(args: Args) -> ExitCode {
    let (set, source) = if args.from_cluster {
        match read_cluster() {
            Ok(set) => (set, "the cluster in the kubeconfig".to_owned()),
            Err(e) => {
                eprintln!("portway migrate: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        // Not strict: a dump of a cluster newer than the Kubernetes API this binary knows has
        // fields it does not; they do not matter for the conversion.
        match input::read_paths_with(&args.paths, input::FieldValidation::Ignore) {
            Ok(set) => {
                let names: Vec<String> =
                    args.paths.iter().map(|p| p.display().to_string()).collect();
                (set, names.join(", "))
            }
            Err(e) => {
                eprintln!("portway migrate: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let m = migrate::migrate(&set.nodes, &set.services, &set.upstream_cluster_cidrs);
    for s in set
        .skipped
        .iter()
        .filter(|s| s.object.starts_with("Node/") || s.object.starts_with("Service/"))
    {
        eprintln!(
            "portway migrate: skipped {} ({}): {}",
            s.object, s.source, s.reason
        );
    }
    for e in &m.errors {
        eprintln!("portway migrate: not converted: {e}");
    }
    if !m.errors.is_empty() && !args.keep_going {
        eprintln!(
            "portway migrate: {} object(s) not converted; nothing printed (use --keep-going to print the rest)",
            m.errors.len()
        );
        return ExitCode::FAILURE;
    }
    match render::yaml_stream(&m, &source) {
        Ok(yaml) => {
            print!("{yaml}");
            if m.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("portway migrate: cannot render YAML: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The upstream ClusterCIDR API (removed in Kubernetes 1.29; K3s clusters before that may serve it).
fn upstream_cluster_cidr_resource() -> ApiResource {
    ApiResource {
        group: "networking.k8s.io".into(),
        version: "v1alpha1".into(),
        api_version: "networking.k8s.io/v1alpha1".into(),
        kind: "ClusterCIDR".into(),
        plural: "clustercidrs".into(),
    }
}

/// Lists every object of `api`, 500 per request.
async fn list_all<K>(api: &Api<K>, what: &'static str) -> Result<Vec<K>, ReadError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api
            .list(&params)
            .await
            .map_err(|source| ReadError::List { what, source })?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

fn read_cluster() -> Result<InputSet, ReadError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ReadError::Runtime)?;
    runtime.block_on(async {
        let client = Client::try_default().await.map_err(ReadError::Client)?;
        let nodes = list_all(&Api::<Node>::all(client.clone()), "Nodes").await?;
        let services = list_all(&Api::<Service>::all(client.clone()), "Services").await?;
        let ar = upstream_cluster_cidr_resource();
        let cidrs = match list_all(
            &Api::<DynamicObject>::all_with(client, &ar),
            "networking.k8s.io/v1alpha1 ClusterCIDRs",
        )
        .await
        {
            Ok(objects) => objects,
            // Not served (Kubernetes >= 1.29, or the alpha API never enabled): nothing to convert.
            Err(ReadError::List {
                source: kube::Error::Api(status),
                ..
            }) if status.is_not_found() => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut upstream = Vec::with_capacity(cidrs.len());
        for c in cidrs {
            let mut v = serde_json::to_value(&c).map_err(|source| ReadError::Json {
                what: "ClusterCIDR",
                source,
            })?;
            if let Value::Object(map) = &mut v {
                map.insert("apiVersion".into(), ar.api_version.clone().into());
                map.insert("kind".into(), ar.kind.clone().into());
            }
            upstream.push(v);
        }
        Ok(InputSet {
            nodes,
            services,
            upstream_cluster_cidrs: upstream,
            ..InputSet::default()
        })
    })
}
