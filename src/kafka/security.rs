//! Kafka security: the protocol, the SASL mechanism and its login, the CA and the client
//! certificate, resolved from `[kafka]`, the flags and the environment into librdkafka
//! properties; the Amazon MSK IAM token; and the one-line errors for a refused login or a
//! certificate that does not verify.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// How the client talks to the brokers (`security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    pub fn parse(s: &str, origin: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Ok(Self::Plaintext),
            "SSL" => Ok(Self::Ssl),
            "SASL_PLAINTEXT" => Ok(Self::SaslPlaintext),
            "SASL_SSL" => Ok(Self::SaslSsl),
            _ => Err(Error::usage(
                format!("kafka security protocol ({origin})"),
                format!("`{s}` is not one (use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL)"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// The SASL mechanism. `AwsMskIam` is OAUTHBEARER with a token emshap-ci signs with the AWS
/// credential chain (Amazon MSK's IAM access control).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
    OAuthBearer,
    AwsMskIam,
}

impl Mechanism {
    pub fn parse(s: &str, origin: &str) -> Result<Self> {
        match s.trim().to_ascii_uppercase().replace('_', "-").as_str() {
            "PLAIN" => Ok(Self::Plain),
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            "OAUTHBEARER" => Ok(Self::OAuthBearer),
            "AWS-MSK-IAM" => Ok(Self::AwsMskIam),
            "GSSAPI" => Err(Error::usage(
                format!("kafka SASL mechanism ({origin})"),
                "GSSAPI (Kerberos) is not built into emshap-ci (use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or AWS_MSK_IAM)",
            )),
            _ => Err(Error::usage(
                format!("kafka SASL mechanism ({origin})"),
                format!(
                    "`{s}` is not one (use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or AWS_MSK_IAM)"
                ),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
            Self::AwsMskIam => "AWS_MSK_IAM",
        }
    }

    /// The `sasl.mechanism` librdkafka is given.
    fn librdkafka(self) -> &'static str {
        match self {
            Self::AwsMskIam => "OAUTHBEARER",
            m => m.name(),
        }
    }

    fn needs_password(self) -> bool {
        matches!(self, Self::Plain | Self::ScramSha256 | Self::ScramSha512)
    }
}

/// Where the CA that verifies the brokers' certificates comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ca {
    /// The system bundle (`ssl.ca.location=probe`).
    #[default]
    System,
    File(String),
    /// PEM text, from the named setting.
    Pem(String),
}

/// What the user asked for, before it is checked: each field from a flag, the environment
/// or the config file's `[kafka]` table (the caller merges them in that order).
#[derive(Debug, Clone, Default)]
pub struct SecurityInput {
    pub protocol: Option<String>,
    pub mechanism: Option<String>,
    pub username: Option<String>,
    /// PEM text or a path.
    pub ca: Option<String>,
    /// The client certificate (mutual TLS): PEM text or a path.
    pub client_certificate: Option<String>,
    /// The client certificate's private key: a path (PEM text only from
    /// EMSHAP_CI_KAFKA_SSL_KEY_PEM).
    pub client_key: Option<String>,
    /// The AWS region for AWS_MSK_IAM (default: AWS_REGION, or the brokers' host names).
    pub aws_region: Option<String>,
}

impl SecurityInput {
    /// Empty values count as unset (an action input left empty arrives as "").
    pub fn without_empty(self) -> Self {
        let f = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Self {
            protocol: f(self.protocol),
            mechanism: f(self.mechanism),
            username: f(self.username),
            ca: f(self.ca),
            client_certificate: f(self.client_certificate),
            client_key: f(self.client_key),
            aws_region: f(self.aws_region),
        }
    }
}

/// The checked security of a connection, kept for error messages and the MSK token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub protocol: Protocol,
    pub mechanism: Option<Mechanism>,
    pub username: Option<String>,
    pub ca: Ca,
    pub client_certificate: bool,
    /// Set for AWS_MSK_IAM.
    pub msk_region: Option<String>,
}

impl Security {
    /// "SCRAM-SHA-512 as alice", for a refused login.
    pub fn login(&self) -> String {
        match (self.mechanism, &self.username) {
            (Some(m), Some(u)) => format!("{} as {u}", m.name()),
            (Some(Mechanism::AwsMskIam), None) => {
                "AWS_MSK_IAM with the AWS credential chain".to_string()
            }
            (Some(m), None) => m.name().to_string(),
            (None, _) => "no SASL".to_string(),
        }
    }

    /// "CA /etc/kafka/ca.pem", for a certificate that does not verify.
    pub fn ca_used(&self) -> String {
        match &self.ca {
            Ca::System => "the system CA bundle".to_string(),
            Ca::File(p) => format!("CA file {p}"),
            Ca::Pem(origin) => format!("the CA PEM from {origin}"),
        }
    }
}

fn set(props: &mut BTreeMap<String, String>, key: &str, value: &str, origin: &str) -> Result<()> {
    match props.get(key) {
        Some(v) if !v.eq_ignore_ascii_case(value) => Err(Error::usage(
            format!("kafka property {key}"),
            format!("set to `{v}` as a property and to `{value}` by {origin}: give it once"),
        )),
        _ => {
            props.insert(key.to_string(), value.to_string());
            Ok(())
        }
    }
}

fn is_pem(s: &str) -> bool {
    s.trim_start().starts_with("-----BEGIN")
}

fn existing_file(path: &str, what: &str) -> Result<()> {
    if Path::new(path).is_file() {
        Ok(())
    } else {
        Err(Error::usage(
            what.to_string(),
            format!("{path}: no such file (give a path to a PEM file, or the PEM text itself)"),
        ))
    }
}

/// The region in an MSK broker's host name (`b-1.c.abc.c2.kafka.eu-west-1.amazonaws.com`).
fn region_from_brokers(brokers: &str) -> Option<String> {
    brokers.split(',').find_map(|b| {
        let host = b.trim().rsplit_once(':').map_or(b.trim(), |(h, _)| h);
        let labels: Vec<&str> = host.split('.').collect();
        let k = labels
            .iter()
            .position(|l| *l == "kafka" || *l == "kafka-serverless")?;
        let region = labels.get(k + 1)?;
        (labels.get(k + 2) == Some(&"amazonaws")).then(|| region.to_string())
    })
}

/// Checks `input` and writes what it means into `props` (which already holds the checked
/// `[kafka.properties]` and `--kafka-property`); `secrets` are the environment's. Every
/// refusal is a usage error (exit 2) naming the setting.
pub fn resolve(
    input: &SecurityInput,
    props: &mut BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
    brokers: &str,
) -> Result<Security> {
    let mechanism = match (
        &input.mechanism,
        props.get("sasl.mechanism").or(props.get("sasl.mechanisms")),
    ) {
        (Some(m), _) => Some(Mechanism::parse(m, "--kafka-sasl-mechanism")?),
        (None, Some(m)) => Some(Mechanism::parse(m, "kafka property sasl.mechanism")?),
        (None, None) => None,
    };
    if props.contains_key("sasl.mechanisms") {
        let v = props.remove("sasl.mechanisms").unwrap_or_default();
        props.insert("sasl.mechanism".to_string(), v);
    }
    let protocol = match (&input.protocol, props.get("security.protocol")) {
        (Some(p), _) => Protocol::parse(p, "--kafka-security-protocol")?,
        (None, Some(p)) => Protocol::parse(p, "kafka property security.protocol")?,
        // A mechanism alone means SASL over TLS: what every managed Kafka offers.
        (None, None) if mechanism.is_some() => Protocol::SaslSsl,
        (None, None) => Protocol::Plaintext,
    };
    set(
        props,
        "security.protocol",
        protocol.name(),
        "--kafka-security-protocol",
    )?;
    match (protocol.sasl(), mechanism) {
        (true, None) => {
            return Err(Error::usage(
                "--kafka-sasl-mechanism",
                format!(
                    "{} needs a SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or AWS_MSK_IAM)",
                    protocol.name()
                ),
            ))
        }
        (false, Some(m)) => {
            return Err(Error::usage(
                "--kafka-security-protocol",
                format!(
                    "{} does not authenticate with SASL: use SASL_SSL (or SASL_PLAINTEXT) with {}",
                    protocol.name(),
                    m.name()
                ),
            ))
        }
        _ => {}
    }
    if let Some(m) = mechanism {
        set(
            props,
            "sasl.mechanism",
            m.librdkafka(),
            "--kafka-sasl-mechanism",
        )?;
    }
    let username = input
        .username
        .clone()
        .or_else(|| props.get("sasl.username").cloned());
    if let Some(u) = &username {
        set(props, "sasl.username", u, "--kafka-sasl-username")?;
    }
    if let Some(m) = mechanism.filter(|m| m.needs_password()) {
        if username.is_none() {
            return Err(Error::usage(
                "--kafka-sasl-username",
                format!(
                    "{} needs a username (EMSHAP_CI_KAFKA_SASL_USERNAME)",
                    m.name()
                ),
            ));
        }
        if !secrets.contains_key("sasl.password") {
            return Err(Error::usage(
                "EMSHAP_CI_KAFKA_SASL_PASSWORD",
                format!(
                    "{} needs the password in EMSHAP_CI_KAFKA_SASL_PASSWORD",
                    m.name()
                ),
            ));
        }
    }
    let mut ca = Ca::System;
    if protocol.tls() {
        match &input.ca {
            Some(pem) if is_pem(pem) => {
                set(props, "ssl.ca.pem", pem, "--kafka-ca")?;
                ca = Ca::Pem("--kafka-ca (EMSHAP_CI_KAFKA_CA)".to_string());
            }
            Some(path) => {
                existing_file(path, "--kafka-ca")?;
                set(props, "ssl.ca.location", path, "--kafka-ca")?;
                ca = Ca::File(path.clone());
            }
            None => match (props.get("ssl.ca.location"), props.get("ssl.ca.pem")) {
                (Some(p), _) if p != "probe" => ca = Ca::File(p.clone()),
                (_, Some(_)) => ca = Ca::Pem("kafka property ssl.ca.pem".to_string()),
                _ => {
                    // Vendored OpenSSL has no default bundle: probe the system's.
                    props.insert("ssl.ca.location".to_string(), "probe".to_string());
                }
            },
        }
        if let Some(cert) = &input.client_certificate {
            if is_pem(cert) {
                set(
                    props,
                    "ssl.certificate.pem",
                    cert,
                    "--kafka-client-certificate",
                )?;
            } else {
                existing_file(cert, "--kafka-client-certificate")?;
                set(
                    props,
                    "ssl.certificate.location",
                    cert,
                    "--kafka-client-certificate",
                )?;
            }
        }
        if let Some(key) = &input.client_key {
            if is_pem(key) {
                return Err(Error::usage(
                    "--kafka-client-key",
                    "a private key's PEM text is a secret: give a path, or set EMSHAP_CI_KAFKA_SSL_KEY_PEM",
                ));
            }
            existing_file(key, "--kafka-client-key")?;
            set(props, "ssl.key.location", key, "--kafka-client-key")?;
        }
    } else if input.ca.is_some() || input.client_certificate.is_some() {
        return Err(Error::usage(
            "--kafka-ca",
            format!(
                "{} does not use TLS: a CA or client certificate needs SSL or SASL_SSL",
                protocol.name()
            ),
        ));
    }
    let client_certificate = ["ssl.certificate.location", "ssl.certificate.pem"]
        .iter()
        .any(|k| props.contains_key(*k));
    let msk_region = if mechanism == Some(Mechanism::AwsMskIam) {
        let region = input
            .aws_region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|s| !s.is_empty()))
            .or_else(|| {
                std::env::var("AWS_DEFAULT_REGION")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| region_from_brokers(brokers))
            .ok_or_else(|| {
                Error::usage(
                    "[kafka] aws_region",
                    "AWS_MSK_IAM needs the cluster's region: set AWS_REGION or [kafka] aws_region",
                )
            })?;
        Some(region)
    } else {
        None
    };
    Ok(Security {
        protocol,
        mechanism,
        username,
        ca,
        client_certificate,
        msk_region,
    })
}

