//! `emshap-ci monitor` (DESIGN §13, issue 16): production scored on the rows it has never
//! seen (by default, per partition, from the end offsets recorded in its `dataset.json` to
//! the current high watermark, capped to the last N), drift of every feature and of the
//! target against production's train-split reference, one verdict, `monitor.json` and a
//! markdown report, the result stored under `monitoring/`, and with `--dispatch` the retrain
//! workflow started when the verdict asks for one (never within the cooldown).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::app::Outcome;
use crate::drift::FeatureDrift;
use crate::error::{Error, Result};
use crate::kafka::TopicReader;
use crate::pull::window::{OffsetSpec, Window};
use crate::pull::{Dataset, Source};
use crate::settings::{self, ConfigFile};
use crate::store::Store;

pub const FORMAT: &str = "emshap-ci.monitor/1";
/// A feature missing in more of the window's rows than this makes the window invalid.
pub const MAX_MISSING: f64 = 0.05;
/// The attribution-weighted share of significantly drifted features that means `drift`.
pub const DRIFT_SHARE: f64 = 0.25;
/// The realized rmse over the stored test rmse that, with the interval above 1, means
/// `degraded`.
pub const DEGRADED_RATIO: f64 = 1.10;
pub const BOOTSTRAP: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Invalid,
    InsufficientData,
    Degraded,
    Drift,
    Watch,
    Ok,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Invalid => "invalid",
            Verdict::InsufficientData => "insufficient_data",
            Verdict::Degraded => "degraded",
            Verdict::Drift => "drift",
            Verdict::Watch => "watch",
            Verdict::Ok => "ok",
        }
    }
}

/// Realized performance on the window (raw watts), `None` on an empty one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Performance {
    pub rows: u64,
    pub rmse: Option<f64>,
    pub mae: Option<f64>,
    pub r2: Option<f64>,
    pub mape: Option<f64>,
    /// production's rmse on its own test rows (metrics.json).
    pub stored_rmse: Option<f64>,
    pub rmse_ratio: Option<f64>,
    /// The ratio's 95 % interval from a block bootstrap by node (seeded).
    pub rmse_ratio_low: Option<f64>,
    pub rmse_ratio_high: Option<f64>,
    pub nodes: u64,
}

/// Joint drift: EMSHAP's mean NLL on a subsample of the window against its stored test NLL
/// (the same masks and candidate count as `evaluate`); every field `null` without rows or
/// without an EMSHAP model.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Joint {
    pub rows: u64,
    pub nll: Option<f64>,
    pub nll_se: Option<f64>,
    pub stored_nll: Option<f64>,
    pub stored_nll_se: Option<f64>,
    /// (nll − stored) / √(se² + stored_se²): how many standard errors the window is worse.
    pub z: Option<f64>,
}

/// Rows of the window EMSHAP is scored on (evenly spread over it).
const JOINT_ROWS: usize = 2000;

/// `monitor.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    pub verdict: Verdict,
    pub retrain: bool,
    pub reason: String,
    pub production_sha: String,
    pub window: String,
    pub partitions: Vec<crate::kafka::PartitionRange>,
    pub messages: u64,
    pub invalid: u64,
    pub performance: Performance,
    pub features: Vec<FeatureDrift>,
    pub target: Option<FeatureDrift>,
    /// EMSHAP's NLL on the window against its stored test NLL.
    #[serde(default)]
    pub joint: Joint,
    /// Production's predictions on the window against their reference (its predictions on
    /// its own test rows); `null` for a version that predates the reference, or no rows.
    #[serde(default)]
    pub prediction: Option<FeatureDrift>,
    /// What `[expectations]` found in the window (empty without expectations or findings).
    #[serde(default)]
    pub expectations: Vec<crate::expect::Finding>,
    /// Features weighted by production's mean |φ|: the share that drifted significantly.
    pub drifted_share: Option<f64>,
    pub top_features: Vec<String>,
    pub dispatched: Option<String>,
    pub dispatch_note: Option<String>,
    pub time: String,
    pub seed: u64,
}

pub struct MonitorSettings {
    pub pull: crate::pull::PullSettings,
    /// No --window: from production's end offsets, capped to the last `cap` messages.
    pub after_production: bool,
    pub cap: u64,
    pub store: String,
    pub out: PathBuf,
    pub min_rows: u64,
    pub dispatch: Option<String>,
    pub cooldown_hours: f64,
    pub fail_on: Option<Verdict>,
    pub repo: Option<String>,
    pub git_ref: String,
    pub seed: u64,
}

