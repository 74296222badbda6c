//! The train split's reference for drift (DESIGN §3, issue 16): per feature and for the
//! target, exact quantiles p0, p1, …, p100, count, missing, mean, sd, and the atoms (values
//! that hold more than 1 % of the observed rows, such as `gpu_util` = 0). With them, PSI on
//! the reference's deciles is exact for any new raw window and a KS statistic from the 101
//! quantiles is exact to the grid's resolution. The figures are exact order statistics (see
//! `column`: two passes and a sort of a few buckets), the same for the same rows, bit for
//! bit.

use serde::{Deserialize, Serialize};

/// Values that hold more than this share of the observed rows are atoms.
pub const ATOM_SHARE: f64 = 0.01;

/// One column's reference.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnReference {
    pub name: String,
    /// Observed (non-missing) rows.
    pub count: u64,
    pub missing: u64,
    pub mean: f64,
    pub sd: f64,
    /// `q[k]` = the smallest observed value x with F(x) ≥ k/100 (the empirical distribution's
    /// inverse; `q[0]` is the minimum, `q[100]` the maximum). Empty when nothing was observed.
    pub quantiles: Vec<f64>,
    /// Values holding more than 1 % of the observed rows, with their shares, ascending.
    pub atoms: Vec<Atom>,
    /// The observed rows in each drift bin (`drift::bins`: the deciles' ranges, tied edges
    /// merged, then each atom), so PSI against this reference is exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bin_counts: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Atom {
    pub value: f64,
    pub share: f64,
}

/// The order-preserving key of an f32 (total order, -0 < +0; NaN is never passed).
fn key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

const BUCKETS: usize = 1 << 16;
const NONE: u32 = u32::MAX;

/// One column's reference, built in two passes over its values (see `column`).
struct Builder {
    count: Vec<u32>,
    n: usize,
    missing: u64,
    sum: f64,
    sq: f64,
    mean: f64,
    before: Vec<usize>,
    ranks: Vec<usize>,
    slot: Vec<u32>,
    wanted: Vec<usize>,
    picked: Vec<Vec<f32>>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            count: vec![0; BUCKETS],
            n: 0,
            missing: 0,
            sum: 0.0,
            sq: 0.0,
            mean: 0.0,
            before: Vec::new(),
            ranks: Vec::new(),
            slot: Vec::new(),
            wanted: Vec::new(),
            picked: Vec::new(),
        }
    }

    #[inline]
    fn first(&mut self, v: f32) {
        if v.is_nan() {
            self.missing += 1;
            return;
        }
        self.n += 1;
        self.sum += f64::from(v);
        self.count[(key(v) >> 16) as usize] += 1;
    }

    /// Between the passes: which buckets hold a wanted rank or a possible atom.
    fn prepare(&mut self) {
        let n = self.n;
        self.mean = self.sum / n.max(1) as f64;
        self.before = vec![0usize; BUCKETS + 1];
        for b in 0..BUCKETS {
            self.before[b + 1] = self.before[b] + self.count[b] as usize;
        }
        // The smallest x with F(x) ≥ k/100 is the value at rank ceil(k·n/100) (1-based).
        self.ranks = (0..=100).map(|k| (k * n).div_ceil(100).max(1)).collect();
        self.slot = vec![NONE; BUCKETS];
        if n == 0 {
            return;
        }
        let atom_min = (n as f64 * ATOM_SHARE) as u32;
        let mut want: Vec<usize> = self.ranks.iter().map(|&r| self.bucket_of(r)).collect();
        want.extend((0..BUCKETS).filter(|&b| self.count[b] > atom_min));
        for b in want {
            if self.slot[b] == NONE {
                self.slot[b] = self.wanted.len() as u32;
                self.wanted.push(b);
                self.picked.push(Vec::with_capacity(self.count[b] as usize));
            }
        }
    }

    fn bucket_of(&self, rank: usize) -> usize {
        self.before.partition_point(|&c| c < rank) - 1
    }

    #[inline]
    fn second(&mut self, v: f32) {
        if v.is_nan() {
            return;
        }
        self.sq += (f64::from(v) - self.mean).powi(2);
        let s = self.slot[(key(v) >> 16) as usize];
        if s != NONE {
            self.picked[s as usize].push(v);
        }
    }

    fn finish(mut self, name: &str) -> ColumnReference {
        let n = self.n;
        if n == 0 {
            return ColumnReference {
                name: name.into(),
                count: 0,
                missing: self.missing,
                mean: 0.0,
                sd: 0.0,
                quantiles: Vec::new(),
                atoms: Vec::new(),
                bin_counts: Vec::new(),
            };
        }
        for p in &mut self.picked {
            // Integer-valued metrics put one value in a bucket: nothing to sort there.
            if p.windows(2).any(|w| w[0] != w[1]) {
                p.sort_unstable_by(f32::total_cmp);
            }
        }
        let quantiles = self
            .ranks
            .iter()
            .map(|&r| {
                let b = self.bucket_of(r);
                f64::from(self.picked[self.slot[b] as usize][r - self.before[b] - 1])
            })
            .collect();
        let mut atoms = Vec::new();
        let mut buckets = self.wanted.clone();
        buckets.sort_unstable();
        for b in buckets {
            let p = &self.picked[self.slot[b] as usize];
            let mut i = 0;
            while i < p.len() {
                let mut j = i + 1;
                while j < p.len() && p[j] == p[i] {
                    j += 1;
                }
                let share = (j - i) as f64 / n as f64;
                if share > ATOM_SHARE {
                    atoms.push(Atom {
                        value: f64::from(p[i]),
                        share,
                    });
                }
                i = j;
            }
        }
        ColumnReference {
            name: name.into(),
            count: n as u64,
            missing: self.missing,
            mean: self.mean,
            sd: (self.sq / n as f64).sqrt(),
            quantiles,
            atoms,
            bin_counts: Vec::new(),
        }
    }
}

