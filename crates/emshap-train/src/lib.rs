//! The training half of emshap-ci (DESIGN §4): both models in tch (libtorch), early
//! stopping on the validation loss, the best weights kept, the history written as JSON, the
//! export to DESIGN §5's ONNX contracts, and the proof that ONNX Runtime computes what
//! libtorch does. The only crate that depends on tch; `emshap-ci-train` (src/main.rs) runs
//! one job that `emshap-ci train` or `run` resolved and hands it back its report.

use std::collections::BTreeMap;

use emshap_ci::error::{Error, Result};
use emshap_ci::progress::Progress;
pub use emshap_ci::train::*;

mod emshap;
mod fit;
pub mod power;
mod tensors;

/// Trains the power predictor and writes its checkpoint, history and ONNX file.
pub fn train_power(s: &PowerSettings, progress: &Progress) -> Result<TrainReport> {
    power::train(s, progress)
}

/// Trains EMSHAP and writes its checkpoint, history and ONNX file.
pub fn train_emshap(s: &EmshapSettings, progress: &Progress) -> Result<TrainReport> {
    emshap::train(s, progress)
}

/// libtorch's version and whether it sees CUDA: proves the library is linked and loads.
pub fn torch_info() -> (String, bool) {
    let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let sum = (&t * &t).sum(tch::Kind::Float).double_value(&[]);
    debug_assert_eq!(sum, 14.0);
    (
        format!("libtorch ok (1²+2²+3² = {sum})"),
        tch::Cuda::is_available(),
    )
}

/// A trained model, exported and proven, ready to be written.
struct Trained<'a> {
    model: &'static str,
    vs: &'a tch::nn::VarStore,
    device: tch::Device,
    common: &'a TrainSettings,
    settings: serde_json::Value,
    rows_train: usize,
    rows_val: usize,
    fitted: fit::Fitted,
    test: BTreeMap<String, f64>,
    proof: Proof,
    onnx: (&'static str, Vec<u8>),
    checkpoint: &'static str,
    history_file: &'static str,
    energy: Option<serde_json::Value>,
}

/// Writes a trained model's files together (ONNX, checkpoint, history, and the snapshot's
/// scaler.json beside them) and makes the report.
fn finish(t: Trained, snap: &data::Snapshot) -> Result<TrainReport> {
    let c = t.common;
    let history = History {
        format: "emshap-ci.history/1".into(),
        model: t.model.into(),
        device: tensors::device_name(t.device),
        seed: c.seed,
        threads: c.threads,
        batch_size: c.batch_size,
        rows_train: t.rows_train,
        rows_val: t.rows_val,
        snapshot_sha256: snap.dataset.snapshot_sha256.clone(),
        settings: t.settings,
        epochs: t.fitted.epochs,
        best_epoch: t.fitted.best_epoch,
        best_val_loss: t.fitted.best_val_loss,
        stopped_early: t.fitted.stopped_early,
        test: t.test,
        proof: t.proof,
        energy: t.energy,
    };
    let mut json = serde_json::to_vec_pretty(&history).map_err(|e| Error::Internal(e.into()))?;
    json.push(b'\n');
    let files: Vec<(&str, Vec<u8>)> = vec![
        t.onnx,
        (t.checkpoint, tensors::safetensors(t.vs)?),
        (t.history_file, json),
        (
            emshap_ci::pull::snapshot::SCALER_FILE,
            snap.scaler_bytes.clone(),
        ),
    ];
    let written = tensors::write_all(&c.out, &files)?;
    let rows = history.epochs.len() * history.rows_train;
    Ok(TrainReport {
        model: history.model,
        device: history.device,
        out: c.out.clone(),
        files: written,
        epochs_run: history.epochs.len(),
        best_epoch: history.best_epoch,
        best_val_loss: history.best_val_loss,
        seconds: t.fitted.seconds,
        samples_per_s: rows as f64 / t.fitted.seconds.max(1e-9),
        test: history.test,
        proof: history.proof,
        energy: history.energy,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn libtorch_computes() {
        let (msg, _cuda) = super::torch_info();
        assert!(msg.contains("= 14"), "{msg}");
        let a = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let b = a.matmul(&a);
        assert_eq!(
            Vec::<f32>::try_from(b.flatten(0, -1)).unwrap(),
            vec![7.0, 10.0, 15.0, 22.0]
        );
    }
}
