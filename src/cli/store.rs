//! `publish`, `promote`, `rollback` and `fetch` flags.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args, Default, Clone)]
pub struct StoreArg {
    /// The store: s3://bucket/prefix (AWS S3, MinIO or any S3-compatible server; settings
    /// from the standard AWS environment, AWS_ENDPOINT_URL for MinIO) or a local folder
    /// (path or file:///abs/path).
    #[arg(long, env = "EMSHAP_CI_STORE")]
    pub store: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct PublishArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The model folder written by `train` (default work/models).
    #[arg(long, env = "EMSHAP_CI_MODELS")]
    pub models: Option<PathBuf>,
    /// The folder written by `evaluate`: metrics.json, dataset.json (default work/eval).
    #[arg(long, env = "EMSHAP_CI_EVAL")]
    pub eval: Option<PathBuf>,
    /// The commit sha the version is published under (default $GITHUB_SHA).
    #[arg(long, env = "EMSHAP_CI_SHA")]
    pub sha: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The version to make production (default $GITHUB_SHA).
    #[arg(long, env = "EMSHAP_CI_SHA")]
    pub sha: Option<String>,
    /// Promote a version whose verdict is fail (an emergency; needs --reason, and who and
    /// why are recorded in the pointer and the history).
    #[arg(long, env = "EMSHAP_CI_FORCE")]
    pub force: bool,
    /// Why (recorded in the pointer and the history).
    #[arg(long, env = "EMSHAP_CI_REASON")]
    pub reason: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The earlier version to make production again.
    #[arg(long, conflicts_with = "steps")]
    pub to: Option<String>,
    /// How many promotions to go back.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Why (recorded in the pointer and the history).
    #[arg(long, env = "EMSHAP_CI_REASON")]
    pub reason: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct FetchArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The version to fetch (default: production).
    #[arg(long, conflicts_with = "production")]
    pub sha: Option<String>,
    /// Fetch the production version (the default).
    #[arg(long)]
    pub production: bool,
    /// Where to place the verified files (replaced as a whole).
    #[arg(long, env = "EMSHAP_CI_DEST")]
    pub dest: PathBuf,
}
