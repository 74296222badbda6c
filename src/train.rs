//! `train power` and `train emshap`: DESIGN §4's models in tch (libtorch), early stopping on
//! the validation loss, the best weights kept, the history written as JSON, the export to
//! DESIGN §5's ONNX contracts, and the proof that ONNX Runtime computes what libtorch does.
//!
//! The settings, history and report types live here, in the executable that links no
//! libtorch; the training itself runs in `emshap-ci-train` (crates/emshap-train), which
//! `train_power`/`train_emshap` start through `crate::trainer`. Nothing is written to the
//! model folder until training, export and the proof have all succeeded.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::progress::Progress;

pub mod data;

pub use crate::artifacts::{
    EMSHAP_CHECKPOINT, EMSHAP_HISTORY, EMSHAP_ONNX, POWER_CHECKPOINT, POWER_HISTORY, POWER_ONNX,
};
/// EMSHAP's default train sample on a CPU. Its warm-up trains the proposal alone, which is
/// cheap (~0.05 ms a row on 2 cores); the energy network runs per (row, unobserved feature,
/// candidate), so its epochs see only `EMSHAP_CPU_ENERGY_ROWS` rows of the sample each (a
/// new random subset per epoch). Sized for a PR check under 10 minutes at 1M rows on the
/// 2-core machine (BENCHMARKS.md).
pub const EMSHAP_CPU_ROWS: usize = 60_000;
pub const EMSHAP_CPU_ENERGY_ROWS: usize = 4_000;
/// Rows of real data the exported graph is compared on against libtorch (at least).
pub const PROOF_ROWS: usize = 1000;
/// At most this many test rows are used (the proof of EMSHAP scores every entry).
pub const PROOF_ROWS_MAX: usize = 2048;
/// Largest accepted |ort − tch|, relative to max(scale, |tch|) per element, where the scale
/// is 1 for unitless outputs and the standard deviation for outputs in raw units.
pub const PROOF_TOLERANCE: f64 = 1e-4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// What both models' training needs, resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSettings {
    pub data: PathBuf,
    pub out: PathBuf,
    pub epochs: usize,
    pub patience: usize,
    pub seed: u64,
    pub device: DeviceChoice,
    pub batch_size: usize,
    pub lr: f64,
    pub threads: usize,
    /// A seeded sample of at most this many train rows; 0 = all; unset = the model's
    /// default (all for the power predictor; for EMSHAP `EMSHAP_CPU_ROWS` on a CPU and all
    /// on a GPU).
    pub max_rows: Option<usize>,
    /// Recorded in the ONNX metadata.
    pub sha: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PowerSettings {
    #[serde(flatten)]
    pub common: TrainSettings,
    pub hidden: [i64; 2],
    pub batch_norm: bool,
    pub dropout: f64,
    pub residual: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmshapSettings {
    #[serde(flatten)]
    pub common: TrainSettings,
    /// K: proposal samples per unobserved feature.
    pub proposals: usize,
    /// M: Gaussian components of the proposal.
    pub mixtures: usize,
    /// C: the context vector's length.
    pub context: usize,
    pub gru_hidden: usize,
    /// Width of the proposal's head (GRU → ReLU → Linear(this) → ReLU → parameters).
    pub proposal_hidden: usize,
    /// A linear path from the proposal's input [x_S, mask] straight to its parameters,
    /// added to the head's output (`[train.emshap] linear_skip`; BENCHMARKS.md, "What
    /// limits the conditional means").
    pub linear_skip: bool,
    /// Each feature's component means shifted by A(mask)·x_S, A [d×d] from a mask-only
    /// network (mask → ReLU(mask_linear_hidden) → d·d): the form of a Gaussian conditional
    /// mean, exact beyond the data's bulk (`[train.emshap] mask_linear`; BENCHMARKS.md, "A
    /// mask-conditioned linear path").
    pub mask_linear: bool,
    /// The mask network's width (`[train.emshap] mask_linear_hidden`).
    pub mask_linear_hidden: usize,
    pub energy_hidden: usize,
    pub energy_blocks: usize,
    pub mask_min: f64,
    pub mask_max: f64,
    /// How the training masks are drawn: DESIGN §4's dynamic rate schedule, or ACE's
    /// uniform coalition sizes.
    pub masking: Masking,
    /// Validation rows the per-epoch validation loss is computed on.
    pub val_rows: usize,
    /// Epochs that train the proposal alone (the energy network frozen and not evaluated)
    /// before the energy network trains (ACE's warm-up). Early stopping only counts epochs
    /// after it.
    pub warmup_epochs: usize,
    /// Whether `warmup_epochs` is the default share of the epochs (recomputed when the step
    /// budget sets the epochs) rather than a number given.
    pub warmup_auto: bool,
    /// When no epochs were given: the optimiser steps the run should take, the epochs being
    /// as many as reach them over the rows trained on, between `EMSHAP_EPOCHS` and
    /// `EMSHAP_MAX_EPOCHS` (a small snapshot gets more epochs, a big one no fewer).
    pub step_budget: Option<usize>,
    /// λ of the energy–proposal penalty λ·(log p̂ − log q)² per unobserved entry (ACE's
    /// optional regulariser; in the residual form log p̂ − log q = −E(x) − log Ẑ).
    pub energy_penalty: f64,
    /// σ of the Gaussian noise added to the (standardised) training inputs each batch.
    pub input_noise: f64,
    /// β of the exponential moving average of the weights (per optimiser step, warmed up as
    /// min(β, (1 + t)/(10 + t))) that validation, checkpoints and the export use; 0: off.
    pub weight_average: f64,
    /// Which epoch's weights are kept (`[train.emshap] checkpoint`).
    pub checkpoint: Checkpoint,
    /// K for the validation estimate of the energy density's NLL (checkpoint selection and
    /// the energy-on/off decision; its convergence is checked against 4× as many).
    pub val_proposals: usize,
    /// Whether the exported graph applies the energy correction: `auto` keeps it only when
    /// it beats the proposal on validation.
    pub energy: EnergyChoice,
    /// Rows per epoch once the energy network trains (a fresh random subset of the train
    /// sample each epoch); None: all.
    pub energy_rows: Option<usize>,
}

/// Which epoch's weights `train emshap` keeps (`[train.emshap] checkpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpoint {
    /// The latest epoch whose validation loss is within its own noise of the best: the
    /// larger of twice the epoch-to-epoch noise and the standard error over the rows.
    Noise,
    /// The last epoch trained (the moving average's weights when it is on).
    Last,
}