/// The reference of one column from its values (NaN = missing). Exact, without sorting the
/// column: one pass counts the values by the top 16 bits of their order-preserving keys
/// (65,536 buckets), which places each wanted rank (and each value holding > 1 % of the
/// rows) in one bucket; a second pass collects only those buckets' values, which are sorted.
pub fn column(name: &str, values: &[f32]) -> ColumnReference {
    let mut b = Builder::new();
    values.iter().for_each(|&v| b.first(v));
    b.prepare();
    values.iter().for_each(|&v| b.second(v));
    let mut r = b.finish(name);
    let mut c = BinCounter::new(&r);
    values.iter().for_each(|&v| c.add(v));
    r.bin_counts = c.counts;
    r
}

/// Counts values into a reference's drift bins (a third pass, once the bins are known).
struct BinCounter {
    his: Vec<f32>,
    atoms: Vec<f32>,
    counts: Vec<u64>,
}

impl BinCounter {
    fn new(r: &ColumnReference) -> Self {
        let bins = crate::drift::bins(r);
        let mut his = Vec::new();
        let mut atoms = Vec::new();
        for b in &bins {
            match b {
                crate::drift::Bin::Range { hi, .. } => his.push(*hi as f32),
                crate::drift::Bin::Atom(v) => atoms.push(*v as f32),
            }
        }
        BinCounter {
            counts: if r.count == 0 {
                Vec::new()
            } else {
                vec![0; bins.len()]
            },
            his,
            atoms,
        }
    }

    #[inline]
    fn add(&mut self, v: f32) {
        if v.is_nan() || self.counts.is_empty() {
            return;
        }
        if let Some(k) = self.atoms.iter().position(|&a| a == v) {
            self.counts[self.his.len() + k] += 1;
            return;
        }
        let i = self.his.partition_point(|&hi| hi < v);
        self.counts[i] += 1;
    }
}

/// The references of the `names.len()` columns of row-major `values`, over the rows `rows`:
/// the same as `column` for each, in row-major passes (no column is gathered), the columns
/// shared out over the available cores.
pub fn columns(names: &[String], values: &[f32], rows: &[u32]) -> Vec<ColumnReference> {
    let d = names.len();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, d.max(1));
    let per = d.div_ceil(threads.max(1)).max(1);
    let groups: Vec<std::ops::Range<usize>> =
        (0..d).step_by(per).map(|a| a..(a + per).min(d)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| s.spawn(|| columns_in(names, values, rows, d, g.clone())))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("reference thread"))
            .collect()
    })
}

