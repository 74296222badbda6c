//! `evaluate`: KPIs through ONNX Runtime, the gate against a baseline folder scored on the
//! same rows (or its stored metrics.json, or none: bootstrap), force with a reason, and
//! metrics.json. One trained pair is shared by the cases (training is the slow part).

use std::path::Path;

use crate::harness::*;

/// Evaluates the models in `models` against the production folder `baseline` into `out`.
fn versus(dir: &Path, models: &str, baseline: &str, out: &str) -> std::process::Output {
    evaluate(
        dir,
        &["--models", models, "--baseline", baseline, "--out", out],
    )
}

fn evaluate(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["evaluate", "--data", "data", "--threads", "2"];
    args.extend_from_slice(extra);
    run(dir, &args)
}

#[test]
fn evaluate_gates_a_candidate_against_production_on_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_exit(&run(d, &["pull", "--out", "data", "-q"]), 0);
    let train = |model: &str, out: &str, extra: &[&str]| {
        assert_exit(&train_model(d, model, out, extra), 0);
    };
    train("power", "good", &["--epochs", "40"]);
    train("emshap", "good", &["--epochs", "3", "--max-rows", "3000"]);
    // A worse power model (one epoch) beside the same EMSHAP model.
    train("power", "worse", &["--epochs", "1"]);
    std::fs::copy(
        d.join("good/emshap_model.onnx"),
        d.join("worse/emshap_model.onnx"),
    )
    .unwrap();

    // Bootstrap: absolute bounds only; the KPIs through ONNX Runtime match libtorch's.
    let o = evaluate(d, &["--models", "good", "--out", "eval-boot"]);
    assert_exit(&o, 0);
    let m = json_file(&d.join("eval-boot/metrics.json"));
    assert_eq!(m["verdict"], "pass");
    assert_eq!(m["baseline"], "bootstrap");
    assert!(m["production"].is_null());
    let history = json_file(&d.join("good/power_history.json"));
    for k in ["rmse", "r2", "mae"] {
        let ort = m["candidate"]["power"][k].as_f64().unwrap();
        let tch = history["test"][k].as_f64().unwrap();
        assert!(
            (ort - tch).abs() <= 1e-4 * tch.abs().max(1.0),
            "{k}: {ort} vs {tch}"
        );
    }
    for k in ["nll", "imputation_rmse"] {
        assert!(m["candidate"]["emshap"][k].as_f64().unwrap().is_finite());
    }
    // power: mse, rmse, mae, mape, r2; emshap: nll, imputation_rmse, energy_gain,
    // imputation_ratio.
    assert_eq!(m["checks"].as_array().unwrap().len(), 9);
    let emshap = &m["candidate"]["emshap"];
    for k in [
        "proposal_nll",
        "energy_gain",
        "imputation_ratio",
        "nll_se",
        "nll_k_gap",
    ] {
        assert!(emshap[k].as_f64().unwrap().is_finite(), "{k}: {emshap}");
    }
    // The energy is judged against its own proposal, never against production.
    let gain = m["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == "energy_gain")
        .unwrap()
        .clone();
    assert_eq!(gain["rule"]["absolute_only"], true, "{gain}");
    assert!(gain["candidate"].as_f64().unwrap() <= 0.0, "{gain}");

    // Champion vs itself on the same rows: every delta is 0, and it passes.
    let o = versus(d, "good", "good", "eval-same");
    assert_exit(&o, 0);
    let m = json_file(&d.join("eval-same/metrics.json"));
    assert_eq!(m["baseline"], "same_rows");
    for c in m["checks"].as_array().unwrap() {
        assert_eq!(c["delta"].as_f64(), Some(0.0), "{c}");
    }

    // The worse candidate fails with exit 1, and metrics.json says which rules.
    let o = versus(d, "worse", "good", "eval-worse");
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("power.rmse"), "{}", stderr(&o));
    let m = json_file(&d.join("eval-worse/metrics.json"));
    assert_eq!(m["verdict"], "fail");
    let failed: Vec<String> = m["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| {
            format!(
                "{}.{}",
                c["model"].as_str().unwrap(),
                c["metric"].as_str().unwrap()
            )
        })
        .collect();
    assert!(failed.contains(&"power.rmse".to_string()), "{failed:?}");
    assert!(failed.iter().all(|f| f.starts_with("power.")), "{failed:?}");

    // Stored metrics as the baseline: the same verdict without production's models.
    std::fs::create_dir(d.join("stored")).unwrap();
    std::fs::copy(
        d.join("eval-boot/metrics.json"),
        d.join("stored/metrics.json"),
    )
    .unwrap();
    let o = versus(d, "worse", "stored", "eval-stored");
    assert_exit(&o, 1);
    assert_eq!(
        json_file(&d.join("eval-stored/metrics.json"))["baseline"],
        "stored_metrics"
    );

    // Force needs a reason; with one it passes and records who, why and what failed.
    let o = evaluate(
        d,
        &[
            "--models",
            "worse",
            "--baseline",
            "good",
            "--out",
            "eval-f",
            "--force",
        ],
    );
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--reason"), "{}", stderr(&o));
    let o = run_env(
        d,
        &[
            "evaluate",
            "--data",
            "data",
            "--models",
            "worse",
            "--baseline",
            "good",
            "--out",
            "eval-forced",
            "--force",
            "--reason",
            "incident 42: old model is down",
        ],
        "GITHUB_ACTOR",
        "octocat",
    );
    assert_exit(&o, 0);
    let m = json_file(&d.join("eval-forced/metrics.json"));
    assert_eq!(m["verdict"], "forced");
    assert_eq!(m["force"]["by"], "octocat");
    assert_eq!(m["force"]["reason"], "incident 42: old model is down");
    assert!(!m["force"]["failed"].as_array().unwrap().is_empty());

    // The passing version goes to a local store and becomes production; the failing one is
    // published but refused by promote; fetch places production's verified files.
    let store = ["--store", "store"];
    let cmd = |args: &[&str]| {
        let mut v = args.to_vec();
        v.extend_from_slice(&store);
        run(d, &v)
    };
    let o = cmd(&[
        "publish",
        "--models",
        "good",
        "--eval",
        "eval-boot",
        "--sha",
        "aaaa111",
    ]);
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains("versions/aaaa111/manifest.json"),
        "{}",
        stdout(&o)
    );
    assert_exit(&cmd(&["promote", "--sha", "aaaa111"]), 0);
    assert_exit(
        &cmd(&[
            "publish",
            "--models",
            "worse",
            "--eval",
            "eval-worse",
            "--sha",
            "bbbb222",
        ]),
        0,
    );
    let o = cmd(&["promote", "--sha", "bbbb222"]);
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("verdict fail"), "{}", stderr(&o));
    assert_exit(&cmd(&["fetch", "--dest", "fetched"]), 0);
    for f in ["power_predictor.onnx", "emshap_model.onnx", "scaler.json"] {
        assert_eq!(
            std::fs::read(d.join("fetched").join(f)).unwrap(),
            std::fs::read(d.join("good").join(f)).unwrap(),
            "{f}"
        );
    }
    let o = cmd(&[
        "publish",
        "--models",
        "worse",
        "--eval",
        "eval-worse",
        "--sha",
        "aaaa111",
    ]);
    assert_exit(&o, 3);
    assert!(stderr(&o).contains("write-once"), "{}", stderr(&o));

    // With --store, production is fetched and scored on the same rows...
    let o = cmd(&[
        "evaluate",
        "--data",
        "data",
        "--models",
        "worse",
        "--out",
        "eval-store",
    ]);
    assert_exit(&o, 1);
    let m = json_file(&d.join("eval-store/metrics.json"));
    assert_eq!(m["baseline"], "same_rows");
    assert_eq!(m["production_sha"], "aaaa111");
    // The same through S3: production published, promoted and fetched from the S3 server
    // gives the same baseline KPIs as from the local store.
    let s3 = crate::harness::S3Server::start();
    let uri = s3.uri("eval");
    for args in [
        vec![
            "publish",
            "--store",
            &uri,
            "--models",
            "good",
            "--eval",
            "eval-boot",
            "--sha",
            "aaaa111",
        ],
        vec!["promote", "--store", &uri, "--sha", "aaaa111"],
    ] {
        assert_exit(&s3.run(d, &args), 0);
    }
    let o = s3.run(
        d,
        &[
            "evaluate", "--store", &uri, "--data", "data", "--models", "worse", "--out", "eval-s3",
        ],
    );
    assert_exit(&o, 1);
    let s3m = json_file(&d.join("eval-s3/metrics.json"));
    assert_eq!(s3m["baseline"], "same_rows");
    assert_eq!(s3m["production_sha"], "aaaa111");
    assert_eq!(s3m["production"], m["production"]);
    assert_eq!(s3m["candidate"], m["candidate"]);
    drop(s3);
    // ...and when its files are corrupt, its stored metrics.json is the baseline, and the
    // metrics say why.
    let onnx = d.join("store/versions/aaaa111/power_predictor.onnx");
    let mut bytes = std::fs::read(&onnx).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&onnx, bytes).unwrap();
    let o = cmd(&[
        "evaluate",
        "--data",
        "data",
        "--models",
        "good",
        "--out",
        "eval-stored2",
    ]);
    assert_exit(&o, 0);
    let m = json_file(&d.join("eval-stored2/metrics.json"));
    assert_eq!(m["baseline"], "stored_metrics");
    assert!(
        m["baseline_note"]
            .as_str()
            .unwrap()
            .contains("could not be fetched"),
        "{m}"
    );

    // A candidate without its EMSHAP model fails on those metrics, never passes them.
    std::fs::remove_file(d.join("worse/emshap_model.onnx")).unwrap();
    let o = evaluate(d, &["--models", "worse", "--out", "eval-missing"]);
    assert_exit(&o, 1);
    let m = json_file(&d.join("eval-missing/metrics.json"));
    let nll = m["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == "nll")
        .unwrap()
        .clone();
    assert_eq!(nll["passed"], false);
    assert!(nll["reason"]
        .as_str()
        .unwrap()
        .contains("missing on the candidate"));
}

