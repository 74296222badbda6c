//! `emshap-ci run --mode pr|main|retrain`: the stages of DESIGN §2 in order, each invoked
//! exactly as its own subcommand would be (same flags, config file and `EMSHAP_CI_*`), with
//! the shared settings (`RunArgs`: work folder, store, sha, force) resolved once here.
//!
//! Every stage is recorded in `WORK/run.json`: its status, the sha256 of its inputs (its
//! command line, the config file, the `EMSHAP_CI_*` environment and the digests of the files
//! it reads; for evaluate also production's pointer) and of the files it wrote. `--resume`
//! skips pull, train and evaluate when their inputs are unchanged and their outputs are still
//! there, byte for byte, so a re-run after a failure at publish does not retrain. A failing
//! stage stops the chain with its own exit code and a table that names it and why; a failed
//! gate is not a stage failure: the report (and on main, the unpromoted version) still
//! happen, then the run exits 1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use clap::Parser;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::Outcome;
use crate::cli::run::{Mode, RunArgs};
use crate::cli::{Cli, GlobalArgs};
use crate::error::{Error, Result};

pub const RUN_FILE: &str = "run.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageRecord {
    pub name: String,
    /// done, resumed (skipped: unchanged), skipped (not applicable, see note), failed.
    pub status: String,
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
    /// pass, fail or forced (from evaluate), when it ran.
    pub verdict: Option<String>,
    pub seconds: f64,
}

struct Chain<'a> {
    global: &'a GlobalArgs,
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

