//! `emshap-ci-train`: runs one training job that `emshap-ci train` or `run` resolved
//! (a `emshap-ci.train-job/1` JSON file) and writes its report or its error as
//! `emshap-ci.train-result/1` JSON. Progress and log lines go to stderr, which the caller
//! shares. Not meant to be run by hand; `--version` is what `emshap-ci` checks first.

use std::path::{Path, PathBuf};

use clap::Parser;
use emshap_ci::error::{exit, Error, Result};
use emshap_ci::progress::Progress;
use emshap_ci::trainer::{Job, JobFile, ResultFile, JOB_FORMAT, VERSION};

#[derive(Parser)]
#[command(
    name = "emshap-ci-train",
    version,
    about = "emshap-ci's trainer (the only executable that links libtorch): `emshap-ci train` and `run` start it"
)]
struct Args {
    /// The job emshap-ci wrote (emshap-ci.train-job/1 JSON).
    #[arg(long)]
    job: PathBuf,
    /// Where to write the result (emshap-ci.train-result/1 JSON).
    #[arg(long)]
    result: PathBuf,
}

fn read_job(path: &Path) -> Result<JobFile> {
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

fn main() {
    let args = Args::parse();
    let job = read_job(&args.job);
    if let Ok(j) = &job {
        emshap_ci::logging::init(&j.log);
    } else {
        emshap_ci::logging::init(emshap_ci::logging::level(0, 0));
    }
    let result = job.and_then(|j| {
        let label = format!("train {}", j.job.model());
        let progress = Progress::new(&label, j.quiet);
        match &j.job {
            Job::Power(s) => emshap_train::train_power(s, &progress),
            Job::Emshap(s) => emshap_train::train_emshap(s, &progress),
        }
    });
    let file = ResultFile::of(&result);
    let code = result.as_ref().map_or_else(Error::exit_code, |_| exit::OK);
    let tmp = args.result.with_extension("json.tmp");
    let written = serde_json::to_vec_pretty(&file)
        .map_err(|e| Error::Internal(e.into()))
        .and_then(|b| std::fs::write(&tmp, b).map_err(|e| Error::write(&tmp, e)))
        .and_then(|()| {
            std::fs::rename(&tmp, &args.result).map_err(|e| Error::write(&args.result, e))
        });
    if let Err(e) = written {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
    std::process::exit(code);
}
