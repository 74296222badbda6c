//! Drift of a new raw window against a version's train-split reference (DESIGN §13,
//! issue 16): PSI on the reference's deciles (tied edges merged, atoms as their own bins,
//! +0.5 pseudo-count per bin), the Jensen–Shannon distance on the same bins, a KS statistic
//! and W1/σ from the 101 reference quantiles, the share of new values outside the reference
//! range and the missing rates. Each figure needs only the reference and the new values, so
//! PSI is exact for any window (the bins are the reference's own).

use serde::{Deserialize, Serialize};

use crate::pull::reference::ColumnReference;

/// PSI bands: below `WATCH` stable, up to `SIGNIFICANT` watch, above significant.
pub const WATCH: f64 = 0.10;
pub const SIGNIFICANT: f64 = 0.25;
/// Pseudo-count added to every bin of both distributions.
pub const PSEUDO: f64 = 0.5;

/// One bin: a value interval (lo, hi] or a single atom.
#[derive(Debug, Clone, PartialEq)]
pub enum Bin {
    /// Values v with lo < v ≤ hi that are not atoms (lo = −∞ for the first, hi = +∞ for
    /// the last).
    Range {
        lo: f64,
        hi: f64,
    },
    Atom(f64),
}

/// The bins of a reference: its deciles' edges (q10 … q90, tied ones merged), and each atom
/// as a bin of its own.
pub fn bins(r: &ColumnReference) -> Vec<Bin> {
    let mut edges: Vec<f64> = Vec::new();
    if r.quantiles.len() == 101 {
        for k in (10..100).step_by(10) {
            let e = r.quantiles[k];
            if edges.last() != Some(&e) {
                edges.push(e);
            }
        }
    }
    let mut out = Vec::new();
    let mut lo = f64::NEG_INFINITY;
    for &e in edges.iter().chain(std::iter::once(&f64::INFINITY)) {
        out.push(Bin::Range { lo, hi: e });
        lo = e;
    }
    out.extend(r.atoms.iter().map(|a| Bin::Atom(a.value)));
    out
}

/// Counts of `values` (NaN = missing, skipped) in `bins`.
pub fn counts(bins: &[Bin], values: impl IntoIterator<Item = f64>) -> Vec<u64> {
    let atoms: Vec<(usize, f64)> = bins
        .iter()
        .enumerate()
        .filter_map(|(i, b)| match b {
            Bin::Atom(v) => Some((i, *v)),
            _ => None,
        })
        .collect();
    let ranges: Vec<f64> = bins
        .iter()
        .filter_map(|b| match b {
            Bin::Range { hi, .. } => Some(*hi),
            _ => None,
        })
        .collect();
    let mut c = vec![0u64; bins.len()];
    for v in values {
        if v.is_nan() {
            continue;
        }
        if let Some(&(i, _)) = atoms.iter().find(|(_, a)| *a == v) {
            c[i] += 1;
            continue;
        }
        // The first range whose upper edge is ≥ v.
        let i = ranges.partition_point(|&hi| hi < v);
        c[i] += 1;
    }
    c
}

/// The reference's counts per bin: the ones the pull counted on the train split's raw
/// values (exact), or for a reference without them an estimate from the quantile grid
/// (F(q_k) ≈ k/100, wrong where ties sit at an edge); the flag says which.
pub fn reference_counts(r: &ColumnReference, bins: &[Bin]) -> (Vec<f64>, bool) {
    if r.bin_counts.len() == bins.len() {
        return (r.bin_counts.iter().map(|&c| c as f64).collect(), true);
    }
    let n = r.count as f64;
    let atom_share = |v: f64| {
        r.atoms
            .iter()
            .find(|a| a.value == v)
            .map_or(0.0, |a| a.share)
    };
    let mut out = Vec::with_capacity(bins.len());
    let mut prev = 0.0;
    for b in bins {
        match b {
            Bin::Range { hi, .. } => {
                let f = if *hi == f64::INFINITY {
                    1.0
                } else {
                    r.quantiles.iter().rposition(|q| q == hi).unwrap_or(100) as f64 / 100.0
                };
                out.push((f - prev).max(0.0) * n);
                prev = f;
            }
            Bin::Atom(v) => out.push(atom_share(*v) * n),
        }
    }
    (out, false)
}

