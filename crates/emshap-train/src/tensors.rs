//! Small bridges between libtorch, plain vectors and the model folder: the device choice,
//! tensors to and from `Vec<f32>`, the export proof's comparison, and writing a model's
//! files all at once (each to a temporary name first, then renamed), so a failure never
//! leaves a half-written set beside a good one.

use std::collections::BTreeMap;
use std::fs;

use tch::{Device, Kind, Tensor};

use super::{DeviceChoice, Proof, PROOF_TOLERANCE};
use emshap_ci::error::{Error, Result};

pub fn device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(Error::usage(
            "--device",
            "cuda was asked for but libtorch sees no GPU (check the driver and that this binary was built against CUDA libtorch; or use --device auto)",
        )),
    }
}

pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// A row-major [n, d] f32 matrix on `device`.
pub fn matrix(data: &[f32], n: usize, d: usize, device: Device) -> Tensor {
    Tensor::from_slice(data)
        .view([n as i64, d as i64])
        .to_device(device)
}

/// Every element of `t`, row-major, on the CPU.
pub fn to_vec(t: &Tensor) -> Vec<f32> {
    let flat = t
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1]);
    Vec::<f32>::try_from(&flat).expect("a float tensor converts to Vec<f32>")
}

/// Collects the largest |ort − tch| / max(scale, |tch|) of each output, and fails on the
/// first output over the tolerance with a message naming it and where. `scale` is the
/// quantity's natural size: 1 for unitless outputs, the feature's (or the target's)
/// standard deviation for outputs in raw units, where a value near zero says nothing about
/// the precision of the computation.
#[derive(Debug, Default)]
pub struct Comparison {
    max: BTreeMap<String, f64>,
}

impl Comparison {
    pub fn add(&mut self, model: &str, output: &str, ort: &[f32], tch: &[f32]) -> Result<()> {
        self.add_scaled(model, output, ort, tch, |_| 1.0)
    }

    pub fn add_scaled(
        &mut self,
        model: &str,
        output: &str,
        ort: &[f32],
        tch: &[f32],
        scale: impl Fn(usize) -> f64,
    ) -> Result<()> {
        if ort.len() != tch.len() {
            return Err(Error::Internal(anyhow::anyhow!(
                "export proof of {model}: output {output} has {} values in ONNX Runtime and {} in libtorch",
                ort.len(),
                tch.len()
            )));
        }
        let entry = self.max.entry(output.to_string()).or_insert(0.0);
        for (i, (&a, &b)) in ort.iter().zip(tch).enumerate() {
            let rel = f64::from((a - b).abs()) / f64::from(b.abs()).max(scale(i));
            if !rel.is_finite() || rel > PROOF_TOLERANCE {
                return Err(Error::Internal(anyhow::anyhow!(
                    "export proof of {model} failed: output {output}[{i}] is {a} in ONNX Runtime and {b} in libtorch (relative difference {rel:.3e} > {PROOF_TOLERANCE:e}); nothing was written"
                )));
            }
            *entry = entry.max(rel);
        }
        Ok(())
    }

    pub fn finish(self, rows: usize) -> Proof {
        Proof {
            rows,
            tolerance: PROOF_TOLERANCE,
            max_rel_diff: self.max,
        }
    }
}

pub use emshap_ci::fsutil::write_all;

/// The variables of a var store as safetensors bytes (names sorted: same weights, same bytes).
pub fn safetensors(vs: &tch::nn::VarStore) -> Result<Vec<u8>> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    // $TMPDIR read-only or full is the machine's state, not a bug: exit 3, saying which.
    let dir = tempfile::tempdir().map_err(|e| Error::write(&std::env::temp_dir(), e))?;
    let path = dir.path().join("weights.safetensors");
    Tensor::write_safetensors(&named, &path)
        .map_err(|e| Error::Internal(anyhow::anyhow!("writing the checkpoint: {e}")))?;
    fs::read(&path).map_err(|e| Error::read(&path, e))
}

/// A copy of a model on the CPU: `build` makes its variables in a fresh CPU var store, and
/// the trained values are copied in by name (the export proof's libtorch reference).
pub fn on_cpu<N>(
    vs: &tch::nn::VarStore,
    build: impl FnOnce(&tch::nn::Path) -> N,
) -> Result<(tch::nn::VarStore, N)> {
    let mut cpu = tch::nn::VarStore::new(Device::Cpu);
    let net = build(&cpu.root());
    cpu.copy(vs)
        .map_err(|e| Error::Internal(anyhow::anyhow!("copying the weights to the CPU: {e}")))?;
    Ok((cpu, net))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_all_replaces_together_and_removes_what_killed_runs_left() {
        let dir = tempfile::tempdir().unwrap();
        // A leftover of a process that no longer exists (pid numbers stop well below this).
        let stale = dir.path().join(".a.onnx.tmp-4294967295");
        std::fs::write(&stale, b"half").unwrap();
        std::fs::write(dir.path().join("a.onnx"), b"old").unwrap();
        let names = write_all(
            dir.path(),
            &[("a.onnx", b"new".to_vec()), ("b.json", b"{}".to_vec())],
        )
        .unwrap();
        assert_eq!(names, ["a.onnx", "b.json"]);
        assert_eq!(std::fs::read(dir.path().join("a.onnx")).unwrap(), b"new");
        assert!(!stale.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
