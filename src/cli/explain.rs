//! `emshap-ci explain` flags.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args, Default, Clone)]
pub struct ExplainArgs {
    /// Model folder with power_predictor.onnx and emshap_model.onnx (default work/models).
    #[arg(long, env = "EMSHAP_CI_MODELS")]
    pub models: Option<PathBuf>,

    /// Rows to explain, in raw units: .csv (with a header), .json (an array of objects) or
    /// .parquet, columns named like the model's features; a snapshot split from `pull` works
    /// too (its standardised values are converted back).
    #[arg(long, env = "EMSHAP_CI_EXPLAIN_ROWS")]
    pub rows: PathBuf,

    /// Explain only the first N rows.
    #[arg(long, env = "EMSHAP_CI_LIMIT")]
    pub limit: Option<usize>,

    /// Where to write the attributions: .json or .csv.
    #[arg(long, env = "EMSHAP_CI_EXPLAIN_OUT")]
    pub out: PathBuf,

    /// Enumerate every coalition (the default up to 12 features; at most 16).
    #[arg(long, conflicts_with = "samples")]
    pub exact: bool,

    /// KernelSHAP with this many paired coalition samples a row (default 512 above 12
    /// features).
    #[arg(long, env = "EMSHAP_CI_SAMPLES")]
    pub samples: Option<usize>,

    /// EMSHAP proposal samples K per imputation, and per resampling step of the joint
    /// sampler when the model's energy correction is on (default 20).
    #[arg(long, env = "EMSHAP_CI_EXPLAIN_PROPOSALS")]
    pub proposals: Option<usize>,

    /// The value function: expectation (v(S) = E[f(x_S, X_S̄) | x_S] from joint samples
    /// centred on the model's conditional mean, right for any model), uncentred (the same
    /// from the samples as drawn; for comparison) or mean (f at the conditional mean: exact
    /// only for a linear model; for comparison).
    /// (default expectation)
    #[arg(long, env = "EMSHAP_CI_VALUE_FUNCTION")]
    pub value_function: Option<crate::explain::ValueFunctionKind>,

    /// Joint samples of the features outside each coalition (expectation; default 64 for
    /// exact enumeration, 16 for KernelSHAP).
    #[arg(long, env = "EMSHAP_CI_DRAWS")]
    pub draws: Option<usize>,

    /// Seed for the coalitions and the proposal randomness (default 7).
    #[arg(long, env = "EMSHAP_CI_EXPLAIN_SEED")]
    pub seed: Option<u64>,

    /// Threads for ONNX Runtime (default: the number of cores).
    #[arg(long, env = "EMSHAP_CI_THREADS")]
    pub threads: Option<usize>,
}
