//! `emshap-ci monitor` flags.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args, Default)]
pub struct MonitorArgs {
    /// What to read: the `pull` flags and variables (--source, --brokers, the Kafka security
    /// flags). Without --window: per partition from production's recorded end offsets to
    /// the high watermark (after production), capped by --cap.
    #[command(flatten)]
    pub pull: crate::cli::pull::PullArgs,

    #[command(flatten)]
    pub store: crate::cli::store::StoreArg,

    /// At most this many of the newest messages after production (default 200000).
    #[arg(long, env = "EMSHAP_CI_MONITOR_CAP")]
    pub cap: Option<u64>,

    /// Fewer rows than this is `insufficient_data` (default 1000).
    #[arg(long, env = "EMSHAP_CI_MIN_ROWS")]
    pub min_rows: Option<u64>,

    /// Where monitor.json and monitor.md go (default work/monitor).
    #[arg(long, env = "EMSHAP_CI_MONITOR_OUT")]
    pub results: Option<PathBuf>,

    /// Dispatch this workflow (e.g. retrain.yml) with `window` and `reason` when the verdict
    /// asks for a retrain: `degraded`, or `drift` twice in a row.
    #[arg(long, env = "EMSHAP_CI_MONITOR_DISPATCH")]
    pub dispatch: Option<String>,

    /// No dispatch within this many hours of the last promotion or dispatch (default 24).
    #[arg(long, env = "EMSHAP_CI_COOLDOWN_HOURS")]
    pub cooldown_hours: Option<f64>,

    /// `drift` or `degraded`: exit 1 from that verdict on (default: exit 0 for every verdict
    /// but `invalid`, which is exit 4).
    #[arg(long, env = "EMSHAP_CI_FAIL_ON")]
    pub fail_on: Option<String>,

    /// The repository whose workflow is dispatched (default GITHUB_REPOSITORY).
    #[arg(long, env = "EMSHAP_CI_REPO")]
    pub repo: Option<String>,

    /// The ref the retrain runs on (default main).
    #[arg(long = "ref", env = "EMSHAP_CI_MONITOR_REF")]
    pub git_ref: Option<String>,

    /// The block bootstrap's seed (default 7).
    #[arg(long, env = "EMSHAP_CI_MONITOR_SEED")]
    pub seed: Option<u64>,
}
