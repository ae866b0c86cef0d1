//! The integration tests, one binary: each module below is one area of the engine driven from
//! outside, through the library, the `aleph-wasm` command or a `serve` node, and `common` holds
//! what they share. One binary links the engine once and lets the test runner's threads take
//! any area's next test, so a long test in one area never leaves a core idle.

mod common;

mod cli;
mod examples;
mod executor;
mod guest_wire;
mod isolation;
mod python;
mod reproducible;
mod server;
mod server_triggers;
mod two_nodes;