impl Chain<'_> {
    fn save(&mut self) -> Result<()> {
        self.record.seconds = self.started.elapsed().as_secs_f64();
        let mut bytes =
            serde_json::to_vec_pretty(&self.record).map_err(|e| Error::Internal(e.into()))?;
        bytes.push(b'\n');
        std::fs::create_dir_all(&self.work).map_err(|e| Error::write(&self.work, e))?;
        crate::pull::snapshot::write_atomic(&self.work.join(RUN_FILE), &bytes)?;
        Ok(())
    }

    /// The digest of what a stage depends on.
    fn inputs_digest(&self, argv: &[String], files: &[&Path], extra: &[u8]) -> Result<String> {
        let mut h = Sha256::new();
        for a in argv {
            h.update(a.as_bytes());
            h.update([0]);
        }
        let config = self
            .global
            .config
            .clone()
            .or_else(|| Some(PathBuf::from(crate::settings::DEFAULT_CONFIG)))
            .filter(|p| p.is_file());
        if let Some(c) = config {
            h.update(std::fs::read(&c).map_err(|e| Error::read(&c, e))?);
        }
        h.update([1]);
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("EMSHAP_CI_"))
            .collect();
        env.sort();
        for (k, v) in env {
            h.update(format!("{k}={v}\0").as_bytes());
        }
        for (p, d) in digests(files)? {
            h.update(format!("{p}={d}\0").as_bytes());
        }
        h.update(extra);
        Ok(hex::encode(h.finalize()))
    }

    /// Runs one stage (`argv` after the binary's name), or skips it under --resume when
    /// `resumable` holds (input files) and nothing changed. Returns the stage's result.
    fn stage(
        &mut self,
        name: &str,
        argv: Vec<String>,
        resumable: Option<(&[&Path], &[u8])>,
        outputs: &[Outputs<'_>],
    ) -> Result<std::result::Result<Outcome, Error>> {
        let t0 = Instant::now();
        let inputs = match resumable {
            Some((files, extra)) => Some(self.inputs_digest(&argv, files, extra)?),
            None => None,
        };
        if let Some(digest) = &inputs {
            let prev = self.previous.iter().find(|s| s.name == name).cloned();
            if let Some(prev) = prev.filter(|p| {
                (p.status == "done" || p.status == "resumed") && p.inputs.as_ref() == Some(digest)
            }) {
                let still: Vec<&Path> = prev.outputs.keys().map(Path::new).collect();
                if !prev.outputs.is_empty() && digests(&still)? == prev.outputs {
                    self.say(&format!(
                        "⏭  {name}: resumed (inputs unchanged, {} output file(s) verified)",
                        prev.outputs.len()
                    ));
                    self.record.stages.push(StageRecord {
                        status: "resumed".into(),
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
        let mut full = vec!["emshap-ci".to_string()];
        if let Some(c) = &self.global.config {
            full.push("--config".into());
            full.push(c.display().to_string());
        }
        for _ in 0..self.global.quiet {
            full.push("-q".into());
        }
        for _ in 0..self.global.verbose {
            full.push("-v".into());
        }
        full.extend(argv.iter().cloned());
        let cli = Cli::try_parse_from(&full).map_err(|e| {
            Error::Internal(anyhow::anyhow!(
                "run built a bad command line {full:?}: {e}"
            ))
        })?;
        self.say(&format!("▶  {name}"));
        let result = self
            .gha
            .group(&format!("emshap-ci {name}"), || crate::app::run(&cli));
        let seconds = t0.elapsed().as_secs_f64();
        let (status, exit_code, note) = match &result {
            Ok(o) => {
                // The report is printed once, at the end of the run.
                if !self.quiet && !o.text.is_empty() && name != "report" {
                    println!("{}", o.text);
                }
                ("done", Some(0), None)
            }
            Err(e @ Error::GateFailed { .. }) if name == "evaluate" => {
                ("done", Some(e.exit_code()), Some(e.to_string()))
            }
            Err(e) => ("failed", Some(e.exit_code()), Some(e.to_string())),
        };
        let outputs = if status == "done" {
            output_digests(outputs)?
        } else {
            BTreeMap::new()
        };
        self.say(&format!(
            "{} {name} ({seconds:.1} s)",
            if status == "done" { "✓ " } else { "✗ " }
        ));
        self.record.stages.push(StageRecord {
            name: name.into(),
            status: status.into(),
            inputs: if status == "done" { inputs } else { None },
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
            status: "skipped".into(),
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
            let mark = match st.status.as_str() {
                "done" if st.exit_code == Some(0) => "✓ done",
                "done" => "✓ done (gate failed)",
                "resumed" => "⏭ resumed",
                "skipped" => "– skipped",
                _ => "✗ failed",
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

/// The version id when none is given: $GITHUB_SHA, else (local runs) `local` + UTC time.
fn default_sha() -> String {
    std::env::var("GITHUB_SHA")
        .ok()
        .filter(|s| !s.is_empty())
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
    let work = args.work.clone().unwrap_or_else(|| "work".into());
    let (data, models, eval) = (work.join("data"), work.join("models"), work.join("eval"));
    let store = args.store.clone().unwrap_or_else(|| s(&work.join("store")));
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
        global,
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
        ($name:expr, $argv:expr, $res:expr, $outs:expr) => {{
            let argv: Vec<String> = $argv.iter().map(|a| a.to_string()).collect();
            match chain.stage($name, argv, $res, $outs)? {
                Ok(o) => Ok(o),
                Err(e @ Error::GateFailed { .. }) if $name == "evaluate" => Err(e),
                Err(e) => return Err(chain.stop($name, e)),
            }
        }};
    }
    let all = |dir| Outputs { dir, prefixes: &[] };
    let _ = step!(
        "pull",
        ["pull", "--out", &s(&data)],
        Some((&[][..], &b""[..])),
        &[all(&data)]
    );
    for model in ["power", "emshap"] {
        let _ = step!(
            &format!("train {model}"),
            ["train", model, "--data", &s(&data), "--out", &s(&models)],
            Some((&[data.as_path()][..], &b""[..])),
            &[Outputs {
                dir: &models,
                prefixes: &[model, crate::pull::snapshot::SCALER_FILE],
            }]
        );
    }
    // Evaluate depends on production too: which version it is is part of the inputs.
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
    let mut eval_argv: Vec<String> = ["evaluate", "--data", &s(&data), "--models", &s(&models)]
        .iter()
        .map(|a| a.to_string())
        .collect();
    eval_argv.extend(["--out".into(), s(&eval)]);
    let store_exists = store.starts_with("s3://") || Path::new(&store).is_dir();
    if store_exists {
        eval_argv.extend(["--store".into(), store.clone()]);
    }
    if args.force {
        let reason = args.reason.clone().unwrap_or_default();
        eval_argv.extend(["--force".into(), "--reason".into(), reason]);
    }
    // The gate rules are an input too (their file's bytes, not just its name).
    let config = crate::settings::ConfigFile::load(global.config.as_deref())?;
    let gate_file = std::env::var_os("EMSHAP_CI_GATE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or(config.evaluate.gate.clone());
    let mut eval_inputs = vec![data.as_path(), models.as_path()];
    if let Some(g) = &gate_file {
        eval_inputs.push(g.as_path());
    }
    let gate = step!(
        "evaluate",
        eval_argv,
        Some((&eval_inputs[..], &pointer[..])),
        &[Outputs {
            dir: &eval,
            prefixes: &[
                crate::evaluate::METRICS_FILE,
                crate::pull::snapshot::DATASET_FILE,
            ],
        }]
    );
    let metrics: Option<crate::evaluate::Metrics> =
        std::fs::read(eval.join(crate::evaluate::METRICS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
    let verdict = metrics.as_ref().map(|m| m.verdict.clone());
    chain.record.verdict = verdict.clone();
    let manifest_uri = sha
        .as_ref()
        .map(|sha| format!("{}/versions/{sha}/manifest.json", store_handle.uri()));
    let mut report_argv = vec![
        "report".to_string(),
        "--eval".into(),
        s(&eval),
        "--models".into(),
        s(&models),
        "--out".into(),
        s(&eval.join("report.md")),
    ];
    if let (Some(sha), Some(uri)) = (&sha, &manifest_uri) {
        report_argv.extend([
            "--sha".into(),
            sha.clone(),
            "--manifest-uri".into(),
            uri.clone(),
        ]);
    }
    if chain.gha.active() {
        report_argv.push("--summary".into());
    }
    let report = step!("report", report_argv, None, &[]);
    let token = std::env::var("GITHUB_TOKEN").ok().filter(|t| !t.is_empty());
    match mode {
        Mode::Pr => {
            if token.is_some() {
                let _ = step!(
                    "comment",
                    ["comment", "--body", &s(&eval.join("report.md"))],
                    None,
                    &[]
                );
            } else {
                chain.skip(
                    "comment",
                    "no GITHUB_TOKEN: the report is in the terminal and report.md".into(),
                )?;
            }
        }
        Mode::Main | Mode::Retrain => {
            let sha = sha.clone().unwrap_or_default();
            let _ = step!(
                "publish",
                [
                    "publish",
                    "--store",
                    &store,
                    "--models",
                    &s(&models),
                    "--eval",
                    &s(&eval),
                    "--sha",
                    &sha
                ],
                None,
                &[]
            );
            let promotable = matches!(verdict.as_deref(), Some("pass") | Some("forced"));
            if !promotable {
                chain.skip(
                    "promote",
                    format!(
                        "verdict {}: production unchanged",
                        verdict.clone().unwrap_or_default()
                    ),
                )?;
                chain.skip("dispatch", "nothing promoted".into())?;
            } else {
                let current = production(store_handle.as_ref()).map(|p| p.sha);
                if current.as_deref() == Some(sha.as_str()) {
                    chain.skip("promote", format!("{sha} is already production"))?;
                } else {
                    let mut argv = vec!["promote", "--store", &store, "--sha", &sha];
                    let reason = args.reason.clone().unwrap_or_default();
                    if args.force {
                        argv.extend(["--reason", &reason]);
                    }
                    let _ = step!("promote", argv, None, &[]);
                }
                if token.is_some()
                    && std::env::var("GITHUB_REPOSITORY").is_ok_and(|r| !r.is_empty())
                {
                    let _ = step!(
                        "dispatch",
                        ["dispatch", "--store", &store, "--sha", &sha],
                        None,
                        &[]
                    );
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
    let report_md = std::fs::read_to_string(eval.join("report.md")).unwrap_or_default();
    let mut text = String::new();
    if report.is_ok() && !report_md.is_empty() {
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
        verdict.as_deref().unwrap_or("none"),
        sha.as_ref()
            .map(|s| format!(", version {s} in {store}"))
            .unwrap_or_default(),
        eval.join("report.md").display(),
        work.join(RUN_FILE).display()
    );
    let gate_error = match (gate, verdict.as_deref()) {
        (Err(e), _) => Some(e),
        // A resumed evaluate: the recorded verdict decides.
        (Ok(_), Some("fail")) => {
            let failed: Vec<String> = metrics
                .iter()
                .flat_map(|m| m.checks.iter().filter(|c| !c.passed))
                .map(|c| format!("{}.{}: {}", c.model, c.metric, c.reason))
                .collect();
            Some(Error::GateFailed {
                message: format!(
                    "{} (every check in {}; override with --force --reason)",
                    failed.join(", "),
                    eval.join(crate::evaluate::METRICS_FILE).display()
                ),
            })
        }
        (Ok(_), _) => None,
    };
    match gate_error {
        Some(e) => {
            if !chain.quiet {
                println!("{text}");
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
