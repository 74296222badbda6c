//! Data expectations (issue 16): what a window must look like, checked by `pull` and
//! `monitor`, and proposed from a snapshot's reference by `expect --init`.
//!
//! `[expectations]` in the config file (or the same keys in a file of their own,
//! `--expectations FILE`):
//!
//! ```toml
//! [expectations]
//! rows = { min = 1000 }            # the window's valid rows
//! freshness_minutes = 90           # the newest record's timestamp_ms at most this old
//! [expectations.features.cpu_util]
//! min = 0.0                        # values below min or above max …
//! max = 100.0
//! mostly = 0.999                   # … in at most 0.1 % of the rows (quarantined), else fail
//! max_missing = 0.02               # the share of rows without the feature
//! mean = { min = 20.0, max = 80.0 }
//! sd = { min = 2.0, max = 40.0 }
//! ```
//!
//! A value outside `min`/`max` in no more rows than `mostly` allows is quarantined
//! (`unexpected_value`, with the feature, the value and its offset) and left out of the
//! snapshot; every other violation fails the pull (exit 4) with a table of what failed, how
//! many rows, and examples with their offsets. `power_watts`, the target, may be named too.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pull::decode::Columns;
use crate::pull::reference::ColumnReference;

/// A closed range; either end may be absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl Bounds {
    fn holds(&self, v: f64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }

    fn text(&self) -> String {
        match (self.min, self.max) {
            (Some(a), Some(b)) => format!("{a} to {b}"),
            (Some(a), None) => format!("≥ {a}"),
            (None, Some(b)) => format!("≤ {b}"),
            (None, None) => "any".into(),
        }
    }
}

/// One feature's expectations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureExpectation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The share of observed rows that must lie within min..max (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mostly: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_missing: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Bounds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sd: Option<Bounds>,
}

/// `[expectations]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Bounds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness_minutes: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, FeatureExpectation>,
}

impl Expectations {
    pub fn is_empty(&self) -> bool {
        self.rows.is_none() && self.freshness_minutes.is_none() && self.features.is_empty()
    }

    /// Reads an expectations file (the keys of `[expectations]` at its top level, or under an
    /// `[expectations]` table).
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e} (give an expectations TOML file)"),
        })?;
        let bad = |e: toml::de::Error| Error::Config {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(bad)?;
        let table = match table.get("expectations") {
            Some(toml::Value::Table(t)) if table.len() == 1 => t.clone(),
            _ => table,
        };
        toml::Table::try_into(table).map_err(bad)
    }

    /// Refuses what cannot be checked: a feature the pull does not read, `mostly` outside
    /// (0, 1], a range whose ends are reversed, a negative freshness.
    pub fn validate(&self, features: &[String], what: &str) -> Result<()> {
        let bad = |m: String| Error::usage(what, m);
        for (name, f) in &self.features {
            if name != crate::schema::TARGET && !features.contains(name) {
                return Err(bad(format!(
                    "expectations for `{name}`, which is not a selected feature (features: {}, or {})",
                    features.join(", "),
                    crate::schema::TARGET
                )));
            }
            if let Some(m) = f.mostly {
                if !(m > 0.0 && m <= 1.0) {
                    return Err(bad(format!("{name}.mostly = {m}: give a share in (0, 1]")));
                }
            }
            if let Some(m) = f.max_missing {
                if !(0.0..=1.0).contains(&m) {
                    return Err(bad(format!(
                        "{name}.max_missing = {m}: give a share in [0, 1]"
                    )));
                }
            }
            let ranges = [
                (
                    "min..max",
                    Some(Bounds {
                        min: f.min,
                        max: f.max,
                    }),
                ),
                ("mean", f.mean),
                ("sd", f.sd),
            ];
            for (key, b) in ranges {
                if let Some(Bounds {
                    min: Some(a),
                    max: Some(b),
                }) = b
                {
                    if a > b {
                        return Err(bad(format!("{name}.{key}: {a} > {b}")));
                    }
                }
            }
        }
        if let Some(m) = self.freshness_minutes {
            if !(m.is_finite() && m > 0.0) {
                return Err(bad(format!("freshness_minutes = {m}: give minutes > 0")));
            }
        }
        Ok(())
    }
}

