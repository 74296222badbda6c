//! `emshap-ci-fake-train`: a stand-in for `emshap-ci-train` in the tests of evaluate, store,
//! report, run and the action, so they do not train real models. It speaks the trainer's
//! protocol exactly (the same `--version` line, job and result files, exit codes), links no
//! libtorch, and in well under a second writes small valid graphs through the core's graph
//! builders (`graphs`), proven against ONNX Runtime like the real ones:
//!
//! - power: a linear least-squares fit of the standardised target on the standardised
//!   features, inside the MLP's shape (the fit goes through the skip path as +f, −f and
//!   comes back as relu(f) − relu(−f)), scaled by min(1, epochs/3): it "converges" in 3
//!   epochs, and with fewer its predictions are shrunk towards the mean, so an undertrained
//!   candidate (`--epochs 1` or `2`) is worse than a trained one, as with real training (at
//!   2 epochs r² ≤ 8/9 of the fit's, below the default gate's 0.9);
//! - EMSHAP: the proposal alone (energy off): one Gaussian per feature whose mean is a
//!   least-squares fit of that feature on [x_S, mask] over seeded random masks (the GRU
//!   step kept nearly linear: tanh(εt)/ε), with the residual sd as its scale.
//!
//! Built only with the `fake-trainer` feature (never shipped). Tests point
//! `EMSHAP_CI_TRAIN_BIN` at it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use emshap_ci::error::{exit, Error, Result};
use emshap_ci::graphs::{
    self, reference, Dense, EmshapWeights, Matrix, PowerWeights, Stamp, SCALE_FLOOR,
};
use emshap_ci::kpi::{column_sd, emshap_kpis, fixed_draws, masks, power_kpis};
use emshap_ci::onnx::{self, Tensor};
use emshap_ci::pull::snapshot::SCALER_FILE;
use emshap_ci::train::data::{self, Snapshot, Split};
use emshap_ci::train::{
    EmshapSettings, EpochRecord, History, PowerSettings, Proof, TrainReport, EMSHAP_HISTORY,
    EMSHAP_ONNX, POWER_HISTORY, POWER_ONNX, PROOF_TOLERANCE,
};
use emshap_ci::trainer::{read_job, version_line, write_result, Job};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Solves (A + λI)·x = b for a symmetric positive semi-definite `a` (n×n, row-major) by
/// Gaussian elimination with partial pivoting, in f64.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize, ridge: f64) -> Vec<f64> {
    for i in 0..n {
        a[i * n + i] += ridge;
    }
    for col in 0..n {
        let p = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .unwrap_or(col);
        if p != col {
            for k in 0..n {
                a.swap(col * n + k, p * n + k);
            }
            b.swap(col, p);
        }
        let piv = a[col * n + col];
        if piv.abs() < 1e-300 {
            continue;
        }
        for r in col + 1..n {
            let f = a[r * n + col] / piv;
            if f != 0.0 {
                for k in col..n {
                    a[r * n + k] -= f * a[col * n + k];
                }
                b[r] -= f * b[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r * n + k] * x[k]).sum();
        let piv = a[r * n + r];
        x[r] = if piv.abs() < 1e-300 {
            0.0
        } else {
            (b[r] - s) / piv
        };
    }
    x
}

/// Least squares of `y` on [features, 1]: (coefficients, intercept).
fn least_squares(rows: &[Vec<f64>], y: &[f64]) -> (Vec<f64>, f64) {
    let p = rows.first().map_or(0, Vec::len) + 1;
    let (mut a, mut b) = (vec![0.0; p * p], vec![0.0; p]);
    for (row, &t) in rows.iter().zip(y) {
        let full: Vec<f64> = row.iter().copied().chain([1.0]).collect();
        for i in 0..p {
            b[i] += full[i] * t;
            for j in 0..p {
                a[i * p + j] += full[i] * full[j];
            }
        }
    }
    let x = solve(a, b, p, 1e-6 * rows.len() as f64);
    (x[..p - 1].to_vec(), x[p - 1])
}

fn raw(split: &Split, snap: &Snapshot) -> Vec<f32> {
    data::raw_features(&split.x, &snap.scaler)
}

