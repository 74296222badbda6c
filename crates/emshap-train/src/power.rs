//! The power predictor (DESIGN §4): an MLP d→128→64→1 with ReLU (optional batch norm,
//! dropout and a linear skip from the input to the second hidden layer), trained on the
//! standardised target with MSE; exported with the scaler in front and the target's
//! de-standardisation behind, so the graph maps raw metrics to watts.

use prost::Message;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::nn::{self, Module, ModuleT};
use tch::{Device, Kind, Tensor};

use super::data::{self, Snapshot, Split};
use super::fit::{self, Trainee};
use super::tensors::{self, Comparison};
use super::{PowerSettings, TrainReport, POWER_CHECKPOINT, POWER_HISTORY, POWER_ONNX};
use emshap_ci::error::{Error, Result};
use emshap_ci::graphs::{self, Dense, Matrix, PowerWeights, Stamp};
use emshap_ci::kpi::power_kpis;
use emshap_ci::onnx;
use emshap_ci::progress::Progress;

const BN_EPS: f64 = 1e-5;

struct Net {
    l1: nn::Linear,
    bn1: Option<nn::BatchNorm>,
    l2: nn::Linear,
    bn2: Option<nn::BatchNorm>,
    skip: Option<nn::Linear>,
    l3: nn::Linear,
    dropout: f64,
}

impl Net {
    fn new(p: &nn::Path, d: i64, s: &PowerSettings) -> Self {
        let [h1, h2] = s.hidden;
        let bn = |name: &str, n: i64| {
            s.batch_norm.then(|| {
                nn::batch_norm1d(
                    p / name,
                    n,
                    nn::BatchNormConfig {
                        eps: BN_EPS,
                        ..Default::default()
                    },
                )
            })
        };
        Net {
            l1: nn::linear(p / "l1", d, h1, Default::default()),
            bn1: bn("bn1", h1),
            l2: nn::linear(p / "l2", h1, h2, Default::default()),
            bn2: bn("bn2", h2),
            skip: s.residual.then(|| {
                nn::linear(
                    p / "skip",
                    d,
                    h2,
                    nn::LinearConfig {
                        bias: false,
                        ..Default::default()
                    },
                )
            }),
            l3: nn::linear(p / "l3", h2, 1, Default::default()),
            dropout: s.dropout,
        }
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = self.l1.forward(x);
        if let Some(bn) = &self.bn1 {
            h = bn.forward_t(&h, train);
        }
        let h = h.relu().dropout(self.dropout, train);
        let mut h = self.l2.forward(&h);
        if let Some(bn) = &self.bn2 {
            h = bn.forward_t(&h, train);
        }
        if let Some(skip) = &self.skip {
            h += skip.forward(x);
        }
        let h = h.relu().dropout(self.dropout, train);
        self.l3.forward(&h)
    }
}

struct Power<'a> {
    net: &'a Net,
    x: Tensor,
    y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    batch_size: usize,
    batch_norm: bool,
    device: Device,
}

impl Trainee for Power<'_> {
    fn rows(&self) -> usize {
        self.x.size()[0] as usize
    }

    fn train_epoch(
        &mut self,
        _epoch: usize,
        opt: &mut nn::Optimizer,
        rng: &mut ChaCha8Rng,
        progress: &Progress,
    ) -> Result<f64> {
        let n = self.rows();
        let mut order: Vec<i64> = (0..n as i64).collect();
        order.shuffle(rng);
        let order = Tensor::from_slice(&order).to_device(self.device);
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        for start in (0..n).step_by(self.batch_size) {
            let len = self.batch_size.min(n - start);
            // Batch norm cannot normalise a batch of one row.
            if self.batch_norm && len < 2 {
                continue;
            }
            let idx = order.narrow(0, start as i64, len as i64);
            let xb = self.x.index_select(0, &idx);
            let yb = self.y.index_select(0, &idx);
            let loss = self
                .net
                .forward_t(&xb, true)
                .mse_loss(&yb, tch::Reduction::Mean);
            opt.backward_step(&loss);
            total += loss.detach() * len as f64;
            progress.inc(len as u64);
        }
        Ok(total.double_value(&[]) / n as f64)
    }

    fn validate(&self, _epoch: usize) -> Result<(f64, Option<f64>)> {
        let loss = tch::no_grad(|| {
            self.net
                .forward_t(&self.val_x, false)
                .mse_loss(&self.val_y, tch::Reduction::Mean)
        });
        Ok((loss.double_value(&[]), None))
    }
}

