//! The KPIs of DESIGN §7 and the fixed randomness they are computed with, shared by
//! training (libtorch figures in the history) and evaluation (ONNX Runtime, the gate's
//! figures), so both mean the same thing. Pure functions of numbers: no models, no I/O.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The KPIs of DESIGN §7 for predictions against the raw target.
pub fn power_kpis(pred: &[f32], truth: &[f32]) -> BTreeMap<String, f64> {
    let n = truth.len() as f64;
    let mean = truth.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let (mut se, mut ae, mut tss, mut ape, mut ape_n) = (0.0, 0.0, 0.0, 0.0, 0usize);
    for (&p, &t) in pred.iter().zip(truth) {
        let (p, t) = (f64::from(p), f64::from(t));
        se += (p - t).powi(2);
        ae += (p - t).abs();
        tss += (t - mean).powi(2);
        if t.abs() > 0.0 {
            ape += ((p - t) / t).abs();
            ape_n += 1;
        }
    }
    let mut m = BTreeMap::new();
    m.insert("mse".into(), se / n);
    m.insert("rmse".into(), (se / n).sqrt());
    m.insert("mae".into(), ae / n);
    m.insert("r2".into(), 1.0 - se / tss.max(f64::MIN_POSITIVE));
    m.insert("mape".into(), 100.0 * ape / (ape_n.max(1) as f64));
    m
}

/// Observed (1) / unobserved (0) per entry: each unobserved with probability `rate`, at
/// least one unobserved per row (DESIGN §4).
pub fn masks(rng: &mut ChaCha8Rng, n: usize, d: usize, rate: f64) -> Vec<f32> {
    let mut b = vec![1.0f32; n * d];
    for row in b.chunks_mut(d) {
        let mut any = false;
        for v in row.iter_mut() {
            if rng.random::<f64>() < rate {
                *v = 0.0;
                any = true;
            }
        }
        if !any {
            row[rng.random_range(0..d)] = 0.0;
        }
    }
    b
}

/// ACE's uniform masks (`UniformMaskGenerator`): per row the number of observed features is
/// uniform on 0..d−1 and they are a uniformly random subset, so every coalition size is
/// trained as often as every other (the Shapley enumeration weighs the sizes equally); at
/// least one feature is unobserved.
pub fn uniform_masks(rng: &mut ChaCha8Rng, n: usize, d: usize) -> Vec<f32> {
    use rand::seq::SliceRandom;
    let mut b = vec![0.0f32; n * d];
    let mut idx: Vec<usize> = (0..d).collect();
    for row in b.chunks_mut(d) {
        let observed = rng.random_range(0..d);
        idx.shuffle(rng);
        for &i in &idx[..observed] {
            row[i] = 1.0;
        }
    }
    b
}

/// Fixed randomness for scoring: masks at `rate`, uniforms and normals [N, K, d].
pub struct FixedDraws {
    pub observed: Vec<f32>,
    pub u: Vec<f32>,
    pub z: Vec<f32>,
}

pub fn fixed_draws(seed: u64, n: usize, k: usize, d: usize, rate: f64) -> FixedDraws {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let observed = masks(&mut rng, n, d, rate);
    let u = (0..n * k * d).map(|_| rng.random::<f32>()).collect();
    let z = (0..n * k * d)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect();
    FixedDraws { observed, u, z }
}

/// EMSHAP's KPIs from its graph's outputs on rows with known values: `nll` = mean over
/// unobserved entries of −log_density (raw units), `imputation_rmse` = RMSE of the imputed
/// value with each error divided by that feature's standard deviation `sd[j]` on the rows.
pub fn emshap_kpis(
    truth: &[f32],
    observed: &[f32],
    imputed: &[f32],
    log_density: &[f32],
    sd: &[f64],
) -> BTreeMap<String, f64> {
    let d = sd.len();
    let (mut nll, mut se, mut n) = (0.0, 0.0, 0usize);
    for i in 0..truth.len() {
        if observed[i] > 0.5 {
            continue;
        }
        nll -= f64::from(log_density[i]);
        se += ((f64::from(imputed[i]) - f64::from(truth[i])) / sd[i % d]).powi(2);
        n += 1;
    }
    let n = n.max(1) as f64;
    let mut m = BTreeMap::new();
    m.insert("nll".into(), nll / n);
    m.insert("imputation_rmse".into(), (se / n).sqrt());
    m
}

/// Per-column population standard deviation of a row-major [n, d] matrix (floored at 1e-12).
pub fn column_sd(x: &[f32], d: usize) -> Vec<f64> {
    let n = (x.len() / d).max(1) as f64;
    (0..d)
        .map(|j| {
            let mean = x
                .iter()
                .skip(j)
                .step_by(d)
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / n;
            let var = x
                .iter()
                .skip(j)
                .step_by(d)
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            var.sqrt().max(1e-12)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_masks_observe_every_count_below_d_equally_often_and_every_feature_alike() {
        let (n, d) = (80_000, 8);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let b = uniform_masks(&mut rng, n, d);
        let mut sizes = vec![0usize; d + 1];
        let mut per_feature = vec![0usize; d];
        for row in b.chunks(d) {
            sizes[row.iter().filter(|&&v| v == 1.0).count()] += 1;
            for (j, &v) in row.iter().enumerate() {
                assert!(v == 0.0 || v == 1.0);
                per_feature[j] += (v == 1.0) as usize;
            }
        }
        assert_eq!(sizes[d], 0, "a row must keep an unobserved feature");
        let expect = n as f64 / d as f64;
        for (q, &c) in sizes[..d].iter().enumerate() {
            assert!(
                (c as f64 - expect).abs() < 5.0 * expect.sqrt(),
                "{q} observed: {c} rows of {n}"
            );
        }
        // Each feature is observed in (d − 1)/2 of the d positions on average.
        let share = n as f64 * (d - 1) as f64 / 2.0 / d as f64;
        for (j, &c) in per_feature.iter().enumerate() {
            assert!(
                (c as f64 - share).abs() < 0.02 * share,
                "feature {j} observed {c} times"
            );
        }
    }

    #[test]
    fn power_kpis_of_a_known_case() {
        let m = power_kpis(&[1.0, 2.0, 5.0], &[1.0, 3.0, 5.0]);
        assert!((m["mse"] - 1.0 / 3.0).abs() < 1e-12);
        assert!((m["mae"] - 1.0 / 3.0).abs() < 1e-12);
        // tss = (1-3)^2 + 0 + (5-3)^2 = 8
        assert!((m["r2"] - (1.0 - 1.0 / 8.0)).abs() < 1e-12);
        assert!((m["mape"] - 100.0 / 9.0).abs() < 1e-9);
    }

    #[test]
    fn emshap_kpis_count_only_unobserved_entries() {
        // d = 2; entry 1 and 2 unobserved.
        let m = emshap_kpis(
            &[1.0, 2.0, 3.0, 4.0],
            &[1.0, 0.0, 0.0, 1.0],
            &[1.0, 4.0, 3.0, 9.0],
            &[0.0, -1.0, -3.0, 0.0],
            &[1.0, 2.0],
        );
        assert!((m["nll"] - 2.0).abs() < 1e-12);
        // errors: (4-2)/2 = 1, (3-3)/1 = 0 → rmse √(1/2)
        assert!((m["imputation_rmse"] - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(column_sd(&[1.0, 0.0, 3.0, 0.0], 2), vec![1.0, 1e-12]);
    }
}
