//! How emshap-ci finds, checks and survives its trainer (DESIGN §1): a missing trainer or
//! one of another version is exit 2 saying what to install, before anything is trained; a
//! trainer killed by a signal (the OOM killer) is a stage failure that names the signal,
//! exit 3, with nothing written; an error the trainer reports keeps its message and exit
//! code. Uses the fake trainer (the same protocol as emshap-ci-train).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::harness::*;

fn pulled(dir: &Path) {
    assert_exit(&run(dir, &["pull", "--out", "data", "-q"]), 0);
}

fn train(dir: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = bin();
    c.args([
        "train", "power", "--data", "data", "--out", "models", "--epochs", "3",
    ])
    .current_dir(dir)
    .stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn the_fake_trainer_trains_through_the_real_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pulled(d);
    let o = train(d, &[]);
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains("trained power on cpu (fake trainer)"),
        "{}",
        stdout(&o)
    );
    assert!(d.join("models/power_predictor.onnx").is_file());
}

#[test]
fn a_missing_trainer_is_exit_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pulled(d);
    let o = train(
        d,
        &[("EMSHAP_CI_TRAIN_BIN", "/nonexistent/emshap-ci-train")],
    );
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("trainer /nonexistent/emshap-ci-train: EMSHAP_CI_TRAIN_BIN names a file that does not exist"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    assert!(!d.join("models").exists());

    // And none beside emshap-ci: a copy of emshap-ci alone in a folder.
    let lone = d.join("lone");
    std::fs::create_dir(&lone).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_emshap-ci"), lone.join("emshap-ci")).unwrap();
    let o = std::process::Command::new(lone.join("emshap-ci"))
        .args(["train", "power", "--data", "data", "--out", "models"])
        .env_remove("EMSHAP_CI_TRAIN_BIN")
        .current_dir(d)
        .output()
        .unwrap();
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("lone/emshap-ci-train: not found"), "{err}");
    assert!(err.contains("beside emshap-ci"), "{err}");
}

#[test]
fn a_trainer_of_another_version_is_exit_2_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pulled(d);
    let other = d.join("emshap-ci-train");
    std::fs::write(
        &other,
        "#!/bin/sh\necho 'emshap-ci-train 9.9.9'\ntouch \"$0.ran\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = train(d, &[("EMSHAP_CI_TRAIN_BIN", other.to_str().unwrap())]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("`emshap-ci-train 9.9.9`"), "{err}");
    assert!(
        err.contains(&format!(
            "not `emshap-ci-train {}`",
            env!("CARGO_PKG_VERSION")
        )),
        "{err}"
    );
    assert!(!d.join("models").exists());
}

#[test]
fn a_trainer_killed_by_a_signal_is_a_stage_failure_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pulled(d);
    let o = train(d, &[("EMSHAP_CI_FAKE_TRAIN_KILL", "1")]);
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(err.contains("killed by signal 9 (SIGKILL)"), "{err}");
    assert!(err.contains("out-of-memory"), "{err}");
    assert!(!d.join("models").exists());

    // In `run`, the stage fails and the table says which; the run itself reports.
    let o = {
        let mut c = bin();
        c.args(["run", "--mode", "pr", "--work", "w"])
            .env("EMSHAP_CI_FAKE_TRAIN_KILL", "1")
            .current_dir(d)
            .stdin(std::process::Stdio::null());
        c.output().unwrap()
    };
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(
        err.contains("run stopped at stage `train power` (exit 3)"),
        "{err}"
    );
    assert!(err.contains("| train power | ✗ failed |"), "{err}");
}

#[test]
fn an_error_the_trainer_reports_keeps_its_exit_code_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pulled(d);
    let scaler = d.join("data/scaler.json");
    let text = std::fs::read_to_string(&scaler).unwrap();
    std::fs::write(&scaler, format!("{text} ")).unwrap();
    let o = train(d, &[]);
    assert_exit(&o, 4);
    assert!(
        stderr(&o).contains("changed after the pull"),
        "{}",
        stderr(&o)
    );
}
