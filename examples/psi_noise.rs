//! PSI's noise level, measured (BENCHMARKS.md, issue 16): PSI of i.i.d. windows of 1k, 10k
//! and 200k rows against a 200k-row reference from the same distribution (a normal, a
//! log-normal, and an atom-at-zero mixture like gpu_util), beside the χ² formula
//! (1/n + 1/m)·χ²_{B−1, 0.99} that `monitor` uses as its floor.
//!
//!   cargo run --release --example psi_noise

use emshap_ci::drift;
use emshap_ci::pull::reference::column;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};

fn draw(kind: &str, n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
    let normal = Normal::new(50.0, 10.0).unwrap();
    let ln = LogNormal::new(3.0, 1.0).unwrap();
    (0..n)
        .map(|_| match kind {
            "normal" => normal.sample(rng) as f32,
            "lognormal" => ln.sample(rng) as f32,
            _ => {
                if rng.random::<f64>() < 1.0 / 3.0 {
                    0.0
                } else {
                    (rng.random::<f64>() * 100.0) as f32
                }
            }
        })
        .collect()
}

fn main() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261202);
    println!("| distribution | window rows | windows | mean PSI | p99 PSI | floor (χ² p99) | share above floor |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for kind in ["normal", "lognormal", "atom+uniform"] {
        let r = column(kind, &draw(kind, 200_000, &mut rng));
        for (n, windows) in [(1_000usize, 400usize), (10_000, 200), (200_000, 40)] {
            let mut psis: Vec<f64> = Vec::with_capacity(windows);
            let mut floor = 0.0;
            for _ in 0..windows {
                let w: Vec<f64> = draw(kind, n, &mut rng).into_iter().map(f64::from).collect();
                let d = drift::feature(&r, &w);
                psis.push(d.psi.unwrap());
                floor = d.noise_floor.unwrap();
            }
            psis.sort_by(f64::total_cmp);
            let mean = psis.iter().sum::<f64>() / windows as f64;
            let p99 = psis[((windows as f64 * 0.99) as usize).min(windows - 1)];
            let above = psis.iter().filter(|&&p| p > floor).count() as f64 / windows as f64;
            println!(
                "| {kind} | {n} | {windows} | {mean:.5} | {p99:.5} | {floor:.5} | {above:.3} |"
            );
        }
    }
}
