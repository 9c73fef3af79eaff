//! Command line of the `portway` binary.

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
}
