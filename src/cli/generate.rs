//! `emshap-ci generate` flags.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args, Default)]
pub struct GenerateArgs {
    /// Number of records to write (default 100000).
    #[arg(long, env = "EMSHAP_CI_GENERATE_ROWS")]
    pub rows: Option<u64>,

    /// Number of distinct nodes (default 64).
    #[arg(long, env = "EMSHAP_CI_NODES")]
    pub nodes: Option<u32>,

    /// Random seed; the same seed gives the same bytes (default 7).
    #[arg(long, env = "EMSHAP_CI_GENERATE_SEED")]
    pub seed: Option<u64>,

    /// Share of records made bad, spread evenly over --bad-kinds (default 0).
    #[arg(long, env = "EMSHAP_CI_BAD_RATIO")]
    pub bad_ratio: Option<f64>,

    /// Kinds of bad record: undecodable, nan, negative-power, missing-target,
    /// missing-feature, duplicate (default: all).
    #[arg(long, env = "EMSHAP_CI_BAD_KINDS", value_delimiter = ',')]
    pub bad_kinds: Option<Vec<String>>,

    /// Raise every GPU node's gpu_util by this many points (a new hardware mix; power follows
    /// the same relation). For monitoring tests and demos.
    #[arg(long, hide = true)]
    pub gpu_shift: Option<f64>,

    /// Scale power_watts by this factor (a changed relation). For monitoring tests.
    #[arg(long, hide = true)]
    pub power_scale: Option<f64>,

    /// Leave gpu_util out of this share of the messages. For monitoring tests.
    #[arg(long, hide = true)]
    pub gpu_missing: Option<f64>,

    /// Write a length-delimited file (varint length + message).
    #[arg(long, value_name = "FILE", conflicts_with = "topic")]
    pub out: Option<PathBuf>,

    /// Kafka bootstrap servers, for --topic.
    #[arg(long, env = "EMSHAP_CI_BROKERS")]
    pub brokers: Option<String>,

    /// Produce to this Kafka topic (key = node_id, timestamp = timestamp_ms).
    #[arg(long, env = "EMSHAP_CI_TOPIC")]
    pub topic: Option<String>,

    /// Create the topic with this many partitions when it does not exist (default 3).
    #[arg(long, env = "EMSHAP_CI_PARTITIONS")]
    pub partitions: Option<i32>,

    /// Kafka request timeout in seconds (default 30).
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

    #[command(flatten)]
    pub kafka_security: crate::cli::kafka::KafkaSecurityArgs,
}
