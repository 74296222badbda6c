//! The `pull` stage (DESIGN §3): read a bounded window of `FeatureVector` messages from Kafka
//! or a length-delimited file, validate and quarantine, deduplicate, split chronologically,
//! impute and standardise, and write a reproducible snapshot.
//!
//! Reading and decoding overlap: one thread reads (the Kafka consumer, or the file in
//! blocks) and hands batches to decoding workers over a bounded channel.

pub mod decode;
pub mod reference;
pub mod snapshot;
pub mod window;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::framing::{BlockReader, FrameError};
use crate::kafka::{KafkaConfig, PartitionRange, TopicReader};
use crate::progress::Progress;
use crate::schema::FeatureSet;
use decode::{Columns, Decoder, Reason, TimeRule};
use snapshot::{FeatureStats, FileInfo, Scaler, SnapshotSpec, SplitInfo, Staging};
pub use window::Window;

/// Where messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The telemetry fixture compiled into the binary (`fixtures/telemetry.pb`).
    Embedded,
    File(PathBuf),
    Kafka {
        topic: String,
    },
}

impl std::str::FromStr for Source {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "embedded" {
            return Ok(Source::Embedded);
        }
        if let Some(p) = s.strip_prefix("file:") {
            if p.is_empty() {
                return Err(Error::usage(
                    "--source",
                    "file: needs a path, e.g. file:fixtures/telemetry.pb",
                ));
            }
            Ok(Source::File(PathBuf::from(p)))
        } else if let Some(t) = s.strip_prefix("kafka:") {
            if t.is_empty() {
                return Err(Error::usage(
                    "--source",
                    "kafka: needs a topic, e.g. kafka:raw_metrics",
                ));
            }
            Ok(Source::Kafka {
                topic: t.to_string(),
            })
        } else {
            Err(Error::usage(
                "--source",
                format!("'{s}' (use embedded, file:PATH or kafka:TOPIC)"),
            ))
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Embedded => write!(f, "embedded"),
            Source::File(p) => write!(f, "file:{}", p.display()),
            Source::Kafka { topic } => write!(f, "kafka:{topic}"),
        }
    }
}

/// How the scaler is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScalerMode {
    /// Fit on this snapshot's train split (the default).
    Fit,
    /// Reuse a `scaler.json` (e.g. the production version's).
    Reuse(PathBuf),
}

/// Everything `pull` needs, resolved and validated.
#[derive(Debug, Clone)]
pub struct PullSettings {
    pub source: Source,
    pub kafka: KafkaConfig,
    pub window: Window,
    pub features: FeatureSet,
    pub out: PathBuf,
    pub train_fraction: f64,
    pub val_fraction: f64,
    pub max_invalid_ratio: f64,
    pub scaler: ScalerMode,
    /// Where quarantined records go when the pull fails its data-quality gate
    /// (on success they are part of the snapshot).
    pub quarantine: Option<PathBuf>,
    /// Commit the window's end offsets for the group once the snapshot is written.
    pub commit: bool,
    pub workers: usize,
    /// How message values are framed (DESIGN §3).
    pub payload_format: decode::PayloadFormat,
    /// `[expectations]` (or `--expectations FILE`), checked on the valid rows.
    pub expectations: Option<crate::expect::Expectations>,
}

