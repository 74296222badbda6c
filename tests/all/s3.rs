//! The versioned store on a real S3-compatible server (moto with SigV4 authentication, see
//! `harness::S3Server`): publish → fetch round trip with digests, promote and rollback,
//! read-only credentials, a corrupt object, two promotions racing, a publish cut off before
//! its manifest, wrong credentials and an unreachable endpoint, multipart uploads.

use std::path::{Path, PathBuf};
use std::sync::Barrier;

use emshap_ci::store::versions::{self, Manifest};
use emshap_ci::store::{Cond, Object, Put, Store};
use sha2::{Digest, Sha256};

use crate::harness::{assert_exit, bin, free_port, Creds, CuttingProxy, S3Server};

const FILES: [(&str, &str); 5] = [
    ("models", "power_predictor.onnx"),
    ("models", "emshap_model.onnx"),
    ("models", "scaler.json"),
    ("eval", "metrics.json"),
    ("eval", "dataset.json"),
];

/// Writes the folders `publish` reads (`<name>/models`, `<name>/eval`), with contents that
/// differ per `name`, and returns the folder.
fn version(dir: &Path, name: &str, verdict: &str) -> PathBuf {
    let root = dir.join(name);
    for (sub, file) in FILES {
        std::fs::create_dir_all(root.join(sub)).unwrap();
        let body = if file == "metrics.json" {
            format!("{{\"verdict\":\"{verdict}\",\"name\":\"{name}\"}}\n").into_bytes()
        } else {
            // Some size, and bytes that are this version's own.
            let mut b = format!("{name}/{file}\n").into_bytes();
            b.extend((0..50_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
            b
        };
        std::fs::write(root.join(sub).join(file), body).unwrap();
    }
    root
}

fn publish(s3: &S3Server, dir: &Path, uri: &str, name: &str, sha: &str) -> std::process::Output {
    let (m, e) = (format!("{name}/models"), format!("{name}/eval"));
    s3.run(
        dir,
        &[
            "publish", "--store", uri, "--models", &m, "--eval", &e, "--sha", sha,
        ],
    )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The fetched folder holds exactly the version's files, byte for byte, and a manifest whose
/// digests are theirs.
fn assert_fetched(dest: &Path, source: &Path, sha: &str) {
    let m: Manifest =
        serde_json::from_slice(&std::fs::read(dest.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m.sha, sha);
    assert_eq!(m.files.len(), FILES.len());
    for (sub, file) in FILES {
        let want = std::fs::read(source.join(sub).join(file)).unwrap();
        let got = std::fs::read(dest.join(file)).unwrap();
        assert!(got == want, "{file} differs from what was published");
        let entry = m.files.iter().find(|e| e.name == file).unwrap();
        assert_eq!(
            (entry.bytes, entry.sha256.as_str()),
            (want.len() as u64, sha256(&want).as_str())
        );
    }
}

#[test]
fn s3_publish_promote_fetch_and_rollback_round_trip() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let uri = s3.uri("team/models");
    let a = version(d, "a", "pass");
    let b = version(d, "b", "pass");

    let o = publish(&s3, d, &uri, "a", "aaaa111");
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains("s3://emshap-test/team/models/versions/aaaa111/manifest.json"),
        "{}",
        stdout(&o)
    );
    // The layout of DESIGN §8, under the prefix.
    let store = s3.store("team/models");
    let mut keys = store.list("versions/aaaa111/").unwrap();
    keys.sort();
    assert_eq!(keys.len(), FILES.len() + 1, "{keys:?}");
    assert!(keys.contains(&"versions/aaaa111/manifest.json".to_string()));

    // Write-once: the same files again are a no-op; other files under the sha are refused.
    let o = publish(&s3, d, &uri, "a", "aaaa111");
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("already published"), "{}", stdout(&o));
    let o = publish(&s3, d, &uri, "b", "aaaa111");
    assert_exit(&o, 3);
    assert!(stderr(&o).contains("write-once"), "{}", stderr(&o));

    assert_exit(
        &s3.run(d, &["promote", "--store", &uri, "--sha", "aaaa111"]),
        0,
    );
    let o = s3.run(d, &["fetch", "--store", &uri, "--dest", "live"]);
    assert_exit(&o, 0);
    assert_fetched(&d.join("live"), &a, "aaaa111");

    // A second version becomes production; rollback returns to the first.
    assert_exit(&publish(&s3, d, &uri, "b", "bbbb222"), 0);
    assert_exit(
        &s3.run(d, &["promote", "--store", &uri, "--sha", "bbbb222"]),
        0,
    );
    let (p, _) = versions::production(&store).unwrap().unwrap();
    assert_eq!(
        (p.sha.as_str(), p.previous.as_deref()),
        ("bbbb222", Some("aaaa111"))
    );
    // The service's init container runs with read-only credentials.
    let o = s3.run_as(
        d,
        &["fetch", "--store", &uri, "--dest", "live"],
        &s3.endpoint,
        &s3.reader,
    );
    assert_exit(&o, 0);
    assert_fetched(&d.join("live"), &b, "bbbb222");
    // ...which cannot move the pointer: exit 3, and the message says what to fix.
    let o = s3.run_as(
        d,
        &["rollback", "--store", &uri, "--steps", "1"],
        &s3.endpoint,
        &s3.reader,
    );
    assert_exit(&o, 3);
    assert!(stderr(&o).contains("access denied"), "{}", stderr(&o));

    let o = s3.run(
        d,
        &[
            "rollback",
            "--store",
            &uri,
            "--steps",
            "1",
            "--reason",
            "bad deploy",
        ],
    );
    assert_exit(&o, 0);
    let (p, _) = versions::production(&store).unwrap().unwrap();
    assert_eq!(
        (p.sha.as_str(), p.action.as_str(), p.reason.as_deref()),
        ("aaaa111", "rollback", Some("bad deploy"))
    );
    assert_eq!(store.list("history/").unwrap().len(), 3);
    assert_exit(&s3.run(d, &["fetch", "--store", &uri, "--dest", "live"]), 0);
    assert_fetched(&d.join("live"), &a, "aaaa111");
}

#[test]
fn s3_a_corrupt_object_fails_fetch_and_leaves_the_destination_as_it_was() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let uri = s3.uri("corrupt");
    let a = version(d, "a", "pass");
    version(d, "b", "pass");
    assert_exit(&publish(&s3, d, &uri, "a", "aaaa111"), 0);
    assert_exit(&publish(&s3, d, &uri, "b", "bbbb222"), 0);
    assert_exit(
        &s3.run(
            d,
            &[
                "fetch", "--store", &uri, "--sha", "aaaa111", "--dest", "live",
            ],
        ),
        0,
    );
    // Same size, other bytes: only the digest can tell.
    let store = s3.store("corrupt");
    let key = "versions/bbbb222/power_predictor.onnx";
    let mut bytes = store.get(key).unwrap().unwrap().bytes;
    bytes[100] ^= 0xff;
    store.put(key, &bytes, Cond::Always).unwrap();

    let o = s3.run(
        d,
        &[
            "fetch", "--store", &uri, "--sha", "bbbb222", "--dest", "live",
        ],
    );
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(
        err.contains("power_predictor.onnx") && err.contains("corrupt"),
        "{err}"
    );
    assert_fetched(&d.join("live"), &a, "aaaa111");
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A new destination is not created either.
    let o = s3.run(
        d,
        &[
            "fetch", "--store", &uri, "--sha", "bbbb222", "--dest", "other",
        ],
    );
    assert_exit(&o, 3);
    assert!(!d.join("other").exists());
}

