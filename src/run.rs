//! `emshap-ci run --mode pr|main|retrain`: the stages of DESIGN §2 in order, each called as
//! a function (`crate::app::pull`, `train`, `evaluate`, ...) with its settings resolved once
//! here, as its own subcommand would resolve them (config file, `EMSHAP_CI_*`), and the
//! shared ones (`RunArgs`: work folder, store, sha, force) set on its typed arguments. No
//! command line is built.
//!
//! Every stage is recorded in `WORK/run.json`: its status, the sha256 of its inputs (its own
//! resolved settings, the version, and the digests of the files it reads; for evaluate also
//! production's pointer) and of the files it wrote: so editing `[evaluate]` or
//! `EMSHAP_CI_REASON` re-runs evaluate, never pull or train. `--resume`
//! skips pull, train and evaluate when their inputs are unchanged and their outputs are still
//! there, byte for byte, so a re-run after a failure at publish does not retrain. A failing
//! stage stops the chain with its own exit code and a table that names it and why; a failed
//! gate is not a stage failure: the report (and on main, the unpromoted version) still
//! happen, then the run exits 1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::Outcome;
use crate::cli::run::{Mode, RunArgs};
use crate::cli::GlobalArgs;
use crate::error::{Error, Result};

pub use crate::artifacts::RUN_FILE;

/// What became of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It ran and succeeded (for evaluate: whatever the verdict).
    Done,
    /// Skipped under --resume: its inputs and outputs are what the previous run recorded.
    Resumed,
    /// Not applicable in this run (see its note).
    Skipped,
    /// It ran and failed; the run stopped here.
    Failed,
}

impl Status {
    /// Whether its outputs are a stage's work (done, or resumed from a run that did it).
    pub fn ran(self) -> bool {
        matches!(self, Status::Done | Status::Resumed)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageRecord {
    pub name: String,
    pub status: Status,
    #[serde(default)]
    pub inputs: Option<String>,
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    pub seconds: f64,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: String,
    pub mode: Mode,
    pub sha: Option<String>,
    pub store: String,
    pub stages: Vec<StageRecord>,
    /// From evaluate, when it ran.
    pub verdict: Option<crate::evaluate::Verdict>,
    pub seconds: f64,
}

struct Chain {
    work: PathBuf,
    previous: Vec<StageRecord>,
    record: RunRecord,
    started: Instant,
    gha: crate::gha::Actions,
    quiet: bool,
}

/// sha256 of every file under `paths` (folders walked, sorted), by path.
fn digests(paths: &[&Path]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| Error::read(&p, e))? {
                stack.push(e.map_err(|e| Error::read(&p, e))?.path());
            }
        } else if p.is_file() {
            let bytes = std::fs::read(&p).map_err(|e| Error::read(&p, e))?;
            out.insert(p.display().to_string(), hex::encode(Sha256::digest(&bytes)));
        }
    }
    Ok(out)
}

/// A stage's output files: everything under `dir`, or its files whose names start with one
/// of `prefixes` (the two trainings share the models folder).
#[derive(Clone, Copy)]
struct Outputs<'a> {
    dir: &'a Path,
    prefixes: &'a [&'a str],
}

fn output_digests(outputs: &[Outputs<'_>]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for o in outputs {
        let all = digests(&[o.dir])?;
        out.extend(all.into_iter().filter(|(p, _)| {
            o.prefixes.is_empty()
                || Path::new(p)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| o.prefixes.iter().any(|x| n.starts_with(x)))
        }));
    }
    Ok(out)
}

impl Chain {
    fn save(&mut self) -> Result<()> {
        self.record.seconds = self.started.elapsed().as_secs_f64();
        let mut bytes =
            serde_json::to_vec_pretty(&self.record).map_err(|e| Error::Internal(e.into()))?;
        bytes.push(b'\n');
        std::fs::create_dir_all(&self.work).map_err(|e| Error::write(&self.work, e))?;
        crate::pull::snapshot::write_atomic(&self.work.join(RUN_FILE), &bytes)?;
        Ok(())
    }

