//! Runs a parsed command line: loads the config, resolves settings, calls the stage, and
//! returns what to print. Knows nothing about exit codes or stdout; `main` does.

use serde_json::json;

use crate::cli::train::TrainCommand;
use crate::cli::{Cli, Command};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::settings::{self, ConfigFile, GenerateTarget};

/// What a command has to say: text for people, JSON for `--output json`.
pub struct Outcome {
    pub text: String,
    pub json: serde_json::Value,
}

pub fn run(cli: &Cli) -> Result<Outcome> {
    let config = ConfigFile::load(cli.global.config.as_deref())?;
    let quiet = cli.global.quiet > 0;
    match &cli.command {
        Command::Generate(args) => {
            let s = settings::resolve_generate(args, &config)?;
            let report = match &s.target {
                GenerateTarget::File(path) => crate::generate::write_file(&s.spec, path)?,
                GenerateTarget::Kafka {
                    kafka,
                    topic,
                    partitions,
                } => crate::generate::produce(&s.spec, kafka, topic, *partitions)?,
            };
            let bad: Vec<String> = report.bad.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let text = format!(
                "generated {} records ({} bytes) to {} in {:.2} s{}",
                report.records,
                report.bytes,
                report.target,
                report.seconds,
                if bad.is_empty() {
                    String::new()
                } else {
                    format!("; bad: {}", bad.join(", "))
                }
            );
            Ok(Outcome {
                text,
                json: json!({"command": "generate", "ok": true, "report": report}),
            })
        }
        Command::Pull(args) => pull(&settings::resolve_pull(args, &config)?, quiet),
        Command::Run(args) => crate::run::run(&cli.global, args),
        Command::Doctor(args) => crate::doctor::doctor(args, &config),
        Command::Monitor(args) => crate::monitor::command(args, &config, quiet),
        Command::Expect(args) => crate::expect::command(args),
        Command::Explain(args) => {
            let s = settings::resolve_explain(args, &config)?;
            let progress = Progress::new("explain", quiet);
            let a = crate::explain::explain(&s, &progress)?;
            let gap = a.rows.iter().map(|r| r.efficiency_gap).fold(0.0, f64::max);
            let worst_se = a
                .rows
                .iter()
                .filter_map(|r| r.stderr.as_ref())
                .flatten()
                .fold(0.0f64, |m, v| m.max(*v));
            Ok(Outcome {
                text: format!(
                    "explained {} rows of {} features by {} in {:.2} s ({:.2} rows/s); largest efficiency gap {gap:.2e}{}\nwrote {}",
                    a.rows.len(),
                    a.features.len(),
                    a.method,
                    a.seconds,
                    a.rows.len() as f64 / a.seconds.max(1e-9),
                    if worst_se > 0.0 {
                        format!(", largest standard error of a φ {worst_se:.3} W")
                    } else {
                        String::new()
                    },
                    s.out.display()
                ),
                json: json!({"command": "explain", "ok": true, "rows": a.rows.len(), "method": a.method, "seconds": a.seconds, "efficiency_gap": gap, "out": s.out}),
            })
        }
        Command::Publish(args) => publish(args, &config),
        Command::Promote(args) => promote(args, &config),
        Command::Rollback(args) => {
            let store = open_store(&args.store, &config)?;
            let p = crate::store::versions::rollback(
                store.as_ref(),
                args.to.as_deref(),
                args.steps,
                &settings::actor(),
                args.reason.clone(),
            )?;
            Ok(Outcome {
                text: format!(
                    "production is back at {} (was {})",
                    p.sha,
                    p.previous.as_deref().unwrap_or("none")
                ),
                json: json!({"command": "rollback", "ok": true, "pointer": p}),
            })
        }
        Command::Fetch(args) => {
            let store = open_store(&args.store, &config)?;
            let m = crate::store::versions::fetch(store.as_ref(), args.sha.as_deref(), &args.dest)?;
            Ok(Outcome {
                text: format!(
                    "fetched version {} ({} files, every sha256 verified) into {}",
                    m.sha,
                    m.files.len(),
                    args.dest.display()
                ),
                json: json!({"command": "fetch", "ok": true, "sha": m.sha, "files": m.files}),
            })
        }
        Command::Report(args) => report(args, &config),
        Command::Comment(args) => comment(args, &config),
        Command::Dispatch(args) => dispatch(args, &config),
        Command::Evaluate(args) => {
            let s = settings::resolve_evaluate(args, &config)?;
            let (m, out) = evaluate(&s)?;
            match crate::evaluate::gate_failure(&m, &s.out.join(crate::evaluate::METRICS_FILE)) {
                Some(e) => Err(e),
                None => Ok(out),
            }
        }
        Command::Train(cmd) => {
            let job = match cmd {
                TrainCommand::Power(args) => {
                    crate::trainer::Job::Power(settings::resolve_train_power(args, &config)?)
                }
                TrainCommand::Emshap(args) => {
                    crate::trainer::Job::Emshap(settings::resolve_train_emshap(args, &config)?)
                }
            };
            train(&job, quiet)
        }
    }
}

