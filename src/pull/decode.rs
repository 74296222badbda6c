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
    MissingTarget,
    NonFiniteTarget,
    NegativeTarget,
    NonFiniteFeature,
    OutsideWindow,
    /// Not invalid: an earlier copy of a (node_id, timestamp_ms) seen again later.
    Duplicate,
}

impl Reason {
    pub const INVALID: [Reason; 6] = [
        Reason::Undecodable,
        Reason::MissingTarget,
        Reason::NonFiniteTarget,
        Reason::NegativeTarget,
        Reason::NonFiniteFeature,
        Reason::OutsideWindow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Undecodable => "undecodable",
            Reason::MissingTarget => "missing_target",
            Reason::NonFiniteTarget => "non_finite_target",
            Reason::NegativeTarget => "negative_target",
            Reason::NonFiniteFeature => "non_finite_feature",
            Reason::OutsideWindow => "outside_window",
            Reason::Duplicate => "duplicate",
        }
    }
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
    fv: FeatureVector,
    row: Vec<f32>,
    pub out: Columns,
}

impl<'a> Decoder<'a> {
    pub fn new(features: &'a FeatureSet, time: TimeRule) -> Self {
        Self {
            features,
            time,
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
        self.out.messages += 1;
        self.fv.clear();
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
