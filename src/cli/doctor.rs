//! `emshap-ci doctor` flags.

use clap::Args;

#[derive(Debug, Args, Default)]
pub struct DoctorArgs {
    /// The pull it checks: the same flags and variables as `pull` (--source, --brokers, the
    /// Kafka security flags); nothing is read past the topic's metadata and watermarks.
    #[command(flatten)]
    pub pull: crate::cli::pull::PullArgs,

    #[command(flatten)]
    pub store: crate::cli::store::StoreArg,

    /// Also prove the store can be written: a conditional put of a probe object under
    /// `doctor/`, then its deletion.
    #[arg(long, env = "EMSHAP_CI_DOCTOR_WRITE")]
    pub write: bool,

    /// The repository (OWNER/NAME) whose API and deploy workflow are checked (default
    /// GITHUB_REPOSITORY).
    #[arg(long, env = "EMSHAP_CI_REPO")]
    pub repo: Option<String>,

    /// The workflow file `dispatch` starts (default deploy.yml).
    #[arg(long, env = "EMSHAP_CI_DEPLOY_WORKFLOW")]
    pub workflow: Option<String>,
}