fn evaluate_text(m: &crate::evaluate::Metrics) -> String {
    let mut lines = vec![format!(
        "verdict: {} (baseline: {}; {} power rows, {} EMSHAP rows; {:.1} s)",
        m.verdict,
        serde_json::to_value(m.baseline)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        m.rows.get("power").copied().unwrap_or(0),
        m.rows.get("emshap").copied().unwrap_or(0),
        m.seconds
    )];
    if let Some(sha) = &m.production_sha {
        lines.push(format!("production: {sha}"));
    }
    if let Some(note) = &m.baseline_note {
        lines.push(format!("note: {note}"));
    }
    for c in &m.checks {
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.5}"));
        lines.push(format!(
            "{} {}.{}: candidate {} production {}{}",
            if c.passed { "ok  " } else { "FAIL" },
            c.model,
            c.metric,
            fmt(c.candidate),
            fmt(c.baseline),
            if c.passed {
                String::new()
            } else {
                format!(" ({})", c.reason)
            }
        ));
    }
    if let Some(f) = &m.force {
        lines.push(format!(
            "FORCED by {} despite {} failed check(s): {}",
            f.by,
            f.failed.len(),
            f.reason
        ));
    }
    lines.join("\n")
}

/// Reads a JSON file another stage wrote; a missing or unreadable one is named.
fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path, from: &str) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::usage(
            path.display().to_string(),
            format!("is not a {from} file: {e} (re-run the stage that writes it)"),
        )
    })
}

/// `report`: the evaluation as markdown (report.md, and the job summary in Actions).
pub fn report(args: &crate::cli::report::ReportArgs, config: &ConfigFile) -> Result<Outcome> {
    use crate::cli::report::Limit;
    let eval = config.evaluate.eval_dir(args.eval.as_ref());
    let models = config.train.models_dir(args.models.as_ref());
    let metrics: crate::evaluate::Metrics = read_json(
        &eval.join(crate::evaluate::METRICS_FILE),
        "metrics.json (evaluate)",
    )?;
    let dataset_path = eval.join(crate::pull::snapshot::DATASET_FILE);
    let dataset: Option<crate::pull::Dataset> = dataset_path
        .is_file()
        .then(|| read_json(&dataset_path, "dataset.json (pull)"))
        .transpose()?;
    // Training curves when the model folder has them; a report without them is still whole.
    let mut histories = Vec::new();
    for name in [crate::train::POWER_HISTORY, crate::train::EMSHAP_HISTORY] {
        let p = models.join(name);
        if p.is_file() {
            histories.push(read_json::<crate::train::History>(&p, "training history")?);
        }
    }
    let sha = args
        .sha
        .clone()
        .or_else(|| crate::facts::GitHubFacts::from_env().sha);
    let input = crate::report::Input {
        metrics: Some(&metrics),
        dataset: dataset.as_ref(),
        histories: histories.iter().collect(),
        sha: sha.as_deref(),
        manifest_uri: args.manifest_uri.as_deref(),
        marker: None,
    };
    let limit = match args.limit {
        Some(l) => l,
        None => match config.report.limit.as_deref() {
            None | Some("comment") => Limit::Comment,
            Some("summary") => Limit::Summary,
            Some(other) => {
                return Err(Error::usage(
                    "[report] limit",
                    format!("`{other}` (use comment or summary)"),
                ))
            }
        },
    };
    let limit = match limit {
        Limit::Comment => crate::report::COMMENT_LIMIT,
        Limit::Summary => crate::report::SUMMARY_LIMIT,
    };
    let md = crate::report::render(&input, limit);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| eval.join(crate::artifacts::REPORT_FILE));
    crate::pull::snapshot::write_atomic(&out, md.as_bytes())?;
    if args.summary {
        let gha = crate::gha::Actions::from_env();
        gha.summary(&crate::report::render(&input, crate::report::SUMMARY_LIMIT))?;
    }
    Ok(Outcome {
        text: md.trim_end().to_string(),
        json: json!({"command": "report", "ok": true, "out": out, "verdict": metrics.verdict, "bytes": md.len()}),
    })
}

