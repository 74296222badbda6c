//! emshap-ci-train as emshap-ci starts it: its `--version` line is the one emshap-ci checks,
//! and a job it cannot run is refused with a result file that says why (exit 2), never a
//! panic. (End-to-end training through emshap-ci is in the root package's tests/all/train.rs,
//! which needs this binary built beside emshap-ci: this test target makes cargo build it.)

use std::process::Command;

const TRAINER: &str = env!("CARGO_BIN_EXE_emshap-ci-train");

#[test]
fn version_is_the_line_emshap_ci_checks() {
    let o = Command::new(TRAINER).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        emshap_ci::trainer::version_line()
    );
}

#[test]
fn a_job_from_another_version_is_refused_with_a_result_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.json");
    let result = dir.path().join("result.json");
    std::fs::write(
        &job,
        r#"{"format":"emshap-ci.train-job/0","version":"0.0.0","quiet":true,"log":"warn","job":{"model":"power","settings":{}}}"#,
    )
    .unwrap();
    let o = Command::new(TRAINER)
        .arg("--job")
        .arg(&job)
        .arg("--result")
        .arg(&result)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["code"], 2);
    assert_eq!(r["kind"], "usage");
    assert!(
        r["message"].as_str().unwrap().contains("training job"),
        "{r}"
    );
}
