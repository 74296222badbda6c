//! Integration tests, one binary with a module per area. Tests whose names contain `kafka`
//! start a real Tansu broker (see `harness`); the fast ones run with
//! `cargo nextest run -E 'not test(/kafka/)'`.

mod cli;
#[cfg(feature = "torch")]
mod evaluate;
mod harness;
mod onnx_python;
mod pull_file;
mod pull_kafka;
mod smoke;
#[cfg(feature = "torch")]
mod train;
