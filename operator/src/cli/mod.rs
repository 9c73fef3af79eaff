//! Command line of the `portway` binary: `crd`, `plan`, `run`, `migrate` and `cleanup`.
//! `main.rs` only parses and dispatches.

pub mod cleanup;
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
    /// EndpointSlices, LoadBalancerPools, ClusterCIDRs), without a cluster; or, with --diff,
    /// what changes between two folders. Strict and deterministic: a pre-merge check.
    #[command(after_help = plan::AFTER_HELP)]
    Plan(plan::Args),
    /// Run the operator against the cluster in the kubeconfig / service account.
    Run(Box<run::Args>),
    /// Convert K3s ServiceLB labels and upstream ClusterCIDRs to Portway resources.
    Migrate(migrate::Args),
    /// Remove everything the operator made (agent DaemonSets, whose agents remove their rules,
    /// Service ingress, conditions and finalizers, ServiceLoadBalancers, agent RoleBindings);
    /// the Helm chart runs it before `helm uninstall` deletes the release.
    Cleanup(cleanup::Args),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "portway",
            "run",
            "--servicelb-enabled=false",
            "--load-balancer-class",
            "x/y",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert!(!args.servicelb_enabled);
        assert!(args.leader_election);
        assert_eq!(args.servicelb.load_balancer_class, "x/y");
        assert_eq!(args.servicelb.agent_service_account, "portway-agent");
        assert_eq!(args.metrics_addr.to_string(), "[::]:9463");
        let cli =
            Cli::try_parse_from(["portway", "plan", "examples", "-o", "wide"]).expect("parses");
        assert!(matches!(cli.command, Command::Plan(a) if a.output == plan::Format::Wide));
        let cli = Cli::try_parse_from(["portway", "plan", "--diff", "a", "b", "-o", "json"])
            .expect("parses");
        let Command::Plan(args) = cli.command else {
            panic!("not plan");
        };
        assert_eq!(args.output, plan::Format::Json);
        assert_eq!(args.diff, Some(vec!["a".into(), "b".into()]));
        assert!(!args.strict && args.paths.is_empty());
        // A diff takes exactly two trees, and paths read on both sides; a plan needs a path.
        assert!(Cli::try_parse_from(["portway", "plan", "--diff", "a"]).is_err());
        let cli =
            Cli::try_parse_from(["portway", "plan", "x", "--diff", "a", "b"]).expect("parses");
        assert!(
            matches!(cli.command, Command::Plan(a) if a.paths == [std::path::PathBuf::from("x")])
        );
        assert!(Cli::try_parse_from(["portway", "plan", "--strict"]).is_err());
        let cli = Cli::try_parse_from([
            "portway",
            "cleanup",
            "--namespace=ops",
            "--stop-operator=portway-operator",
            "--timeout-seconds=30",
            "--helm-release=portway",
        ])
        .expect("parses");
        let Command::Cleanup(args) = cli.command else {
            panic!("not cleanup");
        };
        let opts = args.options();
        assert_eq!(opts.namespace, "ops");
        assert_eq!(opts.stop_operator.as_deref(), Some("portway-operator"));
        assert_eq!(opts.timeout.as_secs(), 30);
        assert!(!opts.dry_run);
        assert_eq!(opts.helm_release.as_deref(), Some("portway"));
        assert!(Cli::try_parse_from(["portway", "cleanup", "--timeout-seconds=0"]).is_err());
    }
}
