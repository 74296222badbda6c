//! `emshap-ci expect` flags.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args, Default)]
pub struct ExpectArgs {
    /// Propose expectations from a snapshot's train-split reference (its dataset.json), for
    /// review before they go into `[expectations]` or an --expectations file.
    #[arg(long)]
    pub init: bool,

    /// The snapshot folder (default work/data).
    #[arg(long, env = "EMSHAP_CI_DATA")]
    pub data: Option<PathBuf>,

    /// Where to write the TOML (default: printed). An existing file is not replaced.
    #[arg(long)]
    pub out: Option<PathBuf>,
}
