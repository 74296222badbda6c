//! `emshap-ci doctor`: checks what a run will need, without side effects (but the probe
//! object of `--write`, deleted again), and prints one table with a fix for each failing
//! row. Exit 3 when any check fails.

use serde_json::json;

use crate::app::Outcome;
use crate::cli::doctor::DoctorArgs;
use crate::error::{Error, Result};
use crate::pull::Source;
use crate::settings::{self, ConfigFile};

/// One row of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub check: &'static str,
    /// `ok`, `fail` or `skip`.
    pub status: &'static str,
    pub detail: String,
    /// What to do, for a failing row.
    pub fix: String,
}

fn ok(check: &'static str, detail: impl Into<String>) -> Check {
    Check {
        check,
        status: "ok",
        detail: detail.into(),
        fix: String::new(),
    }
}

fn skip(check: &'static str, detail: impl Into<String>) -> Check {
    Check {
        check,
        status: "skip",
        detail: detail.into(),
        fix: String::new(),
    }
}

/// A failing row from an error: its message and, split off, its hint.
fn fail(check: &'static str, e: &Error) -> Check {
    let text = e.to_string();
    // Errors end with "(hint)": the hint is the fix.
    let (detail, fix) = match text.rfind(" (") {
        Some(i) if text.ends_with(')') => (
            text[..i].to_string(),
            text[i + 2..text.len() - 1].to_string(),
        ),
        _ => (text.clone(), "see the message".to_string()),
    };
    Check {
        check,
        status: "fail",
        detail,
        fix,
    }
}

fn kafka(args: &DoctorArgs, config: &ConfigFile) -> Check {
    let s = match settings::resolve_pull(&args.pull, config) {
        Ok(s) => s,
        Err(e) => return fail("kafka", &e),
    };
    match &s.source {
        Source::Kafka { topic } => {
            let run = || -> Result<String> {
                let reader = crate::kafka::TopicReader::connect(&s.kafka, topic)?;
                let partitions = reader.partitions()?;
                let marks = reader.watermarks(&partitions)?;
                let messages: i64 = marks.iter().map(|(lo, hi)| (hi - lo).max(0)).sum();
                let sec = &s.kafka.security;
                Ok(format!(
                    "{}: topic {topic}, {} partition(s), {messages} message(s); {}{}",
                    s.kafka.brokers,
                    partitions.len(),
                    sec.protocol.name(),
                    if sec.mechanism.is_some() {
                        format!(", {}", sec.login())
                    } else {
                        String::new()
                    }
                ))
            };
            match run() {
                Ok(d) => ok("kafka", d),
                Err(e) => fail("kafka", &e),
            }
        }
        Source::File(path) => match std::fs::metadata(path) {
            Ok(m) if m.is_file() => ok(
                "kafka",
                format!(
                    "no Kafka: the source is {} ({} bytes)",
                    path.display(),
                    m.len()
                ),
            ),
            _ => fail(
                "kafka",
                &Error::usage(
                    format!("--source file:{}", path.display()),
                    "no such file (give a file of length-delimited FeatureVector messages)",
                ),
            ),
        },
        Source::Embedded => skip("kafka", "no Kafka: the source is the embedded fixture"),
    }
}

fn store(args: &DoctorArgs, config: &ConfigFile) -> Check {
    let configured = args
        .store
        .store
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| config.store.uri.clone());
    let Some(uri) = configured else {
        return skip(
            "store",
            "no store configured (--store, EMSHAP_CI_STORE, [store] uri)",
        );
    };
    let run = || -> Result<String> {
        let store = crate::store::open(&uri)?;
        let production = crate::store::versions::production(store.as_ref())?;
        let mut detail = match production {
            Some((p, _)) => format!("{}: production is {}", store.uri(), p.sha),
            None => format!("{}: readable, no production yet", store.uri()),
        };
        if args.write {
            let key = format!(
                "doctor/probe-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            );
            match store.put(
                &key,
                b"emshap-ci doctor probe\n",
                crate::store::Cond::IfAbsent,
            )? {
                crate::store::Put::Written { .. } => {}
                crate::store::Put::ConditionFailed => return Err(Error::Store {
                    uri: store.uri(),
                    message: format!(
                        "a conditional put of {key} was refused although nothing was there"
                    ),
                    hint:
                        "the server must support If-None-Match on PutObject (promote relies on it)"
                            .into(),
                }),
            }
            store.delete(&key)?;
            if store.head(&key)?.is_some() {
                return Err(Error::Store {
                    uri: store.uri(),
                    message: format!("{key} is still there after its deletion"),
                    hint: "check the bucket's policy".into(),
                });
            }
            detail.push_str("; a conditional put and a delete worked");
        }
        Ok(detail)
    };
    match run() {
        Ok(d) => ok("store", d),
        Err(e) => fail("store", &e),
    }
}