fn nan_none(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn now_rfc3339() -> String {
    // Milliseconds: two runs within a second still get their own record, in order.
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn parse_time(s: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()
}

/// Per partition from production's recorded end to the high watermark, the last `cap`
/// messages of it in all (shared out in proportion to each partition's part).
fn after_production(
    s: &crate::pull::PullSettings,
    production: &Dataset,
    cap: u64,
) -> Result<Vec<(i32, i64, i64)>> {
    let Source::Kafka { topic } = &s.source else {
        return Err(Error::usage(
            "--window",
            "the default window (after production) needs a kafka: source; give --window for a file",
        ));
    };
    if production.source.kind != "kafka" || &production.source.name != topic {
        return Err(Error::usage(
            "--window",
            format!(
                "production was trained on {} {}, not kafka:{topic}: give --window",
                production.source.kind, production.source.name
            ),
        ));
    }
    let reader = TopicReader::connect(&s.kafka, topic)?;
    let partitions = reader.partitions()?;
    let marks = reader.watermarks(&partitions)?;
    let mut ranges: Vec<(i32, i64, i64)> = partitions
        .iter()
        .zip(&marks)
        .map(|(&p, &(low, high))| {
            let end = production
                .source
                .partitions
                .iter()
                .find(|r| r.partition == p)
                .map_or(low, |r| r.end);
            (p, end.clamp(low, high), high)
        })
        .collect();
    let total: u64 = ranges.iter().map(|&(_, a, b)| (b - a) as u64).sum();
    if total > cap {
        for r in &mut ranges {
            let len = (r.2 - r.1) as u64;
            let keep = (len as f64 * cap as f64 / total as f64).ceil() as i64;
            r.1 = r.1.max(r.2 - keep);
        }
    }
    Ok(ranges)
}

struct Scored {
    pred: Vec<f32>,
}

fn predict(model: &[u8], raw: &[f32], d: usize, threads: usize) -> Result<Scored> {
    let mut session = crate::onnx::Session::new(model, threads)?;
    let n = raw.len() / d.max(1);
    let mut pred = Vec::with_capacity(n);
    for start in (0..n).step_by(8192) {
        let len = 8192.min(n - start);
        let out = session.run(vec![(
            "features",
            crate::onnx::Tensor {
                shape: vec![len, d],
                data: raw[start * d..(start + len) * d].to_vec(),
            },
        )])?;
        pred.extend_from_slice(&out[0].1.data);
    }
    Ok(Scored { pred })
}

/// The rmse ratio's 95 % interval: nodes resampled with replacement (rows of one node are
/// not independent), `BOOTSTRAP` times, seeded.
fn block_bootstrap(pred: &[f32], y: &[f32], node: &[u32], stored: f64, seed: u64) -> (f64, f64) {
    let mut by_node: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &n) in node.iter().enumerate() {
        by_node.entry(n).or_default().push(i);
    }
    let groups: Vec<&Vec<usize>> = by_node.values().collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut ratios: Vec<f64> = (0..BOOTSTRAP)
        .map(|_| {
            let (mut se, mut n) = (0.0, 0usize);
            for _ in 0..groups.len() {
                let g = groups[rng.random_range(0..groups.len())];
                for &i in g {
                    se += (f64::from(pred[i]) - f64::from(y[i])).powi(2);
                    n += 1;
                }
            }
            (se / n.max(1) as f64).sqrt() / stored
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |p: f64| ratios[((p * (BOOTSTRAP - 1) as f64).round() as usize).min(BOOTSTRAP - 1)];
    (at(0.025), at(0.975))
}

/// The last monitoring records in the store, newest last.
fn history(store: &dyn Store) -> Result<Vec<Report>> {
    let mut out = Vec::new();
    for key in store.list("monitoring/")? {
        if let Some(o) = store.get(&key)? {
            if let Ok(r) = serde_json::from_slice::<Report>(&o.bytes) {
                out.push(r);
            }
        }
    }
    out.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(out)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: format!("unreadable: {e}"),
    })
}

pub fn monitor(s: &MonitorSettings, config: &ConfigFile, quiet: bool) -> Result<(Report, String)> {
    let store = crate::store::open(&s.store)?;
    let (pointer, _) = crate::store::versions::production(store.as_ref())?.ok_or_else(|| {
        Error::usage(
            "--store",
            format!(
                "{} has no production version to monitor (promote one first)",
                s.store
            ),
        )
    })?;
    let tmp = tempfile::tempdir().map_err(|e| Error::Internal(e.into()))?;
    let version = tmp.path().join("production");
    crate::store::versions::fetch(store.as_ref(), Some(&pointer.sha), &version)?;
    let dataset: Dataset = read_json(&version.join(crate::artifacts::DATASET_FILE))?;
    let metrics: crate::evaluate::Metrics =
        read_json(&version.join(crate::artifacts::METRICS_FILE))?;
    let scaler = crate::pull::snapshot::Scaler::load(&version.join(crate::artifacts::SCALER_FILE))?;

    let mut pull = s.pull.clone();
    if s.after_production {
        pull.window = Window::Offsets(OffsetSpec::Per(after_production(&pull, &dataset, s.cap)?));
    }
    let window_text = pull.window.to_string();
    let empty = matches!(&pull.window, Window::Offsets(OffsetSpec::Per(r)) if r.iter().all(|(_, a, b)| a >= b));
    let (cols, info) = if empty {
        (Default::default(), None)
    } else {
        let progress = crate::progress::Progress::new("monitor", quiet);
        let t = std::time::Instant::now();
        let (c, i) = crate::pull::read_window(&pull, &progress)?;
        tracing::info!(seconds = t.elapsed().as_secs_f64(), "read the window");
        (c, Some(i))
    };
    let cols: crate::pull::decode::Columns = cols;
    let d = cols.d.max(dataset.features.len());
    if cols.d != 0 && cols.d != dataset.features.len() {
        return Err(Error::usage(
            "--features",
            format!(
                "production was trained on {} features ({}); the window was read with {}",
                dataset.features.len(),
                dataset.features.join(","),
                cols.d
            ),
        ));
    }
    let n = cols.power.len();
    // Drift of each feature and the target against production's reference.
    let reference: BTreeMap<&str, &crate::pull::reference::ColumnReference> = dataset
        .reference
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    let t = std::time::Instant::now();
    let mut features = Vec::with_capacity(d);
    for (j, name) in dataset.features.iter().enumerate() {
        let values: Vec<f64> = (0..n).map(|i| f64::from(cols.values[i * d + j])).collect();
        features.push(crate::drift::feature_or_unknown(
            name,
            reference.get(name.as_str()).copied(),
            &values,
        ));
    }
    let target = reference.get(crate::schema::TARGET).map(|r| {
        let y: Vec<f64> = cols.power.iter().map(|&v| f64::from(v)).collect();
        crate::drift::feature(r, &y)
    });

    // Realized performance through production's power model.
    let stored_rmse = metrics
        .candidate
        .get("power")
        .and_then(|p| p.get("rmse"))
        .copied();
    let mut perf = Performance {
        rows: n as u64,
        rmse: None,
        mae: None,
        r2: None,
        mape: None,
        stored_rmse,
        rmse_ratio: None,
        rmse_ratio_low: None,
        rmse_ratio_high: None,
        nodes: cols.node_names.len() as u64,
    };
    let mut prediction = None;
    let mut joint = Joint::default();
    if n > 0 {
        let mut raw = cols.values.clone();
        for (i, v) in raw.iter_mut().enumerate() {
            if v.is_nan() {
                *v = scaler.mean[i % d] as f32;
            }
        }
        let model = std::fs::read(version.join(crate::artifacts::POWER_ONNX))
            .map_err(|e| Error::read(&version.join(crate::artifacts::POWER_ONNX), e))?;
        tracing::info!(
            seconds = t.elapsed().as_secs_f64(),
            "feature and target drift"
        );
        let t = std::time::Instant::now();
        let scored = predict(&model, &raw, d, 2)?;
        tracing::info!(seconds = t.elapsed().as_secs_f64(), "scored the window");
        let emshap = version.join(crate::artifacts::EMSHAP_ONNX);
        if emshap.is_file() {
            let m = std::fs::read(&emshap).map_err(|e| Error::read(&emshap, e))?;
            let step = n.div_ceil(JOINT_ROWS).max(1);
            let sub: Vec<f32> = (0..n)
                .step_by(step)
                .flat_map(|i| raw[i * d..(i + 1) * d].iter().copied())
                .collect();
            let t = std::time::Instant::now();
            let (nll, se) = crate::evaluate::emshap_nll(&m, &sub, d, 2)?;
            tracing::info!(
                seconds = t.elapsed().as_secs_f64(),
                rows = sub.len() / d.max(1),
                "EMSHAP NLL (joint drift)"
            );
            let stored = metrics.candidate.get("emshap");
            joint.rows = (sub.len() / d.max(1)) as u64;
            joint.nll = nan_none(nll);
            joint.nll_se = nan_none(se);
            joint.stored_nll = stored
                .and_then(|k| k.get("nll"))
                .copied()
                .and_then(nan_none);
            joint.stored_nll_se = stored
                .and_then(|k| k.get("nll_se"))
                .copied()
                .and_then(nan_none);
            if let (Some(a), Some(b)) = (joint.nll, joint.stored_nll) {
                let s2 = joint.nll_se.unwrap_or(0.0).powi(2)
                    + joint.stored_nll_se.unwrap_or(0.0).powi(2);
                joint.z = (s2 > 0.0).then(|| (a - b) / s2.sqrt());
            }
        }
        if let Some(r) = &metrics.prediction_reference {
            let p: Vec<f64> = scored.pred.iter().map(|&v| f64::from(v)).collect();
            prediction = Some(crate::drift::feature(r, &p));
        }
        let k = crate::kpi::power_kpis(&scored.pred, &cols.power);
        perf.rmse = nan_none(k["rmse"]);
        perf.mae = nan_none(k["mae"]);
        perf.r2 = nan_none(k["r2"]);
        perf.mape = nan_none(k["mape"]);
        if let (Some(stored), Some(rmse)) = (stored_rmse.filter(|v| *v > 0.0), perf.rmse) {
            perf.rmse_ratio = Some(rmse / stored);
            let (lo, hi) = block_bootstrap(&scored.pred, &cols.power, &cols.node, stored, s.seed);
            perf.rmse_ratio_low = nan_none(lo);
            perf.rmse_ratio_high = nan_none(hi);
        }
    }

    tracing::info!(
        seconds = t.elapsed().as_secs_f64(),
        "drift, scoring, bootstrap and joint drift, in all"
    );
    // Attribution weights: production's mean |φ| (equal weights without one).
    let weights: Vec<f64> = dataset
        .features
        .iter()
        .map(|f| {
            metrics
                .attribution
                .as_ref()
                .and_then(|a| a.mean_abs_phi.get(f).copied())
                .unwrap_or(1.0)
        })
        .collect();
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let top: Vec<usize> = order.iter().take(3).copied().collect();
    let wsum: f64 = weights.iter().sum();
    let significant = |j: usize| features[j].band == "significant";
    let drifted_share = (n > 0 && wsum > 0.0).then(|| {
        (0..d)
            .filter(|&j| significant(j))
            .map(|j| weights[j])
            .sum::<f64>()
            / wsum
    });
    let invalid_total = cols.quarantined.len() as u64;
    let max_missing = features
        .iter()
        .filter_map(|f| f.missing_rate.map(|m| (m, f.name.clone())))
        .fold(None::<(f64, String)>, |acc, (m, name)| match acc {
            Some((a, _)) if a >= m => acc,
            _ => Some((m, name)),
        });
    let r2_min = crate::gate::default_rules()
        .get("power")
        .and_then(|p| p.get("r2"))
        .and_then(|r| r.min);
    let expected = match &pull.expectations {
        Some(e) => crate::expect::check_now(e, &cols, &dataset.features),
        None => crate::expect::Outcome::default(),
    };
    let (verdict, reason) = if !expected.failed().is_empty() {
        (
            Verdict::Invalid,
            format!("expectations failed: {}", expected.summary()),
        )
    } else if let Some((m, name)) = max_missing.clone().filter(|(m, _)| *m > MAX_MISSING) {
        (
            Verdict::Invalid,
            format!(
                "{name} is missing in {:.1} % of the rows (at most {:.0} %)",
                100.0 * m,
                100.0 * MAX_MISSING
            ),
        )
    } else if cols.messages > 0
        && invalid_total as f64 / cols.messages as f64 > pull.max_invalid_ratio
    {
        (
            Verdict::Invalid,
            format!("{invalid_total} of {} messages are invalid", cols.messages),
        )
    } else if (n as u64) < s.min_rows {
        (
            Verdict::InsufficientData,
            format!(
                "{n} rows in the window, fewer than --min-rows {}",
                s.min_rows
            ),
        )
    } else if let Some(r) = perf
        .rmse_ratio
        .filter(|&r| r > DEGRADED_RATIO && perf.rmse_ratio_low.is_some_and(|lo| lo > 1.0))
    {
        (
            Verdict::Degraded,
            format!(
                "rmse {:.2} W is {r:.2}× production's test rmse {:.2} W (95 % interval {:.2}–{:.2})",
                perf.rmse.unwrap_or(f64::NAN),
                perf.stored_rmse.unwrap_or(f64::NAN),
                perf.rmse_ratio_low.unwrap_or(f64::NAN),
                perf.rmse_ratio_high.unwrap_or(f64::NAN)
            ),
        )
    } else if let Some((r2, min)) = perf.r2.zip(r2_min).filter(|(r2, min)| r2 < min) {
        (
            Verdict::Degraded,
            format!("r2 {r2:.3} is under the gate's minimum {min}"),
        )
    } else if drifted_share.is_some_and(|s| s >= DRIFT_SHARE) || top.iter().any(|&j| significant(j))
    {
        let names: Vec<&str> = (0..d)
            .filter(|&j| significant(j))
            .map(|j| features[j].name.as_str())
            .collect();
        (
            Verdict::Drift,
            format!(
                "significant drift in {} (attribution-weighted share {:.2})",
                names.join(", "),
                drifted_share.unwrap_or(0.0)
            ),
        )
    } else if features
        .iter()
        .any(|f| f.band == "watch" || f.band == "significant")
    {
        let names: Vec<&str> = features
            .iter()
            .filter(|f| f.band == "watch" || f.band == "significant")
            .map(|f| f.name.as_str())
            .collect();
        (
            Verdict::Watch,
            format!("in the watch band: {}", names.join(", ")),
        )
    } else {
        (
            Verdict::Ok,
            "no drift above the noise floor and no loss of accuracy".to_string(),
        )
    };

    // Dispatch: degraded, or drift twice in a row; never on invalid or too little data,
    // never within the cooldown of the last promotion or dispatch.
    let past = history(store.as_ref())?;
    let previous = past.iter().rev().find(|r| r.production_sha == pointer.sha);
    let wants = match verdict {
        Verdict::Degraded => true,
        Verdict::Drift => previous.is_some_and(|p| p.verdict == Verdict::Drift),
        _ => false,
    };
    let now = std::time::SystemTime::now();
    let cooldown = std::time::Duration::from_secs_f64(s.cooldown_hours * 3600.0);
    let recent = |t: &str| {
        parse_time(t).is_some_and(|t| now.duration_since(t).map_or(true, |age| age < cooldown))
    };
    let last_dispatch = past.iter().rev().find(|r| r.dispatched.is_some());
    let mut dispatched = None;
    let mut note = None;
    if wants {
        if recent(&pointer.promoted_at) {
            note = Some(format!(
                "not dispatched: production was promoted at {} (cooldown {} h)",
                pointer.promoted_at, s.cooldown_hours
            ));
        } else if let Some(p) = last_dispatch.filter(|p| recent(&p.time)) {
            note = Some(format!(
                "not dispatched: a retrain was dispatched at {} (cooldown {} h)",
                p.time, s.cooldown_hours
            ));
        } else if let Some(workflow) = &s.dispatch {
            let gh = crate::app::github_client(s.repo.as_deref(), config)?;
            let mut inputs = BTreeMap::new();
            inputs.insert("window".to_string(), window_text.clone());
            inputs.insert(
                "reason".to_string(),
                format!("monitor: {}: {reason}", verdict.as_str()),
            );
            gh.dispatch(workflow, &s.git_ref, &inputs)?;
            dispatched = Some(workflow.clone());
        } else {
            note = Some("a retrain is due: pass --dispatch retrain.yml to start it".to_string());
        }
    } else if verdict == Verdict::Drift {
        note = Some(
            "drift on one run: a retrain is dispatched when the next run finds it too".to_string(),
        );
    }

    let report = Report {
        format: FORMAT.into(),
        verdict,
        retrain: wants,
        reason,
        production_sha: pointer.sha.clone(),
        window: window_text,
        partitions: info.map(|i| i.partitions).unwrap_or_default(),
        messages: cols.messages,
        invalid: invalid_total,
        performance: perf,
        features,
        target,
        joint,
        prediction,
        expectations: expected.findings.clone(),
        drifted_share,
        top_features: top.iter().map(|&j| dataset.features[j].clone()).collect(),
        dispatched,
        dispatch_note: note,
        time: now_rfc3339(),
        seed: s.seed,
    };
    let mut markdown = render(&report);
    markdown.push_str(&history_chart(&past, &report));
    if markdown.len() > crate::report::COMMENT_LIMIT {
        let note =
            "\n\n_…cut to stay within GitHub's size limit; monitor.json has every figure._\n";
        let mut end = crate::report::COMMENT_LIMIT - note.len();
        while !markdown.is_char_boundary(end) {
            end -= 1;
        }
        markdown.truncate(end);
        markdown.push_str(note);
    }
    // The outputs, then the store's record.
    std::fs::create_dir_all(&s.out).map_err(|e| Error::write(&s.out, e))?;
    let json_bytes = serde_json::to_vec_pretty(&report).map_err(|e| Error::Internal(e.into()))?;
    crate::fsutil::write_atomic(&s.out.join("monitor.json"), &json_bytes)?;
    crate::fsutil::write_atomic(&s.out.join("monitor.md"), markdown.as_bytes())?;
    // Never over another run's record: a second run in the same millisecond gets a suffix.
    let stem = format!(
        "monitoring/{}-{}",
        report.time.replace(':', ""),
        &pointer.sha
    );
    for n in 0.. {
        let key = match n {
            0 => format!("{stem}.json"),
            n => format!("{stem}-{n}.json"),
        };
        match store.put(&key, &json_bytes, crate::store::Cond::IfAbsent)? {
            crate::store::Put::Written { .. } => break,
            crate::store::Put::ConditionFailed if n < 100 => continue,
            crate::store::Put::ConditionFailed => {
                return Err(Error::Store {
                    uri: store.uri(),
                    message: format!("{stem}.json and 100 suffixed keys are all taken"),
                    hint: "look at what writes under monitoring/ besides monitor".into(),
                })
            }
        }
    }
    Ok((report, markdown))
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.digits$}"))
}

