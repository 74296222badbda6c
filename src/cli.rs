//! The command line: clap derive types only. Every flag is a raw `Option` that also reads
//! `EMSHAP_CI_<NAME>`; `settings` merges them with the config file and the defaults.

pub mod doctor;
pub mod evaluate;
pub mod expect;
pub mod explain;
pub mod generate;
pub mod github;
pub mod kafka;
pub mod monitor;
pub mod pull;
pub mod report;
pub mod run;
pub mod store;
pub mod train;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Trains, gates, versions and ships the Attribution Service's models.
#[derive(Debug, Parser)]
#[command(name = "emshap-ci", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file (TOML). Default: ./emshap-ci.toml when it exists.
    #[arg(
        long,
        global = true,
        env = "EMSHAP_CI_CONFIG",
        value_name = "FILE",
        display_order = 900
    )]
    pub config: Option<PathBuf>,

    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, display_order = 901)]
    pub verbose: u8,

    /// Less output: no progress (-q), only errors (-qq).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, display_order = 902)]
    pub quiet: u8,

    /// Result format on stdout: `json` prints one JSON object as the last line.
    #[arg(long, global = true, env = "EMSHAP_CI_OUTPUT", value_enum, default_value_t = OutputFormat::Text, display_order = 903)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write deterministic synthetic telemetry to a file or a Kafka topic.
    Generate(generate::GenerateArgs),
    /// Pull a bounded window of messages into a validated, split, scaled snapshot.
    Pull(pull::PullArgs),
    /// Train a model on a snapshot, export it to ONNX and prove the file against libtorch.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Score the candidate (and production, on the same test rows) through ONNX Runtime and
    /// apply the gate; writes metrics.json. Exit 1 when the gate fails.
    Evaluate(evaluate::EvaluateArgs),
    /// Shapley values for given rows: the power model's prediction split among the features,
    /// with EMSHAP's conditional mean as the value function (exact up to 12 features, else
    /// KernelSHAP).
    Explain(explain::ExplainArgs),
    /// Upload the version under the commit sha: models, metrics, dataset, manifest last.
    Publish(store::PublishArgs),
    /// Point production at a published version whose verdict is pass or forced (or, with
    /// --force --reason, fail: an emergency, recorded as forced).
    Promote(store::PromoteArgs),
    /// Point production back at an earlier complete version.
    Rollback(store::RollbackArgs),
    /// Download a version (default: production), verify every sha256, then place it.
    Fetch(store::FetchArgs),
    /// Render the evaluation as markdown (verdict, gate tables, data, training curves),
    /// within GitHub's size limits.
    Report(report::ReportArgs),
    /// Post the report as the PR's one comment for this workflow, edited in place (a fork's
    /// read-only token: the job summary instead).
    Comment(github::CommentArgs),
    /// Start the deploy workflow (workflow_dispatch) with the version's sha and manifest URI.
    Dispatch(github::DispatchArgs),
    /// Check, without side effects, what a run needs: Kafka (login, topic, partitions), the
    /// store (production readable; --write: a probe put and delete), GitHub (token,
    /// repository, deploy workflow), ONNX Runtime and the trainer (libtorch, CUDA). Exit 3
    /// if any check fails.
    Doctor(doctor::DoctorArgs),
    /// Score production on the rows it has never seen, measure drift against its train
    /// split, give a verdict (ok, watch, drift, degraded, insufficient_data, invalid) and, with
    /// --dispatch, start the retrain workflow when it asks for one.
    Monitor(monitor::MonitorArgs),
    /// Data expectations: --init proposes them (per feature min/max with mostly, missing
    /// rate, mean and sd ranges; the window's rows) from a snapshot's reference, for review.
    Expect(expect::ExpectArgs),
    /// The whole chain for a mode: pr (pull → train → evaluate → report → comment), main
    /// (… → publish → promote on pass → dispatch) or retrain; --resume skips what is done.
    Run(run::RunArgs),
}

impl Command {
    /// The command's words, as typed ("train power"): for log groups and annotations.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Generate(_) => "generate",
            Command::Pull(_) => "pull",
            Command::Train(train::TrainCommand::Power(_)) => "train power",
            Command::Train(train::TrainCommand::Emshap(_)) => "train emshap",
            Command::Evaluate(_) => "evaluate",
            Command::Explain(_) => "explain",
            Command::Publish(_) => "publish",
            Command::Promote(_) => "promote",
            Command::Rollback(_) => "rollback",
            Command::Fetch(_) => "fetch",
            Command::Report(_) => "report",
            Command::Comment(_) => "comment",
            Command::Dispatch(_) => "dispatch",
            Command::Doctor(_) => "doctor",
            Command::Monitor(_) => "monitor",
            Command::Expect(_) => "expect",
            Command::Run(_) => "run",
        }
    }
}
