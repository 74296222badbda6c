//! `run` end to end against the real servers: Tansu as the source, the S3 server as the
//! store, the GitHub stand-in as the API. main promotes and dispatches; a worse candidate
//! (one epoch) fails the gate with exit 1 and is not promoted; retrain with --force --reason
//! promotes it and the history and report say so; pr comments and publishes nothing. And a
//! re-run with --resume after a failed publish does not pull or train again.

use std::path::Path;
use std::process::Output;

use emshap_ci::store::Store;

use crate::harness::Stand;
use crate::harness::{bin, S3Server, Tansu};

const TOKEN: &str = "ghs_runChainTokenThatMustNeverBePrinted03";
/// Floors a few-epoch candidate clears; every other KPI: at least as good as production.
const GATE: &str = "[power.r2]\ndirection = \"higher\"\nmin = 0.3\n\n[emshap.imputation_rmse]\ndirection = \"lower\"\nmax = 3.0\n";

fn chain(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let o = bin()
        .arg("run")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("emshap-ci runs");
    for s in [&o.stdout, &o.stderr] {
        assert!(
            !String::from_utf8_lossy(s).contains(TOKEN),
            "the token leaked"
        );
    }
    o
}

fn log(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn production(store: &dyn Store) -> Option<String> {
    emshap_ci::store::versions::production(store)
        .unwrap()
        .map(|(p, _)| p.sha)
}

#[test]
fn kafka_s3_run_main_promotes_a_worse_one_fails_retrain_forces_and_pr_comments() {
    let tansu = Tansu::start();
    tansu.generate("raw", &["--rows", "6000"]);
    let s3 = S3Server::start();
    let stand = Stand::github(200);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("gate.toml"), GATE).unwrap();
    let uri = s3.uri("chain");
    let store = s3.store("chain");
    let mut env = kv(&[
        ("EMSHAP_CI_SOURCE", "kafka:raw"),
        ("EMSHAP_CI_BROKERS", &tansu.brokers),
        ("EMSHAP_CI_STORE", &uri),
        ("EMSHAP_CI_GATE", "gate.toml"),
        ("EMSHAP_CI_MAX_ROWS", "2000"),
        ("EMSHAP_CI_THREADS", "2"),
        ("GITHUB_API_URL", &stand.url),
        ("GITHUB_REPOSITORY", "acme/power"),
        ("GITHUB_TOKEN", TOKEN),
    ]);
    env.extend(S3Server::env(&s3.endpoint, &s3.writer));
    let with = |extra: &[(&str, &str)]| {
        let mut e = env.clone();
        e.extend(kv(extra));
        e
    };
    let dispatches = || {
        stand
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/dispatches"))
            .map(|r| r.body["inputs"]["sha"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };

    // main, a good candidate: promoted, deploy dispatched.
    let o = chain(
        d,
        &["--mode", "main", "--work", "w1", "--sha", "aaaa1111"],
        &with(&[("EMSHAP_CI_EPOCHS", "3")]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", log(&o));
    assert_eq!(production(&store).as_deref(), Some("aaaa1111"));
    assert_eq!(dispatches(), ["aaaa1111"]);
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("w1/eval/metrics.json")).unwrap()).unwrap();
    assert_eq!(
        metrics["attribution"]["mean_abs_phi"]
            .as_object()
            .unwrap()
            .len(),
        20
    );
    assert!(metrics["attribution"]["efficiency_gap"].as_f64().unwrap() < 1e-3);

    // main, one epoch: worse than production on the same rows → exit 1, published for
    // inspection, not promoted, nothing dispatched.
    let o = chain(
        d,
        &["--mode", "main", "--work", "w2", "--sha", "bbbb2222"],
        &with(&[("EMSHAP_CI_EPOCHS", "1")]),
    );
    assert_eq!(o.status.code(), Some(1), "{}", log(&o));
    assert!(
        log(&o).contains("| promote | – skipped | 0.0 | verdict fail"),
        "{}",
        log(&o)
    );
    assert_eq!(production(&store).as_deref(), Some("aaaa1111"));
    assert!(store
        .get("versions/bbbb2222/manifest.json")
        .unwrap()
        .is_some());
    assert_eq!(dispatches(), ["aaaa1111"]);
    let report = std::fs::read_to_string(d.join("w2/eval/report.md")).unwrap();
    assert!(report.starts_with("## ❌"), "{report}");

    // retrain, forced with a reason: promoted, and the history and report say so.
    let reason = "emergency: sensor recalibration, accuracy traded for fresh data";
    let o = chain(
        d,
        &[
            "--mode", "retrain", "--work", "w3", "--sha", "cccc3333", "--force", "--reason", reason,
        ],
        &with(&[("EMSHAP_CI_EPOCHS", "1")]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", log(&o));
    assert_eq!(production(&store).as_deref(), Some("cccc3333"));
    assert_eq!(dispatches(), ["aaaa1111", "cccc3333"]);
    let history = store.list("history/").unwrap();
    let last = store.get(history.last().unwrap()).unwrap().unwrap();
    let entry: serde_json::Value = serde_json::from_slice(&last.bytes).unwrap();
    assert_eq!(entry["sha"], "cccc3333");
    assert_eq!(entry["reason"], reason);
    let report = std::fs::read_to_string(d.join("w3/eval/report.md")).unwrap();
    assert!(
        report.contains("Gate FORCED") && report.contains(reason),
        "{report}"
    );

    // pr: one comment with the report, no new version, production unchanged.
    let versions = store.list("versions/").unwrap().len();
    let o = chain(
        d,
        &["--mode", "pr", "--work", "w4"],
        &with(&[
            ("EMSHAP_CI_EPOCHS", "1"),
            ("GITHUB_REF", "refs/pull/7/merge"),
            ("GITHUB_WORKFLOW", "pr-eval"),
        ]),
    );
    assert!(matches!(o.status.code(), Some(0 | 1)), "{}", log(&o));
    let comments = stand.comments();
    assert_eq!(comments.len(), 1, "{}", log(&o));
    let body = comments[0]["body"].as_str().unwrap();
    assert!(
        body.contains("cccc3333"),
        "compared with production: {body}"
    );
    assert_eq!(store.list("versions/").unwrap().len(), versions);
    assert_eq!(production(&store).as_deref(), Some("cccc3333"));
    assert_eq!(dispatches().len(), 2);
}

#[test]
fn s3_run_resume_after_a_failed_publish_does_not_pull_or_train_again() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("gate.toml"), GATE).unwrap();
    let uri = s3.uri("resume");
    let base = kv(&[
        ("EMSHAP_CI_GATE", "gate.toml"),
        ("EMSHAP_CI_EPOCHS", "2"),
        ("EMSHAP_CI_MAX_ROWS", "2000"),
        ("EMSHAP_CI_THREADS", "2"),
    ]);
    let args = ["--mode", "main", "--store", &uri, "--sha", "dddd4444"];
    // Read-only credentials: evaluate reads the store, publish is refused.
    let mut env = base.clone();
    env.extend(S3Server::env(&s3.endpoint, &s3.reader));
    let o = chain(d, &args, &env);
    assert_eq!(o.status.code(), Some(3), "{}", log(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("run stopped at stage `publish` (exit 3)"),
        "{err}"
    );
    assert!(err.contains("| publish | ✗ failed |"), "{err}");
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("work/run.json")).unwrap()).unwrap();
    let status = |run: &serde_json::Value| -> Vec<(String, String)> {
        run["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        status(&run).last().unwrap(),
        &("publish".into(), "failed".into())
    );
    let model = d.join("work/models/emshap_model.onnx");
    let before = std::fs::metadata(&model).unwrap().modified().unwrap();

    // The writer's credentials and --resume: only what is left runs.
    let mut env = base.clone();
    env.extend(S3Server::env(&s3.endpoint, &s3.writer));
    let mut resumed = args.to_vec();
    resumed.push("--resume");
    let o = chain(d, &resumed, &env);
    assert_eq!(o.status.code(), Some(0), "{}", log(&o));
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("work/run.json")).unwrap()).unwrap();
    let want: Vec<(String, String)> = [
        ("pull", "resumed"),
        ("train power", "resumed"),
        ("train emshap", "resumed"),
        ("evaluate", "resumed"),
        ("report", "done"),
        ("publish", "done"),
        ("promote", "done"),
        ("dispatch", "skipped"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(status(&run), want);
    assert_eq!(
        std::fs::metadata(&model).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(production(&s3.store("resume")).as_deref(), Some("dddd4444"));

    // A changed input (the gate file) runs evaluate again, not the training (a new version:
    // its metrics.json differs, and a published version is never rewritten).
    std::fs::write(
        d.join("gate.toml"),
        format!("{GATE}\n[power.mae]\ndirection = \"lower\"\n"),
    )
    .unwrap();
    let o = chain(
        d,
        &[
            "--mode", "main", "--store", &uri, "--sha", "eeee5555", "--resume",
        ],
        &env,
    );
    assert_eq!(o.status.code(), Some(0), "{}", log(&o));
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("work/run.json")).unwrap()).unwrap();
    let st = status(&run);
    assert_eq!(st[2], ("train emshap".into(), "resumed".into()));
    assert_eq!(st[3], ("evaluate".into(), "done".into()));
}

/// The resume digest of a stage is its own resolved settings: editing `[evaluate]` in the
/// config file, or the `EMSHAP_CI_REASON` of a forced retrain, re-runs evaluate only, never
/// pull or train; editing `[train]` re-runs the training, not the pull.
#[test]
fn resume_reruns_only_the_stages_whose_own_settings_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // pr mode publishes nothing, so evaluate may run again under the same id; the forced
    // retrain gets a version of its own.
    let stages = |extra_env: &[(&str, &str)], config: &str| -> Vec<(String, String)> {
        std::fs::write(d.join("emshap-ci.toml"), config).unwrap();
        let mut env = kv(&[("EMSHAP_CI_EPOCHS", "3"), ("EMSHAP_CI_THREADS", "2")]);
        env.extend(kv(extra_env));
        let args: &[&str] = if extra_env.iter().any(|(k, _)| *k == "EMSHAP_CI_FORCE") {
            &["--mode", "retrain", "--sha", "ffff6666", "--resume"]
        } else {
            &["--mode", "pr", "--resume"]
        };
        let o = chain(d, args, &env);
        assert_eq!(o.status.code(), Some(0), "{}", log(&o));
        let run: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("work/run.json")).unwrap()).unwrap();
        run["stages"]
            .as_array()
            .unwrap()
            .iter()
            .take(4)
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let want = |train: &str, evaluate: &str| -> Vec<(String, String)> {
        [
            ("pull", "resumed"),
            ("train power", train),
            ("train emshap", train),
            ("evaluate", evaluate),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    };
    let first = stages(&[], "[evaluate]\nattribution_rows = 8\n");
    assert!(first.iter().all(|(_, s)| s == "done"), "{first:?}");
    assert_eq!(
        stages(&[], "[evaluate]\nattribution_rows = 8\n"),
        want("resumed", "resumed")
    );
    assert_eq!(
        stages(&[], "[evaluate]\nattribution_rows = 4\n"),
        want("resumed", "done")
    );
    assert_eq!(
        stages(
            &[
                ("EMSHAP_CI_FORCE", "true"),
                ("EMSHAP_CI_REASON", "incident 9")
            ],
            "[evaluate]\nattribution_rows = 4\n"
        ),
        want("resumed", "done")
    );
    assert_eq!(
        stages(
            &[],
            "[evaluate]\nattribution_rows = 4\n[train]\nbatch_size = 128\n"
        ),
        want("done", "done")
    );
}