/// PSI between reference counts `e` and new counts `a` (same bins), with the pseudo-count.
pub fn psi(e: &[f64], a: &[f64]) -> f64 {
    let (se, sa) = (
        e.iter().sum::<f64>() + PSEUDO * e.len() as f64,
        a.iter().sum::<f64>() + PSEUDO * a.len() as f64,
    );
    e.iter()
        .zip(a)
        .map(|(&x, &y)| {
            let p = (x + PSEUDO) / se;
            let q = (y + PSEUDO) / sa;
            (q - p) * (q / p).ln()
        })
        .sum()
}

/// The Jensen–Shannon distance (base 2, in [0, 1]) between the two (pseudo-counted) bin
/// distributions.
pub fn js_distance(e: &[f64], a: &[f64]) -> f64 {
    let (se, sa) = (
        e.iter().sum::<f64>() + PSEUDO * e.len() as f64,
        a.iter().sum::<f64>() + PSEUDO * a.len() as f64,
    );
    let mut d = 0.0;
    for (&x, &y) in e.iter().zip(a) {
        let p = (x + PSEUDO) / se;
        let q = (y + PSEUDO) / sa;
        let m = 0.5 * (p + q);
        d += 0.5 * (p * (p / m).log2() + q * (q / m).log2());
    }
    d.max(0.0).sqrt()
}

/// The χ² quantile at p = 0.99 with `k` degrees of freedom (Wilson–Hilferty; within 1 % for
/// k ≥ 2, which is all this needs).
pub fn chi2_99(k: usize) -> f64 {
    let k = k.max(1) as f64;
    let z = 2.326_347_874_040_841;
    let h = 2.0 / (9.0 * k);
    k * (1.0 - h + z * h.sqrt()).powi(3)
}

/// PSI's sampling noise level: PSI of two samples of sizes n and m from one distribution
/// is ≈ (1/n + 1/m)·χ²_{B−1}; its 99th percentile.
pub fn noise_floor(n: u64, m: u64, bins: usize) -> f64 {
    if n == 0 || m == 0 {
        return f64::INFINITY;
    }
    (1.0 / n as f64 + 1.0 / m as f64) * chi2_99(bins.saturating_sub(1))
}

/// One feature's drift, every figure defined or `None` (an empty window).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureDrift {
    pub name: String,
    pub rows: u64,
    pub psi: Option<f64>,
    pub noise_floor: Option<f64>,
    /// `stable`, `watch` or `significant` (a band only counts above the noise floor), or
    /// `unknown` without a reference.
    pub band: String,
    pub js_distance: Option<f64>,
    pub ks: Option<f64>,
    pub w1_over_sd: Option<f64>,
    pub outside_range: Option<f64>,
    pub missing_rate: Option<f64>,
    pub reference_missing_rate: Option<f64>,
}

/// The empirical quantile of sorted values at share p (the smallest x with F(x) ≥ p).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let r = ((p * n as f64).ceil() as usize).clamp(1, n);
    sorted[r - 1]
}

impl FeatureDrift {
    /// A feature without drift figures (`unknown`): no reference, or nothing to compare.
    fn unknown(
        name: &str,
        rows: u64,
        missing_rate: Option<f64>,
        reference_missing_rate: Option<f64>,
    ) -> Self {
        FeatureDrift {
            name: name.to_string(),
            rows,
            psi: None,
            noise_floor: None,
            band: "unknown".into(),
            js_distance: None,
            ks: None,
            w1_over_sd: None,
            outside_range: None,
            missing_rate,
            reference_missing_rate,
        }
    }
}

/// Drift of `values` (raw, NaN = missing) of the feature `name` against its reference `r`;
/// without one, only its rows and missing rate.
pub fn feature_or_unknown(name: &str, r: Option<&ColumnReference>, values: &[f64]) -> FeatureDrift {
    match r {
        Some(r) => feature(r, values),
        None => {
            let missing = values.iter().filter(|v| v.is_nan()).count();
            FeatureDrift::unknown(
                name,
                (values.len() - missing) as u64,
                (!values.is_empty()).then(|| missing as f64 / values.len() as f64),
                None,
            )
        }
    }
}

