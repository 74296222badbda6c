//! Decoding and validating messages into columns (DESIGN §3). A record is invalid when it
//! does not decode, its target is absent, NaN, infinite or negative, a selected feature is
//! NaN or infinite, or its timestamp lies outside a time window. A selected feature that is
//! merely absent is kept as NaN here and imputed later with the training mean.
//! Must not decide anything that depends on other records (duplicates, splits, scaling).

use std::collections::HashMap;

use prost::Message;
use serde::Serialize;

use crate::proto::FeatureVector;
use crate::schema::{metric, FeatureSet, FeatureSource};

/// Why a record was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Undecodable,
    /// Confluent framing whose message index is not the first type (FeatureVector).
    WrongMessageType,
    /// A magic byte that is no framing this pull reads: a first byte other than 0 with
    /// `--payload-format confluent`, or a `__value_schema_id` header not starting with 1.
    UnknownFraming,
    MissingTarget,
    NonFiniteTarget,
    NegativeTarget,
    NonFiniteFeature,
    OutsideWindow,
    /// Not invalid: an earlier copy of a (node_id, timestamp_ms) seen again later.
    Duplicate,
    /// Not invalid: a value outside an expectation's min..max, in no more rows than its
    /// `mostly` allows (`[expectations]`), left out of the snapshot.
    UnexpectedValue,
}

impl Reason {
    pub const INVALID: [Reason; 8] = [
        Reason::Undecodable,
        Reason::WrongMessageType,
        Reason::UnknownFraming,
        Reason::MissingTarget,
        Reason::NonFiniteTarget,
        Reason::NegativeTarget,
        Reason::NonFiniteFeature,
        Reason::OutsideWindow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::WrongMessageType => "wrong_message_type",
            Reason::UnknownFraming => "unknown_framing",
            Reason::MissingTarget => "missing_target",
            Reason::NonFiniteTarget => "non_finite_target",
            Reason::NegativeTarget => "negative_target",
            Reason::NonFiniteFeature => "non_finite_feature",
            Reason::OutsideWindow => "outside_window",
            Reason::Duplicate => "duplicate",
            Reason::UnexpectedValue => "unexpected_value",
        }
    }
}

/// How message values are framed (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// Confluent framing when the first byte is 0 (a bare FeatureVector never starts with
    /// 0: protobuf has no field number 0), a bare FeatureVector otherwise.
    #[default]
    Auto,
    /// A bare FeatureVector.
    Raw,
    /// Confluent Schema Registry framing: magic byte 0, a 4-byte big-endian schema id, the
    /// message-index zig-zag varints (`0x00` for the first type), then the FeatureVector.
    Confluent,
}

impl std::fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PayloadFormat::Auto => "auto",
            PayloadFormat::Raw => "raw",
            PayloadFormat::Confluent => "confluent",
        })
    }
}

/// One zig-zag varint at the start of `b`: (value, bytes used).
fn zigzag_varint(b: &[u8]) -> Option<(i64, usize)> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((((v >> 1) as i64) ^ -((v & 1) as i64), i + 1));
        }
    }
    None
}

/// Why a message value cannot be read: the reason and its detail.
pub type Unreadable = (Reason, String);

/// The FeatureVector bytes of a message value and its Confluent schema id (if framed), or
/// why it cannot be read.
pub fn unframe(payload: &[u8], format: PayloadFormat) -> Result<(&[u8], Option<u32>), Unreadable> {
    let framed = match format {
        PayloadFormat::Raw => false,
        PayloadFormat::Auto => payload.first() == Some(&0),
        PayloadFormat::Confluent => match payload.first() {
            Some(0) => true,
            Some(b) => {
                return Err((
                    Reason::UnknownFraming,
                    format!("first byte {b:#04x}, not Confluent's magic byte 0x00"),
                ))
            }
            None => return Err((Reason::Undecodable, "empty message".into())),
        },
    };
    if !framed {
        return Ok((payload, None));
    }
    let Some(id) = payload.get(1..5) else {
        return Err((
            Reason::Undecodable,
            format!("Confluent framing cut short: {} bytes", payload.len()),
        ));
    };
    let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
    let used = message_indexes(&payload[5..], &format!("schema id {id}"))?;
    Ok((&payload[5 + used..], Some(id)))
}

