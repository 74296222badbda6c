//! scripts/install.sh, the action's install step, against a release served by the GitHub
//! stand-in on 127.0.0.1 (the asset of the binary under test, packaged by
//! scripts/package.sh): the asset is checked against its sha256 and then its build
//! attestation with `gh attestation verify`, here a stand-in `gh` placed first on the PATH
//! that verifies, refuses or is absent (or too old); `verify: sha256` is the only way past a
//! missing attestation check, and the job summary says so. Also: `version` empty takes the
//! action's own release, found from the commit sha (or moving major tag) it is pinned to.
//! Every test installs its own tag: they share the runner cache ($EMSHAP_CI_CACHE).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::act::serve_release;
use crate::harness::Stand;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn asset(tag: &str) -> String {
    format!("emshap-ci-{tag}-x86_64-unknown-linux-gnu.tar.gz")
}

/// What the stand-in `gh` does when asked to verify.
enum Gh {
    /// `gh attestation verify` succeeds.
    Verifies,
    /// It refuses, as gh does for an asset without a matching attestation.
    Refuses,
    /// An old gh (2.40) without `gh attestation`.
    TooOld,
    /// No gh on the PATH at all.
    Absent,
}

/// Runs install.sh in `dir` for the release served by `stand`, with the given stand-in gh
/// and extra environment. The stand-in records its arguments (and the sha256 of the file it
/// was given) in `dir/gh.log`.
fn install(stand: &Stand, dir: &Path, gh: Gh, extra: &[(&str, &str)]) -> Output {
    let bin = dir.join("gh-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("gh.log");
    let (version, verify) = match gh {
        Gh::TooOld => ("2.40.1", "exit 0"),
        Gh::Verifies => ("2.63.0", "exit 0"),
        _ => (
            "2.63.0",
            "echo 'Error: failed to fetch attestations for subject: no attestations found' >&2; exit 1",
        ),
    };
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'gh version {version} (2026-11-01)'; \
         echo 'https://github.com/cli/cli/releases/tag/v{version}'; exit 0; fi\n\
         printf '%s\\n' \"$@\" >'{log}'\nsha256sum \"$3\" >>'{log}'\n{verify}\n",
        log = log.display()
    );
    let path = std::env::var("PATH").unwrap();
    // Whatever gh the machine has is kept off the PATH, so "absent" means absent.
    let without_gh: Vec<String> = std::env::split_paths(&path)
        .filter(|d| !d.join("gh").exists())
        .map(|d| d.display().to_string())
        .collect();
    let path = match gh {
        Gh::Absent => without_gh.join(":"),
        _ => {
            let gh = bin.join("gh");
            std::fs::write(&gh, script).unwrap();
            std::fs::set_permissions(&gh, std::fs::Permissions::from_mode(0o755)).unwrap();
            format!("{}:{}", bin.display(), without_gh.join(":"))
        }
    };
    let mut c = Command::new(repo().join("scripts/install.sh"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GITHUB_") || k == "GH_TOKEN" || k == "ACTION_PATH" {
            c.env_remove(&k);
        }
    }
    c.env_remove("EMSHAP_CI_VERSION")
        .env_remove("EMSHAP_CI_VERIFY")
        .env_remove("EMSHAP_CI_ACTION_REF")
        .env_remove("EMSHAP_CI_ACTION_REPOSITORY")
        .env("PATH", path)
        .env("EMSHAP_CI_RELEASE_REPO", "acme/power")
        .env("GITHUB_SERVER_URL", &stand.url)
        .env("GITHUB_API_URL", &stand.url)
        .env("GITHUB_OUTPUT", dir.join("output.txt"))
        .env("GITHUB_STEP_SUMMARY", dir.join("summary.md"))
        .current_dir(dir);
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn log(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// The folders install.sh kept in the cache for `tag`.
fn kept(tag: &str) -> Vec<String> {
    let cache = std::env::var("EMSHAP_CI_CACHE").expect("EMSHAP_CI_CACHE (source env.sh)");
    std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(tag))
        .collect()
}

/// Removes what an earlier run kept in the shared cache for `tag`, so that "nothing is kept"
/// means this run kept nothing.
fn forget(tag: &str) {
    let cache = std::env::var("EMSHAP_CI_CACHE").expect("EMSHAP_CI_CACHE (source env.sh)");
    for name in kept(tag) {
        std::fs::remove_dir_all(Path::new(&cache).join(name)).unwrap();
    }
}

/// A release `tag` served by a fresh stand-in, and a temp folder; nothing kept for it yet.
fn release(tag: &str) -> (Stand, tempfile::TempDir) {
    forget(tag);
    let stand = Stand::github(200);
    let tmp = tempfile::tempdir().unwrap();
    serve_release(&stand, &tmp.path().join("dist"), tag, None);
    (stand, tmp)
}

fn installed_bin(dir: &Path) -> PathBuf {
    let out = std::fs::read_to_string(dir.join("output.txt")).unwrap_or_default();
    let bin = out
        .lines()
        .find_map(|l| l.strip_prefix("bin="))
        .unwrap_or_else(|| panic!("no bin= in $GITHUB_OUTPUT: {out:?}"));
    PathBuf::from(bin)
}

/// The one `::error` line, which must name the asset.
fn error_line<'a>(log: &'a str, asset: &str) -> &'a str {
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("::error")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains(asset), "{log}");
    errors[0]
}

