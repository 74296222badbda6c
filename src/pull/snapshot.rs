//! From validated columns to a snapshot on disk: deduplication, chronological split,
//! imputation, the scaler, Parquet per split, `scaler.json`, `quarantine.jsonl` and
//! `dataset.json`. Everything here is a function of the records alone (never of arrival
//! order, thread timing or the clock), so the same window gives the same bytes.
//!
//! Written into a staging folder beside `--out` and renamed into place only when complete:
//! an interrupted pull never leaves a snapshot that looks complete, and a failed one never
//! replaces a good one.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::decode::{Columns, Quarantined, Reason};
use crate::error::{Error, Result};

pub use crate::artifacts::{DATASET_FILE, QUARANTINE_FILE, SCALER_FILE};
pub const SPLITS: [&str; 3] = ["train", "val", "test"];
const HIST_BINS: usize = 20;
const ROW_GROUP: usize = 65_536;

/// The feature standardisation: z = (x − mean) / std, fit on the train split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub features: Vec<String>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// `fit` (on this snapshot's train split) or where it was loaded from.
    pub fitted_on: String,
    pub rows: u64,
}

impl Scaler {
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(|e| Error::read(path, e))?;
        let s: Scaler = serde_json::from_str(&text).map_err(|e| {
            Error::usage(
                "--scaler",
                format!("{} is not a scaler.json: {e}", path.display()),
            )
        })?;
        if s.mean.len() != s.features.len() || s.std.len() != s.features.len() {
            return Err(Error::usage(
                "--scaler",
                format!("{}: lengths differ", path.display()),
            ));
        }
        Ok(s)
    }
}

/// Everything about the split/scale step that is configured.
#[derive(Debug, Clone)]
pub struct SnapshotSpec {
    pub features: Vec<String>,
    /// Fractions of rows for train and validation; test gets the rest.
    pub train: f64,
    pub val: f64,
    pub scaler: Option<Scaler>,
}