/// The GitHub client for `repo` (default $GITHUB_REPOSITORY), with the API URL and token
/// from the environment Actions sets (main.rs has masked the token).
pub(crate) fn github_client(
    repo: Option<&str>,
    config: &ConfigFile,
) -> Result<crate::github::GitHub> {
    let facts = crate::facts::GitHubFacts::from_env();
    let token = facts.token.clone().unwrap_or_default();
    let api = facts.api_url.clone();
    let repo = repo
        .map(String::from)
        .filter(|r| !r.is_empty())
        .or_else(|| config.github.repository.clone())
        .or(facts.repository)
        .ok_or_else(|| {
            Error::usage(
                "--repo",
                "no repository: give --repo OWNER/NAME (GitHub Actions sets GITHUB_REPOSITORY)",
            )
        })?;
    if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
        return Err(Error::usage(
            "--repo",
            format!("`{repo}` is not OWNER/NAME"),
        ));
    }
    crate::github::GitHub::new(&api, &repo, &token)
}

/// `comment`: the report as the PR's one emshap-ci comment.
pub fn comment(args: &crate::cli::github::CommentArgs, config: &ConfigFile) -> Result<Outcome> {
    let gha = crate::gha::Actions::from_env();
    let facts = crate::facts::GitHubFacts::from_env();
    let pr = args.pr.or(facts.pr).ok_or_else(|| {
        Error::usage(
            "--pr",
            "give the pull request number (GITHUB_REF is not refs/pull/N/merge)",
        )
    })?;
    let workflow = args
        .workflow
        .clone()
        .or_else(|| config.github.workflow.clone())
        .or(facts.workflow)
        .unwrap_or_else(|| "emshap-ci".into());
    let path = args.body.clone().unwrap_or_else(|| {
        config
            .evaluate
            .eval_dir(args.eval.as_ref())
            .join(crate::artifacts::REPORT_FILE)
    });
    let body = std::fs::read_to_string(&path).map_err(|e| Error::Io {
        op: "read",
        path: path.clone(),
        hint: "run `emshap-ci report --eval DIR` first, which writes DIR/report.md",
        source: e,
    })?;
    let client = github_client(args.repo.as_deref(), config)?;
    let marker = crate::github::marker(&workflow);
    match client.upsert_comment(pr, &marker, &body)? {
        crate::github::CommentOutcome::Posted {
            id,
            url,
            created,
            removed,
        } => {
            gha.output("comment_url", &url)?;
            Ok(Outcome {
                text: format!(
                    "{} comment {id} on PR #{pr}{}: {url}",
                    if created { "posted" } else { "updated" },
                    if removed > 0 {
                        format!(" ({removed} older duplicate(s) removed)")
                    } else {
                        String::new()
                    }
                ),
                json: json!({"command": "comment", "ok": true, "id": id, "url": url, "created": created, "removed": removed}),
            })
        }
        crate::github::CommentOutcome::ReadOnly { message } => {
            gha.notice(
                "emshap-ci report in the job summary",
                &format!("{message}; the report is in this job's summary instead"),
            );
            gha.summary(&body)?;
            Ok(Outcome {
                text: format!("not commented: {message}; the report went to the job summary"),
                json: json!({"command": "comment", "ok": true, "summary_only": true, "reason": message}),
            })
        }
    }
}

