//! Reliability tests that run in `cargo test --workspace` (issue 8), each group printing one
//! summary line:
//! - `bad_input`: the hostile corpus (`corpus`, `e2e/testdata/hostile/` plus generated cases)
//!   through the input reader, the operator's core and the agent's rule builder:
//!   `bad-input: N tried, N rejected, 0 panics, 0 rules`.
//! - `props`: fixed-budget fuzzing (proptest) of whole inputs through the same three paths, with
//!   properties across components (determinism, the operator's output accepted by the agent, no
//!   overlapping pod CIDRs): `fuzz-props: N mutated inputs ...`.
//!
//! The agent-fault group lives in `node-agent/tests/agent_faults.rs` (`agent-faults: ...`, real
//! network namespaces, root) and the operator-fault group in `operator/tests/servicelb_mock.rs`
//! (`operator-faults: ...`, mocked API); `cargo fuzz` targets are in `fuzz/`.

mod bad_input;
mod corpus;
mod props;
