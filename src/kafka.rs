//! The Kafka client: metadata, watermarks, timestamp look-ups, a bounded consume loop over
//! explicitly assigned partitions, producing, and topic creation. Everything the broker says
//! no to becomes `Error::Kafka` (exit 3) with the brokers named. Must not decode payloads.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::error::{Error, Result};

pub mod security;
pub use security::{Security, SecurityInput};

/// How to reach the cluster.
#[derive(Clone, Default)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Consumer group: used for committed offsets (`--window committed`, `--commit`).
    pub group: Option<String>,
    /// How long a metadata request or a stalled fetch may take before giving up.
    pub timeout: Duration,
    /// librdkafka client properties (`[kafka.properties]`, `--kafka-property`), already
    /// checked against the ones emshap-ci owns and the secret ones.
    pub properties: std::collections::BTreeMap<String, String>,
    /// Secret properties, from the environment only (`EMSHAP_CI_KAFKA_SASL_PASSWORD`, …).
    /// Never printed: Debug shows their names.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// The checked protocol, SASL login and CA (already written into `properties`).
    pub security: Security,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("timeout", &self.timeout)
            .field("properties", &self.properties)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("security", &self.security)
            .finish()
    }
}

/// Properties emshap-ci sets itself: a pull's correctness depends on them.
pub const OWNED_PROPERTIES: [&str; 9] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "allow.auto.create.topics",
    "client.id",
];

/// Properties that carry a secret, and the environment variable each comes from.
pub const SECRET_PROPERTIES: [(&str, &str); 6] = [
    ("sasl.password", "EMSHAP_CI_KAFKA_SASL_PASSWORD"),
    ("ssl.key.password", "EMSHAP_CI_KAFKA_SSL_KEY_PASSWORD"),
    ("ssl.key.pem", "EMSHAP_CI_KAFKA_SSL_KEY_PEM"),
    (
        "ssl.keystore.password",
        "EMSHAP_CI_KAFKA_SSL_KEYSTORE_PASSWORD",
    ),
    (
        "sasl.oauthbearer.client.secret",
        "EMSHAP_CI_KAFKA_OAUTHBEARER_CLIENT_SECRET",
    ),
    (
        "sasl.oauthbearer.config",
        "EMSHAP_CI_KAFKA_OAUTHBEARER_CONFIG",
    ),
];

/// Checks client properties from `origin` (a config file or `--kafka-property`): the ones
/// emshap-ci owns and the secret ones are refused, each with what to do instead.
pub fn check_properties(
    props: &std::collections::BTreeMap<String, String>,
    origin: &str,
) -> Result<()> {
    for key in props.keys() {
        if OWNED_PROPERTIES.contains(&key.as_str()) {
            let instead = match key.as_str() {
                "bootstrap.servers" | "metadata.broker.list" => "use --brokers",
                "group.id" => "use --group",
                _ => {
                    "emshap-ci sets it: a pull reads a fixed window and commits only with --commit"
                }
            };
            return Err(Error::usage(
                format!("kafka property {key} ({origin})"),
                format!("emshap-ci owns it ({instead})"),
            ));
        }
        if let Some((_, env)) = SECRET_PROPERTIES.iter().find(|(k, _)| k == key) {
            return Err(Error::usage(
                format!("kafka property {key} ({origin})"),
                format!(
                    "a secret is never taken from a file or the command line: set {env} instead"
                ),
            ));
        }
        if key.trim().is_empty() || key.contains(char::is_whitespace) {
            return Err(Error::usage(
                format!("kafka property `{key}` ({origin})"),
                "not a property name",
            ));
        }
    }
    Ok(())
}

/// The secret properties the environment sets.
pub fn secrets_from_env() -> std::collections::BTreeMap<String, String> {
    SECRET_PROPERTIES
        .iter()
        .filter_map(|(k, env)| {
            std::env::var(env)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (k.to_string(), v))
        })
        .collect()
}

impl KafkaConfig {
    fn err(&self, message: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Kafka {
            brokers: self.brokers.clone(),
            message: message.into(),
            hint: hint.into(),
        }
    }

