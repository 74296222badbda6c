//! The Kafka security flags shared by `pull`, `generate` and `doctor`.

use clap::Args;

#[derive(Debug, Args, Default, Clone)]
#[command(next_help_heading = "Kafka security")]
pub struct KafkaSecurityArgs {
    /// PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (default PLAINTEXT; SASL_SSL when a
    /// mechanism is given).
    #[arg(long, env = "EMSHAP_CI_KAFKA_SECURITY_PROTOCOL")]
    pub kafka_security_protocol: Option<String>,

    /// PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or AWS_MSK_IAM. The password comes
    /// only from EMSHAP_CI_KAFKA_SASL_PASSWORD.
    #[arg(long, env = "EMSHAP_CI_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,

    /// The SASL username (PLAIN, SCRAM).
    #[arg(long, env = "EMSHAP_CI_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,

    /// The CA that signed the brokers' certificates: a PEM file's path or the PEM text
    /// (default: the system bundle).
    #[arg(
        long,
        env = "EMSHAP_CI_KAFKA_CA",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub kafka_ca: Option<String>,

    /// A client certificate for mutual TLS: a PEM file's path or the PEM text.
    #[arg(
        long,
        env = "EMSHAP_CI_KAFKA_CLIENT_CERTIFICATE",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub kafka_client_certificate: Option<String>,

    /// The client certificate's private key, a PEM file's path (the PEM text only through
    /// EMSHAP_CI_KAFKA_SSL_KEY_PEM).
    #[arg(long, env = "EMSHAP_CI_KAFKA_CLIENT_KEY")]
    pub kafka_client_key: Option<String>,
}
