//! Arguments of `portway run`.

use std::net::SocketAddr;

use crate::controllers::servicelb::ServiceLbArgs;

/// Arguments of `portway run`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Run the ServiceLB controller (LoadBalancer Services -> node-agent DaemonSets).
    #[arg(long, env = "PORTWAY_SERVICELB_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub servicelb_enabled: bool,

    #[command(flatten)]
    pub servicelb: ServiceLbArgs,

    /// Start only after winning the `portway-operator` Lease in `--namespace` (two replicas are
    /// then safe); exit when it is lost.
    #[arg(long, env = "PORTWAY_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Address of the `/metrics`, `/healthz` and `/readyz` listener.
    #[arg(long, env = "PORTWAY_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Skip the start-up RBAC check (SelfSubjectAccessReview of every permission used).
    #[arg(long, default_value_t = false)]
    pub skip_permission_check: bool,

    /// Log format.
    #[arg(long, env = "PORTWAY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Runs `portway run` until a signal or a lost Lease.
pub fn main(args: Args) -> std::process::ExitCode {
    let _ = args;
    eprintln!("portway run: not wired yet");
    std::process::ExitCode::FAILURE
}