    fn client_err(&self, what: &str, e: KafkaError) -> Error {
        // librdkafka refuses a property before it talks to anyone: a setting to fix.
        if matches!(
            e,
            KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_)
        ) {
            return Error::usage(
                "kafka client properties",
                format!("{what}: {e} (check [kafka.properties] and --kafka-property)"),
            );
        }
        let hint = match e.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::Resolve,
            ) => "is the broker running? set --brokers or EMSHAP_CI_BROKERS",
            _ => "check the broker's log",
        };
        self.err(format!("{what}: {e}"), hint)
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "emshap-ci")
            .set("socket.timeout.ms", ms(self.timeout).max(10).to_string())
            .set("log_level", "3");
        for (k, v) in self.properties.iter().chain(&self.secrets) {
            c.set(k, v);
        }
        c
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(i32::MAX as u128) as u64
}

/// Why a connection cannot work, as librdkafka reported it (its error events and error
/// log lines arrive on its own threads or during a poll).
#[derive(Debug, Clone)]
enum Refusal {
    Login(String),
    Tls(String),
}

/// The context of every client emshap-ci makes: it keeps the first refused login or failed
/// TLS handshake, so an operation that then fails or times out says that instead of
/// "timed out", and it hands librdkafka the OAUTHBEARER token (Amazon MSK IAM, signed with
/// the AWS credential chain, or a token from `EMSHAP_CI_KAFKA_OAUTHBEARER_TOKEN`).
pub struct Ctx {
    security: Security,
    refusal: std::sync::Arc<std::sync::Mutex<Option<Refusal>>>,
}

impl Ctx {
    fn new(config: &KafkaConfig) -> Self {
        Self {
            security: config.security.clone(),
            refusal: Default::default(),
        }
    }

    fn note(&self, reason: &str) {
        let reason = &clean(reason);
        let lower = reason.to_ascii_lowercase();
        let refusal = if lower.contains("ssl handshake")
            || lower.contains("certificate verify")
            || lower.contains("ssl: ")
            || lower.contains("tls")
        {
            Refusal::Tls(reason.trim().to_string())
        } else if lower.contains("authentication")
            || lower.contains("sasl")
            || lower.contains("oauthbearer token")
        {
            Refusal::Login(reason.trim().to_string())
        } else {
            return;
        };
        let mut slot = self.refusal.lock().expect("not poisoned");
        slot.get_or_insert(refusal);
    }
}

impl ClientContext for Ctx {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        if matches!(level, L::Emerg | L::Alert | L::Critical | L::Error) {
            self.note(message);
        }
        tracing::debug!(target: "librdkafka", "{fac}: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
                let mut slot = self.refusal.lock().expect("not poisoned");
                slot.get_or_insert(Refusal::Login(clean(reason)));
            }
            Some(RDKafkaErrorCode::SSL) => {
                let mut slot = self.refusal.lock().expect("not poisoned");
                slot.get_or_insert(Refusal::Tls(clean(reason)));
            }
            _ => self.note(reason),
        }
        tracing::debug!(target: "librdkafka", "{error}: {reason}");
    }

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> std::result::Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        let result = match &self.security.msk_region {
            Some(region) => security::msk_iam_token(region)
                .map(|(token, lifetime_ms)| rdkafka::client::OAuthToken {
                    token,
                    principal_name: "emshap-ci".to_string(),
                    lifetime_ms,
                })
                .map_err(|e| format!("cannot sign an AWS_MSK_IAM token: {e}")),
            None => match std::env::var("EMSHAP_CI_KAFKA_OAUTHBEARER_TOKEN") {
                Ok(token) if !token.is_empty() => Ok(rdkafka::client::OAuthToken {
                    token,
                    principal_name: self
                        .security
                        .username
                        .clone()
                        .unwrap_or_else(|| "emshap-ci".to_string()),
                    // librdkafka asks again before this; the issuer decides the real expiry.
                    lifetime_ms: now_ms() + 3_600_000,
                }),
                _ => Err("OAUTHBEARER needs a token in EMSHAP_CI_KAFKA_OAUTHBEARER_TOKEN (or use the mechanism AWS_MSK_IAM)".to_string()),
            },
        };
        result.map_err(|e| {
            let mut slot = self.refusal.lock().expect("not poisoned");
            slot.get_or_insert(Refusal::Login(clean(&e)));
            e.into()
        })
    }
}

