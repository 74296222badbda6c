//! What the fields of `FeatureVector` mean to training: the 20 named metrics in wire order,
//! how a configured feature name (`cpu_util`, `extra.<key>`) reads its value from a message,
//! and the target. Must not know about Kafka, files or models.

use crate::error::{Error, Result};
use crate::proto::FeatureVector;

/// The 20 named metrics of DESIGN §3, in field order (cpu_util = 4 … thread_count = 23).
pub const METRICS: [&str; 20] = [
    "cpu_util",
    "mem_util",
    "disk_io",
    "net_io",
    "gpu_util",
    "gpu_mem",
    "temp_cpu",
    "temp_gpu",
    "fan_speed",
    "voltage",
    "current",
    "frequency",
    "cache_miss",
    "cache_hit",
    "context_switch",
    "page_fault",
    "interrupts",
    "load_avg",
    "process_count",
    "thread_count",
];

/// The training target.
/// The `FeatureVector` schema version this build reads and records in the ONNX metadata.
pub const SCHEMA_VERSION: u32 = 1;

pub const TARGET: &str = "power_watts";

/// Protobuf field number of the first metric; metric `i` of `METRICS` is field `FIRST + i`.
pub const FIRST_METRIC_FIELD: u32 = 4;

/// Where a selected feature's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureSource {
    /// One of the 20 named metrics, by index into `METRICS`.
    Metric(usize),
    /// A key of the `extra` map.
    Extra(String),
}

/// The features a pull selects, in column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSet {
    names: Vec<String>,
    sources: Vec<FeatureSource>,
}

impl FeatureSet {
    /// The default: the 20 named metrics.
    pub fn default_metrics() -> Self {
        Self::parse(&METRICS.map(String::from)).expect("the named metrics are valid")
    }

    /// Resolves names (`cpu_util`, `extra.gpu_power`); rejects unknown and repeated names.
    pub fn parse(names: &[String]) -> Result<Self> {
        if names.is_empty() {
            return Err(Error::usage("features", "no feature selected"));
        }
        let mut sources = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(Error::usage(
                    "features",
                    format!("'{name}' is listed twice"),
                ));
            }
            let source = if let Some(key) = name.strip_prefix("extra.") {
                if key.is_empty() {
                    return Err(Error::usage("features", "'extra.' needs a key"));
                }
                FeatureSource::Extra(key.to_string())
            } else if let Some(i) = METRICS.iter().position(|m| m == name) {
                FeatureSource::Metric(i)
            } else {
                return Err(Error::usage(
                    "features",
                    format!(
                        "unknown feature '{name}' (use one of the named metrics, e.g. cpu_util, or extra.<key>)"
                    ),
                ));
            };
            sources.push(source);
        }
        Ok(Self {
            names: names.to_vec(),
            sources,
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn sources(&self) -> &[FeatureSource] {
        &self.sources
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The value of named metric `i` of a decoded message (None when absent).
pub fn metric(fv: &FeatureVector, i: usize) -> Option<f64> {
    match i {
        0 => fv.cpu_util,
        1 => fv.mem_util,
        2 => fv.disk_io,
        3 => fv.net_io,
        4 => fv.gpu_util,
        5 => fv.gpu_mem,
        6 => fv.temp_cpu,
        7 => fv.temp_gpu,
        8 => fv.fan_speed,
        9 => fv.voltage,
        10 => fv.current,
        11 => fv.frequency,
        12 => fv.cache_miss,
        13 => fv.cache_hit,
        14 => fv.context_switch,
        15 => fv.page_fault,
        16 => fv.interrupts,
        17 => fv.load_avg,
        18 => fv.process_count,
        19 => fv.thread_count,
        _ => None,
    }
}

/// Sets named metric `i` (used by the generator).
pub fn set_metric(fv: &mut FeatureVector, i: usize, v: Option<f64>) {
    let slot = match i {
        0 => &mut fv.cpu_util,
        1 => &mut fv.mem_util,
        2 => &mut fv.disk_io,
        3 => &mut fv.net_io,
        4 => &mut fv.gpu_util,
        5 => &mut fv.gpu_mem,
        6 => &mut fv.temp_cpu,
        7 => &mut fv.temp_gpu,
        8 => &mut fv.fan_speed,
        9 => &mut fv.voltage,
        10 => &mut fv.current,
        11 => &mut fv.frequency,
        12 => &mut fv.cache_miss,
        13 => &mut fv.cache_hit,
        14 => &mut fv.context_switch,
        15 => &mut fv.page_fault,
        16 => &mut fv.interrupts,
        17 => &mut fv.load_avg,
        18 => &mut fv.process_count,
        19 => &mut fv.thread_count,
        _ => panic!("metric index {i} out of range"),
    };
    *slot = v;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_accessors_follow_field_order() {
        let mut fv = FeatureVector::default();
        for i in 0..METRICS.len() {
            set_metric(&mut fv, i, Some(i as f64));
        }
        for i in 0..METRICS.len() {
            assert_eq!(metric(&fv, i), Some(i as f64));
        }
        assert_eq!(fv.cpu_util, Some(0.0));
        assert_eq!(fv.thread_count, Some(19.0));
    }

    #[test]
    fn feature_names_are_checked() {
        assert_eq!(FeatureSet::default_metrics().len(), 20);
        let ok = FeatureSet::parse(&["cpu_util".into(), "extra.gpu_power".into()]).unwrap();
        assert_eq!(ok.sources()[1], FeatureSource::Extra("gpu_power".into()));
        let err = FeatureSet::parse(&["cpu".into()]).unwrap_err().to_string();
        assert!(err.contains("unknown feature 'cpu'"), "{err}");
        assert!(FeatureSet::parse(&["cpu_util".into(), "cpu_util".into()]).is_err());
        assert!(FeatureSet::parse(&[]).is_err());
    }
}