/// `dataset.json`: the snapshot's lineage and description.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Dataset {
    pub format: String,
    pub source: SourceInfo,
    pub features: Vec<String>,
    pub target: String,
    pub counts: Counts,
    pub split: BTreeMap<String, SplitInfo>,
    pub scaler: ScalerInfo,
    pub feature_stats: Vec<FeatureStats>,
    /// The train split's reference for drift (format 2; absent in older snapshots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference: Vec<reference::ColumnReference>,
    pub files: Vec<FileInfo>,
    pub snapshot_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceInfo {
    pub kind: String,
    /// The topic, or the file's name.
    pub name: String,
    pub window: String,
    pub partitions: Vec<PartitionRange>,
    /// The Confluent Schema Registry ids the messages carried, with how many carried each
    /// (none for bare FeatureVectors).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schema_ids: BTreeMap<u32, u64>,
    /// The schema GUIDs of Confluent's header framing (`__value_schema_id`), with how many
    /// messages carried each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub schema_guids: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    /// Messages read from the window.
    pub messages: u64,
    pub valid: u64,
    pub duplicates: u64,
    pub rows: u64,
    pub invalid: BTreeMap<String, u64>,
    pub invalid_total: u64,
    pub invalid_ratio: f64,
    pub max_invalid_ratio: f64,
    /// Rows per feature where the value was absent and imputed with the training mean.
    pub imputed: BTreeMap<String, u64>,
    /// Time windows: messages scanned whose timestamps lie outside it (not invalid).
    pub skipped_outside_window: u64,
    /// Rows quarantined by `[expectations]` (`unexpected_value`; not invalid).
    #[serde(default)]
    pub unexpected: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScalerInfo {
    pub file: String,
    pub sha256: String,
    pub mode: String,
}

/// What a pull reports when it finishes.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub out: PathBuf,
    pub source: String,
    pub messages: u64,
    pub rows: u64,
    pub duplicates: u64,
    pub invalid: BTreeMap<String, u64>,
    pub invalid_ratio: f64,
    pub snapshot_sha256: String,
    pub seconds: f64,
    pub messages_per_s: f64,
}

/// Runs the pull. On any error nothing is left at `settings.out` that was not there before.
type Read = (Columns, SourceInfo, Option<TopicReader>);

fn read_source(settings: &PullSettings, progress: &Progress) -> Result<Read> {
    Ok(match &settings.source {
        Source::Embedded => {
            let (cols, info) = read_file(&Input::Embedded, settings, progress)?;
            (cols, info, None)
        }
        Source::File(path) => {
            let (cols, info) = read_file(&Input::File(path), settings, progress)?;
            (cols, info, None)
        }
        Source::Kafka { topic } => {
            let (cols, info, reader) = read_kafka(topic, settings, progress)?;
            (cols, info, Some(reader))
        }
    })
}

/// The window's records, decoded and validated as `pull` does (invalid ones quarantined),
/// raw and unsplit, with nothing written: what `monitor` scores.
pub fn read_window(settings: &PullSettings, progress: &Progress) -> Result<(Columns, SourceInfo)> {
    let (cols, info, _) = read_source(settings, progress)?;
    progress.finish();
    Ok((cols, info))
}

