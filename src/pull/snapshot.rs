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

pub const DATASET_FILE: &str = "dataset.json";
pub const SCALER_FILE: &str = "scaler.json";
pub const QUARANTINE_FILE: &str = "quarantine.jsonl";
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

/// The snapshot built in memory: split tables and their description.
pub struct Built {
    pub splits: Vec<(String, Table)>,
    pub scaler: Scaler,
    pub split_info: Vec<(String, SplitInfo)>,
    pub stats: Vec<FeatureStats>,
    pub duplicates: u64,
    pub quarantine: Vec<Quarantined>,
}

/// One split's rows, in chronological order.
pub struct Table {
    pub node_id: Vec<String>,
    pub timestamp: Vec<i64>,
    pub partition: Vec<i32>,
    pub offset: Vec<i64>,
    pub power: Vec<f32>,
    /// Column-major standardised features.
    pub features: Vec<Vec<f32>>,
}

/// Deduplicates, orders, splits, imputes and scales. Consumes the columns.
pub fn build(mut cols: Columns, spec: &SnapshotSpec) -> Result<Built> {
    let d = cols.d;
    // Canonical node order: by name, so worker interleaving cannot change anything.
    let mut by_name: Vec<u32> = (0..cols.node_names.len() as u32).collect();
    by_name
        .sort_unstable_by(|a, b| cols.node_names[*a as usize].cmp(&cols.node_names[*b as usize]));
    let mut rank = vec![0u32; by_name.len()];
    for (r, &n) in by_name.iter().enumerate() {
        rank[n as usize] = r as u32;
    }

    // Duplicates on (node_id, timestamp_ms): keep the last seen, i.e. the highest
    // (partition, offset), which is what any consumer reading in offset order sees last.
    let n = cols.rows();
    let mut idx: Vec<u32> = (0..n as u32).collect();
    let key = |i: u32| {
        let i = i as usize;
        (
            rank[cols.node[i] as usize],
            cols.timestamp[i],
            cols.partition[i],
            cols.offset[i],
        )
    };
    idx.sort_unstable_by_key(|&i| key(i));
    let mut keep: Vec<u32> = Vec::with_capacity(n);
    let mut duplicates = 0u64;
    for w in 0..idx.len() {
        let i = idx[w] as usize;
        let superseded = idx.get(w + 1).is_some_and(|&j| {
            let j = j as usize;
            cols.node[j] == cols.node[i] && cols.timestamp[j] == cols.timestamp[i]
        });
        if superseded {
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
        } else {
            keep.push(idx[w]);
        }
    }
    drop(idx);
    // Chronological order; ties broken by node name, then position in the log.
    keep.sort_unstable_by_key(|&i| {
        let (r, t, p, o) = key(i);
        (t, r, p, o)
    });

    let rows = keep.len();
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

    // Imputation means: observed training values.
    let train_rows = &keep[..n_train];
    let mut impute = vec![0f64; d];
    for (j, slot) in impute.iter_mut().enumerate() {
        let (mut sum, mut count) = (0f64, 0u64);
        for &i in train_rows {
            let v = cols.values[i as usize * d + j];
            if !v.is_nan() {
                sum += f64::from(v);
                count += 1;
            }
        }
        if count == 0 {
            return Err(Error::data(format!(
                "feature '{}' is absent in every training row (deselect it with --features)",
                spec.features[j]
            )));
        }
        *slot = sum / count as f64;
    }

    let stats = feature_stats(&cols, &keep, &spec.features);

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
        None => {
            // Fit after imputation, as a scikit-learn pipeline would.
            let mut mean = vec![0f64; d];
            let mut std = vec![0f64; d];
            for j in 0..d {
                let val = |i: u32| {
                    let v = cols.values[i as usize * d + j];
                    if v.is_nan() {
                        impute[j]
                    } else {
                        f64::from(v)
                    }
                };
                let m = train_rows.iter().map(|&i| val(i)).sum::<f64>() / n_train as f64;
                let var = train_rows
                    .iter()
                    .map(|&i| (val(i) - m).powi(2))
                    .sum::<f64>()
                    / n_train as f64;
                mean[j] = m;
                // A constant feature scales by 1, so it stays finite (scikit-learn does too).
                std[j] = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
            }
            Scaler {
                features: spec.features.clone(),
                mean,
                std,
                fitted_on: "train".into(),
                rows: n_train as u64,
            }
        }
    };

    let mut splits = Vec::new();
    let mut split_info = Vec::new();
    for (name, (a, b)) in SPLITS.iter().zip(ranges) {
        let part = &keep[a..b];
        let mut imputed = vec![0u64; d];
        let mut features = vec![Vec::with_capacity(part.len()); d];
        for &i in part {
            let row = &cols.values[i as usize * d..(i as usize + 1) * d];
            for j in 0..d {
                let raw = if row[j].is_nan() {
                    imputed[j] += 1;
                    impute[j]
                } else {
                    f64::from(row[j])
                };
                features[j].push(((raw - scaler.mean[j]) / scaler.std[j]) as f32);
            }
        }
        let table = Table {
            node_id: part
                .iter()
                .map(|&i| cols.node_names[cols.node[i as usize] as usize].clone())
                .collect(),
            timestamp: part.iter().map(|&i| cols.timestamp[i as usize]).collect(),
            partition: part.iter().map(|&i| cols.partition[i as usize]).collect(),
            offset: part.iter().map(|&i| cols.offset[i as usize]).collect(),
            power: part.iter().map(|&i| cols.power[i as usize]).collect(),
            features,
        };
        split_info.push((
            name.to_string(),
            SplitInfo {
                rows: part.len() as u64,
                first_timestamp_ms: table.timestamp.first().copied(),
                last_timestamp_ms: table.timestamp.last().copied(),
                imputed,
            },
        ));
        splits.push((name.to_string(), table));
    }

    let mut quarantine = std::mem::take(&mut cols.quarantined);
    quarantine.sort_by_key(|q| (q.partition, q.offset));
    Ok(Built {
        splits,
        scaler,
        split_info,
        stats,
        duplicates,
        quarantine,
    })
}

