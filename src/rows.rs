//! Rows in for `explain`: CSV (a header naming the columns), JSON (an
//! array of objects) or Parquet (columns by name) in, raw units, matched to the model's
//! features by name (other columns ignored); a snapshot split written by `pull` (standardised
//! features) is recognised and converted back with the models' scaler.json.

use std::path::Path;

use arrow_array::{Array, Float32Array, Float64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, Result};
use crate::pull::snapshot::Scaler;

/// Row-major raw feature values, `n` rows of the model's `d` features.
#[derive(Debug)]
pub struct Rows {
    pub x: Vec<f32>,
    pub n: usize,
    /// How they were read, for the output ("csv", "parquet (snapshot split, unscaled)").
    pub note: String,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::usage("--rows", format!("{}: {what}", path.display()))
}

fn finite(path: &Path, row: usize, name: &str, v: f64) -> Result<f32> {
    if v.is_finite() {
        Ok(v as f32)
    } else {
        Err(bad(
            path,
            format!("row {row}: {name} is {v}; every feature needs a finite value"),
        ))
    }
}

pub fn read(path: &Path, features: &[String], scaler: Option<&Scaler>) -> Result<Rows> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let rows = match ext.as_str() {
        "csv" => read_csv(path, features)?,
        "json" => read_json(path, features)?,
        "parquet" => read_parquet(path, features, scaler)?,
        _ => return Err(bad(
            path,
            "give a .csv, .json or .parquet file of rows (columns named like the model's features)",
        )),
    };
    if rows.n == 0 {
        return Err(bad(path, "has no rows"));
    }
    Ok(rows)
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::read(path, e))
}

fn read_csv(path: &Path, features: &[String]) -> Result<Rows> {
    let text = read_text(path)?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| bad(path, "is empty"))?
        .split(',')
        .map(|h| h.trim().trim_matches('"').to_string())
        .collect();
    let cols = columns(path, &header, features)?;
    let mut x = Vec::new();
    let mut n = 0;
    for (r, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != header.len() {
            return Err(bad(
                path,
                format!(
                    "row {r} has {} cells, the header {}",
                    cells.len(),
                    header.len()
                ),
            ));
        }
        for (&c, name) in cols.iter().zip(features) {
            let cell = cells[c].trim().trim_matches('"');
            let v: f64 = cell
                .parse()
                .map_err(|_| bad(path, format!("row {r}: {name} is '{cell}', not a number")))?;
            x.push(finite(path, r, name, v)?);
        }
        n += 1;
    }
    Ok(Rows {
        x,
        n,
        note: "csv".into(),
    })
}

fn columns(path: &Path, header: &[String], features: &[String]) -> Result<Vec<usize>> {
    features
        .iter()
        .map(|f| {
            header.iter().position(|h| h == f).ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "has no column `{f}` (the model's features: {})",
                        features.join(",")
                    ),
                )
            })
        })
        .collect()
}

fn read_json(path: &Path, features: &[String]) -> Result<Rows> {
    let value: serde_json::Value = serde_json::from_str(&read_text(path)?)
        .map_err(|e| bad(path, format!("is not JSON: {e}")))?;
    let items = value
        .as_array()
        .ok_or_else(|| bad(path, "must be a JSON array of objects, one per row"))?;
    let mut x = Vec::with_capacity(items.len() * features.len());
    for (r, item) in items.iter().enumerate() {
        for name in features {
            let v = item
                .get(name)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| bad(path, format!("row {r} has no number `{name}`")))?;
            x.push(finite(path, r, name, v)?);
        }
    }
    Ok(Rows {
        x,
        n: items.len(),
        note: "json".into(),
    })
}

fn read_parquet(path: &Path, features: &[String], scaler: Option<&Scaler>) -> Result<Rows> {
    let file = std::fs::File::open(path).map_err(|e| Error::read(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(path, format!("is not a Parquet file: {e}")))?;
    let schema = builder.schema().clone();
    let header: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let cols = columns(path, &header, features)?;
    // pull's splits hold standardised features next to their Kafka coordinates.
    let created_by = builder
        .metadata()
        .file_metadata()
        .created_by()
        .unwrap_or("")
        .to_string();
    let snapshot = created_by.starts_with("emshap-ci") && header.iter().any(|h| h == "offset");
    let unscale = if snapshot {
        let s = scaler.ok_or_else(|| {
            bad(path, "is a snapshot split (standardised values) and the models folder has no scaler.json to convert it back")
        })?;
        if s.features != features {
            return Err(bad(
                path,
                "is a snapshot split of other features than the model's",
            ));
        }
        Some(s)
    } else {
        None
    };
    let reader = builder
        .build()
        .map_err(|e| bad(path, format!("cannot be read: {e}")))?;
    let d = features.len();
    let mut x = Vec::new();
    let mut n = 0;
    for batch in reader {
        let batch = batch.map_err(|e| bad(path, format!("cannot be read: {e}")))?;
        let mut cols_f64: Vec<Vec<f64>> = Vec::with_capacity(d);
        for (&c, name) in cols.iter().zip(features) {
            let a = batch.column(c);
            let v: Vec<f64> = if let Some(a) = a.as_any().downcast_ref::<Float32Array>() {
                (0..a.len())
                    .map(|i| {
                        if a.is_null(i) {
                            f64::NAN
                        } else {
                            f64::from(a.value(i))
                        }
                    })
                    .collect()
            } else if let Some(a) = a.as_any().downcast_ref::<Float64Array>() {
                (0..a.len())
                    .map(|i| if a.is_null(i) { f64::NAN } else { a.value(i) })
                    .collect()
            } else {
                return Err(bad(
                    path,
                    format!("column `{name}` is {}, not float", a.data_type()),
                ));
            };
            cols_f64.push(v);
        }
        for i in 0..batch.num_rows() {
            for (j, (name, col)) in features.iter().zip(&cols_f64).enumerate() {
                let mut v = col[i];
                if let Some(s) = unscale {
                    v = v * s.std[j] + s.mean[j];
                }
                x.push(finite(path, n, name, v)?);
            }
            n += 1;
        }
    }
    Ok(Rows {
        x,
        n,
        note: if snapshot {
            "parquet (a snapshot split: standardised values converted back with scaler.json)".into()
        } else {
            "parquet".into()
        },
    })
}
