//! `explain` through the CLI with real ONNX graphs whose Shapley values are known: a linear
//! power model f(x) = 3 + w·x and an "EMSHAP" graph whose conditional mean is the feature's
//! mean (independent features), so φ_i = w_i (x_i − E[x_i]) exactly; by enumeration and by
//! KernelSHAP, from CSV, JSON and Parquet, to JSON and CSV. Bad input is a one-line error
//! that writes nothing.

use std::path::Path;
use std::sync::Arc;

use emshap_ci::onnx::{Dim, GraphBuilder};
use prost::Message;

use crate::harness::{assert_exit, run};

const FEATURES: [&str; 4] = ["cpu_util", "mem_util", "disk_io", "net_io"];
const W: [f32; 4] = [2.0, -1.5, 0.0, 0.25];
const MEAN: [f32; 4] = [0.5, 1.0, -2.0, 4.0];

/// The two models of a known answer in `dir`.
fn models(dir: &Path) {
    let d = FEATURES.len() as i64;
    let meta = [("feature_names", FEATURES.join(","))];
    let mut g = GraphBuilder::new();
    let x = g.input("features", &[Dim::Named("N"), Dim::Fixed(d)]);
    let w = g.constant("w", &[d, 1], &W);
    let b = g.constant("b", &[1], &[3.0]);
    let y = g.op("MatMul", &[&x, &w], vec![]);
    let y = g.op("Add", &[&y, &b], vec![]);
    g.output(&y, "power_watts", &[Dim::Named("N"), Dim::Fixed(1)]);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("power_predictor.onnx"),
        g.finish("power", &meta).encode_to_vec(),
    )
    .unwrap();
    // imputed = mean + observed · (features − mean)
    let mut g = GraphBuilder::new();
    let x = g.input("features", &[Dim::Named("N"), Dim::Fixed(d)]);
    let o = g.input("observed", &[Dim::Named("N"), Dim::Fixed(d)]);
    let noise = g.input("noise", &[Dim::Named("N"), Dim::Named("K"), Dim::Fixed(d)]);
    g.input(
        "component_u",
        &[Dim::Named("N"), Dim::Named("K"), Dim::Fixed(d)],
    );
    let m = g.constant("mean", &[d], &MEAN);
    let dx = g.op("Sub", &[&x, &m], vec![]);
    let dx = g.op("Mul", &[&o, &dx], vec![]);
    let imputed = g.op("Add", &[&m, &dx], vec![]);
    g.output(&imputed, "imputed", &[Dim::Named("N"), Dim::Fixed(d)]);
    // Every "draw" is the mean: for a linear f, E[f(x_S, X_S̄)] = f(x_S, mean_S̄) exactly.
    let zero = g.scalar("zero", 0.0);
    let z = g.op("Mul", &[&noise, &zero], vec![]);
    let samples = g.op("Add", &[&z, &m], vec![]);
    let nkd = [Dim::Named("N"), Dim::Named("K"), Dim::Fixed(d)];
    g.output(&samples, "samples", &nkd);
    let weights = g.op("Softmax", &[&z], vec![emshap_ci::onnx::attr_int("axis", 1)]);
    g.output(&weights, "weights", &nkd);
    let meta = [
        ("feature_names", FEATURES.join(",")),
        ("energy_correction", "off".to_string()),
    ];
    std::fs::write(
        dir.join("emshap_model.onnx"),
        g.finish("emshap", &meta).encode_to_vec(),
    )
    .unwrap();
}

const ROWS: [[f32; 4]; 3] = [
    [1.0, 2.0, 3.0, 4.0],
    [-0.5, 0.25, 10.0, -8.0],
    [0.5, 1.0, -2.0, 4.0],
];

fn check(out: &serde_json::Value) {
    let rows = out["rows"].as_array().unwrap();
    assert_eq!(rows.len(), ROWS.len());
    for (r, x) in rows.iter().zip(ROWS) {
        let fx = 3.0 + (0..4).map(|i| W[i] * x[i]).sum::<f32>();
        let base = 3.0 + (0..4).map(|i| W[i] * MEAN[i]).sum::<f32>();
        assert!(
            (r["f_x"].as_f64().unwrap() - f64::from(fx)).abs() < 1e-4,
            "{r}"
        );
        assert!(
            (r["base_value"].as_f64().unwrap() - f64::from(base)).abs() < 1e-4,
            "{r}"
        );
        for i in 0..4 {
            let want = f64::from(W[i] * (x[i] - MEAN[i]));
            let got = r["phi"][i].as_f64().unwrap();
            assert!((got - want).abs() < 1e-4, "φ{i} {got} want {want}: {r}");
        }
        assert!(r["efficiency_gap"].as_f64().unwrap() < 1e-9, "{r}");
    }
}

