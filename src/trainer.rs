//! Finding and driving `emshap-ci-train`, the only executable that links libtorch
//! (DESIGN §1). `emshap-ci train` and `run` resolve a stage's settings here, write them as
//! a job file, start the trainer found beside the running executable (or at
//! `EMSHAP_CI_TRAIN_BIN`) after checking that its version is exactly this one, and read
//! back its result. The trainer's progress and log lines go straight to this process's
//! stderr. A missing or mismatched trainer is exit 2; a trainer killed by a signal (out of
//! memory) is a stage failure that names the signal, exit 3.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{exit, Error, Result};
use crate::progress::Progress;
use crate::train::{EmshapSettings, PowerSettings, TrainReport};

/// The trainer's file name.
pub const TRAINER: &str = "emshap-ci-train";
/// Where to find the trainer when it is not beside `emshap-ci`.
pub const TRAIN_BIN_ENV: &str = "EMSHAP_CI_TRAIN_BIN";
pub const JOB_FORMAT: &str = "emshap-ci.train-job/1";
pub const RESULT_FORMAT: &str = "emshap-ci.train-result/1";
/// The version both executables carry; they must be equal.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One training stage, with its settings resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "model", content = "settings", rename_all = "lowercase")]
pub enum Job {
    Power(PowerSettings),
    Emshap(EmshapSettings),
}

impl Job {
    pub fn model(&self) -> &'static str {
        match self {
            Job::Power(_) => "power",
            Job::Emshap(_) => "emshap",
        }
    }
}

/// What `emshap-ci` hands the trainer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobFile {
    pub format: String,
    /// The version of the `emshap-ci` that wrote it (the trainer refuses any other).
    pub version: String,
    /// Hide the progress (the caller's `-q`).
    pub quiet: bool,
    /// The caller's log filter.
    pub log: String,
    pub job: Job,
}

/// What the trainer hands back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultFile {
    pub format: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Trained {
        report: Box<TrainReport>,
    },
    Failed {
        kind: String,
        code: i32,
        message: String,
    },
}

impl ResultFile {
    pub fn of(result: &Result<TrainReport>) -> Self {
        ResultFile {
            format: RESULT_FORMAT.into(),
            outcome: match result {
                Ok(r) => Outcome::Trained {
                    report: Box::new(r.clone()),
                },
                Err(e) => Outcome::Failed {
                    kind: e.kind().into(),
                    code: e.exit_code(),
                    message: e.to_string(),
                },
            },
        }
    }
}

/// The trainer's side: reads the job file `emshap-ci` wrote, refusing one of another
/// format or version.
pub fn read_job(path: &Path) -> Result<JobFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::read(path, e))?;
    let job: JobFile = serde_json::from_slice(&bytes).map_err(|e| {
        Error::usage(
            "training job",
            format!("{}: {e} (emshap-ci-train runs the jobs emshap-ci {VERSION} writes; use `emshap-ci train`)", path.display()),
        )
    })?;
    if job.format != JOB_FORMAT || job.version != VERSION {
        return Err(Error::usage(
            "training job",
            format!(
                "{} is a {} job from emshap-ci {}, this trainer runs {JOB_FORMAT} from emshap-ci {VERSION} (install both from the same release)",
                path.display(),
                job.format,
                job.version
            ),
        ));
    }
    Ok(job)
}

/// The trainer's side: writes `result` to `path` (atomically) and returns the exit code
/// the trainer ends with.
pub fn write_result(path: &Path, result: &Result<TrainReport>) -> i32 {
    let code = result.as_ref().map_or_else(Error::exit_code, |_| exit::OK);
    let written = serde_json::to_vec_pretty(&ResultFile::of(result))
        .map_err(|e| Error::Internal(e.into()))
        .and_then(|b| crate::fsutil::write_atomic(path, &b));
    match written {
        Ok(()) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// `--version`'s line: what the check compares.
pub fn version_line() -> String {
    format!("{TRAINER} {VERSION}")
}

/// The trainer to start: `EMSHAP_CI_TRAIN_BIN`, else the one beside this executable (for a
/// test binary under cargo's `deps/`, the one in the folder above).
pub fn locate() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(TRAIN_BIN_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Error::Trainer {
                message: format!("{TRAIN_BIN_ENV} names a file that does not exist (point it at the {TRAINER} of this release, or unset it to use the one beside emshap-ci)"),
                path: p,
                code: exit::USAGE,
            });
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().map_err(|e| Error::Internal(e.into()))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let mut candidates = vec![dir.join(TRAINER)];
    if dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(up) = dir.parent() {
            candidates.push(up.join(TRAINER));
        }
    }
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| Error::Trainer {
            path: candidates[0].clone(),
            message: format!(
                "not found: training needs {TRAINER} {VERSION} beside emshap-ci (the release tarball carries both; in a checkout, `cargo build --release --workspace`), or its path in {TRAIN_BIN_ENV}"
            ),
            code: exit::USAGE,
        })
}

