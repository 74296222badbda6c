//! Shapley values (DESIGN §6): v(S) = f(x_S, E[x_S̄ | x_S]), f the power model and the
//! conditional mean EMSHAP's imputation, both through their ONNX graphs (`OnnxValue`).
//!
//! - **Exact** (d ≤ 12 by default): v on all 2^d coalitions, φ_i = Σ_{S∌i} |S|!(d−|S|−1)!/d!
//!   · (v(S∪{i}) − v(S)).
//! - **KernelSHAP** otherwise: coalitions drawn from the Shapley kernel (size s with
//!   probability ∝ 1/(s(d−s)), then a uniform subset of that size), each with its complement
//!   (paired, antithetic); φ is the least-squares fit of v(S) − v(∅) ≈ Σ_{i∈S} φ_i under the
//!   efficiency constraint Σφ = f(x) − v(∅), solved exactly (Lagrange, Cholesky). Its error
//!   estimate: the pairs split into groups, φ solved per group, the standard deviation of
//!   the group solutions over √groups (batch means).
//!
//! The value function is a trait, so the algorithms are tested on functions whose Shapley
//! values are known (tests below).

use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::onnx::{Session, Tensor};

/// Exact enumeration up to this many features by default (2^12 = 4,096 coalitions a row).
pub const EXACT_MAX_DEFAULT: usize = 12;
/// `--exact` is refused above this (2^16 = 65,536 coalitions a row).
pub const EXACT_MAX: usize = 16;
/// KernelSHAP coalitions per row by default (paired: half as many independent draws).
pub const DEFAULT_SAMPLES: usize = 512;
/// Groups for KernelSHAP's batch-means error estimate.
const GROUPS: usize = 8;

/// A coalition value function for one row at a time.
pub trait ValueFunction {
    fn d(&self) -> usize;
    /// v(S) of row `x` for each coalition in `masks` (row-major, d per coalition, 1.0 = in
    /// S, i.e. observed).
    fn values(&mut self, x: &[f32], masks: &[f32]) -> Result<Vec<f64>>;
    /// After `values`: the same values from G independent groups of its Monte Carlo draws
    /// (`[G][coalitions]`; their mean is what `values` returned), for standard errors that
    /// include the value function's own noise. None for an exact value function.
    fn group_values(&self) -> Option<&[Vec<f64>]> {
        None
    }
    /// Fresh Monte Carlo randomness for the next row (shared by all its coalitions).
    fn reseed(&mut self, _seed: u64) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Method {
    Exact,
    Kernel { samples: usize },
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Exact => write!(f, "exact enumeration"),
            Method::Kernel { samples } => write!(f, "KernelSHAP, {samples} paired samples"),
        }
    }
}

/// The method for `d` features: `--exact`, `--samples N`, or exact up to 12 features.
pub fn choose(d: usize, exact: bool, samples: Option<usize>) -> Result<Method> {
    if exact {
        if d > EXACT_MAX {
            return Err(Error::usage(
                "--exact",
                format!("{d} features need 2^{d} coalitions a row; exact enumeration stops at {EXACT_MAX} (use --samples N)"),
            ));
        }
        return Ok(Method::Exact);
    }
    match samples {
        Some(n) if n < 2 * d || n % 2 == 1 => Err(Error::usage(
            "--samples",
            format!("{n}: give an even number of at least 2·d = {} (paired coalitions, enough to fit {d} values)", 2 * d),
        )),
        Some(n) => Ok(Method::Kernel { samples: n }),
        None if d <= EXACT_MAX_DEFAULT => Ok(Method::Exact),
        None => Ok(Method::Kernel {
            samples: DEFAULT_SAMPLES,
        }),
    }
}

/// One row's attribution.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub phi: Vec<f64>,
    /// v(∅): the prediction with every feature imputed.
    pub base_value: f64,
    /// v(N) = f(x).
    pub f_x: f64,
    /// KernelSHAP's standard error per φ (exact: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<Vec<f64>>,
    /// |Σφ − (f(x) − v(∅))|: zero up to rounding (both methods guarantee it).
    pub efficiency_gap: f64,
}

pub fn explain_row(
    vf: &mut dyn ValueFunction,
    x: &[f32],
    method: Method,
    seed: u64,
) -> Result<Explanation> {
    match method {
        Method::Exact => exact(vf, x),
        Method::Kernel { samples } => kernel(vf, x, samples, seed),
    }
}

fn finish(phi: Vec<f64>, base_value: f64, f_x: f64, stderr: Option<Vec<f64>>) -> Explanation {
    let efficiency_gap = (phi.iter().sum::<f64>() - (f_x - base_value)).abs();
    Explanation {
        phi,
        base_value,
        f_x,
        stderr,
        efficiency_gap,
    }
}

/// Shapley values by enumerating every coalition.
pub fn exact(vf: &mut dyn ValueFunction, x: &[f32]) -> Result<Explanation> {
    let d = vf.d();
    let m = 1usize << d;
    let mut masks = vec![0f32; m * d];
    for s in 0..m {
        for j in 0..d {
            if s >> j & 1 == 1 {
                masks[s * d + j] = 1.0;
            }
        }
    }
    let v = vf.values(x, &masks)?;
    let phi = enumerate(&v, d);
    // φ is linear in v: the groups' φ are independent replicas whose mean is φ.
    let stderr = vf.group_values().map(|groups| {
        let fits: Vec<Vec<f64>> = groups.iter().map(|g| enumerate(g, d)).collect();
        batch_means_se(&fits, d)
    });
    Ok(finish(phi, v[0], v[m - 1], stderr))
}

/// φ from the values of all 2^d coalitions (bit j of the index = feature j in S).
pub fn enumerate(v: &[f64], d: usize) -> Vec<f64> {
    let m = 1usize << d;
    // w(s) = s!(d−s−1)!/d! = 1 / (d · C(d−1, s)).
    let mut binom = vec![1f64; d];
    for s in 1..d {
        binom[s] = binom[s - 1] * (d - s) as f64 / s as f64;
    }
    let w: Vec<f64> = binom.iter().map(|c| 1.0 / (d as f64 * c)).collect();
    let mut phi = vec![0f64; d];
    for s in 0..m {
        let size = (s as u64).count_ones() as usize;
        for (i, p) in phi.iter_mut().enumerate() {
            if s >> i & 1 == 0 {
                *p += w[size] * (v[s | 1 << i] - v[s]);
            }
        }
    }
    phi
}

