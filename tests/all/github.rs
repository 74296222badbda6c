//! The GitHub side against a stand-in for the REST API (`harness::Stand`: a real HTTP server on
//! 127.0.0.1 that serves scripted replies and records every request): one comment created
//! then edited in place, other users' comments with the marker ignored, duplicates removed,
//! a fork's 403 → job summary only, a secondary rate limit retried, 404/422 on dispatch
//! explained, and the token in no output.

use std::path::Path;

use crate::harness::{assert_exit, bin, Stand};

/// `comment` on PR #7 for the pr-eval workflow, with report.md.
const COMMENT: [&str; 7] = [
    "comment",
    "--pr",
    "7",
    "--workflow",
    "pr-eval",
    "--body",
    "report.md",
];

const TOKEN: &str = "ghs_standInTokenThatMustNeverBePrinted0001";

fn gh(stand: &Stand, dir: &Path, args: &[&str]) -> std::process::Output {
    gh_env(stand, dir, args, &[])
}

/// `gh` with more environment variables.
fn gh_env(
    stand: &Stand,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> std::process::Output {
    bin()
        .args(args)
        .envs(env.iter().copied())
        .env("GITHUB_API_URL", &stand.url)
        .env("GITHUB_REPOSITORY", "acme/power")
        .env("GITHUB_TOKEN", TOKEN)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("emshap-ci runs")
}

/// The token appears nowhere, except in the `::add-mask::` command that tells the runner to
/// hide it (which the runner itself never shows).
fn no_token(o: &std::process::Output) {
    for s in [&o.stdout, &o.stderr] {
        let text = String::from_utf8_lossy(s);
        for line in text.lines().filter(|l| !l.starts_with("::add-mask::")) {
            assert!(!line.contains(TOKEN), "the token leaked: {line}");
        }
    }
}

fn report_file(dir: &Path, text: &str) {
    std::fs::write(dir.join("report.md"), text).unwrap();
}

#[test]
fn github_one_comment_created_then_edited_in_place_ignoring_other_users() {
    let stand = Stand::github(200);
    // Someone else quoted our marker: never ours to edit.
    stand
        .state
        .lock()
        .unwrap()
        .comments
        .push(serde_json::json!({
            "id": 5, "user": {"login": "mallory"},
            "body": "<!-- emshap-ci:report workflow=\"pr-eval\" --> fake", "html_url": "x"
        }));
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    report_file(d, "## first run\n");
    let o = gh(&stand, d, &COMMENT);
    assert_exit(&o, 0);
    no_token(&o);
    report_file(d, "## second run\n");
    let o = gh(&stand, d, &COMMENT);
    assert_exit(&o, 0);
    no_token(&o);
    let comments = stand.comments();
    assert_eq!(comments.len(), 2, "mallory's and ours: {comments:?}");
    assert_eq!(
        comments[0]["body"].as_str().unwrap(),
        "<!-- emshap-ci:report workflow=\"pr-eval\" --> fake"
    );
    let ours = &comments[1];
    assert!(ours["body"].as_str().unwrap().contains("## second run"));
    let writes: Vec<String> = stand
        .requests()
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        writes,
        [
            "POST /repos/acme/power/issues/7/comments".to_string(),
            format!("PATCH /repos/acme/power/issues/comments/{}", ours["id"]),
        ]
    );
    assert!(stand
        .requests()
        .iter()
        .all(|r| r.auth.as_deref() == Some(&format!("Bearer {TOKEN}"))));
}

#[test]
fn github_duplicates_from_older_runs_are_removed_and_the_actions_bot_is_us() {
    // The Actions token cannot read /user: our comments are github-actions[bot]'s.
    let stand = Stand::github(403);
    {
        let mut s = stand.state.lock().unwrap();
        for id in [11, 12] {
            s.comments.push(serde_json::json!({
                "id": id, "user": {"login": "github-actions[bot]"}, "html_url": "x",
                "body": format!("<!-- emshap-ci:report workflow=\"pr-eval\" -->\nold {id}")
            }));
        }
        // Another workflow's comment stays.
        s.comments.push(serde_json::json!({
            "id": 13, "user": {"login": "github-actions[bot]"}, "html_url": "x",
            "body": "<!-- emshap-ci:report workflow=\"train\" -->\nother"
        }));
    }
    let tmp = tempfile::tempdir().unwrap();
    report_file(tmp.path(), "## now\n");
    let o = gh(&stand, tmp.path(), &COMMENT);
    assert_exit(&o, 0);
    let ids: Vec<u64> = stand
        .comments()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [11, 13], "the oldest is edited, the duplicate deleted");
    assert!(stand.comments()[0]["body"]
        .as_str()
        .unwrap()
        .contains("## now"));
}

#[test]
fn github_a_fork_prs_read_only_token_puts_the_report_in_the_job_summary() {
    let stand = Stand::github(200);
    stand.queue(
        "POST /repos/acme/power/issues/7/comments".into(),
        (
            403,
            vec![],
            serde_json::json!({"message": "Resource not accessible by integration"}),
        ),
    );
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    report_file(d, "## fork report\n");
    let (summary, output) = (d.join("summary.md"), d.join("output.txt"));
    let o = gh_env(
        &stand,
        d,
        &COMMENT,
        &[
            ("GITHUB_ACTIONS", "true".as_ref()),
            ("GITHUB_STEP_SUMMARY", summary.as_os_str()),
            ("GITHUB_OUTPUT", output.as_os_str()),
        ],
    );
    assert_exit(&o, 0);
    no_token(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("::notice"), "{out}");
    // Masked before anything else is printed.
    assert!(out.starts_with(&format!("::add-mask::{TOKEN}\n")), "{out}");
    let summary = std::fs::read_to_string(d.join("summary.md")).unwrap();
    assert!(summary.contains("## fork report"), "{summary}");
    assert!(stand.comments().is_empty());
}

