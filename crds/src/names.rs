//! Names shared by the operator, the node agent and the Helm chart: API group, annotations,
//! labels, finalizers and field managers. Changing one of these is an API change.

/// API group of every Portway resource.
pub const GROUP: &str = "portway.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` string of every Portway resource.
pub const API_VERSION: &str = "portway.dev/v1alpha1";

/// Service annotation naming the `LoadBalancerPool` that must serve it (wins over selectors).
pub const POOL_ANNOTATION: &str = "portway.dev/pool";
/// `spec.loadBalancerClass` Portway answers to by default (besides Services without a class).
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "portway.dev/servicelb";

/// Finalizer the operator puts on every LoadBalancer Service it serves.
pub const SERVICE_FINALIZER: &str = "servicelb.portway.dev/cleanup";
/// Finalizer the operator keeps on a `ClusterCIDR` while Nodes hold CIDRs from it.
pub const CLUSTER_CIDR_FINALIZER: &str = "clustercidrs.portway.dev/allocations";
/// Node annotation naming the `ClusterCIDR` the operator allocated the Node's pod CIDRs from
/// (written together with `spec.podCIDRs`; read back when allocations are rebuilt at start).
pub const CLUSTER_CIDR_ANNOTATION: &str = "portway.dev/cluster-cidr";

/// `app.kubernetes.io/managed-by` value on everything Portway creates.
pub const MANAGED_BY: &str = "portway";
/// Standard label keys.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Component label value of node-agent DaemonSets and pods.
pub const COMPONENT_NODE_AGENT: &str = "node-agent";
/// Labels on a node-agent DaemonSet (and its pods) naming the Service it serves.
pub const LABEL_SERVICE_NAME: &str = "portway.dev/service-name";
pub const LABEL_SERVICE_NAMESPACE: &str = "portway.dev/service-namespace";
/// Label naming the pool a node-agent DaemonSet was built for.
pub const LABEL_POOL: &str = "portway.dev/pool";
/// Label on a `ServiceLoadBalancer` naming the DaemonSet whose pods serve it. The chart's
/// admission policy admits an agent's status write only when the Pod bound into the agent's token
/// is one of that DaemonSet's pods (`<daemonset>-<5 characters>`), so an agent can write for its
/// own Service only.
pub const LABEL_AGENT_DAEMONSET: &str = "portway.dev/agent-daemonset";

/// EndpointSlice label linking a slice to its Service (set by Kubernetes).
pub const ENDPOINTSLICE_SERVICE_LABEL: &str = "kubernetes.io/service-name";

/// Field manager prefix of node agents; the full manager is `portway-agent/<node>`, so each
/// node's agent owns exactly its own entry of `ServiceLoadBalancer.status.nodes`.
pub const AGENT_FIELD_MANAGER_PREFIX: &str = "portway-agent";

/// Field manager of node agent `node`.
pub fn agent_field_manager(node: &str) -> String {
    format!("{AGENT_FIELD_MANAGER_PREFIX}/{node}")
}

/// K3s ServiceLB labels that `portway migrate` converts.
pub mod k3s {
    /// Node label: `"true"` opts a node in to ServiceLB (once any node has it, only those serve).
    pub const ENABLE_LB_LABEL: &str = "svccontroller.k3s.cattle.io/enablelb";
    /// Node and Service label: the pool a node belongs to / a Service wants.
    pub const LB_POOL_LABEL: &str = "svccontroller.k3s.cattle.io/lbpool";
}
