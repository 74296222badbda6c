//! emshap-ci: trains, gates, versions and ships the Attribution Service's power predictor
//! and EMSHAP model. See DESIGN.md for the contract; each module is one stage or one
//! external system.

pub mod app;
pub mod artifacts;
pub mod cli;
pub mod doctor;
pub mod drift;
pub mod error;
pub mod evaluate;
pub mod expect;
pub mod explain;
pub mod facts;
pub mod framing;
pub mod fsutil;
pub mod gate;
pub mod generate;
pub mod gha;
pub mod github;
pub mod graphs;
pub mod kafka;
pub mod kpi;
pub mod logging;
pub mod monitor;
pub mod native;
pub mod onnx;
pub mod progress;
pub mod proto;
pub mod pull;
pub mod report;
pub mod rows;
pub mod run;
pub mod schema;
pub mod settings;
pub mod store;
pub mod terminal;
pub mod train;
pub mod trainer;

pub use error::{Error, Result};
