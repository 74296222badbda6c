//! The action and the workflows pass zizmor (the GitHub Actions security linter, from
//! scripts/setup.sh --test) with no finding left, and keep the rules zizmor does not check:
//! `permissions: {}` at the top of every workflow, no `pull_request_target`, inputs reach
//! shell text only through `env:`, third-party actions pinned by commit sha.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn workflows() -> Vec<(String, String)> {
    let dir = root().join(".github/workflows");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn zizmor_finds_nothing_in_the_action_and_workflows() {
    let exe = std::env::var("EMSHAP_CI_ZIZMOR").unwrap_or_default();
    assert!(
        !exe.is_empty() && Path::new(&exe).is_file(),
        "zizmor is not installed (EMSHAP_CI_ZIZMOR={exe:?}): run scripts/setup.sh --test and source its env file"
    );
    let o = std::process::Command::new(&exe)
        .args(["--offline", "--format", "plain", "--no-progress"])
        .arg(root())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "zizmor found something:\n{out}");
    assert!(out.contains("No findings to report"), "{out}");
    // It did audit every one of them (its log names each file it completes).
    for (name, _) in workflows() {
        assert!(
            out.contains(&format!("completed ./.github/workflows/{name}"))
                || out.contains(&format!(
                    "completed {}/.github/workflows/{name}",
                    root().display()
                )),
            "{name} not audited:\n{out}"
        );
    }
}

/// The scheduled workflows: monitor daily, retrain weekly, at off-minutes; monitor may only
/// dispatch (actions: write) and read the checkout.
#[test]
fn scheduled_workflows_run_at_off_minutes_with_the_least_permissions() {
    let all = workflows();
    let text = |n: &str| all.iter().find(|(name, _)| name == n).unwrap().1.clone();
    let monitor = text("monitor.yml");
    assert!(monitor.contains("cron: \"17 3 * * *\""), "{monitor}");
    assert!(monitor.contains("mode: monitor"));
    assert!(monitor.contains("group: emshap-ci-monitor"));
    let perms: Vec<&str> = monitor
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with(": write") || l.contains(": write #") || l.ends_with(": read"))
        .collect();
    assert_eq!(
        perms,
        ["contents: read", "actions: write # dispatch retrain.yml"]
    );
    let retrain = text("retrain.yml");
    assert!(retrain.contains("cron: \"41 4 * * 1\""), "{retrain}");
    for (name, t) in &all {
        for l in t.lines().filter(|l| l.trim_start().starts_with("- cron:")) {
            let minute = l.split('"').nth(1).unwrap().split(' ').next().unwrap();
            assert_ne!(
                minute, "0",
                "{name}: the top of the hour is when GitHub is busiest"
            );
        }
    }
}

#[test]
fn workflows_start_with_no_permissions_and_never_use_pull_request_target() {
    let all = workflows();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ci.yml",
            "deploy.yml",
            "monitor.yml",
            "pr-eval.yml",
            "release.yml",
            "retrain.yml",
            "train.yml"
        ]
    );
    for (name, text) in &all {
        assert!(
            text.lines().any(|l| l == "permissions: {}"),
            "{name}: no top-level `permissions: {{}}`"
        );
        let code = text.lines().filter(|l| !l.trim_start().starts_with('#'));
        assert!(
            code.clone().all(|l| !l.contains("pull_request_target")),
            "{name}: pull_request_target runs fork code with the base repository's secrets"
        );
    }
}

#[test]
fn expressions_never_reach_shell_text_and_actions_are_pinned_by_sha() {
    let mut files = workflows();
    for f in [
        "action.yml",
        "tests/act/workflow.yml",
        "tests/act/cache-stand-in/action.yml",
    ] {
        files.push((f.into(), std::fs::read_to_string(root().join(f)).unwrap()));
    }
    for (name, text) in &files {
        let mut in_run = None::<usize>;
        for (i, line) in text.lines().enumerate() {
            let indent = line.len() - line.trim_start().len();
            let t = line.trim_start().trim_start_matches("- ");
            if let Some(run_indent) = in_run {
                if line.trim().is_empty() || indent > run_indent {
                    assert!(
                        !line.contains("${{"),
                        "{name}:{}: an expression in shell text: {line}",
                        i + 1
                    );
                    continue;
                }
                in_run = None;
            }
            if let Some(rest) = t.strip_prefix("run:") {
                assert!(!rest.contains("${{"), "{name}:{}: {line}", i + 1);
                in_run = Some(indent);
            }
            if let Some(uses) = t.strip_prefix("uses:") {
                let uses = uses.split('#').next().unwrap().trim();
                if !uses.starts_with("./") {
                    let (_, r) = uses.split_once('@').expect("uses with a ref");
                    assert!(
                        r.len() == 40 && r.chars().all(|c| c.is_ascii_hexdigit()),
                        "{name}:{}: {uses} is not pinned by sha",
                        i + 1
                    );
                }
            }
        }
    }
}

/// The third-party actions the workflows, the action and the README's quick start use: each
/// at the commit of a release that runs on Node 24 (GitHub removed Node 20 from its runners),
/// with that release named in the comment. The shas are the releases' tags, read from the
/// actions' own repositories.
const NODE24_PINS: [(&str, &str, &str); 6] = [
    (
        "actions/checkout",
        "3d3c42e5aac5ba805825da76410c181273ba90b1",
        "v7.0.1",
    ),
    (
        "actions/cache",
        "27d5ce7f107fe9357f9df03efb73ab90386fccae",
        "v5.0.5",
    ),
    (
        "actions/attest",
        "1e69f48acb82d1966a394da916b4c1698aa569d6",
        "v4.2.2",
    ),
    (
        "docker/setup-buildx-action",
        "37fe631027851001ddb9b187196cc803df7f5f0e",
        "v4.3.0",
    ),
    (
        "docker/login-action",
        "4907a6ddec9925e35a0a9e82d7399ccc52663121",
        "v4.1.0",
    ),
    (
        "docker/build-push-action",
        "53b7df96c91f9c12dcc8a07bcb9ccacbed38856a",
        "v7.3.0",
    ),
];

#[test]
fn third_party_actions_are_pinned_to_their_node24_releases() {
    let mut files = workflows();
    for f in ["action.yml", "README.md"] {
        files.push((f.into(), std::fs::read_to_string(root().join(f)).unwrap()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, text) in &files {
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start().trim_start_matches("- ");
            let Some(uses) = t.strip_prefix("uses:") else {
                continue;
            };
            let (target, comment) = uses.split_once('#').unwrap_or((uses, ""));
            let target = target.trim();
            if target.starts_with("./") || target.starts_with("OWNER/emshap-ci@") {
                continue;
            }
            let (action, sha) = target.split_once('@').unwrap();
            let pin = NODE24_PINS
                .iter()
                .find(|(a, _, _)| *a == action)
                .unwrap_or_else(|| panic!("{name}:{}: {action} is not a known node24 pin", i + 1));
            assert_eq!(sha, pin.1, "{name}:{}: {line}", i + 1);
            assert_eq!(comment.trim(), pin.2, "{name}:{}: {line}", i + 1);
            seen.insert(action.to_string());
        }
    }
    assert_eq!(seen.len(), NODE24_PINS.len(), "every pin is used: {seen:?}");
}
