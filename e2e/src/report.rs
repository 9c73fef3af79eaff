//! Lines the tests print for the person running them: skip reasons and summaries.
//!
//! libtest captures `println!`/`eprintln!` of passing tests, so a skip line printed that way
//! would never be seen. These helpers write to the process' stderr directly, which libtest does
//! not capture: every line shows up in a plain `cargo test` run.

use std::io::Write;

/// Writes one line to stderr, bypassing libtest's output capture.
pub fn line(text: &str) {
    let mut err = std::io::stderr().lock();
    // Nothing sensible to do when stderr is gone.
    let _ = writeln!(err, "{text}");
}

/// `SKIP <test>: <reason>`.
pub fn skip(test: &str, reason: &str) {
    line(&format!("SKIP {test}: {reason}"));
}
