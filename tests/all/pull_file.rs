//! `pull` from files and from the embedded fixture: the snapshot's content, determinism,
//! windows, bad input, and interruption.

use std::path::Path;

use crate::harness::*;

#[test]
fn embedded_default_pull_writes_a_complete_deterministic_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["pull", "--out", "a", "--workers", "1"]);
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains("pulled 16000 messages from embedded"),
        "{}",
        stdout(&o)
    );
    let o = run(dir.path(), &["pull", "--out", "b", "--workers", "2"]);
    assert_exit(&o, 0);
    let (a, b) = (
        read_tree(&dir.path().join("a")),
        read_tree(&dir.path().join("b")),
    );
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "dataset.json",
            "quarantine.jsonl",
            "scaler.json",
            "test.parquet",
            "train.parquet",
            "val.parquet"
        ]
    );
    assert!(a == b, "same input, other thread count: the bytes differ");

    let ds = dataset(&dir.path().join("a"));
    let counts = &ds["counts"];
    let rows = counts["rows"].as_u64().unwrap();
    assert_eq!(
        counts["messages"].as_u64().unwrap(),
        rows + counts["duplicates"].as_u64().unwrap() + counts["invalid_total"].as_u64().unwrap()
    );
    // The snapshot digest covers every file, and each file's digest is right.
    for f in ds["files"].as_array().unwrap() {
        let bytes = std::fs::read(dir.path().join("a").join(f["name"].as_str().unwrap())).unwrap();
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap()
        );
    }

    // Chronological split 80/10/10; standardised train features have mean 0, std 1.
    let train = read_split(&dir.path().join("a/train.parquet"));
    let val = read_split(&dir.path().join("a/val.parquet"));
    let test = read_split(&dir.path().join("a/test.parquet"));
    let n = [train.node_id.len(), val.node_id.len(), test.node_id.len()];
    assert_eq!(n.iter().sum::<usize>() as u64, rows);
    assert_eq!(n[0], (rows as f64 * 0.8) as usize);
    let ts = |s: &Split| s.ints["timestamp_ms"].clone();
    assert!(ts(&train).windows(2).all(|w| w[0] <= w[1]));
    assert!(ts(&train).last() <= ts(&val).first() && ts(&val).last() <= ts(&test).first());
    assert_eq!(
        &train.columns[..5],
        [
            "node_id",
            "timestamp_ms",
            "partition",
            "offset",
            "power_watts"
        ]
    );
    for name in &train.columns[5..] {
        let v = &train.floats[name];
        let m = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let sd =
            (v.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!(
            m.abs() < 1e-3 && (sd - 1.0).abs() < 1e-3,
            "{name}: mean {m} std {sd}"
        );
    }
    assert!(
        train.floats["power_watts"].iter().all(|&p| p > 0.0),
        "target in raw watts"
    );

    // The scaler holds raw-unit statistics of the train split.
    let scaler: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a/scaler.json")).unwrap()).unwrap();
    let cpu_mean = scaler["mean"][0].as_f64().unwrap();
    assert!((20.0..80.0).contains(&cpu_mean), "cpu_util mean {cpu_mean}");
}

#[test]
fn absent_feature_is_imputed_with_the_training_mean_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        dir.path(),
        &[
            "generate",
            "--rows",
            "3000",
            "--bad-ratio",
            "0.05",
            "--bad-kinds",
            "missing-feature",
            "--out",
            "in.pb",
        ],
    );
    assert_exit(&o, 0);
    let o = pull_file(dir.path(), "in.pb", "s", &[]);
    assert_exit(&o, 0);
    let ds = dataset(&dir.path().join("s"));
    let imputed = ds["counts"]["imputed"]["mem_util"].as_u64().unwrap();
    assert!(imputed > 100, "{imputed}");
    assert_eq!(
        ds["counts"]["invalid_total"], 0,
        "an absent feature is not invalid"
    );
    assert_eq!(ds["counts"]["rows"], 3000);
    // Imputed with the train mean, which the scaler (fit after imputation) maps to 0.
    let train = read_split(&dir.path().join("s/train.parquet"));
    let zeros = train.floats["mem_util"]
        .iter()
        .filter(|&&v| v.abs() < 1e-6)
        .count() as u64;
    let train_imputed = ds["split"]["train"]["imputed"][1].as_u64().unwrap();
    assert!(
        zeros >= train_imputed && train_imputed > 0,
        "{zeros} {train_imputed}"
    );
}