/// `dispatch`: the deploy workflow for production's version.
pub fn dispatch(args: &crate::cli::github::DispatchArgs, config: &ConfigFile) -> Result<Outcome> {
    let sha = sha_of(args.sha.as_deref())?;
    let manifest_uri = match (&args.manifest_uri, &args.store.store) {
        (Some(uri), _) => uri.clone(),
        (None, Some(_)) => {
            // Only production is deployed: the store must point at this sha.
            let store = open_store(&args.store, config)?;
            let production =
                crate::store::versions::production(store.as_ref())?.map(|(p, _)| p.sha);
            if production.as_deref() != Some(sha.as_str()) {
                return Err(Error::NotProduction {
                    sha: sha.clone(),
                    store: store.uri(),
                    production: production.unwrap_or_else(|| "none".into()),
                });
            }
            format!("{}/versions/{sha}/manifest.json", store.uri())
        }
        (None, None) => {
            return Err(Error::usage(
                "dispatch",
                "give --manifest-uri, or --store to take production's",
            ))
        }
    };
    let client = github_client(args.repo.as_deref(), config)?;
    let inputs = std::collections::BTreeMap::from([
        ("sha".to_string(), sha.clone()),
        ("manifest_uri".to_string(), manifest_uri.clone()),
    ]);
    let workflow = args
        .workflow
        .clone()
        .or_else(|| config.github.deploy_workflow.clone())
        .unwrap_or_else(|| "deploy.yml".into());
    let git_ref = args
        .git_ref
        .clone()
        .or_else(|| config.github.deploy_ref.clone())
        .unwrap_or_else(|| "main".into());
    client.dispatch(&workflow, &git_ref, &inputs)?;
    Ok(Outcome {
        text: format!(
            "dispatched {} on {} for {sha} ({manifest_uri})",
            workflow, git_ref
        ),
        json: json!({"command": "dispatch", "ok": true, "workflow": workflow, "ref": git_ref, "sha": sha}),
    })
}

fn open_store(
    arg: &crate::cli::store::StoreArg,
    config: &ConfigFile,
) -> Result<Box<dyn crate::store::Store>> {
    crate::store::open(&settings::store_uri(arg.store.as_deref(), config))
}

fn sha_of(flag: Option<&str>) -> Result<String> {
    let sha = flag
        .map(String::from)
        .or_else(|| crate::facts::GitHubFacts::from_env().sha)
        .ok_or_else(|| {
            Error::usage(
                "--sha",
                "give the commit sha (or run in GitHub Actions, which sets GITHUB_SHA)",
            )
        })?;
    crate::store::versions::check_sha(&sha)?;
    Ok(sha)
}

/// The JSON object printed for a failed command under `--output json`.
pub fn error_json(e: &Error) -> serde_json::Value {
    let mut v =
        json!({"ok": false, "error": e.to_string(), "kind": e.kind(), "exit_code": e.exit_code()});
    if let Error::Doctor { checks, .. } = e {
        v["checks"] = checks.clone();
    }
    v
}

/// `pull` with its settings resolved.
pub fn pull(s: &crate::pull::PullSettings, quiet: bool) -> Result<Outcome> {
    let progress = Progress::new("pull", quiet);
    let report = crate::pull::pull(s, &progress)?;
    let bad: Vec<String> = report
        .invalid
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let text = format!(
        "pulled {} messages from {} in {:.2} s ({:.0} msg/s): {} rows, {} duplicates, {} invalid ({:.3} %{}{})\nsnapshot {} sha256 {}",
        report.messages,
        report.source,
        report.seconds,
        report.messages_per_s,
        report.rows,
        report.duplicates,
        report.invalid.values().sum::<u64>(),
        report.invalid_ratio * 100.0,
        if bad.is_empty() { "" } else { ": " },
        bad.join(", "),
        report.out.display(),
        report.snapshot_sha256
    );
    Ok(Outcome {
        text,
        json: json!({"command": "pull", "ok": true, "report": report}),
    })
}