/// Checks the message-index varints at the start of `b` (a count, then the indexes; the
/// single byte 0 for the first type) name the first message type: the bytes they use.
fn message_indexes(b: &[u8], what: &str) -> Result<usize, Unreadable> {
    let bad_index = |why: String| (Reason::Undecodable, format!("{what}: {why}"));
    let (count, mut at) = zigzag_varint(b).ok_or_else(|| bad_index("no message index".into()))?;
    // The array [0] is written as a single 0 (its length); otherwise length, then indexes.
    if count == 0 {
        return Ok(at);
    }
    if !(0..=64).contains(&count) {
        return Err(bad_index(format!("message index count {count}")));
    }
    let mut indexes = Vec::new();
    for _ in 0..count {
        let (i, used) =
            zigzag_varint(&b[at..]).ok_or_else(|| bad_index("message index cut short".into()))?;
        indexes.push(i);
        at += used;
    }
    if indexes != [0] {
        return Err((
            Reason::WrongMessageType,
            format!("{what}, message index {indexes:?}: only the first message type (FeatureVector) is read"),
        ));
    }
    Ok(at)
}

/// The header that carries the value's schema id in Confluent's newer framing.
pub const VALUE_SCHEMA_ID_HEADER: &str = "__value_schema_id";

/// The schema GUID of a `__value_schema_id` header value (magic 1, the 16-byte GUID, then
/// the message-index varints; the value itself is then a bare FeatureVector), written as
/// a lower-case hyphenated UUID, or why it cannot be read.
pub fn schema_guid(header: &[u8]) -> Result<String, Unreadable> {
    match header.first() {
        Some(1) => {}
        Some(b) => {
            return Err((
                Reason::UnknownFraming,
                format!("{VALUE_SCHEMA_ID_HEADER} header starts with {b:#04x}, not Confluent's magic byte 0x01"),
            ))
        }
        None => {
            return Err((
                Reason::UnknownFraming,
                format!("{VALUE_SCHEMA_ID_HEADER} header is empty"),
            ))
        }
    }
    let Some(g) = header.get(1..17) else {
        return Err((
            Reason::Undecodable,
            format!(
                "{VALUE_SCHEMA_ID_HEADER} header cut short: {} bytes",
                header.len()
            ),
        ));
    };
    let hex: String = g.iter().map(|b| format!("{b:02x}")).collect();
    let guid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    // Protobuf serializers append the message indexes; other formats write none.
    if header.len() > 17 {
        message_indexes(&header[17..], &format!("schema {guid}"))?;
    }
    Ok(guid)
}

/// A quarantined record: where it was and why.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub partition: i32,
    pub offset: i64,
    pub reason: Reason,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<i64>,
}

/// Valid records as columns, plus the rejected ones.
#[derive(Debug, Default)]
pub struct Columns {
    pub d: usize,
    /// Row-major raw feature values; NaN where the feature was absent.
    pub values: Vec<f32>,
    pub power: Vec<f32>,
    pub timestamp: Vec<i64>,
    /// Index into `node_names`.
    pub node: Vec<u32>,
    pub partition: Vec<i32>,
    pub offset: Vec<i64>,
    pub node_names: Vec<String>,
    node_index: HashMap<String, u32>,
    pub quarantined: Vec<Quarantined>,
    pub messages: u64,
    /// Records outside a time window that selects by timestamp: not read, not invalid.
    pub skipped: u64,
    /// Confluent schema ids seen, with how many messages carried each.
    pub schema_ids: std::collections::BTreeMap<u32, u64>,
    /// Schema GUIDs seen in `__value_schema_id` headers, with how many messages carried each.
    pub schema_guids: std::collections::BTreeMap<String, u64>,
}