    /// The digest of what a stage depends on: its own resolved settings (`settings`, their
    /// Debug form, which holds no secrets), this emshap-ci's version, the digests of the files
    /// it reads, and `extra` (production's pointer, for evaluate).
    fn stage_digest(settings: &str, files: &[&Path], extra: &[u8]) -> Result<String> {
        let mut h = Sha256::new();
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update([0]);
        h.update(settings.as_bytes());
        h.update([0]);
        for (p, d) in digests(files)? {
            h.update(format!("{p}={d}\0").as_bytes());
        }
        h.update(extra);
        Ok(hex::encode(h.finalize()))
    }

    /// Runs one stage (`call`), or skips it under --resume when `digest` (what it depends
    /// on, `None`: never skipped) is what the previous run recorded and its outputs are still
    /// there, byte for byte. Returns the stage's result.
    fn stage(
        &mut self,
        name: &str,
        digest: Option<String>,
        outputs: &[Outputs<'_>],
        call: impl FnOnce() -> Result<Outcome>,
    ) -> Result<std::result::Result<Outcome, Error>> {
        let t0 = Instant::now();
        let inputs = digest;
        if let Some(digest) = &inputs {
            let prev = self.previous.iter().find(|s| s.name == name).cloned();
            if let Some(prev) = prev.filter(|p| p.status.ran() && p.inputs.as_ref() == Some(digest))
            {
                let still: Vec<&Path> = prev.outputs.keys().map(Path::new).collect();
                if !prev.outputs.is_empty() && digests(&still)? == prev.outputs {
                    self.say(&format!(
                        "⏭  {name}: resumed (inputs unchanged, {} output file(s) verified)",
                        prev.outputs.len()
                    ));
                    self.record.stages.push(StageRecord {
                        status: Status::Resumed,
                        seconds: t0.elapsed().as_secs_f64(),
                        ..prev
                    });
                    self.save()?;
                    return Ok(Ok(Outcome {
                        text: String::new(),
                        json: serde_json::json!({"command": name, "resumed": true}),
                    }));
                }
            }
        }
        self.say(&format!("▶  {name}"));
        let result = self.gha.group(&format!("emshap-ci {name}"), call);
        let seconds = t0.elapsed().as_secs_f64();
        let (status, exit_code, note) = match &result {
            Ok(o) => {
                // The report is printed once, at the end of the run.
                if !self.quiet && !o.text.is_empty() && name != "report" {
                    println!("{}", o.text);
                }
                (Status::Done, Some(0), None)
            }
            Err(e) => (Status::Failed, Some(e.exit_code()), Some(e.to_string())),
        };
        let outputs = if status == Status::Done {
            output_digests(outputs)?
        } else {
            BTreeMap::new()
        };
        self.say(&format!(
            "{} {name} ({seconds:.1} s)",
            if status == Status::Done {
                "✓ "
            } else {
                "✗ "
            }
        ));
        self.record.stages.push(StageRecord {
            name: name.into(),
            status,
            inputs: if status == Status::Done { inputs } else { None },
            outputs,
            seconds,
            exit_code,
            note,
        });
        self.save()?;
        Ok(result)
    }

    fn skip(&mut self, name: &str, why: String) -> Result<()> {
        self.say(&format!("–  {name}: skipped ({why})"));
        self.record.stages.push(StageRecord {
            name: name.into(),
            status: Status::Skipped,
            inputs: None,
            outputs: BTreeMap::new(),
            seconds: 0.0,
            exit_code: None,
            note: Some(why),
        });
        self.save()
    }

    fn say(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    /// The stage table: what ran, how long, and for a failure, why.
    fn table(&self) -> String {
        let mut s = String::from("| stage | status | seconds | note |\n|---|---|---:|---|\n");
        for st in &self.record.stages {
            let mark = match st.status {
                Status::Done if st.exit_code == Some(0) => "✓ done",
                Status::Done => "✓ done (gate failed)",
                Status::Resumed => "⏭ resumed",
                Status::Skipped => "– skipped",
                Status::Failed => "✗ failed",
            };
            let note = st.note.clone().unwrap_or_default().replace('|', "\\|");
            let _ = writeln!(s, "| {} | {mark} | {:.1} | {note} |", st.name, st.seconds);
        }
        s
    }

    /// Stops the chain at a failed stage: the table, on stderr and in the job summary.
    fn stop(&mut self, name: &str, e: Error) -> Error {
        let _ = self.save();
        let text = format!(
            "run stopped at stage `{name}` (exit {}): {e}\n\n{}",
            e.exit_code(),
            self.table()
        );
        eprintln!("{text}");
        let _ = self.gha.summary(&format!("## ❌ emshap-ci run: {text}"));
        e
    }
}

/// A stage's arguments as its subcommand would see them with no flags: what
/// `EMSHAP_CI_*` sets (clap reads the environment), the rest unset. `run` then sets the
/// fields it owns (folders, store, sha) on the typed struct; no command line is built.
fn from_env<A: clap::Args + clap::FromArgMatches>(name: &'static str) -> Result<A> {
    let cmd = A::augment_args(clap::Command::new(name).no_binary_name(true));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .map_err(|e| {
            Error::usage(
                format!("{name} settings from the environment"),
                e.to_string().trim().to_string(),
            )
        })?;
    A::from_arg_matches(&matches).map_err(|e| Error::Internal(anyhow::anyhow!("{name}: {e}")))
}

/// The version id when none is given: $GITHUB_SHA, else (local runs) `local` + UTC time.
fn default_sha() -> String {
    crate::facts::GitHubFacts::from_env()
        .sha
        .unwrap_or_else(|| {
            // 2026-11-23T16:05:01Z → local20261123160501
            let t = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            let digits: String = t.chars().filter(char::is_ascii_digit).collect();
            format!("local{digits}")
        })
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn run(global: &GlobalArgs, args: &RunArgs) -> Result<Outcome> {
    let mode = args.mode;
    if args.force && mode == Mode::Pr {
        return Err(Error::usage(
            "--force",
            "a pull request never forces the gate (use --mode retrain)",
        ));
    }
    if args.force && args.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(Error::usage(
            "--reason",
            "--force needs --reason TEXT (it is recorded in metrics.json and the history)",
        ));
    }
    let config = crate::settings::ConfigFile::load(global.config.as_deref())?;
    let work = args
        .work
        .clone()
        .or_else(|| config.run.work.clone())
        .unwrap_or_else(|| "work".into());
    let (data, models, eval) = (work.join("data"), work.join("models"), work.join("eval"));
    let store = args
        .store
        .clone()
        .or_else(|| config.store.uri.clone())
        .unwrap_or_else(|| s(&work.join("store")));
    let sha = match mode {
        Mode::Pr => None,
        _ => Some(args.sha.clone().unwrap_or_else(default_sha)),
    };
    if let Some(sha) = &sha {
        crate::store::versions::check_sha(sha)?;
    }
    // Opened once (a bad URI stops the run before any work); the stages open their own.
    let store_handle = crate::store::open(&store)?;
    let previous = if args.resume {
        let path = work.join(RUN_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<RunRecord>(&b)
                .map(|r| r.stages)
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let mut chain = Chain {
        work: work.clone(),
        previous,
        record: RunRecord {
            format: "emshap-ci.run/1".into(),
            mode,
            sha: sha.clone(),
            store: store.clone(),
            stages: Vec::new(),
            verdict: None,
            seconds: 0.0,
        },
        started: Instant::now(),
        gha: crate::gha::Actions::from_env(),
        quiet: global.quiet > 0,
    };
    macro_rules! step {
        ($name:expr, $digest:expr, $outs:expr, $call:expr) => {{
            match chain.stage($name, $digest, $outs, $call)? {
                Ok(o) => o,
                Err(e) => return Err(chain.stop($name, e)),
            }
        }};
    }
    let quiet = global.quiet > 0;
    let all = |dir| Outputs { dir, prefixes: &[] };

    // pull: its resolved settings and, for a file source, the file.
    let mut pull_args: crate::cli::pull::PullArgs = from_env("pull")?;
    pull_args.out = Some(data.clone());
    let pull_settings = crate::settings::resolve_pull(&pull_args, &config)?;
    let source_file = match &pull_settings.source {
        crate::pull::Source::File(p) => vec![p.as_path()],
        _ => vec![],
    };
    // For Kafka, the offset ranges the window resolves to now are an input too; when the
    // broker cannot be asked, the pull is not resumed (and fails in its stage, if it must).
    let digest = match crate::pull::kafka_ranges(&pull_settings) {
        Ok(ranges) => Some(Chain::stage_digest(
            &format!("{pull_settings:?}"),
            &source_file,
            format!("{ranges:?}").as_bytes(),
        )?),
        Err(e) => {
            tracing::debug!(error = %e, "cannot resolve the window for --resume");
            None
        }
    };
    step!("pull", digest, &[all(&data)], || {
        crate::app::pull(&pull_settings, quiet)
    });

    // train: each model's resolved settings and the snapshot.
    let mut power_args: crate::cli::train::TrainPowerArgs = from_env("train power")?;
    power_args.common.data = Some(data.clone());
    power_args.common.out = Some(models.clone());
    let mut emshap_args: crate::cli::train::TrainEmshapArgs = from_env("train emshap")?;
    emshap_args.common.data = Some(data.clone());
    emshap_args.common.out = Some(models.clone());
    let jobs = [
        crate::trainer::Job::Power(crate::settings::resolve_train_power(&power_args, &config)?),
        crate::trainer::Job::Emshap(crate::settings::resolve_train_emshap(
            &emshap_args,
            &config,
        )?),
    ];
    for job in &jobs {
        let model = job.model();
        let digest = Chain::stage_digest(&format!("{job:?}"), &[data.as_path()], b"")?;
        step!(
            &format!("train {model}"),
            Some(digest),
            &[Outputs {
                dir: &models,
                prefixes: &[model, crate::pull::snapshot::SCALER_FILE],
            }],
            || crate::app::train(job, quiet)
        );
    }

    // evaluate: its resolved settings (gate rules included), the snapshot, the models and
    // which version production is.
    let production = |st: &dyn crate::store::Store| {
        crate::store::versions::production(st)
            .ok()
            .flatten()
            .map(|(p, _)| p)
    };
    let pointer = production(store_handle.as_ref())
        .map(|p| format!("{} {}", p.sha, p.manifest_sha256))
        .unwrap_or_default()
        .into_bytes();
    let mut eval_args: crate::cli::evaluate::EvaluateArgs = from_env("evaluate")?;
    eval_args.data = Some(data.clone());
    eval_args.models = Some(models.clone());
    eval_args.out = Some(eval.clone());
    eval_args.store =
        (store.starts_with("s3://") || Path::new(&store).is_dir()).then(|| store.clone());
    eval_args.force = args.force;
    eval_args.reason = args.reason.clone();
    let eval_settings = crate::settings::resolve_evaluate(&eval_args, &config)?;
    let digest = Chain::stage_digest(
        &format!("{eval_settings:?}"),
        &[data.as_path(), models.as_path()],
        &pointer,
    )?;
    let mut fresh: Option<crate::evaluate::Metrics> = None;
    step!(
        "evaluate",
        Some(digest),
        &[Outputs {
            dir: &eval,
            prefixes: &[
                crate::evaluate::METRICS_FILE,
                crate::pull::snapshot::DATASET_FILE,
            ],
        }],
        || {
            let (m, out) = crate::app::evaluate(&eval_settings)?;
            fresh = Some(m);
            Ok(out)
        }
    );
    let metrics_file = eval.join(crate::evaluate::METRICS_FILE);
    // A resumed evaluate did not run: its recorded metrics.json (verified unchanged) holds
    // the verdict.
    let metrics: Option<crate::evaluate::Metrics> = match fresh {
        Some(m) => Some(m),
        None => std::fs::read(&metrics_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
    };
    let gate_error = metrics
        .as_ref()
        .and_then(|m| crate::evaluate::gate_failure(m, &metrics_file));
    if let (Some(e), Some(last)) = (&gate_error, chain.record.stages.last_mut()) {
        if last.status == Status::Done {
            last.exit_code = Some(e.exit_code());
            last.note = Some(e.to_string());
        }
    }
    let verdict = metrics.as_ref().map(|m| m.verdict);
    chain.record.verdict = verdict;
    let manifest_uri = sha
        .as_ref()
        .map(|sha| format!("{}/versions/{sha}/manifest.json", store_handle.uri()));
    let mut report_args: crate::cli::report::ReportArgs = from_env("report")?;
    report_args.eval = Some(eval.clone());
    report_args.models = Some(models.clone());
    report_args.out = Some(eval.join(crate::artifacts::REPORT_FILE));
    report_args.sha = sha.clone();
    report_args.manifest_uri = manifest_uri.clone();
    report_args.summary = chain.gha.active();
    let report = chain.stage("report", None, &[], || {
        crate::app::report(&report_args, &config)
    })?;
    if let Err(e) = report {
        return Err(chain.stop("report", e));
    }
    let facts = crate::facts::GitHubFacts::from_env();
    let token = facts.token.clone();
    match mode {
        Mode::Pr => {
            if token.is_some() {
                let mut comment: crate::cli::github::CommentArgs = from_env("comment")?;
                comment.eval = Some(eval.clone());
                comment.body = None;
                step!("comment", None, &[], || crate::app::comment(
                    &comment, &config
                ));
            } else {
                chain.skip(
                    "comment",
                    "no GITHUB_TOKEN: the report is in the terminal and report.md".into(),
                )?;
            }
        }
        Mode::Main | Mode::Retrain => {
            let sha = sha.clone().unwrap_or_default();
            let target = crate::cli::store::StoreArg {
                store: Some(store.clone()),
            };
            let mut publish: crate::cli::store::PublishArgs = from_env("publish")?;
            publish.store = target.clone();
            publish.models = Some(models.clone());
            publish.eval = Some(eval.clone());
            publish.sha = Some(sha.clone());
            step!("publish", None, &[], || crate::app::publish(
                &publish, &config
            ));
            if !verdict.is_some_and(crate::evaluate::Verdict::promotable) {
                chain.skip(
                    "promote",
                    format!(
                        "verdict {}: production unchanged",
                        verdict.map_or("none", crate::evaluate::Verdict::as_str)
                    ),
                )?;
                chain.skip("dispatch", "nothing promoted".into())?;
            } else {
                let current = production(store_handle.as_ref()).map(|p| p.sha);
                if current.as_deref() == Some(sha.as_str()) {
                    chain.skip("promote", format!("{sha} is already production"))?;
                } else {
                    let mut promote: crate::cli::store::PromoteArgs = from_env("promote")?;
                    promote.store = target.clone();
                    promote.sha = Some(sha.clone());
                    promote.reason = if args.force {
                        args.reason.clone()
                    } else {
                        None
                    };
                    step!("promote", None, &[], || crate::app::promote(
                        &promote, &config
                    ));
                }
                if token.is_some() && facts.repository.is_some() {
                    let mut dispatch: crate::cli::github::DispatchArgs = from_env("dispatch")?;
                    dispatch.store = target.clone();
                    dispatch.sha = Some(sha.clone());
                    step!("dispatch", None, &[], || crate::app::dispatch(
                        &dispatch, &config
                    ));
                } else {
                    chain.skip(
                        "dispatch",
                        "no GITHUB_TOKEN/GITHUB_REPOSITORY: no deploy started".into(),
                    )?;
                }
            }
        }
    }
    chain.save()?;
    let elapsed = chain.started.elapsed().as_secs_f64();
    let report_md =
        std::fs::read_to_string(eval.join(crate::artifacts::REPORT_FILE)).unwrap_or_default();
    let mut text = String::new();
    if !report_md.is_empty() {
        text.push_str(&report_md);
        text.push('\n');
    }
    text.push_str(&chain.table());
    let _ = write!(
        text,
        "\n{} run finished in {elapsed:.1} s: verdict {}{}; report {}, stages in {}",
        match mode {
            Mode::Pr => "pr",
            Mode::Main => "main",
            Mode::Retrain => "retrain",
        },
        verdict.map_or("none", crate::evaluate::Verdict::as_str),
        sha.as_ref()
            .map(|s| format!(", version {s} in {store}"))
            .unwrap_or_default(),
        eval.join(crate::artifacts::REPORT_FILE).display(),
        work.join(RUN_FILE).display()
    );
    match gate_error {
        Some(e) => {
            if !chain.quiet {
                if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    println!("{}", crate::terminal::render(&text));
                } else {
                    println!("{text}");
                }
            }
            Err(e)
        }
        None => Ok(Outcome {
            text,
            json: serde_json::json!({
                "command": "run", "ok": true, "mode": mode, "verdict": verdict, "sha": sha,
                "manifest_uri": manifest_uri, "stages": chain.record.stages, "seconds": elapsed,
            }),
        }),
    }
}