/// The markdown report: verdict, performance, the top PSI as a bar chart, the table.
/// The rmse ratio over the store's monitoring history of this production version (the last
/// 30 runs, this one included) as a mermaid line chart; nothing with fewer than two points.
fn history_chart(past: &[Report], now: &Report) -> String {
    let mut points: Vec<f64> = past
        .iter()
        .filter(|r| r.production_sha == now.production_sha)
        .filter_map(|r| r.performance.rmse_ratio)
        .collect();
    points.extend(now.performance.rmse_ratio);
    let points = &points[points.len().saturating_sub(30)..];
    if points.len() < 2 {
        return String::new();
    }
    let xs: Vec<String> = (1..=points.len()).map(|i| i.to_string()).collect();
    let ys: Vec<String> = points.iter().map(|v| format!("{v:.4}")).collect();
    format!(
        "\n```mermaid\nxychart-beta\n    title \"rmse / test rmse over the last {} monitoring runs of `{}`\"\n    x-axis [{}]\n    y-axis \"ratio\"\n    line [{}]\n```\n",
        points.len(),
        now.production_sha,
        xs.join(", "),
        ys.join(", ")
    )
}

pub fn render(r: &Report) -> String {
    let mut md = format!(
        "## Monitoring production `{}`: **{}**\n\n{}\n\n",
        r.production_sha,
        r.verdict.as_str(),
        r.reason
    );
    let p = &r.performance;
    md.push_str(&format!(
        "Window `{}`: {} messages, {} rows from {} nodes, {} invalid.\n\n| rmse | mae | r2 | mape | test rmse | ratio (95 %) |\n|---:|---:|---:|---:|---:|---|\n| {} | {} | {} | {} | {} | {} ({}–{}) |\n\n",
        r.window, r.messages, p.rows, p.nodes, r.invalid,
        fmt(p.rmse, 2), fmt(p.mae, 2), fmt(p.r2, 4), fmt(p.mape, 2), fmt(p.stored_rmse, 2),
        fmt(p.rmse_ratio, 3), fmt(p.rmse_ratio_low, 3), fmt(p.rmse_ratio_high, 3)
    ));
    let j = &r.joint;
    if j.nll.is_some() {
        md.push_str(&format!(
            "Joint drift: EMSHAP's NLL on {} rows of the window {} ± {} nats per masked entry, against {} ± {} on its test rows (z = {}).\n\n",
            j.rows,
            fmt(j.nll, 4),
            fmt(j.nll_se, 4),
            fmt(j.stored_nll, 4),
            fmt(j.stored_nll_se, 4),
            fmt(j.z, 2)
        ));
    }
    let chart = crate::drift::psi_chart(
        &r.features,
        8,
        "PSI against production's train split (top 8)",
    );
    if !chart.is_empty() {
        md.push_str(&chart);
        md.push('\n');
    }
    md.push_str("| feature | band | PSI | noise | JS | KS | W1/σ | outside | missing |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for f in r
        .features
        .iter()
        .chain(r.target.iter())
        .chain(r.prediction.iter())
    {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            f.name,
            f.band,
            fmt(f.psi, 4),
            fmt(f.noise_floor, 4),
            fmt(f.js_distance, 3),
            fmt(f.ks, 3),
            fmt(f.w1_over_sd, 3),
            fmt(f.outside_range, 3),
            fmt(f.missing_rate, 3)
        ));
    }
    if let Some(w) = &r.dispatched {
        md.push_str(&format!("\nDispatched `{w}`.\n"));
    }
    if !r.expectations.is_empty() {
        md.push_str("\n### Expectations\n\n");
        md.push_str(&crate::expect::table(&r.expectations));
    }
    if let Some(n) = &r.dispatch_note {
        md.push_str(&format!("\n{n}.\n"));
    }
    md
}