fn mean_sd(y: &[f32]) -> (f64, f64) {
    let n = y.len().max(1) as f64;
    let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = y
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt().max(1e-6))
}

fn proof_rows(snap: &Snapshot) -> Split {
    let n = snap.test.n.min(1024);
    snap.test.rows(&(0..n).collect::<Vec<_>>())
}

fn ort(model: &[u8], inputs: Vec<(&str, Tensor)>, threads: usize) -> Result<Vec<(String, Tensor)>> {
    onnx::run(model, inputs, threads)
}

/// |a − b| / max(scale, |b|), the largest.
fn max_rel(a: &[f32], b: &[f32], scale: f64) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs() / f64::from(y.abs()).max(scale))
        .fold(0.0, f64::max)
}

fn check_proof(model: &str, proof: &Proof) -> Result<()> {
    for (output, diff) in &proof.max_rel_diff {
        if diff.is_nan() || *diff > proof.tolerance {
            return Err(Error::Internal(anyhow::anyhow!(
                "fake trainer: {model}'s {output} differs from the reference by {diff:e}"
            )));
        }
    }
    Ok(())
}

fn record(epoch: usize, train_loss: f64, val_loss: f64, rows: usize, lr: f64) -> EpochRecord {
    EpochRecord {
        epoch,
        train_loss,
        val_loss,
        val_nll: None,
        val_proposal_nll: None,
        val_loss_se: None,
        mask_rate: None,
        lr,
        seconds: 0.0,
        samples_per_s: rows as f64 * 1e3,
        phases: None,
    }
}

struct Written {
    model: &'static str,
    history: History,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn finish(
    w: Written,
    out: &std::path::Path,
    snap: &Snapshot,
    started: Instant,
) -> Result<TrainReport> {
    let mut files = w.files;
    let mut json = serde_json::to_vec_pretty(&w.history).map_err(|e| Error::Internal(e.into()))?;
    json.push(b'\n');
    files.push((
        if w.model == "power" {
            POWER_HISTORY
        } else {
            EMSHAP_HISTORY
        },
        json,
    ));
    files.push((SCALER_FILE, snap.scaler_bytes.clone()));
    let written = emshap_ci::fsutil::write_all(out, &files)?;
    let seconds = started.elapsed().as_secs_f64();
    let h = w.history;
    Ok(TrainReport {
        model: w.model.into(),
        device: h.device,
        out: out.to_path_buf(),
        files: written,
        epochs_run: h.epochs.len(),
        best_epoch: h.best_epoch,
        best_val_loss: h.best_val_loss,
        seconds,
        samples_per_s: (h.epochs.len() * h.rows_train) as f64 / seconds.max(1e-9),
        test: h.test,
        proof: h.proof,
        energy: h.energy,
    })
}

#[allow(clippy::too_many_arguments)]
fn history(
    model: &str,
    s: &emshap_ci::train::TrainSettings,
    snap: &Snapshot,
    settings: serde_json::Value,
    epochs: Vec<EpochRecord>,
    test: BTreeMap<String, f64>,
    proof: Proof,
    energy: Option<serde_json::Value>,
) -> History {
    let (best_epoch, best_val_loss) = epochs
        .iter()
        .map(|e| (e.epoch, e.val_loss))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, f64::NAN));
    History {
        format: "emshap-ci.history/1".into(),
        model: model.into(),
        device: "cpu (fake trainer)".into(),
        seed: s.seed,
        threads: s.threads,
        batch_size: s.batch_size,
        rows_train: snap.train.n,
        rows_val: snap.val.n,
        snapshot_sha256: snap.dataset.snapshot_sha256.clone(),
        settings,
        epochs,
        best_epoch,
        best_val_loss,
        stopped_early: false,
        test,
        proof,
        energy,
    }
}