#[test]
fn install_verifies_the_build_attestation_with_gh_and_hands_on_the_binary() {
    let tag = "v0.0.3-attested";
    let (stand, tmp) = release(tag);
    let d = tmp.path();
    let o = install(&stand, d, Gh::Verifies, &[("EMSHAP_CI_VERSION", tag)]);
    let log = log(&o);
    assert_eq!(o.status.code(), Some(0), "{log}");
    // gh was asked about the downloaded asset itself, and about who built it from which tag.
    let gh = std::fs::read_to_string(d.join("gh.log")).unwrap();
    let args: Vec<&str> = gh.lines().collect();
    assert_eq!(args[..2], ["attestation", "verify"], "{gh}");
    assert!(args[2].ends_with(&format!("/{}", asset(tag))), "{gh}");
    assert_eq!(
        args[3..9],
        [
            "--repo",
            "acme/power",
            "--signer-workflow",
            "acme/power/.github/workflows/release.yml",
            "--source-ref",
            &format!("refs/tags/{tag}"),
        ],
        "{gh}"
    );
    let published = std::fs::read_to_string(d.join(format!("dist/{}.sha256", asset(tag)))).unwrap();
    let digest = published.split_whitespace().next().unwrap();
    assert!(args[9].starts_with(digest), "gh saw another file: {gh}");
    assert!(
        log.contains("attested by acme/power/.github/workflows/release.yml"),
        "{log}"
    );
    // The installed binary is the released one, and runs.
    let bin = installed_bin(d);
    let v = Command::new(&bin).arg("--version").output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(!d.join("summary.md").exists(), "nothing to warn about");
}

#[test]
fn install_refuses_an_asset_that_gh_cannot_attest() {
    let tag = "v0.0.4-unattested";
    let (stand, tmp) = release(tag);
    let d = tmp.path();
    let o = install(&stand, d, Gh::Refuses, &[("EMSHAP_CI_VERSION", tag)]);
    let log = log(&o);
    assert_eq!(o.status.code(), Some(3), "{log}");
    let e = error_line(&log, &asset(tag));
    assert!(e.contains("failed its build attestation check"), "{e}");
    assert!(e.contains("no attestations found"), "gh's reason: {e}");
    assert!(e.contains("verify: sha256"), "what to do: {e}");
    assert!(!d.join("output.txt").exists(), "no binary is handed on");
    assert!(
        kept(tag).is_empty(),
        "the refused asset is kept: {:?}",
        kept(tag)
    );
}

#[test]
fn install_without_gh_fails_unless_told_to_accept_the_checksum_which_the_summary_records() {
    let tag = "v0.0.5-nogh";
    let (stand, tmp) = release(tag);
    let d = tmp.path();
    let o = install(&stand, d, Gh::Absent, &[("EMSHAP_CI_VERSION", tag)]);
    let log1 = log(&o);
    assert_eq!(o.status.code(), Some(3), "{log1}");
    let e = error_line(&log1, &asset(tag));
    assert!(
        e.contains("gh (the GitHub CLI, >= 2.49) is not on the PATH"),
        "{e}"
    );
    assert!(!d.join("output.txt").exists());
    assert!(kept(tag).is_empty(), "{:?}", kept(tag));

    // Asked for, the checksum alone will do; and the job summary says that is all it was.
    let o = install(
        &stand,
        d,
        Gh::Absent,
        &[("EMSHAP_CI_VERSION", tag), ("EMSHAP_CI_VERIFY", "sha256")],
    );
    let log2 = log(&o);
    assert_eq!(o.status.code(), Some(0), "{log2}");
    assert!(
        log2.contains("::warning title=emshap-ci install::"),
        "{log2}"
    );
    let summary = std::fs::read_to_string(d.join("summary.md")).unwrap();
    assert!(
        summary.contains(&format!(
            "emshap-ci {tag}: `{}` was verified only by its sha256 (`verify: sha256`), not by its build attestation.",
            asset(tag)
        )),
        "{summary}"
    );
    assert!(installed_bin(d).is_file());
}