#[test]
fn evaluate_without_models_or_with_a_bad_gate_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["evaluate", "--models", "nothing"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("emshap-ci train"), "{}", stderr(&o));
    std::fs::create_dir(dir.path().join("m")).unwrap();
    std::fs::write(dir.path().join("m/power_predictor.onnx"), b"x").unwrap();
    std::fs::write(
        dir.path().join("gate.toml"),
        "[power.rmse]\ndirection = \"lower\"\nmin = 2.0\nmax = 1.0\n",
    )
    .unwrap();
    let o = run(
        dir.path(),
        &["evaluate", "--models", "m", "--gate", "gate.toml"],
    );
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("min 2 > max 1"), "{}", stderr(&o));
    std::fs::write(
        dir.path().join("gate.toml"),
        "[power.rmse]\ndirection = \"down\"\n",
    )
    .unwrap();
    let o = run(
        dir.path(),
        &["evaluate", "--models", "m", "--gate", "gate.toml"],
    );
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("gate.toml"), "{}", stderr(&o));
}

#[test]
fn promote_force_takes_a_failed_version_to_production_only_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_exit(&run(d, &["pull", "--out", "data", "-q"]), 0);
    // One epoch of the fake trainer: below the default gate's r² ≥ 0.9.
    for model in ["power", "emshap"] {
        assert_exit(&train_model(d, model, "models", &["--epochs", "1"]), 0);
    }
    assert_exit(&evaluate(d, &["--models", "models", "--out", "eval"]), 1);
    let store = ["--store", "store"];
    let cmd = |args: &[&str]| {
        let mut v = args.to_vec();
        v.extend_from_slice(&store);
        run(d, &v)
    };
    let publish = [
        "publish", "--models", "models", "--eval", "eval", "--sha", "abcd123",
    ];
    assert_exit(&cmd(&publish), 0);
    let o = cmd(&["promote", "--sha", "abcd123"]);
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("promote --force --reason"),
        "{}",
        stderr(&o)
    );
    let o = cmd(&["promote", "--sha", "abcd123", "--force"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--reason"), "{}", stderr(&o));
    assert!(!d.join("store/production.json").exists());
    let o = run_env(
        d,
        &[
            "promote",
            "--sha",
            "abcd123",
            "--force",
            "--reason",
            "incident 12",
            "--store",
            "store",
        ],
        "GITHUB_ACTOR",
        "oncall",
    );
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains("FORCED past a failed gate by oncall: incident 12"),
        "{}",
        stdout(&o)
    );
    let p = json_file(&d.join("store/production.json"));
    assert_eq!(
        (p["sha"].as_str(), p["forced"].as_bool()),
        (Some("abcd123"), Some(true)),
        "{p}"
    );
    assert_eq!(p["reason"], "incident 12");
}