/// Drift of `values` (raw, NaN = missing) against `r`.
pub fn feature(r: &ColumnReference, values: &[f64]) -> FeatureDrift {
    let missing = values.iter().filter(|v| v.is_nan()).count() as u64;
    let mut seen: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    seen.sort_by(f64::total_cmp);
    let n_ref = r.count;
    let total_ref = r.count + r.missing;
    let reference_missing_rate = (total_ref > 0).then(|| r.missing as f64 / total_ref as f64);
    let missing_rate = (!values.is_empty()).then(|| missing as f64 / values.len() as f64);
    if seen.is_empty() || r.quantiles.len() != 101 || n_ref == 0 {
        return FeatureDrift::unknown(
            &r.name,
            seen.len() as u64,
            missing_rate,
            reference_missing_rate,
        );
    }
    let b = bins(r);
    let (e, _exact) = reference_counts(r, &b);
    let a: Vec<f64> = counts(&b, seen.iter().copied())
        .into_iter()
        .map(|c| c as f64)
        .collect();
    let psi_v = psi(&e, &a);
    let floor = noise_floor(n_ref, seen.len() as u64, b.len());
    let band = if psi_v > SIGNIFICANT && psi_v > floor {
        "significant"
    } else if psi_v > WATCH && psi_v > floor {
        "watch"
    } else {
        "stable"
    };
    // KS on the reference's grid: |F_new(q_k) − F_ref(q_k)| with F_ref(q_k) = k/100.
    let m = seen.len() as f64;
    let ks = (0..=100)
        .map(|k| {
            let q = r.quantiles[k];
            let f_new = seen.partition_point(|&v| v <= q) as f64 / m;
            (f_new - k as f64 / 100.0).abs()
        })
        .fold(0.0, f64::max);
    // W1 ≈ the mean gap between the two quantile functions on the 1 % grid.
    let w1 = (0..=100)
        .map(|k| (quantile(&seen, k as f64 / 100.0) - r.quantiles[k]).abs())
        .sum::<f64>()
        / 101.0;
    let (lo, hi) = (r.quantiles[0], r.quantiles[100]);
    let outside = seen.iter().filter(|&&v| v < lo || v > hi).count() as f64 / m;
    FeatureDrift {
        name: r.name.clone(),
        rows: seen.len() as u64,
        psi: Some(psi_v),
        noise_floor: Some(floor),
        band: band.into(),
        js_distance: Some(js_distance(&e, &a)),
        ks: Some(ks),
        w1_over_sd: (r.sd > 0.0).then(|| w1 / r.sd),
        outside_range: Some(outside),
        missing_rate,
        reference_missing_rate,
    }
}

/// The candidate's training data against production's train-split reference (issue 16's
/// data section of the PR check and the main report).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingDrift {
    /// The production version whose reference it is.
    pub production_sha: String,
    /// The candidate's train rows.
    pub rows: u64,
    /// Per feature (in the candidate's order), then the target.
    pub features: Vec<FeatureDrift>,
}

impl TrainingDrift {
    /// The features (not the target) in the watch band or above, most drifted first.
    pub fn moved(&self) -> Vec<&FeatureDrift> {
        let mut v: Vec<&FeatureDrift> = self
            .features
            .iter()
            .filter(|f| f.band == "watch" || f.band == "significant")
            .collect();
        v.sort_by(|a, b| b.psi.unwrap_or(0.0).total_cmp(&a.psi.unwrap_or(0.0)));
        v
    }
}

/// A mermaid bar chart of the largest PSIs (at most `top`), or nothing without figures.
pub fn psi_chart(features: &[FeatureDrift], top: usize, title: &str) -> String {
    let mut by_psi: Vec<&FeatureDrift> = features.iter().filter(|f| f.psi.is_some()).collect();
    by_psi.sort_by(|a, b| b.psi.unwrap_or(0.0).total_cmp(&a.psi.unwrap_or(0.0)));
    if by_psi.is_empty() {
        return String::new();
    }
    let top: Vec<&FeatureDrift> = by_psi.into_iter().take(top).collect();
    let names: Vec<String> = top.iter().map(|f| format!("\"{}\"", f.name)).collect();
    let psis: Vec<String> = top
        .iter()
        .map(|f| format!("{:.4}", f.psi.unwrap_or(0.0)))
        .collect();
    format!(
        "```mermaid\nxychart-beta\n    title \"{title}\"\n    x-axis [{}]\n    bar [{}]\n```\n",
        names.join(", "),
        psis.join(", ")
    )
}

