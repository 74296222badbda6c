//! Integration tests, one binary with a module per area. Tests whose names contain `kafka`
//! start a real Tansu broker, those named `s3_*` a real S3-compatible server (see `harness`);
//! the fast ones run with `cargo nextest run -E 'not test(/kafka|s3_/)'`.

#[cfg(feature = "fake-trainer")]
mod act;
#[cfg(feature = "fake-trainer")]
mod action;
mod cli;
#[cfg(feature = "fake-trainer")]
mod doctor;
#[cfg(feature = "fake-trainer")]
mod evaluate;
mod explain;
mod github;
mod harness;
#[cfg(feature = "fake-trainer")]
mod image;
#[cfg(feature = "fake-trainer")]
mod install;
mod kafka_security;
#[cfg(feature = "fake-trainer")]
mod monitor;
mod onnx_python;
mod pull_file;
mod pull_kafka;
#[cfg(feature = "real-training")]
mod quality;
#[cfg(feature = "fake-trainer")]
mod run;
mod s3;
mod smoke;
#[cfg(feature = "real-training")]
mod train;
#[cfg(feature = "fake-trainer")]
mod trainer;
mod workflows;