/// The standard error of the mean of independent replicas `fits` ([G][d]).
fn batch_means_se(fits: &[Vec<f64>], d: usize) -> Vec<f64> {
    let g = fits.len() as f64;
    (0..d)
        .map(|i| {
            let mean = fits.iter().map(|f| f[i]).sum::<f64>() / g;
            let var = fits.iter().map(|f| (f[i] - mean).powi(2)).sum::<f64>() / (g - 1.0).max(1.0);
            (var / g).sqrt()
        })
        .collect()
}

/// `samples` coalitions from the Shapley kernel, in complementary pairs.
pub fn kernel_masks(d: usize, samples: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    // P(size = s) ∝ 1/(s(d−s)), s = 1..d−1.
    let p: Vec<f64> = (1..d).map(|s| 1.0 / (s * (d - s)) as f64).collect();
    let total: f64 = p.iter().sum();
    let mut idx: Vec<usize> = (0..d).collect();
    let mut masks = Vec::with_capacity(samples * d);
    for _ in 0..samples / 2 {
        let mut r = rng.random::<f64>() * total;
        let mut size = d - 1;
        for (k, pk) in p.iter().enumerate() {
            if r < *pk {
                size = k + 1;
                break;
            }
            r -= pk;
        }
        // A uniform subset of that size (partial Fisher–Yates).
        for k in 0..size {
            let j = rng.random_range(k..d);
            idx.swap(k, j);
        }
        let mut mask = vec![0f32; d];
        for &j in &idx[..size] {
            mask[j] = 1.0;
        }
        masks.extend_from_slice(&mask);
        masks.extend(mask.iter().map(|b| 1.0 - b));
    }
    masks
}

/// KernelSHAP with paired samples and the efficiency constraint.
pub fn kernel(
    vf: &mut dyn ValueFunction,
    x: &[f32],
    samples: usize,
    seed: u64,
) -> Result<Explanation> {
    let d = vf.d();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut masks = vec![0f32; d];
    masks.extend(std::iter::repeat_n(1f32, d));
    masks.extend(kernel_masks(d, samples, &mut rng));
    let v = vf.values(x, &masks)?;
    let (base, fx) = (v[0], v[1]);
    let z = &masks[2 * d..];
    let y: Vec<f64> = v[2..].iter().map(|vs| vs - base).collect();
    let pairs = samples / 2;
    let phi = constrained_fit(z, &y, d, fx - base, 0..pairs)?;
    // Replica g: the g-th block of coalition pairs, valued with the g-th group of the value
    // function's draws (when it has groups), so the error includes both sources of noise.
    let draw_groups = vf.group_values();
    let groups = draw_groups
        .map_or(GROUPS, |g| g.len())
        .min(pairs / d.max(1));
    let stderr = (groups >= 2).then(|| {
        let per = pairs / groups;
        let fits: Vec<Vec<f64>> = (0..groups)
            .filter_map(|g| {
                let yg: Vec<f64> = match draw_groups {
                    Some(dg) => dg[g][2..].iter().map(|vs| vs - base).collect(),
                    None => y.clone(),
                };
                constrained_fit(z, &yg, d, fx - base, g * per..(g + 1) * per).ok()
            })
            .collect();
        batch_means_se(&fits, d)
    });
    Ok(finish(phi, base, fx, stderr))
}

/// min Σ_j (y_j − z_jᵀφ)² subject to Σφ = total, over the sample pairs `pairs` (each pair is
/// two consecutive rows of `z`).
fn constrained_fit(
    z: &[f32],
    y: &[f64],
    d: usize,
    total: f64,
    pairs: std::ops::Range<usize>,
) -> Result<Vec<f64>> {
    let mut a = vec![0f64; d * d];
    let mut b = vec![0f64; d];
    for j in pairs.start * 2..pairs.end * 2 {
        let zj = &z[j * d..(j + 1) * d];
        for p in 0..d {
            if zj[p] == 0.0 {
                continue;
            }
            b[p] += y[j];
            for q in 0..d {
                if zj[q] != 0.0 {
                    a[p * d + q] += 1.0;
                }
            }
        }
    }
    // A tiny ridge keeps A positive definite when a feature was (almost) never sampled.
    let trace: f64 = (0..d).map(|p| a[p * d + p]).sum();
    for p in 0..d {
        a[p * d + p] += 1e-10 * trace.max(1.0);
    }
    let l = cholesky(&a, d).ok_or_else(|| {
        Error::Internal(anyhow::anyhow!(
            "KernelSHAP: the coalition matrix is singular (too few samples for {d} features)"
        ))
    })?;
    let ainv_b = solve(&l, d, &b);
    let ainv_1 = solve(&l, d, &vec![1.0; d]);
    let lambda = (ainv_b.iter().sum::<f64>() - total) / ainv_1.iter().sum::<f64>();
    Ok((0..d).map(|i| ainv_b[i] - lambda * ainv_1[i]).collect())
}

/// Lower-triangular L with A = L·Lᵀ, or None when A is not positive definite.
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * d + j] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

fn solve(l: &[f64], d: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0f64; d];
    for i in 0..d {
        let s: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * d + i];
    }
    let mut x = vec![0f64; d];
    for i in (0..d).rev() {
        let s: f64 = (i + 1..d).map(|k| l[k * d + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * d + i];
    }
    x
}

