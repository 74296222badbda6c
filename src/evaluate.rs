//! `evaluate`: scores the candidate's models, and the baseline's on the same test rows,
//! through ONNX Runtime (the runtime the Go service uses, never libtorch), applies the gate
//! (`gate`), and writes `metrics.json` (beside a copy of the snapshot's `dataset.json`) with every KPI, the rule applied to it, the baseline
//! kind and the verdict (DESIGN §7).
//!
//! The baseline is production from `--store`: fetched (verified) and scored on the same
//! rows, or, when its files cannot be fetched, its stored metrics.json (and the report says
//! so); no production version is a bootstrap. `--baseline DIR` names a folder instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gate::{self, BaselineKind, Check, Kpis, Rules};
use crate::kpi::{column_sd, emshap_kpis, fixed_draws, power_kpis};
use crate::onnx::{Session, Tensor};
use crate::train::data::{self, Split};
use crate::train::{EMSHAP_ONNX, POWER_ONNX};

pub use crate::artifacts::METRICS_FILE;
/// The EMSHAP KPIs' fixed draws: the same masks and randomness for every version.
pub const SEED: u64 = 0x5eed_0007;
pub const MASK_RATE: f64 = 0.5;
pub const PROPOSALS: usize = 20;
/// EMSHAP KPIs' candidates K for a graph with the energy correction on (BENCHMARKS.md,
/// "EMSHAP quality": NLL(K) − NLL(4K) on the test rows).
pub const EVAL_PROPOSALS: usize = 100;
/// Test rows the K → 4K convergence check runs on.
const CONVERGENCE_ROWS: usize = 512;
/// Test rows the global attribution is computed on by default.
pub const ATTRIBUTION_ROWS: usize = 16;
/// Joint draws per coalition, and KernelSHAP coalitions above 12 features, for the global
/// attribution (a summary over rows: cheaper than `explain`'s defaults; BENCHMARKS.md).
pub const ATTRIBUTION_DRAWS: usize = 16;
pub const ATTRIBUTION_SAMPLES: usize = 128;
/// Rows per ONNX Runtime call for the power model: the fastest of 1k–1M on 1M test rows
/// (examples/bench_score.rs, BENCHMARKS.md); larger batches spill out of the caches.
const POWER_BATCH: usize = 8_192;
/// Rows per call for EMSHAP (its intermediates are rows·(K+1)·d·128 floats).
const EMSHAP_BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct EvaluateSettings {
    pub data: PathBuf,
    pub models: PathBuf,
    pub baseline: Option<PathBuf>,
    /// The store whose production version is the baseline (when no --baseline folder).
    pub store: Option<String>,
    pub rules: Rules,
    /// `Some(reason)` with --force.
    pub force: Option<String>,
    pub out: PathBuf,
    pub emshap_rows: usize,
    /// Test rows explained for the global attribution (0: none).
    pub attribution_rows: usize,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Force {
    pub by: String,
    pub reason: String,
    /// The checks that failed and were overridden: "model.metric: why".
    pub failed: Vec<String>,
}

/// The gate's outcome (DESIGN §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every check passed.
    Pass,
    /// A check failed: never promoted; the command exits 1.
    Fail,
    /// A check failed and `--force --reason` overrode it (recorded in `force`).
    Forced,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Forced => "forced",
        }
    }

    /// Whether a version with this verdict may become production.
    pub fn promotable(self) -> bool {
        self != Verdict::Fail
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub format: String,
    pub verdict: Verdict,
    pub baseline: BaselineKind,
    /// The production version compared with (from the store), if any.
    #[serde(default)]
    pub production_sha: Option<String>,
    /// Why the baseline is what it is, when it is not the obvious (e.g. a failed fetch).
    #[serde(default)]
    pub baseline_note: Option<String>,
    pub candidate: Kpis,
    pub production: Option<Kpis>,
    pub checks: Vec<Check>,
    pub force: Option<Force>,
    pub rows: BTreeMap<String, usize>,
    pub seed: u64,
    pub mask_rate: f64,
    pub proposals: usize,
    pub snapshot_sha256: String,
    /// sha256 of the candidate's ONNX files.
    pub models: BTreeMap<String, String>,
    /// The candidate's global attribution (mean |φ| per feature) on the first test rows,
    /// with its efficiency gap (DESIGN §6); absent when disabled or a model is missing.
    #[serde(default)]
    pub attribution: Option<crate::explain::Global>,
    /// The candidate's train split against production's train-split reference (PSI per
    /// feature and the target); absent without a production version that has a reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_drift: Option<crate::drift::TrainingDrift>,
    /// The reference of the candidate's power predictions on the test rows: `monitor`
    /// measures prediction drift against it (absent in older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_reference: Option<crate::pull::reference::ColumnReference>,
    pub seconds: f64,
}