pub fn pull(settings: &PullSettings, progress: &Progress) -> Result<PullReport> {
    let started = Instant::now();
    let scaler = match &settings.scaler {
        ScalerMode::Fit => None,
        ScalerMode::Reuse(p) => Some(Scaler::load(p)?),
    };
    // Check the destination before any slow work.
    let staging = Staging::new(&settings.out)?;

    let (mut cols, mut source_info, reader) = read_source(settings, progress)?;
    progress.finish();
    source_info.schema_ids = std::mem::take(&mut cols.schema_ids);
    source_info.schema_guids = std::mem::take(&mut cols.schema_guids);
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "read and decoded"
    );

    let messages = cols.messages;
    if messages == 0 {
        return Err(Error::data(format!(
            "the window {} of {} holds no messages (widen --window)",
            settings.window, settings.source
        )));
    }
    let mut invalid: BTreeMap<String, u64> = Reason::INVALID
        .iter()
        .map(|r| (r.name().to_string(), 0))
        .collect();
    for q in &cols.quarantined {
        *invalid.entry(q.reason.name().to_string()).or_default() += 1;
    }
    let invalid_total: u64 = invalid.values().sum();
    let invalid_ratio = invalid_total as f64 / messages as f64;
    if invalid_ratio > settings.max_invalid_ratio {
        return Err(reject(settings, cols, &invalid, &source_info.name));
    }
    let valid = cols.rows() as u64;
    let unexpected = match &settings.expectations {
        None => 0,
        Some(e) => {
            let o = crate::expect::check_now(e, &cols, settings.features.names());
            if !o.findings.is_empty() {
                eprintln!("Expectations:\n\n{}", o.table());
            }
            if !o.failed().is_empty() {
                return Err(reject_expectations(settings, cols, &o, &source_info.name));
            }
            cols.quarantine_rows(&o.quarantine, Reason::UnexpectedValue);
            o.quarantine.len() as u64
        }
    };

    let spec = SnapshotSpec {
        features: settings.features.names().to_vec(),
        train: settings.train_fraction,
        val: settings.val_fraction,
        scaler,
    };
    let t = Instant::now();
    let plan = snapshot::plan(&mut cols, &spec)?;
    tracing::info!(
        seconds = t.elapsed().as_secs_f64(),
        "deduplicated, split, scaled"
    );
    let t = Instant::now();
    let (files, scaler_file) = write_files(&staging.dir, &cols, &plan, &spec, &source_info.name)?;
    let digest = snapshot::snapshot_digest(&files);
    tracing::info!(
        seconds = t.elapsed().as_secs_f64(),
        "wrote and hashed the files"
    );

    let rows: u64 = plan.split_info.iter().map(|(_, s)| s.rows).sum();
    let imputed = spec
        .features
        .iter()
        .enumerate()
        .map(|(j, name)| {
            (
                name.clone(),
                plan.split_info.iter().map(|(_, s)| s.imputed[j]).sum(),
            )
        })
        .collect();
    let dataset = Dataset {
        format: "emshap-ci.dataset/2".into(),
        source: source_info,
        features: spec.features.clone(),
        target: crate::schema::TARGET.into(),
        counts: Counts {
            messages,
            valid,
            duplicates: plan.duplicates,
            rows,
            invalid: invalid.clone(),
            invalid_total,
            invalid_ratio,
            max_invalid_ratio: settings.max_invalid_ratio,
            imputed,
            skipped_outside_window: cols.skipped,
            unexpected,
        },
        split: plan.split_info.into_iter().collect(),
        scaler: ScalerInfo {
            file: snapshot::SCALER_FILE.into(),
            sha256: scaler_file.sha256,
            mode: match &settings.scaler {
                ScalerMode::Fit => "fit".into(),
                ScalerMode::Reuse(_) => "reuse".into(),
            },
        },
        feature_stats: plan.stats,
        reference: plan.reference,
        files,
        snapshot_sha256: digest.clone(),
    };
    let mut json = serde_json::to_vec_pretty(&dataset).map_err(|e| Error::Internal(e.into()))?;
    json.push(b'\n');
    snapshot::write_atomic(&staging.dir.join(snapshot::DATASET_FILE), &json)?;
    staging.commit()?;

    if settings.commit {
        if let Some(reader) = &reader {
            reader.commit(&dataset.source.partitions)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(PullReport {
        out: settings.out.clone(),
        source: settings.source.to_string(),
        messages,
        rows,
        duplicates: dataset.counts.duplicates,
        invalid,
        invalid_ratio,
        snapshot_sha256: digest,
        seconds,
        messages_per_s: messages as f64 / seconds.max(1e-9),
    })
}

/// A refused pull's quarantine, in offset order, at `--quarantine` or beside `--out`: where
/// it went.
fn write_refused_quarantine(
    settings: &PullSettings,
    cols: Columns,
    topic: &str,
) -> Result<PathBuf> {
    let path = settings
        .quarantine
        .clone()
        .unwrap_or_else(|| sibling(&settings.out, ".quarantine.jsonl"));
    let mut q = cols.quarantined;
    q.sort_by_key(|q| (q.partition, q.offset));
    snapshot::write_quarantine(&path, &q, topic)?;
    Ok(path)
}

/// The data-quality gate failed: the quarantine goes beside the snapshot (which is not
/// written, and an older one at `--out` stays as it was).
fn reject(
    settings: &PullSettings,
    cols: Columns,
    invalid: &BTreeMap<String, u64>,
    topic: &str,
) -> Error {
    let messages = cols.messages;
    let path = match write_refused_quarantine(settings, cols, topic) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let total: u64 = invalid.values().sum();
    let by: Vec<String> = invalid
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    Error::data(format!(
        "{total} of {} messages invalid ({:.2} %, limit {:.2} %: {}); no snapshot written, records in {} (fix the producer, or raise --max-invalid-ratio)",
        messages,
        total as f64 * 100.0 / messages as f64,
        settings.max_invalid_ratio * 100.0,
        by.join(", "),
        path.display()
    ))
}

/// The pull's refusal when an expectation fails: the quarantine written beside `--out`
/// (as for too many invalid messages), the table already printed, one line naming them.
fn reject_expectations(
    settings: &PullSettings,
    cols: Columns,
    o: &crate::expect::Outcome,
    topic: &str,
) -> Error {
    if let Err(e) = write_refused_quarantine(settings, cols, topic) {
        return e;
    }
    let failed = o.failed();
    Error::data(format!(
        "{} expectation{} failed: {}; no snapshot written (the table above has examples with their offsets; fix the data, or the [expectations])",
        failed.len(),
        if failed.len() == 1 { "" } else { "s" },
        o.summary()
    ))
}

/// Writes the split files (train on one thread, val and test on the other), `scaler.json`
/// and `quarantine.jsonl` into `dir`; returns every file's digest (sorted by name) and the
/// scaler's.
fn write_files(
    dir: &Path,
    cols: &Columns,
    plan: &snapshot::Plan,
    spec: &SnapshotSpec,
    topic: &str,
) -> Result<(Vec<FileInfo>, FileInfo)> {
    let write = |k: usize| {
        let (a, b) = plan.ranges[k];
        let path = dir.join(format!("{}.parquet", snapshot::SPLITS[k]));
        snapshot::write_split(&path, cols, &plan.order[a..b], plan, &spec.features)
    };
    let written: Vec<Result<FileInfo>> = std::thread::scope(|s| {
        let train = s.spawn(|| write(0));
        let rest = [write(1), write(2)];
        let panicked = || Err(Error::Internal(anyhow::anyhow!("writer thread panicked")));
        let mut out = vec![train.join().unwrap_or_else(|_| panicked())];
        out.extend(rest);
        out
    });
    let mut files = written.into_iter().collect::<Result<Vec<_>>>()?;
    let scaler_path = dir.join(snapshot::SCALER_FILE);
    let scaler_json =
        serde_json::to_vec_pretty(&plan.scaler).map_err(|e| Error::Internal(e.into()))?;
    let scaler_file = snapshot::write_atomic(&scaler_path, &scaler_json)?;
    files.push(scaler_file.clone());
    let qpath = dir.join(snapshot::QUARANTINE_FILE);
    files.push(snapshot::write_quarantine(&qpath, &plan.quarantine, topic)?);
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((files, scaler_file))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot".into());
    path.with_file_name(format!("{name}{suffix}"))
}

/// A batch of raw messages handed from the reader to a decoder.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    /// (partition, offset, start, len) per message.
    msgs: Vec<(i32, i64, u32, u32)>,
    /// (message index in `msgs`, start, len) of the `__value_schema_id` headers, in order.
    headers: Vec<(u32, u32, u32)>,
}