/// What a time window does to a record whose own `timestamp_ms` lies outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeRule {
    /// No time window.
    Any,
    /// The record was fetched as part of the window, so it is invalid (`outside_window`):
    /// Kafka, where the broker chose the offsets by time.
    Reject(i64, i64),
    /// The window selects records by their timestamp; others are skipped, not invalid:
    /// files, which have no index by time.
    Select(i64, i64),
}

/// Decodes and validates messages; one per worker thread.
pub struct Decoder<'a> {
    features: &'a FeatureSet,
    time: TimeRule,
    format: PayloadFormat,
    fv: FeatureVector,
    row: Vec<f32>,
    pub out: Columns,
}

impl<'a> Decoder<'a> {
    pub fn new(features: &'a FeatureSet, time: TimeRule) -> Self {
        Self::with_format(features, time, PayloadFormat::Auto)
    }

    pub fn with_format(features: &'a FeatureSet, time: TimeRule, format: PayloadFormat) -> Self {
        Self {
            features,
            time,
            format,
            fv: FeatureVector::default(),
            row: vec![0.0; features.len()],
            out: Columns::new(features.len()),
        }
    }

    fn reject(
        &mut self,
        partition: i32,
        offset: i64,
        reason: Reason,
        detail: String,
        with_id: bool,
    ) {
        let (node_id, timestamp_ms) = if with_id {
            (Some(self.fv.node_id.clone()), Some(self.fv.timestamp_ms))
        } else {
            (None, None)
        };
        self.out.quarantined.push(Quarantined {
            partition,
            offset,
            reason,
            detail,
            node_id,
            timestamp_ms,
        });
    }

    /// Decodes one message and keeps it as a row or as a quarantined record.
    pub fn push(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        self.push_framed(partition, offset, payload, None);
    }

    /// `push` for a message that may carry a `__value_schema_id` header (`schema_header`):
    /// with one (and any format but raw) the value is a bare FeatureVector.
    pub fn push_framed(
        &mut self,
        partition: i32,
        offset: i64,
        payload: &[u8],
        schema_header: Option<&[u8]>,
    ) {
        self.out.messages += 1;
        self.fv.clear();
        if let (Some(h), false) = (schema_header, self.format == PayloadFormat::Raw) {
            match schema_guid(h) {
                Ok(guid) => match self.out.schema_guids.get_mut(&guid) {
                    Some(n) => *n += 1,
                    None => {
                        self.out.schema_guids.insert(guid, 1);
                    }
                },
                Err((reason, detail)) => {
                    return self.reject(partition, offset, reason, detail, false)
                }
            }
            return self.decode(partition, offset, payload);
        }
        let payload = match unframe(payload, self.format) {
            Ok((bare, id)) => {
                if let Some(id) = id {
                    *self.out.schema_ids.entry(id).or_default() += 1;
                }
                bare
            }
            Err((reason, detail)) => return self.reject(partition, offset, reason, detail, false),
        };
        self.decode(partition, offset, payload);
    }

