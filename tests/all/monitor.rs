//! `monitor` closing the loop against the real servers: a first window trained and promoted
//! by `run --mode main` (Tansu, the S3 server, the GitHub stand-in), then newer windows from
//! the same generator (ok), a new hardware mix (drift; a retrain dispatched on the second
//! drift in a row), a changed relation (degraded), the cooldown, and a window with gpu_util
//! missing in 20 % of the messages (exit 4, nothing dispatched).

use std::path::Path;
use std::process::Output;

use crate::harness::*;

const GATE: &str = "[power.r2]\ndirection = \"higher\"\nmin = 0.3\n\n[emshap.imputation_rmse]\ndirection = \"lower\"\nmax = 3.0\n";

struct Loop {
    tansu: Tansu,
    s3: S3Server,
    stand: Stand,
    uri: String,
}

impl Loop {
    fn env(&self) -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = [
            ("EMSHAP_CI_SOURCE", "kafka:fv"),
            ("EMSHAP_CI_BROKERS", self.tansu.brokers.as_str()),
            ("EMSHAP_CI_STORE", self.uri.as_str()),
            ("GITHUB_API_URL", self.stand.url.as_str()),
            ("GITHUB_REPOSITORY", "acme/power"),
            ("GITHUB_TOKEN", "ghs_monitor_token"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        e.extend(S3Server::env(&self.s3.endpoint, &self.s3.writer));
        e
    }

    fn run(&self, dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut c = bin();
        c.envs(self.env());
        for (k, v) in extra {
            c.env(k, v);
        }
        output(c, dir, args)
    }

    fn monitor(&self, dir: &Path, out: &str, extra: &[&str]) -> (Output, serde_json::Value) {
        let mut args = vec![
            "monitor",
            "--results",
            out,
            "--dispatch",
            "retrain.yml",
            "--kafka-timeout",
            "10",
            "--min-rows",
            "500",
        ];
        args.extend_from_slice(extra);
        let o = self.run(dir, &args, &[]);
        let report = std::fs::read(dir.join(out).join("monitor.json"))
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap_or(serde_json::Value::Null);
        (o, report)
    }

    /// The PR check (`run --mode pr`, PR #7) on the newest 1,500 messages per partition, into
    /// the work folder `work`; its gate may pass or fail.
    fn pr(&self, dir: &Path, work: &str) {
        let env = [
            ("EMSHAP_CI_GATE", "gate.toml"),
            ("EMSHAP_CI_EPOCHS", "1"),
            ("GITHUB_REF", "refs/pull/7/merge"),
            ("EMSHAP_CI_WINDOW", "last:1500"),
        ];
        let o = self.run(dir, &["run", "--mode", "pr", "--work", work], &env);
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(&o));
    }

    fn retrains(&self) -> Vec<serde_json::Value> {
        self.stand
            .requests()
            .into_iter()
            .filter(|r| r.path.ends_with("/retrain.yml/dispatches"))
            .map(|r| r.body["inputs"].clone())
            .collect()
    }
}

