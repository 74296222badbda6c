//! `emshap-ci train power|emshap` flags.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Train the power predictor (MLP) and export power_predictor.onnx.
    Power(TrainPowerArgs),
    /// Train the EMSHAP conditional-density model and export emshap_model.onnx.
    Emshap(TrainEmshapArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when libtorch sees a GPU, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// Flags both models share.
#[derive(Debug, Args, Default, Clone)]
pub struct CommonTrainArgs {
    /// Snapshot folder written by `pull` (default work/data).
    #[arg(long, env = "EMSHAP_CI_DATA")]
    pub data: Option<PathBuf>,

    /// Model folder to write the checkpoint, history and ONNX file into (default work/models).
    #[arg(long, env = "EMSHAP_CI_MODELS")]
    pub out: Option<PathBuf>,

    /// Most epochs; early stopping may end sooner (default: power 100; EMSHAP as many as
    /// 9,400 optimiser steps take over the rows trained on, 40 to 100).
    #[arg(long, env = "EMSHAP_CI_EPOCHS")]
    pub epochs: Option<usize>,

    /// Seed of every random choice (initial weights, batches, masks, samples).
    #[arg(long, env = "EMSHAP_CI_TRAIN_SEED")]
    pub seed: Option<u64>,

    /// Where to train.
    #[arg(long, env = "EMSHAP_CI_DEVICE", value_enum)]
    pub device: Option<DeviceArg>,

    /// Rows per optimiser step (default 256).
    #[arg(long, env = "EMSHAP_CI_BATCH_SIZE")]
    pub batch_size: Option<usize>,

    /// Adam's learning rate (default 0.001).
    #[arg(long, env = "EMSHAP_CI_LR")]
    pub lr: Option<f64>,

    /// Epochs without a better validation loss before training stops (default: power 10,
    /// EMSHAP 5, counted after its warm-up); the power model's learning rate halves after
    /// half as many (EMSHAP's decays polynomially).
    #[arg(long, env = "EMSHAP_CI_PATIENCE")]
    pub patience: Option<usize>,

    /// CPU threads for libtorch (default: the number of cores).
    #[arg(long, env = "EMSHAP_CI_THREADS")]
    pub threads: Option<usize>,

    /// Train on a seeded sample of at most this many train rows (0 = all; default all,
    /// except EMSHAP on a CPU: 60000, of which its energy epochs see 4000 each).
    #[arg(long, env = "EMSHAP_CI_MAX_ROWS")]
    pub max_rows: Option<usize>,

    /// Commit sha recorded in the ONNX metadata (default $GITHUB_SHA, else "local").
    #[arg(long, env = "EMSHAP_CI_SHA")]
    pub sha: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct TrainPowerArgs {
    #[command(flatten)]
    pub common: CommonTrainArgs,

    /// Batch normalisation after each hidden layer.
    #[arg(long, env = "EMSHAP_CI_BATCH_NORM")]
    pub batch_norm: bool,

    /// Dropout probability after each hidden layer (default 0).
    #[arg(long, env = "EMSHAP_CI_DROPOUT")]
    pub dropout: Option<f64>,

    /// A linear skip connection from the input to the second hidden layer.
    #[arg(long, env = "EMSHAP_CI_RESIDUAL")]
    pub residual: bool,
}

#[derive(Debug, Args, Default, Clone)]
pub struct TrainEmshapArgs {
    #[command(flatten)]
    pub common: CommonTrainArgs,

    /// Proposal samples K per unobserved feature (default 20).
    #[arg(long, env = "EMSHAP_CI_TRAIN_PROPOSALS")]
    pub proposals: Option<usize>,

    /// Gaussian components M of the proposal mixture (default 10).
    #[arg(long, env = "EMSHAP_CI_MIXTURES")]
    pub mixtures: Option<usize>,

    /// Mask-rate schedule, first,last epoch (default 0.2,0.8).
    #[arg(long, env = "EMSHAP_CI_MASK_RATE", value_delimiter = ',')]
    pub mask_rate: Option<Vec<f64>>,

    /// Training masks: uniform (per row a uniformly random number of observed features,
    /// ACE's masks; the default) or dynamic (each feature unobserved at the epoch's
    /// --mask-rate, DESIGN §4).
    #[arg(long, env = "EMSHAP_CI_MASKING")]
    pub masking: Option<String>,

    /// Epochs that train the proposal alone before the energy network trains (default:
    /// nine tenths of the epochs).
    #[arg(long, env = "EMSHAP_CI_WARMUP_EPOCHS")]
    pub warmup_epochs: Option<usize>,

    /// The energy correction in the exported graph: auto (only when it beats the proposal
    /// on validation), on, or off (the graph is the proposal).
    #[arg(long, env = "EMSHAP_CI_ENERGY")]
    pub energy: Option<String>,
}