#[test]
fn install_refuses_with_a_gh_too_old_for_attestations() {
    let tag = "v0.0.6-oldgh";
    let (stand, tmp) = release(tag);
    let o = install(
        &stand,
        tmp.path(),
        Gh::TooOld,
        &[("EMSHAP_CI_VERSION", tag)],
    );
    let log = log(&o);
    assert_eq!(o.status.code(), Some(3), "{log}");
    let e = error_line(&log, &asset(tag));
    assert!(
        e.contains("gh 2.40 has no 'gh attestation' (needs >= 2.49)"),
        "{e}"
    );
    assert!(
        !tmp.path().join("gh.log").exists(),
        "gh was not asked to verify"
    );
}

#[test]
fn install_refuses_a_release_asset_whose_sha256_does_not_match() {
    let stand = Stand::github(200);
    let tmp = tempfile::tempdir().unwrap();
    let tag = "v0.0.2-tampered";
    forget(tag);
    serve_release(&stand, &tmp.path().join("dist"), tag, Some(&"0".repeat(64)));
    // Even when the attestation check would pass: the checksum is checked first.
    let o = install(
        &stand,
        tmp.path(),
        Gh::Verifies,
        &[("EMSHAP_CI_VERSION", tag)],
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "::error title=emshap-ci install::{} does not match the sha256 published with release {tag} of acme/power",
            asset(tag)
        )),
        "{stdout}"
    );
    assert!(
        !tmp.path().join("output.txt").exists(),
        "no binary is handed on"
    );
    assert!(
        kept(tag).is_empty(),
        "the refused asset is not kept: {:?}",
        kept(tag)
    );
}

#[test]
fn install_without_a_version_takes_the_release_whose_tag_points_at_the_pinned_sha_or_major_tag() {
    let tag = "v0.0.7-pinned";
    let (stand, tmp) = release(tag);
    let d = tmp.path();
    let sha = "3d3c42e5aac5ba805825da76410c181273ba90b1";
    let tags = serde_json::json!([
        {"name": "v0.0.1", "commit": {"sha": "1".repeat(40)}},
        {"name": tag, "commit": {"sha": sha}},
        {"name": "latest-main", "commit": {"sha": sha}},
        {"name": "v0", "commit": {"sha": sha}},
    ]);
    stand.serve_file(
        "/repos/acme/power/tags?per_page=100&page=1".into(),
        tags.to_string().into_bytes(),
    );
    let pinned = [
        ("EMSHAP_CI_RELEASE_REPO", ""),
        ("EMSHAP_CI_ACTION_REPOSITORY", "acme/power"),
        ("EMSHAP_CI_ACTION_REF", sha),
    ];
    let o = install(&stand, d, Gh::Verifies, &pinned);
    let log1 = log(&o);
    assert_eq!(o.status.code(), Some(0), "{log1}");
    assert!(
        log1.contains(&format!("the action is pinned to {sha}, release {tag}")),
        "{log1}"
    );
    let paths: Vec<String> = stand.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.contains(&format!(
            "/acme/power/releases/download/{tag}/{}",
            asset(tag)
        )),
        "{paths:?}"
    );
    assert!(installed_bin(d).is_file());

    // A moving major tag (uses: ...@v0): the release at the commit it points at.
    let o = install(
        &stand,
        d,
        Gh::Verifies,
        &[
            ("EMSHAP_CI_RELEASE_REPO", ""),
            ("EMSHAP_CI_ACTION_REPOSITORY", "acme/power"),
            ("EMSHAP_CI_ACTION_REF", "v0"),
        ],
    );
    let log_major = log(&o);
    assert_eq!(o.status.code(), Some(0), "{log_major}");
    assert!(
        log_major.contains(&format!("the action is used at v0 ({sha}), release {tag}")),
        "{log_major}"
    );

    // A sha no release tag points at stops the job, naming what to pin instead.
    let other = "f".repeat(40);
    let o = install(
        &stand,
        d,
        Gh::Verifies,
        &[
            ("EMSHAP_CI_RELEASE_REPO", ""),
            ("EMSHAP_CI_ACTION_REPOSITORY", "acme/power"),
            ("EMSHAP_CI_ACTION_REF", &other),
        ],
    );
    let log2 = log(&o);
    assert_eq!(o.status.code(), Some(3), "{log2}");
    assert!(
        log2.contains(&format!(
            "no release tag of acme/power points at commit {other}"
        )),
        "{log2}"
    );
}

#[test]
fn install_of_a_local_action_without_a_version_says_to_choose_one() {
    let stand = Stand::github(200);
    let tmp = tempfile::tempdir().unwrap();
    let o = install(&stand, tmp.path(), Gh::Verifies, &[]);
    let log = log(&o);
    assert_eq!(o.status.code(), Some(2), "{log}");
    assert!(
        log.contains("this action is not used from a release (uses: ./ or a local path)"),
        "{log}"
    );
    assert!(
        stand.requests().is_empty(),
        "nothing downloaded: {:?}",
        stand.requests()
    );
}