fn feature_stats(cols: &Columns, keep: &[u32], names: &[String]) -> Vec<FeatureStats> {
    let d = cols.d;
    (0..d)
        .map(|j| {
            let vals = keep
                .iter()
                .map(|&i| cols.values[i as usize * d + j])
                .filter(|v| !v.is_nan())
                .map(f64::from);
            let (mut count, mut sum, mut min, mut max) =
                (0u64, 0f64, f64::INFINITY, f64::NEG_INFINITY);
            for v in vals.clone() {
                count += 1;
                sum += v;
                min = min.min(v);
                max = max.max(v);
            }
            let mean = if count > 0 { sum / count as f64 } else { 0.0 };
            let var = if count > 0 {
                vals.clone().map(|v| (v - mean).powi(2)).sum::<f64>() / count as f64
            } else {
                0.0
            };
            let mut histogram = vec![0u64; HIST_BINS];
            if count > 0 {
                let width = (max - min) / HIST_BINS as f64;
                for v in vals {
                    let b = if width > 0.0 {
                        (((v - min) / width) as usize).min(HIST_BINS - 1)
                    } else {
                        0
                    };
                    histogram[b] += 1;
                }
            }
            FeatureStats {
                name: names[j].clone(),
                count,
                missing: keep.len() as u64 - count,
                mean,
                std: var.sqrt(),
                min: if count > 0 { min } else { 0.0 },
                max: if count > 0 { max } else { 0.0 },
                histogram,
            }
        })
        .collect()
}

/// Writes one split as Parquet: node_id, timestamp_ms, partition, offset, power_watts
/// (raw watts), then the standardised features.
pub fn write_parquet(path: &Path, table: &Table, features: &[String]) -> Result<()> {
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
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .set_created_by(format!("emshap-ci {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props))
        .map_err(|e| Error::Internal(e.into()))?;
    let n = table.power.len();
    let mut start = 0;
    while start < n || (n == 0 && start == 0) {
        let end = (start + ROW_GROUP).min(n);
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                table.node_id[start..end].iter(),
            )),
            Arc::new(Int64Array::from(table.timestamp[start..end].to_vec())),
            Arc::new(Int32Array::from(table.partition[start..end].to_vec())),
            Arc::new(Int64Array::from(table.offset[start..end].to_vec())),
            Arc::new(Float32Array::from(table.power[start..end].to_vec())),
        ];
        for col in &table.features {
            arrays.push(Arc::new(Float32Array::from(col[start..end].to_vec())));
        }
        let batch =
            RecordBatch::try_new(schema.clone(), arrays).map_err(|e| Error::Internal(e.into()))?;
        writer
            .write(&batch)
            .map_err(|e| Error::Internal(e.into()))?;
        if n == 0 {
            break;
        }
        start = end;
    }
    let inner = writer.into_inner().map_err(|e| Error::Internal(e.into()))?;
    let file = inner
        .into_inner()
        .map_err(|e| Error::write(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::write(path, e))?;
    Ok(())
}

/// Writes quarantined records as JSON lines.
pub fn write_quarantine(path: &Path, records: &[Quarantined], topic: &str) -> Result<()> {
    #[derive(Serialize)]
    struct Line<'a> {
        topic: &'a str,
        #[serde(flatten)]
        q: &'a Quarantined,
    }
    let file = File::create(path).map_err(|e| Error::write(path, e))?;
    let mut w = BufWriter::new(file);
    for q in records {
        serde_json::to_writer(&mut w, &Line { topic, q }).map_err(|e| Error::Internal(e.into()))?;
        w.write_all(b"\n").map_err(|e| Error::write(path, e))?;
    }
    let file = w
        .into_inner()
        .map_err(|e| Error::write(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::write(path, e))
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(Error::write(path, e));
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<FileInfo> {
    let mut f = File::open(path).map_err(|e| Error::read(path, e))?;
    let mut h = Sha256::new();
    let bytes = std::io::copy(&mut f, &mut h).map_err(|e| Error::read(path, e))?;
    Ok(FileInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bytes,
        sha256: hex::encode(h.finalize()),
    })
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
        let old = self.dir.with_extension("old");
        if self.dest.exists() {
            fs::rename(&self.dest, &old).map_err(|e| Error::write(&self.dest, e))?;
        }
        if let Err(e) = fs::rename(&self.dir, &self.dest) {
            // Put the old one back: nothing is lost.
            let _ = fs::rename(&old, &self.dest);
            return Err(Error::write(&self.dest, e));
        }
        let _ = fs::remove_dir_all(&old);
        self.committed = true;
        Ok(())
    }
}

/// Removes staging folders left by pulls that were killed (their process is gone).
fn remove_stale_staging(parent: &Path, name: &str) {
    let prefix = format!(".{name}.staging-");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let pid = rest.trim_end_matches(".old");
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
