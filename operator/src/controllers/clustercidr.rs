//! ClusterCIDR controller (shell): allocates `spec.podCIDRs` for Nodes.