/// Per-feature statistics over every valid row (raw units, observed values only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeatureStats {
    pub name: String,
    pub count: u64,
    pub missing: u64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// `HIST_BINS` equal bins from min to max; edges are min + k·(max − min)/bins.
    pub histogram: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitInfo {
    pub rows: u64,
    pub first_timestamp_ms: Option<i64>,
    pub last_timestamp_ms: Option<i64>,
    /// Per feature: rows where the value was absent and imputed with the training mean.
    pub imputed: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileInfo {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

impl FileInfo {
    fn new(path: &Path, bytes: u64, hash: Sha256) -> Self {
        Self {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes,
            sha256: hex::encode(hash.finalize()),
        }
    }
}

/// The snapshot decided in memory: which rows, in what order, in which split, and the
/// scaler. The split files are written from it straight out of the columns, a row group at
/// a time, so no second copy of the data is ever held.
pub struct Plan {
    /// Indices into the columns, in chronological order; splits are consecutive ranges.
    pub order: Vec<u32>,
    pub ranges: [(usize, usize); 3],
    /// Per feature, the training mean that replaces an absent value.
    pub impute: Vec<f64>,
    pub scaler: Scaler,
    pub split_info: Vec<(String, SplitInfo)>,
    pub stats: Vec<FeatureStats>,
    /// The train split's reference for drift: each feature, then the target.
    pub reference: Vec<super::reference::ColumnReference>,
    pub duplicates: u64,
    pub quarantine: Vec<Quarantined>,
}

/// Orders, deduplicates, splits, and fits the imputation and the scaler.
pub fn plan(cols: &mut Columns, spec: &SnapshotSpec) -> Result<Plan> {
    let d = cols.d;
    // Canonical node order: by name, so worker interleaving cannot change anything.
    let mut by_name: Vec<u32> = (0..cols.node_names.len() as u32).collect();
    by_name
        .sort_unstable_by(|a, b| cols.node_names[*a as usize].cmp(&cols.node_names[*b as usize]));
    let mut rank = vec![0u32; by_name.len()];
    for (r, &n) in by_name.iter().enumerate() {
        rank[n as usize] = r as u32;
    }

    // One sort gives both the chronological order and the duplicates: (timestamp, node)
    // groups are adjacent. Within a group the order is (partition, offset), fixed below,
    // so the last one seen is last.
    let n = cols.rows();
    let mut keys: Vec<(i64, u32, u32)> = (0..n)
        .map(|i| (cols.timestamp[i], rank[cols.node[i] as usize], i as u32))
        .collect();
    keys.sort_unstable();
    let mut order: Vec<u32> = Vec::with_capacity(n);
    let mut duplicates = 0u64;
    let mut g = 0;
    while g < keys.len() {
        let mut h = g + 1;
        while h < keys.len() && keys[h].0 == keys[g].0 && keys[h].1 == keys[g].1 {
            h += 1;
        }
        if h - g > 1 {
            let group = &mut keys[g..h];
            group.sort_unstable_by_key(|k| {
                (cols.partition[k.2 as usize], cols.offset[k.2 as usize])
            });
            for k in &group[..group.len() - 1] {
                let i = k.2 as usize;
                duplicates += 1;
                cols.quarantined.push(Quarantined {
                    partition: cols.partition[i],
                    offset: cols.offset[i],
                    reason: Reason::Duplicate,
                    detail: "superseded by a later record with the same node_id and timestamp_ms"
                        .into(),
                    node_id: Some(cols.node_names[cols.node[i] as usize].clone()),
                    timestamp_ms: Some(cols.timestamp[i]),
                });
            }
        }
        order.push(keys[h - 1].2);
        g = h;
    }
    drop(keys);

    let rows = order.len();
    let n_train = (rows as f64 * spec.train).floor() as usize;
    let n_val = ((rows as f64 * (spec.train + spec.val)).floor() as usize).max(n_train) - n_train;
    let n_test = rows - n_train - n_val;
    if n_train == 0 || n_val == 0 || n_test == 0 {
        return Err(Error::data(format!(
            "{rows} valid rows are too few to split {:.2}/{:.2}/{:.2} (every split needs a row; widen the window)",
            spec.train,
            spec.val,
            1.0 - spec.train - spec.val
        )));
    }
    let ranges = [
        (0, n_train),
        (n_train, n_train + n_val),
        (n_train + n_val, rows),
    ];

    // Pass 1, row by row (the values are row-major): observed sums for the training means,
    // and count/sum/min/max over every row for the statistics; absent values per split.
    let mut train_sum = vec![0f64; d];
    let mut train_obs = vec![0u64; d];
    let mut all_sum = vec![0f64; d];
    let mut all_obs = vec![0u64; d];
    let mut min = vec![f64::INFINITY; d];
    let mut max = vec![f64::NEG_INFINITY; d];
    let mut absent = [vec![0u64; d], vec![0u64; d], vec![0u64; d]];
    for (split, &(a, b)) in ranges.iter().enumerate() {
        for &i in &order[a..b] {
            let row = &cols.values[i as usize * d..(i as usize + 1) * d];
            for (j, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    absent[split][j] += 1;
                    continue;
                }
                let v = f64::from(v);
                all_sum[j] += v;
                all_obs[j] += 1;
                min[j] = min[j].min(v);
                max[j] = max[j].max(v);
                if split == 0 {
                    train_sum[j] += v;
                    train_obs[j] += 1;
                }
            }
        }
    }
    let mut impute = vec![0f64; d];
    for j in 0..d {
        if train_obs[j] == 0 {
            return Err(Error::data(format!(
                "feature '{}' is absent in every training row (deselect it with --features)",
                spec.features[j]
            )));
        }
        impute[j] = train_sum[j] / train_obs[j] as f64;
    }
    let all_mean: Vec<f64> = (0..d)
        .map(|j| {
            if all_obs[j] > 0 {
                all_sum[j] / all_obs[j] as f64
            } else {
                0.0
            }
        })
        .collect();

    // Pass 2: spreads around those means, and the histograms.
    let mut train_sq = vec![0f64; d];
    let mut all_sq = vec![0f64; d];
    let mut histogram = vec![vec![0u64; HIST_BINS]; d];
    let width: Vec<f64> = (0..d)
        .map(|j| (max[j] - min[j]) / HIST_BINS as f64)
        .collect();
    for (split, &(a, b)) in ranges.iter().enumerate() {
        for &i in &order[a..b] {
            let row = &cols.values[i as usize * d..(i as usize + 1) * d];
            for (j, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                let v = f64::from(v);
                all_sq[j] += (v - all_mean[j]).powi(2);
                if split == 0 {
                    train_sq[j] += (v - impute[j]).powi(2);
                }
                let bin = if width[j] > 0.0 {
                    (((v - min[j]) / width[j]) as usize).min(HIST_BINS - 1)
                } else {
                    0
                };
                histogram[j][bin] += 1;
            }
        }
    }
    let stats = (0..d)
        .map(|j| {
            let seen = all_obs[j] > 0;
            FeatureStats {
                name: spec.features[j].clone(),
                count: all_obs[j],
                missing: rows as u64 - all_obs[j],
                mean: all_mean[j],
                std: if seen {
                    (all_sq[j] / all_obs[j] as f64).sqrt()
                } else {
                    0.0
                },
                min: if seen { min[j] } else { 0.0 },
                max: if seen { max[j] } else { 0.0 },
                histogram: std::mem::take(&mut histogram[j]),
            }
        })
        .collect();

    let scaler = match &spec.scaler {
        Some(s) => {
            if s.features != spec.features {
                return Err(Error::usage(
                    "--scaler",
                    format!(
                        "its features ({}) differ from the selected ones ({})",
                        s.features.join(","),
                        spec.features.join(",")
                    ),
                ));
            }
            s.clone()
        }
        // Fit after imputation, as a scikit-learn pipeline would: the mean is the
        // imputation mean, and imputed values add nothing to the spread.
        None => Scaler {
            features: spec.features.clone(),
            mean: impute.clone(),
            std: (0..d)
                .map(|j| {
                    let sd = (train_sq[j] / n_train as f64).sqrt();
                    // A constant feature scales by 1, so it stays finite.
                    if sd > 1e-12 {
                        sd
                    } else {
                        1.0
                    }
                })
                .collect(),
            fitted_on: "train".into(),
            rows: n_train as u64,
        },
    };

    let split_info = SPLITS
        .iter()
        .zip(ranges)
        .zip(absent)
        .map(|((name, (a, b)), imputed)| {
            (
                name.to_string(),
                SplitInfo {
                    rows: (b - a) as u64,
                    first_timestamp_ms: order.get(a).map(|&i| cols.timestamp[i as usize]),
                    last_timestamp_ms: order[a..b].last().map(|&i| cols.timestamp[i as usize]),
                    imputed,
                },
            )
        })
        .collect();
    let mut quarantine = std::mem::take(&mut cols.quarantined);
    quarantine.sort_by_key(|q| (q.partition, q.offset));
    // The train split's reference (raw values, before imputation): the features in two
    // row-major passes, the target (a column of its own) beside them.
    let t_ref = std::time::Instant::now();
    let train_rows = &order[ranges[0].0..ranges[0].1];
    let (mut reference, target) = std::thread::scope(|s| {
        let target = s.spawn(|| {
            let y: Vec<f32> = train_rows.iter().map(|&i| cols.power[i as usize]).collect();
            super::reference::column(crate::schema::TARGET, &y)
        });
        let features = super::reference::columns(&spec.features, &cols.values, train_rows);
        (features, target.join().expect("reference thread"))
    });
    reference.push(target);
    tracing::debug!(
        seconds = t_ref.elapsed().as_secs_f64(),
        "train-split reference"
    );
    Ok(Plan {
        order,
        ranges,
        impute,
        scaler,
        split_info,
        stats,
        reference,
        duplicates,
        quarantine,
    })
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one split as Parquet — node_id, timestamp_ms, partition, offset, power_watts
/// (raw watts), then the standardised features (absent ones imputed) — building each row
/// group straight from the columns. Returns the file's size and sha256.
pub fn write_split(
    path: &Path,
    cols: &Columns,
    rows: &[u32],
    plan: &Plan,
    features: &[String],
) -> Result<FileInfo> {
    let d = cols.d;
    let mut fields = vec![
        Field::new("node_id", DataType::Utf8, false),
        Field::new("timestamp_ms", DataType::Int64, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(crate::schema::TARGET, DataType::Float32, false),
    ];
    fields.extend(
        features
            .iter()
            .map(|f| Field::new(f, DataType::Float32, false)),
    );
    let schema = Arc::new(Schema::new(fields));
    let file = File::create(path).map_err(|e| Error::write(path, e))?;
    // Floats have ~no repeated values: dictionary pages would be tried and thrown away.
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_enabled(false)
        .set_column_dictionary_enabled("node_id".into(), true)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .set_created_by(format!("emshap-ci {}", env!("CARGO_PKG_VERSION")))
        .build();
    let sink = Hashing {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        bytes: 0,
    };
    let internal = |e: parquet::errors::ParquetError| Error::Internal(e.into());
    let mut writer = ArrowWriter::try_new(sink, schema.clone(), Some(props)).map_err(internal)?;
    let scale: Vec<(f64, f64)> = (0..d)
        .map(|j| (plan.scaler.mean[j], plan.scaler.std[j]))
        .collect();
    let mut chunks = rows.chunks(ROW_GROUP).peekable();
    if chunks.peek().is_none() {
        let empty = RecordBatch::new_empty(schema.clone());
        writer.write(&empty).map_err(internal)?;
    }
    let mut feat = vec![Vec::<f32>::new(); d];
    for chunk in chunks {
        for f in feat.iter_mut() {
            f.clear();
            f.reserve(chunk.len());
        }
        for &i in chunk {
            let row = &cols.values[i as usize * d..(i as usize + 1) * d];
            for (j, &v) in row.iter().enumerate() {
                let raw = if v.is_nan() {
                    plan.impute[j]
                } else {
                    f64::from(v)
                };
                feat[j].push(((raw - scale[j].0) / scale[j].1) as f32);
            }
        }
        let at = |i: &u32| *i as usize;
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                chunk
                    .iter()
                    .map(|i| cols.node_names[cols.node[at(i)] as usize].as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                chunk.iter().map(|i| cols.timestamp[at(i)]),
            )),
            Arc::new(Int32Array::from_iter_values(
                chunk.iter().map(|i| cols.partition[at(i)]),
            )),
            Arc::new(Int64Array::from_iter_values(
                chunk.iter().map(|i| cols.offset[at(i)]),
            )),
            Arc::new(Float32Array::from_iter_values(
                chunk.iter().map(|i| cols.power[at(i)]),
            )),
        ];
        for f in &feat {
            arrays.push(Arc::new(Float32Array::from(f.clone())));
        }
        let batch =
            RecordBatch::try_new(schema.clone(), arrays).map_err(|e| Error::Internal(e.into()))?;
        writer.write(&batch).map_err(internal)?;
    }
    let sink = writer.into_inner().map_err(internal)?;
    let Hashing { inner, hash, bytes } = sink;
    let file = inner
        .into_inner()
        .map_err(|e| Error::write(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::write(path, e))?;
    Ok(FileInfo::new(path, bytes, hash))
}

/// Writes quarantined records as JSON lines, atomically; returns the file's digest.
pub fn write_quarantine(path: &Path, records: &[Quarantined], topic: &str) -> Result<FileInfo> {
    #[derive(Serialize)]
    struct Line<'a> {
        topic: &'a str,
        #[serde(flatten)]
        q: &'a Quarantined,
    }
    let mut text = Vec::new();
    for q in records {
        serde_json::to_writer(&mut text, &Line { topic, q })
            .map_err(|e| Error::Internal(e.into()))?;
        text.push(b'\n');
    }
    write_atomic(path, &text)
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, then rename);
/// returns their size and sha256.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<FileInfo> {
    crate::fsutil::write_atomic(path, bytes)?;
    Ok(FileInfo::new(
        path,
        bytes.len() as u64,
        Sha256::new_with_prefix(bytes),
    ))
}