/// A store whose reads of the production pointer wait at a barrier, so that two promotions
/// both read the same pointer before either writes: the interleaving that a conditional
/// write exists for.
struct Lockstep<'a> {
    inner: emshap_ci::store::s3::S3Store,
    barrier: &'a Barrier,
}

impl Store for Lockstep<'_> {
    fn uri(&self) -> String {
        self.inner.uri()
    }
    fn get(&self, key: &str) -> emshap_ci::error::Result<Option<Object>> {
        let got = self.inner.get(key);
        if key == versions::POINTER {
            self.barrier.wait();
        }
        got
    }
    fn head(&self, key: &str) -> emshap_ci::error::Result<Option<u64>> {
        self.inner.head(key)
    }
    fn put(&self, key: &str, bytes: &[u8], cond: Cond) -> emshap_ci::error::Result<Put> {
        self.inner.put(key, bytes, cond)
    }
    fn list(&self, prefix: &str) -> emshap_ci::error::Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> emshap_ci::error::Result<()> {
        self.inner.delete(key)
    }
}

#[test]
fn s3_two_concurrent_promotions_exactly_one_wins() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let uri = s3.uri("race");
    for (name, sha) in [
        ("a", "aaaa111"),
        ("b", "bbbb222"),
        ("c", "cccc333"),
        ("e", "eeee555"),
    ] {
        version(d, name, "pass");
        assert_exit(&publish(&s3, d, &uri, name, sha), 0);
    }
    let store = s3.store("race");
    // Round 1: no pointer yet (If-None-Match); round 2: a pointer to replace (If-Match).
    for (round, shas) in [["aaaa111", "bbbb222"], ["cccc333", "eeee555"]]
        .iter()
        .enumerate()
    {
        let before = versions::production(&store).unwrap().map(|(p, _)| p.sha);
        let barrier = Barrier::new(2);
        let results: Vec<(String, emshap_ci::error::Result<versions::Pointer>)> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = shas
                    .iter()
                    .map(|sha| {
                        let s = Lockstep {
                            inner: s3.store("race"),
                            barrier: &barrier,
                        };
                        scope.spawn(move || {
                            (
                                sha.to_string(),
                                versions::promote(&s, sha, "ci", None, false),
                            )
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
        let winners: Vec<&String> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(s, _)| s)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one promotion wins"
        );
        let (_, lost) = results.iter().find(|(_, r)| r.is_err()).unwrap();
        let e = lost.as_ref().unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e}");
        assert!(e.to_string().contains("another run won"), "{e}");
        let (p, _) = versions::production(&store).unwrap().unwrap();
        assert_eq!(&p.sha, winners[0]);
        assert_eq!(p.previous, before);
    }
    // Only the winners are in the history.
    assert_eq!(store.list("history/").unwrap().len(), 2);
}

