//! The training loop both models share: Adam, one pass over the (shuffled) train rows per
//! epoch, the validation loss after each, the learning rate halved after a plateau, early
//! stopping after `patience` epochs without improvement, and the best weights restored at
//! the end (EMSHAP: the latest within the validation noise of the best). All randomness
//! outside libtorch's own generator comes from one seeded ChaCha8, so a CPU run is
//! reproducible bit for bit.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use tch::nn::{self, OptimizerConfig};
use tch::Tensor;

use super::{Checkpoint, EpochRecord, TrainSettings};
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
    /// The standard error of the last `validate`'s loss over the rows (or entries) it
    /// averages, when the model measures it: the part of a validation figure's noise that
    /// a smooth (weight-averaged) curve hides from the epoch-to-epoch estimate.
    fn val_loss_se(&self) -> Option<f64> {
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
    /// Which checkpoint is kept. None (the power model): the best. `Noise` (EMSHAP's
    /// default): the latest within the validation loss's own noise of the best (see
    /// `tolerance`), because its validation NLL is flat within noise for most of training
    /// while the conditionals still improve. `Last`: the last epoch trained, whatever its
    /// validation loss (BENCHMARKS.md, "Checkpoint selection judged by the validation NLL's
    /// standard error").
    fn checkpoint_rule(&self) -> Option<Checkpoint> {
        None
    }
    /// Puts the averaged weights in place (`true`) or the raw ones back (`false`), for a
    /// model that keeps a moving average of its weights: validation, checkpoints and the
    /// final weights are the average's, training continues on the raw weights.
    fn use_average(&mut self, _on: bool) {}
}

/// Epochs whose validation losses estimate the noise of one validation figure.
const NOISE_WINDOW: usize = 20;

/// Twice the epoch-to-epoch noise of one validation figure, estimated from the last
/// `NOISE_WINDOW` epochs: the standard deviation of successive differences over √2 (a slow
/// trend barely moves it). Zero until there are 5 epochs. `fit` takes the larger of it and
/// the figure's standard error over the validation rows (`Trainee::val_loss_se`).
fn noise_tolerance(val_losses: &[f64]) -> f64 {
    let tail = &val_losses[val_losses.len().saturating_sub(NOISE_WINDOW + 1)..];
    if tail.len() < 5 {
        return 0.0;
    }
    let diffs: Vec<f64> = tail.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    let var = diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (diffs.len() - 1) as f64;
    2.0 * (var / 2.0).sqrt()
}

