//! The action's body, scripts/action.sh, with the binary under test: main mode on the
//! embedded data with a deliberately undertrained candidate (2 epochs) fails the gate with
//! exit 1, is published for inspection and never promoted, and the step outputs and job
//! summary say so; pr mode posts the report as a comment to the GitHub stand-in and
//! publishes nothing. (The composite wrapper, action.yml, runs under act in act.rs.)

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::Stand;

fn action(dir: &Path, mode: &str, extra: &[(&str, String)]) -> Output {
    let mut c = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/action.sh"));
    for (k, _) in std::env::vars() {
        if k.starts_with("EMSHAP_CI_") || k.starts_with("GITHUB_") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.current_dir(dir)
        .env("NO_COLOR", "1")
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", dir.join("output.txt"))
        .env("GITHUB_STEP_SUMMARY", dir.join("summary.md"))
        .env("GITHUB_SHA", "abcdef1234")
        .env("EMSHAP_CI_BIN", env!("CARGO_BIN_EXE_emshap-ci"))
        .env(
            "EMSHAP_CI_TRAIN_BIN",
            env!("CARGO_BIN_EXE_emshap-ci-fake-train"),
        )
        .env("EMSHAP_CI_MODE", mode)
        .env("EMSHAP_CI_EPOCHS", "2")
        .env("EMSHAP_CI_MAX_ROWS", "2000")
        .env("EMSHAP_CI_THREADS", "2")
        // Empty inputs count as unset.
        .env("EMSHAP_CI_CONFIG", "")
        .env("EMSHAP_CI_BROKERS", "");
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().expect("scripts/action.sh runs")
}

/// `name=value` pairs from a $GITHUB_OUTPUT file written with heredoc delimiters.
fn outputs(path: &Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    let mut lines = text.lines();
    while let Some(head) = lines.next() {
        let (name, delim) = head.split_once("<<").expect("heredoc output");
        let value: Vec<&str> = lines.by_ref().take_while(|l| *l != delim).collect();
        out.insert(name.to_string(), value.join("\n"));
    }
    out
}

#[test]
fn action_main_mode_with_a_worse_candidate_fails_the_gate_and_promotes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let store = d.join("store");
    let o = action(
        d,
        "main",
        &[("EMSHAP_CI_STORE", store.display().to_string())],
    );
    let log = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{log}");
    assert!(log.contains("::group::emshap-ci train power"), "{log}");
    let out = outputs(&d.join("output.txt"));
    assert_eq!(
        out.get("verdict").map(String::as_str),
        Some("fail"),
        "{out:?}"
    );
    assert_eq!(out.get("sha").map(String::as_str), Some("abcdef1234"));
    assert!(out["manifest_uri"].ends_with("/store/versions/abcdef1234/manifest.json"));
    let summary = std::fs::read_to_string(d.join("summary.md")).unwrap();
    assert!(summary.starts_with("## ❌ **Gate failed**"), "{summary}");
    assert!(summary.contains("xychart-beta"), "{summary}");
    // Published for inspection, never production.
    assert!(store.join("versions/abcdef1234/manifest.json").is_file());
    assert!(!store.join("production.json").exists());
}

#[test]
fn action_pr_mode_comments_and_publishes_nothing() {
    let stand = Stand::github(200);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let store = d.join("store");
    std::fs::create_dir(&store).unwrap();
    let o = action(
        d,
        "pr",
        &[
            ("EMSHAP_CI_STORE", store.display().to_string()),
            ("GITHUB_TOKEN", "ghs_actionTestToken".into()),
            ("GITHUB_API_URL", stand.url.clone()),
            ("GITHUB_REPOSITORY", "acme/power".into()),
            ("GITHUB_REF", "refs/pull/7/merge".into()),
            ("GITHUB_WORKFLOW", "pr-eval".into()),
        ],
    );
    let log = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    // The undertrained candidate fails the gate: the check fails, the report is posted.
    assert_eq!(o.status.code(), Some(1), "{log}");
    let comments = stand.comments();
    assert_eq!(comments.len(), 1, "{log}");
    let body = comments[0]["body"].as_str().unwrap();
    assert!(
        body.starts_with("<!-- emshap-ci:report workflow=\"pr-eval\" -->\n## ❌"),
        "{body}"
    );
    let out = outputs(&d.join("output.txt"));
    assert!(out["comment_url"].contains("issuecomment-"), "{out:?}");
    assert!(!out.contains_key("manifest_uri"), "{out:?}");
    assert_eq!(
        std::fs::read_dir(&store).unwrap().count(),
        0,
        "pr mode publishes nothing"
    );
}