/// Mean and standard deviation of the train target (f64), for its standardisation.
fn target_scale(y: &[f32]) -> (f64, f64) {
    let n = y.len() as f64;
    let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = y
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0).max(1.0);
    (mean, var.sqrt().max(1e-6))
}

fn standardised_target(split: &Split, (mean, sd): (f64, f64), device: Device) -> Tensor {
    let y: Vec<f32> = split
        .y
        .iter()
        .map(|&v| ((f64::from(v) - mean) / sd) as f32)
        .collect();
    tensors::matrix(&y, split.n, 1, device)
}

/// (weight [out, in], bias [out]) of a linear layer with a batch norm folded in (eval mode).
fn folded(l: &nn::Linear, bn: Option<&nn::BatchNorm>) -> (Tensor, Tensor) {
    let w = l.ws.detach().to_device(Device::Cpu);
    let b = match &l.bs {
        Some(b) => b.detach().to_device(Device::Cpu),
        None => Tensor::zeros([w.size()[0]], (Kind::Float, Device::Cpu)),
    };
    match bn {
        None => (w, b),
        Some(bn) => {
            let scale = bn
                .running_var
                .detach()
                .to_device(Device::Cpu)
                .f_add_scalar(BN_EPS)
                .expect("add")
                .rsqrt()
                * bn.ws
                    .as_ref()
                    .expect("affine")
                    .detach()
                    .to_device(Device::Cpu);
            let shift = bn
                .bs
                .as_ref()
                .expect("affine")
                .detach()
                .to_device(Device::Cpu)
                - bn.running_mean.detach().to_device(Device::Cpu) * &scale;
            (&w * scale.unsqueeze(1), b * &scale + shift)
        }
    }
}

/// DESIGN §5's `power_predictor.onnx`, built by the core from the net's weights (batch
/// norm folded in).
fn export(net: &Net, snap: &Snapshot, y_scale: (f64, f64), sha: &str) -> Vec<u8> {
    let dense = |(w, b): (Tensor, Tensor)| {
        let size = w.size();
        Dense {
            w: Matrix::new(size[0] as usize, size[1] as usize, tensors::to_vec(&w)),
            b: tensors::to_vec(&b),
        }
    };
    let weights = PowerWeights {
        l1: dense(folded(&net.l1, net.bn1.as_ref())),
        l2: dense(folded(&net.l2, net.bn2.as_ref())),
        skip: net.skip.as_ref().map(|skip| {
            let w = skip.ws.detach().to_device(Device::Cpu);
            let size = w.size();
            Matrix::new(size[0] as usize, size[1] as usize, tensors::to_vec(&w))
        }),
        l3: dense(folded(&net.l3, None)),
        target_mean: y_scale.0,
        target_std: y_scale.1,
        base_value: base_value(net, snap, y_scale),
        base_value_rows: snap.train.n,
    };
    graphs::power_graph(&weights, &Stamp::of(snap, sha))
}

/// v(∅) = E[f(X)] of DESIGN §6: the model's mean prediction over the whole train split
/// (raw units), stored in the graph's metadata so explain's Σφ = f(x) − v(∅) carries no
/// Monte Carlo noise in v(∅).
fn base_value(net: &Net, snap: &Snapshot, y_scale: (f64, f64)) -> f64 {
    let t = &snap.train;
    let mut sum = 0.0;
    tch::no_grad(|| {
        for start in (0..t.n).step_by(8192) {
            let len = 8192.min(t.n - start);
            let x = tensors::matrix(
                &t.x[start * t.d..(start + len) * t.d],
                len,
                t.d,
                Device::Cpu,
            )
            .to_device(net.l1.ws.device());
            let y = net.forward_t(&x, false).to_device(Device::Cpu);
            sum += y.sum(tch::Kind::Double).double_value(&[]);
        }
    });
    (sum / t.n.max(1) as f64) * y_scale.1 + y_scale.0
}

