//! `emshap-ci doctor` against the real servers: a Tansu broker, the S3 server and the
//! GitHub stand-in all reachable gives exit 0 and an `ok` row each; each thing broken gives
//! exit 3 and a failing row that names it and says what to do.

use std::process::Output;

use crate::harness::*;
use emshap_ci::store::Store;

fn doctor(
    s3: &S3Server,
    creds: &Creds,
    stand: &Stand,
    dir: &std::path::Path,
    extra: &[&str],
) -> Output {
    let mut c = bin();
    c.envs(S3Server::env(&s3.endpoint, creds))
        .env("GITHUB_API_URL", &stand.url)
        .env("GITHUB_REPOSITORY", "acme/power")
        .env("GITHUB_TOKEN", "ghs_doctor_token_value");
    let mut args = vec!["doctor", "--output", "json"];
    args.extend_from_slice(extra);
    output(c, dir, &args)
}

fn rows(o: &Output) -> Vec<serde_json::Value> {
    let text = stdout(o);
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    v["checks"].as_array().cloned().unwrap_or_default()
}

fn row<'a>(rows: &'a [serde_json::Value], check: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["check"] == check)
        .unwrap_or_else(|| panic!("no {check} row: {rows:?}"))
}

#[test]
fn kafka_s3_doctor_says_ok_when_everything_is_reachable_and_names_each_failure() {
    let t = Tansu::start();
    t.generate("fv", &["--rows", "300", "--partitions", "2"]);
    let s3 = S3Server::start();
    let stand = Stand::github(200);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let source = "kafka:fv";
    let store = s3.uri("doctor");
    let base = [
        "--source",
        source,
        "--brokers",
        &t.brokers,
        "--store",
        &store,
        "--kafka-timeout",
        "5",
    ];
    let mut all = base.to_vec();
    all.push("--write");
    let o = doctor(&s3, &s3.writer, &stand, d, &all);
    assert_exit(&o, 0);
    let r = rows(&o);
    for check in ["kafka", "store", "github", "onnxruntime", "trainer"] {
        assert_eq!(row(&r, check)["status"], "ok", "{check}: {r:?}");
    }
    let kafka = row(&r, "kafka")["detail"].as_str().unwrap().to_string();
    assert!(kafka.contains("2 partition(s), 300 message(s)"), "{kafka}");
    assert!(row(&r, "store")["detail"]
        .as_str()
        .unwrap()
        .contains("a conditional put and a delete worked"));
    assert!(row(&r, "github")["detail"]
        .as_str()
        .unwrap()
        .contains("workflow deploy.yml (active)"));
    // The probe is gone again.
    assert!(s3.store("doctor").list("doctor/").unwrap().is_empty());
    assert!(!stdout(&o).contains("ghs_doctor_token_value"));

    // Each broken thing: its own failing row with a fix, exit 3.
    let mut wrong_topic = base.to_vec();
    wrong_topic[1] = "kafka:nope";
    let o = doctor(&s3, &s3.writer, &stand, d, &wrong_topic);
    assert_exit(&o, 3);
    let k = row(&rows(&o), "kafka").clone();
    assert_eq!(k["status"], "fail");
    assert!(
        k["detail"]
            .as_str()
            .unwrap()
            .contains("topic 'nope' does not exist"),
        "{k}"
    );
    assert!(!k["fix"].as_str().unwrap().is_empty());

    let o = doctor(&s3, &s3.reader, &stand, d, &all);
    assert_exit(&o, 3);
    let r = rows(&o);
    assert_eq!(
        row(&r, "store")["status"],
        "fail",
        "the reader may not write: {r:?}"
    );
    assert_eq!(row(&r, "kafka")["status"], "ok");

    let mut no_workflow = base.to_vec();
    no_workflow.extend(["--workflow", "missing.yml"]);
    let o = doctor(&s3, &s3.writer, &stand, d, &no_workflow);
    assert_exit(&o, 3);
    let g = row(&rows(&o), "github").clone();
    assert_eq!(g["status"], "fail");
    assert!(
        g["fix"]
            .as_str()
            .unwrap()
            .contains(".github/workflows/missing.yml"),
        "{g}"
    );

    // Without --write nothing is written to the store.
    let before = s3.store("doctor").list("").unwrap();
    let o = doctor(&s3, &s3.writer, &stand, d, &base);
    assert_exit(&o, 0);
    assert_eq!(s3.store("doctor").list("").unwrap(), before);
}

#[test]
fn doctor_without_a_trainer_fails_its_row_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = plain_bin();
    c.env("EMSHAP_CI_TRAIN_BIN", dir.path().join("no-such-trainer"));
    let o = output(c, dir.path(), &["doctor", "--output", "json"]);
    assert_exit(&o, 3);
    let r = rows(&o);
    assert_eq!(row(&r, "trainer")["status"], "fail");
    assert!(
        row(&r, "trainer")["fix"]
            .as_str()
            .unwrap()
            .contains("EMSHAP_CI_TRAIN_BIN")
            || row(&r, "trainer")["detail"]
                .as_str()
                .unwrap()
                .contains("EMSHAP_CI_TRAIN_BIN"),
        "{r:?}"
    );
    assert_eq!(row(&r, "kafka")["status"], "skip");
    assert_eq!(row(&r, "store")["status"], "skip");
    assert_eq!(row(&r, "github")["status"], "skip");
}