/// The snapshot's digest: sha256 over "sha256  name\n" of its files in name order.
pub fn snapshot_digest(files: &[FileInfo]) -> String {
    let mut sorted: Vec<&FileInfo> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for f in sorted {
        h.update(format!("{}  {}\n", f.sha256, f.name));
    }
    hex::encode(h.finalize())
}

/// A staging folder beside the destination, removed on drop unless committed.
pub struct Staging {
    pub dir: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staging {
    /// Checks that `dest` may be replaced, and makes an empty staging folder beside it.
    pub fn new(dest: &Path) -> Result<Self> {
        if dest.exists() {
            let is_snapshot = dest.join(DATASET_FILE).is_file();
            let is_empty = fs::read_dir(dest)
                .map_err(|e| Error::read(dest, e))?
                .next()
                .is_none();
            if !dest.is_dir() || !(is_snapshot || is_empty) {
                return Err(Error::usage(
                    "--out",
                    format!(
                        "{} exists and is not an emshap-ci snapshot; choose another folder or remove it",
                        dest.display()
                    ),
                ));
            }
        }
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| Error::write(&parent, e))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot".into());
        remove_stale_staging(&parent, &name);
        let dir = parent.join(format!(".{name}.staging-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::write(&dir, e))?;
        }
        fs::create_dir(&dir).map_err(|e| Error::write(&dir, e))?;
        Ok(Self {
            dir,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    /// Moves the staging folder into place, replacing an older snapshot.
    pub fn commit(mut self) -> Result<()> {
        // The old one goes back if the move fails: nothing is lost.
        crate::fsutil::swap_dir(&self.dir, &self.dest, &self.dir.with_extension("old"))?;
        self.committed = true;
        Ok(())
    }
}

/// Removes staging folders left by pulls that were killed (their process is gone).
fn remove_stale_staging(parent: &Path, name: &str) {
    remove_stale(parent, &format!(".{name}.staging-"));
}

pub use crate::fsutil::remove_stale;

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::FeatureVector;
    use crate::pull::decode::{Decoder, TimeRule};
    use crate::schema::FeatureSet;
    use proptest::prelude::*;
    use prost::Message;

    /// partition, offset, bytes, (node, timestamp), power
    type Record = (i32, i64, Vec<u8>, (String, i64), f64);

    fn spec(fs: &FeatureSet) -> SnapshotSpec {
        SnapshotSpec {
            features: fs.names().to_vec(),
            train: 0.6,
            val: 0.2,
            scaler: None,
        }
    }

    proptest! {
        /// Whatever the arrival order: one row per (node, timestamp), the one with the highest
        /// (partition, offset); rows in time order; every dropped copy quarantined.
        #[test]
        fn dedupe_keeps_the_last_seen_and_orders_by_time(
            msgs in prop::collection::vec((0u8..3, 0i64..6, 0i32..2, 1.0f64..500.0), 10..80),
            workers_split in 0usize..80,
        ) {
            let fs = FeatureSet::parse(&["cpu_util".to_string()]).unwrap();
            // Offsets count up per partition, as in a log.
            let mut next = [0i64; 2];
            let records: Vec<Record> = msgs
                .iter()
                .map(|&(node, ts, p, power)| {
                    let fv = FeatureVector {
                        node_id: format!("n{node}"),
                        timestamp_ms: ts,
                        power_watts: Some(power),
                        cpu_util: Some(power / 2.0),
                        ..Default::default()
                    };
                    let off = next[p as usize];
                    next[p as usize] += 1;
                    (p, off, fv.encode_to_vec(), (fv.node_id.clone(), ts), power)
                })
                .collect();
            // Two "workers" see the records in a scrambled split, as threads would.
            let cut = workers_split.min(records.len());
            let mut a = Decoder::new(&fs, TimeRule::Any);
            let mut b = Decoder::new(&fs, TimeRule::Any);
            for r in records[cut..].iter().rev() { a.push(r.0, r.1, &r.2); }
            for r in records[..cut].iter() { b.push(r.0, r.1, &r.2); }
            let mut cols = a.out;
            cols.append(b.out);
            let s = spec(&fs);
            let distinct: std::collections::BTreeSet<_> = records.iter().map(|r| r.3.clone()).collect();
            let plan = match plan(&mut cols, &s) {
                Ok(p) => p,
                Err(_) => { prop_assert!(distinct.len() < 5); return Ok(()); }
            };
            prop_assert_eq!(plan.order.len(), distinct.len());
            prop_assert_eq!(plan.duplicates as usize, records.len() - distinct.len());
            prop_assert_eq!(plan.quarantine.len(), records.len() - distinct.len());
            let ts: Vec<i64> = plan.order.iter().map(|&i| cols.timestamp[i as usize]).collect();
            prop_assert!(ts.windows(2).all(|w| w[0] <= w[1]));
            for &i in &plan.order {
                let i = i as usize;
                let key = (cols.node_names[cols.node[i] as usize].clone(), cols.timestamp[i]);
                let last = records.iter().filter(|r| r.3 == key).max_by_key(|r| (r.0, r.1)).unwrap();
                prop_assert_eq!((cols.partition[i], cols.offset[i]), (last.0, last.1));
                prop_assert_eq!(f64::from(cols.power[i]), f64::from(last.4 as f32));
            }
        }
    }

    #[test]
    fn scaler_is_fit_on_train_only_and_imputes_the_train_mean() {
        let fs = FeatureSet::parse(&["cpu_util".to_string(), "mem_util".to_string()]).unwrap();
        let mut d = Decoder::new(&fs, TimeRule::Any);
        // 10 rows: train = first 6 by time. mem_util absent in row 0.
        for i in 0..10i64 {
            let fv = FeatureVector {
                node_id: "n".into(),
                timestamp_ms: i,
                power_watts: Some(1.0),
                cpu_util: Some(i as f64),
                mem_util: (i != 0).then_some(10.0 * i as f64),
                ..Default::default()
            };
            d.push(0, i, &fv.encode_to_vec());
        }
        let mut cols = d.out;
        let p = plan(&mut cols, &spec(&fs)).unwrap();
        assert_eq!(p.ranges, [(0, 6), (6, 8), (8, 10)]);
        // cpu: train values 0..5 → mean 2.5, population std sqrt(35/12).
        assert!((p.scaler.mean[0] - 2.5).abs() < 1e-12);
        assert!((p.scaler.std[0] - (35.0f64 / 12.0).sqrt()).abs() < 1e-12);
        // mem: observed train values 10..50 → mean 30, used for the absent one.
        assert!((p.impute[1] - 30.0).abs() < 1e-12);
        assert_eq!(p.split_info[0].1.imputed, vec![0, 1]);
        assert_eq!(p.stats[1].missing, 1);
        assert_eq!(p.stats[1].count, 9);
        assert_eq!(p.stats[0].histogram.iter().sum::<u64>(), 10);
    }
}
