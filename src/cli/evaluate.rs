//! `emshap-ci evaluate` flags.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args, Default, Clone)]
pub struct EvaluateArgs {
    /// Snapshot folder written by `pull` (default work/data); its test split is scored.
    #[arg(long, env = "EMSHAP_CI_DATA")]
    pub data: Option<PathBuf>,

    /// The candidate's model folder written by `train` (default work/models).
    #[arg(long, env = "EMSHAP_CI_MODELS")]
    pub models: Option<PathBuf>,

    /// A folder with production's files (its ONNX models, or at least its metrics.json) to
    /// use instead of the store's production version.
    #[arg(long, env = "EMSHAP_CI_BASELINE")]
    pub baseline: Option<PathBuf>,

    /// The store whose production version is the baseline (default work/store when it
    /// exists); fetched and scored on the same test rows.
    #[arg(long, env = "EMSHAP_CI_STORE")]
    pub store: Option<String>,

    /// Gate rules (TOML: [power.rmse] direction = "lower", max_regression_rel = 0.02, ...);
    /// default: every KPI at least as good as production, R² ≥ 0.9, imputation RMSE ≤ 1.
    #[arg(long, env = "EMSHAP_CI_GATE")]
    pub gate: Option<PathBuf>,

    /// Pass even if the gate fails (needs --reason); recorded in metrics.json.
    #[arg(long, env = "EMSHAP_CI_FORCE")]
    pub force: bool,

    /// Why the gate is overridden.
    #[arg(long, env = "EMSHAP_CI_REASON")]
    pub reason: Option<String>,

    /// Folder for metrics.json (default work/eval).
    #[arg(long, env = "EMSHAP_CI_EVAL")]
    pub out: Option<PathBuf>,

    /// Test rows EMSHAP's KPIs are computed on (default 4096; the power KPIs use all).
    #[arg(long, env = "EMSHAP_CI_EMSHAP_ROWS")]
    pub emshap_rows: Option<usize>,

    /// Test rows explained with Shapley values for the global attribution in metrics.json
    /// and the report (default 16; 0: none).
    #[arg(long, env = "EMSHAP_CI_ATTRIBUTION_ROWS")]
    pub attribution_rows: Option<usize>,

    /// Threads for ONNX Runtime (default: the number of cores).
    #[arg(long, env = "EMSHAP_CI_THREADS")]
    pub threads: Option<usize>,
}
