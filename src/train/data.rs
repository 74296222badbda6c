//! Reading a `pull` snapshot for training: `dataset.json` (whose recorded digests are
//! checked), `scaler.json`, and the three Parquet splits as row-major f32 matrices of the
//! standardised features plus the raw target. Refuses a snapshot that is incomplete or was
//! changed after the pull, rather than training on something nobody can trace.

use std::fs::{self, File};
use std::path::Path;

use arrow_array::{Array, Float32Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::pull::snapshot::{Scaler, DATASET_FILE, SCALER_FILE};
use crate::pull::Dataset;
use crate::schema::TARGET;

/// One split: `n` rows of `d` standardised features (row-major) and the raw target.
#[derive(Debug, Clone)]
pub struct Split {
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub n: usize,
    pub d: usize,
}

impl Split {
    /// The rows `idx` (in that order).
    pub fn rows(&self, idx: &[usize]) -> Split {
        let d = self.d;
        let mut x = Vec::with_capacity(idx.len() * d);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            x.extend_from_slice(&self.x[i * d..(i + 1) * d]);
            y.push(self.y[i]);
        }
        Split {
            x,
            y,
            n: idx.len(),
            d,
        }
    }
}

pub struct Snapshot {
    pub dataset: Dataset,
    pub scaler: Scaler,
    /// The exact bytes of scaler.json (copied beside the models) and their sha256.
    pub scaler_bytes: Vec<u8>,
    pub scaler_sha256: String,
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

fn not_a_snapshot(dir: &Path, what: String) -> Error {
    Error::usage(
        "--data",
        format!(
            "{}: {what} (run `emshap-ci pull --out {}` first)",
            dir.display(),
            dir.display()
        ),
    )
}

/// Loads the whole snapshot (training).
pub fn load(dir: &Path) -> Result<Snapshot> {
    load_splits(dir, &["train", "val", "test"])
}

/// Loads the snapshot's test split only (evaluation); `train` and `val` are left empty.
pub fn load_test(dir: &Path) -> Result<Snapshot> {
    load_splits(dir, &["test"])
}

fn load_splits(dir: &Path, wanted: &[&str]) -> Result<Snapshot> {
    let dataset_path = dir.join(DATASET_FILE);
    let text = match fs::read_to_string(&dataset_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_a_snapshot(dir, format!("no {DATASET_FILE}")))
        }
        Err(e) => return Err(Error::read(&dataset_path, e)),
    };
    let dataset: Dataset = serde_json::from_str(&text)
        .map_err(|e| not_a_snapshot(dir, format!("{DATASET_FILE} is not readable: {e}")))?;
    let digest_of = |name: &str| -> Result<(Vec<u8>, String)> {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|e| Error::read(&path, e))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        match dataset.files.iter().find(|f| f.name == name) {
            Some(f) if f.sha256 == sha => Ok((bytes, sha)),
            Some(_) => Err(Error::data(format!(
                "{} changed after the pull (its sha256 is not the one dataset.json records); pull again",
                path.display()
            ))),
            None => Err(not_a_snapshot(
                dir,
                format!("{DATASET_FILE} does not list {name}"),
            )),
        }
    };
    let (scaler_bytes, scaler_sha256) = digest_of(SCALER_FILE)?;
    let scaler = Scaler::load(&dir.join(SCALER_FILE))?;
    if scaler.features != dataset.features {
        return Err(not_a_snapshot(
            dir,
            "scaler.json and dataset.json name different features".into(),
        ));
    }
    if let Some((j, s)) = scaler
        .std
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        return Err(Error::data(format!(
            "feature {} has standard deviation {s} in scaler.json; drop it with --features",
            scaler.features[j]
        )));
    }
    let d = dataset.features.len();
    let mut splits = Vec::new();
    for name in ["train", "val", "test"] {
        if !wanted.contains(&name) {
            splits.push(Split {
                x: Vec::new(),
                y: Vec::new(),
                n: 0,
                d,
            });
            continue;
        }
        let file = format!("{name}.parquet");
        // Verifies the digest before the rows are trusted (the file is then read again
        // by Parquet; it is small next to training).
        digest_of(&file)?;
        let split = read_split(&dir.join(&file), &dataset.features)?;
        if split.n == 0 {
            return Err(Error::data(format!(
                "the {name} split of {} has no rows; pull a larger window",
                dir.display()
            )));
        }
        splits.push(split);
    }
    let test = splits.pop().expect("three splits");
    let val = splits.pop().expect("three splits");
    let train = splits.pop().expect("three splits");
    Ok(Snapshot {
        dataset,
        scaler,
        scaler_bytes,
        scaler_sha256,
        train,
        val,
        test,
    })
}

fn read_split(path: &Path, features: &[String]) -> Result<Split> {
    let file = File::open(path).map_err(|e| Error::read(path, e))?;
    let bad = |e: String| Error::data(format!("{}: {e}", path.display()));
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(e.to_string()))?
        .with_batch_size(65_536)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let d = features.len();
    let mut x = Vec::new();
    let mut y = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let column = |name: &str| -> Result<Float32Array> {
            let c = batch
                .column_by_name(name)
                .ok_or_else(|| bad(format!("no column {name}")))?;
            let a = c
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| bad(format!("column {name} is not f32")))?;
            if a.null_count() > 0 {
                return Err(bad(format!("column {name} has nulls")));
            }
            Ok(a.clone())
        };
        let target = column(TARGET)?;
        let cols: Vec<Float32Array> = features.iter().map(|f| column(f)).collect::<Result<_>>()?;
        let rows = batch.num_rows();
        y.extend_from_slice(target.values());
        x.reserve(rows * d);
        for r in 0..rows {
            for c in &cols {
                x.push(c.value(r));
            }
        }
    }
    if let Some(v) = x.iter().chain(&y).find(|v| !v.is_finite()) {
        return Err(bad(format!("a non-finite value ({v}) in the data")));
    }
    let n = y.len();
    Ok(Split { x, y, n, d })
}

/// Raw features back from standardised ones, `x · std + mean` (what the service sends the
/// graphs).
pub fn raw_features(x: &[f32], scaler: &Scaler) -> Vec<f32> {
    let d = scaler.mean.len();
    x.iter()
        .enumerate()
        .map(|(i, &v)| (f64::from(v) * scaler.std[i % d] + scaler.mean[i % d]) as f32)
        .collect()
}

/// `(raw − mean) / std` in f32, exactly as the graphs' scaler nodes compute it.
pub fn standardise_like_graph(raw: &[f32], mean: &[f64], std: &[f64]) -> Vec<f32> {
    let d = mean.len();
    raw.iter()
        .enumerate()
        .map(|(i, &v)| (v - mean[i % d] as f32) / std[i % d] as f32)
        .collect()
}

/// The bundled fixture pulled into `dir/data` and loaded (for unit tests, here and in the
/// trainer).
#[doc(hidden)]
pub fn embedded_snapshot(dir: &Path) -> Snapshot {
    let out = dir.join("data");
    let args = crate::cli::pull::PullArgs {
        out: Some(out.clone()),
        ..Default::default()
    };
    let settings =
        crate::settings::resolve_pull(&args, &crate::settings::ConfigFile::default()).unwrap();
    crate::pull::pull(&settings, &crate::progress::Progress::new("test", true)).unwrap();
    load(&out).unwrap()
}