fn github(args: &DoctorArgs, config: &ConfigFile) -> Check {
    let facts = crate::facts::GitHubFacts::from_env();
    let repo = args
        .repo
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| config.github.repository.clone())
        .or(facts.repository.clone());
    if repo.is_none() && facts.token.is_none() {
        return skip(
            "github",
            "no repository and no token: comments and dispatches are off",
        );
    }
    let workflow = args
        .workflow
        .clone()
        .or_else(|| config.github.deploy_workflow.clone())
        .unwrap_or_else(|| "deploy.yml".into());
    let run = || -> Result<String> {
        let gh = crate::app::github_client(args.repo.as_deref(), config)?;
        gh.check(Some(&workflow))
    };
    match run() {
        Ok(d) => ok("github", format!("{}: {d}", facts.api_url)),
        Err(e) => fail("github", &e),
    }
}

fn onnx_runtime() -> Check {
    match crate::native::ort_environment() {
        Ok(_) => ok(
            "onnxruntime",
            match crate::native::ort_library() {
                Some(p) => format!("loaded {}", p.display()),
                None => "loaded".to_string(),
            },
        ),
        Err(e) => fail("onnxruntime", &e),
    }
}

fn trainer() -> Check {
    let run = || -> Result<String> {
        let bin = crate::trainer::locate()?;
        crate::trainer::check_version(&bin)?;
        let out = std::process::Command::new(&bin)
            .arg("--devices")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| Error::Trainer {
                path: bin.clone(),
                message: format!("cannot start it: {e}"),
                code: crate::error::exit::USAGE,
            })?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).map_err(|_| Error::Trainer {
                path: bin.clone(),
                message: format!(
                    "`--devices` answered no JSON ({}): {}",
                    crate::trainer::describe(&out.status),
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .next()
                        .unwrap_or("")
                ),
                code: crate::error::exit::USAGE,
            })?;
        let cuda = v["cuda_devices"].as_i64().unwrap_or(0);
        Ok(format!(
            "{} ({}): {}; {}",
            bin.display(),
            crate::trainer::version_line(),
            if v["fake"] == true {
                "the tests' fake trainer, no libtorch"
            } else {
                "libtorch loads"
            },
            if cuda > 0 {
                format!("{cuda} CUDA device(s), --device auto trains on cuda")
            } else {
                "no CUDA device, --device auto trains on the CPU".to_string()
            }
        ))
    };
    match run() {
        Ok(d) => ok("trainer", d),
        Err(e) => fail("trainer", &e),
    }
}

/// Runs every check and renders the table; exit 3 (as `Error::Doctor`) if any failed.
pub fn doctor(args: &DoctorArgs, config: &ConfigFile) -> Result<Outcome> {
    let checks = vec![
        kafka(args, config),
        store(args, config),
        github(args, config),
        onnx_runtime(),
        trainer(),
    ];
    let mut text = String::from("| check | status | detail | fix |\n|---|---|---|---|\n");
    for c in &checks {
        text.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.check,
            c.status,
            c.detail.replace('|', "\\|"),
            c.fix.replace('|', "\\|")
        ));
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == "fail")
        .map(|c| c.check)
        .collect();
    let json = json!({"ok": failed.is_empty(), "checks": checks});
    if failed.is_empty() {
        return Ok(Outcome { text, json });
    }
    // The table goes to stdout either way: it is the answer.
    println!("{}", text.trim_end());
    Err(Error::Doctor {
        failed: failed.join(", "),
        checks: json["checks"].clone(),
    })
}
