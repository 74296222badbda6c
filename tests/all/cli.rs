//! What users read: `--help` and the rendered errors, snapshotted with insta so a change
//! shows up in review; and the exit codes of DESIGN §7.

use crate::harness::*;

fn help(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), args);
    assert_exit(&o, 0);
    stdout(&o)
}

#[test]
fn help_texts() {
    insta::assert_snapshot!("help", help(&["--help"]));
    insta::assert_snapshot!("help_pull", help(&["pull", "--help"]));
    insta::assert_snapshot!("help_generate", help(&["generate", "--help"]));
    insta::assert_snapshot!("help_train_power", help(&["train", "power", "--help"]));
    insta::assert_snapshot!("help_train_emshap", help(&["train", "emshap", "--help"]));
    insta::assert_snapshot!("help_evaluate", help(&["evaluate", "--help"]));
    insta::assert_snapshot!("help_explain", help(&["explain", "--help"]));
}

/// Runs a failing command and returns "exit N: stderr" for a snapshot.
fn failure(args: &[&str], setup: impl FnOnce(&std::path::Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let o = run(dir.path(), args);
    format!("exit {}: {}", o.status.code().unwrap_or(-1), stderr(&o))
}

#[test]
fn rendered_errors() {
    let none = |_: &std::path::Path| {};
    insta::assert_snapshot!(
        "err_window",
        failure(&["pull", "--window", "yesterday"], none)
    );
    insta::assert_snapshot!(
        "err_feature",
        failure(&["pull", "--features", "cpu_util,cpu"], none)
    );
    insta::assert_snapshot!("err_source", failure(&["pull", "--source", "s3://x"], none));
    insta::assert_snapshot!(
        "err_no_brokers",
        failure(&["pull", "--source", "kafka:raw_metrics"], none)
    );
    insta::assert_snapshot!(
        "err_missing_config",
        failure(&["--config", "none.toml", "pull"], none)
    );
    insta::assert_snapshot!(
        "err_train_no_snapshot",
        failure(&["train", "power", "--data", "nowhere"], none)
    );
    insta::assert_snapshot!(
        "err_train_mask_rate",
        failure(&["train", "emshap", "--mask-rate", "0.9,0.1"], none)
    );
    insta::assert_snapshot!(
        "err_train_bad_device_in_config",
        failure(&["train", "power"], |d| std::fs::write(
            d.join("emshap-ci.toml"),
            "[train]\ndevice = \"tpu\"\n"
        )
        .unwrap())
    );
    insta::assert_snapshot!(
        "err_bad_config",
        failure(&["pull"], |d| std::fs::write(
            d.join("emshap-ci.toml"),
            "[pull]\nwindw = 1\n"
        )
        .unwrap())
    );
    insta::assert_snapshot!(
        "err_generate_target",
        failure(&["generate", "--rows", "5"], none)
    );
    insta::assert_snapshot!(
        "err_bad_kind",
        failure(&["generate", "--bad-kinds", "evil", "--out", "x"], none)
    );
}

#[test]
fn settings_layer_config_then_env_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("emshap-ci.toml"),
        "[pull]\nwindow = \"last:100\"\nout = \"from-config\"\n",
    )
    .unwrap();
    // Config file alone.
    assert_exit(&run(dir.path(), &["pull", "-q"]), 0);
    assert_eq!(
        dataset(&dir.path().join("from-config"))["counts"]["messages"],
        100
    );
    // The environment beats the file.
    let o = run_env(dir.path(), &["pull", "-q"], "EMSHAP_CI_WINDOW", "last:200");
    assert_exit(&o, 0);
    assert_eq!(
        dataset(&dir.path().join("from-config"))["counts"]["messages"],
        200
    );
    // A flag beats the environment.
    let o = run_env(
        dir.path(),
        &["pull", "-q", "--window", "last:300"],
        "EMSHAP_CI_WINDOW",
        "last:200",
    );
    assert_exit(&o, 0);
    assert_eq!(
        dataset(&dir.path().join("from-config"))["counts"]["messages"],
        300
    );
}

#[test]
fn json_output_ends_with_one_object_also_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["pull", "--output", "json", "--out", "s"]);
    assert_exit(&o, 0);
    let last: serde_json::Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], true);
    assert_eq!(last["report"]["messages"], 16000);
    let o = run(
        dir.path(),
        &["pull", "--output", "json", "--source", "file:missing.pb"],
    );
    assert_exit(&o, 2);
    let last: serde_json::Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], false);
    assert_eq!(last["exit_code"], 2);
    assert_eq!(last["kind"], "io");
}

