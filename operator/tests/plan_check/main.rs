//! `portway plan` as a pre-merge check (issue 17): strict field validation and duplicate
//! objects (`strict`), exit codes (`exit_codes`), byte-identical output in any file and document
//! order (`determinism`), the JSON output against its checked-in schemas (`json_schema`), and
//! `--diff` (`diff`). One test binary: each links the whole operator.

mod determinism;
mod diff;
mod exit_codes;
mod json_schema;
mod strict;
mod support;