/// `columns` for the columns `cols` of a row-major table with `d` columns.
fn columns_in(
    names: &[String],
    values: &[f32],
    rows: &[u32],
    d: usize,
    cols: std::ops::Range<usize>,
) -> Vec<ColumnReference> {
    let mut b: Vec<Builder> = cols.clone().map(|_| Builder::new()).collect();
    for &i in rows {
        let row = &values[i as usize * d + cols.start..i as usize * d + cols.end];
        for (bj, &v) in b.iter_mut().zip(row) {
            bj.first(v);
        }
    }
    b.iter_mut().for_each(Builder::prepare);
    for &i in rows {
        let row = &values[i as usize * d + cols.start..i as usize * d + cols.end];
        for (bj, &v) in b.iter_mut().zip(row) {
            bj.second(v);
        }
    }
    let mut refs: Vec<ColumnReference> = b
        .into_iter()
        .zip(&names[cols.clone()])
        .map(|(bj, name)| bj.finish(name))
        .collect();
    let mut counters: Vec<BinCounter> = refs.iter().map(BinCounter::new).collect();
    for &i in rows {
        let row = &values[i as usize * d + cols.start..i as usize * d + cols.end];
        for (c, &v) in counters.iter_mut().zip(row) {
            c.add(v);
        }
    }
    for (r, c) in refs.iter_mut().zip(counters) {
        r.bin_counts = c.counts;
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_orders_as_the_numbers_and_quantiles_match_a_full_sort() {
        let v = [
            3.5f32,
            -1.0,
            0.0,
            1e-30,
            -1e30,
            f32::INFINITY,
            2.0,
            -2.5,
            1e30,
        ];
        let mut by_key = v.to_vec();
        by_key.sort_by_key(|&x| key(x));
        let mut by_value = v.to_vec();
        by_value.sort_by(f32::total_cmp);
        assert_eq!(by_key, by_value);
        // Against a full sort, on skewed data with ties and negatives.
        let mut rng = 12345u64;
        let data: Vec<f32> = (0..20_001)
            .map(|i| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (rng >> 40) as f32 / (1u64 << 24) as f32;
                if i % 7 == 0 {
                    0.0
                } else {
                    (u * 50.0).exp() - 3.0
                }
            })
            .collect();
        let r = column("x", &data);
        let mut s = data.clone();
        s.sort_by(f32::total_cmp);
        for k in 0..=100usize {
            let rank = (k * s.len()).div_ceil(100).max(1);
            assert_eq!(r.quantiles[k], f64::from(s[rank - 1]), "p{k}");
        }
        assert_eq!(r.atoms.len(), 1, "{:?}", r.atoms);
        assert_eq!(r.atoms[0].value, 0.0);
        // The row-major form gives the same references, column by column.
        let mut table = Vec::new();
        for (i, &v) in data.iter().enumerate() {
            table.extend([v, i as f32, if i % 3 == 0 { f32::NAN } else { 1.0 }]);
        }
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let rows: Vec<u32> = (0..data.len() as u32).collect();
        // (On a machine with several cores the columns are split over threads: 3 columns
        // on 2 cores are the groups [a, b] and [c].)
        let all = columns(&names, &table, &rows);
        assert_eq!(all.len(), 3);
        for (j, name) in names.iter().enumerate() {
            let c: Vec<f32> = table.iter().skip(j).step_by(3).copied().collect();
            assert_eq!(all[j], column(name, &c), "column {name}");
        }
        assert_eq!(all[0].quantiles, r.quantiles);
    }

    #[test]
    fn quantiles_are_the_empirical_inverse_and_atoms_are_found() {
        // 0 holds 30 % of the values (an atom); the rest are 1..=70.
        let mut values: Vec<f32> = vec![0.0; 30];
        values.extend((1..=70).map(|i| i as f32));
        values.push(f32::NAN);
        let r = column("gpu_util", &values);
        assert_eq!((r.count, r.missing), (100, 1));
        assert_eq!(r.quantiles.len(), 101);
        assert_eq!(r.quantiles[0], 0.0);
        assert_eq!(r.quantiles[30], 0.0); // F(0) = 0.30 ≥ 0.30
        assert_eq!(r.quantiles[31], 1.0);
        assert_eq!(r.quantiles[50], 20.0);
        assert_eq!(r.quantiles[100], 70.0);
        assert_eq!(
            r.atoms,
            vec![Atom {
                value: 0.0,
                share: 0.3
            }]
        );
        assert!((r.mean - (70.0 * 71.0 / 2.0) / 100.0).abs() < 1e-12);
        // Nothing observed: empty quantiles, no atoms.
        let r = column("x", &[f32::NAN, f32::NAN]);
        assert_eq!((r.count, r.missing, r.quantiles.len()), (0, 2, 0));
    }
}