/// For a Kafka source, the window's resolved offset ranges are part of the pull's digest:
/// the same topic resumes; once the topic has grown, `--resume` pulls (and trains) again.
#[test]
fn kafka_resume_pulls_again_when_the_topic_has_grown() {
    let tansu = Tansu::start();
    tansu.generate("grow", &["--rows", "3000"]);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let env = kv(&[
        ("EMSHAP_CI_SOURCE", "kafka:grow"),
        ("EMSHAP_CI_BROKERS", &tansu.brokers),
        ("EMSHAP_CI_EPOCHS", "3"),
        ("EMSHAP_CI_THREADS", "2"),
    ]);
    let pull_status = || {
        let o = chain(d, &["--mode", "pr", "--resume"], &env);
        assert_eq!(o.status.code(), Some(0), "{}", log(&o));
        let run: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("work/run.json")).unwrap()).unwrap();
        let st = |i: usize| run["stages"][i]["status"].as_str().unwrap().to_string();
        (st(0), st(1))
    };
    assert_eq!(pull_status(), ("done".into(), "done".into()));
    assert_eq!(pull_status(), ("resumed".into(), "resumed".into()));
    tansu.generate("grow", &["--rows", "500", "--seed", "9"]);
    assert_eq!(pull_status(), ("done".into(), "done".into()));
}
