//! The container images (Dockerfile) without a Docker engine: hadolint (scripts/setup.sh
//! --test) finds nothing in the Dockerfile, whose bases are pinned by digest; buildah builds
//! the runtime image from the Dockerfile with only its base replaced (by one assembled from
//! this machine's glibc, as distroless cc carries it: no registry is reachable here) and the
//! image's own user and entrypoint run `emshap-ci fetch` on a read-only root against the S3
//! server (tests/image/runtime.sh); and deploy.yml's rendering pins every image by version
//! and digest (scripts/render_deploy.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::S3Server;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile_and_its_bases_are_pinned_by_digest() {
    let exe = std::env::var("EMSHAP_CI_HADOLINT").unwrap_or_default();
    assert!(
        Path::new(&exe).is_file(),
        "hadolint is not installed (EMSHAP_CI_HADOLINT={exe:?}): run scripts/setup.sh --test and source its env file"
    );
    let o = Command::new(&exe)
        .args(["--no-color", "--failure-threshold", "info"])
        .arg(repo().join("Dockerfile"))
        .output()
        .unwrap();
    assert!(o.status.success(), "hadolint: {}", text(&o));
    assert_eq!(text(&o).trim(), "", "hadolint said something");
    // hadolint does see problems (the check above is not vacuous).
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "FROM debian:latest\nRUN apt-get install curl\n").unwrap();
    let o = Command::new(&exe)
        .arg("--no-color")
        .arg(bad.path())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("DL3007"), "{}", text(&o));

    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let bases: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("ARG ").filter(|a| a.contains("BASE=")))
        .collect();
    assert_eq!(bases.len(), 2, "{bases:?}");
    for b in bases {
        let (_, digest) = b
            .split_once("@sha256:")
            .unwrap_or_else(|| panic!("{b}: no digest"));
        assert!(
            digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "{b}"
        );
    }
    for l in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = l.split_whitespace().nth(1).unwrap();
        assert!(
            image == "scratch" || image.starts_with("${"),
            "{l}: a base not from the pinned arguments"
        );
    }
}

/// The release asset of the binary under test (with the fake trainer beside it), as
/// scripts/package.sh makes it.
fn package(dir: &Path, tag: &str) -> PathBuf {
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
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_dir_all(&bins).unwrap();
    dir.join(format!("emshap-ci-{tag}-x86_64-unknown-linux-gnu.tar.gz"))
}