/// EMSHAP's `imputed` output, [n, d]: for row `x` (length d) under each of the n coalitions
/// in `observed` ([n, d]), every one with the same candidate randomness `z` and `u` ([K, d]).
/// The importance-weighted conditional mean of DESIGN §4 (with the energy off, the
/// proposal's exact mixture mean). The plug-in value function scores it; the sampled one
/// centres its draws on it.
fn imputed(
    emshap: &mut Session,
    x: &[f32],
    observed: Vec<f32>,
    z: &[f32],
    u: &[f32],
    k: usize,
) -> Result<Vec<f32>> {
    let d = x.len();
    let n = observed.len() / d;
    let t = |shape: Vec<usize>, data: Vec<f32>| Tensor { shape, data };
    let rep = |v: &[f32]| v.repeat(n);
    emshap
        .run(vec![
            ("features", t(vec![n, d], rep(x))),
            ("observed", t(vec![n, d], observed)),
            ("noise", t(vec![n, k, d], rep(z))),
            ("component_u", t(vec![n, k, d], rep(u))),
        ])?
        .into_iter()
        .find(|(name, _)| name == "imputed")
        .map(|(_, t)| t.data)
        .ok_or_else(|| {
            Error::usage(
                "--models",
                "the EMSHAP model has no `imputed` output (DESIGN §5)",
            )
        })
}

/// Coalitions per ONNX Runtime call (EMSHAP's intermediates are rows·K·d·128 floats).
const BATCH: usize = 256;

/// v(S) through the ONNX graphs: EMSHAP imputes the features outside S (its `imputed`
/// output, the importance-weighted conditional mean of DESIGN §4), the power model scores the
/// completed row. Each row gets its own proposal randomness (`reseed`), shared by all its
/// coalitions (common random numbers: differences between coalitions are not noise).
pub struct OnnxValue {
    power: Session,
    emshap: Session,
    d: usize,
    k: usize,
    z: Vec<f32>,
    u: Vec<f32>,
}

impl OnnxValue {
    pub fn new(power: &[u8], emshap: &[u8], d: usize, k: usize, threads: usize) -> Result<Self> {
        let mut v = Self {
            power: Session::new(power, threads)?,
            emshap: Session::new(emshap, threads)?,
            d,
            k,
            z: Vec::new(),
            u: Vec::new(),
        };
        v.draw_randomness(0);
        Ok(v)
    }

    /// The proposal randomness for the next row.
    fn draw_randomness(&mut self, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = self.k * self.d;
        self.u = (0..n).map(|_| rng.random::<f32>()).collect();
        self.z = (0..n)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
    }
}

impl ValueFunction for OnnxValue {
    fn d(&self) -> usize {
        self.d
    }

    fn reseed(&mut self, seed: u64) {
        self.draw_randomness(seed);
    }

    fn values(&mut self, x: &[f32], masks: &[f32]) -> Result<Vec<f64>> {
        let (d, k) = (self.d, self.k);
        let m = masks.len() / d;
        let mut out = Vec::with_capacity(m);
        for start in (0..m).step_by(BATCH) {
            let len = BATCH.min(m - start);
            let observed = masks[start * d..(start + len) * d].to_vec();
            let imputed = imputed(&mut self.emshap, x, observed, &self.z, &self.u, k)?;
            let f = self
                .power
                .run(vec![(
                    "features",
                    Tensor {
                        shape: vec![len, d],
                        data: imputed,
                    },
                )])?
                .swap_remove(0)
                .1;
            out.extend(f.data.iter().map(|&p| f64::from(p)));
        }
        Ok(out)
    }
}

/// Rows (coalitions × draws) per EMSHAP call of the sampler, and the most candidates
/// (rows × K) per call.
const SAMPLER_ROWS: usize = 4096;
const SAMPLER_CANDIDATES: usize = 65_536;

/// What the EMSHAP graph's metadata says about its energy correction (DESIGN §5).
pub fn energy_correction(model: &[u8]) -> Option<bool> {
    metadata(model, "energy_correction").map(|v| v == "on")
}

/// One metadata_props value of an ONNX model.
pub fn metadata(model: &[u8], key: &str) -> Option<String> {
    use prost::Message;
    crate::proto::onnx::ModelProto::decode(model)
        .ok()?
        .metadata_props
        .into_iter()
        .find(|p| p.key == key)
        .map(|p| p.value)
}

/// The conditional value function of DESIGN §6, v(S) = E[f(x_S, X_S̄) | X_S = x_S]: for each
/// coalition, `draws` joint samples of X_S̄ given x_S drawn through `emshap_model.onnx`
/// autoregressively (the unobserved features in index order, each drawn given x_S and
/// those already drawn), each completed row scored by the power model, v(S) their mean.
///
/// One draw of feature j given the current observed set: with the energy correction off
/// the graph is the proposal, and `samples[·, 0, j]` (K = 1) is an exact draw from q_j;
/// with it on, sampling–importance–resampling: K candidates `samples[·, k, j]`, one chosen
/// with probability `weights[·, k, j]` (ACE's `sample`).
///
/// The draws of each coalition are then centred on the graph's one-step conditional mean
/// (`centre_draws`; `--value-function uncentred` skips it).
///
/// v(N) = f(x); v(∅) = E[f(X)], the power model's `base_value` metadata (its mean over the
/// train split) when it has one, else sampled like any coalition. Common random numbers:
/// draw m of feature j uses the same normals and uniforms in every coalition of a row, so
/// differences between coalitions are mostly free of sampling noise.
pub struct Sampled {
    power: Session,
    emshap: Session,
    d: usize,
    draws: usize,
    k: usize,
    energy: bool,
    /// Centre each group's draws on the graph's `imputed` (see `centre_draws`).
    centred: bool,
    base_value: Option<f64>,
    groups: usize,
    /// Per draw m: normals and uniforms [K, d] for the candidates, and [d] for the
    /// resampling choice.
    z: Vec<f32>,
    u: Vec<f32>,
    pick: Vec<f32>,
    last_groups: Vec<Vec<f64>>,
}

