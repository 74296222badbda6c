//! Settings: defaults < `emshap-ci.toml` < `EMSHAP_CI_*` environment < flags, resolved into
//! one validated struct per stage. Clap already merges the environment and the flags (a flag
//! wins); this module lays them over the config file and the defaults, and checks values.
//! Only the resolved settings reach the stages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::evaluate::EvaluateArgs;
use crate::cli::generate::GenerateArgs;
use crate::cli::pull::PullArgs;
use crate::cli::train::{CommonTrainArgs, DeviceArg, TrainEmshapArgs, TrainPowerArgs};
use crate::error::{Error, Result};
use crate::generate::{BadKind, GenerateSpec};
use crate::kafka::KafkaConfig;
use crate::pull::{PullSettings, ScalerMode, Source, Window};
use crate::schema::FeatureSet;
use crate::train::{DeviceChoice, EmshapSettings, PowerSettings, TrainSettings};

pub const DEFAULT_CONFIG: &str = "emshap-ci.toml";

/// Threads when none are configured: the machine's cores (2 if unknown).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The config file. Unknown keys are errors, so a typo never silently falls back.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub kafka: KafkaSection,
    #[serde(default)]
    pub pull: PullSection,
    #[serde(default)]
    pub generate: GenerateSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub evaluate: EvaluateSection,
    #[serde(default)]
    pub explain: ExplainSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub github: GithubSection,
    #[serde(default)]
    pub report: ReportSection,
    #[serde(default)]
    pub run: RunSection,
    /// Data expectations checked by pull and monitor.
    #[serde(default)]
    pub expectations: Option<crate::expect::Expectations>,
}

/// `[explain]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainSection {
    pub models: Option<PathBuf>,
    pub samples: Option<usize>,
    pub proposals: Option<usize>,
    pub draws: Option<usize>,
    pub seed: Option<u64>,
    pub threads: Option<usize>,
    pub value_function: Option<String>,
}

/// `[store]`: the store every command uses when none is given.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub uri: Option<String>,
}

/// `[github]`: where comments and dispatches go when the flags do not say.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSection {
    /// OWNER/NAME (over $GITHUB_REPOSITORY).
    pub repository: Option<String>,
    /// The workflow name the PR comment belongs to (over $GITHUB_WORKFLOW).
    pub workflow: Option<String>,
    pub deploy_workflow: Option<String>,
    pub deploy_ref: Option<String>,
}

/// `[report]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSection {
    /// comment or summary: the size limit the report fits.
    pub limit: Option<String>,
}

/// `[run]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub work: Option<PathBuf>,
}

