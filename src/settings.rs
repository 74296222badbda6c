//! Settings: defaults < `emshap-ci.toml` < `EMSHAP_CI_*` environment < flags, resolved into
//! one validated struct per stage. Clap already merges the environment and the flags (a flag
//! wins); this module lays them over the config file and the defaults, and checks values.
//! Only the resolved settings reach the stages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::generate::GenerateArgs;
use crate::cli::pull::PullArgs;
use crate::error::{Error, Result};
use crate::generate::{BadKind, GenerateSpec};
use crate::kafka::KafkaConfig;
use crate::pull::{PullSettings, ScalerMode, Source, Window};
use crate::schema::FeatureSet;

pub const DEFAULT_CONFIG: &str = "emshap-ci.toml";

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    pub brokers: Option<String>,
    pub group: Option<String>,
    pub timeout_secs: Option<f64>,
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

impl ConfigFile {
    /// Loads `path` (which must exist), or `./emshap-ci.toml` when present, or nothing.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(e) => {
                return Err(Error::Config {
                    path,
                    message: format!("cannot read it: {e}"),
                })
            }
        };
        toml::from_str(&text).map_err(|e| Error::Config {
            path,
            message: e.message().to_string(),
        })
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
        kafka: KafkaConfig,
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
                kafka: KafkaConfig {
                    brokers,
                    group: None,
                    timeout: timeout(args.kafka_timeout.or(file.kafka.timeout_secs))?,
                },
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
    let workers = args
        .workers
        .or(p.workers)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if workers == 0 || workers > 256 {
        return Err(Error::usage(
            "--workers",
            format!("{workers} (give 1 to 256)"),
        ));
    }
    Ok(PullSettings {
        source,
        kafka: KafkaConfig {
            brokers,
            group,
            timeout: timeout(args.kafka_timeout.or(file.kafka.timeout_secs))?,
        },
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> ConfigFile {
        toml::from_str(text).unwrap()
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