impl Sampled {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        power: &[u8],
        emshap: &[u8],
        d: usize,
        draws: usize,
        proposals: usize,
        centred: bool,
        threads: usize,
    ) -> Result<Self> {
        let energy = energy_correction(emshap).unwrap_or(true);
        let base_value = metadata(power, "base_value").and_then(|v| v.parse::<f64>().ok());
        let mut v = Self {
            power: Session::new(power, threads)?,
            emshap: Session::new(emshap, threads)?,
            d,
            draws,
            k: if energy { proposals.max(1) } else { 1 },
            energy,
            centred,
            base_value,
            // Groups that keep each antithetic pair together: a divisor of the pair count.
            groups: (1..=GROUPS)
                .rev()
                .find(|g| (draws / 2).max(1).is_multiple_of(*g))
                .unwrap_or(1),
            z: Vec::new(),
            u: Vec::new(),
            pick: Vec::new(),
            last_groups: Vec::new(),
        };
        v.draw_randomness(0);
        Ok(v)
    }

    pub fn energy(&self) -> bool {
        self.energy
    }

    pub fn base_value(&self) -> Option<f64> {
        self.base_value
    }

    /// The randomness for the next row.
    ///
    /// Variance reduction: draws come in antithetic pairs (draw m + M/2 uses −z of draw m and
    /// the same uniforms), and the uniforms are stratified over the pairs (Latin hypercube:
    /// per candidate and feature, pair p's uniform lies in the p-th of M/2 equal strata, in a
    /// random order). For a mixture proposal this makes the draws' component frequencies and
    /// their spread around each component's mean nearly exact. Draw m's value-function group
    /// is m mod G, so a pair always falls in one group.
    fn draw_randomness(&mut self, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5a3b_1e00);
        let (draws, k, d) = (self.draws, self.k, self.d);
        let pairs = (draws / 2).max(1);
        let cells = k * d;
        let stratified = |rng: &mut ChaCha8Rng, cells: usize| -> Vec<f32> {
            // [pairs][cells]
            let mut out = vec![0f32; pairs * cells];
            let mut perm: Vec<usize> = (0..pairs).collect();
            for c in 0..cells {
                perm.shuffle(rng);
                for (p, &stratum) in perm.iter().enumerate() {
                    out[p * cells + c] =
                        ((stratum as f64 + rng.random::<f64>()) / pairs as f64) as f32;
                }
            }
            out
        };
        let u_pairs = stratified(&mut rng, cells);
        let pick_pairs = stratified(&mut rng, d);
        // The normals are stratified too: z = Φ⁻¹(u) of a Latin hypercube over the pairs, so
        // with their antithetic halves each feature's normals have nearly exact moments
        // (the squares a nonlinear f takes of them above all).
        let z_pairs: Vec<f32> = stratified(&mut rng, cells)
            .into_iter()
            .map(|u| normal_quantile(f64::from(u).clamp(1e-12, 1.0 - 1e-12)) as f32)
            .collect();
        self.u = Vec::with_capacity(draws * cells);
        self.z = Vec::with_capacity(draws * cells);
        self.pick = Vec::with_capacity(draws * d);
        for m in 0..draws {
            if m < 2 * pairs {
                let (p, sign) = if m < pairs {
                    (m, 1.0)
                } else {
                    (m - pairs, -1.0)
                };
                self.u
                    .extend_from_slice(&u_pairs[p * cells..(p + 1) * cells]);
                self.z
                    .extend(z_pairs[p * cells..(p + 1) * cells].iter().map(|z| z * sign));
                self.pick.extend_from_slice(&pick_pairs[p * d..(p + 1) * d]);
            } else {
                // An odd last draw: plain randomness.
                self.u.extend((0..cells).map(|_| rng.random::<f32>()));
                self.z
                    .extend((0..cells).map(|_| rng.sample::<f32, _>(StandardNormal)));
                self.pick.extend((0..d).map(|_| rng.random::<f32>()));
            }
        }
    }

    /// Completes `rows` (row-major [R, d], with `obs` [R, d]; each row r is draw
    /// `draw_of[r]`) by sampling every unobserved feature, in place.
    fn complete(&mut self, feat: &mut [f32], obs: &mut [f32], draw_of: &[usize]) -> Result<()> {
        let (d, k) = (self.d, self.k);
        let per_call = SAMPLER_ROWS.min(SAMPLER_CANDIDATES / k).max(1);
        loop {
            let active: Vec<usize> = (0..draw_of.len())
                .filter(|&r| obs[r * d..(r + 1) * d].iter().any(|&b| b < 0.5))
                .collect();
            if active.is_empty() {
                return Ok(());
            }
            for chunk in active.chunks(per_call) {
                let n = chunk.len();
                let mut f_in = Vec::with_capacity(n * d);
                let mut o_in = Vec::with_capacity(n * d);
                let mut z_in = Vec::with_capacity(n * k * d);
                let mut u_in = Vec::with_capacity(n * k * d);
                for &r in chunk {
                    f_in.extend_from_slice(&feat[r * d..(r + 1) * d]);
                    o_in.extend_from_slice(&obs[r * d..(r + 1) * d]);
                    let m = draw_of[r];
                    z_in.extend_from_slice(&self.z[m * k * d..(m + 1) * k * d]);
                    u_in.extend_from_slice(&self.u[m * k * d..(m + 1) * k * d]);
                }
                let t = |shape: Vec<usize>, data: Vec<f32>| Tensor { shape, data };
                let out = self.emshap.run(vec![
                    ("features", t(vec![n, d], f_in)),
                    ("observed", t(vec![n, d], o_in)),
                    ("noise", t(vec![n, k, d], z_in)),
                    ("component_u", t(vec![n, k, d], u_in)),
                ])?;
                let get = |name: &str| {
                    out.iter()
                        .find(|(o, _)| o == name)
                        .map(|(_, t)| &t.data)
                        .ok_or_else(|| {
                            Error::usage(
                                "--models",
                                format!("the EMSHAP model has no `{name}` output (DESIGN §5)"),
                            )
                        })
                };
                let samples = get("samples")?;
                let weights = if self.energy {
                    Some(get("weights")?)
                } else {
                    None
                };
                for (b, &r) in chunk.iter().enumerate() {
                    let j = (0..d)
                        .find(|&j| obs[r * d + j] < 0.5)
                        .expect("active rows have an unobserved feature");
                    let choice = match weights {
                        None => 0,
                        Some(w) => sir_choice(
                            (0..k).map(|kk| w[(b * k + kk) * d + j]),
                            self.pick[draw_of[r] * d + j],
                        ),
                    };
                    feat[r * d + j] = samples[(b * k + choice) * d + j];
                    obs[r * d + j] = 1.0;
                }
            }
        }
    }
}