    /// Decodes and validates a bare FeatureVector.
    fn decode(&mut self, partition: i32, offset: i64, payload: &[u8]) {
        if let Err(e) = self.fv.merge(payload) {
            self.reject(partition, offset, Reason::Undecodable, e.to_string(), false);
            return;
        }
        if let TimeRule::Select(from, to) = self.time {
            let ts = self.fv.timestamp_ms;
            if ts < from || ts >= to {
                self.out.messages -= 1;
                self.out.skipped += 1;
                return;
            }
        }
        let power = match self.fv.power_watts {
            None => {
                return self.reject(
                    partition,
                    offset,
                    Reason::MissingTarget,
                    String::new(),
                    true,
                )
            }
            Some(p) if !p.is_finite() => {
                return self.reject(
                    partition,
                    offset,
                    Reason::NonFiniteTarget,
                    p.to_string(),
                    true,
                )
            }
            Some(p) if p < 0.0 => {
                return self.reject(
                    partition,
                    offset,
                    Reason::NegativeTarget,
                    p.to_string(),
                    true,
                )
            }
            Some(p) => p,
        };
        for (j, src) in self.features.sources().iter().enumerate() {
            let v = match src {
                FeatureSource::Metric(i) => metric(&self.fv, *i),
                FeatureSource::Extra(key) => self.fv.extra.get(key).copied(),
            };
            self.row[j] = match v {
                None => f32::NAN,
                Some(v) if v.is_finite() => v as f32,
                Some(v) => {
                    let detail = format!("{}={v}", self.features.names()[j]);
                    return self.reject(partition, offset, Reason::NonFiniteFeature, detail, true);
                }
            };
        }
        if let TimeRule::Reject(from, to) = self.time {
            let ts = self.fv.timestamp_ms;
            if ts < from || ts >= to {
                let detail = format!("timestamp_ms {ts} outside [{from}, {to})");
                return self.reject(partition, offset, Reason::OutsideWindow, detail, true);
            }
        }
        let node = match self.out.node_index.get(self.fv.node_id.as_str()) {
            Some(&n) => n,
            None => {
                let n = self.out.node_names.len() as u32;
                self.out.node_names.push(self.fv.node_id.clone());
                self.out.node_index.insert(self.fv.node_id.clone(), n);
                n
            }
        };
        self.out.values.extend_from_slice(&self.row);
        self.out.power.push(power as f32);
        self.out.timestamp.push(self.fv.timestamp_ms);
        self.out.node.push(node);
        self.out.partition.push(partition);
        self.out.offset.push(offset);
    }
}

impl Columns {
    pub fn new(d: usize) -> Self {
        Self {
            d,
            ..Default::default()
        }
    }

    pub fn rows(&self) -> usize {
        self.power.len()
    }

    /// Makes room for `rows` more rows, exactly.
    pub fn reserve_exact(&mut self, rows: usize) {
        self.values.reserve_exact(rows * self.d);
        self.power.reserve_exact(rows);
        self.timestamp.reserve_exact(rows);
        self.node.reserve_exact(rows);
        self.partition.reserve_exact(rows);
        self.offset.reserve_exact(rows);
    }

    /// Appends another worker's columns, re-numbering its node ids.
    /// Moves the rows `rows` (ascending) to the quarantine with `reason` and their details.
    pub fn quarantine_rows(&mut self, rows: &[(usize, String)], reason: Reason) {
        if rows.is_empty() {
            return;
        }
        let mut drop = vec![false; self.rows()];
        for (i, detail) in rows {
            drop[*i] = true;
            self.quarantined.push(Quarantined {
                partition: self.partition[*i],
                offset: self.offset[*i],
                reason,
                detail: detail.clone(),
                node_id: Some(self.node_names[self.node[*i] as usize].clone()),
                timestamp_ms: Some(self.timestamp[*i]),
            });
        }
        let d = self.d;
        let mut k = 0;
        for (i, &dropped) in drop.iter().enumerate() {
            if dropped {
                continue;
            }
            if k != i {
                self.values.copy_within(i * d..(i + 1) * d, k * d);
                self.power[k] = self.power[i];
                self.timestamp[k] = self.timestamp[i];
                self.node[k] = self.node[i];
                self.partition[k] = self.partition[i];
                self.offset[k] = self.offset[i];
            }
            k += 1;
        }
        self.values.truncate(k * d);
        self.power.truncate(k);
        self.timestamp.truncate(k);
        self.node.truncate(k);
        self.partition.truncate(k);
        self.offset.truncate(k);
    }