/// A signed Amazon MSK IAM token for `region` from the AWS credential chain (environment,
/// profile, web identity, instance role), and when it expires (ms since the epoch).
pub fn msk_iam_token(region: &str) -> std::result::Result<(String, i64), String> {
    let region = region.to_string();
    // librdkafka calls this from inside a poll, which may be on a thread with a runtime.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let region = aws_config::Region::new(region);
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(region.clone())
                .load()
                .await;
            let provider = config.credentials_provider().ok_or_else(|| {
                "no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or a role)".to_string()
            })?;
            aws_msk_iam_sasl_signer::generate_auth_token_from_credentials_provider(
                region, provider,
            )
            .await
            .map_err(|e| format!("{e}: {}", crate::error::deepest(&e)))
        })
    })
    .join()
    .map_err(|_| "the token signer panicked".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(
        input: SecurityInput,
        props: &[(&str, &str)],
        secrets: &[(&str, &str)],
    ) -> Result<(Security, BTreeMap<String, String>)> {
        let mut p: BTreeMap<String, String> = props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s: BTreeMap<String, String> = secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sec = resolve(&input, &mut p, &s, "127.0.0.1:9092")?;
        Ok((sec, p))
    }

    #[test]
    fn scram_over_tls_becomes_librdkafka_properties() {
        let (sec, p) = resolve_with(
            SecurityInput {
                mechanism: Some("scram-sha-512".into()),
                username: Some("alice".into()),
                ..Default::default()
            },
            &[],
            &[("sasl.password", "pw")],
        )
        .unwrap();
        assert_eq!(
            sec.protocol,
            Protocol::SaslSsl,
            "a mechanism alone means SASL_SSL"
        );
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.username"], "alice");
        assert_eq!(p["ssl.ca.location"], "probe");
        assert_eq!(sec.login(), "SCRAM-SHA-512 as alice");
        assert_eq!(sec.ca_used(), "the system CA bundle");
        assert!(
            !p.values().any(|v| v == "pw"),
            "the password stays a secret"
        );
    }

    #[test]
    fn plain_and_oauthbearer_reach_librdkafka_as_intended() {
        let (_, p) = resolve_with(
            SecurityInput {
                protocol: Some("SASL_SSL".into()),
                mechanism: Some("PLAIN".into()),
                username: Some("APIKEY".into()),
                ca: Some("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----".into()),
                ..Default::default()
            },
            &[],
            &[("sasl.password", "secret")],
        )
        .unwrap();
        assert_eq!(p["sasl.mechanism"], "PLAIN");
        assert!(p["ssl.ca.pem"].starts_with("-----BEGIN CERTIFICATE"));
        assert!(!p.contains_key("ssl.ca.location"));
        let (sec, p) = resolve_with(
            SecurityInput {
                mechanism: Some("AWS_MSK_IAM".into()),
                aws_region: Some("eu-west-1".into()),
                ..Default::default()
            },
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(p["sasl.mechanism"], "OAUTHBEARER");
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(sec.msk_region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn the_region_is_read_from_msk_broker_names() {
        assert_eq!(
            region_from_brokers("b-1.c1.abc123.c2.kafka.eu-west-1.amazonaws.com:9098,b-2.x"),
            Some("eu-west-1".into())
        );
        assert_eq!(
            region_from_brokers("boot-abc.c1.kafka-serverless.us-east-1.amazonaws.com:9098"),
            Some("us-east-1".into())
        );
        assert_eq!(region_from_brokers("kafka.example.com:9092"), None);
        assert_eq!(region_from_brokers("127.0.0.1:9092"), None);
    }

    #[test]
    fn what_cannot_work_is_refused_with_exit_2() {
        type Case<'a> = (
            SecurityInput,
            Vec<(&'a str, &'a str)>,
            Vec<(&'a str, &'a str)>,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                SecurityInput {
                    mechanism: Some("SCRAM-SHA-1".into()),
                    ..Default::default()
                },
                vec![],
                vec![],
                "not one",
            ),
            (
                SecurityInput {
                    mechanism: Some("GSSAPI".into()),
                    ..Default::default()
                },
                vec![],
                vec![],
                "Kerberos",
            ),
            (
                SecurityInput {
                    protocol: Some("TLS".into()),
                    ..Default::default()
                },
                vec![],
                vec![],
                "SASL_SSL",
            ),
            (
                SecurityInput {
                    protocol: Some("SASL_SSL".into()),
                    ..Default::default()
                },
                vec![],
                vec![],
                "needs a SASL mechanism",
            ),
            (
                SecurityInput {
                    protocol: Some("SSL".into()),
                    mechanism: Some("PLAIN".into()),
                    ..Default::default()
                },
                vec![],
                vec![],
                "does not authenticate",
            ),
            (
                SecurityInput {
                    mechanism: Some("SCRAM-SHA-256".into()),
                    username: Some("bob".into()),
                    ..Default::default()
                },
                vec![],
                vec![],
                "EMSHAP_CI_KAFKA_SASL_PASSWORD",
            ),
            (
                SecurityInput {
                    mechanism: Some("SCRAM-SHA-256".into()),
                    ..Default::default()
                },
                vec![],
                vec![("sasl.password", "x")],
                "needs a username",
            ),
            (
                SecurityInput {
                    protocol: Some("SSL".into()),
                    ca: Some("/nonexistent/ca.pem".into()),
                    ..Default::default()
                },
                vec![],
                vec![],
                "no such file",
            ),
            (
                SecurityInput {
                    protocol: Some("SSL".into()),
                    client_key: Some("-----BEGIN PRIVATE KEY-----".into()),
                    ..Default::default()
                },
                vec![],
                vec![],
                "EMSHAP_CI_KAFKA_SSL_KEY_PEM",
            ),
            (
                SecurityInput {
                    ca: Some("/etc/hostname".into()),
                    ..Default::default()
                },
                vec![],
                vec![],
                "does not use TLS",
            ),
            (
                SecurityInput {
                    protocol: Some("SSL".into()),
                    ..Default::default()
                },
                vec![("security.protocol", "PLAINTEXT")],
                vec![],
                "give it once",
            ),
            (
                SecurityInput::default(),
                vec![("sasl.mechanism", "KERBEROS")],
                vec![],
                "sasl.mechanism",
            ),
        ];
        for (input, props, secrets, says) in cases {
            let e = resolve_with(input.clone(), &props, &secrets)
                .map(|_| ())
                .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{input:?}: {e}");
            assert!(
                e.to_string().contains(says),
                "{input:?}: `{e}` lacks `{says}`"
            );
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }
}