/// The test rows both versions are scored on, in raw units.
struct Rows {
    raw: Vec<f32>,
    target: Vec<f32>,
    n: usize,
    d: usize,
    /// Per feature, the standard deviation on these rows (raw units).
    sd: Vec<f64>,
}

fn raw_rows(test: &Split, mean: &[f64], std: &[f64]) -> Rows {
    let d = test.d;
    let raw: Vec<f32> = test
        .x
        .iter()
        .enumerate()
        .map(|(i, &v)| (f64::from(v) * std[i % d] + mean[i % d]) as f32)
        .collect();
    let sd = column_sd(&raw, d);
    Rows {
        raw,
        target: test.y.clone(),
        n: test.n,
        d,
        sd,
    }
}

fn read_model(dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::read(&path, e)),
    }
}

/// The power KPIs on `rows`, and the predictions.
fn score_power(
    model: &[u8],
    rows: &Rows,
    threads: usize,
) -> Result<(BTreeMap<String, f64>, Vec<f32>)> {
    let mut session = Session::new(model, threads)?;
    let mut pred = Vec::with_capacity(rows.n);
    for start in (0..rows.n).step_by(POWER_BATCH) {
        let len = POWER_BATCH.min(rows.n - start);
        let out = session.run(vec![(
            "features",
            Tensor {
                shape: vec![len, rows.d],
                data: rows.raw[start * rows.d..(start + len) * rows.d].to_vec(),
            },
        )])?;
        pred.extend_from_slice(&out[0].1.data);
    }
    Ok((power_kpis(&pred, &rows.target), pred))
}

/// The graph's outputs on `n` rows with K candidates from the fixed draws.
struct EmshapOut {
    observed: Vec<f32>,
    imputed: Vec<f32>,
    log_density: Vec<f32>,
    proposal_log_density: Option<Vec<f32>>,
    /// Plain average of the K samples per entry (the proposal's mean by Monte Carlo).
    sample_mean: Vec<f32>,
    /// (Σw)²/Σw² / K per entry.
    ess: Vec<f32>,
}