#[test]
fn s3_publish_cut_off_before_its_manifest_leaves_no_version_and_a_rerun_completes_it() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let uri = s3.uri("cut");
    let c = version(d, "c", "pass");
    // The server "dies" the moment the manifest's upload begins: every file is there.
    let proxy = CuttingProxy::start(
        s3.port,
        "PUT /emshap-test/cut/versions/cccc333/manifest.json",
    );
    let (m, e) = ("c/models", "c/eval");
    let args = [
        "publish", "--store", &uri, "--models", m, "--eval", e, "--sha", "cccc333",
    ];
    let o = s3.run_as(d, &args, &proxy.endpoint, &s3.writer);
    assert!(proxy.died(), "the proxy saw the manifest's upload");
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(
        err.contains(&proxy.endpoint) && err.contains("s3://emshap-test/cut"),
        "{err}"
    );

    let store = s3.store("cut");
    let keys = store.list("versions/cccc333/").unwrap();
    assert_eq!(keys.len(), FILES.len(), "the files, no manifest: {keys:?}");
    // No visible version: neither promote nor fetch accepts it.
    let o = s3.run(d, &["promote", "--store", &uri, "--sha", "cccc333"]);
    assert_exit(&o, 3);
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(versions::production(&store).unwrap().is_none());
    let o = s3.run(
        d,
        &[
            "fetch", "--store", &uri, "--sha", "cccc333", "--dest", "live",
        ],
    );
    assert_exit(&o, 3);
    assert!(!d.join("live").exists());

    // The re-run (server back) completes it.
    let o = s3.run(d, &args);
    assert_exit(&o, 0);
    assert!(
        stdout(&o).contains("published version cccc333"),
        "{}",
        stdout(&o)
    );
    assert_exit(
        &s3.run(d, &["promote", "--store", &uri, "--sha", "cccc333"]),
        0,
    );
    assert_exit(&s3.run(d, &["fetch", "--store", &uri, "--dest", "live"]), 0);
    assert_fetched(&d.join("live"), &c, "cccc333");
}