/// A model folder's power predictor rebuilt in libtorch (CPU) from its history's settings,
/// its safetensors checkpoint and its ONNX file's target scale: the reference the
/// evaluation benchmark compares ONNX Runtime with.
pub struct Loaded {
    _vs: nn::VarStore,
    net: Net,
    y_scale: (f64, f64),
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Loaded {
    pub fn load(dir: &std::path::Path) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| Error::read(&path, e))
        };
        let bad = |what: String| Error::usage("--models", format!("{}: {what}", dir.display()));
        let history: super::History = serde_json::from_slice(&read(POWER_HISTORY)?)
            .map_err(|e| bad(format!("{POWER_HISTORY}: {e}")))?;
        let s: PowerSettings = serde_json::from_value(history.settings)
            .map_err(|e| bad(format!("{POWER_HISTORY} settings: {e}")))?;
        let scaler: emshap_ci::pull::snapshot::Scaler =
            serde_json::from_slice(&read(emshap_ci::pull::snapshot::SCALER_FILE)?)
                .map_err(|e| bad(format!("scaler.json: {e}")))?;
        let model = emshap_ci::proto::onnx::ModelProto::decode(read(POWER_ONNX)?.as_slice())
            .map_err(|e| bad(format!("{POWER_ONNX}: {e}")))?;
        let meta = |key: &str| -> Result<f64> {
            model
                .metadata_props
                .iter()
                .find(|p| p.key == key)
                .and_then(|p| p.value.parse().ok())
                .ok_or_else(|| bad(format!("{POWER_ONNX} has no metadata {key}")))
        };
        let y_scale = (meta("target_mean")?, meta("target_std")?);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root(), scaler.features.len() as i64, &s);
        vs.load(dir.join(POWER_CHECKPOINT))
            .map_err(|e| bad(format!("{POWER_CHECKPOINT}: {e}")))?;
        Ok(Self {
            _vs: vs,
            net,
            y_scale,
            mean: scaler.mean.iter().map(|&v| v as f32).collect(),
            std: scaler.std.iter().map(|&v| v as f32).collect(),
        })
    }

    /// Watts for raw rows [n, d], standardised in f32 as the graph does.
    pub fn predict(&self, raw: &[f32], n: usize) -> Vec<f32> {
        let d = self.mean.len();
        let xs: Vec<f32> = raw
            .iter()
            .enumerate()
            .map(|(i, &v)| (v - self.mean[i % d]) / self.std[i % d])
            .collect();
        let x = tensors::matrix(&xs, n, d, Device::Cpu);
        let y = tch::no_grad(|| self.net.forward_t(&x, false)) * self.y_scale.1 + self.y_scale.0;
        tensors::to_vec(&y)
    }
}

/// Rows the proof runs on: the first `PROOF_ROWS_MAX` of the test split, topped up from
/// validation and train to reach `PROOF_ROWS` when the test split is small.
pub fn proof_rows(snap: &Snapshot) -> Split {
    let take = snap.test.n.min(super::PROOF_ROWS_MAX);
    let mut x = snap.test.x[..take * snap.test.d].to_vec();
    let mut y = snap.test.y[..take].to_vec();
    for s in [&snap.val, &snap.train] {
        let need = super::PROOF_ROWS.saturating_sub(y.len()).min(s.n);
        x.extend_from_slice(&s.x[..need * s.d]);
        y.extend_from_slice(&s.y[..need]);
    }
    let n = y.len();
    Split {
        x,
        y,
        n,
        d: snap.test.d,
    }
}

fn prove(
    model: &[u8],
    net: &Net,
    snap: &Snapshot,
    y_scale: (f64, f64),
    threads: usize,
    device: Device,
) -> Result<super::Proof> {
    let rows = proof_rows(snap);
    let raw = data::raw_features(&rows.x, &snap.scaler);
    let out = onnx::run(
        model,
        vec![(
            "features",
            onnx::Tensor {
                shape: vec![rows.n, rows.d],
                data: raw.clone(),
            },
        )],
        threads,
    )?;
    let xs = tensors::matrix(
        &data::standardise_like_graph(&raw, &snap.scaler.mean, &snap.scaler.std),
        rows.n,
        rows.d,
        device,
    );
    let want = tch::no_grad(|| net.forward_t(&xs, false)) * y_scale.1 + y_scale.0;
    let mut cmp = Comparison::default();
    cmp.add(
        POWER_ONNX,
        "power_watts",
        &out[0].1.data,
        &tensors::to_vec(&want),
    )?;
    Ok(cmp.finish(rows.n))
}