const BATCH: usize = 4096;

/// Runs `read` on this thread, feeding batches to `workers` decoder threads.
fn decode_parallel(
    settings: &PullSettings,
    time: TimeRule,
    read: impl FnOnce(&crossbeam_channel::Sender<Batch>) -> Result<()>,
) -> Result<Columns> {
    let (tx, rx) = crossbeam_channel::bounded::<Batch>(8);
    let workers = settings.workers.max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                let features = &settings.features;
                s.spawn(move || {
                    let mut dec = Decoder::with_format(features, time, settings.payload_format);
                    for b in rx {
                        let mut headers = b.headers.iter().peekable();
                        for (k, &(p, o, start, len)) in b.msgs.iter().enumerate() {
                            let payload = &b.data[start as usize..(start + len) as usize];
                            let header = headers
                                .next_if(|h| h.0 as usize == k)
                                .map(|&(_, s, l)| &b.data[s as usize..(s + l) as usize]);
                            dec.push_framed(p, o, payload, header);
                        }
                    }
                    dec.out
                })
            })
            .collect();
        drop(rx);
        let res = read(&tx);
        drop(tx);
        let mut parts = Vec::with_capacity(handles.len());
        for h in handles {
            parts.push(
                h.join()
                    .map_err(|_| Error::Internal(anyhow::anyhow!("decoder thread panicked")))?,
            );
        }
        res?;
        // Grow the largest part in place rather than copying every part into a new one:
        // the peak is the data plus the smaller parts, not twice the data.
        let largest = (0..parts.len())
            .max_by_key(|&k| parts[k].rows())
            .unwrap_or(0);
        let mut all = parts.swap_remove(largest);
        let extra: usize = parts.iter().map(|p| p.rows()).sum();
        all.reserve_exact(extra);
        for p in parts {
            all.append(p);
        }
        Ok(all)
    })
}