#[test]
fn invalid_ratio_over_the_limit_fails_with_exit_4_and_writes_only_the_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    assert_exit(
        &run(
            dir.path(),
            &[
                "generate",
                "--rows",
                "2000",
                "--bad-ratio",
                "0.1",
                "--bad-kinds",
                "nan,undecodable",
                "--out",
                "in.pb",
            ],
        ),
        0,
    );
    let o = pull_file(dir.path(), "in.pb", "s", &[]);
    assert_exit(&o, 4);
    let err = stderr(&o);
    assert!(
        err.contains("limit 1.00 %")
            && err.contains("no snapshot written")
            && err.contains("s.quarantine.jsonl"),
        "{err}"
    );
    assert!(!dir.path().join("s").exists(), "no snapshot");
    let q = std::fs::read_to_string(dir.path().join("s.quarantine.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 100);
    assert!(lines
        .iter()
        .all(|l| l["partition"] == 0 && l["offset"].is_i64()));
    assert!(lines.iter().any(|l| l["reason"] == "undecodable"));
    assert!(lines
        .iter()
        .any(|l| l["reason"] == "non_finite_feature" && l["detail"] == "cpu_util=NaN"));
    // Raising the limit lets the same data through.
    let o = pull_file(dir.path(), "in.pb", "s", &["--max-invalid-ratio", "0.2"]);
    assert_exit(&o, 0);
}

#[test]
fn file_windows_select_by_position_and_time() {
    let dir = tempfile::tempdir().unwrap();
    assert_exit(
        &run(
            dir.path(),
            &["generate", "--rows", "1000", "--out", "in.pb"],
        ),
        0,
    );
    let o = pull_file(dir.path(), "in.pb", "last", &["--window", "last:300"]);
    assert_exit(&o, 0);
    let ds = dataset(&dir.path().join("last"));
    assert_eq!(ds["counts"]["messages"], 300);
    assert_eq!(ds["source"]["partitions"][0]["start"], 700);
    let o = pull_file(dir.path(), "in.pb", "off", &["--window", "offsets:100-200"]);
    assert_exit(&o, 0);
    assert_eq!(dataset(&dir.path().join("off"))["counts"]["messages"], 100);
    // Records are 250 ms apart from 1700000000000: the first 100 s hold 400 of them.
    let o = pull_file(
        dir.path(),
        "in.pb",
        "t",
        &["--window", "time:2023-11-14T22:13:20Z..1700000100000"],
    );
    assert_exit(&o, 0);
    let ds = dataset(&dir.path().join("t"));
    assert_eq!(ds["counts"]["messages"], 400);
    assert_eq!(ds["counts"]["skipped_outside_window"], 600);
    // Past the end: a usage error naming the size.
    let o = pull_file(dir.path(), "in.pb", "x", &["--window", "offsets:900-1200"]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("past the end of in.pb (1000 messages)"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("x").exists());
}

#[test]
fn wrong_path_and_damaged_file_are_clear_errors_that_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = pull_file(dir.path(), "nope.pb", "s", &[]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("cannot read nope.pb"), "{}", stderr(&o));
    assert!(!dir.path().join("s").exists());

    assert_exit(
        &run(dir.path(), &["generate", "--rows", "100", "--out", "in.pb"]),
        0,
    );
    let mut bytes = std::fs::read(dir.path().join("in.pb")).unwrap();
    bytes.truncate(bytes.len() - 5);
    std::fs::write(dir.path().join("cut.pb"), &bytes).unwrap();
    let o = pull_file(dir.path(), "cut.pb", "s", &[]);
    assert_exit(&o, 4);
    assert!(
        stderr(&o).contains("the last message is cut off"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("s").exists());
}

#[test]
fn a_failed_pull_leaves_the_previous_snapshot_untouched() {
    let dir = tempfile::tempdir().unwrap();
    assert_exit(&run(dir.path(), &["pull", "--out", "s"]), 0);
    let before = read_tree(&dir.path().join("s"));
    assert_exit(
        &run(
            dir.path(),
            &[
                "generate",
                "--rows",
                "500",
                "--bad-ratio",
                "0.5",
                "--bad-kinds",
                "nan",
                "--out",
                "bad.pb",
            ],
        ),
        0,
    );
    assert_exit(&pull_file(dir.path(), "bad.pb", "s", &[]), 4);
    assert!(
        before == read_tree(&dir.path().join("s")),
        "the good snapshot changed"
    );
    assert!(dir.path().join("s.quarantine.jsonl").exists());
    // A folder that is not a snapshot is never replaced.
    std::fs::create_dir(dir.path().join("mine")).unwrap();
    std::fs::write(dir.path().join("mine/notes.txt"), "keep").unwrap();
    let o = run(dir.path(), &["pull", "--out", "mine"]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("is not an emshap-ci snapshot"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("mine/notes.txt")).unwrap(),
        "keep"
    );
}

/// A pull killed half-way (its input is a pipe the test stops feeding) leaves no snapshot,
/// and the next pull cleans up and succeeds.
#[test]
fn a_pull_killed_half_way_leaves_no_snapshot() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    assert_exit(
        &run(
            dir.path(),
            &["generate", "--rows", "4000", "--out", "in.pb"],
        ),
        0,
    );
    let data = std::fs::read(dir.path().join("in.pb")).unwrap();
    let fifo = dir.path().join("pipe.pb");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = bin()
        .args(["pull", "--source", "file:pipe.pb", "--out", "s", "-q"])
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    pipe.write_all(&data[..data.len() / 2]).unwrap();
    pipe.flush().unwrap();
    // Wait until the pull has made its staging folder, i.e. it is really half-way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let staging = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".s.staging-"))
    };
    while !staging() {
        assert!(std::time::Instant::now() < deadline, "pull never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(pipe);
    assert!(
        !dir.path().join("s").exists(),
        "a killed pull left a snapshot"
    );
    assert!(!dir.path().join("s/dataset.json").exists());
    // The next pull removes the dead one's staging folder and completes.
    assert_exit(&pull_file(dir.path(), "in.pb", "s", &["-q"]), 0);
    assert!(!staging(), "stale staging folder left behind");
    assert!(Path::new(&dir.path().join("s/dataset.json")).exists());
}

#[test]
fn scaler_reuse_takes_another_snapshots_scaler() {
    let dir = tempfile::tempdir().unwrap();
    assert_exit(&run(dir.path(), &["pull", "--out", "a", "-q"]), 0);
    assert_exit(
        &run(
            dir.path(),
            &[
                "generate", "--rows", "2000", "--seed", "11", "--out", "other.pb",
            ],
        ),
        0,
    );
    let o = pull_file(
        dir.path(),
        "other.pb",
        "b",
        &["--scaler", "reuse:a/scaler.json", "-q"],
    );
    assert_exit(&o, 0);
    assert_eq!(
        std::fs::read(dir.path().join("a/scaler.json")).unwrap(),
        std::fs::read(dir.path().join("b/scaler.json")).unwrap()
    );
    assert_eq!(dataset(&dir.path().join("b"))["scaler"]["mode"], "reuse");
    // A scaler for other features is refused.
    let o = pull_file(
        dir.path(),
        "other.pb",
        "c",
        &["--features", "cpu_util", "--scaler", "reuse:a/scaler.json"],
    );
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("its features (cpu_util,mem_util"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("c").exists());
}

/// dataset.json (format 2) carries the train split's reference for drift: for each feature
/// and the target, 101 exact quantiles, count, missing, mean, sd and the atoms. The target's
/// quantiles are recomputed here from train.parquet and must match exactly.
#[test]
fn the_snapshot_records_the_train_splits_exact_quantiles() {
    let dir = tempfile::tempdir().unwrap();
    assert_exit(&run(dir.path(), &["pull", "--out", "s"]), 0);
    let ds = dataset(&dir.path().join("s"));
    assert_eq!(ds["format"], "emshap-ci.dataset/2");
    let reference = ds["reference"].as_array().unwrap();
    let features = ds["features"].as_array().unwrap();
    assert_eq!(reference.len(), features.len() + 1);
    for r in reference {
        let q: Vec<f64> = r["quantiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(q.len(), 101, "{r}");
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "quantiles ascend: {r}");
        for a in r["atoms"].as_array().unwrap() {
            assert!(a["share"].as_f64().unwrap() > 0.01, "{a}");
        }
    }
    let target = reference.last().unwrap();
    assert_eq!(target["name"], "power_watts");
    let train = read_split(&dir.path().join("s/train.parquet"));
    let mut y: Vec<f32> = train.floats["power_watts"].clone();
    y.sort_by(f32::total_cmp);
    let n = y.len();
    assert_eq!(target["count"].as_u64().unwrap() as usize, n);
    for k in 0..=100usize {
        let rank = (k * n).div_ceil(100).max(1);
        assert_eq!(
            target["quantiles"][k].as_f64().unwrap(),
            f64::from(y[rank - 1]),
            "p{k}"
        );
    }
    let mean = y.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    assert!((target["mean"].as_f64().unwrap() - mean).abs() < 1e-9 * mean.abs());
}

/// `[expectations]`: proposed by `expect --init` from a snapshot, they accept it; a range
/// broken in fewer rows than `mostly` allows is quarantined as `unexpected_value` (offsets
/// and values in quarantine.jsonl, left out of the snapshot); broken in more, or a missing
/// rate, a mean or sd range, the row count or the freshness, it fails with exit 4, the
/// table naming the expectation with examples and their offsets, and nothing written; a
/// bad expectations file is exit 2 naming it.
#[test]
fn expectations_quarantine_what_mostly_allows_and_fail_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_exit(&run(d, &["pull", "--out", "base"]), 0);
    let o = run(
        d,
        &["expect", "--init", "--data", "base", "--out", "exp.toml"],
    );
    assert_exit(&o, 0);
    let proposed = std::fs::read_to_string(d.join("exp.toml")).unwrap();
    assert!(
        proposed.contains("[expectations.features.cpu_util]"),
        "{proposed}"
    );
    // Not replaced.
    assert_exit(
        &run(
            d,
            &["expect", "--init", "--data", "base", "--out", "exp.toml"],
        ),
        2,
    );
    let o = run(d, &["pull", "--out", "ok", "--expectations", "exp.toml"]);
    assert_exit(&o, 0);
    // The proposal as a config file's [expectations] works the same.
    std::fs::write(d.join("emshap-ci.toml"), &proposed).unwrap();
    assert_exit(&run(d, &["pull", "--out", "ok2"]), 0);
    std::fs::remove_file(d.join("emshap-ci.toml")).unwrap();

    // cpu_util above the train split's p99: about 1 % of the rows.
    let p99 = dataset(&d.join("base"))["reference"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "cpu_util")
        .unwrap()["quantiles"][99]
        .as_f64()
        .unwrap();
    let base_rows = dataset(&d.join("base"))["counts"]["rows"].as_u64().unwrap();
    std::fs::write(
        d.join("loose.toml"),
        format!("[features.cpu_util]\nmax = {p99}\nmostly = 0.9\n"),
    )
    .unwrap();
    let o = run(d, &["pull", "--out", "q", "--expectations", "loose.toml"]);
    assert_exit(&o, 0);
    let ds = dataset(&d.join("q"));
    let unexpected = ds["counts"]["unexpected"].as_u64().unwrap();
    assert!(
        unexpected > 50 && unexpected < base_rows / 20,
        "{unexpected}"
    );
    // Every message is a row, a duplicate, invalid, or unexpected (checked before the
    // duplicates are removed, so a quarantined copy may leave its twin unduplicated).
    let c = &ds["counts"];
    let n = |k: &str| c[k].as_u64().unwrap();
    assert_eq!(
        n("messages"),
        n("rows") + n("duplicates") + n("invalid_total") + unexpected,
        "{c}"
    );
    let q = std::fs::read_to_string(d.join("q/quarantine.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["reason"] == "unexpected_value")
        .collect();
    assert_eq!(lines.len() as u64, unexpected);
    assert!(
        lines[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("cpu_util = "),
        "{}",
        lines[0]
    );
    assert!(lines[0]["offset"].is_i64());
    let split_rows: usize = ["train", "val", "test"]
        .iter()
        .map(|s| read_split(&d.join(format!("q/{s}.parquet"))).node_id.len())
        .sum();
    assert_eq!(split_rows as u64, n("rows"));

    // The same range with mostly 1: exit 4, the table, nothing written but the quarantine.
    std::fs::write(
        d.join("strict.toml"),
        format!("[features.cpu_util]\nmax = {p99}\n"),
    )
    .unwrap();
    let o = run(d, &["pull", "--out", "s", "--expectations", "strict.toml"]);
    assert_exit(&o, 4);
    let err = stderr(&o);
    assert!(
        err.contains("| cpu_util.max |") && err.contains("✗ failed"),
        "{err}"
    );
    assert!(err.contains("1 expectation failed: cpu_util.max"), "{err}");
    assert!(!d.join("s").exists());
    assert!(d.join("s.quarantine.jsonl").is_file());

    // Aggregates: the mean, the sd, the row count, the freshness (the fixture is old).
    for (text, name) in [
        (
            "[features.cpu_util]\nmean = { min = 1000.0 }\n",
            "cpu_util.mean",
        ),
        ("[features.temp_cpu]\nsd = { max = 0.001 }\n", "temp_cpu.sd"),
        ("rows = { min = 1000000 }\n", "rows"),
        ("freshness_minutes = 60\n", "freshness_minutes"),
        ("[features.power_watts]\nmax = 1.0\n", "power_watts.max"),
    ] {
        std::fs::write(d.join("agg.toml"), text).unwrap();
        let o = run(d, &["pull", "--out", "agg", "--expectations", "agg.toml"]);
        assert_exit(&o, 4);
        let err = stderr(&o);
        assert!(err.contains(&format!("| {name} |")), "{name}: {err}");
        assert!(!d.join("agg").exists());
    }

    // Bad files: exit 2, naming the file and the key.
    for (text, needle) in [
        ("[features.cpu_util]\nmaxx = 1.0\n", "maxx"),
        ("[features.not_a_feature]\nmax = 1.0\n", "not_a_feature"),
        ("[features.cpu_util]\nmostly = 2.0\n", "mostly"),
    ] {
        std::fs::write(d.join("bad.toml"), text).unwrap();
        let o = run(d, &["pull", "--out", "bad", "--expectations", "bad.toml"]);
        assert_exit(&o, 2);
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    }
    let o = run(
        d,
        &["pull", "--out", "bad", "--expectations", "absent.toml"],
    );
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("absent.toml"), "{}", stderr(&o));
}