#[test]
fn s3_wrong_credentials_and_an_unreachable_endpoint_exit_3_naming_endpoint_and_bucket() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let uri = s3.uri("creds");
    version(d, "a", "pass");
    assert_exit(&publish(&s3, d, &uri, "a", "aaaa111"), 0);
    assert_exit(
        &s3.run(d, &["promote", "--store", &uri, "--sha", "aaaa111"]),
        0,
    );
    assert_exit(&s3.run(d, &["fetch", "--store", &uri, "--dest", "live"]), 0);
    let live_before = std::fs::read(d.join("live/manifest.json")).unwrap();

    let secret = "wR0ng-s3cret-that-must-never-be-printed";
    let wrong_secret = Creds {
        id: s3.writer.id.clone(),
        secret: secret.into(),
    };
    let unknown_key = Creds {
        id: "AKIAEMSHAPCIUNKNOWN0".into(),
        secret: secret.into(),
    };
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let cases = [
        (&s3.endpoint, &wrong_secret, "credentials were refused"),
        (&s3.endpoint, &unknown_key, "credentials were refused"),
        (&unreachable, &s3.writer, "cannot reach the endpoint"),
    ];
    for (endpoint, creds, says) in cases {
        for args in [
            vec!["fetch", "--store", &uri, "--dest", "live"],
            vec!["promote", "--store", &uri, "--sha", "aaaa111"],
            vec![
                "publish", "--store", &uri, "--models", "a/models", "--eval", "a/eval", "--sha",
                "ffff666",
            ],
        ] {
            let o = s3.run_as(d, &args, endpoint, creds);
            assert_exit(&o, 3);
            let err = stderr(&o);
            assert!(err.contains(says), "{args:?}: {err}");
            assert!(err.contains(endpoint.as_str()), "names the endpoint: {err}");
            assert!(
                err.contains("s3://emshap-test/creds"),
                "names the bucket: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            for out in [err, stdout(&o)] {
                assert!(
                    !out.contains(secret) && !out.contains(&s3.writer.secret),
                    "{out}"
                );
            }
        }
    }
    // Nothing moved: the destination, the pointer and the versions are as they were.
    assert_eq!(
        std::fs::read(d.join("live/manifest.json")).unwrap(),
        live_before
    );
    let store = s3.store("creds");
    assert!(store.list("versions/ffff666/").unwrap().is_empty());
    assert_eq!(
        versions::production(&store).unwrap().unwrap().0.sha,
        "aaaa111"
    );
}

#[test]
fn s3_large_objects_go_up_in_parts_and_conditional_puts_of_them_hold() {
    let s3 = S3Server::start();
    let store = s3.store("multipart");
    // 2.5 parts: two whole ones and a short last one.
    let size = emshap_ci::store::s3::PART_SIZE * 5 / 2;
    assert!(size > emshap_ci::store::s3::MULTIPART_THRESHOLD);
    let big: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect();
    let Put::Written { etag } = store.put("big.bin", &big, Cond::Always).unwrap() else {
        panic!("the first upload is written");
    };
    // A multipart ETag names its part count: "<md5>-3".
    assert!(etag.trim_matches('"').ends_with("-3"), "{etag}");
    // Conditional puts of large objects are single requests, and keep their conditions.
    assert_eq!(store.head("big.bin").unwrap(), Some(size as u64));
    let got = store.get("big.bin").unwrap().unwrap();
    assert!(got.bytes == big, "the object reads back as written");
    assert_eq!(
        store.put("big.bin", &big, Cond::IfAbsent).unwrap(),
        Put::ConditionFailed
    );
    assert_eq!(
        store
            .put("big.bin", &big, Cond::IfMatch("\"0000\"".into()))
            .unwrap(),
        Put::ConditionFailed
    );
    assert!(matches!(
        store
            .put("big.bin", &big[1..], Cond::IfMatch(got.etag))
            .unwrap(),
        Put::Written { .. }
    ));
    assert_eq!(store.head("big.bin").unwrap(), Some(size as u64 - 1));
}

/// A new user's first try: an s3:// store and no AWS credentials anywhere. One line that
/// says no credentials were found and where they are looked for; none of the SDK's own
/// (multi-line) warnings unless -v.
#[test]
fn s3_no_credentials_at_all_says_so_in_one_line() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["fetch", "--store", &s3.uri("nocreds"), "--dest", "live"])
        .env("AWS_ENDPOINT_URL", &s3.endpoint)
        .env("AWS_REGION", "us-east-1")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(err.contains("no AWS credentials were found"), "{err}");
    assert!(
        err.contains("AWS_ACCESS_KEY_ID") && err.contains("AWS_PROFILE"),
        "{err}"
    );
    assert!(!err.contains("cannot reach the endpoint"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!tmp.path().join("live").exists());
}