/// Φ⁻¹(p), the standard normal quantile, for 0 < p < 1: Acklam's rational approximation
/// (relative error below 1.2e-9), far below the f32 the graph takes.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Centres one coalition's joint draws on the model's conditional means: `draws` is `[M, d]`
/// (draw m in value-function group m mod `groups`), `observed` (`[d]`) the coalition, `mean`
/// (`[d]`) the graph's `imputed` for it. Within each group, every unobserved feature's draws are
/// shifted by one constant so that their average is `mean[j]`; observed features are left
/// alone.
///
/// Why: the autoregressive draws of a later feature are a chain of conditionals, each with
/// the model's error, while `imputed` is the model's E[X_j | x_S] in one step; with an exact
/// model both are right, and the centred draws still converge to the conditional law as M
/// grows (moment matching). The chain's error in the mean, and all Monte Carlo noise in it,
/// leaves the value of a linear f: BENCHMARKS.md, "EMSHAP quality". Per group, so the groups
/// stay independent replicas for the standard error. docs/attribution.md.
pub fn centre_draws(draws: &mut [f32], observed: &[f32], mean: &[f32], groups: usize) {
    let d = observed.len();
    let m = draws.len() / d;
    let groups = groups.clamp(1, m.max(1));
    for g in 0..groups {
        for j in (0..d).filter(|&j| observed[j] < 0.5) {
            let (sum, n) = (g..m).step_by(groups).fold((0f64, 0usize), |(s, n), r| {
                (s + f64::from(draws[r * d + j]), n + 1)
            });
            if n == 0 {
                continue;
            }
            let shift = f64::from(mean[j]) - sum / n as f64;
            for r in (g..m).step_by(groups) {
                draws[r * d + j] = (f64::from(draws[r * d + j]) + shift) as f32;
            }
        }
    }
}

/// Sampling–importance–resampling's choice: the first candidate k with u < Σ_{k' ≤ k} w_k'
/// (the last when rounding leaves none). docs/attribution.md.
pub fn sir_choice(weights: impl Iterator<Item = f32>, u: f32) -> usize {
    let mut acc = 0f32;
    let mut last = 0;
    for (k, w) in weights.enumerate() {
        acc += w;
        last = k;
        if u < acc {
            return k;
        }
    }
    last
}

impl ValueFunction for Sampled {
    fn d(&self) -> usize {
        self.d
    }

    fn reseed(&mut self, seed: u64) {
        self.draw_randomness(seed);
    }

    fn values(&mut self, x: &[f32], masks: &[f32]) -> Result<Vec<f64>> {
        let d = self.d;
        let m = masks.len() / d;
        let draws = self.draws;
        let g = self.groups;
        let mut groups = vec![vec![0f64; m]; g];
        let mut out = vec![0f64; m];
        // Coalitions needing samples: not full, and not empty when v(∅) is known.
        let sampled: Vec<usize> = (0..m)
            .filter(|&c| {
                let mask = &masks[c * d..(c + 1) * d];
                let full = mask.iter().all(|&b| b > 0.5);
                let empty = mask.iter().all(|&b| b < 0.5);
                !(full || (empty && self.base_value.is_some()))
            })
            .collect();
        let coalitions_per_batch = (SAMPLER_ROWS * 4 / draws).max(1);
        let mut fx = None;
        for batch in sampled.chunks(coalitions_per_batch) {
            let rows = batch.len() * draws;
            let mut feat = Vec::with_capacity(rows * d);
            let mut obs = Vec::with_capacity(rows * d);
            let mut draw_of = Vec::with_capacity(rows);
            for &c in batch {
                for mm in 0..draws {
                    feat.extend_from_slice(x);
                    obs.extend_from_slice(&masks[c * d..(c + 1) * d]);
                    draw_of.push(mm);
                }
            }
            self.complete(&mut feat, &mut obs, &draw_of)?;
            if self.centred {
                let means = self.conditional_means(x, masks, batch)?;
                for (i, &c) in batch.iter().enumerate() {
                    centre_draws(
                        &mut feat[i * draws * d..(i + 1) * draws * d],
                        &masks[c * d..(c + 1) * d],
                        &means[i * d..(i + 1) * d],
                        g,
                    );
                }
            }
            let f = self
                .power
                .run(vec![(
                    "features",
                    Tensor {
                        shape: vec![rows, d],
                        data: feat,
                    },
                )])?
                .swap_remove(0)
                .1
                .data;
            for (i, &c) in batch.iter().enumerate() {
                let vals = &f[i * draws..(i + 1) * draws];
                out[c] = vals.iter().map(|&v| f64::from(v)).sum::<f64>() / draws as f64;
                for (gi, grp) in groups.iter_mut().enumerate() {
                    // Draws are split into g interleaved groups.
                    let (sum, n) = vals
                        .iter()
                        .skip(gi)
                        .step_by(g)
                        .fold((0f64, 0usize), |(s, n), &v| (s + f64::from(v), n + 1));
                    grp[c] = sum / n.max(1) as f64;
                }
            }
        }
        for c in 0..m {
            let mask = &masks[c * d..(c + 1) * d];
            let v = if mask.iter().all(|&b| b > 0.5) {
                *fx.get_or_insert(self.f(x)?)
            } else if mask.iter().all(|&b| b < 0.5) && self.base_value.is_some() {
                self.base_value.expect("checked")
            } else {
                continue;
            };
            out[c] = v;
            for grp in groups.iter_mut() {
                grp[c] = v;
            }
        }
        self.last_groups = groups;
        Ok(out)
    }

    fn group_values(&self) -> Option<&[Vec<f64>]> {
        (self.groups >= 2).then_some(self.last_groups.as_slice())
    }
}

