//! Command line of the `portway` binary: `crd`, `plan`, `run` (and `migrate`, see
//! [`migrate`]). `main.rs` only parses and dispatches.

pub mod migrate;
pub mod plan;
pub mod run;

use clap::{Parser, Subcommand};

/// Portway: LoadBalancer Services on node ports, and pod CIDRs for Nodes.
#[derive(Parser, Debug)]
#[command(name = "portway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print every Portway CustomResourceDefinition as YAML.
    Crd,
    /// Show what the operator would create and write for a folder of YAML (Services, Nodes,
    /// EndpointSlices, LoadBalancerPools, ClusterCIDRs), without a cluster.
    Plan(plan::Args),
    /// Run the operator against the cluster in the kubeconfig / service account.
    Run(Box<run::Args>),
    /// Convert K3s ServiceLB labels and upstream ClusterCIDRs to Portway resources.
    Migrate(migrate::Args),
}
