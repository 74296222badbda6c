//! Kafka security against real servers: Tansu with SCRAM-SHA-512 users (sqlite storage)
//! behind a TLS-terminating stunnel with a CA the test makes; compressed topics, one per
//! codec; the AWS_MSK_IAM token checked against botocore's own SigV4 presigning and its
//! callback seen reaching librdkafka. Every test names `kafka`.

use std::path::Path;
use std::process::Output;

use crate::harness::*;

const PASSWORD: &str = "s3cret-Pa55word-for-tests";

/// emshap-ci with these environment variables.
fn run_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    for (k, v) in env {
        c.env(k, v);
    }
    output(c, dir, args)
}

/// `pull` of `topic` from `brokers` into `out`, with `extra` flags.
fn pull_args<'a>(
    brokers: &'a str,
    source: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "pull",
        "--source",
        source,
        "--brokers",
        brokers,
        "--out",
        out,
        "--kafka-timeout",
        "10",
        "-q",
    ];
    a.extend_from_slice(extra);
    a
}

/// Every byte a run left: its output and every file under `dir`.
fn everything(o: &Output, dir: &Path) -> Vec<u8> {
    let mut all = o.stdout.clone();
    all.extend_from_slice(&o.stderr);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                all.extend(std::fs::read(&p).unwrap());
            }
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The snapshot without `dataset.json`'s `source.brokers` (the two brokers' addresses differ).
fn comparable(dir: &Path) -> Vec<(String, Vec<u8>)> {
    read_tree(dir)
        .into_iter()
        .map(|(name, bytes)| {
            if name != "dataset.json" {
                return (name, bytes);
            }
            let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            v["source"]
                .as_object_mut()
                .expect("source is an object")
                .remove("brokers");
            (name, serde_json::to_vec(&v).unwrap())
        })
        .collect()
}

#[test]
fn kafka_sasl_ssl_scram_pull_gives_the_bytes_of_a_plaintext_pull_and_no_password_anywhere() {
    let pki = Pki::make();
    let secure = SecureTansu::start(&pki, &[("alice", PASSWORD)], false);
    let plain = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki.path("ca.pem");
    let login = [
        "--kafka-security-protocol",
        "SASL_SSL",
        "--kafka-sasl-mechanism",
        "SCRAM-SHA-512",
        "--kafka-sasl-username",
        "alice",
        "--kafka-ca",
        &ca,
    ];
    let env = [("EMSHAP_CI_KAFKA_SASL_PASSWORD", PASSWORD)];
    // The same generated messages into both brokers: the secure one through SASL_SSL.
    let gen = |brokers: &str, extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--brokers",
            brokers,
            "--topic",
            "fv",
            "--rows",
            "2000",
            "--seed",
            "5",
        ];
        a.extend_from_slice(extra);
        let o = run_with(d, &a, &env);
        assert_exit(&o, 0);
        o
    };
    let g = gen(&secure.brokers, &login);
    gen(&plain.brokers, &[]);

    let o = run_with(
        d,
        &pull_args(&secure.brokers, "kafka:fv", "secure", &login),
        &env,
    );
    assert_exit(&o, 0);
    let o2 = run(d, &pull_args(&plain.brokers, "kafka:fv", "plain", &[]));
    assert_exit(&o2, 0);
    assert_eq!(dataset(&d.join("secure"))["counts"]["messages"], 2000);
    assert!(
        comparable(&d.join("secure")) == comparable(&d.join("plain")),
        "a SASL_SSL pull and a plaintext pull of the same messages differ"
    );
    // The CA given as PEM text in the environment (the action's input) works the same.
    let pem = std::fs::read_to_string(&ca).unwrap();
    let o3 = run_with(
        d,
        &pull_args(&secure.brokers, "kafka:fv", "pem", &login[..6]),
        &[env[0], ("EMSHAP_CI_KAFKA_CA", &pem)],
    );
    assert_exit(&o3, 0);
    assert!(comparable(&d.join("pem")) == comparable(&d.join("plain")));
    for out in [&g, &o, &o3] {
        assert!(
            !contains(&everything(out, d), PASSWORD),
            "the password leaked"
        );
    }
}