impl Sampled {
    /// The graph's `imputed` for row `x` under each coalition of `batch`, with draw 0's K
    /// candidates' randomness (with the energy off, the proposal's exact mixture mean).
    fn conditional_means(&mut self, x: &[f32], masks: &[f32], batch: &[usize]) -> Result<Vec<f32>> {
        let (d, k) = (self.d, self.k);
        let observed = batch
            .iter()
            .flat_map(|&c| &masks[c * d..(c + 1) * d])
            .copied()
            .collect();
        imputed(
            &mut self.emshap,
            x,
            observed,
            &self.z[..k * d],
            &self.u[..k * d],
            k,
        )
    }

    fn f(&mut self, x: &[f32]) -> Result<f64> {
        let y = self
            .power
            .run(vec![(
                "features",
                Tensor {
                    shape: vec![1, self.d],
                    data: x.to_vec(),
                },
            )])?
            .swap_remove(0)
            .1
            .data;
        Ok(f64::from(y[0]))
    }
}

/// The feature names an exported model was trained on (its `feature_names` metadata).
pub fn feature_names(model: &[u8], path: &Path) -> Result<Vec<String>> {
    use prost::Message;
    let proto = crate::proto::onnx::ModelProto::decode(model).map_err(|e| {
        Error::usage(
            "--models",
            format!("{} is not an ONNX model: {e}", path.display()),
        )
    })?;
    proto
        .metadata_props
        .iter()
        .find(|p| p.key == "feature_names")
        .map(|p| p.value.split(',').map(String::from).collect())
        .ok_or_else(|| {
            Error::usage(
                "--models",
                format!(
                    "{} has no feature_names metadata (export it with emshap-ci train)",
                    path.display()
                ),
            )
        })
}

/// `explain`'s settings.
#[derive(Debug, Clone)]
pub struct ExplainSettings {
    pub models: std::path::PathBuf,
    pub rows: std::path::PathBuf,
    pub out: std::path::PathBuf,
    pub exact: bool,
    pub samples: Option<usize>,
    /// Only the first this many rows.
    pub limit: Option<usize>,
    /// EMSHAP proposal samples K per imputation (per SIR step with the energy on).
    pub proposals: usize,
    /// The value function and its joint draws per coalition.
    pub value: ValueChoice,
    pub seed: u64,
    pub threads: usize,
}

/// Which value function, with how many Monte Carlo draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ValueFunctionKind {
    #[default]
    /// v(S) = E[f(x_S, X_S̄) | x_S] from joint samples centred on the model's conditional
    /// mean (DESIGN §6; the default).
    Expectation,
    /// The same expectation from the joint samples as drawn, not centred (for comparison).
    Uncentred,
    /// v(S) = f(x_S, E[X_S̄ | x_S]): exact only for a linear f (kept for comparison).
    Mean,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ValueChoice {
    pub kind: ValueFunctionKind,
    /// Joint samples of X_S̄ per coalition (expectation).
    pub draws: usize,
}

/// Joint draws per coalition by default: exact enumeration, and KernelSHAP (whose least
/// squares over many coalitions averages their noise; BENCHMARKS.md, "EMSHAP quality").
/// `ValueChoice::draws` = 0 picks by method.
pub const DEFAULT_DRAWS: usize = 64;
pub const DEFAULT_KERNEL_DRAWS: usize = 16;

/// The output of `explain` (and the rows of the global attribution).
#[derive(Debug, Clone, Serialize)]
pub struct Attributions {
    pub format: String,
    pub features: Vec<String>,
    #[serde(flatten)]
    pub method: Method,
    pub value_function: ValueFunctionKind,
    /// Joint draws per coalition (expectation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draws: Option<usize>,
    pub proposals: usize,
    /// Whether the EMSHAP graph applies its energy correction (its metadata).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_correction: Option<bool>,
    /// Where v(∅) comes from: the power model's stored mean over its train split, or the
    /// value function itself.
    pub base_value_source: String,
    pub seed: u64,
    pub rows_from: String,
    pub rows: Vec<Explanation>,
    pub seconds: f64,
}

/// The model pair `explain` needs from a models folder: both ONNX files, the features.
pub fn load_models(dir: &Path) -> Result<(Vec<u8>, Vec<u8>, Vec<String>)> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::usage(
                    "--models",
                    format!(
                        "{} not found (train both models first: emshap-ci train power / train emshap --out {})",
                        path.display(),
                        dir.display()
                    ),
                )
            } else {
                Error::read(&path, e)
            }
        })
    };
    let power = read(crate::train::POWER_ONNX)?;
    let emshap = read(crate::train::EMSHAP_ONNX)?;
    let features = feature_names(&power, &dir.join(crate::train::POWER_ONNX))?;
    let other = feature_names(&emshap, &dir.join(crate::train::EMSHAP_ONNX))?;
    if features != other {
        return Err(Error::usage(
            "--models",
            format!(
                "{} and {} were trained on different features",
                crate::train::POWER_ONNX,
                crate::train::EMSHAP_ONNX
            ),
        ));
    }
    Ok((power, emshap, features))
}

