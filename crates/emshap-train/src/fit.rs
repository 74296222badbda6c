//! The training loop both models share: Adam, one pass over the (shuffled) train rows per
//! epoch, the validation loss after each, the learning rate halved after a plateau, early
//! stopping after `patience` epochs without improvement, and the best weights restored at
//! the end. All randomness outside libtorch's own generator comes from one seeded ChaCha8,
//! so a CPU run is reproducible bit for bit.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use tch::nn::{self, OptimizerConfig};
use tch::Tensor;

use super::{EpochRecord, TrainSettings};
use emshap_ci::error::{Error, Result};
use emshap_ci::progress::Progress;

/// What the loop needs from a model.
pub trait Trainee {
    /// Train rows seen per epoch.
    fn rows(&self) -> usize;
    /// Train rows seen in epoch `e` (EMSHAP's energy epochs may see fewer).
    fn epoch_rows(&self, _epoch: usize) -> usize {
        self.rows()
    }
    /// One pass over the training rows; returns the mean loss per row.
    fn train_epoch(
        &mut self,
        epoch: usize,
        opt: &mut nn::Optimizer,
        rng: &mut ChaCha8Rng,
        progress: &Progress,
    ) -> Result<f64>;
    /// The validation loss after epoch `epoch`, and (EMSHAP) the validation NLL.
    fn validate(&self, epoch: usize) -> Result<(f64, Option<f64>)>;
    /// EMSHAP: the proposal's validation NLL from the last `validate`.
    fn val_proposal_nll(&self) -> Option<f64> {
        None
    }
    fn mask_rate(&self, _epoch: usize) -> Option<f64> {
        None
    }
    /// Where the last epoch's time went, when the model measures it.
    fn phases(&mut self) -> Option<BTreeMap<String, f64>> {
        None
    }
    /// A learning-rate schedule of the model's own (a factor of the base rate per epoch);
    /// None: halve after a plateau.
    fn lr_factor(&self, _epoch: usize) -> Option<f64> {
        None
    }
    /// Whether epoch `e` counts towards early stopping (EMSHAP: not during its warm-up,
    /// where the validation figure is the proposal's alone).
    fn counts_for_patience(&self, _epoch: usize) -> bool {
        true
    }
}

pub struct Fitted {
    pub epochs: Vec<EpochRecord>,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub stopped_early: bool,
    pub seconds: f64,
}

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

fn restore(vs: &nn::VarStore, saved: &HashMap<String, Tensor>) {
    tch::no_grad(|| {
        for (k, mut v) in vs.variables() {
            v.copy_(&saved[&k]);
        }
    });
}

pub fn fit(
    vs: &nn::VarStore,
    model: &mut impl Trainee,
    s: &TrainSettings,
    rng: &mut ChaCha8Rng,
    progress: &Progress,
) -> Result<Fitted> {
    let mut opt = nn::Adam::default()
        .build(vs, s.lr)
        .map_err(|e| Error::Internal(anyhow::anyhow!("adam: {e}")))?;
    let started = Instant::now();
    let total: usize = (0..s.epochs).map(|e| model.epoch_rows(e)).sum();
    progress.set_total(total as u64, "rows");
    let plateau = (s.patience / 2).max(1);
    let mut lr = s.lr;
    let mut best = (f64::INFINITY, 0usize, snapshot(vs));
    let mut since_best = 0;
    let mut since_lr = 0;
    let mut epochs = Vec::new();
    let mut stopped_early = false;
    for epoch in 0..s.epochs {
        if let Some(f) = model.lr_factor(epoch) {
            lr = s.lr * f;
            opt.set_lr(lr);
        }
        let t0 = Instant::now();
        let train_loss = model.train_epoch(epoch, &mut opt, rng, progress)?;
        let seconds = t0.elapsed().as_secs_f64();
        let (val_loss, val_nll) = model.validate(epoch)?;
        if !train_loss.is_finite() || !val_loss.is_finite() {
            return Err(Error::usage(
                "training",
                format!(
                    "the loss diverged in epoch {} (train {train_loss}, validation {val_loss}); lower --lr (now {lr})",
                    epoch + 1
                ),
            ));
        }
        tracing::info!(
            epoch = epoch + 1,
            train_loss,
            val_loss,
            lr,
            seconds,
            "epoch done"
        );
        epochs.push(EpochRecord {
            epoch: epoch + 1,
            train_loss,
            val_loss,
            val_nll,
            val_proposal_nll: model.val_proposal_nll(),
            mask_rate: model.mask_rate(epoch),
            lr,
            seconds,
            samples_per_s: model.epoch_rows(epoch) as f64 / seconds.max(1e-9),
            phases: model.phases(),
        });
        if val_loss < best.0 {
            best = (val_loss, epoch + 1, snapshot(vs));
            since_best = 0;
            since_lr = 0;
        } else if model.counts_for_patience(epoch) {
            since_best += 1;
            since_lr += 1;
            if since_best >= s.patience {
                stopped_early = epoch + 1 < s.epochs;
                break;
            }
            if since_lr >= plateau && model.lr_factor(epoch).is_none() {
                lr *= 0.5;
                opt.set_lr(lr);
                since_lr = 0;
            }
        }
    }
    restore(vs, &best.2);
    Ok(Fitted {
        epochs,
        best_epoch: best.1,
        best_val_loss: best.0,
        stopped_early,
        seconds: started.elapsed().as_secs_f64(),
    })
}