pub fn sample_rows(split: &Split, max_rows: usize, seed: u64) -> Split {
    if max_rows == 0 || max_rows >= split.n {
        return split.clone();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5a4d_504c_4500);
    let mut idx = rand::seq::index::sample(&mut rng, split.n, max_rows).into_vec();
    idx.sort_unstable();
    split.rows(&idx)
}

pub fn train(s: &PowerSettings, progress: &Progress) -> Result<TrainReport> {
    let c = &s.common;
    let device = tensors::device(c.device)?;
    emshap_ci::native::keep_freed_memory();
    let snap = data::load(&c.data)?;
    tch::set_num_threads(c.threads as i32);
    tch::manual_seed(c.seed as i64);
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    let train_split = sample_rows(&snap.train, c.max_rows.unwrap_or(0), c.seed);
    let d = train_split.d as i64;
    let y_scale = target_scale(&train_split.y);
    let vs = nn::VarStore::new(device);
    let net = Net::new(&vs.root(), d, s);
    let mut trainee = Power {
        net: &net,
        x: tensors::matrix(&train_split.x, train_split.n, train_split.d, device),
        y: standardised_target(&train_split, y_scale, device),
        val_x: tensors::matrix(&snap.val.x, snap.val.n, snap.val.d, device),
        val_y: standardised_target(&snap.val, y_scale, device),
        batch_size: c.batch_size,
        batch_norm: s.batch_norm,
        device,
    };
    let fitted = fit::fit(&vs, &mut trainee, c, &mut rng, progress)?;
    progress.finish();

    let test_x = tensors::matrix(&snap.test.x, snap.test.n, snap.test.d, device);
    let pred = tch::no_grad(|| net.forward_t(&test_x, false)) * y_scale.1 + y_scale.0;
    let test = power_kpis(&tensors::to_vec(&pred), &snap.test.y);

    let model = export(&net, &snap, y_scale, &c.sha);
    // The proof's libtorch side runs on the CPU, like ONNX Runtime here: it checks the
    // export, not how a GPU rounds.
    let (_cpu_vs, cpu_net) = tensors::on_cpu(&vs, |p| Net::new(p, d, s))?;
    let proof = prove(&model, &cpu_net, &snap, y_scale, c.threads, Device::Cpu)?;
    super::finish(
        super::Trained {
            model: "power",
            vs: &vs,
            device,
            common: c,
            settings: serde_json::to_value(s).map_err(|e| Error::Internal(e.into()))?,
            rows_train: train_split.n,
            rows_val: snap.val.n,
            fitted,
            test,
            proof,
            onnx: (POWER_ONNX, model),
            checkpoint: POWER_CHECKPOINT,
            history_file: POWER_HISTORY,
            energy: None,
        },
        &snap,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use emshap_ci::settings::{resolve_train_power, ConfigFile};

    #[test]
    fn the_proof_catches_a_graph_that_differs_from_libtorch() {
        let dir = tempfile::tempdir().unwrap();
        let snap = data::embedded_snapshot(dir.path());
        let s = resolve_train_power(&Default::default(), &ConfigFile::default()).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root(), snap.train.d as i64, &s);
        let y = (150.0, 40.0);
        let model = export(&net, &snap, y, "test");
        let proof = prove(&model, &net, &snap, y, 1, Device::Cpu).unwrap();
        assert!(proof.rows >= emshap_ci::train::PROOF_ROWS);
        // libtorch's model moves away from the exported file by 0.4 W.
        let mut bias = net.l3.bs.as_ref().unwrap().shallow_clone();
        tch::no_grad(|| {
            let _ = bias.f_add_scalar_(0.01).unwrap();
        });
        let e = prove(&model, &net, &snap, y, 1, Device::Cpu).unwrap_err();
        assert!(
            e.to_string()
                .contains("export proof of power_predictor.onnx failed"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 70);
    }
}
