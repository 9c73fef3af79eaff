//! The Portway operator: a pure core (`plan`, `cidr`) that turns observed objects into desired
//! ones, and thin shells (`controllers`) that read from and write to the API server.

pub mod cidr;
pub mod cleanup;
pub mod cli;
pub mod controllers;
#[doc(hidden)]
pub mod fixtures;
pub mod input;
pub mod metrics;
pub mod migrate;
pub mod permissions;
pub mod plan;
pub mod preflight;
pub mod server;