impl rdkafka::consumer::ConsumerContext for Ctx {}

/// librdkafka's reason on one line, without its thread and broker prefixes
/// (`[thrd:sasl_ssl://host:9093/bootstrap]: sasl_ssl://host:9093/bootstrap: `).
fn clean(reason: &str) -> String {
    let mut r = reason.trim();
    if r.starts_with("[thrd:") {
        if let Some((_, rest)) = r.split_once("]: ") {
            r = rest;
        }
    }
    if let Some((first, rest)) = r.split_once(": ") {
        if first.contains("://") && !first.contains(' ') {
            r = rest;
        }
    }
    r.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl KafkaConfig {
    /// The error for a refusal librdkafka reported: a login the brokers refused, or a TLS
    /// handshake that failed, naming the login and the CA used.
    fn refused(&self, refusal: &Refusal) -> Error {
        let sec = &self.security;
        match refusal {
            Refusal::Login(reason) => self.err(
                format!("authentication failed ({}): {reason}", sec.login()),
                match sec.mechanism {
                    Some(security::Mechanism::AwsMskIam) => {
                        "check the AWS credentials and the cluster's IAM policy (kafka-cluster:Connect)"
                    }
                    Some(security::Mechanism::OAuthBearer) => {
                        "check the token in EMSHAP_CI_KAFKA_OAUTHBEARER_TOKEN"
                    }
                    _ => "check the username and EMSHAP_CI_KAFKA_SASL_PASSWORD",
                },
            ),
            Refusal::Tls(reason) => {
                let lower = reason.to_ascii_lowercase();
                if lower.contains("certificate verify") || lower.contains("unable to get") {
                    self.err(
                        format!(
                            "TLS: the brokers' certificate did not verify against {}: {reason}",
                            sec.ca_used()
                        ),
                        "give the CA that signed the brokers' certificate with --kafka-ca (EMSHAP_CI_KAFKA_CA)",
                    )
                } else {
                    self.err(
                        format!("TLS handshake failed ({}): {reason}", sec.ca_used()),
                        if sec.client_certificate {
                            "check the client certificate and its key (--kafka-client-certificate, --kafka-client-key)"
                        } else {
                            "do the brokers require a client certificate? set --kafka-client-certificate and --kafka-client-key; is the port a TLS listener?"
                        },
                    )
                }
            }
        }
    }
}

/// One partition's part of a window: offsets `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionRange {
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl PartitionRange {
    pub fn len(&self) -> u64 {
        (self.end - self.start).max(0) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// A consumer for one topic, assigned explicitly (never subscribed), committing nothing
/// unless asked.
pub struct TopicReader {
    config: KafkaConfig,
    topic: String,
    consumer: BaseConsumer<Ctx>,
    refusal: std::sync::Arc<std::sync::Mutex<Option<Refusal>>>,
}

impl TopicReader {
    pub fn connect(config: &KafkaConfig, topic: &str) -> Result<Self> {
        let mut c = config.base();
        c.set(
            "group.id",
            config.group.as_deref().unwrap_or("emshap-ci-pull"),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "error")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.queue.backoff.ms", "0");
        let ctx = Ctx::new(config);
        let refusal = ctx.refusal.clone();
        let consumer: BaseConsumer<Ctx> = c
            .create_with_context(ctx)
            .map_err(|e| config.client_err("cannot create consumer", e))?;
        Ok(Self {
            config: config.clone(),
            topic: topic.to_string(),
            consumer,
            refusal,
        })
    }

    /// The refusal librdkafka reported, if any, else `e` as `client_err` words it.
    fn client_err(&self, what: &str, e: KafkaError) -> Error {
        match self.refusal() {
            Some(r) => r,
            None => self.config.client_err(what, e),
        }
    }

    /// The refusal librdkafka reported, if any, else this error.
    fn err(&self, message: impl Into<String>, hint: impl Into<String>) -> Error {
        match self.refusal() {
            Some(r) => r,
            None => self.config.err(message, hint),
        }
    }

    fn refusal(&self) -> Option<Error> {
        let r = self.refusal.lock().expect("not poisoned").clone();
        r.map(|r| self.config.refused(&r))
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's partitions, sorted; a missing topic is an error.
    pub fn partitions(&self) -> Result<Vec<i32>> {
        // Asked in short slices, polling between them: a refused login or a failed TLS
        // handshake is then reported at once instead of after the whole timeout.
        let deadline = Instant::now() + self.config.timeout;
        let md = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .consumer
                .fetch_metadata(Some(&self.topic), left.min(Duration::from_millis(500)))
            {
                Ok(md) => break md,
                Err(e) => {
                    let _ = self.consumer.poll(Duration::ZERO);
                    if let Some(r) = self.refusal() {
                        return Err(r);
                    }
                    let retry = matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::OperationTimedOut
                                | RDKafkaErrorCode::BrokerTransportFailure
                                | RDKafkaErrorCode::AllBrokersDown
                        )
                    );
                    if !retry || Instant::now() >= deadline {
                        return Err(self.client_err(
                            &format!("cannot read metadata of topic '{}'", self.topic),
                            e,
                        ));
                    }
                }
            }
        };
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(|| self.missing_topic())?;
        if let Some(err) = t.error() {
            let code: RDKafkaErrorCode = err.into();
            if code == RDKafkaErrorCode::UnknownTopicOrPartition || t.partitions().is_empty() {
                return Err(self.missing_topic());
            }
            return Err(self.err(
                format!("topic '{}': {code}", self.topic),
                "check the broker's log",
            ));
        }
        let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        if ps.is_empty() {
            return Err(self.missing_topic());
        }
        ps.sort_unstable();
        Ok(ps)
    }

    fn missing_topic(&self) -> Error {
        self.err(
            format!("topic '{}' does not exist", self.topic),
            "check --source kafka:TOPIC, or create the topic",
        )
    }

    /// (low, high) watermarks of each partition: the first offset and one past the last.
    ///
    /// The broker's ListOffsets answer is confirmed by reading from its last offset to the
    /// end of the partition: some Kafka-compatible brokers (Tansu 0.6) answer with the base
    /// offset of the last record batch + 1, while their Fetch responses are right. On Apache
    /// Kafka this reads one message per partition.
    pub fn watermarks(&self, partitions: &[i32]) -> Result<Vec<(i64, i64)>> {
        let mut marks = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let m = self
                .consumer
                .fetch_watermarks(&self.topic, p, self.config.timeout)
                .map_err(|e| {
                    self.config
                        .client_err(&format!("cannot read offsets of {}[{p}]", self.topic), e)
                })?;
            marks.push(m);
        }
        let probe: Vec<(usize, i64)> = marks
            .iter()
            .enumerate()
            .filter(|(_, (low, high))| high > low)
            .map(|(k, (_, high))| (k, high - 1))
            .collect();
        if probe.is_empty() {
            return Ok(marks);
        }
        let mut c = self.config.base();
        c.set("group.id", "emshap-ci-probe")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "5");
        let consumer: BaseConsumer<Ctx> = c
            .create_with_context(Ctx::new(&self.config))
            .map_err(|e| self.client_err("cannot create consumer", e))?;
        let mut tpl = TopicPartitionList::new();
        for &(k, from) in &probe {
            tpl.add_partition_offset(&self.topic, partitions[k], Offset::Offset(from))
                .map_err(|e| self.client_err("bad partition list", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| self.client_err("cannot assign partitions", e))?;
        let mut open: Vec<i32> = probe.iter().map(|&(k, _)| partitions[k]).collect();
        let deadline = Instant::now() + self.config.timeout;
        while !open.is_empty() {
            if Instant::now() > deadline {
                return Err(self.err(
                    format!(
                        "no answer reading the end of {} partitions {open:?} within {:?}",
                        self.topic, self.config.timeout
                    ),
                    "is the broker still up? raise --kafka-timeout for a slow cluster",
                ));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => open.retain(|&q| q != p),
                Some(Err(e)) => return Err(self.client_err("fetch failed", e)),
                Some(Ok(m)) => {
                    if let Some(k) = partitions.iter().position(|&q| q == m.partition()) {
                        marks[k].1 = marks[k].1.max(m.offset() + 1);
                    }
                }
            }
        }
        Ok(marks)
    }

    /// For each partition, the first offset whose timestamp is ≥ `ts_ms` (None: past the end).
    pub fn offsets_for_time(&self, partitions: &[i32], ts_ms: i64) -> Result<Vec<Option<i64>>> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(ts_ms))
                .map_err(|e| self.client_err("bad partition list", e))?;
        }
        let found = self
            .consumer
            .offsets_for_times(tpl, self.config.timeout)
            .map_err(|e| {
                self.client_err(
                    &format!("cannot look up offsets by time in '{}'", self.topic),
                    e,
                )
            })?;
        partitions
            .iter()
            .map(|&p| {
                let elem = found.find_partition(&self.topic, p).ok_or_else(|| {
                    self.err(
                        format!("no answer for {}[{p}] in the time look-up", self.topic),
                        "check the broker's log",
                    )
                })?;
                if let Err(e) = elem.error() {
                    return Err(self.client_err("time look-up", e));
                }
                Ok(match elem.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                })
            })
            .collect()
    }

    /// The group's committed offsets (None where the group has none).
    pub fn committed(&self, partitions: &[i32]) -> Result<Vec<Option<i64>>> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.topic, p);
        }
        let got = self
            .consumer
            .committed_offsets(tpl, self.config.timeout)
            .map_err(|e| self.client_err("cannot read committed offsets", e))?;
        Ok(partitions
            .iter()
            .map(
                |&p| match got.find_partition(&self.topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => Some(o),
                    _ => None,
                },
            )
            .collect())
    }

    /// Commits `end` of each range for the group (after a snapshot is safely written).
    pub fn commit(&self, ranges: &[PartitionRange]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for r in ranges {
            tpl.add_partition_offset(&self.topic, r.partition, Offset::Offset(r.end))
                .map_err(|e| self.client_err("bad partition list", e))?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| self.client_err("cannot commit offsets", e))
    }

    /// Reads every message of `ranges` exactly once, calling `each(partition, offset,
    /// kafka_timestamp_ms, payload, __value_schema_id header)`; returns when every range is done. Messages past a range's end are
    /// ignored, so the read terminates however much is produced meanwhile. `lows` are the
    /// partitions' low watermarks (same order as `ranges`).
    ///
    /// A broker may answer a fetch from inside a record batch with the *next* batch (Tansu
    /// 0.6 does), which shows as a gap right at the start: the partition is then read again
    /// from its low watermark, a batch boundary, and the messages before the range skipped.
    /// Later gaps are offsets that do not exist (compaction, transaction markers); the
    /// partition's end-of-file event ends it.
    pub fn read(
        &self,
        ranges: &[PartitionRange],
        lows: &[i64],
        mut each: impl FnMut(i32, i64, Option<i64>, &[u8], Option<&[u8]>) -> Result<()>,
    ) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        let mut slots: Vec<Slot> = Vec::new();
        for (r, &low) in ranges.iter().zip(lows) {
            if r.is_empty() {
                continue;
            }
            tpl.add_partition_offset(&self.topic, r.partition, Offset::Offset(r.start))
                .map_err(|e| self.client_err("bad partition list", e))?;
            slots.push(Slot {
                partition: r.partition,
                next: r.start,
                end: r.end,
                low,
                started: false,
                done: false,
            });
        }
        if slots.is_empty() {
            return Ok(());
        }
        self.consumer
            .assign(&tpl)
            .map_err(|e| self.client_err("cannot assign partitions", e))?;
        let mut remaining = slots.len();
        let mut last_progress = Instant::now();
        let assigned = Instant::now();
        // A broker answers a fetch within milliseconds (fetch.wait.max.ms = 5); one that
        // stays silent about a range starting inside its last batch gets the same re-read.
        let stall = (self.config.timeout / 4).min(Duration::from_secs(2));
        let mut stall_checked = false;
        while remaining > 0 {
            if !stall_checked && assigned.elapsed() > stall {
                stall_checked = true;
                for s in slots.iter_mut().filter(|s| s.may_need_reread()) {
                    self.reread_from_low(s)?;
                }
            }
            let m = match self.consumer.poll(Duration::from_millis(100)) {
                None => {
                    if last_progress.elapsed() > self.config.timeout {
                        let stuck: Vec<String> = slots
                            .iter()
                            .filter(|s| !s.done)
                            .map(|s| {
                                format!(
                                    "{}[{}] at {} of {}",
                                    self.topic, s.partition, s.next, s.end
                                )
                            })
                            .collect();
                        return Err(self.err(
                            format!(
                                "no message for {:?}: {}",
                                self.config.timeout,
                                stuck.join(", ")
                            ),
                            "is the broker still up? raise --kafka-timeout for a slow cluster",
                        ));
                    }
                    continue;
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(s) = slots.iter_mut().find(|s| s.partition == p && !s.done) {
                        if s.may_need_reread() {
                            // Nothing from inside the last batch: re-read from a boundary.
                            self.reread_from_low(s)?;
                        } else {
                            // End of file at the current high watermark, at or past the fixed
                            // end: whatever offsets were not seen do not exist.
                            s.done = true;
                            remaining -= 1;
                        }
                    }
                    continue;
                }
                Some(Err(e)) => return Err(self.client_err("fetch failed", e)),
                Some(Ok(m)) => m,
            };
            last_progress = Instant::now();
            let p = m.partition();
            let Some(slot) = slots.iter_mut().find(|s| s.partition == p) else {
                continue;
            };
            let off = m.offset();
            if slot.done || off < slot.next {
                // Redelivered (after a reconnect or a re-read), or before the range.
                continue;
            }
            if off > slot.next && slot.may_need_reread() {
                // The broker skipped from inside a batch to the next one.
                self.reread_from_low(slot)?;
                continue;
            }
            slot.started = true;
            if off >= slot.end {
                slot.done = true;
                remaining -= 1;
                continue;
            }
            slot.next = off + 1;
            each(
                p,
                off,
                m.timestamp().to_millis(),
                m.payload().unwrap_or(&[]),
                m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == crate::pull::decode::VALUE_SCHEMA_ID_HEADER)
                        .and_then(|h| h.value)
                }),
            )?;
            if slot.next >= slot.end {
                slot.done = true;
                remaining -= 1;
            }
        }
        let _ = self.consumer.unassign();
        Ok(())
    }
}