#[test]
fn generate_is_deterministic_and_atomic() {
    let dir = tempfile::tempdir().unwrap();
    assert_exit(
        &run(
            dir.path(),
            &["generate", "--rows", "500", "--seed", "5", "--out", "a.pb"],
        ),
        0,
    );
    assert_exit(
        &run(
            dir.path(),
            &["generate", "--rows", "500", "--seed", "5", "--out", "b.pb"],
        ),
        0,
    );
    assert_eq!(
        std::fs::read(dir.path().join("a.pb")).unwrap(),
        std::fs::read(dir.path().join("b.pb")).unwrap()
    );
    let o = run(
        dir.path(),
        &["generate", "--rows", "5", "--out", "no/such/../../a.pb/x"],
    );
    assert_exit(&o, 2);
    assert_eq!(
        std::fs::read(dir.path().join("a.pb")).unwrap().len(),
        std::fs::read(dir.path().join("b.pb")).unwrap().len()
    );
}

/// The bundled fixture is what `generate` makes with the documented command (README).
#[test]
fn embedded_fixture_regenerates_from_its_documented_command() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        dir.path(),
        &[
            "generate",
            "--rows",
            "16000",
            "--nodes",
            "48",
            "--seed",
            "7",
            "--bad-ratio",
            "0.004",
            "--out",
            "f.pb",
        ],
    );
    assert_exit(&o, 0);
    let fresh = std::fs::read(dir.path().join("f.pb")).unwrap();
    let shipped = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/telemetry.pb"
    ))
    .unwrap();
    assert!(
        fresh == shipped,
        "fixtures/telemetry.pb is stale: regenerate it with the README's command"
    );
}

/// Every `EMSHAP_CI_*` variable the code reads is in the README's list, and no variable is
/// read for two different settings (DESIGN §12: one variable never means two things).
#[test]
fn every_environment_variable_is_documented_and_means_one_thing() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut sources = Vec::new();
    let mut stack = vec![root.join("src"), root.join("crates/emshap-train/src")];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                sources.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut found = 0;
    for (path, text) in &sources {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("\"EMSHAP_CI_") {
            let name: String = rest[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[i + 1 + name.len()..];
            if name.ends_with('_') {
                continue; // a prefix, as in starts_with("EMSHAP_CI_")
            }
            found += 1;
            assert!(
                readme.contains(&format!("`{name}`")),
                "{name} (read in {}) is not in README.md's list of variables",
                path.display()
            );
        }
    }
    assert!(
        found > 50,
        "found only {found} variables: the scan is broken"
    );
    // A variable read by several flags must mean one setting: only these are shared (the
    // folders one stage writes and the next reads, and settings that mean the same in every
    // command that has them). Any other variable declared twice is a collision.
    const SHARED: [&str; 14] = [
        "EMSHAP_CI_DEPLOY_WORKFLOW",
        "EMSHAP_CI_KAFKA_PROPERTIES",
        "EMSHAP_CI_DATA",
        "EMSHAP_CI_MODELS",
        "EMSHAP_CI_EVAL",
        "EMSHAP_CI_THREADS",
        "EMSHAP_CI_SHA",
        "EMSHAP_CI_STORE",
        "EMSHAP_CI_FORCE",
        "EMSHAP_CI_REASON",
        "EMSHAP_CI_BROKERS",
        "EMSHAP_CI_KAFKA_TIMEOUT",
        "EMSHAP_CI_MANIFEST_URI",
        "EMSHAP_CI_REPO",
    ];
    let mut declared = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (path, text) in &sources {
        for (i, _) in text.match_indices("env = \"EMSHAP_CI_") {
            let name: String = text[i + 7..].chars().take_while(|c| *c != '"').collect();
            let after = &text[i..];
            let field: String = after
                .find("pub ")
                .map(|j| after[j + 4..].chars().take_while(|c| *c != ':').collect())
                .unwrap_or_default();
            declared.entry(name).or_default().push(format!(
                "{} --{field}",
                path.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(declared.len() > 50, "{declared:?}");
    for (name, sites) in &declared {
        assert!(
            sites.len() == 1 || SHARED.contains(&name.as_str()),
            "{name} is read by {sites:?}: one variable, two meanings (use EMSHAP_CI_<COMMAND>_<NAME>)"
        );
    }
}

/// In Actions, the log group is named from the parsed command, whatever flags come first.
#[test]
fn the_log_group_is_named_from_the_command_not_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["-q", "pull", "--out", "data"])
        .env("GITHUB_ACTIONS", "true")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_exit(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("::group::emshap-ci pull\n"), "{out}");
    assert!(!out.contains("::group::emshap-ci \n"), "{out}");
}
