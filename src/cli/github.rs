//! `comment` and `dispatch` flags. The API URL, the repository and the token come from the
//! environment GitHub Actions sets (GITHUB_API_URL, GITHUB_REPOSITORY, GITHUB_TOKEN); the
//! token is never a flag, so it never shows in a process list or a shell history.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args, Default, Clone)]
pub struct CommentArgs {
    /// The pull request (default: from GITHUB_REF, refs/pull/N/merge).
    #[arg(long, env = "EMSHAP_CI_PR")]
    pub pr: Option<u64>,
    /// The workflow the comment belongs to: one comment per PR and workflow (default
    /// $GITHUB_WORKFLOW).
    #[arg(long, env = "EMSHAP_CI_WORKFLOW")]
    pub workflow: Option<String>,
    /// The evaluation folder whose report.md (written by `report`) is posted (default
    /// work/eval).
    #[arg(long, env = "EMSHAP_CI_EVAL")]
    pub eval: Option<PathBuf>,
    /// A markdown file to post instead of EVAL/report.md.
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// The repository, OWNER/NAME (default $GITHUB_REPOSITORY).
    #[arg(long, env = "EMSHAP_CI_REPO")]
    pub repo: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct DispatchArgs {
    /// The workflow file to dispatch (default deploy.yml).
    #[arg(long, env = "EMSHAP_CI_DEPLOY_WORKFLOW")]
    pub workflow: Option<String>,
    /// The branch to run it on (default main).
    #[arg(long = "ref", env = "EMSHAP_CI_DEPLOY_REF")]
    pub git_ref: Option<String>,
    /// The version to deploy (default $GITHUB_SHA).
    #[arg(long, env = "EMSHAP_CI_SHA")]
    pub sha: Option<String>,
    /// The version's manifest URI (default: from --store, which must have this sha as
    /// production: only a promoted version is deployed).
    #[arg(long, env = "EMSHAP_CI_MANIFEST_URI")]
    pub manifest_uri: Option<String>,
    #[command(flatten)]
    pub store: crate::cli::store::StoreArg,
    /// The repository, OWNER/NAME (default $GITHUB_REPOSITORY).
    #[arg(long, env = "EMSHAP_CI_REPO")]
    pub repo: Option<String>,
}
