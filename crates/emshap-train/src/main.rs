//! `emshap-ci-train`: runs one training job that `emshap-ci train` or `run` resolved
//! (a `emshap-ci.train-job/1` JSON file) and writes its report or its error as
//! `emshap-ci.train-result/1` JSON. Progress and log lines go to stderr, which the caller
//! shares. Not meant to be run by hand; `--version` is what `emshap-ci` checks first.

use std::path::PathBuf;

use clap::Parser;
use emshap_ci::progress::Progress;
use emshap_ci::trainer::{read_job, write_result, Job};

#[derive(Parser)]
#[command(
    name = "emshap-ci-train",
    version,
    about = "emshap-ci's trainer (the only executable that links libtorch): `emshap-ci train` and `run` start it"
)]
struct Args {
    /// The job emshap-ci wrote (emshap-ci.train-job/1 JSON).
    #[arg(long, required_unless_present = "devices")]
    job: Option<PathBuf>,
    /// Where to write the result (emshap-ci.train-result/1 JSON).
    #[arg(long, required_unless_present = "devices")]
    result: Option<PathBuf>,
    /// Print what libtorch can use, as one JSON line (for `emshap-ci doctor`), and exit.
    #[arg(long)]
    devices: bool,
}

fn main() {
    let args = Args::parse();
    if args.devices {
        println!(
            "{}",
            serde_json::json!({
                "cuda_devices": tch::Cuda::device_count(),
                "cudnn": tch::Cuda::cudnn_is_available(),
                "threads": tch::get_num_threads(),
            })
        );
        return;
    }
    let (Some(job_path), Some(result_path)) = (args.job, args.result) else {
        unreachable!("clap requires both without --devices");
    };
    let args = (job_path, result_path);
    let job = read_job(&args.0);
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
    std::process::exit(write_result(&args.1, &result));
}