#[test]
fn kafka_wrong_password_wrong_ca_and_plaintext_to_tls_each_exit_3_and_write_nothing() {
    let pki = Pki::make();
    let secure = SecureTansu::start(&pki, &[("alice", PASSWORD)], false);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki.path("ca.pem");
    let other = pki.path("other-ca.pem");
    let good = [("EMSHAP_CI_KAFKA_SASL_PASSWORD", PASSWORD)];
    let login = |ca: &str| -> Vec<String> {
        [
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            "alice",
            "--kafka-ca",
            ca,
        ]
        .map(String::from)
        .to_vec()
    };
    let attempt = |out: &str, flags: &[String], env: &[(&str, &str)]| {
        let f: Vec<&str> = flags.iter().map(String::as_str).collect();
        let o = run_with(d, &pull_args(&secure.brokers, "kafka:fv", out, &f), env);
        assert_exit(&o, 3);
        assert!(
            !d.join(out).exists(),
            "{out}: a refused pull wrote a snapshot"
        );
        let err = stderr(&o);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        eprintln!("{out}: {}", err.trim());
        err
    };
    // Make the topic first, so a refusal is never "no such topic".
    let mut a = vec![
        "generate",
        "--brokers",
        &secure.brokers,
        "--topic",
        "fv",
        "--rows",
        "50",
    ];
    let l = login(&ca);
    a.extend(l.iter().map(String::as_str));
    assert_exit(&run_with(d, &a, &good), 0);

    let wrong = "not-the-password";
    let err = attempt(
        "wrongpw",
        &login(&ca),
        &[("EMSHAP_CI_KAFKA_SASL_PASSWORD", wrong)],
    );
    assert!(
        err.contains(&format!(
            "kafka at {}: authentication failed (SCRAM-SHA-512 as alice)",
            secure.brokers
        )),
        "{err}"
    );
    assert!(
        err.contains("EMSHAP_CI_KAFKA_SASL_PASSWORD"),
        "says what to check: {err}"
    );
    assert!(!err.contains(wrong), "{err}");

    let err = attempt("wrongca", &login(&other), &good);
    assert!(err.contains("did not verify"), "{err}");
    assert!(
        err.contains(&format!("CA file {other}")),
        "names the CA used: {err}"
    );
    assert!(err.contains("--kafka-ca"), "{err}");

    // Without a CA the system bundle is used: the test CA is not in it.
    let no_ca = login(&ca)[..4].to_vec();
    let err = attempt("systemca", &no_ca, &good);
    assert!(err.contains("the system CA bundle"), "{err}");

    // A plaintext client at a TLS listener fails with exit 3 too, saying so.
    let o = run_with(
        d,
        &[
            "pull",
            "--source",
            "kafka:fv",
            "--brokers",
            &secure.brokers,
            "--out",
            "plain",
            "--kafka-timeout",
            "3",
            "-q",
        ],
        &[],
    );
    assert_exit(&o, 3);
    assert!(!d.join("plain").exists());
}

