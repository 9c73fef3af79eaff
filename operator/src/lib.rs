//! The Portway operator.
pub mod cli;