#[test]
fn kafka_s3_monitor_ok_drift_degraded_cooldown_and_missing_data() {
    let l = Loop {
        tansu: Tansu::start(),
        s3: S3Server::start(),
        stand: Stand::github(200),
        uri: String::new(),
    };
    let l = Loop {
        uri: l.s3.uri("loop"),
        ..l
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("gate.toml"), GATE).unwrap();
    l.tansu.generate(
        "fv",
        &["--rows", "6000", "--seed", "1", "--partitions", "2"],
    );
    let o = l.run(
        d,
        &["run", "--mode", "main", "--work", "w1", "--sha", "aaaa1111"],
        &[("EMSHAP_CI_GATE", "gate.toml"), ("EMSHAP_CI_EPOCHS", "3")],
    );
    assert_exit(&o, 0);

    // Newer data from the same generator: after production, nothing to do.
    l.tansu.generate("fv", &["--rows", "3000", "--seed", "2"]);
    let (o, r) = l.monitor(d, "m1", &[]);
    assert_exit(&o, 0);
    assert_eq!(r["production_sha"], "aaaa1111");
    assert_eq!(
        r["messages"], 3000,
        "the window is what came after production: {r}"
    );
    assert_eq!(
        r["verdict"],
        "ok",
        "{}",
        serde_json::to_string_pretty(&r).unwrap()
    );
    assert!(
        r["performance"]["rmse_ratio"].as_f64().unwrap() < 1.10,
        "{r}"
    );
    // Production's predictions against their own reference (its test rows): stable.
    assert_eq!(r["prediction"]["name"], "prediction", "{r}");
    assert_eq!(r["prediction"]["band"], "stable", "{r}");
    let psi_same = r["prediction"]["psi"].as_f64().unwrap();
    // Joint drift: EMSHAP's NLL on the window beside its stored test NLL, both defined.
    let j = &r["joint"];
    assert!(j["rows"].as_u64().unwrap() > 1000, "{j}");
    let z_same = j["z"].as_f64().unwrap();
    assert!(
        j["nll"].as_f64().unwrap().is_finite() && j["stored_nll"].as_f64().is_some(),
        "{j}"
    );
    assert!(l.retrains().is_empty());
    assert!(d.join("m1/monitor.md").is_file());
    // The PR check on data from the same generator: no feature moved.
    l.pr(d, "p0");
    let report = std::fs::read_to_string(d.join("p0/eval/report.md")).unwrap();
    assert!(
        report.contains("### Training data against production"),
        "{report}"
    );
    assert!(report.contains("no feature moved"), "{report}");

    // A new hardware mix: GPU utilisation 30 points higher, power by the same relation.
    l.tansu.generate(
        "fv",
        &["--rows", "3000", "--seed", "3", "--gpu-shift", "30"],
    );
    let last = ["--window", "last:1500"];
    let (o, r) = l.monitor(d, "m2", &last);
    assert_exit(&o, 0);
    assert_eq!(
        r["verdict"],
        "drift",
        "{}",
        serde_json::to_string_pretty(&r).unwrap()
    );
    let gpu = r["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "gpu_util")
        .unwrap();
    assert_eq!(gpu["band"], "significant", "{gpu}");
    // The second run's report charts the rmse ratio over the history (two points now).
    let md = std::fs::read_to_string(d.join("m2/monitor.md")).unwrap();
    assert!(
        md.contains("rmse / test rmse over the last 2 monitoring runs"),
        "{md}"
    );
    // More GPU load, more power predicted: the predictions move too.
    let psi_shift = r["prediction"]["psi"].as_f64().unwrap();
    assert!(psi_shift > psi_same, "{psi_shift} vs {psi_same}");
    // The new hardware mix is less likely under production's EMSHAP model.
    let z_shift = r["joint"]["z"].as_f64().unwrap();
    assert!(z_shift > z_same, "joint z {z_shift} vs {z_same}");
    assert!(
        r["dispatched"].is_null() && l.retrains().is_empty(),
        "one drift is not enough"
    );
    // The second drift in a row dispatches the retrain, with the window and the reason.
    let (o, r) = l.monitor(d, "m3", &[&last[..], &["--cooldown-hours", "0"]].concat());
    assert_exit(&o, 0);
    assert_eq!(r["verdict"], "drift");
    assert_eq!(r["dispatched"], "retrain.yml", "{r}");
    let sent = l.retrains();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0]["reason"].as_str().unwrap().contains("drift"),
        "{sent:?}"
    );
    assert!(
        sent[0]["window"].as_str().unwrap().starts_with("offsets:")
            || sent[0]["window"] == "last:1500",
        "{sent:?}"
    );

    // The PR check on the new hardware mix shows the reviewer that the candidate was
    // trained on different data: its train split against production's reference.
    l.pr(d, "p1");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("p1/eval/metrics.json")).unwrap()).unwrap();
    let dd = &m["data_drift"];
    assert_eq!(dd["production_sha"], "aaaa1111", "{m}");
    let band = |name: &str| {
        dd["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap()["band"]
            .clone()
    };
    assert_eq!(band("gpu_util"), "significant", "{dd}");
    assert_eq!(band("cpu_util"), "stable", "{dd}");
    let report = std::fs::read_to_string(d.join("p1/eval/report.md")).unwrap();
    assert!(
        report.contains("### Training data against production"),
        "{report}"
    );
    assert!(report.contains("`gpu_util` significant"), "{report}");
    assert!(report.contains("xychart-beta"), "{report}");
    let comments = l.stand.comments();
    assert!(comments.last().unwrap()["body"]
        .as_str()
        .unwrap()
        .contains("`gpu_util` significant"));

    // A changed relation: the same features, power 20 % higher.
    l.tansu.generate(
        "fv",
        &["--rows", "3000", "--seed", "4", "--power-scale", "1.2"],
    );
    let (o, r) = l.monitor(d, "m4", &last);
    assert_exit(&o, 0);
    assert_eq!(
        r["verdict"],
        "degraded",
        "{}",
        serde_json::to_string_pretty(&r).unwrap()
    );
    assert!(r["performance"]["rmse_ratio_low"].as_f64().unwrap() > 1.0);
    // Within the cooldown of the last dispatch: not dispatched again, and it says why.
    assert!(r["dispatched"].is_null(), "{r}");
    assert!(
        r["dispatch_note"].as_str().unwrap().contains("cooldown"),
        "{r}"
    );
    assert_eq!(l.retrains().len(), 1);
    let (o, r) = l.monitor(d, "m5", &[&last[..], &["--cooldown-hours", "0"]].concat());
    assert_exit(&o, 0);
    assert_eq!(r["dispatched"], "retrain.yml");
    assert_eq!(l.retrains().len(), 2);
    // --fail-on degraded turns it into a red X.
    let (o, _) = l.monitor(d, "m6", &[&last[..], &["--fail-on", "degraded"]].concat());
    assert_exit(&o, 1);

    // gpu_util missing in 20 % of the messages: invalid, exit 4, nothing dispatched.
    l.tansu.generate(
        "fv",
        &["--rows", "3000", "--seed", "5", "--gpu-missing", "0.2"],
    );
    let (o, r) = l.monitor(d, "m7", &[&last[..], &["--cooldown-hours", "0"]].concat());
    assert_exit(&o, 4);
    assert_eq!(r["verdict"], "invalid");
    assert!(r["reason"].as_str().unwrap().contains("gpu_util"), "{r}");
    assert_eq!(l.retrains().len(), 2);
    // A failed expectation makes the window invalid too: exit 4, named, nothing dispatched.
    std::fs::write(d.join("exp.toml"), "rows = { min = 1000000 }\n").unwrap();
    let (o, r) = l.monitor(
        d,
        "m8",
        &[
            &last[..],
            &["--cooldown-hours", "0", "--expectations", "exp.toml"],
        ]
        .concat(),
    );
    assert_exit(&o, 4);
    assert_eq!(r["verdict"], "invalid");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("expectations failed: rows"),
        "{r}"
    );
    assert_eq!(r["expectations"][0]["expectation"], "rows", "{r}");
    assert!(std::fs::read_to_string(d.join("m8/monitor.md"))
        .unwrap()
        .contains("### Expectations"));
    assert_eq!(l.retrains().len(), 2);
    // Every run left its record in the store.
    use emshap_ci::store::Store;
    assert_eq!(l.s3.store("loop").list("monitoring/").unwrap().len(), 8);
}
