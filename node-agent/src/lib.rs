//! The Portway node agent: forwards one LoadBalancer Service's host ports to the Service, from
//! the agent pod's network namespace (`Pod` dataplane) or the node's (`Host` dataplane), and
//! reports through its own entry of the `ServiceLoadBalancer` status.
//!
//! Functional core, thin shell:
//! - [`rules`] (pure): spec + addresses + endpoints -> [`rules::RuleSet`];
//! - [`dataplane`]: the [`dataplane::Dataplane`] trait and the iptables backend (pure rendering
//!   and diffing in [`dataplane::iptables::render`], atomic `iptables-restore` batches);
//! - [`status`] (pure entry + SSA sink), [`net`] and [`forwarding`] (rtnetlink), [`source`]
//!   (watches or local files), [`agent`] (the loop), [`cli`] (the binary);
//! - [`handover`] (pure decision + lookups): at SIGTERM, leave the rules to the next agent on
//!   this node or remove them.
//!
//! See `docs/node-agent.md` and `docs/design-dataplane.md`.

pub mod agent;
pub mod cli;
pub mod dataplane;
pub mod forwarding;
pub mod handover;
pub mod metrics;
pub mod net;
pub mod permissions;
pub mod rules;
pub mod source;
pub mod state;
pub mod status;