/// The training masks (`--masking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Masking {
    /// Each feature unobserved with probability r(e), the rate moving from the first to the
    /// last epoch's (DESIGN §4).
    Dynamic,
    /// Per row, a uniformly random number 0..d−1 of observed features, a uniformly random
    /// subset (`kpi::uniform_masks`, ACE's `UniformMaskGenerator`).
    Uniform,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnergyChoice {
    Auto,
    On,
    Off,
}

impl EmshapSettings {
    /// These settings with the epochs (and a default warm-up) the step budget asks for over
    /// `rows` training rows; unchanged when the epochs were given.
    pub fn with_step_budget(&self, rows: usize) -> EmshapSettings {
        use crate::settings::{EMSHAP_EPOCHS, EMSHAP_MAX_EPOCHS};
        let mut s = self.clone();
        if let Some(steps) = self.step_budget {
            let per_epoch = rows.div_ceil(self.common.batch_size.max(1)).max(1);
            let epochs = steps
                .div_ceil(per_epoch)
                .clamp(EMSHAP_EPOCHS, EMSHAP_MAX_EPOCHS);
            s.common.epochs = epochs;
            if self.warmup_auto {
                s.warmup_epochs = default_warmup(epochs);
            }
        }
        s
    }

    /// The learning rate's factor in epoch `e`: polynomial decay (power 1) from 1 to 0.05
    /// over the run.
    pub fn lr_factor(&self, epoch: usize) -> f64 {
        let t = epoch as f64 / self.common.epochs.max(1) as f64;
        (1.0 - 0.95 * t).max(0.05)
    }