fn write_inputs(dir: &Path) {
    let mut csv = format!("node_id,{}\n", FEATURES.join(","));
    let mut json = Vec::new();
    for (i, x) in ROWS.iter().enumerate() {
        let cells: Vec<String> = x.iter().map(f32::to_string).collect();
        csv.push_str(&format!("n{i},{}\n", cells.join(",")));
        let obj: serde_json::Map<String, serde_json::Value> = FEATURES
            .iter()
            .zip(x)
            .map(|(f, v)| (f.to_string(), serde_json::json!(v)))
            .collect();
        json.push(obj);
    }
    std::fs::write(dir.join("rows.csv"), csv).unwrap();
    std::fs::write(dir.join("rows.json"), serde_json::to_vec(&json).unwrap()).unwrap();
    // Parquet with float64 columns, in another order than the model's.
    use arrow_array::{ArrayRef, Float64Array, RecordBatch};
    let cols: Vec<(String, ArrayRef)> = FEATURES
        .iter()
        .enumerate()
        .rev()
        .map(|(j, f)| {
            let v: Vec<f64> = ROWS.iter().map(|x| f64::from(x[j])).collect();
            (f.to_string(), Arc::new(Float64Array::from(v)) as ArrayRef)
        })
        .collect();
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let file = std::fs::File::create(dir.join("rows.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn explain_gives_the_known_shapley_values_of_a_linear_model_exactly_and_by_kernelshap() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    models(&d.join("m"));
    write_inputs(d);
    for (input, method) in [
        ("rows.csv", vec![]),
        ("rows.json", vec!["--exact"]),
        ("rows.parquet", vec!["--samples", "64"]),
    ] {
        let mut args = vec![
            "explain", "--models", "m", "--rows", input, "--out", "phi.json",
        ];
        args.extend(&method);
        let o = run(d, &args);
        assert_exit(&o, 0);
        let out: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("phi.json")).unwrap()).unwrap();
        check(&out);
        let kernel = method.first() == Some(&"--samples");
        assert_eq!(
            out["method"],
            if kernel { "kernel" } else { "exact" },
            "{out}"
        );
        // Both methods report a standard error (the value function's draws split into
        // groups; KernelSHAP's groups also take their own blocks of coalitions). Every draw
        // of this model is the same, so enumeration's error is nothing; KernelSHAP's is
        // that of fits on a few coalitions each.
        let se = out["rows"][0]["stderr"].as_array().expect("stderr");
        if kernel {
            assert!(se.iter().all(|v| v.as_f64().unwrap().is_finite()), "{out}");
        } else {
            assert!(se.iter().all(|v| v.as_f64().unwrap() < 1e-6), "{out}");
        }
        assert_eq!(out["value_function"], "expectation", "{out}");
        assert_eq!(out["features"], serde_json::json!(FEATURES));
    }
    // CSV out: a header, one line per row, the same numbers.
    let o = run(
        d,
        &[
            "explain", "--models", "m", "--rows", "rows.csv", "--out", "phi.csv",
        ],
    );
    assert_exit(&o, 0);
    let csv = std::fs::read_to_string(d.join("phi.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "row,f_x,base_value,efficiency_gap,phi_cpu_util,phi_mem_util,phi_disk_io,phi_net_io,stderr_cpu_util,stderr_mem_util,stderr_disk_io,stderr_net_io"
    );
    let first: Vec<f64> = lines
        .next()
        .unwrap()
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    assert!(
        (first[4] - 1.0).abs() < 1e-4 && (first[5] + 1.5).abs() < 1e-4,
        "{csv}"
    );
    assert_eq!(lines.count(), 2);
}

#[test]
fn explain_refuses_bad_rows_with_one_line_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    models(&d.join("m"));
    std::fs::write(d.join("missing.csv"), "cpu_util,mem_util,disk_io\n1,2,3\n").unwrap();
    std::fs::write(
        d.join("nan.csv"),
        "cpu_util,mem_util,disk_io,net_io\n1,2,NaN,4\n",
    )
    .unwrap();
    std::fs::write(d.join("text.json"), r#"[{"cpu_util": 1, "mem_util": "x"}]"#).unwrap();
    for (rows, out, needle) in [
        ("missing.csv", "o.json", "has no column `net_io`"),
        ("nan.csv", "o.json", "row 0: disk_io is NaN"),
        ("text.json", "o.json", "row 0 has no number `mem_util`"),
        ("nowhere.csv", "o.json", "nowhere.csv"),
        ("missing.csv", "o.txt", "name a .json or .csv file"),
    ] {
        let o = run(
            d,
            &["explain", "--models", "m", "--rows", rows, "--out", out],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.code() == Some(2) || o.status.code() == Some(3),
            "{err}"
        );
        assert!(err.contains(needle), "{needle}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!d.join(out).exists());
    }
    let o = run(
        d,
        &[
            "explain", "--models", "none", "--rows", "nan.csv", "--out", "o.json",
        ],
    );
    assert_exit(&o, 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("train both models first"));
}

/// docs/attribution.md's worked example, number for number: the resampling choice, a
/// coalition's value from its draws, and φ by enumeration with efficiency.
#[test]
fn the_worked_example_in_docs_attribution_md_holds() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/attribution.md"))
        .unwrap();
    let start = doc.find("```json\n").expect("a json block") + 8;
    let end = start + doc[start..].find("```").unwrap();
    let ex: serde_json::Value = serde_json::from_str(&doc[start..end]).unwrap();
    let floats = |k: &str| -> Vec<f64> {
        ex[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let w = floats("weights");
    let chosen = emshap_ci::explain::sir_choice(
        w.iter().map(|&v| v as f32),
        ex["u"].as_f64().unwrap() as f32,
    );
    assert_eq!(chosen as u64, ex["chosen"].as_u64().unwrap());
    let preds = floats("draw_predictions");
    let v = preds.iter().sum::<f64>() / preds.len() as f64;
    assert_eq!(v, ex["coalition_value"].as_f64().unwrap());
    let values = floats("values");
    assert_eq!(
        values[1], v,
        "the coalition {{feature 0}} is the one valued from draws"
    );
    let phi = emshap_ci::explain::enumerate(&values, 3);
    let want = floats("phi");
    for (a, b) in phi.iter().zip(&want) {
        assert!((a - b).abs() < 1e-12, "{phi:?} vs {want:?}");
    }
    let total: f64 = phi.iter().sum();
    assert!((total - (values[7] - values[0])).abs() < 1e-12);

    let rows = |k: &str| -> Vec<f32> {
        ex[k]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter())
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    };
    let mut draws = rows("centre_draws");
    let observed: Vec<f32> = floats("centre_observed")
        .iter()
        .map(|&v| v as f32)
        .collect();
    let imputed: Vec<f32> = floats("centre_imputed").iter().map(|&v| v as f32).collect();
    emshap_ci::explain::centre_draws(
        &mut draws,
        &observed,
        &imputed,
        ex["centre_groups"].as_u64().unwrap() as usize,
    );
    assert_eq!(draws, rows("centred"));
}

/// Centring: each group's average of every unobserved feature lands on the target, the
/// observed features and the spread within a group are untouched, and the groups are
/// centred independently (so they stay replicas for the standard error).
#[test]
fn centring_moves_each_groups_mean_and_nothing_else() {
    let (m, d, groups) = (64usize, 5usize, 8usize);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 40) as f32 / (1u64 << 24) as f32 * 10.0 - 5.0
    };
    let before: Vec<f32> = (0..m * d).map(|_| next()).collect();
    let observed = [1.0, 0.0, 1.0, 0.0, 0.0];
    let mean = [99.0, 3.0, 99.0, -2.0, 0.5];
    let mut after = before.clone();
    emshap_ci::explain::centre_draws(&mut after, &observed, &mean, groups);
    for g in 0..groups {
        let rows: Vec<usize> = (g..m).step_by(groups).collect();
        for j in 0..d {
            let avg = |v: &[f32]| {
                rows.iter().map(|&r| f64::from(v[r * d + j])).sum::<f64>() / rows.len() as f64
            };
            if observed[j] > 0.5 {
                for &r in &rows {
                    assert_eq!(after[r * d + j], before[r * d + j]);
                }
                continue;
            }
            assert!(
                (avg(&after) - f64::from(mean[j])).abs() < 1e-4,
                "group {g} feature {j}"
            );
            let shift = after[rows[0] * d + j] - before[rows[0] * d + j];
            assert!(
                shift.abs() > 1e-3,
                "a shift that is not zero for random draws"
            );
            for &r in &rows {
                let s = after[r * d + j] - before[r * d + j];
                assert!((s - shift).abs() < 1e-4, "one shift per group and feature");
            }
        }
    }
}