/// Undoes the f32 rounding of standardisation where it matters: a value converted back
/// from its standardised form lands within a few ulps of, not on, the value it was (0 for
/// a GPU-less node's `gpu_util` comes back as −3e-6), which moves it out of an atom's bin
/// or across a tied decile edge. Each value within that rounding of one of the reference's
/// quantiles or atoms (the only values where the bins, KS and the range change) is taken as
/// that value.
fn snap(values: &mut [f64], r: &ColumnReference, mean: f64, sd: f64) {
    let mut special: Vec<f64> = r.quantiles.clone();
    special.extend(r.atoms.iter().map(|a| a.value));
    special.sort_by(f64::total_cmp);
    special.dedup();
    if special.is_empty() {
        return;
    }
    for v in values.iter_mut().filter(|v| !v.is_nan()) {
        // |z| ulps of f32 (2^-24 relative) times sd, plus the mean's own rounding.
        let tol = 4.0 * f64::from(f32::EPSILON) * (v.abs() + mean.abs() + sd);
        let i = special.partition_point(|&s| s < *v);
        for k in [i.saturating_sub(1), i.min(special.len() - 1)] {
            if (special[k] - *v).abs() <= tol {
                *v = special[k];
                break;
            }
        }
    }
}

/// Drift of a snapshot's train split (`train.parquet`: standardised features, imputed with
/// the scaler's mean where missing, and the raw target) against `reference` (production's).
/// The features are converted back with `scaler`; the imputed values of each (`imputed`,
/// per feature, as the snapshot's split info counts them) are exactly the scaler's mean,
/// standardised to 0, so that many zeros are counted as missing again: the figures are
/// those of the raw train split, to the f32 rounding of the standardised values.
pub fn training_split(
    reference: &[ColumnReference],
    imputed: &[u64],
    train: &std::path::Path,
    scaler: &crate::pull::snapshot::Scaler,
    target: &str,
) -> crate::error::Result<Vec<FeatureDrift>> {
    use arrow_array::{Array, Float32Array, Float64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let bad = |why: String| crate::error::Error::data(format!("{}: {why}", train.display()));
    let file = std::fs::File::open(train).map_err(|e| crate::error::Error::read(train, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| bad(format!("cannot be read: {e}")))?;
    let mut out = Vec::new();
    let mut columns: Vec<(String, Option<usize>, Vec<f64>)> = scaler
        .features
        .iter()
        .enumerate()
        .map(|(j, n)| (n.clone(), Some(j), Vec::new()))
        .collect();
    columns.push((target.to_string(), None, Vec::new()));
    for batch in reader {
        let batch = batch.map_err(|e| bad(format!("cannot be read: {e}")))?;
        for (name, j, values) in &mut columns {
            let a = batch
                .column_by_name(name)
                .ok_or_else(|| bad(format!("has no column `{name}`")))?;
            let raw: Vec<f64> = if let Some(a) = a.as_any().downcast_ref::<Float32Array>() {
                a.values().iter().map(|&v| f64::from(v)).collect()
            } else if let Some(a) = a.as_any().downcast_ref::<Float64Array>() {
                a.values().to_vec()
            } else {
                return Err(bad(format!(
                    "column `{name}` is {}, not float",
                    a.data_type()
                )));
            };
            match j {
                Some(j) => {
                    let (m, sd) = (scaler.mean[*j], scaler.std[*j]);
                    values.extend(
                        raw.iter()
                            .map(|&z| if z == 0.0 { f64::NAN } else { z * sd + m }),
                    );
                }
                None => values.extend(raw),
            }
        }
    }
    for (name, j, mut values) in columns {
        if let Some(j) = j {
            // The zeros: `missing` of them were imputed, the rest are values at the mean.
            let missing = imputed.get(j).copied().unwrap_or(0) as usize;
            let mean = scaler.mean[j];
            let mut imputed = 0usize;
            for v in values.iter_mut().filter(|v| v.is_nan()) {
                if imputed < missing {
                    imputed += 1;
                } else {
                    *v = mean;
                }
            }
        }
        let r = reference.iter().find(|r| r.name == name);
        if let (Some(r), Some(j)) = (r, j) {
            snap(&mut values, r, scaler.mean[j], scaler.std[j]);
        }
        out.push(feature_or_unknown(&name, r, &values));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pull::reference::column;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, LogNormal, Normal};

    fn normal(n: usize, mean: f64, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d = Normal::new(mean, 1.0).unwrap();
        (0..n).map(|_| d.sample(&mut rng) as f32).collect()
    }

    fn f64s(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| f64::from(x)).collect()
    }

    /// The stored bin counts are the raw reference rows binned the same way, so PSI from the
    /// stored reference equals PSI from the raw rows (normal, log-normal, an atom at 0).
    #[test]
    fn psi_from_the_stored_reference_equals_psi_from_the_raw_reference_rows() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let ln = LogNormal::new(0.0, 1.5).unwrap();
        let cases: Vec<Vec<f32>> = vec![
            normal(20_000, 50.0, 1),
            (0..20_000).map(|_| ln.sample(&mut rng) as f32).collect(),
            (0..20_000)
                .map(|i| {
                    if i % 3 == 0 {
                        0.0
                    } else {
                        rng.random_range(0.0..100.0f32).round()
                    }
                })
                .collect(),
        ];
        for (c, raw) in cases.iter().enumerate() {
            let r = column("x", raw);
            let b = bins(&r);
            assert_eq!(r.bin_counts, counts(&b, f64s(raw)), "case {c}");
            let (stored, exact) = reference_counts(&r, &b);
            assert!(exact);
            let from_raw: Vec<f64> = counts(&b, f64s(raw))
                .into_iter()
                .map(|x| x as f64)
                .collect();
            let new = f64s(&raw[..5000].iter().map(|v| v * 1.1).collect::<Vec<f32>>());
            let a: Vec<f64> = counts(&b, new).into_iter().map(|x| x as f64).collect();
            assert_eq!(psi(&stored, &a), psi(&from_raw, &a), "case {c}");
            // Against itself, PSI is below its noise level.
            let d = feature(&r, &f64s(raw));
            assert!(d.psi.unwrap() < 1e-9, "case {c}: {d:?}");
        }
        // The atom has its own bin and the deciles around it are merged.
        let r = column("gpu", &cases[2]);
        assert!(b_has_atom(&bins(&r), 0.0));
    }

    fn b_has_atom(b: &[Bin], v: f64) -> bool {
        b.contains(&Bin::Atom(v))
    }

    /// i.i.d. windows stay under the noise floor (its 99th percentile: at most a few of 100
    /// windows above it), at 1k, 10k and 200k rows.
    #[test]
    fn iid_windows_do_not_drift_above_the_noise_floor() {
        let r = column("x", &normal(100_000, 0.0, 7));
        for (n, windows) in [(1_000usize, 100u64), (10_000, 40), (200_000, 5)] {
            let mut above = 0;
            for w in 0..windows {
                let v = f64s(&normal(n, 0.0, 1000 + w));
                let d = feature(&r, &v);
                if d.band != "stable" {
                    above += 1;
                }
                assert!(d.psi.unwrap() < WATCH, "n {n}: {d:?}");
            }
            assert!(
                above <= windows.div_ceil(20),
                "n {n}: {above} of {windows} windows drifted"
            );
        }
    }

    /// PSI on deciles of a 1-sd normal shifted by δ: 0.238 at δ = 0.5 (the binned PSI is a
    /// little under the continuous δ² = 0.25), 0.341 at δ = 0.6.
    #[test]
    fn shifts_move_the_band_as_the_closed_form_says() {
        let r = column("x", &normal(200_000, 0.0, 11));
        let at = |delta: f64| feature(&r, &f64s(&normal(50_000, delta, 12)));
        let d = at(0.5);
        assert!((d.psi.unwrap() - 0.2377).abs() < 0.02, "{d:?}");
        assert_eq!(d.band, "watch", "{d:?}");
        assert!(
            (d.ks.unwrap() - 0.197).abs() < 0.02,
            "KS of a 0.5 sd shift: {d:?}"
        );
        assert!((d.w1_over_sd.unwrap() - 0.5).abs() < 0.05, "{d:?}");
        let d = at(0.6);
        assert!((d.psi.unwrap() - 0.341).abs() < 0.03, "{d:?}");
        assert_eq!(d.band, "significant");
        let d = at(0.0);
        assert_eq!(d.band, "stable");
        assert!(d.outside_range.unwrap() < 0.001);
    }

    #[test]
    fn an_empty_window_has_no_figures_and_missing_values_are_counted() {
        let r = column("x", &normal(1000, 0.0, 1));
        let d = feature(&r, &[]);
        assert_eq!(
            (d.psi, d.ks, d.missing_rate, d.band.as_str()),
            (None, None, None, "unknown")
        );
        let mut v = f64s(&normal(1000, 0.0, 2));
        v[..200].iter_mut().for_each(|x| *x = f64::NAN);
        let d = feature(&r, &v);
        assert_eq!(d.missing_rate, Some(0.2));
        assert_eq!(d.rows, 800);
        assert!((chi2_99(9) - 21.666).abs() < 0.2, "{}", chi2_99(9));
    }
}
