//! `pull` from a real Kafka-protocol broker (Tansu on 127.0.0.1), and `generate` producing
//! to it: windows, reproducibility, every kind of bad record, and the broker's failures.
//! Every test here names `kafka` so the fast subset can leave them out.

use crate::harness::*;

fn pull(
    t: &Tansu,
    dir: &std::path::Path,
    topic: &str,
    out: &str,
    extra: &[&str],
) -> std::process::Output {
    let source = format!("kafka:{topic}");
    let mut args = vec![
        "pull",
        "--source",
        &source,
        "--brokers",
        &t.brokers,
        "--out",
        out,
        "--kafka-timeout",
        "10",
        "-q",
    ];
    args.extend_from_slice(extra);
    run(dir, &args)
}

/// Pulls, asserts success, and returns the snapshot's counts.
fn pulled(
    t: &Tansu,
    dir: &std::path::Path,
    topic: &str,
    out: &str,
    extra: &[&str],
) -> serde_json::Value {
    assert_exit(&pull(t, dir, topic, out, extra), 0);
    counts(dir, out)
}

fn counts(dir: &std::path::Path, out: &str) -> serde_json::Value {
    dataset(&dir.join(out))["counts"].clone()
}

#[test]
fn kafka_pull_reads_every_partition_and_the_same_window_gives_the_same_bytes() {
    let t = Tansu::start();
    t.generate("m", &["--rows", "3000", "--partitions", "3"]);
    let dir = tempfile::tempdir().unwrap();
    pulled(&t, dir.path(), "m", "a", &["--workers", "1"]);
    let ds = dataset(&dir.path().join("a"));
    assert_eq!(ds["counts"]["messages"], 3000);
    assert_eq!(ds["counts"]["rows"], 3000);
    let parts = ds["source"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert!(
        parts.iter().all(|p| p["end"].as_i64().unwrap() > 0),
        "{parts:?}"
    );
    let sum: i64 = parts
        .iter()
        .map(|p| p["end"].as_i64().unwrap() - p["start"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, 3000);

    // The same offsets, pulled again with other threads after more data arrived, give the
    // same bytes.
    let window = format!(
        "offsets:{}",
        parts
            .iter()
            .map(|p| format!("{}={}-{}", p["partition"], p["start"], p["end"]))
            .collect::<Vec<_>>()
            .join(",")
    );
    pulled(
        &t,
        dir.path(),
        "m",
        "a2",
        &["--window", &window, "--workers", "1"],
    );
    t.generate("m", &["--rows", "500", "--seed", "99"]);
    pulled(
        &t,
        dir.path(),
        "m",
        "b",
        &["--window", &window, "--workers", "2"],
    );
    assert!(
        read_tree(&dir.path().join("a2")) == read_tree(&dir.path().join("b")),
        "same window, different bytes"
    );
    // `all` then resolved to those offsets: the data files are the same too; only the
    // window's spelling in dataset.json differs.
    let data = |d: &str| {
        let mut t = read_tree(&dir.path().join(d));
        t.retain(|(n, _)| n != "dataset.json");
        t
    };
    assert!(data("a") == data("b"), "same offsets, different data");
    assert_eq!(
        dataset(&dir.path().join("a"))["snapshot_sha256"],
        dataset(&dir.path().join("b"))["snapshot_sha256"]
    );
    // And the whole topic now has both batches.
    let c = pulled(&t, dir.path(), "m", "c", &[]);
    assert_eq!(c["messages"], 3500);
}

#[test]
fn kafka_last_n_and_time_windows() {
    let t = Tansu::start();
    t.generate("w", &["--rows", "2000"]);
    let dir = tempfile::tempdir().unwrap();
    pulled(&t, dir.path(), "w", "last", &["--window", "last:100"]);
    let ds = dataset(&dir.path().join("last"));
    assert_eq!(
        ds["counts"]["messages"], 300,
        "100 from each of 3 partitions"
    );
    // Records are 250 ms apart from 1700000000000: [+100 s, +200 s) holds 400.
    pulled(
        &t,
        dir.path(),
        "w",
        "time",
        &["--window", "time:1700000100000..1700000200000"],
    );
    let c = counts(dir.path(), "time");
    assert_eq!(c["rows"].as_u64().unwrap(), 400, "{c}");
}

fn bad_kind(kind: &str) -> (tempfile::TempDir, serde_json::Value, Vec<serde_json::Value>) {
    let t = Tansu::start();
    t.generate(
        "b",
        &[
            "--rows",
            "3000",
            "--bad-ratio",
            "0.005",
            "--bad-kinds",
            kind,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    pulled(&t, dir.path(), "b", "s", &[]);
    let c = counts(dir.path(), "s");
    let q = std::fs::read_to_string(dir.path().join("s/quarantine.jsonl")).unwrap();
    let lines = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (dir, c, lines)
}

#[track_caller]
fn assert_only_reason(c: &serde_json::Value, q: &[serde_json::Value], reason: &str) {
    let n = c["invalid"][reason].as_u64().unwrap();
    assert!(n > 3, "{reason}: {c}");
    assert_eq!(c["invalid_total"].as_u64().unwrap(), n, "{c}");
    assert_eq!(q.len() as u64, n);
    for l in q {
        assert_eq!(l["reason"], reason);
        assert_eq!(l["topic"], "b");
        assert!(l["partition"].as_i64().unwrap() < 3 && l["offset"].as_i64().unwrap() >= 0);
    }
}

#[test]
fn kafka_undecodable_bytes_are_quarantined() {
    let (_d, c, q) = bad_kind("undecodable");
    assert_only_reason(&c, &q, "undecodable");
    assert!(
        q[0]["detail"].as_str().unwrap().contains("decode"),
        "{}",
        q[0]
    );
}

#[test]
fn kafka_nan_feature_is_quarantined() {
    let (_d, c, q) = bad_kind("nan");
    assert_only_reason(&c, &q, "non_finite_feature");
    assert_eq!(q[0]["detail"], "cpu_util=NaN");
    assert!(q[0]["node_id"].as_str().unwrap().starts_with("node-"));
}

#[test]
fn kafka_negative_power_is_quarantined() {
    let (_d, c, q) = bad_kind("negative-power");
    assert_only_reason(&c, &q, "negative_target");
}

#[test]
fn kafka_missing_target_is_quarantined() {
    let (_d, c, q) = bad_kind("missing-target");
    assert_only_reason(&c, &q, "missing_target");
}

#[test]
fn kafka_missing_feature_is_imputed_not_quarantined() {
    let (_d, c, q) = bad_kind("missing-feature");
    assert!(q.is_empty());
    assert_eq!(c["invalid_total"], 0);
    assert!(c["imputed"]["mem_util"].as_u64().unwrap() > 3, "{c}");
    assert_eq!(c["rows"], 3000);
}

#[test]
fn kafka_duplicates_keep_the_last_one_seen() {
    let (dir, c, q) = bad_kind("duplicate");
    let dups = c["duplicates"].as_u64().unwrap();
    assert!(dups > 3, "{c}");
    assert_eq!(c["invalid_total"], 0, "duplicates are not invalid");
    assert_eq!(
        c["rows"].as_u64().unwrap() + dups,
        c["messages"].as_u64().unwrap()
    );
    assert_eq!(q.len() as u64, dups);
    // The row kept for each duplicated (node, timestamp) is the later message (the re-send,
    // which the generator makes 1 W higher), not the quarantined earlier one.
    let mut kept = std::collections::HashMap::new();
    for split in ["train", "val", "test"] {
        let s = read_split(&dir.path().join(format!("s/{split}.parquet")));
        for i in 0..s.node_id.len() {
            kept.insert(
                (s.node_id[i].clone(), s.ints["timestamp_ms"][i]),
                (s.ints["partition"][i], s.ints["offset"][i]),
            );
        }
    }
    for l in &q {
        assert_eq!(l["reason"], "duplicate");
        let key = (
            l["node_id"].as_str().unwrap().to_string(),
            l["timestamp_ms"].as_i64().unwrap(),
        );
        let (p, o) = kept[&key];
        assert_eq!(
            p,
            l["partition"].as_i64().unwrap(),
            "same key, same partition"
        );
        assert!(
            o > l["offset"].as_i64().unwrap(),
            "kept {o}, dropped {}",
            l["offset"]
        );
    }
}

#[test]
fn kafka_window_past_the_end_is_a_usage_error() {
    let t = Tansu::start();
    t.generate("e", &["--rows", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let o = pull(
        &t,
        dir.path(),
        "e",
        "s",
        &["--window", "offsets:0=0-100000"],
    );
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("past the end of e[0] (its last offset is"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("s").exists());
    let o = pull(&t, dir.path(), "e", "s", &["--window", "offsets:7=0-1"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("has no partition 7"), "{}", stderr(&o));
}

#[test]
fn kafka_topic_that_does_not_exist_is_exit_3() {
    let t = Tansu::start();
    t.generate("exists", &["--rows", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let o = pull(&t, dir.path(), "nope", "s", &[]);
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(
        err.contains("topic 'nope' does not exist") && err.contains(&t.brokers),
        "{err}"
    );
    assert!(!dir.path().join("s").exists());
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn kafka_broker_down_is_exit_3_and_writes_nothing() {
    let mut t = Tansu::start();
    t.stop();
    let dir = tempfile::tempdir().unwrap();
    let source = "kafka:raw_metrics";
    let o = run(
        dir.path(),
        &[
            "pull",
            "--source",
            source,
            "--brokers",
            &t.brokers,
            "--out",
            "s",
            "--kafka-timeout",
            "3",
        ],
    );
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("kafka at {}", t.brokers)) && err.contains("is the broker running?"),
        "{err}"
    );
    assert!(!dir.path().join("s").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn kafka_invalid_ratio_over_the_limit_is_exit_4_with_quarantine_and_no_snapshot() {
    let t = Tansu::start();
    t.generate(
        "r",
        &[
            "--rows",
            "1000",
            "--bad-ratio",
            "0.05",
            "--bad-kinds",
            "undecodable,negative-power",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let o = pull(&t, dir.path(), "r", "s", &[]);
    assert_exit(&o, 4);
    assert!(stderr(&o).contains("no snapshot written"), "{}", stderr(&o));
    assert!(!dir.path().join("s").exists());
    let q = std::fs::read_to_string(dir.path().join("s.quarantine.jsonl")).unwrap();
    assert!(q.lines().count() > 20);
    assert!(q.lines().all(|l| l.contains("\"topic\":\"r\"")));
}

/// tests/python/produce_fv.py (confluent-kafka and Google's protobuf runtime) writes `n`
/// good messages and two bad ones to `topic`.
fn produce_python(t: &Tansu, topic: &str, n: usize, extra: &[&str]) {
    let python = std::env::var("EMSHAP_CI_PYTHON").expect("EMSHAP_CI_PYTHON from scripts/setup.sh");
    let root = env!("CARGO_MANIFEST_DIR");
    let o = std::process::Command::new(python)
        .arg(format!("{root}/tests/python/produce_fv.py"))
        .args([&t.brokers, topic, &n.to_string(), &format!("{root}/proto")])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "python producer: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn kafka_independent_python_producer_then_pull() {
    let t = Tansu::start();
    produce_python(&t, "py", 600, &[]);
    let dir = tempfile::tempdir().unwrap();
    pulled(&t, dir.path(), "py", "s", &[]);
    let c = counts(dir.path(), "s");
    assert_eq!(c["messages"], 602);
    assert_eq!(c["rows"], 600);
    assert_eq!(c["invalid"]["undecodable"], 1);
    assert_eq!(c["invalid"]["non_finite_feature"], 1);
    // Values survive the trip: cpu_util = i and power = 100 + i, in time order.
    let train = read_split(&dir.path().join("s/train.parquet"));
    let scaler: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("s/scaler.json")).unwrap()).unwrap();
    let (m, sd) = (
        scaler["mean"][0].as_f64().unwrap(),
        scaler["std"][0].as_f64().unwrap(),
    );
    for i in 0..train.node_id.len() {
        let cpu = f64::from(train.floats["cpu_util"][i]) * sd + m;
        assert!((cpu - i as f64).abs() < 1e-3, "row {i}: cpu {cpu}");
        assert_eq!(train.floats["power_watts"][i], 100.0 + i as f32);
    }
}

#[test]
fn kafka_group_commit_then_committed_window_reads_only_new_messages() {
    let t = Tansu::start();
    t.generate("g", &["--rows", "600"]);
    let dir = tempfile::tempdir().unwrap();
    let c = pulled(
        &t,
        dir.path(),
        "g",
        "first",
        &["--group", "trainer", "--commit"],
    );
    assert_eq!(c["messages"], 600);
    // Without --commit nothing is committed: a second group starts from the beginning.
    let c = pulled(
        &t,
        dir.path(),
        "g",
        "other",
        &["--group", "other", "--window", "committed"],
    );
    assert_eq!(c["messages"], 600);
    t.generate("g", &["--rows", "300", "--seed", "3"]);
    let c = pulled(
        &t,
        dir.path(),
        "g",
        "next",
        &["--group", "trainer", "--window", "committed"],
    );
    assert_eq!(c["messages"], 300);
}

/// Values written by Confluent's own serializer (confluent-kafka's ProtobufSerializer with a
/// mock:// Schema Registry): `auto` reads them all and records the schema id in the lineage;
/// `confluent` refuses a bare value as `unknown_framing`; a value of another message type
/// is `wrong_message_type`; `raw` reads none of the framed ones.
#[test]
fn kafka_confluent_schema_registry_framing_is_read() {
    let t = Tansu::start();
    produce_python(&t, "sr", 600, &["--confluent"]);
    let dir = tempfile::tempdir().unwrap();
    // auto: 600 framed rows; the other-type one is refused, the bare one is read as bare.
    pulled(
        &t,
        dir.path(),
        "sr",
        "auto",
        &["--max-invalid-ratio", "0.5"],
    );
    let c = counts(dir.path(), "auto");
    assert_eq!(c["messages"], 602);
    assert_eq!(c["invalid"]["wrong_message_type"], 1, "{c}");
    assert_eq!(c["invalid"]["non_finite_feature"], 1, "{c}");
    assert_eq!(c["rows"], 600, "{c}");
    let ds = dataset(&dir.path().join("auto"));
    let ids = ds["source"]["schema_ids"].as_object().unwrap();
    assert_eq!(ids.len(), 1, "{ds}");
    assert_eq!(
        ids.values().next().unwrap(),
        600,
        "the ids of the messages read: {ds}"
    );
    let train = read_split(&dir.path().join("auto/train.parquet"));
    assert_eq!(train.floats["power_watts"][0], 100.0);
    // confluent: the bare value is not framed.
    pulled(
        &t,
        dir.path(),
        "sr",
        "conf",
        &[
            "--max-invalid-ratio",
            "0.5",
            "--payload-format",
            "confluent",
        ],
    );
    let c = counts(dir.path(), "conf");
    assert_eq!(c["invalid"]["unknown_framing"], 1, "{c}");
    assert_eq!(c["rows"], 600, "{c}");
    // raw: the framed ones do not decode as bare FeatureVectors (too many invalid: exit 4).
    let o = run(
        dir.path(),
        &[
            "pull",
            "--source",
            "kafka:sr",
            "--brokers",
            &t.brokers,
            "--out",
            "raw",
            "--payload-format",
            "raw",
        ],
    );
    assert_exit(&o, 4);
}

/// Confluent's newer header form, written by confluent-kafka's own ProtobufSerializer with
/// `header_schema_id_serializer` (a bare value; magic 1, the schema GUID and the message
/// index in the `__value_schema_id` header): read in auto and confluent form, the snapshot
/// the same bytes as the one pulled from bare payloads of the same messages, the GUID in
/// the lineage; a header naming another message type is `wrong_message_type`, one with
/// another magic byte `unknown_framing`.
#[test]
fn kafka_confluent_header_framing_is_read_like_raw_payloads() {
    let t = Tansu::start();
    produce_python(&t, "srh", 600, &["--confluent-header"]);
    produce_python(&t, "srr", 600, &[]);
    let dir = tempfile::tempdir().unwrap();
    let relaxed = ["--max-invalid-ratio", "0.5"];
    pulled(&t, dir.path(), "srr", "raw", &relaxed);
    for format in ["auto", "confluent"] {
        pulled(
            &t,
            dir.path(),
            "srh",
            format,
            &[relaxed[0], relaxed[1], "--payload-format", format],
        );
        let c = counts(dir.path(), format);
        assert_eq!(c["messages"], 602, "{c}");
        assert_eq!(c["rows"], 600, "{c}");
        assert_eq!(c["invalid"]["wrong_message_type"], 1, "{c}");
        assert_eq!(c["invalid"]["unknown_framing"], 1, "{c}");
        let ds = dataset(&dir.path().join(format));
        let guids = ds["source"]["schema_guids"].as_object().unwrap();
        assert_eq!(guids.len(), 1, "{ds}");
        let (guid, n) = guids.iter().next().unwrap();
        assert_eq!(n, 600, "{ds}");
        assert_eq!(guid.len(), 36, "a hyphenated UUID: {guid}");
        assert!(ds["source"].get("schema_ids").is_none(), "{ds}");
        for split in ["train", "val", "test"] {
            let a = std::fs::read(dir.path().join(format!("{format}/{split}.parquet"))).unwrap();
            let b = std::fs::read(dir.path().join(format!("raw/{split}.parquet"))).unwrap();
            assert!(
                a == b,
                "{format}: {split}.parquet differs from the raw pull's"
            );
        }
    }
}

/// Client properties reach librdkafka (a real one is used; a misspelt one is a settings
/// error, exit 2); the ones emshap-ci owns and secrets are refused, and a refused secret's
/// value is printed nowhere.
#[test]
fn kafka_client_properties_pass_through_and_owned_or_secret_ones_are_refused() {
    let t = Tansu::start();
    t.generate("props", &["--rows", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("emshap-ci.toml"),
        "[kafka.properties]\n\"fetch.min.bytes\" = 1\n\"security.protocol\" = \"plaintext\"\n",
    )
    .unwrap();
    let c = pulled(
        &t,
        d,
        "props",
        "ok",
        &["--kafka-property", "reconnect.backoff.ms=50"],
    );
    assert_eq!(c["messages"], 300);
    let o = pull(
        &t,
        d,
        "props",
        "typo",
        &["--kafka-property", "fetch.min.bytez=1"],
    );
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("fetch.min.bytez"), "{}", stderr(&o));
    let o = pull(
        &t,
        d,
        "props",
        "owned",
        &["--kafka-property", "group.id=mine"],
    );
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("emshap-ci owns it (use --group)"),
        "{}",
        stderr(&o)
    );
    let o = pull(
        &t,
        d,
        "props",
        "secret",
        &["--kafka-property", "sasl.password=hunter2"],
    );
    assert_exit(&o, 2);
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(err.contains("EMSHAP_CI_KAFKA_SASL_PASSWORD"), "{err}");
    assert!(
        !out.contains("hunter2") && !err.contains("hunter2"),
        "{out}{err}"
    );
    assert!(!d.join("typo").exists() && !d.join("owned").exists() && !d.join("secret").exists());
}
