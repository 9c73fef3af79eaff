//! The pure parts of the local cluster's test programs (`e2e/src/cluster`), unit-tested here:
//!
//! - [`dns`]: DNS wire format for the cluster DNS stand-in (`dns` binary): one question in, the
//!   records of a name in the cluster domain out.
//! - [`http`]: the request line and response of the agnhost `netexec` stand-in (`agnhost`).
//!
//! The binaries (`src/bin/`) are thin: sockets, threads and signals.

pub mod dns;
pub mod http;