/// `monitor`'s command: the settings from the flags, the run, the outputs.
pub fn command(
    args: &crate::cli::monitor::MonitorArgs,
    config: &ConfigFile,
    quiet: bool,
) -> Result<Outcome> {
    let pull = settings::resolve_pull(&args.pull, config)?;
    let fail_on = match args.fail_on.as_deref() {
        None | Some("") | Some("never") => None,
        Some("drift") => Some(Verdict::Drift),
        Some("degraded") => Some(Verdict::Degraded),
        Some(other) => {
            return Err(Error::usage(
                "--fail-on",
                format!("`{other}` (use drift or degraded)"),
            ))
        }
    };
    let s = MonitorSettings {
        after_production: args.pull.window.is_none(),
        pull,
        cap: args.cap.unwrap_or(200_000),
        store: settings::store_uri(args.store.store.as_deref(), config),
        out: args
            .results
            .clone()
            .unwrap_or_else(|| PathBuf::from("work/monitor")),
        min_rows: args.min_rows.unwrap_or(1000),
        dispatch: args.dispatch.clone().filter(|d| !d.is_empty()),
        cooldown_hours: args.cooldown_hours.unwrap_or(24.0),
        fail_on,
        repo: args.repo.clone(),
        git_ref: args.git_ref.clone().unwrap_or_else(|| "main".into()),
        seed: args.seed.unwrap_or(7),
    };
    let (report, markdown) = monitor(&s, config, quiet)?;
    let gha = crate::gha::Actions::from_env();
    gha.output("verdict", report.verdict.as_str())?;
    gha.output("retrain", if report.retrain { "true" } else { "false" })?;
    gha.output("reason", &report.reason)?;
    gha.summary(&markdown)?;
    let json = serde_json::to_value(&report).map_err(|e| Error::Internal(e.into()))?;
    let text = format!("{}: {}", report.verdict.as_str(), report.reason);
    if report.verdict == Verdict::Invalid {
        return Err(Error::data(format!(
            "monitor: the window is invalid: {}",
            report.reason
        )));
    }
    let fails = match s.fail_on {
        Some(Verdict::Drift) => matches!(report.verdict, Verdict::Drift | Verdict::Degraded),
        Some(Verdict::Degraded) => report.verdict == Verdict::Degraded,
        _ => false,
    };
    if fails {
        return Err(Error::GateFailed {
            message: format!(
                "monitor: {} ({}); --fail-on asked for a failure",
                report.verdict.as_str(),
                report.reason
            ),
        });
    }
    Ok(Outcome { text, json })
}
