//! Thin shells around the pure core: watch, call the core, write what differs.

pub mod clustercidr;
pub mod lease;
pub mod servicelb;
