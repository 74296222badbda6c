//! Deterministic synthetic node telemetry: the test data and the embedded default source.
//!
//! The model (same seed → same bytes, on any machine, since it uses ChaCha8 and no
//! platform maths beyond IEEE operations):
//! - nodes differ in idle power (60–140 W) and in phase; a third of them have no GPU;
//! - cpu_util follows a slow per-node wave plus noise; memory follows cpu; frequency
//!   scales with cpu; temperatures follow utilisation (and frequency); the fan follows the
//!   hotter temperature; threads follow processes; processes follow cpu; cache misses,
//!   context switches and interrupts grow with cpu; current = power / voltage;
//! - power = idle + 1.1·cpu·freq/3 + 2.2·gpu + 0.3·mem + 0.05·disk + 0.002·fan + N(0, 3²),
//!   a nonlinear function of several metrics: the N(0, 3²) noise sets the ceiling on R².
//!
//! Bad records are injected at a configurable ratio, spread evenly over the chosen kinds.
//! Must not know about validation: it only makes bytes.

use std::str::FromStr;

use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Gamma, Normal, Poisson};

use crate::error::{Error, Result};
use crate::proto::FeatureVector;
use crate::schema::{set_metric, METRICS};

/// Timestamp of the first record: 2023-11-14T22:13:20Z.
pub const BASE_TIMESTAMP_MS: i64 = 1_700_000_000_000;
/// Time between consecutive records (all nodes together).
pub const STEP_MS: i64 = 250;
/// Standard deviation of the power noise, in watts.
pub const POWER_NOISE_W: f64 = 3.0;

/// The kinds of bad record the generator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadKind {
    /// Bytes that are not a FeatureVector.
    Undecodable,
    /// A selected feature (cpu_util) is NaN.
    Nan,
    /// power_watts is negative.
    NegativePower,
    /// power_watts is absent.
    MissingTarget,
    /// mem_util is absent (valid: imputed).
    MissingFeature,
    /// The previous record of the same node is sent again with +1 W (valid: deduplicated).
    Duplicate,
}

impl BadKind {
    pub const ALL: [BadKind; 6] = [
        BadKind::Undecodable,
        BadKind::Nan,
        BadKind::NegativePower,
        BadKind::MissingTarget,
        BadKind::MissingFeature,
        BadKind::Duplicate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BadKind::Undecodable => "undecodable",
            BadKind::Nan => "nan",
            BadKind::NegativePower => "negative-power",
            BadKind::MissingTarget => "missing-target",
            BadKind::MissingFeature => "missing-feature",
            BadKind::Duplicate => "duplicate",
        }
    }
}

impl FromStr for BadKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BadKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let all: Vec<_> = BadKind::ALL.iter().map(|k| k.name()).collect();
                Error::usage(
                    "bad kind",
                    format!("'{s}' (choose from {})", all.join(", ")),
                )
            })
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateSpec {
    pub rows: u64,
    pub nodes: u32,
    pub seed: u64,
    pub bad_ratio: f64,
    pub bad_kinds: Vec<BadKind>,
    /// Changes for monitoring tests and demos (all neutral by default).
    pub shift: Shift,
}

/// A different world than the default one: a new hardware mix (GPU utilisation raised,
/// power following the same relation), a changed relation (power scaled), or GPU
/// utilisation absent from a share of the messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shift {
    pub gpu_shift: f64,
    pub power_scale: f64,
    pub gpu_missing: f64,
}

impl Default for Shift {
    fn default() -> Self {
        Shift {
            gpu_shift: 0.0,
            power_scale: 1.0,
            gpu_missing: 0.0,
        }
    }
}

/// One generated message: its key (node id), timestamp and bytes.
pub struct Record {
    pub key: String,
    pub timestamp_ms: i64,
    pub payload: Vec<u8>,
    pub bad: Option<BadKind>,
}

struct Node {
    idle: f64,
    phase: f64,
    has_gpu: bool,
    last: Option<FeatureVector>,
}