fn train_power(s: &PowerSettings) -> Result<TrainReport> {
    let started = Instant::now();
    let c = &s.common;
    let snap = data::load(&c.data)?;
    let d = snap.train.d;
    let (ym, ysd) = mean_sd(&snap.train.y);
    let rows: Vec<Vec<f64>> = snap
        .train
        .x
        .chunks(d)
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let y: Vec<f64> = snap
        .train
        .y
        .iter()
        .map(|&v| (f64::from(v) - ym) / ysd)
        .collect();
    let (coef, icpt) = least_squares(&rows, &y);
    let stamp = Stamp::of(&snap, &c.sha);
    let weights_at = |epochs: usize| {
        let q = (epochs.max(1) as f64 / 3.0).min(1.0);
        let a: Vec<f32> = coef.iter().map(|&v| (v * q) as f32).collect();
        let b = (icpt * q) as f32;
        let neg: Vec<f32> = a.iter().map(|v| -v).collect();
        PowerWeights {
            l1: Dense {
                w: Matrix::new(2, d, vec![0.0; 2 * d]),
                b: vec![0.0; 2],
            },
            l2: Dense {
                w: Matrix::new(2, 2, vec![0.0; 4]),
                b: vec![b, -b],
            },
            skip: Some(Matrix::new(2, d, [a, neg].concat())),
            l3: Dense {
                w: Matrix::new(1, 2, vec![1.0, -1.0]),
                b: vec![0.0],
            },
            target_mean: ym,
            target_std: ysd,
            base_value: 0.0,
            base_value_rows: snap.train.n,
        }
    };
    let mse = |w: &PowerWeights, split: &Split| {
        let pred = reference::power(w, &stamp, &raw(split, &snap));
        pred.iter()
            .zip(&split.y)
            .map(|(p, t)| ((f64::from(*p) - f64::from(*t)) / ysd).powi(2))
            .sum::<f64>()
            / split.n.max(1) as f64
    };
    let epochs: Vec<EpochRecord> = (1..=c.epochs.max(1))
        .map(|e| {
            let w = weights_at(e);
            record(
                e,
                mse(&w, &snap.train),
                mse(&w, &snap.val),
                snap.train.n,
                c.lr,
            )
        })
        .collect();
    let mut w = weights_at(c.epochs);
    let train_pred = reference::power(&w, &stamp, &raw(&snap.train, &snap));
    w.base_value =
        train_pred.iter().map(|&v| f64::from(v)).sum::<f64>() / train_pred.len().max(1) as f64;
    let model = graphs::power_graph(&w, &stamp);
    let test_raw = raw(&snap.test, &snap);
    let test = power_kpis(&reference::power(&w, &stamp, &test_raw), &snap.test.y);
    let p = proof_rows(&snap);
    let p_raw = raw(&p, &snap);
    let want = reference::power(&w, &stamp, &p_raw);
    let got = ort(
        &model,
        vec![(
            "features",
            Tensor {
                shape: vec![p.n, d],
                data: p_raw,
            },
        )],
        c.threads,
    )?;
    let proof = Proof {
        rows: p.n,
        tolerance: PROOF_TOLERANCE,
        max_rel_diff: BTreeMap::from([("power_watts".into(), max_rel(&got[0].1.data, &want, ysd))]),
    };
    check_proof("power", &proof)?;
    let settings = serde_json::to_value(s).map_err(|e| Error::Internal(e.into()))?;
    let h = history("power", c, &snap, settings, epochs, test, proof, None);
    finish(
        Written {
            model: "power",
            history: h,
            files: vec![(POWER_ONNX, model)],
        },
        &c.out,
        &snap,
        started,
    )
}

/// ε of the nearly linear GRU step: tanh(ε·t)/ε ≈ t for |t| of a few sds.
const EPS: f32 = 0.01;