/// One partition's progress through its range in `TopicReader::read`.
struct Slot {
    partition: i32,
    next: i64,
    end: i64,
    low: i64,
    started: bool,
    done: bool,
}

impl Slot {
    /// Nothing taken yet, and the range starts after the low watermark: the case where a
    /// broker that fetches per batch may have skipped or withheld the range's first batch.
    fn may_need_reread(&self) -> bool {
        !self.started && !self.done && self.next > self.low
    }
}

impl TopicReader {
    /// Reads `slot`'s partition again from its low watermark, a batch boundary; the
    /// messages before the range are then skipped as they arrive.
    fn reread_from_low(&self, slot: &mut Slot) -> Result<()> {
        slot.started = true;
        self.consumer
            .seek(
                &self.topic,
                slot.partition,
                Offset::Offset(slot.low),
                self.config.timeout,
            )
            .map_err(|e| self.client_err("cannot seek", e))
    }
}

/// Counts delivery failures, so a produce that loses messages is an error.
struct CountingContext {
    failed: std::sync::atomic::AtomicU64,
    first: std::sync::Mutex<Option<String>>,
    ctx: Ctx,
}

impl ClientContext for CountingContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.ctx.log(level, fac, message)
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.ctx.error(error, reason)
    }

    fn generate_oauth_token(
        &self,
        config: Option<&str>,
    ) -> std::result::Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.ctx.generate_oauth_token(config)
    }
}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut first = self.first.lock().expect("not poisoned");
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Produces keyed, timestamped messages; `finish` waits for every delivery.
pub struct TopicWriter {
    config: KafkaConfig,
    topic: String,
    producer: BaseProducer<CountingContext>,
    sent: u64,
}