    /// Whether epoch `e` trains the energy network too.
    pub fn trains_energy(&self, epoch: usize) -> bool {
        epoch >= self.warmup_epochs && self.energy != EnergyChoice::Off
    }
}

/// The warm-up epochs of a run of `epochs` when none were given: `EMSHAP_WARMUP_SHARE` of them.
pub fn default_warmup(epochs: usize) -> usize {
    (epochs as f64 * crate::settings::EMSHAP_WARMUP_SHARE).round() as usize
}

impl EmshapSettings {
    /// Epoch `epoch`'s training masks for `n` rows of `d` features (`--masking`).
    pub fn training_masks(
        &self,
        rng: &mut rand_chacha::ChaCha8Rng,
        n: usize,
        d: usize,
        epoch: usize,
    ) -> Vec<f32> {
        match self.masking {
            Masking::Dynamic => crate::kpi::masks(rng, n, d, self.mask_rate(epoch)),
            Masking::Uniform => crate::kpi::uniform_masks(rng, n, d),
        }
    }

    /// The mask rate the history logs for epoch `epoch`: r(e) with dynamic masks, none with
    /// uniform ones (their rate is not a setting).
    pub fn logged_mask_rate(&self, epoch: usize) -> Option<f64> {
        (self.masking == Masking::Dynamic).then(|| self.mask_rate(epoch))
    }

    /// r(e) = r_min + (r_max − r_min)·e/(E − 1), DESIGN §4.
    pub fn mask_rate(&self, epoch: usize) -> f64 {
        let e = self.common.epochs;
        if e <= 1 {
            return self.mask_min;
        }
        self.mask_min + (self.mask_max - self.mask_min) * epoch as f64 / (e - 1) as f64
    }
}

/// One epoch of the training history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    /// EMSHAP: mean −log p̂ over the masked validation entries (standardised units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_nll: Option<f64>,
    /// EMSHAP: the proposal's own validation NLL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_proposal_nll: Option<f64>,
    /// EMSHAP: the validation loss's standard error over the masked entries (checkpoint
    /// selection's tolerance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss_se: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_rate: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
    pub samples_per_s: f64,
    /// Seconds per phase of the epoch (EMSHAP on a CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<BTreeMap<String, f64>>,
}

/// `<model>_history.json`: everything needed to plot and reproduce the training.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct History {
    pub format: String,
    pub model: String,
    pub device: String,
    pub seed: u64,
    pub threads: usize,
    pub batch_size: usize,
    pub rows_train: usize,
    pub rows_val: usize,
    pub snapshot_sha256: String,
    pub settings: serde_json::Value,
    pub epochs: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub stopped_early: bool,
    /// Test-split figures from libtorch (evaluate re-scores through ONNX Runtime).
    pub test: BTreeMap<String, f64>,
    /// The export proof: rows compared and the largest difference per output.
    pub proof: Proof,
    /// EMSHAP: whether the exported graph applies the energy correction, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Proof {
    pub rows: usize,
    pub tolerance: f64,
    /// Largest |ort − tch| / max(scale, |tch|) per output.
    pub max_rel_diff: BTreeMap<String, f64>,
}

/// What `train` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub model: String,
    pub device: String,
    pub out: PathBuf,
    pub files: Vec<String>,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub seconds: f64,
    pub samples_per_s: f64,
    pub test: BTreeMap<String, f64>,
    pub proof: Proof,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy: Option<serde_json::Value>,
}

/// Trains the power predictor in `emshap-ci-train` (the only executable that links
/// libtorch) and returns its report; the trainer writes the checkpoint, history and ONNX file.
pub fn train_power(s: &PowerSettings, progress: &Progress) -> Result<TrainReport> {
    crate::trainer::train(&crate::trainer::Job::Power(s.clone()), progress)
}

/// Trains EMSHAP in `emshap-ci-train` and returns its report.
pub fn train_emshap(s: &EmshapSettings, progress: &Progress) -> Result<TrainReport> {
    crate::trainer::train(&crate::trainer::Job::Emshap(s.clone()), progress)
}