/// The bundled fixture: the embedded default source.
pub static EMBEDDED: &[u8] = include_bytes!("../fixtures/telemetry.pb");
pub const EMBEDDED_NAME: &str = "telemetry.pb (embedded)";

/// A framed input: a file, or the embedded fixture.
enum Input<'a> {
    Embedded,
    File(&'a Path),
}

impl Input<'_> {
    fn path(&self) -> &Path {
        match self {
            Input::Embedded => Path::new(EMBEDDED_NAME),
            Input::File(p) => p,
        }
    }

    fn open(&self) -> Result<Box<dyn std::io::Read + Send + '_>> {
        match self {
            Input::Embedded => Ok(Box::new(EMBEDDED)),
            Input::File(p) => Ok(Box::new(File::open(p).map_err(|e| Error::read(p, e))?)),
        }
    }

    fn len(&self) -> Result<u64> {
        match self {
            Input::Embedded => Ok(EMBEDDED.len() as u64),
            Input::File(p) => Ok(std::fs::metadata(p).map_err(|e| Error::read(p, e))?.len()),
        }
    }
}

fn frame_err(path: &Path, e: FrameError) -> Error {
    match e {
        FrameError::Io(e) => Error::read(path, e),
        other => Error::data(format!(
            "{}: {other} (regenerate it with `emshap-ci generate --out`)",
            path.display()
        )),
    }
}