fn run_emshap(model: &[u8], rows: &Rows, n: usize, k: usize, threads: usize) -> Result<EmshapOut> {
    let d = rows.d;
    let draws = fixed_draws(SEED, n, k, d, MASK_RATE);
    let mut session = Session::new(model, threads)?;
    let batch = (EMSHAP_BATCH * PROPOSALS / k).clamp(16, 4096);
    let mut o = EmshapOut {
        observed: draws.observed.clone(),
        imputed: Vec::new(),
        log_density: Vec::new(),
        proposal_log_density: None,
        sample_mean: Vec::new(),
        ess: Vec::new(),
    };
    let mut pld = Vec::new();
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let nd = start * d..(start + len) * d;
        let nkd = start * k * d..(start + len) * k * d;
        let t = |shape: Vec<usize>, v: &[f32]| Tensor {
            shape,
            data: v.to_vec(),
        };
        let out = session.run(vec![
            ("features", t(vec![len, d], &rows.raw[nd.clone()])),
            ("observed", t(vec![len, d], &draws.observed[nd])),
            ("noise", t(vec![len, k, d], &draws.z[nkd.clone()])),
            ("component_u", t(vec![len, k, d], &draws.u[nkd])),
        ])?;
        for (name, t) in out {
            match name.as_str() {
                "imputed" => o.imputed.extend(t.data),
                "log_density" => o.log_density.extend(t.data),
                "proposal_log_density" => pld.extend(t.data),
                "samples" => {
                    for r in 0..len {
                        for j in 0..d {
                            let s: f32 = (0..k).map(|kk| t.data[(r * k + kk) * d + j]).sum();
                            o.sample_mean.push(s / k as f32);
                        }
                    }
                }
                "weights" => {
                    for r in 0..len {
                        for j in 0..d {
                            let (s, s2) = (0..k).fold((0f32, 0f32), |(s, s2), kk| {
                                let w = t.data[(r * k + kk) * d + j];
                                (s + w, s2 + w * w)
                            });
                            o.ess.push(s * s / s2.max(f32::MIN_POSITIVE) / k as f32);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if o.imputed.len() != n * d || o.log_density.len() != n * d {
        return Err(Error::usage(
            "--models",
            format!("{EMSHAP_ONNX} does not have the imputed and log_density outputs of DESIGN §5"),
        ));
    }
    o.proposal_log_density = (pld.len() == n * d).then_some(pld);
    Ok(o)
}

/// Mean and standard error of −log density over the unobserved entries.
fn nll_with_se(observed: &[f32], log_density: &[f32]) -> (f64, f64) {
    let v: Vec<f64> = observed
        .iter()
        .zip(log_density)
        .filter(|(b, _)| **b < 0.5)
        .map(|(_, l)| -f64::from(*l))
        .collect();
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
}

/// EMSHAP's KPIs (DESIGN §7) on the first `n` test rows with fixed masks at rate 0.5:
/// `nll` and `imputation_rmse` of the shipped density with `EVAL_PROPOSALS` candidates
/// (a graph without the energy correction has no K: its density is the proposal's, its
/// mean exact), the same for its proposal alone, the energy's gain over the proposal
/// (`energy_gain` = nll − proposal_nll, `imputation_ratio`), the effective sample size of
/// the weights, the NLL's standard error and its change from K to 4K candidates on a
/// subsample (`nll_k_gap`: how far from converged the estimate is).
/// EMSHAP's mean NLL per masked entry and its standard error on the `n` rows of `raw`
/// (row-major raw features, `d` of them), with the evaluation's fixed masks and candidate
/// count: the figure `monitor` compares with a version's stored test `nll` (joint drift).
pub fn emshap_nll(model: &[u8], raw: &[f32], d: usize, threads: usize) -> Result<(f64, f64)> {
    let n = raw.len() / d.max(1);
    let rows = Rows {
        raw: raw.to_vec(),
        target: vec![0.0; n],
        n,
        d,
        sd: column_sd(raw, d),
    };
    let energy = crate::explain::energy_correction(model).unwrap_or(true);
    let k = if energy { EVAL_PROPOSALS } else { 1 };
    let o = run_emshap(model, &rows, n, k, threads)?;
    Ok(nll_with_se(&o.observed, &o.log_density))
}

fn score_emshap(
    model: &[u8],
    rows: &Rows,
    n: usize,
    threads: usize,
) -> Result<BTreeMap<String, f64>> {
    let d = rows.d;
    let energy = crate::explain::energy_correction(model).unwrap_or(true);
    let k = if energy { EVAL_PROPOSALS } else { 1 };
    let o = run_emshap(model, rows, n, k, threads)?;
    let truth = &rows.raw[..n * d];
    let mut m = emshap_kpis(truth, &o.observed, &o.imputed, &o.log_density, &rows.sd);
    let (_, se) = nll_with_se(&o.observed, &o.log_density);
    m.insert("nll_se".into(), se);
    m.insert("proposals".into(), k as f64);
    m.insert("energy".into(), if energy { 1.0 } else { 0.0 });
    let masked: Vec<f32> = o
        .ess
        .iter()
        .zip(&o.observed)
        .filter(|(_, b)| **b < 0.5)
        .map(|(e, _)| *e)
        .collect();
    if !masked.is_empty() {
        let ess = masked.iter().map(|&e| f64::from(e)).sum::<f64>() / masked.len() as f64;
        m.insert("ess".into(), ess);
    }
    if let Some(pld) = &o.proposal_log_density {
        let proposal_mean = if energy { &o.sample_mean } else { &o.imputed };
        let q = emshap_kpis(truth, &o.observed, proposal_mean, pld, &rows.sd);
        m.insert("proposal_nll".into(), q["nll"]);
        m.insert("proposal_imputation_rmse".into(), q["imputation_rmse"]);
        m.insert("energy_gain".into(), m["nll"] - q["nll"]);
        m.insert(
            "imputation_ratio".into(),
            m["imputation_rmse"] / q["imputation_rmse"].max(f64::MIN_POSITIVE),
        );
    }
    // Convergence in K, on a subsample: the same masks (the fixed draws make each row's
    // mask first, so the first rows' masks do not depend on n), K and 4K candidates; the K
    // figure is the main run's own on those rows.
    let sub = n.min(CONVERGENCE_ROWS);
    let gap = if energy && sub > 0 {
        let b = run_emshap(model, rows, sub, 4 * k, threads)?;
        let at_k = nll_with_se(&o.observed[..sub * d], &o.log_density[..sub * d]).0;
        (nll_with_se(&b.observed, &b.log_density).0 - at_k).abs()
    } else {
        0.0
    };
    m.insert("nll_k_gap".into(), gap);
    Ok(m)
}

/// Scores whichever of the two models `dir` has; a model that is absent has no KPIs (and
/// the gate fails its metrics).
/// A folder's KPIs on `rows`, its ONNX files' digests, and the reference of its power
/// predictions on them (for `monitor`'s prediction drift).
fn score_dir(
    dir: &Path,
    rows: &Rows,
    s: &EvaluateSettings,
) -> Result<(
    Kpis,
    BTreeMap<String, String>,
    Option<crate::pull::reference::ColumnReference>,
)> {
    let mut kpis = Kpis::new();
    let mut digests = BTreeMap::new();
    let mut predictions = None;
    if let Some(m) = read_model(dir, POWER_ONNX)? {
        digests.insert(POWER_ONNX.to_string(), hex::encode(Sha256::digest(&m)));
        let (k, pred) = score_power(&m, rows, s.threads)?;
        kpis.insert("power".into(), k);
        predictions = Some(crate::pull::reference::column("prediction", &pred));
    }
    if let Some(m) = read_model(dir, EMSHAP_ONNX)? {
        digests.insert(EMSHAP_ONNX.to_string(), hex::encode(Sha256::digest(&m)));
        let n = rows.n.min(s.emshap_rows);
        kpis.insert("emshap".into(), score_emshap(&m, rows, n, s.threads)?);
    }
    Ok((kpis, digests, predictions))
}

/// Where the baseline comes from: a folder to score (given, or production fetched from the
/// store into a temporary one), or production's stored metrics, or nothing (bootstrap).
struct Baseline {
    dir: Option<PathBuf>,
    stored: Option<Kpis>,
    sha: Option<String>,
    note: Option<String>,
    /// Keeps the fetched folder until the evaluation is done.
    _tmp: Option<tempfile::TempDir>,
}

fn resolve_baseline(s: &EvaluateSettings) -> Result<Baseline> {
    let none = Baseline {
        dir: s.baseline.clone(),
        stored: None,
        sha: None,
        note: None,
        _tmp: None,
    };
    let Some(uri) = (s.baseline.is_none())
        .then_some(s.store.as_deref())
        .flatten()
    else {
        return Ok(none);
    };
    let store = crate::store::open(uri)?;
    let Some((pointer, _)) = crate::store::versions::production(store.as_ref())? else {
        return Ok(Baseline {
            note: Some(format!("{} has no production version yet", store.uri())),
            ..none
        });
    };
    // $TMPDIR read-only or full is the machine's state, not a bug: exit 3, saying which.
    let tmp = tempfile::tempdir().map_err(|e| Error::write(&std::env::temp_dir(), e))?;
    let dest = tmp.path().join("production");
    match crate::store::versions::fetch(store.as_ref(), Some(&pointer.sha), &dest) {
        Ok(_) => Ok(Baseline {
            dir: Some(dest),
            sha: Some(pointer.sha),
            _tmp: Some(tmp),
            ..none
        }),
        Err(fetch_error) => {
            tracing::warn!(
                "production {} could not be fetched: {fetch_error}",
                pointer.sha
            );
            let key = format!("versions/{}/{METRICS_FILE}", pointer.sha);
            let stored: Metrics = store
                .get(&key)?
                .and_then(|o| serde_json::from_slice(&o.bytes).ok())
                .ok_or_else(|| Error::Store {
                    uri: store.uri(),
                    message: format!(
                        "production {} could not be fetched ({fetch_error}) and has no readable {METRICS_FILE}",
                        pointer.sha
                    ),
                    hint: "roll production back to a complete version".into(),
                })?;
            Ok(Baseline {
                stored: Some(stored.candidate),
                note: Some(format!(
                    "production {}'s files could not be fetched ({fetch_error}); its stored {METRICS_FILE} is the baseline",
                    pointer.sha
                )),
                sha: Some(pointer.sha),
                ..none
            })
        }
    }
}

/// The candidate's Shapley values on the first `attribution_rows` test rows (fixed: the same
/// rows and draws every run), summarised as mean |φ| per feature.
fn attribute(
    s: &EvaluateSettings,
    rows: &Rows,
    features: &[String],
) -> Result<Option<crate::explain::Global>> {
    let n = rows.n.min(s.attribution_rows);
    let (Some(power), Some(emshap)) = (
        read_model(&s.models, POWER_ONNX)?,
        read_model(&s.models, EMSHAP_ONNX)?,
    ) else {
        return Ok(None);
    };
    if n == 0 {
        return Ok(None);
    }
    let method = crate::explain::choose(
        rows.d,
        false,
        (rows.d > crate::explain::EXACT_MAX_DEFAULT).then_some(ATTRIBUTION_SAMPLES),
    )?;
    let a = crate::explain::explain_rows(
        &power,
        &emshap,
        features.to_vec(),
        &rows.raw[..n * rows.d],
        method,
        crate::explain::ValueChoice {
            kind: crate::explain::ValueFunctionKind::Expectation,
            draws: ATTRIBUTION_DRAWS,
        },
        PROPOSALS,
        SEED,
        s.threads,
        format!("the first {n} test rows"),
        &crate::progress::Progress::new("attribution", true),
    )?;
    Ok(Some(crate::explain::global(&a)))
}

/// Runs the evaluation; writes metrics.json also when the gate fails (then returns
/// `Error::GateFailed`, exit 1).
/// The candidate's train split (in `data`) against the reference in production's
/// `dataset.json` (in `production`); `None`, with the reason logged, when production has no
/// reference (an older format) or the split cannot be read.
fn training_drift(
    production: &Path,
    sha: &str,
    data: &Path,
    candidate: &crate::pull::Dataset,
) -> Option<crate::drift::TrainingDrift> {
    let path = production.join(crate::pull::snapshot::DATASET_FILE);
    let prod: crate::pull::Dataset = match std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(d) => d,
        None => {
            tracing::warn!("production {sha} has no readable dataset.json: no data drift section");
            return None;
        }
    };
    if prod.reference.is_empty() {
        tracing::info!("production {sha}'s dataset.json predates the drift reference (format 2): no data drift section");
        return None;
    }
    let scaler =
        match crate::pull::snapshot::Scaler::load(&data.join(crate::pull::snapshot::SCALER_FILE)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("no data drift section: {e}");
                return None;
            }
        };
    let train = data.join("train.parquet");
    let imputed = candidate
        .split
        .get("train")
        .map(|s| s.imputed.clone())
        .unwrap_or_default();
    match crate::drift::training_split(
        &prod.reference,
        &imputed,
        &train,
        &scaler,
        &candidate.target,
    ) {
        Ok(features) => Some(crate::drift::TrainingDrift {
            production_sha: sha.to_string(),
            rows: candidate.split.get("train").map_or(0, |s| s.rows),
            features,
        }),
        Err(e) => {
            tracing::warn!("no data drift section: {e}");
            None
        }
    }
}

pub fn evaluate(s: &EvaluateSettings) -> Result<Metrics> {
    let started = Instant::now();
    if !s.models.join(POWER_ONNX).is_file() && !s.models.join(EMSHAP_ONNX).is_file() {
        return Err(Error::usage(
            "--models",
            format!(
                "{} has neither {POWER_ONNX} nor {EMSHAP_ONNX} (run `emshap-ci train power` and `train emshap` with --out {} first)",
                s.models.display(),
                s.models.display()
            ),
        ));
    }
    let snap = data::load_test(&s.data)?;
    let rows = raw_rows(&snap.test, &snap.scaler.mean, &snap.scaler.std);
    let (candidate, models, prediction_reference) = score_dir(&s.models, &rows, s)?;
    let baseline = resolve_baseline(s)?;
    let (kind, production) = match &baseline.dir {
        None if baseline.stored.is_some() => (BaselineKind::StoredMetrics, baseline.stored.clone()),
        None => (BaselineKind::Bootstrap, None),
        Some(dir) => {
            let has_models = dir.join(POWER_ONNX).is_file() || dir.join(EMSHAP_ONNX).is_file();
            if has_models {
                (BaselineKind::SameRows, Some(score_dir(dir, &rows, s)?.0))
            } else {
                let path = dir.join(METRICS_FILE);
                let text = std::fs::read_to_string(&path).map_err(|e| Error::read(&path, e))?;
                let stored: Metrics = serde_json::from_str(&text).map_err(|e| {
                    Error::usage(
                        "--baseline",
                        format!("{} is not a metrics.json: {e}", path.display()),
                    )
                })?;
                (BaselineKind::StoredMetrics, Some(stored.candidate))
            }
        }
    };
    let checks = gate::judge(&s.rules, &candidate, production.as_ref());
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}.{}: {}", c.model, c.metric, c.reason))
        .collect();
    let (verdict, force) = match (&s.force, failed.is_empty()) {
        (_, true) => (Verdict::Pass, None),
        (Some(reason), false) => (
            Verdict::Forced,
            Some(Force {
                by: crate::settings::actor(),
                reason: reason.clone(),
                failed: failed.clone(),
            }),
        ),
        (None, false) => (Verdict::Fail, None),
    };
    let attribution = attribute(s, &rows, &snap.dataset.features)?;
    let data_drift = baseline
        .dir
        .as_deref()
        .zip(baseline.sha.as_deref())
        .and_then(|(dir, sha)| training_drift(dir, sha, &s.data, &snap.dataset));
    let mut n_rows = BTreeMap::new();
    n_rows.insert("power".to_string(), rows.n);
    n_rows.insert("emshap".to_string(), rows.n.min(s.emshap_rows));
    let metrics = Metrics {
        format: "emshap-ci.metrics/1".into(),
        verdict,
        baseline: kind,
        production_sha: baseline.sha,
        baseline_note: baseline.note,
        candidate,
        production,
        checks,
        force,
        rows: n_rows,
        seed: SEED,
        mask_rate: MASK_RATE,
        proposals: PROPOSALS,
        snapshot_sha256: snap.dataset.snapshot_sha256.clone(),
        models,
        attribution,
        data_drift,
        prediction_reference,
        seconds: started.elapsed().as_secs_f64(),
    };
    std::fs::create_dir_all(&s.out).map_err(|e| Error::write(&s.out, e))?;
    let mut json = serde_json::to_vec_pretty(&metrics).map_err(|e| Error::Internal(e.into()))?;
    json.push(b'\n');
    crate::pull::snapshot::write_atomic(&s.out.join(METRICS_FILE), &json)?;
    // The snapshot's lineage goes with the verdict into the version (publish).
    let dataset = s.data.join(crate::pull::snapshot::DATASET_FILE);
    let bytes = std::fs::read(&dataset).map_err(|e| Error::read(&dataset, e))?;
    crate::pull::snapshot::write_atomic(&s.out.join(crate::pull::snapshot::DATASET_FILE), &bytes)?;
    Ok(metrics)
}

/// The error a failed gate is to the command line (exit 1): which checks failed, and where
/// metrics.json is. None unless the verdict is `Fail`.
pub fn gate_failure(m: &Metrics, metrics_file: &std::path::Path) -> Option<Error> {
    if m.verdict != Verdict::Fail {
        return None;
    }
    let failed: Vec<&crate::gate::Check> = m.checks.iter().filter(|c| !c.passed).collect();
    let names: Vec<String> = failed
        .iter()
        .map(|c| format!("{}.{}", c.model, c.metric))
        .collect();
    Some(Error::GateFailed {
        message: format!(
            "{} (first: {}.{}: {}; every check in {}; override with --force --reason)",
            names.join(", "),
            failed.first().map_or("", |c| c.model.as_str()),
            failed.first().map_or("", |c| c.metric.as_str()),
            failed.first().map_or("", |c| c.reason.as_str()),
            metrics_file.display()
        ),
    })
}