impl TopicWriter {
    pub fn connect(config: &KafkaConfig, topic: &str) -> Result<Self> {
        let mut c = config.base();
        c.set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "500000")
            .set(
                "message.timeout.ms",
                ms(config.timeout).max(1000).to_string(),
            );
        let producer = c
            .create_with_context(CountingContext {
                failed: Default::default(),
                first: Default::default(),
                ctx: Ctx::new(config),
            })
            .map_err(|e| config.client_err("cannot create producer", e))?;
        Ok(Self {
            config: config.clone(),
            topic: topic.to_string(),
            producer,
            sent: 0,
        })
    }

    pub fn send(&mut self, key: &str, timestamp_ms: i64, payload: &[u8]) -> Result<()> {
        let mut record = BaseRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .timestamp(timestamp_ms);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(self.config.client_err("cannot produce", e)),
            }
        }
        self.sent += 1;
        if self.sent.is_multiple_of(1024) {
            self.producer.poll(Duration::ZERO);
        }
        Ok(())
    }

    /// Waits for every message to be acknowledged; any failed delivery is an error.
    pub fn finish(self) -> Result<u64> {
        self.producer
            .flush(self.config.timeout.max(Duration::from_secs(30)))
            .map_err(|e| {
                match self
                    .producer
                    .context()
                    .ctx
                    .refusal
                    .lock()
                    .expect("not poisoned")
                    .clone()
                {
                    Some(r) => self.config.refused(&r),
                    None => self.config.client_err("cannot flush produced messages", e),
                }
            })?;
        let ctx = self.producer.context();
        let failed = ctx.failed.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = ctx.ctx.refusal.lock().expect("not poisoned").clone() {
            return Err(self.config.refused(&r));
        }
        if failed > 0 {
            let first = ctx.first.lock().expect("not poisoned").clone();
            return Err(self.config.err(
                format!(
                    "{failed} of {} messages to '{}' were not delivered (first: {})",
                    self.sent,
                    self.topic,
                    first.unwrap_or_default()
                ),
                "does the topic exist? check the broker's log",
            ));
        }
        Ok(self.sent)
    }
}