#[test]
fn kafka_mutual_tls_needs_the_client_certificate() {
    let pki = Pki::make();
    let secure = SecureTansu::start(&pki, &[("bob", PASSWORD)], true);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let env = [("EMSHAP_CI_KAFKA_SASL_PASSWORD", PASSWORD)];
    let base = [
        "--kafka-sasl-mechanism",
        "SCRAM-SHA-512",
        "--kafka-sasl-username",
        "bob",
        "--kafka-ca",
        &ca,
    ];
    let mut with_cert = base.to_vec();
    with_cert.extend([
        "--kafka-client-certificate",
        &cert,
        "--kafka-client-key",
        &key,
    ]);
    let mut a = vec![
        "generate",
        "--brokers",
        &secure.brokers,
        "--topic",
        "m",
        "--rows",
        "300",
    ];
    a.extend_from_slice(&with_cert);
    assert_exit(&run_with(d, &a, &env), 0);
    let o = run_with(
        d,
        &pull_args(&secure.brokers, "kafka:m", "ok", &with_cert),
        &env,
    );
    assert_exit(&o, 0);
    assert_eq!(dataset(&d.join("ok"))["counts"]["messages"], 300);

    let o = run_with(
        d,
        &pull_args(&secure.brokers, "kafka:m", "nocert", &base),
        &env,
    );
    assert_exit(&o, 3);
    assert!(!d.join("nocert").exists());
    let err = stderr(&o);
    eprintln!("nocert: {}", err.trim());
    assert!(err.contains("client certificate"), "{err}");
    // The key given as PEM text through the environment works like the path.
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let mut cert_only = base.to_vec();
    cert_only.extend(["--kafka-client-certificate", &cert]);
    let o = run_with(
        d,
        &pull_args(&secure.brokers, "kafka:m", "keypem", &cert_only),
        &[env[0], ("EMSHAP_CI_KAFKA_SSL_KEY_PEM", &key_pem)],
    );
    assert_exit(&o, 0);
    assert!(
        !contains(&everything(&o, d), "PRIVATE KEY-----\n"),
        "the key leaked"
    );
}

#[test]
fn kafka_compressed_topics_pull_like_uncompressed_ones_for_every_codec() {
    let t = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    for codec in codecs {
        let prop = format!("compression.type={codec}");
        let o = run(
            d,
            &[
                "generate",
                "--brokers",
                &t.brokers,
                "--topic",
                codec,
                "--rows",
                "1500",
                "--seed",
                "3",
                "--partitions",
                "2",
                "--kafka-property",
                &prop,
            ],
        );
        assert_exit(&o, 0);
        let source = format!("kafka:{codec}");
        let o = run(d, &pull_args(&t.brokers, &source, codec, &[]));
        assert_exit(&o, 0);
        assert_eq!(
            dataset(&d.join(codec))["counts"]["messages"],
            1500,
            "{codec}"
        );
    }
    let data = |c: &str| {
        let mut t = read_tree(&d.join(c));
        t.retain(|(n, _)| n.ends_with(".parquet"));
        assert!(!t.is_empty());
        t
    };
    for codec in &codecs[1..] {
        assert!(data(codec) == data("none"), "{codec}: different rows");
    }
}