/// Explains `n` rows (row-major raw values) with the models' pair.
#[allow(clippy::too_many_arguments)]
pub fn explain_rows(
    power: &[u8],
    emshap: &[u8],
    features: Vec<String>,
    x: &[f32],
    method: Method,
    value: ValueChoice,
    proposals: usize,
    seed: u64,
    threads: usize,
    rows_from: String,
    progress: &crate::progress::Progress,
) -> Result<Attributions> {
    let started = std::time::Instant::now();
    let d = features.len();
    let n = x.len() / d;
    progress.set_total(n as u64, "rows");
    let mut rows = Vec::with_capacity(n);
    let energy = energy_correction(emshap);
    let base_value_source;
    let value = ValueChoice {
        draws: match (value.draws, method) {
            (0, Method::Exact) => DEFAULT_DRAWS,
            (0, Method::Kernel { .. }) => DEFAULT_KERNEL_DRAWS,
            (n, _) => n,
        },
        ..value
    };
    let mut vf: Box<dyn ValueFunction> = match value.kind {
        ValueFunctionKind::Expectation | ValueFunctionKind::Uncentred => {
            if value.draws < 2 {
                return Err(Error::usage(
                    "--draws",
                    "give at least 2 joint draws per coalition",
                ));
            }
            let centred = value.kind == ValueFunctionKind::Expectation;
            let vf = Sampled::new(power, emshap, d, value.draws, proposals, centred, threads)?;
            base_value_source = match vf.base_value() {
                Some(_) => "power model metadata: its mean prediction over the train split".into(),
                None => format!(
                    "sampled ({} joint draws; the power model has no base_value metadata)",
                    value.draws
                ),
            };
            Box::new(vf)
        }
        ValueFunctionKind::Mean => {
            base_value_source = "plug-in: f at EMSHAP's imputation of every feature".into();
            Box::new(OnnxValue::new(power, emshap, d, proposals, threads)?)
        }
    };
    for (r, row) in x.chunks(d).enumerate() {
        let row_seed = seed.wrapping_add(r as u64);
        vf.reseed(row_seed);
        rows.push(explain_row(vf.as_mut(), row, method, row_seed)?);
        progress.inc(1);
    }
    progress.finish();
    Ok(Attributions {
        format: "emshap-ci.explain/2".into(),
        features,
        method,
        value_function: value.kind,
        draws: (value.kind != ValueFunctionKind::Mean).then_some(value.draws),
        proposals,
        energy_correction: energy,
        base_value_source,
        seed,
        rows_from,
        rows,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `emshap-ci explain`: reads the rows, explains them, writes JSON or CSV.
pub fn explain(s: &ExplainSettings, progress: &crate::progress::Progress) -> Result<Attributions> {
    let out_ext = s
        .out
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if out_ext != "json" && out_ext != "csv" {
        return Err(Error::usage(
            "--out",
            format!("{}: name a .json or .csv file", s.out.display()),
        ));
    }
    let (power, emshap, features) = load_models(&s.models)?;
    let scaler_path = s.models.join(crate::pull::snapshot::SCALER_FILE);
    let scaler = scaler_path
        .is_file()
        .then(|| crate::pull::snapshot::Scaler::load(&scaler_path))
        .transpose()?;
    let mut rows = crate::rows::read(&s.rows, &features, scaler.as_ref())?;
    if let Some(n) = s.limit.filter(|&n| n < rows.n) {
        rows.x.truncate(n * features.len());
        rows.n = n;
    }
    let method = choose(features.len(), s.exact, s.samples)?;
    let from = format!("{} ({})", s.rows.display(), rows.note);
    let a = explain_rows(
        &power,
        &emshap,
        features,
        &rows.x,
        method,
        s.value,
        s.proposals,
        s.seed,
        s.threads,
        from,
        progress,
    )?;
    let bytes = if out_ext == "json" {
        let mut b = serde_json::to_vec_pretty(&a).map_err(|e| Error::Internal(e.into()))?;
        b.push(b'\n');
        b
    } else {
        to_csv(&a).into_bytes()
    };
    if let Some(dir) = s.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::write(dir, e))?;
    }
    crate::pull::snapshot::write_atomic(&s.out, &bytes)?;
    Ok(a)
}

/// One line per row: row, f_x, base_value, efficiency_gap, `phi_<feature>`… (and
/// `stderr_<feature>`… for KernelSHAP).
pub fn to_csv(a: &Attributions) -> String {
    let kernel = a.rows.iter().any(|r| r.stderr.is_some());
    let mut head = vec![
        "row".to_string(),
        "f_x".into(),
        "base_value".into(),
        "efficiency_gap".into(),
    ];
    head.extend(a.features.iter().map(|f| format!("phi_{f}")));
    if kernel {
        head.extend(a.features.iter().map(|f| format!("stderr_{f}")));
    }
    let mut out = head.join(",") + "\n";
    for (i, r) in a.rows.iter().enumerate() {
        let mut cells = vec![
            i.to_string(),
            r.f_x.to_string(),
            r.base_value.to_string(),
            r.efficiency_gap.to_string(),
        ];
        cells.extend(r.phi.iter().map(f64::to_string));
        if let Some(se) = &r.stderr {
            cells.extend(se.iter().map(f64::to_string));
        }
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// The global attribution `evaluate` records: mean |φ| per feature over explained rows, and
/// the largest efficiency gap among them.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Global {
    pub rows: usize,
    pub method: String,
    pub proposals: usize,
    #[serde(default)]
    pub value_function: Option<String>,
    #[serde(default)]
    pub draws: Option<usize>,
    pub mean_abs_phi: std::collections::BTreeMap<String, f64>,
    /// Mean f(x) − v(∅) over the rows (what the φ add up to, on average).
    pub mean_prediction_minus_base: f64,
    pub efficiency_gap: f64,
    pub seconds: f64,
}

pub fn global(a: &Attributions) -> Global {
    let n = a.rows.len().max(1) as f64;
    let mean_abs_phi = a
        .features
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                f.clone(),
                a.rows.iter().map(|r| r.phi[i].abs()).sum::<f64>() / n,
            )
        })
        .collect();
    Global {
        rows: a.rows.len(),
        method: a.method.to_string(),
        proposals: a.proposals,
        value_function: Some(format!("{:?}", a.value_function).to_lowercase()),
        draws: a.draws,
        mean_abs_phi,
        mean_prediction_minus_base: a.rows.iter().map(|r| r.f_x - r.base_value).sum::<f64>() / n,
        efficiency_gap: a.rows.iter().map(|r| r.efficiency_gap).fold(0.0, f64::max),
        seconds: a.seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// v(S) = f(x_S, mean_S̄) for a closure f: the value function of a model with
    /// independent features, whose conditional mean is the plain mean.
    struct Independent<F: Fn(&[f64]) -> f64> {
        mean: Vec<f64>,
        f: F,
    }

    impl<F: Fn(&[f64]) -> f64> ValueFunction for Independent<F> {
        fn d(&self) -> usize {
            self.mean.len()
        }
        fn values(&mut self, x: &[f32], masks: &[f32]) -> Result<Vec<f64>> {
            let d = self.d();
            Ok(masks
                .chunks(d)
                .map(|m| {
                    let row: Vec<f64> = (0..d)
                        .map(|j| {
                            if m[j] > 0.5 {
                                f64::from(x[j])
                            } else {
                                self.mean[j]
                            }
                        })
                        .collect();
                    (self.f)(&row)
                })
                .collect())
        }
    }

    fn linear(w: Vec<f64>, mean: Vec<f64>) -> Independent<impl Fn(&[f64]) -> f64> {
        Independent {
            mean,
            f: move |r: &[f64]| 3.0 + r.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// φ_i = w_i (x_i − E[x_i]), exactly, by both methods (a linear v leaves KernelSHAP
        /// nothing to estimate once every pair of features is split by some sampled
        /// coalition); efficiency holds. With 4d + 8 samples (2d + 4 pairs) a pair of features
        /// stays unsplit with probability ≈ 0.61^20 ≈ 5·10⁻⁵ at d = 8, which over the cases
        /// and pairs of a run failed about one run in a hundred: KernelSHAP then shares the
        /// pair's attribution equally (a rank-deficient design, not an estimation error).
        /// 16d + 32 samples make it ≈ 0.61^80 per pair.
        #[test]
        fn a_linear_model_gets_w_times_x_minus_mean(
            (w, mean, x) in (2usize..10).prop_flat_map(|d| (
                prop::collection::vec(-5.0f64..5.0, d),
                prop::collection::vec(-2.0f64..2.0, d),
                prop::collection::vec(-3.0f32..3.0, d),
            )),
            seed in 0u64..1000,
        ) {
            let d = w.len();
            let want: Vec<f64> = (0..d).map(|i| w[i] * (f64::from(x[i]) - mean[i])).collect();
            let mut vf = linear(w, mean);
            for method in [Method::Exact, Method::Kernel { samples: 16 * d + 2 * (d % 2) + 32 }] {
                let e = explain_row(&mut vf, &x, method, seed).unwrap();
                for i in 0..d {
                    prop_assert!((e.phi[i] - want[i]).abs() < 1e-6, "{method}: φ {:?} want {want:?}", e.phi);
                }
                prop_assert!(e.efficiency_gap < 1e-9);
            }
        }
    }

    /// A model with interactions: KernelSHAP agrees with enumeration within its sampling
    /// error, efficiency is exact, an ignored feature gets ≈ 0 and symmetric features equal φ.
    #[test]
    #[allow(clippy::needless_range_loop)]
    fn kernel_shap_matches_enumeration_and_the_axioms_hold() {
        let d = 10;
        // x0 and x1 enter symmetrically; x9 is ignored.
        let f = |r: &[f64]| {
            r[0] * r[1] + (r[0] + r[1]).powi(2) + 2.0 * r[2] * r[3] * r[4] - r[5].abs() * r[6]
                + r[7].sin()
                + 0.5 * r[8]
        };
        let mean = vec![0.1; d];
        let x: Vec<f32> = vec![1.5, 1.5, -1.0, 0.5, 2.0, -1.2, 0.7, 0.3, 2.5, 9.0];
        let mut vf = Independent {
            mean: mean.clone(),
            f,
        };
        let ex = exact(&mut vf, &x).unwrap();
        assert!(ex.efficiency_gap < 1e-9, "{ex:?}");
        assert!(ex.phi[9].abs() < 1e-12, "null feature: {ex:?}");
        assert!((ex.phi[0] - ex.phi[1]).abs() < 1e-9, "symmetry: {ex:?}");
        let ks = kernel(&mut vf, &x, 4096, 7).unwrap();
        assert!(ks.efficiency_gap < 1e-9, "{ks:?}");
        let se = ks.stderr.clone().unwrap();
        for i in 0..d {
            let err = (ks.phi[i] - ex.phi[i]).abs();
            // Within 4 estimated standard errors (and the estimate is not absurdly loose).
            assert!(
                err <= 4.0 * se[i] + 1e-9,
                "φ{i}: {} vs {} (se {})",
                ks.phi[i],
                ex.phi[i],
                se[i]
            );
            assert!(se[i] < 0.2, "φ{i} se {}", se[i]);
        }
        assert!(
            ks.phi[9].abs() <= 4.0 * se[9] + 1e-9,
            "null feature: {ks:?}"
        );
        // More samples, smaller error.
        let coarse = kernel(&mut vf, &x, 256, 7).unwrap();
        let err = |e: &Explanation| -> f64 {
            e.phi
                .iter()
                .zip(&ex.phi)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        assert!(err(&ks) < err(&coarse), "{} vs {}", err(&ks), err(&coarse));
    }

    #[test]
    fn the_normal_quantile_inverts_the_normal_cdf() {
        // Φ(z) at known points (tables), and symmetry.
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_984_540_054),
            (0.841_344_746_068_542_9, 1.0),
            (0.001_349_898_031_630_094_6, -3.0),
            (0.01, -2.326_347_874_040_841),
            (1e-10, -6.361_340_902_404_056),
        ] {
            let got = normal_quantile(p);
            assert!(
                (got - z).abs() < 1e-8 * z.abs().max(1.0),
                "Φ⁻¹({p}) = {got}, want {z}"
            );
            assert!((normal_quantile(1.0 - p) + got).abs() < 1e-7);
        }
    }

    #[test]
    fn kernel_masks_are_paired_and_never_empty_or_full() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let d = 20;
        let m = kernel_masks(d, 200, &mut rng);
        assert_eq!(m.len(), 200 * d);
        for pair in m.chunks(2 * d) {
            let (a, b) = pair.split_at(d);
            let size: f32 = a.iter().sum();
            assert!(size >= 1.0 && size <= (d - 1) as f32);
            assert!(a.iter().zip(b).all(|(p, q)| p + q == 1.0));
        }
    }

    #[test]
    fn the_method_follows_d_and_the_flags() {
        assert_eq!(choose(12, false, None).unwrap(), Method::Exact);
        assert_eq!(
            choose(20, false, None).unwrap(),
            Method::Kernel {
                samples: DEFAULT_SAMPLES
            }
        );
        assert_eq!(
            choose(5, false, Some(64)).unwrap(),
            Method::Kernel { samples: 64 }
        );
        assert!(choose(20, true, None).is_err());
        assert!(choose(20, false, Some(21)).is_err());
        assert!(choose(20, false, Some(10)).is_err());
    }
}