#[test]
fn github_a_secondary_rate_limit_is_retried() {
    let stand = Stand::github(200);
    stand.queue(
        "POST /repos/acme/power/issues/7/comments".into(),
        (
            403,
            vec![("retry-after".into(), "1".into())],
            serde_json::json!({"message": "You have exceeded a secondary rate limit"}),
        ),
    );
    let tmp = tempfile::tempdir().unwrap();
    report_file(tmp.path(), "## r\n");
    let o = gh(&stand, tmp.path(), &COMMENT);
    assert_exit(&o, 0);
    let posts = stand
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 2, "the rate-limited POST was retried once");
    assert_eq!(stand.comments().len(), 1);
}

#[test]
fn github_dispatch_sends_sha_and_manifest_and_explains_404_and_422() {
    let stand = Stand::github(200);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let args = |wf: &'static str| {
        vec![
            "dispatch",
            "--workflow",
            wf,
            "--ref",
            "main",
            "--sha",
            "abc1234",
            "--manifest-uri",
            "s3://b/p/versions/abc1234/manifest.json",
        ]
    };
    let o = gh(&stand, d, &args("deploy.yml"));
    assert_exit(&o, 0);
    let r = stand.first_post();
    assert_eq!(
        r.path,
        "/repos/acme/power/actions/workflows/deploy.yml/dispatches"
    );
    assert_eq!(
        r.body,
        serde_json::json!({"ref": "main", "inputs": {"sha": "abc1234", "manifest_uri": "s3://b/p/versions/abc1234/manifest.json"}})
    );
    let o = gh(&stand, d, &args("missing.yml"));
    assert_exit(&o, 3);
    no_token(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no workflow missing.yml") && err.contains(&stand.url),
        "{err}"
    );
    stand.queue(
        "POST /repos/acme/power/actions/workflows/deploy.yml".into(),
        (
            422,
            vec![],
            serde_json::json!({"message": "Unexpected inputs provided: [\"manifest_uri\"]"}),
        ),
    );
    let o = gh(&stand, d, &args("deploy.yml"));
    assert_exit(&o, 3);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Unexpected inputs") && err.contains("inputs `sha` and `manifest_uri`"),
        "{err}"
    );
}

#[test]
fn github_dispatch_from_the_store_only_deploys_production() {
    use emshap_ci::store::local::LocalStore;
    use emshap_ci::store::versions;
    let stand = Stand::github(200);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let store = LocalStore::new(d.join("store"));
    for sha in ["aaaa111", "bbbb222"] {
        let files = vec![
            ("power_predictor.onnx".to_string(), sha.as_bytes().to_vec()),
            (
                "metrics.json".to_string(),
                br#"{"verdict":"pass"}"#.to_vec(),
            ),
        ];
        versions::publish(&store, sha, &files).unwrap();
    }
    versions::promote(&store, "aaaa111", "ci", None, false).unwrap();
    let args = |sha: &'static str| vec!["dispatch", "--store", "store", "--sha", sha];
    // Published but not production: refused (its own error, exit 2: not a gate verdict),
    // and GitHub is not asked.
    let o = gh(&stand, d, &args("bbbb222"));
    assert_exit(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bbbb222 is not production") && err.contains("aaaa111"),
        "{err}"
    );
    assert!(stand.requests().iter().all(|r| r.method != "POST"));
    let o = gh(&stand, d, &args("aaaa111"));
    assert_exit(&o, 0);
    let r = stand.first_post();
    let uri = r.body["inputs"]["manifest_uri"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        uri.starts_with("file:///") && uri.ends_with("/store/versions/aaaa111/manifest.json"),
        "{uri}"
    );
}

#[test]
fn github_comment_takes_the_eval_folder_and_another_repository() {
    let stand = Stand::github(200);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir(d.join("eval")).unwrap();
    std::fs::write(d.join("eval/report.md"), "## from eval\n").unwrap();
    // --repo wins over $GITHUB_REPOSITORY (here another repository).
    let comment = |args: &[&str]| {
        bin()
            .args(["comment", "--pr", "7"])
            .args(args)
            .env("GITHUB_API_URL", &stand.url)
            .env("GITHUB_REPOSITORY", "someone/else")
            .env("GITHUB_TOKEN", TOKEN)
            .current_dir(d)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let o = comment(&["--eval", "eval", "--repo", "acme/power"]);
    assert_exit(&o, 0);
    let posts: Vec<String> = stand
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(posts, ["/repos/acme/power/issues/7/comments"]);
    assert!(stand.comments()[0]["body"]
        .as_str()
        .unwrap()
        .contains("## from eval"));
    // A folder without report.md says what writes it; a bad --repo is a usage error.
    let o = comment(&["--eval", "nowhere", "--repo", "acme/power"]);
    assert_exit(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nowhere/report.md") && err.contains("emshap-ci report"),
        "{err}"
    );
    let o = comment(&["--eval", "eval", "--repo", "models"]);
    assert_exit(&o, 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("`models` is not OWNER/NAME"));
    assert_eq!(stand.comments().len(), 1);
}
