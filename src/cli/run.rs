//! `emshap-ci run` flags: the settings every stage of the chain shares. Everything else a
//! stage needs comes from the config file and `EMSHAP_CI_*`, as for the stage run alone.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// pull → train both → evaluate → report → comment (no publish, never promotes).
    #[default]
    Pr,
    /// pull → train both → evaluate → report → publish → promote on pass → dispatch.
    Main,
    /// main, for a workflow_dispatch retrain (window, --force with --reason).
    Retrain,
}

#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// Which chain to run.
    #[arg(long, env = "EMSHAP_CI_MODE", value_enum)]
    pub mode: Mode,
    /// The work folder: data/, models/, eval/ and run.json (default work).
    #[arg(long, env = "EMSHAP_CI_WORK")]
    pub work: Option<PathBuf>,
    /// Skip the stages whose outputs are complete and whose inputs did not change since the
    /// last run in this work folder (by sha256 digests, recorded in run.json).
    #[arg(long)]
    pub resume: bool,
    /// The store: production is the baseline; main/retrain publish and promote there
    /// (default WORK/store).
    #[arg(long, env = "EMSHAP_CI_STORE")]
    pub store: Option<String>,
    /// The version's id (default $GITHUB_SHA; outside GitHub Actions with a local store,
    /// `local` and the UTC time, so each local run is a new version).
    #[arg(long, env = "EMSHAP_CI_SHA")]
    pub sha: Option<String>,
    /// Pass a failed gate (retrain only; needs --reason).
    #[arg(long, env = "EMSHAP_CI_FORCE")]
    pub force: bool,
    /// Why the gate is forced.
    #[arg(long, env = "EMSHAP_CI_REASON")]
    pub reason: Option<String>,
}
