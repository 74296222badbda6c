//! `emshap-ci pull` flags.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args, Default)]
pub struct PullArgs {
    /// Where to read: `embedded` (the bundled fixture, the default), file:PATH or kafka:TOPIC.
    #[arg(long, env = "EMSHAP_CI_SOURCE")]
    pub source: Option<String>,

    /// Kafka bootstrap servers, e.g. 127.0.0.1:9092.
    #[arg(long, env = "EMSHAP_CI_BROKERS")]
    pub brokers: Option<String>,

    /// Which messages: all, last:N, offsets:START-END, offsets:P=START-END,...,
    /// time:FROM..TO (RFC 3339 or epoch ms) or committed (default all).
    #[arg(long, env = "EMSHAP_CI_WINDOW")]
    pub window: Option<String>,

    /// Features to train on, comma-separated (default: the 20 named metrics; extra.KEY
    /// selects a key of the extra map).
    #[arg(long, env = "EMSHAP_CI_FEATURES", value_delimiter = ',')]
    pub features: Option<Vec<String>>,

    /// Snapshot folder to write (replaced atomically; default work/data).
    #[arg(long, env = "EMSHAP_CI_DATA")]
    pub out: Option<PathBuf>,

    /// Train and validation fractions of the chronological split, e.g. 0.8,0.1 (test gets
    /// the rest; default 0.8,0.1).
    #[arg(long, env = "EMSHAP_CI_SPLIT", value_delimiter = ',')]
    pub split: Option<Vec<f64>>,

    /// Largest share of invalid messages before the pull fails with exit 4 (default 0.01).
    #[arg(long, env = "EMSHAP_CI_MAX_INVALID_RATIO")]
    pub max_invalid_ratio: Option<f64>,

    /// `fit` on the train split (default), or `reuse:PATH` of a scaler.json.
    #[arg(long, env = "EMSHAP_CI_SCALER")]
    pub scaler: Option<String>,

    /// Where quarantined records go when the pull fails (default OUT.quarantine.jsonl;
    /// on success they are OUT/quarantine.jsonl).
    #[arg(long, env = "EMSHAP_CI_QUARANTINE")]
    pub quarantine: Option<PathBuf>,

    /// Consumer group, for --window committed and --commit.
    #[arg(long, env = "EMSHAP_CI_GROUP")]
    pub group: Option<String>,

    /// Commit the window's end offsets for --group once the snapshot is written.
    #[arg(long, env = "EMSHAP_CI_COMMIT")]
    pub commit: bool,

    /// Kafka request timeout, and longest wait for a message, in seconds (default 30).
    #[arg(long, env = "EMSHAP_CI_KAFKA_TIMEOUT")]
    pub kafka_timeout: Option<f64>,

    /// A librdkafka client property, KEY=VALUE (repeatable; e.g. security.protocol=SASL_SSL).
    /// Properties emshap-ci owns, and secrets, are refused: secrets come only from the
    /// environment (EMSHAP_CI_KAFKA_SASL_PASSWORD and the like).
    #[arg(
        long = "kafka-property",
        env = "EMSHAP_CI_KAFKA_PROPERTIES",
        value_delimiter = ';'
    )]
    pub kafka_property: Vec<String>,

    /// Decoding threads (default: the number of cores).
    #[arg(long, env = "EMSHAP_CI_WORKERS")]
    pub workers: Option<usize>,

    /// How message values are framed: auto (Confluent Schema Registry framing when the
    /// first byte is 0, else a bare FeatureVector), raw, or confluent (default auto).
    #[arg(
        long,
        env = "EMSHAP_CI_PAYLOAD_FORMAT",
        value_enum,
        hide_possible_values = true
    )]
    pub payload_format: Option<crate::pull::decode::PayloadFormat>,

    /// A TOML file of data expectations (the keys of `[expectations]`: rows, freshness_minutes,
    /// features.NAME.{min,max,mostly,max_missing,mean,sd}); replaces the config's.
    #[arg(long, env = "EMSHAP_CI_EXPECTATIONS")]
    pub expectations: Option<PathBuf>,

    #[command(flatten)]
    pub kafka_security: crate::cli::kafka::KafkaSecurityArgs,
}