/// The embedded defaults (layer 0).
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// `over` laid over `under`, key by key (tables merged, other values replaced).
fn overlay(under: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (under.get_mut(&k), v) {
            (Some(toml::Value::Table(u)), toml::Value::Table(o)) => overlay(u, o),
            (_, v) => {
                under.insert(k, v);
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSection {
    pub gate: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub emshap_rows: Option<usize>,
    pub attribution_rows: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    pub brokers: Option<String>,
    pub group: Option<String>,
    pub timeout_secs: Option<f64>,
    /// librdkafka client properties (`[kafka.properties]`).
    pub properties: Option<std::collections::BTreeMap<String, toml::Value>>,
    pub security_protocol: Option<String>,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    /// A PEM file's path or the PEM text.
    pub ca: Option<String>,
    pub client_certificate: Option<String>,
    pub client_key: Option<String>,
    /// For AWS_MSK_IAM (default: AWS_REGION, or the brokers' host names).
    pub aws_region: Option<String>,
}

/// The Kafka connection: brokers, group and timeout as resolved, the client properties of
/// the file under those of `--kafka-property` (each checked), and the secrets from the
/// environment.
fn kafka_config(
    brokers: String,
    group: Option<String>,
    timeout_secs: Option<f64>,
    flags: &[String],
    sec: &crate::cli::kafka::KafkaSecurityArgs,
    file: &ConfigFile,
) -> Result<KafkaConfig> {
    let mut properties = std::collections::BTreeMap::new();
    if let Some(table) = &file.kafka.properties {
        let from_file: std::collections::BTreeMap<String, String> = table
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        crate::kafka::check_properties(&from_file, "[kafka.properties] in the config file")?;
        properties.extend(from_file);
    }
    let mut from_flags = std::collections::BTreeMap::new();
    for kv in flags.iter().filter(|kv| !kv.trim().is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::usage("--kafka-property", format!("`{kv}` is not KEY=VALUE")))?;
        from_flags.insert(k.trim().to_string(), v.to_string());
    }
    crate::kafka::check_properties(&from_flags, "--kafka-property")?;
    properties.extend(from_flags);
    let k = &file.kafka;
    let input = crate::kafka::SecurityInput {
        protocol: sec
            .kafka_security_protocol
            .clone()
            .or_else(|| k.security_protocol.clone()),
        mechanism: sec
            .kafka_sasl_mechanism
            .clone()
            .or_else(|| k.sasl_mechanism.clone()),
        username: sec
            .kafka_sasl_username
            .clone()
            .or_else(|| k.sasl_username.clone()),
        ca: sec.kafka_ca.clone().or_else(|| k.ca.clone()),
        client_certificate: sec
            .kafka_client_certificate
            .clone()
            .or_else(|| k.client_certificate.clone()),
        client_key: sec
            .kafka_client_key
            .clone()
            .or_else(|| k.client_key.clone()),
        aws_region: k.aws_region.clone(),
    }
    .without_empty();
    let secrets = crate::kafka::secrets_from_env();
    let security = crate::kafka::security::resolve(&input, &mut properties, &secrets, &brokers)?;
    Ok(KafkaConfig {
        brokers,
        group,
        timeout: timeout(timeout_secs.or(file.kafka.timeout_secs))?,
        properties,
        secrets,
        security,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullSection {
    pub source: Option<String>,
    pub window: Option<String>,
    pub features: Option<Vec<String>>,
    pub out: Option<PathBuf>,
    pub train_fraction: Option<f64>,
    pub val_fraction: Option<f64>,
    pub max_invalid_ratio: Option<f64>,
    pub scaler: Option<String>,
    pub quarantine: Option<PathBuf>,
    pub commit: Option<bool>,
    pub workers: Option<usize>,
    /// auto, raw or confluent.
    pub payload_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSection {
    pub rows: Option<u64>,
    pub nodes: Option<u32>,
    pub seed: Option<u64>,
    pub bad_ratio: Option<f64>,
    pub bad_kinds: Option<Vec<String>>,
    pub partitions: Option<i32>,
}

/// `[train]`: shared by both models; `[train.power]` and `[train.emshap]` override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub data: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub seed: Option<u64>,
    pub device: Option<String>,
    pub threads: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    #[serde(default)]
    pub power: PowerSection,
    #[serde(default)]
    pub emshap: EmshapSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerSection {
    pub epochs: Option<usize>,
    pub patience: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub max_rows: Option<usize>,
    pub batch_norm: Option<bool>,
    pub dropout: Option<f64>,
    pub residual: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmshapSection {
    pub epochs: Option<usize>,
    pub patience: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub max_rows: Option<usize>,
    pub proposals: Option<usize>,
    pub mixtures: Option<usize>,
    pub context: Option<usize>,
    pub gru_hidden: Option<usize>,
    pub proposal_hidden: Option<usize>,
    pub linear_skip: Option<bool>,
    pub mask_linear: Option<bool>,
    pub mask_linear_hidden: Option<usize>,
    pub energy_hidden: Option<usize>,
    pub energy_blocks: Option<usize>,
    pub mask_rate: Option<Vec<f64>>,
    pub masking: Option<String>,
    pub val_rows: Option<usize>,
    pub warmup_epochs: Option<usize>,
    pub energy_penalty: Option<f64>,
    pub input_noise: Option<f64>,
    pub weight_average: Option<f64>,
    pub checkpoint: Option<String>,
    pub val_proposals: Option<usize>,
    pub energy: Option<String>,
    pub energy_rows: Option<usize>,
}

impl TrainSection {
    /// The snapshot folder: `flag`, else `[train] data`, else work/data.
    pub fn data_dir(&self, flag: Option<&PathBuf>) -> PathBuf {
        flag.or(self.data.as_ref())
            .cloned()
            .unwrap_or_else(|| PathBuf::from("work/data"))
    }

    /// The model folder: `flag`, else `[train] out`, else work/models.
    pub fn models_dir(&self, flag: Option<&PathBuf>) -> PathBuf {
        flag.or(self.out.as_ref())
            .cloned()
            .unwrap_or_else(|| PathBuf::from("work/models"))
    }
}

impl EvaluateSection {
    /// The evaluation folder: `flag`, else `[evaluate] out`, else work/eval.
    pub fn eval_dir(&self, flag: Option<&PathBuf>) -> PathBuf {
        flag.or(self.out.as_ref())
            .cloned()
            .unwrap_or_else(|| PathBuf::from("work/eval"))
    }
}

impl ConfigFile {
    /// The embedded defaults alone.
    pub fn embedded() -> Self {
        toml::from_str(DEFAULTS).expect("src/defaults.toml is a valid config file")
    }

    /// Loads `path` (which must exist), or `./emshap-ci.toml` when present, laid over the
    /// embedded defaults; with neither, the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::embedded())
            }
            Err(e) => {
                return Err(Error::Config {
                    path,
                    message: format!("cannot read it: {e}"),
                })
            }
        };
        // The file alone first, so that its own mistakes are reported as its own.
        let bad = |e: toml::de::Error| Error::Config {
            path: path.clone(),
            message: e.message().to_string(),
        };
        let _: ConfigFile = toml::from_str(&text).map_err(bad)?;
        let mut table: toml::Table = toml::from_str(DEFAULTS).expect("valid defaults");
        overlay(&mut table, toml::from_str(&text).map_err(bad)?);
        toml::Table::try_into(table).map_err(bad)
    }
}

fn timeout(secs: Option<f64>) -> Result<Duration> {
    let s = secs.unwrap_or(30.0);
    if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
        return Err(Error::usage(
            "kafka timeout",
            format!("{s} s (give seconds between 0 and 3600)"),
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

fn ratio(what: &str, v: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&v) {
        return Err(Error::usage(what, format!("{v} is not between 0 and 1")));
    }
    Ok(v)
}

/// What `generate` does, resolved.
#[derive(Debug, Clone)]
pub struct GenerateSettings {
    pub spec: GenerateSpec,
    pub target: GenerateTarget,
}

#[derive(Debug, Clone)]
pub enum GenerateTarget {
    File(PathBuf),
    Kafka {
        kafka: Box<KafkaConfig>,
        topic: String,
        partitions: i32,
    },
}

pub fn resolve_generate(args: &GenerateArgs, file: &ConfigFile) -> Result<GenerateSettings> {
    let g = &file.generate;
    let kinds = match args.bad_kinds.as_ref().or(g.bad_kinds.as_ref()) {
        Some(names) => names
            .iter()
            .map(|n| n.trim().parse())
            .collect::<Result<Vec<BadKind>>>()?,
        None => BadKind::ALL.to_vec(),
    };
    let spec = GenerateSpec {
        rows: args.rows.or(g.rows).unwrap_or(100_000),
        nodes: args.nodes.or(g.nodes).unwrap_or(64),
        seed: args.seed.or(g.seed).unwrap_or(7),
        bad_ratio: ratio("--bad-ratio", args.bad_ratio.or(g.bad_ratio).unwrap_or(0.0))?,
        bad_kinds: kinds,
        shift: crate::generate::Shift {
            gpu_shift: args.gpu_shift.unwrap_or(0.0),
            power_scale: args.power_scale.unwrap_or(1.0),
            gpu_missing: ratio("--gpu-missing", args.gpu_missing.unwrap_or(0.0))?,
        },
    };
    let target = match (&args.out, &args.topic) {
        (Some(out), None) => GenerateTarget::File(out.clone()),
        (None, Some(topic)) => {
            let brokers = args
                .brokers
                .clone()
                .or_else(|| file.kafka.brokers.clone())
                .ok_or_else(|| {
                    Error::usage(
                        "--brokers",
                        "--topic needs --brokers (or EMSHAP_CI_BROKERS)",
                    )
                })?;
            let partitions = args.partitions.or(g.partitions).unwrap_or(3);
            if partitions < 1 {
                return Err(Error::usage("--partitions", "must be at least 1"));
            }
            GenerateTarget::Kafka {
                kafka: Box::new(kafka_config(
                    brokers,
                    None,
                    args.kafka_timeout,
                    &args.kafka_property,
                    &args.kafka_security,
                    file,
                )?),
                topic: topic.clone(),
                partitions,
            }
        }
        _ => {
            return Err(Error::usage(
                "generate target",
                "give either --out FILE or --brokers B --topic T",
            ))
        }
    };
    Ok(GenerateSettings { spec, target })
}

pub fn resolve_pull(args: &PullArgs, file: &ConfigFile) -> Result<PullSettings> {
    let p = &file.pull;
    let source: Source = args
        .source
        .as_deref()
        .or(p.source.as_deref())
        .unwrap_or("embedded")
        .parse()?;
    let window: Window = args
        .window
        .as_deref()
        .or(p.window.as_deref())
        .unwrap_or("all")
        .parse()?;
    let features = match args.features.as_ref().or(p.features.as_ref()) {
        Some(names) => {
            let names: Vec<String> = names.iter().map(|n| n.trim().to_string()).collect();
            FeatureSet::parse(&names)?
        }
        None => FeatureSet::default_metrics(),
    };
    let (train, val) = match &args.split {
        Some(v) if v.len() == 2 => (v[0], v[1]),
        Some(_) => {
            return Err(Error::usage(
                "--split",
                "give the train and validation fractions, e.g. 0.8,0.1",
            ))
        }
        None => (
            p.train_fraction.unwrap_or(0.8),
            p.val_fraction.unwrap_or(0.1),
        ),
    };
    if !(train > 0.0 && val > 0.0 && train + val < 1.0) {
        return Err(Error::usage(
            "--split",
            format!(
                "{train},{val}: each fraction must be > 0 and together < 1, leaving rows for test"
            ),
        ));
    }
    let brokers = args
        .brokers
        .clone()
        .or_else(|| file.kafka.brokers.clone())
        .unwrap_or_default();
    if matches!(source, Source::Kafka { .. }) && brokers.is_empty() {
        return Err(Error::usage(
            "--brokers",
            "a kafka: source needs --brokers (or EMSHAP_CI_BROKERS, or [kafka] brokers in the config)",
        ));
    }
    let scaler = match args
        .scaler
        .as_deref()
        .or(p.scaler.as_deref())
        .unwrap_or("fit")
    {
        "fit" => ScalerMode::Fit,
        s => match s.strip_prefix("reuse:") {
            Some(path) if !path.is_empty() => ScalerMode::Reuse(PathBuf::from(path)),
            _ => {
                return Err(Error::usage(
                    "--scaler",
                    format!("'{s}' (use fit or reuse:PATH/TO/scaler.json)"),
                ))
            }
        },
    };
    let group = args.group.clone().or_else(|| file.kafka.group.clone());
    let commit = args.commit || p.commit.unwrap_or(false);
    if commit && group.is_none() {
        return Err(Error::usage("--commit", "committing offsets needs --group"));
    }
    let workers = args.workers.or(p.workers).unwrap_or_else(default_threads);
    if workers == 0 || workers > 256 {
        return Err(Error::usage(
            "--workers",
            format!("{workers} (give 1 to 256)"),
        ));
    }
    let payload_format = match (args.payload_format, p.payload_format.as_deref()) {
        (Some(f), _) => f,
        (None, Some(name)) => <crate::pull::decode::PayloadFormat as clap::ValueEnum>::from_str(
            name, true,
        )
        .map_err(|_| {
            Error::usage(
                "[pull] payload_format",
                format!("`{name}` (use auto, raw or confluent)"),
            )
        })?,
        (None, None) => crate::pull::decode::PayloadFormat::Auto,
    };
    let expectations = match &args.expectations {
        Some(path) => {
            let e = crate::expect::Expectations::load(path)?;
            e.validate(
                features.names(),
                &format!("--expectations {}", path.display()),
            )?;
            Some(e)
        }
        None => match &file.expectations {
            Some(e) => {
                e.validate(features.names(), "[expectations]")?;
                Some(e.clone())
            }
            None => None,
        },
    }
    .filter(|e| !e.is_empty());
    Ok(PullSettings {
        source,
        kafka: kafka_config(
            brokers,
            group,
            args.kafka_timeout,
            &args.kafka_property,
            &args.kafka_security,
            file,
        )?,
        window,
        features,
        out: args
            .out
            .clone()
            .or_else(|| p.out.clone())
            .unwrap_or_else(|| PathBuf::from("work/data")),
        train_fraction: train,
        val_fraction: val,
        max_invalid_ratio: ratio(
            "--max-invalid-ratio",
            args.max_invalid_ratio
                .or(p.max_invalid_ratio)
                .unwrap_or(0.01),
        )?,
        scaler,
        quarantine: args.quarantine.clone().or_else(|| p.quarantine.clone()),
        commit,
        workers,
        payload_format,
        expectations,
    })
}

/// Per-model values of the config file that `resolve_common` lays under the flags.
struct ModelDefaults {
    epochs: usize,
    patience: usize,
    file_epochs: Option<usize>,
    file_patience: Option<usize>,
    file_batch_size: Option<usize>,
    file_lr: Option<f64>,
    file_max_rows: Option<usize>,
}

fn positive(what: &str, v: usize, max: usize) -> Result<usize> {
    if v == 0 || v > max {
        return Err(Error::usage(what, format!("{v} (give 1 to {max})")));
    }
    Ok(v)
}

fn resolve_common(
    args: &CommonTrainArgs,
    file: &TrainSection,
    m: ModelDefaults,
) -> Result<TrainSettings> {
    let device = match args.device {
        Some(DeviceArg::Auto) => DeviceChoice::Auto,
        Some(DeviceArg::Cpu) => DeviceChoice::Cpu,
        Some(DeviceArg::Cuda) => DeviceChoice::Cuda,
        None => match file.device.as_deref().unwrap_or("auto") {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda,
            other => {
                return Err(Error::usage(
                    "[train] device",
                    format!("'{other}' (use auto, cpu or cuda)"),
                ))
            }
        },
    };
    let lr = args.lr.or(m.file_lr).or(file.lr).unwrap_or(1e-3);
    if !(lr.is_finite() && lr > 0.0 && lr < 1.0) {
        return Err(Error::usage(
            "--lr",
            format!("{lr} (give a rate between 0 and 1)"),
        ));
    }
    let threads = args
        .threads
        .or(file.threads)
        .unwrap_or_else(default_threads);
    let sha = args
        .sha
        .clone()
        .or_else(|| crate::facts::GitHubFacts::from_env().sha)
        .unwrap_or_else(|| "local".to_string());
    Ok(TrainSettings {
        data: file.data_dir(args.data.as_ref()),
        out: file.models_dir(args.out.as_ref()),
        epochs: positive(
            "--epochs",
            args.epochs.or(m.file_epochs).unwrap_or(m.epochs),
            100_000,
        )?,
        patience: positive(
            "--patience",
            args.patience.or(m.file_patience).unwrap_or(m.patience),
            100_000,
        )?,
        seed: args.seed.or(file.seed).unwrap_or(1),
        device,
        batch_size: positive(
            "--batch-size",
            args.batch_size
                .or(m.file_batch_size)
                .or(file.batch_size)
                .unwrap_or(256),
            1 << 20,
        )?,
        lr,
        threads: positive("--threads", threads, 1024)?,
        max_rows: args.max_rows.or(m.file_max_rows),
        sha,
    })
}

pub fn resolve_train_power(args: &TrainPowerArgs, file: &ConfigFile) -> Result<PowerSettings> {
    let p = &file.train.power;
    let common = resolve_common(
        &args.common,
        &file.train,
        ModelDefaults {
            epochs: 100,
            patience: 10,
            file_epochs: p.epochs,
            file_patience: p.patience,
            file_batch_size: p.batch_size,
            file_lr: p.lr,
            file_max_rows: p.max_rows,
        },
    )?;
    let dropout = args.dropout.or(p.dropout).unwrap_or(0.0);
    if !(0.0..1.0).contains(&dropout) {
        return Err(Error::usage(
            "--dropout",
            format!("{dropout} (give a probability in [0, 1))"),
        ));
    }
    Ok(PowerSettings {
        common,
        hidden: [128, 64],
        batch_norm: args.batch_norm || p.batch_norm.unwrap_or(false),
        dropout,
        residual: args.residual || p.residual.unwrap_or(false),
    })
}

pub fn resolve_train_emshap(args: &TrainEmshapArgs, file: &ConfigFile) -> Result<EmshapSettings> {
    let e = &file.train.emshap;
    let common = resolve_common(
        &args.common,
        &file.train,
        ModelDefaults {
            epochs: EMSHAP_EPOCHS,
            patience: 5,
            file_epochs: e.epochs,
            file_patience: e.patience,
            file_batch_size: e.batch_size,
            file_lr: e.lr,
            file_max_rows: e.max_rows,
        },
    )?;
    let (mask_min, mask_max) = match args.mask_rate.as_ref().or(e.mask_rate.as_ref()) {
        Some(v) if v.len() == 2 => (v[0], v[1]),
        Some(_) => {
            return Err(Error::usage(
                "--mask-rate",
                "give the first and last epoch's rates, e.g. 0.2,0.8",
            ))
        }
        None => (0.2, 0.8),
    };
    if !(mask_min > 0.0 && mask_min <= mask_max && mask_max <= 1.0) {
        return Err(Error::usage(
            "--mask-rate",
            format!("{mask_min},{mask_max}: need 0 < first <= last <= 1"),
        ));
    }
    let energy = match args
        .energy
        .clone()
        .or(e.energy.clone())
        .as_deref()
        .unwrap_or("auto")
    {
        "auto" => crate::train::EnergyChoice::Auto,
        "on" => crate::train::EnergyChoice::On,
        "off" => crate::train::EnergyChoice::Off,
        other => {
            return Err(Error::usage(
                "--energy",
                format!("{other} (use auto, on or off)"),
            ))
        }
    };
    let masking = match args
        .masking
        .clone()
        .or(e.masking.clone())
        .as_deref()
        .unwrap_or(EMSHAP_MASKING)
    {
        "dynamic" => crate::train::Masking::Dynamic,
        "uniform" => crate::train::Masking::Uniform,
        other => {
            return Err(Error::usage(
                "--masking",
                format!("{other} (use dynamic or uniform)"),
            ))
        }
    };
    let warmup_auto = args.warmup_epochs.or(e.warmup_epochs).is_none();
    let step_budget = (args.common.epochs.or(e.epochs).is_none()).then_some(EMSHAP_STEPS);
    let warmup_epochs = match args.warmup_epochs.or(e.warmup_epochs) {
        Some(w) if w > common.epochs => {
            return Err(Error::usage(
                "--warmup-epochs",
                format!("{w} is more than the {} epochs", common.epochs),
            ))
        }
        Some(w) => w,
        None => crate::train::default_warmup(common.epochs),
    };
    Ok(EmshapSettings {
        common,
        proposals: positive(
            "--proposals",
            args.proposals.or(e.proposals).unwrap_or(20),
            4096,
        )?,
        mixtures: positive(
            "--mixtures",
            args.mixtures.or(e.mixtures).unwrap_or(10),
            1024,
        )?,
        context: positive("[train.emshap] context", e.context.unwrap_or(32), 4096)?,
        gru_hidden: positive(
            "[train.emshap] gru_hidden",
            e.gru_hidden.unwrap_or(EMSHAP_GRU_HIDDEN),
            4096,
        )?,
        proposal_hidden: positive(
            "[train.emshap] proposal_hidden",
            e.proposal_hidden.unwrap_or(EMSHAP_PROPOSAL_HIDDEN),
            4096,
        )?,
        linear_skip: e.linear_skip.unwrap_or(false),
        mask_linear: e.mask_linear.unwrap_or(EMSHAP_MASK_LINEAR),
        mask_linear_hidden: positive(
            "[train.emshap] mask_linear_hidden",
            e.mask_linear_hidden.unwrap_or(EMSHAP_MASK_LINEAR_HIDDEN),
            4096,
        )?,
        energy_hidden: positive(
            "[train.emshap] energy_hidden",
            e.energy_hidden.unwrap_or(128),
            4096,
        )?,
        energy_blocks: e.energy_blocks.unwrap_or(4),
        mask_min,
        mask_max,
        masking,
        val_rows: positive(
            "[train.emshap] val_rows",
            e.val_rows.unwrap_or(1024),
            1 << 30,
        )?,
        warmup_epochs,
        warmup_auto,
        step_budget,
        energy_penalty: non_negative(
            "[train.emshap] energy_penalty",
            e.energy_penalty.unwrap_or(0.0),
        )?,
        input_noise: non_negative("[train.emshap] input_noise", e.input_noise.unwrap_or(0.0))?,
        weight_average: decay(
            "[train.emshap] weight_average",
            e.weight_average.unwrap_or(EMSHAP_WEIGHT_AVERAGE),
        )?,
        checkpoint: match e.checkpoint.as_deref().unwrap_or(EMSHAP_CHECKPOINT_RULE) {
            "noise" => crate::train::Checkpoint::Noise,
            "last" => crate::train::Checkpoint::Last,
            other => {
                return Err(Error::usage(
                    "[train.emshap] checkpoint",
                    format!("{other} (use noise or last)"),
                ))
            }
        },
        val_proposals: positive(
            "[train.emshap] val_proposals",
            e.val_proposals.unwrap_or(EMSHAP_VAL_PROPOSALS),
            4096,
        )?,
        energy,
        energy_rows: e.energy_rows,
    })
}

/// EMSHAP's default epochs, of which the first `EMSHAP_WARMUP_SHARE` train the proposal
/// alone (BENCHMARKS.md, "EMSHAP quality").
pub const EMSHAP_EPOCHS: usize = 40;
/// The optimiser steps a run without `--epochs` takes (its epochs are between
/// `EMSHAP_EPOCHS` and `EMSHAP_MAX_EPOCHS`): what 40 epochs over the CPU sample of 60,000
/// rows at batch 256 take, so a small snapshot trains as long as a big one.
pub const EMSHAP_STEPS: usize = 9_400;
pub const EMSHAP_MAX_EPOCHS: usize = 100;
pub const EMSHAP_WARMUP_SHARE: f64 = 0.9;
pub const EMSHAP_GRU_HIDDEN: usize = 256;
/// The training masks' default (BENCHMARKS.md, "EMSHAP quality").
pub const EMSHAP_MASKING: &str = "uniform";
pub const EMSHAP_PROPOSAL_HIDDEN: usize = 256;
/// Whether the proposal's component means get the mask-conditioned linear shift A(mask)·x_S
/// (BENCHMARKS.md, "A mask-conditioned linear path": better on every case measured).
pub const EMSHAP_MASK_LINEAR: bool = true;
/// The width of the mask network behind `mask_linear` (mask → ReLU(this) → d·d).
pub const EMSHAP_MASK_LINEAR_HIDDEN: usize = 256;
/// The decay of the exponential moving average of EMSHAP's weights that validation, the
/// checkpoint and the export use (0: the raw weights; BENCHMARKS.md, "Weight averaging and
/// checkpoint selection").
pub const EMSHAP_WEIGHT_AVERAGE: f64 = 0.999;
pub const EMSHAP_VAL_PROPOSALS: usize = 50;
/// The checkpoint `train emshap` keeps: `noise` (the latest within the validation noise of
/// the best) or `last` (BENCHMARKS.md, "Checkpoint selection judged by the validation NLL's
/// standard error").
pub const EMSHAP_CHECKPOINT_RULE: &str = "noise";

fn decay(name: &str, v: f64) -> Result<f64> {
    if v.is_finite() && (0.0..1.0).contains(&v) {
        Ok(v)
    } else {
        Err(Error::usage(
            name,
            format!(
                "{v} (give a decay in [0, 1): 0 is off, 0.999 averages over about 1,000 steps)"
            ),
        ))
    }
}

fn non_negative(name: &str, v: f64) -> Result<f64> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(Error::usage(
            name,
            format!("{v} (give a finite number >= 0)"),
        ))
    }
}

/// Who runs this, for records of promotions and forced passes: $GITHUB_ACTOR, else $USER.
pub fn actor() -> String {
    crate::facts::GitHubFacts::from_env().actor()
}

/// The gate rules: the defaults, with each metric the file names replaced by its rule.
pub fn load_gate(path: Option<&Path>) -> Result<crate::gate::Rules> {
    let mut rules = crate::gate::default_rules();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        let file: crate::gate::Rules = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        for (model, metrics) in file {
            if !["power", "emshap"].contains(&model.as_str()) {
                return Err(Error::Config {
                    path: path.to_path_buf(),
                    message: format!("unknown model [{model}] (use power or emshap)"),
                });
            }
            for (metric, rule) in metrics {
                rule.validate(&format!("{model}.{metric}"))?;
                rules.entry(model.clone()).or_default().insert(metric, rule);
            }
        }
    }
    Ok(rules)
}

/// `explain`'s settings: flags (and `EMSHAP_CI_*`) over `[explain]` over the defaults.
pub fn resolve_explain(
    args: &crate::cli::explain::ExplainArgs,
    file: &ConfigFile,
) -> Result<crate::explain::ExplainSettings> {
    let e = &file.explain;
    let value_function = match (args.value_function, e.value_function.as_deref()) {
        (Some(v), _) => v,
        (None, Some(name)) => <crate::explain::ValueFunctionKind as clap::ValueEnum>::from_str(
            name, true,
        )
        .map_err(|_| {
            Error::usage(
                "[explain] value_function",
                format!("`{name}` (use expectation, uncentred or mean)"),
            )
        })?,
        (None, None) => crate::explain::ValueFunctionKind::default(),
    };
    let proposals = args
        .proposals
        .or(e.proposals)
        .unwrap_or(crate::evaluate::PROPOSALS);
    if proposals == 0 {
        return Err(Error::usage("--proposals", "must be at least 1"));
    }
    Ok(crate::explain::ExplainSettings {
        models: args
            .models
            .clone()
            .or_else(|| e.models.clone())
            .unwrap_or_else(|| PathBuf::from("work/models")),
        rows: args.rows.clone(),
        out: args.out.clone(),
        exact: args.exact,
        samples: args.samples.or(e.samples),
        limit: args.limit,
        proposals,
        value: crate::explain::ValueChoice {
            kind: value_function,
            draws: args.draws.or(e.draws).unwrap_or(0),
        },
        seed: args.seed.or(e.seed).unwrap_or(7),
        threads: positive(
            "--threads",
            args.threads.or(e.threads).unwrap_or_else(default_threads),
            1024,
        )?,
    })
}

/// The store URI: the flag (or `EMSHAP_CI_STORE`), else `[store] uri`, else work/store.
pub fn store_uri(flag: Option<&str>, file: &ConfigFile) -> String {
    flag.map(String::from)
        .or_else(|| file.store.uri.clone())
        .unwrap_or_else(|| "work/store".into())
}

pub fn resolve_evaluate(
    args: &EvaluateArgs,
    file: &ConfigFile,
) -> Result<crate::evaluate::EvaluateSettings> {
    let e = &file.evaluate;
    let force = match (args.force, args.reason.as_deref().map(str::trim)) {
        (true, Some(r)) if !r.is_empty() => Some(r.to_string()),
        (true, _) => {
            return Err(Error::usage(
                "--force",
                "a forced pass needs --reason \"why\" (it is recorded in metrics.json)",
            ))
        }
        (false, _) => None,
    };
    let threads = args.threads.unwrap_or_else(default_threads);
    Ok(crate::evaluate::EvaluateSettings {
        data: file.train.data_dir(args.data.as_ref()),
        models: file.train.models_dir(args.models.as_ref()),
        baseline: args.baseline.clone(),
        // The default store only when it exists: no store is a bootstrap, not an error.
        store: args.store.clone().or_else(|| {
            let uri = store_uri(None, file);
            (uri.starts_with("s3://")
                || std::path::Path::new(uri.trim_start_matches("file://")).is_dir())
            .then_some(uri)
        }),
        rules: load_gate(args.gate.as_deref().or(e.gate.as_deref()))?,
        force,
        out: e.eval_dir(args.out.as_ref()),
        emshap_rows: positive(
            "--emshap-rows",
            args.emshap_rows.or(e.emshap_rows).unwrap_or(4096),
            1 << 30,
        )?,
        attribution_rows: args
            .attribution_rows
            .or(e.attribution_rows)
            .unwrap_or(crate::evaluate::ATTRIBUTION_ROWS),
        threads: positive("--threads", threads, 1024)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_embedded_defaults_are_layer_0_under_the_file() {
        let d = ConfigFile::embedded();
        assert_eq!(d.train.out.as_deref(), Some(Path::new("work/models")));
        assert_eq!(d.explain.seed, Some(7));
        assert_eq!(d.github.deploy_workflow.as_deref(), Some("deploy.yml"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[explain]\nseed = 11\nvalue_function = \"mean\"\n[store]\nuri = \"s3://b/p\"\n[github]\nrepository = \"acme/models\"\n[run]\nwork = \"w\"\n",
        )
        .unwrap();
        let f = ConfigFile::load(Some(&path)).unwrap();
        // The file's keys win; the defaults fill the rest of the same table.
        assert_eq!(f.explain.seed, Some(11));
        assert_eq!(f.explain.models.as_deref(), Some(Path::new("work/models")));
        assert_eq!(f.github.repository.as_deref(), Some("acme/models"));
        assert_eq!(f.github.deploy_ref.as_deref(), Some("main"));
        assert_eq!(store_uri(None, &f), "s3://b/p");
        assert_eq!(store_uri(Some("x"), &f), "x");
        assert_eq!(store_uri(None, &ConfigFile::embedded()), "work/store");
        let args = crate::cli::explain::ExplainArgs {
            rows: "r.csv".into(),
            out: "o.json".into(),
            ..Default::default()
        };
        let s = resolve_explain(&args, &f).unwrap();
        assert_eq!(s.seed, 11);
        assert_eq!(s.value.kind, crate::explain::ValueFunctionKind::Mean);
        let s = resolve_explain(
            &crate::cli::explain::ExplainArgs {
                seed: Some(3),
                ..args.clone()
            },
            &f,
        )
        .unwrap();
        assert_eq!(s.seed, 3);
        // A mistake in the file is the file's, with its path.
        std::fs::write(&path, "[explain]\nsed = 1\n").unwrap();
        let e = ConfigFile::load(Some(&path)).unwrap_err();
        assert!(
            e.to_string().contains("c.toml") && e.to_string().contains("sed"),
            "{e}"
        );
        std::fs::write(&path, "[explain]\nvalue_function = \"median\"\n").unwrap();
        let f = ConfigFile::load(Some(&path)).unwrap();
        let e = resolve_explain(&args, &f).unwrap_err();
        assert!(e.to_string().contains("median"), "{e}");
    }

    #[test]
    fn flags_beat_config_beats_defaults() {
        let cfg = file("[pull]\nwindow = \"last:10\"\nmax_invalid_ratio = 0.05\n");
        let s = resolve_pull(&PullArgs::default(), &cfg).unwrap();
        assert_eq!(s.window, Window::Last(10));
        assert_eq!(s.max_invalid_ratio, 0.05);
        assert_eq!(s.train_fraction, 0.8);
        assert_eq!(s.source, Source::Embedded);
        let args = PullArgs {
            window: Some("all".into()),
            ..Default::default()
        };
        assert_eq!(resolve_pull(&args, &cfg).unwrap().window, Window::All);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let cfg = ConfigFile::default();
        for args in [
            PullArgs {
                split: Some(vec![0.9, 0.2]),
                ..Default::default()
            },
            PullArgs {
                max_invalid_ratio: Some(2.0),
                ..Default::default()
            },
            PullArgs {
                source: Some("kafka:t".into()),
                ..Default::default()
            },
            PullArgs {
                scaler: Some("reuse:".into()),
                ..Default::default()
            },
            PullArgs {
                commit: true,
                ..Default::default()
            },
            PullArgs {
                kafka_timeout: Some(-1.0),
                ..Default::default()
            },
        ] {
            let e = resolve_pull(&args, &cfg).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
        }
    }

    #[test]
    fn the_checkpoint_rule_is_noise_or_last() {
        let e = resolve_train_emshap(&TrainEmshapArgs::default(), &file("")).unwrap();
        assert_eq!(e.checkpoint, crate::train::Checkpoint::Noise);
        let e = resolve_train_emshap(
            &TrainEmshapArgs::default(),
            &file("[train.emshap]\ncheckpoint = \"last\"\n"),
        )
        .unwrap();
        assert_eq!(e.checkpoint, crate::train::Checkpoint::Last);
        let cfg = file("[train.emshap]\ncheckpoint = \"best\"\n");
        let err = resolve_train_emshap(&TrainEmshapArgs::default(), &cfg).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(
            err.to_string().contains("[train.emshap] checkpoint")
                && err.to_string().contains("noise or last"),
            "{err}"
        );
    }

    #[test]
    fn the_linear_skip_is_off_unless_a_config_turns_it_on() {
        let e = resolve_train_emshap(&TrainEmshapArgs::default(), &file("")).unwrap();
        assert!(!e.linear_skip);
        let cfg = file("[train.emshap]\nlinear_skip = true\n");
        let e = resolve_train_emshap(&TrainEmshapArgs::default(), &cfg).unwrap();
        assert!(e.linear_skip);
    }

    #[test]
    fn the_mask_linear_path_is_on_unless_a_config_turns_it_off() {
        let e = resolve_train_emshap(&TrainEmshapArgs::default(), &file("")).unwrap();
        assert!(e.mask_linear);
        let cfg = file("[train.emshap]\nmask_linear = false\n");
        let e = resolve_train_emshap(&TrainEmshapArgs::default(), &cfg).unwrap();
        assert!(!e.mask_linear);
        let bad = toml::from_str::<ConfigFile>("[train.emshap]\nmask_linear = 1\n").unwrap_err();
        assert!(bad.to_string().contains("expected a boolean"), "{bad}");
        assert_eq!(e.mask_linear_hidden, EMSHAP_MASK_LINEAR_HIDDEN);
        let zero = file("[train.emshap]\nmask_linear_hidden = 0\n");
        let err = resolve_train_emshap(&TrainEmshapArgs::default(), &zero).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().contains("mask_linear_hidden"), "{err}");
    }

    #[test]
    fn the_weight_average_is_a_decay_below_one() {
        let e = resolve_train_emshap(&TrainEmshapArgs::default(), &file("")).unwrap();
        assert_eq!(e.weight_average, EMSHAP_WEIGHT_AVERAGE);
        let e = resolve_train_emshap(
            &TrainEmshapArgs::default(),
            &file("[train.emshap]\nweight_average = 0\n"),
        )
        .unwrap();
        assert_eq!(e.weight_average, 0.0, "0 turns it off");
        for bad in ["1.0", "-0.1", "nan"] {
            let cfg = file(&format!("[train.emshap]\nweight_average = {bad}\n"));
            let err = resolve_train_emshap(&TrainEmshapArgs::default(), &cfg).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            assert!(
                err.to_string().contains("[train.emshap] weight_average"),
                "{err}"
            );
        }
    }

    #[test]
    fn train_settings_layer_model_sections_over_train_over_defaults() {
        let cfg = file(
            "[train]\nseed = 9\nlr = 0.01\ndevice = \"cpu\"\n[train.emshap]\nlr = 0.002\nepochs = 4\nmask_rate = [0.3, 0.6]\n",
        );
        let e = resolve_train_emshap(&TrainEmshapArgs::default(), &cfg).unwrap();
        assert_eq!((e.common.seed, e.common.lr, e.common.epochs), (9, 0.002, 4));
        assert_eq!(e.common.device, DeviceChoice::Cpu);
        assert_eq!((e.mask_min, e.mask_max), (0.3, 0.6));
        assert_eq!(e.mask_rate(0), 0.3);
        assert!((e.mask_rate(3) - 0.6).abs() < 1e-12);
        let p = resolve_train_power(&TrainPowerArgs::default(), &cfg).unwrap();
        assert_eq!(
            (p.common.lr, p.common.epochs, p.common.patience),
            (0.01, 100, 10)
        );
        let mut args = TrainPowerArgs::default();
        args.common.lr = Some(0.5);
        args.common.device = Some(DeviceArg::Auto);
        let p = resolve_train_power(&args, &cfg).unwrap();
        assert_eq!((p.common.lr, p.common.device), (0.5, DeviceChoice::Auto));
        for bad in [
            TrainPowerArgs {
                dropout: Some(1.0),
                ..Default::default()
            },
            TrainPowerArgs {
                common: CommonTrainArgs {
                    epochs: Some(0),
                    ..Default::default()
                },
                ..Default::default()
            },
            TrainPowerArgs {
                common: CommonTrainArgs {
                    lr: Some(f64::NAN),
                    ..Default::default()
                },
                ..Default::default()
            },
        ] {
            assert_eq!(resolve_train_power(&bad, &cfg).unwrap_err().exit_code(), 2);
        }
    }

    #[test]
    fn unknown_config_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[pull]\nwindw = \"all\"\n").unwrap();
        let e = ConfigFile::load(Some(&path)).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("unknown field `windw`"), "{e}");
        let missing = ConfigFile::load(Some(&dir.path().join("nope.toml"))).unwrap_err();
        assert!(missing.to_string().contains("nope.toml"), "{missing}");
    }
}
