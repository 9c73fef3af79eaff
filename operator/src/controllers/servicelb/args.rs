//! Settings of the ServiceLB controller, shared by `portway run` and `portway plan`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::plan::reserved::{DEFAULT_RESERVED_HOST_PORTS, ReservedPorts};
use crate::plan::{Config, DEFAULT_AGENT_IMAGE};

/// The operator's namespace when neither `--namespace` nor `POD_NAMESPACE` is set.
pub const FALLBACK_NAMESPACE: &str = "portway-system";

/// ServiceLB settings.
#[derive(clap::Args, Debug, Clone, PartialEq)]
#[group(id = "servicelb-args")]
pub struct ServiceLbArgs {
    /// `spec.loadBalancerClass` served (besides Services without a class).
    #[arg(long, env = "PORTWAY_LOAD_BALANCER_CLASS", default_value = portway_crds::names::DEFAULT_LOAD_BALANCER_CLASS)]
    pub load_balancer_class: String,
    /// The operator's namespace: node-agent DaemonSets and the leader Lease live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = FALLBACK_NAMESPACE)]
    pub namespace: String,
    /// Image of the node agents.
    #[arg(long, env = "PORTWAY_AGENT_IMAGE", default_value = DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    /// ServiceAccount (in `--namespace`) the node agents run as.
    #[arg(
        long,
        env = "PORTWAY_AGENT_SERVICE_ACCOUNT",
        default_value = "portway-agent"
    )]
    pub agent_service_account: String,
    /// ClusterRole bound to the agents in each namespace with a served Service.
    #[arg(
        long,
        env = "PORTWAY_AGENT_STATUS_CLUSTER_ROLE",
        default_value = "portway-agent-status"
    )]
    pub agent_status_cluster_role: String,
    /// Add forwarding sysctls (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`) to agent
    /// pods; only for kubelets that allow them (e.g. K3s).
    #[arg(long, env = "PORTWAY_AGENT_FORWARDING_SYSCTLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub agent_forwarding_sysctls: bool,
    /// Host ports no agent may take, as `PROTOCOL/PORT=OWNER,...` (empty: none). A Service asking
    /// for one gets `PortConflict` (`PortReserved`) and no DaemonSet. Agents run at
    /// system-node-critical priority: an agent pod wanting a port a lower-priority pod holds
    /// (the operator on the host network) would preempt it. The chart adds the operator's
    /// metrics port when `operator.hostNetwork` is set.
    #[arg(long, env = "PORTWAY_RESERVED_HOST_PORTS", default_value = DEFAULT_RESERVED_HOST_PORTS)]
    pub reserved_host_ports: ReservedPorts,
}

impl ServiceLbArgs {
    /// The core's configuration at time `now`.
    pub fn config(&self, now: Time) -> Config {
        Config {
            load_balancer_class: self.load_balancer_class.clone(),
            namespace: self.namespace.clone(),
            agent_image: self.agent_image.clone(),
            agent_service_account: self.agent_service_account.clone(),
            agent_status_cluster_role: self.agent_status_cluster_role.clone(),
            agent_forwarding_sysctls: self.agent_forwarding_sysctls,
            assume_agents_forwarding: false,
            build_objects: true,
            reserved_host_ports: self.reserved_host_ports.0.clone(),
            now,
        }
    }
}