/// An endless, deterministic stream of records; take `spec.rows` of them.
pub struct Generator {
    spec: GenerateSpec,
    rng: ChaCha8Rng,
    bad_rng: ChaCha8Rng,
    nodes: Vec<Node>,
    i: u64,
    noise: Normal<f64>,
    gpu: Beta<f64>,
    procs: Poisson<f64>,
    disk: Gamma<f64>,
    net: Gamma<f64>,
    miss: Gamma<f64>,
    hit: Gamma<f64>,
    ctx: Gamma<f64>,
    fault: Gamma<f64>,
    irq: Gamma<f64>,
    load: Gamma<f64>,
}

impl Generator {
    pub fn new(spec: GenerateSpec) -> Result<Self> {
        if spec.nodes == 0 {
            return Err(Error::usage("--nodes", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&spec.bad_ratio) {
            return Err(Error::usage(
                "--bad-ratio",
                format!("{} is not between 0 and 1", spec.bad_ratio),
            ));
        }
        if spec.bad_ratio > 0.0 && spec.bad_kinds.is_empty() {
            return Err(Error::usage("--bad-kinds", "empty while --bad-ratio > 0"));
        }
        let mut node_rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x6e6f_6465);
        let nodes = (0..spec.nodes)
            .map(|n| Node {
                idle: node_rng.random_range(60.0..140.0),
                phase: node_rng.random_range(0.0..std::f64::consts::TAU),
                has_gpu: n % 3 != 0,
                last: None,
            })
            .collect();
        let g = |shape, scale| Gamma::new(shape, scale).expect("valid gamma");
        Ok(Self {
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
            bad_rng: ChaCha8Rng::seed_from_u64(spec.seed.wrapping_add(1)),
            nodes,
            i: 0,
            noise: Normal::new(0.0, 1.0).expect("valid normal"),
            gpu: Beta::new(2.0, 3.0).expect("valid beta"),
            procs: Poisson::new(180.0).expect("valid poisson"),
            disk: g(2.0, 20.0),
            net: g(2.0, 30.0),
            miss: g(2.0, 1e4),
            hit: g(5.0, 1e5),
            ctx: g(2.0, 500.0),
            fault: g(2.0, 100.0),
            irq: g(2.0, 300.0),
            load: g(1.0, 0.3),
            spec,
        })
    }

    fn n(&mut self, sd: f64) -> f64 {
        self.noise.sample(&mut self.rng) * sd
    }

    /// The clean message of record `i`.
    fn clean(&mut self, node_ix: usize) -> FeatureVector {
        let i = self.i;
        let (idle, phase, has_gpu) = {
            let n = &self.nodes[node_ix];
            (n.idle, n.phase, n.has_gpu)
        };
        let t = i as f64;
        let cpu = (50.0 + 35.0 * (t / 500.0 + phase).sin() + self.n(10.0)).clamp(0.0, 100.0);
        let gpu = if has_gpu {
            (self.gpu.sample(&mut self.rng) * 100.0 + self.spec.shift.gpu_shift).clamp(0.0, 100.0)
        } else {
            0.0
        };
        let mem = (0.5 * cpu + 20.0 + self.n(8.0)).clamp(0.0, 100.0);
        let freq = 1.2 + 2.3 * (cpu / 100.0).powf(0.7) + self.n(0.05);
        let temp_cpu = 35.0 + 0.45 * cpu + 4.0 * freq + self.n(2.0);
        let temp_gpu = 30.0 + 0.5 * gpu + self.n(2.0);
        let fan = 800.0 + 25.0 * temp_cpu.max(temp_gpu) + self.n(50.0);
        let procs = self.procs.sample(&mut self.rng) + cpu.floor();
        let threads = procs * self.rng.random_range(4.0..8.0);
        let disk = self.disk.sample(&mut self.rng);
        let net = self.net.sample(&mut self.rng);
        let power = idle
            + 1.1 * cpu * freq / 3.0
            + 2.2 * gpu
            + 0.3 * mem
            + 0.05 * disk
            + 0.002 * fan
            + self.n(POWER_NOISE_W);
        let power = power * self.spec.shift.power_scale;
        let voltage = 12.0 + self.n(0.05);
        let values = [
            cpu,
            mem,
            disk,
            net,
            gpu,
            (0.8 * gpu + 5.0 + self.n(5.0)).clamp(0.0, 100.0),
            temp_cpu,
            temp_gpu,
            fan,
            voltage,
            power / voltage + self.n(0.5),
            freq,
            self.miss.sample(&mut self.rng) * (1.0 + cpu / 100.0),
            self.hit.sample(&mut self.rng),
            50.0 * cpu + self.ctx.sample(&mut self.rng),
            self.fault.sample(&mut self.rng),
            20.0 * cpu + self.irq.sample(&mut self.rng),
            cpu / 25.0 + self.load.sample(&mut self.rng),
            procs,
            threads,
        ];
        let mut fv = FeatureVector {
            node_id: format!("node-{node_ix:03}"),
            timestamp_ms: BASE_TIMESTAMP_MS + i as i64 * STEP_MS,
            power_watts: Some(power),
            schema_version: 1,
            ..Default::default()
        };
        let gpu_absent = self.spec.shift.gpu_missing > 0.0
            && self.rng.random::<f64>() < self.spec.shift.gpu_missing;
        for (m, v) in values.into_iter().enumerate() {
            // Metric 4 is gpu_util.
            set_metric(
                &mut fv,
                m,
                if m == 4 && gpu_absent { None } else { Some(v) },
            );
        }
        debug_assert_eq!(values.len(), METRICS.len());
        fv
    }
}

impl Iterator for Generator {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        let node_ix = self.rng.random_range(0..self.nodes.len());
        let mut fv = self.clean(node_ix);
        self.i += 1;
        let bad = if self.spec.bad_ratio > 0.0 && self.bad_rng.random::<f64>() < self.spec.bad_ratio
        {
            let k = self.bad_rng.random_range(0..self.spec.bad_kinds.len());
            Some(self.spec.bad_kinds[k])
        } else {
            None
        };
        let key = fv.node_id.clone();
        let payload = match bad {
            Some(BadKind::Undecodable) => {
                // A field header announcing more bytes than follow: no protobuf decoder
                // accepts it.
                b"\x0a\xff\xff\xff garbage".to_vec()
            }
            Some(BadKind::Nan) => {
                fv.cpu_util = Some(f64::NAN);
                fv.encode_to_vec()
            }
            Some(BadKind::NegativePower) => {
                fv.power_watts = Some(-5.0);
                fv.encode_to_vec()
            }
            Some(BadKind::MissingTarget) => {
                fv.power_watts = None;
                fv.encode_to_vec()
            }
            Some(BadKind::MissingFeature) => {
                fv.mem_util = None;
                fv.encode_to_vec()
            }
            Some(BadKind::Duplicate) => match self.nodes[node_ix].last.clone() {
                Some(mut prev) => {
                    prev.power_watts = prev.power_watts.map(|p| p + 1.0);
                    let payload = prev.encode_to_vec();
                    return Some(Record {
                        key,
                        timestamp_ms: prev.timestamp_ms,
                        payload,
                        bad,
                    });
                }
                None => fv.encode_to_vec(),
            },
            None => fv.encode_to_vec(),
        };
        let timestamp_ms = fv.timestamp_ms;
        if bad.is_none() || bad == Some(BadKind::MissingFeature) {
            self.nodes[node_ix].last = Some(fv);
        }
        Some(Record {
            key,
            timestamp_ms,
            payload,
            bad,
        })
    }
}