/// The MSK IAM token, recomputed by botocore's own SigV4 query presigning at the token's
/// signing time: same signature, so the token is what Amazon MSK verifies.
#[test]
fn kafka_msk_iam_token_is_the_sigv4_presigned_url_botocore_computes() {
    // nextest runs each test in its own process: nothing else reads these here.
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE");
    std::env::set_var(
        "AWS_SECRET_ACCESS_KEY",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    );
    std::env::set_var("AWS_SESSION_TOKEN", "session-token-example");
    std::env::set_var("AWS_CONFIG_FILE", "/dev/null");
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let (token, expiry_ms) = emshap_ci::kafka::security::msk_iam_token("us-west-2").unwrap();
    let python = std::env::var("EMSHAP_CI_MOTO_PYTHON")
        .expect("EMSHAP_CI_MOTO_PYTHON (botocore) from scripts/setup.sh --test");
    let script = r#"
import base64, sys, datetime, urllib.parse
from unittest import mock
import botocore.auth, botocore.awsrequest, botocore.credentials
token = sys.argv[1]
url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
u = urllib.parse.urlparse(url)
q = dict(urllib.parse.parse_qsl(u.query))
assert u.scheme == "https" and u.netloc == "kafka.us-west-2.amazonaws.com", url
assert q["Action"] == "kafka-cluster:Connect" and q["X-Amz-Expires"] == "900", q
when = datetime.datetime.strptime(q["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
creds = botocore.credentials.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-example")
req = botocore.awsrequest.AWSRequest(method="GET", url="https://kafka.us-west-2.amazonaws.com/?Action=kafka-cluster%3AConnect")
# botocore reads the time through botocore.auth.get_current_datetime (older versions:
# datetime.datetime.utcnow); both are pinned to the token's own time, so a second boundary
# between the two signings cannot make them differ.
with mock.patch("botocore.auth.get_current_datetime", return_value=when, create=True), \
        mock.patch("botocore.auth.datetime") as dt:
    dt.datetime.utcnow.return_value = when
    dt.datetime.now.return_value = when.replace(tzinfo=datetime.timezone.utc)
    dt.datetime.strptime = datetime.datetime.strptime
    botocore.auth.SigV4QueryAuth(creds, "kafka-cluster", "us-west-2", expires=900).add_auth(req)
mine = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(req.url).query))
assert mine["X-Amz-Signature"] == q["X-Amz-Signature"], (mine, q)
assert mine["X-Amz-Credential"] == q["X-Amz-Credential"], (mine, q)
assert mine["X-Amz-Security-Token"] == q["X-Amz-Security-Token"], (mine, q)
print(int(when.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000) + 900_000)
"#;
    let o = std::process::Command::new(python)
        .args(["-c", script, &token])
        .output()
        .unwrap();
    assert!(o.status.success(), "botocore disagrees: {}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        expiry_ms.to_string(),
        "expiry = signing time + 900 s"
    );
}

/// AWS_MSK_IAM reaches librdkafka as OAUTHBEARER with emshap-ci's token callback: without
/// credentials the callback's own refusal is reported; with them a token is handed over and
/// the broker (Tansu offers SCRAM only) refuses the mechanism.
#[test]
fn kafka_msk_iam_goes_through_the_oauthbearer_callback() {
    let t = Tansu::start();
    t.generate("m", &["--rows", "20"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let flags = [
        "--kafka-security-protocol",
        "SASL_PLAINTEXT",
        "--kafka-sasl-mechanism",
        "AWS_MSK_IAM",
    ];
    let o = run_with(
        d,
        &pull_args(&t.brokers, "kafka:m", "none", &flags),
        &[("AWS_REGION", "eu-west-1")],
    );
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(err.contains("authentication failed (AWS_MSK_IAM"), "{err}");
    assert!(err.contains("cannot sign an AWS_MSK_IAM token"), "{err}");
    eprintln!("msk, no credentials: {}", err.trim());
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let o = run_with(
        d,
        &pull_args(&t.brokers, "kafka:m", "signed", &flags),
        &[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ],
    );
    assert_exit(&o, 3);
    let err = stderr(&o);
    assert!(err.contains("authentication failed (AWS_MSK_IAM"), "{err}");
    assert!(!err.contains("cannot sign"), "a token was signed: {err}");
    eprintln!("msk, signed: {}", err.trim());
    assert!(!err.contains(secret) && !d.join("signed").exists(), "{err}");
}

#[test]
fn kafka_unknown_mechanism_or_missing_password_is_exit_2_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Nothing listens at port 9: a usage error comes first.
    let o = run(
        d,
        &pull_args(
            "127.0.0.1:9",
            "kafka:m",
            "x",
            &["--kafka-sasl-mechanism", "SCRAM-SHA-1"],
        ),
    );
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("SCRAM-SHA-1"), "{}", stderr(&o));
    let o = run(
        d,
        &pull_args(
            "127.0.0.1:9",
            "kafka:m",
            "x",
            &[
                "--kafka-sasl-mechanism",
                "PLAIN",
                "--kafka-sasl-username",
                "u",
            ],
        ),
    );
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("EMSHAP_CI_KAFKA_SASL_PASSWORD"),
        "{}",
        stderr(&o)
    );
}
