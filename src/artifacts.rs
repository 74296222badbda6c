//! Every file name the stages hand each other, in one place (DESIGN §2, §8): what `pull`
//! writes into a snapshot, `train` into a model folder, `evaluate` and `report` into an
//! evaluation folder, `publish` into a version, and `run` into its work folder. The stages
//! refer to these, never to each other's constants.

/// Snapshot (`pull`): lineage and statistics.
pub const DATASET_FILE: &str = "dataset.json";
/// Snapshot: the standardisation (also copied beside the models).
pub const SCALER_FILE: &str = "scaler.json";
/// Snapshot: every record not used, one JSON line each.
pub const QUARANTINE_FILE: &str = "quarantine.jsonl";

/// Model folder (`train`): the power predictor's ONNX graph (DESIGN §5).
pub const POWER_ONNX: &str = "power_predictor.onnx";
/// Model folder: EMSHAP's ONNX graph.
pub const EMSHAP_ONNX: &str = "emshap_model.onnx";
pub const POWER_CHECKPOINT: &str = "power.safetensors";
pub const EMSHAP_CHECKPOINT: &str = "emshap.safetensors";
pub const POWER_HISTORY: &str = "power_history.json";
pub const EMSHAP_HISTORY: &str = "emshap_history.json";

/// Evaluation folder (`evaluate`): KPIs, checks and the verdict.
pub const METRICS_FILE: &str = "metrics.json";
/// Evaluation folder (`report`): the markdown report.
pub const REPORT_FILE: &str = "report.md";

/// Version (`publish`): every file's sha256, written last.
pub const MANIFEST: &str = "manifest.json";
/// Store: the production pointer.
pub const POINTER: &str = "production.json";

/// Work folder (`run`): the stages' record.
pub const RUN_FILE: &str = "run.json";

/// The files a version is made of: (where it comes from, name, required).
pub fn version_files() -> [(Origin, &'static str, bool); 6] {
    [
        (Origin::Models, POWER_ONNX, true),
        (Origin::Models, EMSHAP_ONNX, true),
        (Origin::Models, SCALER_FILE, true),
        (Origin::Eval, METRICS_FILE, true),
        (Origin::Eval, DATASET_FILE, true),
        (Origin::Eval, REPORT_FILE, false),
    ]
}

/// Which folder a version's file is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Models,
    Eval,
}