fn train_emshap(s: &EmshapSettings) -> Result<TrainReport> {
    let started = Instant::now();
    let c = &s.common;
    let snap = data::load(&c.data)?;
    let d = snap.train.d;
    let m = s.mixtures.max(1);
    let cx = s.context.max(1);
    // Seeded masks over (at most) 4,000 train rows; each feature regressed on [x_S, mask]
    // over the rows where it is unobserved.
    let n = snap.train.n.min(4_000);
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    let obs = masks(&mut rng, n, d, 0.5);
    let mut fits = Vec::with_capacity(d);
    for j in 0..d {
        let (mut rows, mut y) = (Vec::new(), Vec::new());
        for r in 0..n {
            if obs[r * d + j] > 0.5 {
                continue;
            }
            let x = &snap.train.x[r * d..(r + 1) * d];
            let o = &obs[r * d..(r + 1) * d];
            let mut phi: Vec<f64> = (0..d)
                .map(|k| if o[k] > 0.5 { f64::from(x[k]) } else { 0.0 })
                .collect();
            phi.extend(o.iter().map(|&v| f64::from(v)));
            rows.push(phi);
            y.push(f64::from(x[j]));
        }
        let (coef, icpt) = least_squares(&rows, &y);
        let resid = rows
            .iter()
            .zip(&y)
            .map(|(p, t)| {
                let f: f64 = p.iter().zip(&coef).map(|(a, b)| a * b).sum::<f64>() + icpt;
                (t - f).powi(2)
            })
            .sum::<f64>()
            / rows.len().max(1) as f64;
        fits.push((coef, icpt, resid.sqrt().max(0.05)));
    }
    // GRU: z ≈ 0 (a large negative bias), r irrelevant (b_hn = 0), n = tanh(ε·t_j) and
    // tanh(−ε·t_j) per feature j: 2d hidden units.
    let h = 2 * d;
    let mut w_ih = vec![0.0f32; 3 * h * 2 * d];
    let mut b_ih = vec![0.0f32; 3 * h];
    for (j, (coef, _, _)) in fits.iter().enumerate() {
        for (sign, unit) in [(1.0f32, 2 * j), (-1.0f32, 2 * j + 1)] {
            b_ih[h + unit] = -30.0;
            for (k, &v) in coef.iter().enumerate() {
                w_ih[(2 * h + unit) * 2 * d + k] = sign * EPS * v as f32;
            }
        }
    }
    // head1: identity (the relu'd pairs pass through); head2: per feature, logits 0, every
    // component's mean = (relu(+) − relu(−))/ε + intercept, scale = the residual sd, the
    // context 0.
    let width = 3 * m + cx;
    let mut head1 = vec![0.0f32; h * h];
    for i in 0..h {
        head1[i * h + i] = 1.0;
    }
    let mut w2 = vec![0.0f32; d * width * h];
    let mut b2 = vec![0.0f32; d * width];
    for (j, (_, icpt, sd)) in fits.iter().enumerate() {
        let sraw = ((sd - SCALE_FLOOR).exp() - 1.0).ln() as f32;
        for comp in 0..m {
            let mean_row = j * width + m + comp;
            w2[mean_row * h + 2 * j] = 1.0 / EPS;
            w2[mean_row * h + 2 * j + 1] = -1.0 / EPS;
            b2[mean_row] = *icpt as f32;
            b2[j * width + 2 * m + comp] = sraw;
        }
    }
    let net = EmshapWeights {
        mixtures: m,
        context: cx,
        gru_w_ih: Matrix::new(3 * h, 2 * d, w_ih),
        gru_b_ih: b_ih,
        gru_b_hh: vec![0.0; 3 * h],
        head1: Dense {
            w: Matrix::new(h, h, head1),
            b: vec![0.0; h],
        },
        head2: Dense {
            w: Matrix::new(d * width, h, w2),
            b: b2,
        },
        skip: None,
        mask_linear: None,
        energy: None,
        proposals: s.proposals,
        energy_decision: "off: the fake trainer of the tests writes the proposal alone".into(),
    };
    let stamp = Stamp::of(&snap, &c.sha);
    let model = graphs::emshap_graph(&net, &stamp);

    // Test KPIs from the reference forward pass, as the real trainer reports them.
    let t = &snap.test;
    let nt = t.n.min(4096);
    let draws = fixed_draws(c.seed ^ 0x7e57, nt, 1, d, 0.5);
    let t_raw = raw(t, &snap);
    let out = reference::emshap(
        &net,
        &stamp,
        &t_raw[..nt * d],
        &draws.observed,
        &draws.z,
        &draws.u,
        1,
    );
    let imputed_std: Vec<f32> = out
        .imputed
        .iter()
        .enumerate()
        .map(|(i, &v)| ((f64::from(v) - snap.scaler.mean[i % d]) / snap.scaler.std[i % d]) as f32)
        .collect();
    let xs = &t.x[..nt * d];
    let sd = column_sd(&t.x, d);
    let mut test = emshap_kpis(xs, &draws.observed, &imputed_std, &out.log_density, &sd);
    let zeros = vec![0.0; nt * d];
    let baseline = emshap_kpis(xs, &draws.observed, &zeros, &out.log_density, &sd);
    test.insert("proposal_nll".into(), test["nll"]);
    test.insert("proposal_imputation_rmse".into(), test["imputation_rmse"]);
    test.insert("mean_imputation_rmse".into(), baseline["imputation_rmse"]);
    test.insert("rows".into(), nt as f64);
    test.insert("energy".into(), 0.0);

    // The proof: ONNX Runtime against the reference on the test rows, K = 4.
    let p = proof_rows(&snap);
    let k = 4;
    let pd = fixed_draws(c.seed ^ 0x9f00f, p.n, k, d, 0.5);
    let p_raw = raw(&p, &snap);
    let want = reference::emshap(&net, &stamp, &p_raw, &pd.observed, &pd.z, &pd.u, k);
    let tensor = |shape: Vec<usize>, data: &[f32]| Tensor {
        shape,
        data: data.to_vec(),
    };
    let got = ort(
        &model,
        vec![
            ("features", tensor(vec![p.n, d], &p_raw)),
            ("observed", tensor(vec![p.n, d], &pd.observed)),
            ("noise", tensor(vec![p.n, k, d], &pd.z)),
            ("component_u", tensor(vec![p.n, k, d], &pd.u)),
        ],
        c.threads,
    )?;
    let get = |name: &str| -> Result<&Vec<f32>> {
        got.iter()
            .find(|(o, _)| o == name)
            .map(|(_, t)| &t.data)
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("fake trainer: no output {name}")))
    };
    let sd_max = snap.scaler.std.iter().copied().fold(1.0, f64::max);
    let mut max_rel_diff = BTreeMap::new();
    for (name, want, scale) in [
        ("imputed", &want.imputed, sd_max),
        ("samples", &want.samples, sd_max),
        ("weights", &want.weights, 1.0),
        ("log_density", &want.log_density, 1.0),
        ("proposal_log_density", &want.proposal_log_density, 1.0),
    ] {
        max_rel_diff.insert(name.to_string(), max_rel(get(name)?, want, scale));
    }
    let proof = Proof {
        rows: p.n,
        tolerance: PROOF_TOLERANCE,
        max_rel_diff,
    };
    check_proof("emshap", &proof)?;
    let epochs: Vec<EpochRecord> = (1..=c.epochs.max(1))
        .map(|e| {
            let mut r = record(e, test["nll"], test["nll"], snap.train.n, c.lr);
            r.val_nll = Some(test["nll"]);
            r.mask_rate = s.logged_mask_rate(e - 1);
            r
        })
        .collect();
    let energy = serde_json::json!({"on": false, "reason": net.energy_decision});
    let settings = serde_json::to_value(s).map_err(|e| Error::Internal(e.into()))?;
    let h = history(
        "emshap",
        c,
        &snap,
        settings,
        epochs,
        test,
        proof,
        Some(energy),
    );
    finish(
        Written {
            model: "emshap",
            history: h,
            files: vec![(EMSHAP_ONNX, model)],
        },
        &c.out,
        &snap,
        started,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--version") {
        println!("{}", version_line());
        return;
    }
    if args.first().map(String::as_str) == Some("--devices") {
        println!("{{\"cuda_devices\":0,\"cudnn\":false,\"threads\":1,\"fake\":true}}");
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let (Some(job_path), Some(result_path)) = (value("--job"), value("--result")) else {
        eprintln!("usage: emshap-ci-fake-train --job FILE --result FILE");
        std::process::exit(exit::USAGE);
    };
    let job = read_job(&job_path);
    // A test can make the trainer die the way the kernel's OOM killer does.
    if std::env::var_os("EMSHAP_CI_FAKE_TRAIN_KILL").is_some() {
        // SAFETY: raise only sends a signal to this process.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
    let result = job.and_then(|j| match &j.job {
        Job::Power(s) => train_power(s),
        Job::Emshap(s) => train_emshap(s),
    });
    std::process::exit(write_result(&result_path, &result));
}