/// Creates `topic` with `partitions` partitions unless it exists.
pub fn ensure_topic(config: &KafkaConfig, topic: &str, partitions: i32) -> Result<bool> {
    let ctx = Ctx::new(config);
    let refusal = ctx.refusal.clone();
    let admin: AdminClient<Ctx> = config
        .base()
        .create_with_context(ctx)
        .map_err(|e| config.client_err("cannot create admin client", e))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| Error::Internal(e.into()))?;
    let opts = AdminOptions::new().operation_timeout(Some(config.timeout));
    let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
    let results = rt
        .block_on(admin.create_topics(&topics, &opts))
        .map_err(|e| match refusal.lock().expect("not poisoned").clone() {
            Some(r) => config.refused(&r),
            None => config.client_err(&format!("cannot create topic '{topic}'"), e),
        })?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((_, code))) => Err(config.err(
            format!("cannot create topic '{topic}': {code}"),
            "check the broker's log",
        )),
        None => Err(config.err(
            format!("no answer creating topic '{topic}'"),
            "check the broker's log",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_reasons_lose_their_prefixes_and_line_breaks() {
        assert_eq!(
            clean("[thrd:sasl_ssl://127.0.0.1:9/bootstrap]: sasl_ssl://127.0.0.1:9/bootstrap: SASL authentication error: x (after 3ms)"),
            "SASL authentication error: x (after 3ms)"
        );
        assert_eq!(
            clean("no credentials.\n  Attempted:\n  env"),
            "no credentials. Attempted: env"
        );
        assert_eq!(clean("SSL handshake failed: y"), "SSL handshake failed: y");
    }

    #[test]
    fn owned_and_secret_properties_are_refused_and_secrets_never_print() {
        let props = |k: &str| std::collections::BTreeMap::from([(k.to_string(), "x".to_string())]);
        assert!(check_properties(&props("fetch.min.bytes"), "t").is_ok());
        let e = check_properties(&props("group.id"), "--kafka-property").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--group"), "{e}");
        let e = check_properties(&props("sasl.password"), "--kafka-property").unwrap_err();
        assert!(
            e.to_string().contains("EMSHAP_CI_KAFKA_SASL_PASSWORD"),
            "{e}"
        );
        let c = KafkaConfig {
            secrets: std::collections::BTreeMap::from([(
                "sasl.password".to_string(),
                "hunter2".to_string(),
            )]),
            ..Default::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && s.contains("sasl.password"), "{s}");
    }
}