/// How far above the best a validation loss may be and still count as the same: the larger
/// of twice its epoch-to-epoch noise and its standard error over the validation rows.
fn tolerance(val_losses: &[f64], se: Option<f64>) -> f64 {
    noise_tolerance(val_losses).max(se.unwrap_or(0.0))
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
    // The latest epoch after the best within the noise of it (when the model selects so).
    let mut latest: Option<(f64, usize, HashMap<String, Tensor>)> = None;
    let mut val_losses = Vec::new();
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
        model.use_average(true);
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
            val_loss_se: model.val_loss_se(),
            mask_rate: model.mask_rate(epoch),
            lr,
            seconds,
            samples_per_s: model.epoch_rows(epoch) as f64 / seconds.max(1e-9),
            phases: model.phases(),
        });
        val_losses.push(val_loss);
        let improved = val_loss < best.0;
        // "Last" needs no snapshot: the final weights are the ones it keeps.
        let rule = model.checkpoint_rule();
        if improved {
            (best.0, best.1) = (val_loss, epoch + 1);
            if rule != Some(Checkpoint::Last) {
                best.2 = snapshot(vs);
            }
        } else if rule == Some(Checkpoint::Noise)
            && val_loss <= best.0 + tolerance(&val_losses, model.val_loss_se())
        {
            latest = Some((val_loss, epoch + 1, snapshot(vs)));
        }
        model.use_average(false);
        if improved {
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
    if model.checkpoint_rule() == Some(Checkpoint::Last) {
        // The weights the last validation judged: the average's, when the model keeps one.
        model.use_average(true);
        let (epoch, val_loss) = (val_losses.len(), val_losses.last().copied());
        let val_loss = val_loss.unwrap_or(f64::INFINITY);
        tracing::info!(
            epoch,
            val_loss,
            best_val_loss = best.0,
            "kept the last checkpoint"
        );
        return Ok(Fitted {
            epochs,
            best_epoch: epoch,
            best_val_loss: val_loss,
            stopped_early,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let tolerance = tolerance(&val_losses, model.val_loss_se());
    let chosen = match latest {
        Some(l) if l.1 > best.1 && l.0 <= best.0 + tolerance => {
            tracing::info!(
                epoch = l.1,
                val_loss = l.0,
                best_epoch = best.1,
                best_val_loss = best.0,
                tolerance,
                "kept the latest checkpoint within the validation noise of the best"
            );
            l
        }
        _ => best,
    };
    restore(vs, &chosen.2);
    Ok(Fitted {
        epochs,
        best_epoch: chosen.1,
        best_val_loss: chosen.0,
        stopped_early,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_noise_tolerance_is_twice_one_figures_noise() {
        assert_eq!(noise_tolerance(&[1.0, 0.9, 0.8, 0.7]), 0.0);
        assert!(noise_tolerance(&[0.5; 12]).abs() < 1e-12);
        // A straight descent has no noise at all.
        let line: Vec<f64> = (0..12).map(|i| 1.0 - 0.01 * i as f64).collect();
        assert!(noise_tolerance(&line) < 1e-9);
        // ±a around a level: successive differences ±2a (sd 2a·√(20/19) over 20 of them),
        // read as white noise of sd 2a/√2, so the tolerance is 2·√2·a·√(20/19).
        let a = 0.001;
        let zigzag: Vec<f64> = (0..21)
            .map(|i| 1.0 + if i % 2 == 0 { a } else { -a })
            .collect();
        let t = noise_tolerance(&zigzag);
        let want = 2.0 * 2f64.sqrt() * a * (20.0f64 / 19.0).sqrt();
        assert!((t - want).abs() < 1e-12, "{t} {want}");
    }

    /// One weight, set to the epoch's number by training; scripted validation losses.
    struct Scripted {
        w: Tensor,
        losses: Vec<f64>,
        rule: Option<Checkpoint>,
        se: Option<f64>,
    }

    impl Trainee for Scripted {
        fn rows(&self) -> usize {
            1
        }
        fn train_epoch(
            &mut self,
            epoch: usize,
            _opt: &mut nn::Optimizer,
            _rng: &mut ChaCha8Rng,
            _progress: &Progress,
        ) -> Result<f64> {
            tch::no_grad(|| {
                let _ = self.w.fill_(epoch as f64 + 1.0);
            });
            Ok(1.0)
        }
        fn validate(&self, epoch: usize) -> Result<(f64, Option<f64>)> {
            Ok((self.losses[epoch], None))
        }
        fn checkpoint_rule(&self) -> Option<Checkpoint> {
            self.rule
        }
        fn val_loss_se(&self) -> Option<f64> {
            self.se
        }
    }

    /// The epoch kept and the weight restored, selecting by `rule`: best, noise or last.
    fn kept(losses: &[f64], rule: &str) -> (usize, f64) {
        kept_with_se(losses, rule, None)
    }

    fn kept_with_se(losses: &[f64], rule: &str, se: Option<f64>) -> (usize, f64) {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let w = vs.root().zeros("w", &[1]);
        let mut m = Scripted {
            w: w.shallow_clone(),
            losses: losses.to_vec(),
            rule: match rule {
                "noise" => Some(Checkpoint::Noise),
                "last" => Some(Checkpoint::Last),
                _ => None,
            },
            se,
        };
        let s = TrainSettings {
            data: "d".into(),
            out: "o".into(),
            epochs: losses.len(),
            patience: 1000,
            seed: 1,
            device: emshap_ci::train::DeviceChoice::Cpu,
            batch_size: 1,
            lr: 1e-3,
            threads: 1,
            max_rows: None,
            sha: String::new(),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let f = fit(&vs, &mut m, &s, &mut rng, &Progress::new("t", true)).unwrap();
        (f.best_epoch, w.double_value(&[0]))
    }

    #[test]
    fn emshap_keeps_the_latest_checkpoint_within_the_noise_and_power_the_best() {
        // A drop to a plateau that wobbles by ±0.001, its lowest point early (epoch 12).
        let mut losses: Vec<f64> = (0..10).map(|i| 1.5 - 0.05 * i as f64).collect();
        losses.extend((0..30).map(|i| 1.0 + if i % 2 == 0 { 0.001 } else { -0.001 }));
        losses[11] = 0.998;
        let (epoch, w) = kept(&losses, "best");
        assert_eq!((epoch, w), (12, 12.0));
        let (epoch, w) = kept(&losses, "noise");
        assert_eq!(
            (epoch, w),
            (40, 40.0),
            "the last epoch is within the noise of the best"
        );
        // A real rise at the end is not within the noise: the best stays.
        let mut rising = losses.clone();
        rising.extend((1..=5).map(|i| 1.0 + 0.02 * i as f64));
        let (epoch, w) = kept(&rising, "noise");
        assert!(epoch < 41 && w == epoch as f64, "{epoch} {w}");
    }

    #[test]
    fn the_last_rule_keeps_the_last_epoch_even_after_a_rise() {
        let mut losses: Vec<f64> = (0..10).map(|i| 1.5 - 0.05 * i as f64).collect();
        losses.extend((1..=5).map(|i| 1.05 + 0.02 * i as f64));
        assert_eq!(kept(&losses, "best"), (10, 10.0));
        assert!(kept(&losses, "noise").0 < 15, "a real rise");
        assert_eq!(kept(&losses, "last"), (15, 15.0));
    }

    #[test]
    fn a_smooth_curve_is_judged_by_its_standard_error_over_the_rows() {
        // A smooth (weight-averaged) curve: a slow descent to its lowest point at epoch 20,
        // then a slow rise of 0.0002 an epoch, with no epoch-to-epoch noise to speak of.
        let mut losses: Vec<f64> = (0..20).map(|i| 1.2 - 0.0001 * i as f64).collect();
        losses.extend((1..=20).map(|i| 1.1981 + 0.0002 * i as f64));
        let (alone, _) = kept(&losses, "noise");
        assert!(
            (20..25).contains(&alone),
            "no SE: near the minimum ({alone})"
        );
        // An SE of 0.01 over the rows: the whole rise (0.004) is within it.
        assert_eq!(kept_with_se(&losses, "noise", Some(0.01)), (40, 40.0));
        // An SE of 0.0011: only the epochs up to 0.0011 above the best.
        assert_eq!(kept_with_se(&losses, "noise", Some(0.0011)), (25, 25.0));
        // The power model's rule (the best) ignores it.
        assert_eq!(kept_with_se(&losses, "best", Some(0.01)).0, 20);
    }
}