/// What `generate` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateReport {
    pub target: String,
    pub records: u64,
    pub bytes: u64,
    pub bad: std::collections::BTreeMap<&'static str, u64>,
    pub seconds: f64,
}

fn tally(bad: &mut std::collections::BTreeMap<&'static str, u64>, r: &Record) {
    if let Some(k) = r.bad {
        *bad.entry(k.name()).or_default() += 1;
    }
}

/// Writes `spec.rows` records to a length-delimited file, atomically.
pub fn write_file(spec: &GenerateSpec, path: &std::path::Path) -> Result<GenerateReport> {
    let started = std::time::Instant::now();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    let records = Generator::new(spec.clone())?.take(spec.rows as usize);
    let mut bad = std::collections::BTreeMap::new();
    let mut bytes = 0u64;
    crate::fsutil::write_with(path, |file| {
        let mut out = std::io::BufWriter::new(file);
        for r in records {
            tally(&mut bad, &r);
            bytes += r.payload.len() as u64;
            crate::framing::write_delimited(&mut out, &r.payload)?;
        }
        std::io::Write::flush(&mut out)
    })
    .map_err(|e| Error::write(path, e))?;
    Ok(GenerateReport {
        target: path.display().to_string(),
        records: spec.rows,
        bytes,
        bad,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Produces `spec.rows` records to a topic (created with `partitions` when missing).
pub fn produce(
    spec: &GenerateSpec,
    kafka: &crate::kafka::KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<GenerateReport> {
    let started = std::time::Instant::now();
    crate::kafka::ensure_topic(kafka, topic, partitions)?;
    let mut w = crate::kafka::TopicWriter::connect(kafka, topic)?;
    let mut bad = std::collections::BTreeMap::new();
    let mut bytes = 0u64;
    for r in Generator::new(spec.clone())?.take(spec.rows as usize) {
        tally(&mut bad, &r);
        bytes += r.payload.len() as u64;
        w.send(&r.key, r.timestamp_ms, &r.payload)?;
    }
    let records = w.finish()?;
    Ok(GenerateReport {
        target: format!("kafka:{topic}"),
        records,
        bytes,
        bad,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64, bad_ratio: f64) -> GenerateSpec {
        GenerateSpec {
            rows: 0,
            nodes: 16,
            seed,
            bad_ratio,
            bad_kinds: BadKind::ALL.to_vec(),
            shift: Shift::default(),
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a: Vec<_> = Generator::new(spec(7, 0.1))
            .unwrap()
            .take(500)
            .map(|r| r.payload)
            .collect();
        let b: Vec<_> = Generator::new(spec(7, 0.1))
            .unwrap()
            .take(500)
            .map(|r| r.payload)
            .collect();
        let c: Vec<_> = Generator::new(spec(8, 0.1))
            .unwrap()
            .take(500)
            .map(|r| r.payload)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bad_kinds_appear_in_about_their_share() {
        let n = 20_000;
        let recs: Vec<_> = Generator::new(spec(1, 0.3)).unwrap().take(n).collect();
        for kind in BadKind::ALL {
            let count = recs.iter().filter(|r| r.bad == Some(kind)).count() as f64;
            let expected = n as f64 * 0.3 / 6.0;
            assert!(
                (count - expected).abs() < 0.15 * expected,
                "{kind:?}: {count} vs {expected}"
            );
        }
        // Undecodable payloads really do not decode.
        let garbage = recs
            .iter()
            .find(|r| r.bad == Some(BadKind::Undecodable))
            .unwrap();
        assert!(FeatureVector::decode(garbage.payload.as_slice()).is_err());
    }

    #[test]
    fn metrics_are_correlated_as_documented() {
        let rows: Vec<FeatureVector> = Generator::new(spec(3, 0.0))
            .unwrap()
            .take(5000)
            .map(|r| FeatureVector::decode(r.payload.as_slice()).unwrap())
            .collect();
        let col = |f: fn(&FeatureVector) -> Option<f64>| -> Vec<f64> {
            rows.iter().map(|r| f(r).unwrap()).collect()
        };
        let corr = |a: &[f64], b: &[f64]| {
            let n = a.len() as f64;
            let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
            let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
            let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
            let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
            cov / (va * vb).sqrt()
        };
        let cpu = col(|r| r.cpu_util);
        assert!(
            corr(&cpu, &col(|r| r.temp_cpu)) > 0.8,
            "temperature follows utilisation"
        );
        assert!(
            corr(&col(|r| r.temp_cpu), &col(|r| r.fan_speed)) > 0.5,
            "fan follows temperature"
        );
        assert!(
            corr(&col(|r| r.process_count), &col(|r| r.thread_count)) > 0.5,
            "threads follow processes"
        );
        assert!(corr(&cpu, &col(|r| r.frequency)) > 0.9, "frequency scaling");
        assert!(
            corr(&cpu, &col(|r| r.power_watts)) > 0.3,
            "power depends on cpu"
        );
    }
}