#[test]
fn s3_runtime_image_built_by_buildah_fetches_as_uid_65532_on_a_read_only_root() {
    assert!(
        Command::new("buildah").arg("--version").output().is_ok(),
        "buildah is not installed: run scripts/setup.sh --test (it installs the Debian package)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let s3 = S3Server::start();
    let store = s3.uri("image");
    // A version in the store, published as the writer; the image fetches as the reader.
    let mut digests = Vec::new();
    for (sub, file) in [
        ("models", "power_predictor.onnx"),
        ("models", "emshap_model.onnx"),
        ("models", "scaler.json"),
        ("eval", "metrics.json"),
        ("eval", "dataset.json"),
    ] {
        let body = if file == "metrics.json" {
            b"{\"verdict\":\"pass\"}\n".to_vec()
        } else {
            (0..40_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
                .chain(file.bytes())
                .collect()
        };
        std::fs::create_dir_all(d.join("v").join(sub)).unwrap();
        std::fs::write(d.join("v").join(sub).join(file), &body).unwrap();
        use sha2::Digest;
        digests.push(format!(
            "{}  {file}",
            hex::encode(sha2::Sha256::digest(&body))
        ));
    }
    let o = s3.run(
        d,
        &[
            "publish", "--store", &store, "--models", "v/models", "--eval", "v/eval", "--sha",
            "feed1234",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));

    let tag = "v0.0.8-image";
    let tarball = package(&d.join("dist"), tag);
    let out = d.join("out");
    let o = Command::new(repo().join("tests/image/runtime.sh"))
        .arg(&tarball)
        .arg(tag)
        .arg(&out)
        .args([&store, "feed1234"])
        .envs(S3Server::env(&s3.endpoint, &s3.reader))
        .output()
        .unwrap();
    let log = text(&o);
    let read = |f: &str| {
        std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}\n{log}"))
    };
    assert!(o.status.success(), "runtime.sh failed:\n{log}");

    // The image as a registry would describe it: non-root, emshap-ci as its entrypoint.
    let config: serde_json::Value = serde_json::from_str(&read("config.json")).unwrap();
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/emshap-ci"])
    );
    assert_eq!(config["Labels"]["org.opencontainers.image.version"], tag);
    // Neither libtorch nor ONNX Runtime in it.
    assert_eq!(
        read("native.txt"),
        "",
        "native ML libraries in the runtime image"
    );

    // fetch ran as 65532 on the read-only root and placed the version, every digest checked.
    let fetch = read("fetch.log");
    assert!(
        fetch.contains(
            "fetched version feed1234 (5 files, every sha256 verified) into /models/current"
        ),
        "{fetch}"
    );
    assert!(fetch.ends_with("exit 0\n"), "{fetch}");
    let fetched = read("fetched.txt");
    for line in &digests {
        assert!(fetched.contains(line.as_str()), "{line} not in\n{fetched}");
    }
    assert!(fetched.contains("  manifest.json"), "{fetched}");
    for line in read("owners.txt").lines() {
        assert!(line.ends_with(" 65532"), "not written by uid 65532: {line}");
    }
    // Outside the volume the root is read-only: fetch says so and exits 3.
    let ro = read("readonly.txt");
    assert!(ro.contains("read-only"), "{ro}");
    assert!(ro.ends_with("exit 3\n"), "{ro}");
    assert_eq!(read("rootfs.txt").trim(), "read-only");
    // The storage runtime.sh used is gone.
    assert!(!out.join("storage").exists());
    // The size, for BENCHMARKS.md (this is the debug build under test; the release figure is
    // measured with the release asset).
    eprintln!("runtime image: {}", read("size.txt"));
}

fn render(dir: &Path, sha: &str, images: &str, service: &str) -> std::process::Output {
    std::fs::write(dir.join("images.txt"), images).unwrap();
    Command::new(repo().join("scripts/render_deploy.sh"))
        .arg(repo().join("deploy/k8s/attribution-service.yaml"))
        .arg(sha)
        .arg(dir.join("images.txt"))
        .arg(service)
        .output()
        .unwrap()
}

#[test]
fn deploy_pins_every_image_by_version_and_digest_and_refuses_mutable_ones() {
    let manifest =
        std::fs::read_to_string(repo().join("deploy/k8s/attribution-service.yaml")).unwrap();
    assert!(!manifest.contains(":latest"), "{manifest}");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let digest = "a".repeat(64);
    let runtime = format!("ghcr.io/acme/emshap-ci:v1.2.0@sha256:{digest}");
    let service = format!(
        "ghcr.io/acme/attribution-service:v3.1.0@sha256:{}",
        "b".repeat(64)
    );
    let images =
        format!("runtime {runtime}\ntrain ghcr.io/acme/emshap-ci-train:v1.2.0@sha256:{digest}\n");
    let o = render(d, "0123abcd", &images, &service);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    let images_used: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    assert_eq!(images_used, [runtime.as_str(), service.as_str()], "{out}");
    assert!(out.contains("emshap-ci/sha: 0123abcd"), "{out}");
    assert!(out.contains("\"--sha\", \"0123abcd\""), "{out}");
    let code = out.lines().filter(|l| !l.trim_start().starts_with('#'));
    assert!(code.clone().all(|l| !l.contains("PLACEHOLDER")), "{out}");

    // Mutable or digest-less references, and a sha that could rewrite the manifest, refused.
    for (images, service, sha) in [
        (
            "runtime ghcr.io/acme/emshap-ci:latest\n".to_string(),
            service.clone(),
            "0123abcd",
        ),
        (
            format!("runtime ghcr.io/acme/emshap-ci:latest@sha256:{digest}\n"),
            service.clone(),
            "0123abcd",
        ),
        (
            images.clone(),
            "ghcr.io/acme/attribution-service:latest".into(),
            "0123abcd",
        ),
        ("train only\n".into(), service.clone(), "0123abcd"),
        (images.clone(), service.clone(), "x|s/a/b/"),
    ] {
        let o = render(d, sha, &images, &service);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{images} {service} {sha}: {}",
            text(&o)
        );
        assert!(o.stdout.is_empty());
    }
}

