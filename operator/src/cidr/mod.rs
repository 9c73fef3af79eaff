//! Pure ClusterCIDR allocation: which CIDR each Node gets; no I/O.
//!
//! Interface used by other modules (owned by the ClusterCIDR work):
//! - [`plan_for_nodes`]: what `portway plan` prints for Nodes and ClusterCIDRs.
//! - [`convert_upstream`]: `networking.k8s.io/v1alpha1` ClusterCIDR -> Portway's, for `portway migrate`.

use k8s_openapi::api::core::v1::Node;
use portway_crds::ClusterCIDR;
use serde::Serialize;

/// Pod CIDRs each Node of the input has or would get, and the resulting ClusterCIDR statuses.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CidrPlan {}

/// Why the CIDR plan could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum CidrPlanError {
    #[error("ClusterCIDR planning is not implemented yet")]
    NotImplemented,
}

/// Computes the CIDR plan for `nodes` from `cidrs`.
pub fn plan_for_nodes(_nodes: &[Node], _cidrs: &[ClusterCIDR]) -> Result<CidrPlan, CidrPlanError> {
    Err(CidrPlanError::NotImplemented)
}

/// Why an upstream ClusterCIDR could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("converting networking.k8s.io/v1alpha1 ClusterCIDRs is not implemented yet")]
    NotImplemented,
}

/// Converts an upstream `networking.k8s.io/v1alpha1` ClusterCIDR (as JSON) to Portway's.
pub fn convert_upstream(_upstream: &serde_json::Value) -> Result<ClusterCIDR, ConvertError> {
    Err(ConvertError::NotImplemented)
}