fn read_file(
    input: &Input<'_>,
    settings: &PullSettings,
    progress: &Progress,
) -> Result<(Columns, SourceInfo)> {
    let path = input.path();
    let total = input.len()?;
    // A file is one partition (0) whose offsets are message positions.
    let (start, end, time) = match &settings.window {
        Window::All => (0, i64::MAX, TimeRule::Any),
        Window::Time { from_ms, to_ms } => (0, i64::MAX, TimeRule::Select(*from_ms, *to_ms)),
        Window::Last(n) => {
            let count = count_messages(input)?;
            ((count - *n as i64).max(0), count, TimeRule::Any)
        }
        Window::Offsets(spec) => {
            let (a, b) = match spec {
                window::OffsetSpec::Every { start, end } => (*start, *end),
                window::OffsetSpec::Per(per) => match per.as_slice() {
                    [(0, a, b)] => (*a, *b),
                    _ => return Err(Error::usage(
                        "--window",
                        "a file has one partition, 0: use offsets:START-END or offsets:0=START-END",
                    )),
                },
            };
            let count = count_messages(input)?;
            if b > count {
                return Err(Error::usage(
                    "--window",
                    format!(
                        "{} is past the end of {} ({count} messages)",
                        settings.window,
                        path.display()
                    ),
                ));
            }
            (a, b, TimeRule::Any)
        }
        Window::Committed => {
            return Err(Error::usage(
                "--window",
                "committed needs a Kafka source and --group",
            ))
        }
    };
    progress.set_total(total, "bytes");
    let mut last = start;
    let cols = decode_parallel(settings, time, |tx| {
        let mut reader = BlockReader::new(input.open()?, 4 << 20);
        let mut index: i64 = 0;
        while let Some(block) = reader.next_block().map_err(|e| frame_err(path, e))? {
            let mut batch = Batch {
                data: block.data,
                msgs: Vec::with_capacity(block.spans.len()),
                headers: Vec::new(),
            };
            let mut bytes = 0u64;
            for (s, l) in block.spans {
                bytes += u64::from(l) + 1;
                if index >= start && index < end {
                    batch.msgs.push((0, index, s, l));
                }
                index += 1;
            }
            last = index.min(end);
            progress.inc(bytes);
            if !batch.msgs.is_empty() && tx.send(batch).is_err() {
                break;
            }
            if index >= end {
                break;
            }
        }
        Ok(())
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((
        cols,
        SourceInfo {
            kind: "file".into(),
            name,
            window: settings.window.to_string(),
            schema_ids: BTreeMap::new(),
            schema_guids: BTreeMap::new(),
            partitions: vec![PartitionRange {
                partition: 0,
                start,
                end: last,
            }],
        },
    ))
}

fn count_messages(input: &Input<'_>) -> Result<i64> {
    let mut reader = BlockReader::new(input.open()?, 4 << 20);
    let mut n = 0i64;
    while let Some(b) = reader
        .next_block()
        .map_err(|e| frame_err(input.path(), e))?
    {
        n += b.spans.len() as i64;
    }
    Ok(n)
}

/// For a Kafka source, the offset ranges its window resolves to now (what a pull started
/// now would read); None for a file. `run --resume` puts them in the pull's digest, so a
/// `last:N` window on a topic that has grown is pulled again.
pub fn kafka_ranges(settings: &PullSettings) -> Result<Option<Vec<PartitionRange>>> {
    let Source::Kafka { topic } = &settings.source else {
        return Ok(None);
    };
    let reader = TopicReader::connect(&settings.kafka, topic)?;
    let partitions = reader.partitions()?;
    let marks = reader.watermarks(&partitions)?;
    resolve_ranges(&reader, &settings.window, &partitions, &marks, settings).map(Some)
}

fn read_kafka(
    topic: &str,
    settings: &PullSettings,
    progress: &Progress,
) -> Result<(Columns, SourceInfo, TopicReader)> {
    let reader = TopicReader::connect(&settings.kafka, topic)?;
    let partitions = reader.partitions()?;
    let marks = reader.watermarks(&partitions)?;
    let ranges = resolve_ranges(&reader, &settings.window, &partitions, &marks, settings)?;
    let total: u64 = ranges.iter().map(|r| r.len()).sum();
    progress.set_total(total, "messages");
    let time = settings.window.time_bounds();
    // Per partition: the first and one past the last offset taken into the window.
    let mut taken: Vec<(i32, i64, i64)> = ranges
        .iter()
        .map(|r| (r.partition, i64::MAX, i64::MIN))
        .collect();
    let mut skipped = 0u64;
    let lows: Vec<i64> = ranges
        .iter()
        .map(|r| {
            marks[partitions
                .iter()
                .position(|&q| q == r.partition)
                .unwrap_or(0)]
            .0
        })
        .collect();
    let rule = time.map_or(TimeRule::Any, |(from, to)| TimeRule::Reject(from, to));
    let mut cols = decode_parallel(settings, rule, |tx| {
        let mut batch = Batch::default();
        let mut unreported = 0u64;
        reader.read(&ranges, &lows, |p, o, ts, payload, header| {
            unreported += 1;
            if unreported == BATCH as u64 {
                progress.inc(unreported);
                unreported = 0;
            }
            // A time window selects by the broker's timestamp; the scan may start early
            // (brokers may answer time look-ups per batch) and runs to the end fixed at start.
            if let (Some((from, to)), Some(ts)) = (time, ts) {
                if ts < from || ts >= to {
                    skipped += 1;
                    return Ok(());
                }
            }
            if let Some(t) = taken.iter_mut().find(|t| t.0 == p) {
                t.1 = t.1.min(o);
                t.2 = t.2.max(o + 1);
            }
            if let Some(h) = header {
                let at = batch.data.len() as u32;
                batch.data.extend_from_slice(h);
                batch
                    .headers
                    .push((batch.msgs.len() as u32, at, h.len() as u32));
            }
            let start = batch.data.len() as u32;
            batch.data.extend_from_slice(payload);
            batch.msgs.push((p, o, start, payload.len() as u32));
            if batch.msgs.len() >= BATCH {
                let full = std::mem::take(&mut batch);
                tx.send(full)
                    .map_err(|_| Error::Internal(anyhow::anyhow!("decoders stopped")))?;
            }
            Ok(())
        })?;
        progress.inc(unreported);
        if !batch.msgs.is_empty() {
            let _ = tx.send(batch);
        }
        Ok(())
    })?;
    // For time windows the lineage names the offsets actually in the window, so the same
    // window pulled later (after more data arrived) describes itself the same way.
    let partitions_info = if time.is_some() {
        cols.skipped = skipped;
        taken
            .into_iter()
            .map(|(p, a, b)| {
                let (start, end) = if a <= b { (a, b) } else { (0, 0) };
                PartitionRange {
                    partition: p,
                    start,
                    end,
                }
            })
            .collect()
    } else {
        ranges
    };
    Ok((
        cols,
        SourceInfo {
            kind: "kafka".into(),
            name: topic.to_string(),
            window: settings.window.to_string(),
            partitions: partitions_info,
            schema_ids: BTreeMap::new(),
            schema_guids: BTreeMap::new(),
        },
        reader,
    ))
}

/// Turns the window into fixed offset ranges per partition.
fn resolve_ranges(
    reader: &TopicReader,
    window: &Window,
    partitions: &[i32],
    marks: &[(i64, i64)],
    settings: &PullSettings,
) -> Result<Vec<PartitionRange>> {
    let topic = reader.topic();
    let past_end = |p: i32, high: i64| {
        Error::usage(
            "--window",
            format!(
                "{window} is past the end of {topic}[{p}] (its last offset is {})",
                high - 1
            ),
        )
    };
    let mut out = Vec::with_capacity(partitions.len());
    match window {
        Window::All => {
            for (&p, &(low, high)) in partitions.iter().zip(marks) {
                out.push(PartitionRange {
                    partition: p,
                    start: low,
                    end: high,
                });
            }
        }
        Window::Last(n) => {
            for (&p, &(low, high)) in partitions.iter().zip(marks) {
                out.push(PartitionRange {
                    partition: p,
                    start: (high - *n as i64).max(low),
                    end: high,
                });
            }
        }
        Window::Offsets(spec) => {
            let wanted: Vec<(i32, i64, i64)> = match spec {
                window::OffsetSpec::Every { start, end } => {
                    partitions.iter().map(|&p| (p, *start, *end)).collect()
                }
                window::OffsetSpec::Per(per) => per.clone(),
            };
            for (p, a, b) in wanted {
                let Some(k) = partitions.iter().position(|&q| q == p) else {
                    return Err(Error::usage(
                        "--window",
                        format!("{topic} has no partition {p} (it has {partitions:?})"),
                    ));
                };
                let (low, high) = marks[k];
                if b > high {
                    return Err(past_end(p, high));
                }
                if a < low {
                    return Err(Error::usage(
                        "--window",
                        format!("{window}: offsets before {low} of {topic}[{p}] were deleted by retention"),
                    ));
                }
                out.push(PartitionRange {
                    partition: p,
                    start: a,
                    end: b,
                });
            }
        }
        Window::Time { from_ms, .. } => {
            // Scan from the first offset at or after FROM to the end fixed now; messages are
            // then taken by their timestamps (see read_kafka).
            let starts = reader.offsets_for_time(partitions, *from_ms)?;
            for (k, &p) in partitions.iter().enumerate() {
                let (low, high) = marks[k];
                let start = starts[k].unwrap_or(high).clamp(low, high);
                out.push(PartitionRange {
                    partition: p,
                    start,
                    end: high,
                });
            }
        }
        Window::Committed => {
            if settings.kafka.group.is_none() {
                return Err(Error::usage("--window", "committed needs --group"));
            }
            let committed = reader.committed(partitions)?;
            for (k, &p) in partitions.iter().enumerate() {
                let (low, high) = marks[k];
                let start = committed[k].unwrap_or(low).clamp(low, high);
                out.push(PartitionRange {
                    partition: p,
                    start,
                    end: high,
                });
            }
        }
    }
    Ok(out)
}