/// The training image: built by buildah from the Dockerfile (bases replaced, as above) with
/// the binaries under test and the pinned libraries (scripts/image_libs.sh), then, as uid
/// 65532 on a read-only root with only /work and /tmp writable, `emshap-ci run --mode main` trains both
/// models through emshap-ci-train (libtorch found through its RUNPATH $ORIGIN/../lib) and
/// evaluates them through ONNX Runtime (found in ../lib beside emshap-ci), and publishes.
/// tests/image/train.sh; this checkout's trainer has an absolute RUNPATH (no
/// EMSHAP_CI_TRAIN_RPATH here), which train.sh sets to $ORIGIN/../lib, as release.yml links it.
#[cfg(feature = "real-training")]
#[test]
fn training_image_built_by_buildah_trains_and_evaluates_as_uid_65532_on_a_read_only_root() {
    assert!(
        Command::new("buildah").arg("--version").output().is_ok(),
        "buildah is not installed: run scripts/setup.sh --test (it installs the Debian package)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let bins = d.join("bins");
    std::fs::create_dir_all(&bins).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_emshap-ci"));
    let trainer = exe.with_file_name("emshap-ci-train");
    assert!(
        trainer.is_file(),
        "{} is not built: cargo nextest run --workspace --all-features",
        trainer.display()
    );
    std::fs::copy(exe, bins.join("emshap-ci")).unwrap();
    std::fs::copy(&trainer, bins.join("emshap-ci-train")).unwrap();
    let tag = "v0.0.9-train-image";
    let o = Command::new(repo().join("scripts/package.sh"))
        .args([bins.as_os_str(), d.as_os_str(), tag.as_ref()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::remove_dir_all(&bins).unwrap();
    let out = d.join("out");
    let o = Command::new(repo().join("tests/image/train.sh"))
        .arg(d.join(format!("emshap-ci-{tag}-x86_64-unknown-linux-gnu.tar.gz")))
        .arg(tag)
        .arg(&out)
        .output()
        .unwrap();
    let log = text(&o);
    assert!(o.status.success(), "train.sh failed:\n{log}");
    let read = |f: &str| {
        std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}\n{log}"))
    };
    assert!(
        read("runpath.txt").contains("[$ORIGIN/../lib]"),
        "{}",
        read("runpath.txt")
    );
    let chain = read("chain.log");
    assert!(chain.contains("emshap-ci-train "), "{chain}");
    // Both native libraries at work: the trainer trained, ONNX Runtime scored. (Two epochs
    // may not pass the gate's absolute bounds: exit 1 is the verdict, not the image.)
    for stage in [
        "pull",
        "train power",
        "train emshap",
        "evaluate",
        "report",
        "publish",
    ] {
        assert!(
            chain.contains(&format!("✓  {stage} (")),
            "stage {stage} not done:\n{chain}"
        );
    }
    let last = chain.trim_end().lines().last().unwrap_or("");
    assert!(last == "exit 0" || last == "exit 1", "{chain}");
    // Without a writable $TMPDIR training cannot start: the machine's state, exit 3, not a bug.
    let ro = read("readonly-tmp.txt");
    assert!(ro.contains("the file system is read-only"), "{ro}");
    assert!(ro.trim_end().ends_with("exit 3"), "{ro}");
    assert!(!out.join("storage").exists());
    eprintln!("training image: {}", read("size.txt"));
}