/// `train power|emshap` with its settings resolved, in emshap-ci-train.
pub fn train(job: &crate::trainer::Job, quiet: bool) -> Result<Outcome> {
    let label = format!("train {}", job.model());
    let report = crate::trainer::train(job, &Progress::new(&label, quiet))?;
    let test: Vec<String> = report
        .test
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    let text = format!(
        "trained {} on {} in {:.1} s ({} epochs, best {} with validation loss {:.5}; {:.0} samples/s)\ntest: {}\nexport proven on {} rows with ONNX Runtime (max relative difference {:.2e}); wrote {} to {}",
        report.model,
        report.device,
        report.seconds,
        report.epochs_run,
        report.best_epoch,
        report.best_val_loss,
        report.samples_per_s,
        test.join(", "),
        report.proof.rows,
        report.proof.max_rel_diff.values().fold(0.0f64, |a, &b| a.max(b)),
        report.files.join(", "),
        report.out.display()
    );
    Ok(Outcome {
        text,
        json: json!({"command": "train", "ok": true, "report": report}),
    })
}

/// `evaluate` with its settings resolved: the metrics whatever the verdict (a failed gate
/// is not an error here; the command turns it into exit 1).
pub fn evaluate(
    s: &crate::evaluate::EvaluateSettings,
) -> Result<(crate::evaluate::Metrics, Outcome)> {
    let m = crate::evaluate::evaluate(s)?;
    crate::gha::Actions::from_env().output("verdict", m.verdict.as_str())?;
    let out = Outcome {
        text: evaluate_text(&m),
        json: json!({"command": "evaluate", "ok": m.verdict.promotable(), "metrics": m}),
    };
    Ok((m, out))
}

/// `publish`: the version's files under its sha, manifest last.
pub fn publish(args: &crate::cli::store::PublishArgs, config: &ConfigFile) -> Result<Outcome> {
    let store = open_store(&args.store, config)?;
    let sha = sha_of(args.sha.as_deref())?;
    let models = config.train.models_dir(args.models.as_ref());
    let eval = config.evaluate.eval_dir(args.eval.as_ref());
    let mut files = Vec::new();
    for (origin, name, required) in crate::artifacts::version_files() {
        let dir = match origin {
            crate::artifacts::Origin::Models => &models,
            crate::artifacts::Origin::Eval => &eval,
        };
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => files.push((name.to_string(), b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {}
            Err(e) => return Err(Error::read(&path, e)),
        }
    }
    let created = crate::store::versions::publish(store.as_ref(), &sha, &files)?;
    let uri = format!("{}/versions/{sha}/manifest.json", store.uri());
    let gha = crate::gha::Actions::from_env();
    gha.output("sha", &sha)?;
    gha.output("manifest_uri", &uri)?;
    Ok(Outcome {
        text: format!(
            "{} version {sha} ({} files): {uri}",
            if created {
                "published"
            } else {
                "already published, unchanged:"
            },
            files.len()
        ),
        json: json!({"command": "publish", "ok": true, "sha": sha, "created": created, "manifest_uri": uri}),
    })
}

/// `promote`: production points at a published version whose verdict allows it.
pub fn promote(args: &crate::cli::store::PromoteArgs, config: &ConfigFile) -> Result<Outcome> {
    let reason = args.reason.clone().filter(|r| !r.trim().is_empty());
    if args.force && reason.is_none() {
        return Err(Error::usage(
            "--reason",
            "promote --force needs --reason TEXT (who and why are recorded in the pointer and the history)",
        ));
    }
    let store = open_store(&args.store, config)?;
    let sha = sha_of(args.sha.as_deref())?;
    let p = crate::store::versions::promote(
        store.as_ref(),
        &sha,
        &settings::actor(),
        reason,
        args.force,
    )?;
    Ok(Outcome {
        text: format!(
            "production is now {} (was {}){}",
            p.sha,
            p.previous.as_deref().unwrap_or("none"),
            if p.forced {
                format!(
                    "; FORCED past a failed gate by {}: {}",
                    p.by,
                    p.reason.as_deref().unwrap_or("")
                )
            } else {
                String::new()
            }
        ),
        json: json!({"command": "promote", "ok": true, "pointer": p}),
    })
}