    pub fn append(&mut self, other: Columns) {
        let remap: Vec<u32> = other
            .node_names
            .iter()
            .map(|name| match self.node_index.get(name) {
                Some(&n) => n,
                None => {
                    let n = self.node_names.len() as u32;
                    self.node_names.push(name.clone());
                    self.node_index.insert(name.clone(), n);
                    n
                }
            })
            .collect();
        self.values.extend_from_slice(&other.values);
        self.power.extend_from_slice(&other.power);
        self.timestamp.extend_from_slice(&other.timestamp);
        self.node
            .extend(other.node.iter().map(|&n| remap[n as usize]));
        self.partition.extend_from_slice(&other.partition);
        self.offset.extend_from_slice(&other.offset);
        self.quarantined.extend(other.quarantined);
        self.messages += other.messages;
        self.skipped += other.skipped;
        for (id, n) in other.schema_ids {
            *self.schema_ids.entry(id).or_default() += n;
        }
        for (guid, n) in other.schema_guids {
            *self.schema_guids.entry(guid).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confluent_framing_is_unframed_and_bad_framing_has_its_reason() {
        let fv = b"\x0a\x01a";
        // Magic 0, schema id 7, message index [0] as a single 0.
        let framed = [&[0u8, 0, 0, 0, 7, 0][..], fv].concat();
        assert_eq!(
            unframe(&framed, PayloadFormat::Auto),
            Ok((&fv[..], Some(7)))
        );
        assert_eq!(
            unframe(&framed, PayloadFormat::Confluent),
            Ok((&fv[..], Some(7)))
        );
        // The explicit form of [0]: length 1 (zig-zag 2), index 0.
        let explicit = [&[0u8, 0, 0, 1, 0, 2, 0][..], fv].concat();
        assert_eq!(
            unframe(&explicit, PayloadFormat::Auto),
            Ok((&fv[..], Some(256)))
        );
        assert_eq!(unframe(fv, PayloadFormat::Auto), Ok((&fv[..], None)));
        assert_eq!(
            unframe(&framed, PayloadFormat::Raw),
            Ok((&framed[..], None))
        );
        let other = [&[0u8, 0, 0, 0, 7, 2, 2][..], fv].concat();
        let (reason, detail) = unframe(&other, PayloadFormat::Auto).unwrap_err();
        assert_eq!(reason, Reason::WrongMessageType);
        assert!(
            detail.contains("schema id 7") && detail.contains("[1]"),
            "{detail}"
        );
        let (reason, _) = unframe(fv, PayloadFormat::Confluent).unwrap_err();
        assert_eq!(reason, Reason::UnknownFraming);
        let (reason, _) = unframe(&[0, 0, 1], PayloadFormat::Auto).unwrap_err();
        assert_eq!(reason, Reason::Undecodable);
        // A negative zig-zag value is read as such (-1 = 1), and refused as a count.
        assert_eq!(zigzag_varint(&[1]), Some((-1, 1)));
        assert_eq!(zigzag_varint(&[0xac, 0x02]), Some((150, 2)));
    }

    #[test]
    fn the_header_form_names_a_guid_and_its_value_is_bare() {
        let guid: [u8; 16] = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        let header = [&[1u8][..], &guid, &[0]].concat();
        assert_eq!(
            schema_guid(&header).unwrap(),
            "12345678-9abc-def0-0123-456789abcdef"
        );
        // Without message indexes (non-protobuf serializers) it is the GUID alone.
        assert!(schema_guid(&header[..17]).is_ok());
        let (reason, detail) = schema_guid(&[&[0u8][..], &guid].concat()).unwrap_err();
        assert_eq!(reason, Reason::UnknownFraming);
        assert!(detail.contains("__value_schema_id"), "{detail}");
        let other_type = [&[1u8][..], &guid, &[2, 2]].concat();
        assert_eq!(
            schema_guid(&other_type).unwrap_err().0,
            Reason::WrongMessageType
        );
        assert_eq!(
            schema_guid(&header[..9]).unwrap_err().0,
            Reason::Undecodable
        );

        // Through the decoder: a bare value with the header is read in auto and confluent
        // form (confluent would refuse the bare value without it), and counted by GUID.
        let features = FeatureSet::default_metrics();
        let mut bare = Vec::new();
        good().encode(&mut bare).unwrap();
        for format in [PayloadFormat::Auto, PayloadFormat::Confluent] {
            let mut dec = Decoder::with_format(&features, TimeRule::Any, format);
            dec.push_framed(0, 0, &bare, Some(&header));
            dec.push_framed(0, 1, &bare, Some(&other_type));
            dec.push_framed(0, 2, &bare, None);
            assert_eq!(
                dec.out.rows(),
                1 + usize::from(format == PayloadFormat::Auto)
            );
            assert_eq!(
                dec.out
                    .schema_guids
                    .get("12345678-9abc-def0-0123-456789abcdef"),
                Some(&1)
            );
            let reasons: Vec<Reason> = dec.out.quarantined.iter().map(|q| q.reason).collect();
            let mut want = vec![Reason::WrongMessageType];
            if format == PayloadFormat::Confluent {
                want.push(Reason::UnknownFraming);
            }
            assert_eq!(reasons, want);
        }
        // raw ignores the header: the value is read as it is.
        let mut dec = Decoder::with_format(&features, TimeRule::Any, PayloadFormat::Raw);
        dec.push_framed(0, 0, &bare, Some(&other_type));
        assert_eq!((dec.out.rows(), dec.out.schema_guids.len()), (1, 0));
    }

    fn good() -> FeatureVector {
        let mut fv = FeatureVector {
            node_id: "n1".into(),
            timestamp_ms: 1000,
            power_watts: Some(100.0),
            ..Default::default()
        };
        for i in 0..20 {
            crate::schema::set_metric(&mut fv, i, Some(i as f64));
        }
        fv
    }

    fn run(msgs: &[Vec<u8>], time: TimeRule) -> Columns {
        let fs = FeatureSet::default_metrics();
        let mut d = Decoder::new(&fs, time);
        for (i, m) in msgs.iter().enumerate() {
            d.push(0, i as i64, m);
        }
        d.out
    }

    #[test]
    fn each_invalid_kind_gets_its_reason() {
        let mut nan = good();
        nan.cpu_util = Some(f64::NAN);
        let mut neg = good();
        neg.power_watts = Some(-1.0);
        let mut none = good();
        none.power_watts = None;
        let mut inf = good();
        inf.power_watts = Some(f64::INFINITY);
        let mut missing = good();
        missing.mem_util = None;
        let msgs = vec![
            good().encode_to_vec(),
            b"\x0a\xff\xff\xff".to_vec(),
            nan.encode_to_vec(),
            neg.encode_to_vec(),
            none.encode_to_vec(),
            inf.encode_to_vec(),
            missing.encode_to_vec(),
        ];
        let c = run(&msgs, TimeRule::Any);
        assert_eq!(
            c.rows(),
            2,
            "the good one and the one with an absent feature"
        );
        assert!(
            c.values[20 + 1].is_nan(),
            "absent feature kept as NaN for imputation"
        );
        let reasons: Vec<_> = c.quarantined.iter().map(|q| (q.offset, q.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                (1, Reason::Undecodable),
                (2, Reason::NonFiniteFeature),
                (3, Reason::NegativeTarget),
                (4, Reason::MissingTarget),
                (5, Reason::NonFiniteTarget),
            ]
        );
        assert_eq!(c.quarantined[1].detail, "cpu_util=NaN");
    }

    #[test]
    fn time_window_rejects_outside_records() {
        let c = run(&[good().encode_to_vec()], TimeRule::Reject(2000, 3000));
        assert_eq!(c.rows(), 0);
        assert_eq!(c.quarantined[0].reason, Reason::OutsideWindow);
        let c = run(&[good().encode_to_vec()], TimeRule::Select(2000, 3000));
        assert_eq!(
            (c.rows(), c.quarantined.len(), c.messages, c.skipped),
            (0, 0, 0, 1)
        );
    }
}
