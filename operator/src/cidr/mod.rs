//! Pure ClusterCIDR allocation: which pod CIDRs each Node gets; no I/O, no clock, no client.
//!
//! - [`block`]: CIDRs as aligned intervals of a 128-bit space per family.
//! - [`few`]: a list of up to two items without a heap allocation.
//! - [`intervals`]: sorted runs of free indexes (memory follows allocations, not range sizes).
//! - [`spec`]: a ClusterCIDR spec checked and turned into per-family ranges.
//! - [`allocator`]: the state (free blocks per ClusterCIDR, a global index of occupied blocks,
//!   each Node's CIDRs), selection order, adoption, allocation and release.
//! - [`status`]: a ClusterCIDR's usage and conditions from that state.
//! - [`plan`]: [`plan_for_nodes`], what `portway plan` prints.
//! - [`upstream`]: [`convert_upstream`], `networking.k8s.io/v1alpha1` -> Portway, for
//!   `portway migrate`.
//!
//! The controller (`controllers::clustercidr`) drives the same allocator from watch events;
//! `docs/clustercidr.md` describes the semantics.

pub mod allocator;
pub mod block;
pub mod few;
pub mod intervals;
pub mod plan;
pub mod spec;
pub mod status;
pub mod upstream;

pub use allocator::{
    AdoptReport, Allocation, Allocator, NodeFacts, NodeRecord, Origin, Unavailable,
};
pub use block::{Block, Family};
pub use plan::{
    CidrPlan, CidrPlanError, ClusterCidrOutcome, NodeCidrState, NodeCidrs, plan_for_nodes,
};
pub use status::PlannedCondition;
pub use upstream::{ConvertError, convert_upstream};