/// A row of the expectations table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    /// `cpu_util.max`, `gpu_util.max_missing`, `rows.min`, `freshness_minutes`, …
    pub expectation: String,
    pub expected: String,
    pub observed: String,
    /// Rows that break it (for the aggregate ones: the rows it was computed on).
    pub rows: u64,
    /// Up to five (partition, offset, value) of rows that break it (no value: missing).
    pub examples: Vec<(i32, i64, Option<f64>)>,
    /// Whether the whole check fails (else its rows are only quarantined).
    pub failed: bool,
}

/// What the check found: failures (the window is refused), and rows to quarantine.
#[derive(Debug, Default)]
pub struct Outcome {
    pub findings: Vec<Finding>,
    /// Row indexes (ascending) to quarantine, with the reason's detail.
    pub quarantine: Vec<(usize, String)>,
}

impl Outcome {
    pub fn failed(&self) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.failed).collect()
    }

    /// The markdown table of the findings.
    pub fn table(&self) -> String {
        table(&self.findings)
    }

    /// The one-line summary of the failures, for the error.
    pub fn summary(&self) -> String {
        self.failed()
            .iter()
            .map(|f| {
                format!(
                    "{} (expected {}, observed {})",
                    f.expectation, f.expected, f.observed
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The markdown table of `findings`: what, expected, observed, rows, examples, result.
pub fn table(findings: &[Finding]) -> String {
    let mut s = String::from(
        "| expectation | expected | observed | rows | examples (partition/offset: value) | result |\n|---|---|---|---:|---|---|\n",
    );
    for f in findings {
        let ex: Vec<String> = f
            .examples
            .iter()
            .map(|(p, o, v)| match v {
                None => format!("{p}/{o}: missing"),
                Some(v) => format!("{p}/{o}: {v}"),
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            f.expectation,
            f.expected,
            f.observed,
            f.rows,
            ex.join(", "),
            if f.failed {
                "✗ failed"
            } else {
                "quarantined"
            }
        );
    }
    s
}

const EXAMPLES: usize = 5;

/// Checks `cols` (the window's valid rows; `names` are its feature columns) against `e`.
/// `now_ms` is the time freshness is measured from.
pub fn check(e: &Expectations, cols: &Columns, names: &[String], now_ms: i64) -> Outcome {
    let mut out = Outcome::default();
    let n = cols.rows();
    let d = cols.d;
    let at = |i: usize| (cols.partition[i], cols.offset[i]);
    if let Some(b) = e.rows {
        if !b.holds(n as f64) {
            out.findings.push(Finding {
                expectation: "rows".into(),
                expected: b.text(),
                observed: n.to_string(),
                rows: n as u64,
                examples: Vec::new(),
                failed: true,
            });
        }
    }
    if let Some(minutes) = e.freshness_minutes {
        let newest = cols.timestamp.iter().copied().max();
        let age = newest.map(|t| (now_ms - t) as f64 / 60_000.0);
        if age.is_none_or(|a| a > minutes) {
            let last = (0..n).max_by_key(|&i| cols.timestamp[i]);
            out.findings.push(Finding {
                expectation: "freshness_minutes".into(),
                expected: format!("newest record at most {minutes} min old"),
                observed: age.map_or("no records".into(), |a| format!("{a:.1} min old")),
                rows: n as u64,
                examples: last
                    .map(|i| vec![(at(i).0, at(i).1, Some(cols.timestamp[i] as f64))])
                    .unwrap_or_default(),
                failed: true,
            });
        }
    }
    let mut quarantined: BTreeMap<usize, String> = BTreeMap::new();
    for (name, f) in &e.features {
        // The feature's column (found once), or the target.
        let column = names.iter().position(|x| x == name);
        let value = |i: usize| -> f64 {
            match column {
                Some(j) => f64::from(cols.values[i * d + j]),
                None => f64::from(cols.power[i]),
            }
        };
        let observed: Vec<usize> = (0..n).filter(|&i| !value(i).is_nan()).collect();
        let missing = n - observed.len();
        if let Some(max) = f.max_missing {
            let rate = if n == 0 {
                0.0
            } else {
                missing as f64 / n as f64
            };
            if rate > max {
                out.findings.push(Finding {
                    expectation: format!("{name}.max_missing"),
                    expected: format!("≤ {:.2} % missing", 100.0 * max),
                    observed: format!("{:.2} % missing", 100.0 * rate),
                    rows: missing as u64,
                    examples: (0..n)
                        .filter(|&i| value(i).is_nan())
                        .take(EXAMPLES)
                        .map(|i| (at(i).0, at(i).1, None))
                        .collect(),
                    failed: true,
                });
            }
        }
        let range = Bounds {
            min: f.min,
            max: f.max,
        };
        if range.min.is_some() || range.max.is_some() {
            let outside: Vec<usize> = observed
                .iter()
                .copied()
                .filter(|&i| !range.holds(value(i)))
                .collect();
            if !outside.is_empty() {
                let mostly = f.mostly.unwrap_or(1.0);
                let within = 1.0 - outside.len() as f64 / observed.len() as f64;
                let failed = within < mostly;
                let key = match (
                    outside.iter().any(|&i| f.min.is_some_and(|m| value(i) < m)),
                    outside.iter().any(|&i| f.max.is_some_and(|m| value(i) > m)),
                ) {
                    (true, false) => "min",
                    (false, true) => "max",
                    _ => "min..max",
                };
                out.findings.push(Finding {
                    expectation: format!("{name}.{key}"),
                    expected: format!("{} in ≥ {:.2} % of rows", range.text(), 100.0 * mostly),
                    observed: format!("{:.2} % within", 100.0 * within),
                    rows: outside.len() as u64,
                    examples: outside
                        .iter()
                        .take(EXAMPLES)
                        .map(|&i| (at(i).0, at(i).1, Some(value(i))))
                        .collect(),
                    failed,
                });
                if !failed {
                    for &i in &outside {
                        quarantined.entry(i).or_insert_with(|| {
                            format!("{name} = {} outside {}", value(i), range.text())
                        });
                    }
                }
            }
        }
        let (mean, sd) = moments(observed.iter().map(|&i| value(i)));
        for (key, b, v) in [("mean", f.mean, mean), ("sd", f.sd, sd)] {
            let (Some(b), Some(v)) = (b, v) else { continue };
            if !b.holds(v) {
                out.findings.push(Finding {
                    expectation: format!("{name}.{key}"),
                    expected: b.text(),
                    observed: format!("{v:.4}"),
                    rows: observed.len() as u64,
                    examples: Vec::new(),
                    failed: true,
                });
            }
        }
    }
    out.quarantine = quarantined.into_iter().collect();
    out
}

/// `check` against the current time.
pub fn check_now(e: &Expectations, cols: &Columns, names: &[String]) -> Outcome {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    check(e, cols, names, now)
}

/// Mean and sample sd (None without values; sd None with one).
fn moments(values: impl Iterator<Item = f64>) -> (Option<f64>, Option<f64>) {
    let (mut n, mut mean, mut m2) = (0u64, 0.0f64, 0.0f64);
    for v in values {
        n += 1;
        let delta = v - mean;
        mean += delta / n as f64;
        m2 += delta * (v - mean);
    }
    match n {
        0 => (None, None),
        1 => (Some(mean), None),
        _ => (Some(mean), Some((m2 / (n - 1) as f64).sqrt())),
    }
}

/// Expectations proposed from a snapshot's train-split reference, for review: per feature
/// the observed range widened by 10 % of its width on each side (`mostly` 0.999), the
/// missing rate allowed to double (at least 1 %), the mean within half an sd of the
/// reference's and the sd within a factor 2; the window at least half as many rows.
pub fn propose(reference: &[ColumnReference], rows: u64) -> Expectations {
    let round = |v: f64| {
        if v == 0.0 || !v.is_finite() {
            return v;
        }
        let digits = 4 - v.abs().log10().floor() as i32;
        let f = 10f64.powi(digits);
        (v * f).round() / f
    };
    let mut features = BTreeMap::new();
    for r in reference {
        if r.quantiles.len() != 101 {
            continue;
        }
        let (lo, hi) = (r.quantiles[0], r.quantiles[100]);
        let pad = 0.1 * (hi - lo);
        let total = (r.count + r.missing).max(1) as f64;
        let missing = r.missing as f64 / total;
        features.insert(
            r.name.clone(),
            FeatureExpectation {
                // A bound at 0 stays at 0 (utilisations, counters): never propose negatives
                // for a feature that had none.
                min: Some(round(if lo >= 0.0 {
                    (lo - pad).max(0.0)
                } else {
                    lo - pad
                })),
                max: Some(round(hi + pad)),
                mostly: Some(0.999),
                max_missing: Some(round((2.0 * missing).max(0.01))),
                mean: Some(Bounds {
                    min: Some(round(r.mean - 0.5 * r.sd)),
                    max: Some(round(r.mean + 0.5 * r.sd)),
                }),
                sd: Some(Bounds {
                    min: Some(round(0.5 * r.sd)),
                    max: Some(round(2.0 * r.sd)),
                }),
            },
        );
    }
    Expectations {
        rows: Some(Bounds {
            min: Some((rows / 2) as f64),
            max: None,
        }),
        freshness_minutes: None,
        features,
    }
}

/// `expect --init`: the proposal as TOML, printed or written to `--out`.
pub fn command(args: &crate::cli::expect::ExpectArgs) -> Result<crate::app::Outcome> {
    if !args.init {
        return Err(Error::usage(
            "expect",
            "nothing to do: give --init to propose expectations from a snapshot",
        ));
    }
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("work/data"));
    let path = data.join(crate::artifacts::DATASET_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::read(&path, e))?;
    let dataset: crate::pull::Dataset = serde_json::from_slice(&bytes).map_err(|e| {
        Error::usage(
            "--data",
            format!("{} is not a dataset.json: {e}", path.display()),
        )
    })?;
    if dataset.reference.is_empty() {
        return Err(Error::usage(
            "--data",
            format!(
                "{} has no train-split reference (format {}; pull it again with this version)",
                path.display(),
                dataset.format
            ),
        ));
    }
    let train_rows = dataset.split.get("train").map_or(0, |s| s.rows);
    let e = propose(&dataset.reference, dataset.counts.rows);
    let body = toml::to_string(&e).map_err(|e| Error::Internal(e.into()))?;
    let text = format!(
        "# Proposed by `emshap-ci expect --init` from {} ({} train rows, snapshot {}).\n\
         # Review before use: the ranges are the train split's, widened; tighten what you know.\n\n\
         [expectations]\n\
         # freshness_minutes = 60   # uncomment for a stream that must be current\n\n{}",
        path.display(),
        train_rows,
        &dataset.snapshot_sha256[..dataset.snapshot_sha256.len().min(12)],
        body.replace("[features.", "[expectations.features.")
            .replace("[rows]", "[expectations.rows]")
    );
    if let Some(out) = &args.out {
        if out.exists() {
            return Err(Error::usage(
                "--out",
                format!(
                    "{} exists; not replaced (remove it or give another path)",
                    out.display()
                ),
            ));
        }
        crate::fsutil::write_atomic(out, text.as_bytes())?;
    }
    Ok(crate::app::Outcome {
        text: if let Some(out) = &args.out {
            format!(
                "wrote {} expectations for {} features to {}",
                e.features
                    .values()
                    .map(|f| [
                        f.min.is_some(),
                        f.max.is_some(),
                        f.max_missing.is_some(),
                        f.mean.is_some(),
                        f.sd.is_some()
                    ]
                    .iter()
                    .filter(|b| **b)
                    .count())
                    .sum::<usize>(),
                e.features.len(),
                out.display()
            )
        } else {
            text.trim_end().to_string()
        },
        json: serde_json::json!({"command": "expect", "ok": true, "expectations": e}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(values: &[[f32; 2]], ts: &[i64]) -> Columns {
        let mut c = Columns::new(2);
        for (i, row) in values.iter().enumerate() {
            c.values.extend_from_slice(row);
            c.power.push(100.0 + i as f32);
            c.timestamp.push(ts[i]);
            c.node.push(0);
            c.partition.push(i as i32 % 2);
            c.offset.push(i as i64 * 10);
        }
        c
    }

    fn names() -> Vec<String> {
        vec!["cpu_util".into(), "gpu_util".into()]
    }

    #[test]
    fn each_kind_of_violation_is_found_with_its_rows_and_offsets() {
        let mut v: Vec<[f32; 2]> = (0..100).map(|i| [i as f32, 50.0]).collect();
        v[7][0] = 150.0; // one value over max: 99 % within
        v[3][1] = f32::NAN;
        v[4][1] = f32::NAN;
        let ts: Vec<i64> = (0..100).map(|i| 1_000_000 + i).collect();
        let c = cols(&v, &ts);
        let text = r#"
            rows = { min = 10, max = 1000 }
            freshness_minutes = 1.0
            [features.cpu_util]
            max = 100.0
            mostly = 0.98
            mean = { min = 40.0, max = 60.0 }
            [features.gpu_util]
            max_missing = 0.01
            sd = { max = 1.0 }
        "#;
        let e: Expectations = toml::from_str(text).unwrap();
        e.validate(&names(), "expectations").unwrap();
        // 2 minutes after the newest record: too old.
        let o = check(&e, &c, &names(), 1_000_099 + 120_000);
        let by: BTreeMap<&str, &Finding> = o
            .findings
            .iter()
            .map(|f| (f.expectation.as_str(), f))
            .collect();
        let over = by["cpu_util.max"];
        assert!(!over.failed, "99 % within ≥ 98 %: quarantined, not failed");
        assert_eq!((over.rows, over.examples[0]), (1, (1, 70, Some(150.0))));
        assert_eq!(o.quarantine.len(), 1);
        assert_eq!(o.quarantine[0].0, 7);
        let missing = by["gpu_util.max_missing"];
        assert!(missing.failed && missing.rows == 2, "{missing:?}");
        assert_eq!((missing.examples[0].0, missing.examples[0].1), (1, 30));
        assert!(by["freshness_minutes"].failed);
        assert!(!by.contains_key("rows"), "100 rows are within 10..1000");
        assert!(!by.contains_key("gpu_util.sd"), "a constant has sd 0 ≤ 1");
        // mean of 0..99 with one 150: 50.5 within 40..60.
        assert!(!by.contains_key("cpu_util.mean"));
        assert_eq!(o.failed().len(), 2);
        let table = o.table();
        assert!(
            table.contains("| cpu_util.max |") && table.contains("1/70: 150"),
            "{table}"
        );
        // Stricter: mostly 1 fails the range; a fresh window passes freshness.
        let e2 = Expectations {
            features: [(
                "cpu_util".to_string(),
                FeatureExpectation {
                    max: Some(100.0),
                    ..Default::default()
                },
            )]
            .into(),
            freshness_minutes: Some(1.0),
            rows: Some(Bounds {
                min: Some(101.0),
                max: None,
            }),
        };
        let o = check(&e2, &c, &names(), 1_000_099 + 30_000);
        let failed: Vec<&str> = o.failed().iter().map(|f| f.expectation.as_str()).collect();
        assert_eq!(failed, ["rows", "cpu_util.max"]);
        assert!(
            o.quarantine.is_empty(),
            "a failed range quarantines nothing"
        );
    }

    #[test]
    fn bad_expectations_are_refused_by_name() {
        let e: Expectations = toml::from_str("[features.nope]\nmax = 1.0\n").unwrap();
        let err = e
            .validate(&names(), "expectations")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`nope`"), "{err}");
        let e: Expectations = toml::from_str("[features.cpu_util]\nmostly = 1.5\n").unwrap();
        assert!(e
            .validate(&names(), "x")
            .unwrap_err()
            .to_string()
            .contains("mostly"));
        let e: Expectations =
            toml::from_str("[features.cpu_util]\nmin = 5.0\nmax = 1.0\n").unwrap();
        assert!(e.validate(&names(), "x").is_err());
        assert!(toml::from_str::<Expectations>("[features.cpu_util]\nmaxx = 1.0\n").is_err());
        // The target may be named.
        let e: Expectations = toml::from_str("[features.power_watts]\nmin = 0.0\n").unwrap();
        e.validate(&names(), "x").unwrap();
    }

    #[test]
    fn proposed_expectations_accept_the_data_they_came_from() {
        let v: Vec<[f32; 2]> = (0..1000)
            .map(|i| {
                [
                    (i % 97) as f32,
                    if i % 3 == 0 { 0.0 } else { (i % 41) as f32 },
                ]
            })
            .collect();
        let ts: Vec<i64> = (0..1000).collect();
        let c = cols(&v, &ts);
        let refs: Vec<ColumnReference> = (0..2)
            .map(|j| {
                let col: Vec<f32> = v.iter().map(|r| r[j]).collect();
                crate::pull::reference::column(&names()[j], &col)
            })
            .collect();
        let e = propose(&refs, 1000);
        assert_eq!(
            e.features["gpu_util"].min,
            Some(0.0),
            "no negative bound for a ≥ 0 feature"
        );
        let toml_text = toml::to_string(&e).unwrap();
        let back: Expectations = toml::from_str(&toml_text).unwrap();
        assert_eq!(back, e);
        let o = check(&back, &c, &names(), 0);
        assert!(o.findings.is_empty(), "{:?}", o.findings);
    }
}
