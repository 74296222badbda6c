//! `emshap-ci report` flags.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Limit {
    /// A PR comment: 65,536 characters.
    #[default]
    Comment,
    /// A job summary: 1 MiB.
    Summary,
}

#[derive(Debug, Args, Default, Clone)]
pub struct ReportArgs {
    /// The folder written by `evaluate`: metrics.json, dataset.json (default work/eval).
    #[arg(long, env = "EMSHAP_CI_EVAL")]
    pub eval: Option<PathBuf>,
    /// The model folder written by `train`, for the training curves (default work/models).
    #[arg(long, env = "EMSHAP_CI_MODELS")]
    pub models: Option<PathBuf>,
    /// The commit sha the report is about (default $GITHUB_SHA).
    #[arg(long, env = "EMSHAP_CI_SHA")]
    pub sha: Option<String>,
    /// The published version's manifest URI, linked from the report.
    #[arg(long, env = "EMSHAP_CI_MANIFEST_URI")]
    pub manifest_uri: Option<String>,
    /// The size limit to fit, by dropping the least important sections (default comment).
    #[arg(long, value_enum, env = "EMSHAP_CI_REPORT_LIMIT")]
    pub limit: Option<Limit>,
    /// Where to write the markdown (default EVAL/report.md); it is also printed.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also append the report to the job summary ($GITHUB_STEP_SUMMARY, in Actions).
    #[arg(long)]
    pub summary: bool,
}
