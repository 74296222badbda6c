//! The evaluation benchmark (BENCHMARKS.md): the power predictor's throughput on a
//! snapshot's test split through ONNX Runtime (the runtime `evaluate` uses), at several
//! batch sizes, against the libtorch forward pass of the same trained model.
//!
//! usage: cargo run --release -p emshap-train --example bench_score -- MODELS DATA [THREADS]

fn main() -> Result<(), Box<dyn std::error::Error>> {
    use std::time::Instant;

    use emshap_ci::onnx::{Session, Tensor};
    use emshap_ci::train::data;
    use emshap_train::power::Loaded;

    let args: Vec<String> = std::env::args().collect();
    let (models, data_dir) = (
        std::path::Path::new(&args[1]),
        std::path::Path::new(&args[2]),
    );
    let threads: usize = args.get(3).map_or(2, |t| t.parse().unwrap());
    // As training does: libtorch's large buffers are reused, not re-faulted each batch.
    emshap_ci::native::keep_freed_memory();
    tch::set_num_threads(threads as i32);
    let snap = data::load(data_dir)?;
    let (n, d) = (snap.test.n, snap.test.d);
    let raw: Vec<f32> = snap
        .test
        .x
        .iter()
        .enumerate()
        .map(|(i, &v)| (f64::from(v) * snap.scaler.std[i % d] + snap.scaler.mean[i % d]) as f32)
        .collect();
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let reps = 5;
    println!("{n} test rows, d = {d}, {threads} threads, median of {reps} passes\n");
    println!("| runtime | batch rows | s per pass | rows/s |\n|---|---|---|---|");
    let tch_model = Loaded::load(models)?;
    let mut tch_pred = Vec::new();
    for batch in [65_536usize, n] {
        let mut times = Vec::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            tch_pred.clear();
            for start in (0..n).step_by(batch) {
                let len = batch.min(n - start);
                tch_pred.extend(tch_model.predict(&raw[start * d..(start + len) * d], len));
            }
            times.push(t0.elapsed().as_secs_f64());
        }
        let t = median(times);
        println!(
            "| libtorch (tch) | {batch} | {t:.3} | {:.0} |",
            n as f64 / t
        );
    }
    let model = std::fs::read(models.join("power_predictor.onnx"))?;
    let mut session = Session::new(&model, threads)?;
    for batch in [1_024usize, 8_192, 65_536, 262_144, n] {
        let mut times = Vec::new();
        let mut pred = Vec::with_capacity(n);
        for _ in 0..reps {
            let t0 = Instant::now();
            pred.clear();
            for start in (0..n).step_by(batch) {
                let len = batch.min(n - start);
                let out = session.run(vec![(
                    "features",
                    Tensor {
                        shape: vec![len, d],
                        data: raw[start * d..(start + len) * d].to_vec(),
                    },
                )])?;
                pred.extend_from_slice(&out[0].1.data);
            }
            times.push(t0.elapsed().as_secs_f64());
        }
        let worst = pred
            .iter()
            .zip(&tch_pred)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        let t = median(times);
        println!(
            "| ONNX Runtime (ort) | {batch} | {t:.3} | {:.0} | (max rel. diff to tch {worst:.1e})",
            n as f64 / t
        );
    }
    Ok(())
}