/// Checks that the trainer at `path` is exactly this version.
pub fn check_version(path: &Path) -> Result<()> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Trainer {
            path: path.to_path_buf(),
            message: format!("cannot start it ({e}); install {TRAINER} {VERSION} from the same release as emshap-ci"),
            code: exit::USAGE,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: String = stdout
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(80)
        .collect();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(Error::Trainer {
            path: path.to_path_buf(),
            message: format!(
                "`--version` failed ({}{}{first}); its libraries may be missing (libtorch: run scripts/setup.sh, or use the release tarball, which carries them)",
                describe(&out.status),
                if first.is_empty() { "" } else { ": " }
            ),
            code: exit::USAGE,
        });
    }
    if line != version_line() {
        return Err(Error::Trainer {
            path: path.to_path_buf(),
            message: format!(
                "says `--version` is `{line}`, not `{}`: install the {TRAINER} of the same release as this emshap-ci beside it", version_line()
            ),
            code: exit::USAGE,
        });
    }
    Ok(())
}

/// The trainer, located and its version checked once per process (`run` trains twice; the
/// check starts the trainer, which costs libtorch's initialisation).
fn checked_trainer() -> Result<PathBuf> {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = CHECKED.get() {
        return Ok(p.clone());
    }
    let bin = locate()?;
    check_version(&bin)?;
    Ok(CHECKED.get_or_init(|| bin).clone())
}

/// How a process ended, in words: "exit status 3", "killed by signal 9 (SIGKILL)".
pub fn describe(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                libc::SIGKILL => "SIGKILL",
                libc::SIGTERM => "SIGTERM",
                libc::SIGSEGV => "SIGSEGV",
                libc::SIGABRT => "SIGABRT",
                libc::SIGBUS => "SIGBUS",
                libc::SIGINT => "SIGINT",
                _ => "",
            };
            return if name.is_empty() {
                format!("killed by signal {sig}")
            } else {
                format!("killed by signal {sig} ({name})")
            };
        }
    }
    match status.code() {
        Some(c) => format!("exit status {c}"),
        None => "ended abnormally".into(),
    }
}

/// Runs one training job in the trainer and returns its report, or the error it reported
/// (kind, exit code and message kept).
pub fn train(job: &Job, progress: &Progress) -> Result<TrainReport> {
    let bin = checked_trainer()?;
    let tmp = tempfile::Builder::new()
        .prefix("emshap-ci-train-")
        .tempdir()
        // $TMPDIR read-only or full is the machine's state, not a bug: exit 3, saying which.
        .map_err(|e| Error::write(&std::env::temp_dir(), e))?;
    let job_path = tmp.path().join("job.json");
    let result_path = tmp.path().join("result.json");
    let file = JobFile {
        format: JOB_FORMAT.into(),
        version: VERSION.into(),
        quiet: progress.is_hidden(),
        log: crate::logging::current(),
        job: job.clone(),
    };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::Internal(e.into()))?;
    std::fs::write(&job_path, json).map_err(|e| Error::write(&job_path, e))?;
    tracing::debug!(trainer = %bin.display(), model = job.model(), "starting the trainer");
    let status = Command::new(&bin)
        .arg("--job")
        .arg(&job_path)
        .arg("--result")
        .arg(&result_path)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| Error::Trainer {
            path: bin.clone(),
            message: format!("cannot start it: {e}"),
            code: exit::USAGE,
        })?;
    let result = std::fs::read(&result_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<ResultFile>(&b).ok());
    match result {
        Some(ResultFile {
            outcome: Outcome::Trained { report },
            ..
        }) if status.success() => Ok(*report),
        Some(ResultFile {
            outcome:
                Outcome::Failed {
                    kind,
                    code,
                    message,
                },
            ..
        }) => Err(Error::relayed(&kind, code, message)),
        _ => {
            let how = describe(&status);
            let oom = if how.contains("SIGKILL") {
                " (most often the kernel's out-of-memory killer: see `dmesg`, or train on fewer rows with --max-rows or a smaller --batch-size)"
            } else {
                ""
            };
            Err(Error::Trainer {
                path: bin,
                message: format!(
                    "training {} stopped before it reported: {how}{oom}; nothing was written to the model folder",
                    job.model()
                ),
                code: exit::EXTERNAL,
            })
        }
    }
}
