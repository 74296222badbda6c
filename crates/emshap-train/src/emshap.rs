//! EMSHAP (DESIGN §4): a GRU proposal giving, per feature, a mixture of M Gaussians and a
//! context vector from the observed features; a residual energy network scoring candidate
//! values; the importance-sampled loss with K proposal samples; dynamic masking.
//!
//! Less work than the textbook formulation, same function: energies are computed only for
//! unobserved (row, feature) entries, and the part of the energy network's first layer that
//! depends on the feature's one-hot and context (not on the candidate value) is computed
//! once per entry instead of once per candidate. The GRU runs one step from a zero state, so
//! its recurrent weights multiply zero: only the input weights and both biases exist.
//!
//! The exported graph takes the caller's randomness (`noise`, `component_u`), so it is
//! deterministic, and the proof compares it with `dense`, the same computation in libtorch.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::data::{self, Snapshot, Split};
use super::fit::{self, Trainee};
use super::power::{proof_rows, sample_rows};
use super::tensors::{self, Comparison};
use super::{
    Checkpoint, EmshapSettings, EnergyChoice, TrainReport, EMSHAP_CHECKPOINT, EMSHAP_HISTORY,
    EMSHAP_ONNX,
};
use emshap_ci::error::{Error, Result};
use emshap_ci::kpi::{column_sd, emshap_kpis, fixed_draws, FixedDraws};
use emshap_ci::onnx;
use emshap_ci::progress::Progress;

use emshap_ci::graphs::{
    self, Dense, EmshapWeights, EnergyWeights, Matrix, Stamp, ENERGY_MAX, HALF_LOG_2PI, SCALE_FLOOR,
};
/// Validation rows of the K → 4K convergence check of the energy-on/off decision.
const DECIDE_ROWS: usize = 256;
/// Rows per libtorch/ONNX Runtime call when scoring (bounds memory: rows·(K+1)·d·hidden).
const CHUNK: usize = 256;

pub struct Net {
    d: i64,
    m: i64,
    c: i64,
    w_ih: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    head1: nn::Linear,
    head2: nn::Linear,
    /// [x_S, mask] → the head's output, added to it (`linear_skip`).
    skip: Option<nn::Linear>,
    /// mask → ReLU → A(mask) [d·d]: each feature's component means shift by A(mask)·x_S
    /// (`mask_linear`).
    mask_linear: Option<(nn::Linear, nn::Linear)>,
    inp: nn::Linear,
    blocks: Vec<(nn::Linear, nn::Linear)>,
    out: nn::Linear,
}

/// The proposal's parameters for a batch: [B, d, M] ×3 and the context [B, d, C].
struct Proposal {
    logits: Tensor,
    means: Tensor,
    scales: Tensor,
    ctx: Tensor,
}

/// The caller's randomness, per entry: uniforms choosing the component, standard normals.
enum Draws<'a> {
    Fresh,
    /// [N, d, K] each, row-major over entries.
    Given {
        u: &'a Tensor,
        z: &'a Tensor,
    },
}

/// Sums over one batch of the loss terms.
struct LossSums {
    /// −Σ_rows Σ_i u_i log q_i(x_i), plus −Σ u_i log p̂_i(x_i) and the penalty when the
    /// energy trains.
    loss: Tensor,
    /// −Σ log p̂_i(x_i) over the unobserved entries.
    nll: Tensor,
    /// −Σ log q_i(x_i) over the unobserved entries.
    proposal_nll: Tensor,
    /// log p̂_i(x_i) and log q_i(x_i) per unobserved entry (validation sums their squares
    /// for its standard errors; training does not touch them).
    log_p: Tensor,
    log_q: Tensor,
    /// Σ (mean estimate − x)² over the unobserved entries (standardised).
    sq_err: Tensor,
    entries: i64,
}

impl Net {
    fn new(p: &nn::Path, d: i64, s: &EmshapSettings) -> Self {
        let (m, c, h, ph, eh) = (
            s.mixtures as i64,
            s.context as i64,
            s.gru_hidden as i64,
            s.proposal_hidden as i64,
            s.energy_hidden as i64,
        );
        // PyTorch's GRU initialisation: U(−1/√H, 1/√H).
        let k = 1.0 / (h as f64).sqrt();
        let init = nn::Init::Uniform { lo: -k, up: k };
        let mh = s.mask_linear_hidden as i64;
        let gru = p / "gru";
        let zero = nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        Net {
            d,
            m,
            c,
            w_ih: gru.var("weight_ih", &[3 * h, 2 * d], init),
            b_ih: gru.var("bias_ih", &[3 * h], init),
            b_hh: gru.var("bias_hh", &[3 * h], init),
            head1: nn::linear(p / "head1", h, ph, Default::default()),
            head2: nn::linear(p / "head2", ph, d * (3 * m + c), Default::default()),
            // Starts at zero: the net begins as it would without it.
            skip: s
                .linear_skip
                .then(|| nn::linear(p / "skip", 2 * d, d * (3 * m + c), zero)),
            // Its last layer starts at zero: the shift is 0 until training moves it.
            mask_linear: s.mask_linear.then(|| {
                (
                    nn::linear(p / "mask_linear_a", d, mh, Default::default()),
                    nn::linear(p / "mask_linear_b", mh, d * d, zero),
                )
            }),
            inp: nn::linear(p / "energy_in", 1 + d + c, eh, Default::default()),
            blocks: (0..s.energy_blocks)
                .map(|i| {
                    (
                        nn::linear(p / format!("block{i}_a"), eh, eh, Default::default()),
                        nn::linear(p / format!("block{i}_b"), eh, eh, Default::default()),
                    )
                })
                .collect(),
            out: nn::linear(p / "energy_out", eh, 1, Default::default()),
        }
    }

    fn proposal(&self, xs: &Tensor, b: &Tensor) -> Proposal {
        let xb = xs * b;
        let phi = Tensor::cat(&[&xb, b], 1);
        let g = phi.linear(&self.w_ih, Some(&self.b_ih)).chunk(3, 1);
        let hh = self.b_hh.chunk(3, 0);
        let r = (&g[0] + &hh[0]).sigmoid();
        let z = (&g[1] + &hh[1]).sigmoid();
        let n = (&g[2] + r * &hh[2]).tanh();
        let h = (z.neg() + 1.0) * n;
        let (m, c) = (self.m, self.c);
        let p = self.head2.forward(&self.head1.forward(&h.relu()).relu());
        let p = match &self.skip {
            Some(skip) => p + skip.forward(&phi),
            None => p,
        }
        .view([-1, self.d, 3 * m + c]);
        let means = p.narrow(2, m, m);
        let means = match &self.mask_linear {
            Some((a, l)) => {
                let coef = l.forward(&a.forward(b).relu()).view([-1, self.d, self.d]);
                means + coef.bmm(&xb.unsqueeze(2))
            }
            None => means,
        };
        Proposal {
            logits: p.narrow(2, 0, m),
            means,
            scales: p.narrow(2, 2 * m, m).softplus() + SCALE_FLOOR,
            ctx: p.narrow(2, 3 * m, c),
        }
    }

    /// Energies E_i(v) of candidates `cand` [P, K'] for entries of features `cols` [P] with
    /// contexts `ctx` [P, C]. The candidate-independent part of the first layer is computed
    /// once per entry.
    fn energy(&self, cand: &Tensor, ctx: &Tensor, cols: &Tensor) -> Tensor {
        let w = &self.inp.ws;
        let w_v = w.narrow(1, 0, 1).squeeze_dim(1);
        let w_oh_t = w.narrow(1, 1, self.d).tr();
        let w_c = w.narrow(1, 1 + self.d, self.c);
        let base = ctx.linear(&w_c, self.inp.bs.as_ref()) + w_oh_t.index_select(0, cols);
        let mut h = cand.unsqueeze(2) * w_v + base.unsqueeze(1);
        for (a, b) in &self.blocks {
            h = &h + b.forward(&a.forward(&h).relu());
        }
        self.out
            .forward(&h.relu())
            .squeeze_dim(2)
            .softplus()
            .clamp(0.0, ENERGY_MAX)
    }
}

/// log q_i(v) of the mixture, for values `v` [P, K'] and the entries' parameters [P, M].
fn log_q(v: &Tensor, logits: &Tensor, means: &Tensor, scales: &Tensor) -> Tensor {
    let logpi = logits.log_softmax(-1, Kind::Float).unsqueeze(1);
    let z = (v.unsqueeze(2) - means.unsqueeze(1)) / scales.unsqueeze(1);
    let lp = z.square() * -0.5 - scales.log().unsqueeze(1) - HALF_LOG_2PI;
    (logpi + lp).logsumexp([2i64].as_slice(), false)
}

/// The size of the terms log q_i(x) [P] is computed from, for the proof's tolerance: per
/// component |log π| + z²/2 + |log σ| and the rounding of z = (x − μ)/σ carried through z²
/// (|z|·(|x| + |μ|)/σ), weighted by the components' responsibilities. A component with a
/// tiny σ (a mixture fitting an atom such as gpu_util = 0) makes log q the small difference
/// of large terms, which two runtimes round differently.
fn log_q_scale(x: &Tensor, logits: &Tensor, means: &Tensor, scales: &Tensor) -> Tensor {
    let logpi = logits.log_softmax(-1, Kind::Float);
    let x = x.unsqueeze(1);
    let z = (&x - means) / scales;
    let lp = z.square() * -0.5 - scales.log() - HALF_LOG_2PI;
    let resp = (&logpi + &lp).softmax(-1, Kind::Float);
    let terms = logpi.abs()
        + z.square() * 0.5
        + scales.log().abs()
        + z.abs() * (x.abs() + means.abs()) / scales;
    (resp * terms).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
}

/// Draws v = μ_c + σ_c·z with the component c chosen by inverse CDF of `u` (as the graph does).
fn sample(logits: &Tensor, means: &Tensor, scales: &Tensor, u: &Tensor, z: &Tensor) -> Tensor {
    let m = logits.size()[1];
    let cdf = logits.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
    let comp = cdf
        .unsqueeze(1)
        .lt_tensor(&u.unsqueeze(2))
        .sum_dim_intlist([2i64].as_slice(), false, Kind::Int64)
        .clamp_max(m - 1);
    means.gather(1, &comp, false) + scales.gather(1, &comp, false) * z
}

fn entries(t: &Tensor, flat: &Tensor) -> Tensor {
    let last = *t.size().last().expect("rank ≥ 1");
    t.reshape([-1, last]).index_select(0, flat)
}

/// What the scoring pass returns for the entries it was given.
struct Scored {
    /// Candidates v [P, K] (standardised) and their weights [P, K].
    v: Tensor,
    w: Tensor,
    /// The conditional mean estimate per entry [P]: Σ_k w_k v_k with the energy on; the
    /// proposal mixture's own mean Σ_m π_m μ_m (exact, no sampling noise) with it off.
    mean: Tensor,
    /// log p̂(x) [P] (the residual form: log q(x) − E(x) − log Ẑ, Ẑ = mean_k exp(−E(v_k)));
    /// equal to log q(x) with the energy off.
    log_p: Tensor,
    /// log q(x) [P].
    log_q_x: Tensor,
    /// |log q(x)| + |E(x)| + |log Ẑ| per entry: the size of the terms log p̂ is the sum of,
    /// which bounds how precisely two runtimes can agree on it.
    log_p_scale: Tensor,
    /// |E(v_k)| per candidate [P, K] (1 with the energy off): the same for the weights'
    /// logits.
    logw_scale: Tensor,
}

impl Net {
    /// Scores the entries `flat` (indices into the [B·d] grid) of a batch, with or without
    /// the energy correction.
    #[allow(clippy::too_many_arguments)]
    fn score(
        &self,
        xs: &Tensor,
        b: &Tensor,
        flat: &Tensor,
        k: i64,
        draws: &Draws,
        energy: bool,
        phases: Option<&mut Phases>,
    ) -> Scored {
        let t0 = Instant::now();
        let prop = self.proposal(xs, b);
        let cols = flat.remainder(self.d);
        let (le, me, se, ce) = (
            entries(&prop.logits, flat),
            entries(&prop.means, flat),
            entries(&prop.scales, flat),
            entries(&prop.ctx, flat),
        );
        let x_e = xs.reshape([-1]).index_select(0, flat);
        let p = flat.size()[0];
        let v = tch::no_grad(|| {
            let (u, z) = match draws {
                Draws::Fresh => (
                    Tensor::rand([p, k], (Kind::Float, xs.device())),
                    Tensor::randn([p, k], (Kind::Float, xs.device())),
                ),
                Draws::Given { u, z } => (entries(u, flat), entries(z, flat)),
            };
            sample(&le, &me, &se, &u, &z)
        });
        let log_q_x = log_q(&x_e.unsqueeze(1), &le, &me, &se).squeeze_dim(1);
        let t1 = Instant::now();
        let scored = if energy {
            let cand = Tensor::cat(&[x_e.unsqueeze(1), v.shallow_clone()], 1);
            let e = self.energy(&cand, &ce, &cols);
            let e_x = e.select(1, 0);
            let e_v = e.narrow(1, 1, k);
            let logw = e_v.neg();
            let log_z = logw.logsumexp([1i64].as_slice(), false) - (k as f64).ln();
            let log_p_scale = (log_q_scale(&x_e, &le, &me, &se) + e_x.abs() + log_z.abs()).detach();
            // The proposal learns from its own likelihood term only.
            let log_p = log_q_x.detach() - e_x - log_z;
            let w = logw.softmax(1, Kind::Float);
            Scored {
                mean: (&w * &v).sum_dim_intlist([1i64].as_slice(), false, Kind::Float),
                v,
                w,
                log_p,
                log_q_x,
                log_p_scale,
                logw_scale: e_v.abs().detach(),
            }
        } else {
            let mean = (le.softmax(-1, Kind::Float) * &me).sum_dim_intlist(
                [1i64].as_slice(),
                false,
                Kind::Float,
            );
            Scored {
                w: v.ones_like() / k as f64,
                logw_scale: v.ones_like(),
                v,
                mean,
                log_p: log_q_x.shallow_clone(),
                log_p_scale: log_q_scale(&x_e, &le, &me, &se).detach(),
                log_q_x,
            }
        };
        if let Some(p) = phases {
            p.proposal += (t1 - t0).as_secs_f64();
            p.energy += t1.elapsed().as_secs_f64();
        }
        scored
    }

    /// Sums over one batch: the training loss, and the NLLs of the density and of its
    /// proposal over the unobserved entries.
    #[allow(clippy::too_many_arguments)]
    fn loss(
        &self,
        xs: &Tensor,
        b: &Tensor,
        k: i64,
        draws: &Draws,
        energy: bool,
        penalty: f64,
        phases: Option<&mut Phases>,
    ) -> LossSums {
        let flat = (b.neg() + 1.0).reshape([-1]).nonzero().squeeze_dim(1);
        let entries = flat.size()[0];
        let s = self.score(xs, b, &flat, k, draws, energy, phases);
        let mut loss = s.log_q_x.sum(Kind::Float).neg();
        if energy {
            loss -= s.log_p.sum(Kind::Float);
            if penalty > 0.0 {
                let gap = &s.log_p - s.log_q_x.detach();
                loss += gap.square().sum(Kind::Float) * penalty;
            }
        }
        LossSums {
            loss,
            nll: s.log_p.sum(Kind::Float).neg(),
            proposal_nll: s.log_q_x.sum(Kind::Float).neg(),
            log_p: s.log_p.shallow_clone(),
            log_q: s.log_q_x.shallow_clone(),
            sq_err: (&s.mean - xs.reshape([-1]).index_select(0, &flat))
                .square()
                .sum(Kind::Float),
            entries,
        }
    }

    /// The graph's computation in libtorch, standardised units: for every entry of
    /// xs [N, d] with observed b [N, d] and randomness u, z [N, K, d], returns imputed [N, d],
    /// samples [N, K, d], weights [N, K, d], log p̂ [N, d], log q [N, d] (not yet masked),
    /// the scale of log p̂'s terms [N, d], and of the weights' logits' terms [N, K, d].
    fn dense(&self, xs: &Tensor, b: &Tensor, u: &Tensor, z: &Tensor, energy: bool) -> [Tensor; 7] {
        let (n, k, d) = (xs.size()[0], u.size()[1], self.d);
        let flat = Tensor::arange(n * d, (Kind::Int64, xs.device()));
        let u = u.permute([0, 2, 1]).contiguous();
        let z = z.permute([0, 2, 1]).contiguous();
        let s = self.score(
            xs,
            b,
            &flat,
            k,
            &Draws::Given { u: &u, z: &z },
            energy,
            None,
        );
        let to_nkd = |t: &Tensor| t.view([n, d, k]).permute([0, 2, 1]).contiguous();
        [
            s.mean.view([n, d]),
            to_nkd(&s.v),
            to_nkd(&s.w),
            s.log_p.view([n, d]),
            s.log_q_x.view([n, d]),
            s.log_p_scale.view([n, d]),
            to_nkd(&s.logw_scale),
        ]
    }

    /// The proposal's CDF per entry, [N, d, M] (for keeping the proof's uniforms off its
    /// steps, where two runtimes may round to different components).
    fn cdf(&self, xs: &Tensor, b: &Tensor) -> Tensor {
        self.proposal(xs, b)
            .logits
            .softmax(-1, Kind::Float)
            .cumsum(-1, Kind::Float)
    }
}

struct Emshap<'a> {
    net: &'a Net,
    s: &'a EmshapSettings,
    x: Tensor,
    val_x: Tensor,
    val_b: Tensor,
    val_u: Tensor,
    val_z: Tensor,
    device: Device,
    phases: Option<BTreeMap<String, f64>>,
    /// The last validation's figures (for the history).
    last_val: std::cell::Cell<Option<ValFigures>>,
    /// Rows per energy epoch (see `EmshapSettings::energy_rows`).
    energy_rows: Option<usize>,
    /// The moving average of the weights (`EmshapSettings::weight_average` > 0).
    average: Option<Average>,
}

/// An exponential moving average of a var store's weights, updated after each optimiser
/// step with decay min(β, (1 + t)/(10 + t)) (so the first steps do not pin it to the
/// initial weights), and swapped with the raw weights for validation.
struct Average {
    /// (the variable, its average)
    pairs: Vec<(Tensor, Tensor)>,
    beta: f64,
    steps: u64,
    swapped: bool,
}

impl Average {
    fn new(vs: &nn::VarStore, beta: f64) -> Self {
        Average {
            pairs: vs
                .variables()
                .into_values()
                .map(|v| {
                    let avg = v.detach().copy();
                    (v, avg)
                })
                .collect(),
            beta,
            steps: 0,
            swapped: false,
        }
    }

    fn update(&mut self) {
        let t = self.steps as f64;
        self.steps += 1;
        let beta = self.beta.min((1.0 + t) / (10.0 + t));
        tch::no_grad(|| {
            for (v, avg) in &self.pairs {
                let mut avg = avg.shallow_clone();
                let _ = avg.g_mul_scalar_(beta);
                let _ = avg.g_add_(&(v * (1.0 - beta)));
            }
        });
    }

    fn swap(&mut self, on: bool) {
        if self.swapped == on {
            return;
        }
        tch::no_grad(|| {
            for (v, avg) in &self.pairs {
                let raw = v.detach().copy();
                v.shallow_clone().copy_(avg);
                avg.shallow_clone().copy_(&raw);
            }
        });
        self.swapped = on;
    }
}

/// Validation figures of one pass, standardised units, per unobserved entry.
#[derive(Debug, Clone, Copy)]
struct ValFigures {
    nll: f64,
    proposal_nll: f64,
    /// The standard errors of `nll` and `proposal_nll` over the entries they average.
    nll_se: f64,
    proposal_nll_se: f64,
    rmse: f64,
}

/// Where an epoch's time went (CPU): batches and masks, the proposal (GRU, mixture,
/// sampling), the energy network's forward pass, the backward pass, and Adam's step.
#[derive(Debug, Default)]
struct Phases {
    data: f64,
    proposal: f64,
    energy: f64,
    backward: f64,
    optimizer: f64,
}

impl Phases {
    fn into_map(self) -> BTreeMap<String, f64> {
        [
            ("data", self.data),
            ("proposal", self.proposal),
            ("energy_forward", self.energy),
            ("backward", self.backward),
            ("optimizer", self.optimizer),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Emshap<'_> {
    /// NLL of the density (with or without the energy) and of the proposal, and the RMSE of
    /// the conditional-mean estimate, over the validation entries, with K candidates.
    fn val_figures(
        &self,
        energy: bool,
        k: i64,
        draws: Option<(&Tensor, &Tensor)>,
        rows: Option<i64>,
    ) -> ValFigures {
        let n = rows.map_or(self.val_x.size()[0], |r| r.min(self.val_x.size()[0]));
        let (mut nll, mut pnll, mut se, mut entries) = (0.0, 0.0, 0.0, 0i64);
        let (mut nll_sq, mut pnll_sq) = (0.0, 0.0);
        tch::no_grad(|| {
            for start in (0..n).step_by(CHUNK) {
                let len = (CHUNK as i64).min(n - start);
                let sl = |t: &Tensor| t.narrow(0, start, len);
                let (u, z) = match draws {
                    Some((u, z)) => (sl(u), sl(z)),
                    None => (sl(&self.val_u), sl(&self.val_z)),
                };
                let sums = self.net.loss(
                    &sl(&self.val_x),
                    &sl(&self.val_b),
                    k,
                    &Draws::Given { u: &u, z: &z },
                    energy,
                    0.0,
                    None,
                );
                nll += sums.nll.double_value(&[]);
                pnll += sums.proposal_nll.double_value(&[]);
                nll_sq += sums.log_p.square().sum(Kind::Float).double_value(&[]);
                pnll_sq += sums.log_q.square().sum(Kind::Float).double_value(&[]);
                se += sums.sq_err.double_value(&[]);
                entries += sums.entries;
            }
        });
        let e = entries.max(1) as f64;
        let se_of = |sum: f64, sq: f64| ((sq / e - (sum / e).powi(2)).max(0.0) / e).sqrt();
        ValFigures {
            nll: nll / e,
            proposal_nll: pnll / e,
            nll_se: se_of(nll, nll_sq),
            proposal_nll_se: se_of(pnll, pnll_sq),
            rmse: (se / e).sqrt(),
        }
    }
}

impl Trainee for Emshap<'_> {
    fn rows(&self) -> usize {
        self.x.size()[0] as usize
    }

    fn mask_rate(&self, epoch: usize) -> Option<f64> {
        self.s.logged_mask_rate(epoch)
    }

    fn phases(&mut self) -> Option<BTreeMap<String, f64>> {
        self.phases.take()
    }

    fn epoch_rows(&self, epoch: usize) -> usize {
        let n = self.rows();
        match self.energy_rows {
            Some(cap) if self.s.trains_energy(epoch) => n.min(cap),
            _ => n,
        }
    }

    fn lr_factor(&self, epoch: usize) -> Option<f64> {
        Some(self.s.lr_factor(epoch))
    }

    fn counts_for_patience(&self, epoch: usize) -> bool {
        epoch >= self.s.warmup_epochs
    }

    fn checkpoint_rule(&self) -> Option<Checkpoint> {
        Some(self.s.checkpoint)
    }

    fn use_average(&mut self, on: bool) {
        if let Some(a) = &mut self.average {
            a.swap(on);
        }
    }

    fn val_proposal_nll(&self) -> Option<f64> {
        self.last_val.get().map(|v| v.proposal_nll)
    }

    fn val_loss_se(&self) -> Option<f64> {
        // The loss is the smaller of the two NLLs (or the energy's alone): the larger SE
        // of the two covers either.
        self.last_val.get().map(|v| v.nll_se.max(v.proposal_nll_se))
    }

    fn train_epoch(
        &mut self,
        epoch: usize,
        opt: &mut nn::Optimizer,
        rng: &mut ChaCha8Rng,
        progress: &Progress,
    ) -> Result<f64> {
        let n = self.epoch_rows(epoch);
        let d = self.net.d as usize;
        let energy = self.s.trains_energy(epoch);
        let bs = self.s.common.batch_size;
        let mut order: Vec<i64> = (0..self.rows() as i64).collect();
        order.shuffle(rng);
        order.truncate(n);
        let order = Tensor::from_slice(&order).to_device(self.device);
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        let mut phases = Phases::default();
        for start in (0..n).step_by(bs) {
            let t0 = Instant::now();
            let len = bs.min(n - start);
            let mut xb = self
                .x
                .index_select(0, &order.narrow(0, start as i64, len as i64));
            if self.s.input_noise > 0.0 {
                xb = &xb + xb.randn_like() * self.s.input_noise;
            }
            let b = tensors::matrix(
                &self.s.training_masks(rng, len, d, epoch),
                len,
                d,
                self.device,
            );
            phases.data += t0.elapsed().as_secs_f64();
            let sums = self.net.loss(
                &xb,
                &b,
                self.s.proposals as i64,
                &Draws::Fresh,
                energy,
                self.s.energy_penalty,
                Some(&mut phases),
            );
            let loss = sums.loss / len as f64;
            let t1 = Instant::now();
            opt.zero_grad();
            loss.backward();
            let t2 = Instant::now();
            opt.step();
            if let Some(a) = &mut self.average {
                a.update();
            }
            phases.backward += (t2 - t1).as_secs_f64();
            phases.optimizer += t2.elapsed().as_secs_f64();
            total += loss.detach() * len as f64;
            progress.inc(len as u64);
        }
        // On a GPU the kernels run asynchronously: host-side phase times would mislead.
        self.phases = (!self.device.is_cuda()).then(|| phases.into_map());
        Ok(total.double_value(&[]) / n as f64)
    }

    /// The validation loss is the NLL of the density the export would ship from these
    /// weights: the proposal's during the warm-up, afterwards the better of the proposal
    /// and the energy density (with `val_proposals` candidates).
    fn validate(&self, epoch: usize) -> Result<(f64, Option<f64>)> {
        let energy = self.s.trains_energy(epoch);
        let f = self.val_figures(energy, self.s.val_proposals as i64, None, None);
        self.last_val.set(Some(f));
        let loss = if energy && self.s.energy == EnergyChoice::On {
            f.nll
        } else {
            f.nll.min(f.proposal_nll)
        };
        Ok((loss, energy.then_some(f.nll)))
    }
}

/// Whether the energy correction is kept, and the validation figures it was decided on.
#[derive(Debug, Clone, Serialize)]
pub struct EnergyDecision {
    pub on: bool,
    pub reason: String,
    /// Validation NLL per unobserved entry (standardised units) of the proposal, and of the
    /// energy density with K and 4K candidates (absent when the energy never trained).
    pub proposal_nll: f64,
    pub energy_nll: Option<f64>,
    pub energy_nll_4k: Option<f64>,
    pub k: usize,
    /// Validation RMSE (standardised) of the conditional mean, proposal and energy.
    pub proposal_rmse: f64,
    pub energy_rmse: Option<f64>,
}

/// Validation with K and 4K candidates at the chosen checkpoint: the energy stays only when
/// its NLL, less the gap between the two estimates (how far from converged it is), beats
/// the proposal's, and its conditional mean is no worse.
fn decide(t: &Emshap, seed: u64) -> EnergyDecision {
    let s = t.s;
    let k = s.val_proposals;
    let q = t.val_figures(false, 1, None, None);
    let base = EnergyDecision {
        on: false,
        reason: String::new(),
        proposal_nll: q.proposal_nll,
        energy_nll: None,
        energy_nll_4k: None,
        k,
        proposal_rmse: q.rmse,
        energy_rmse: None,
    };
    if s.energy == EnergyChoice::Off {
        return EnergyDecision {
            reason: "energy off (--energy off): the graph is the proposal".into(),
            ..base
        };
    }
    if s.warmup_epochs >= s.common.epochs {
        return EnergyDecision {
            reason: "the energy network never trained (warm-up took every epoch): the graph is the proposal".into(),
            ..base
        };
    }
    let p = t.val_figures(true, k as i64, None, None);
    // The convergence check, K against 4K candidates, on a subsample (4K is costly).
    let (n, d) = (
        (t.val_x.size()[0] as usize).min(DECIDE_ROWS),
        t.net.d as usize,
    );
    let p_sub = t.val_figures(true, k as i64, None, Some(n as i64));
    let k4 = 4 * k;
    let draws = fixed_draws(seed ^ 0x4444, n, k4, d, 0.5);
    let ndk = |v: &[f32]| {
        tensors::matrix(v, n, k4 * d, t.device)
            .view([n as i64, k4 as i64, d as i64])
            .permute([0, 2, 1])
            .contiguous()
    };
    let (u4, z4) = (ndk(&draws.u), ndk(&draws.z));
    // The 4K draws must share the K draws' masks: the same rows of the validation masks.
    let p4 = {
        let mut sub = t.val_figures(true, k4 as i64, Some((&u4, &z4)), Some(n as i64));
        sub.nll -= p_sub.nll - p.nll;
        sub
    };
    let gap = (p4.nll - p.nll).abs();
    let gain = q.proposal_nll - p.nll;
    let mut d = EnergyDecision {
        energy_nll: Some(p.nll),
        energy_nll_4k: Some(p4.nll),
        energy_rmse: Some(p.rmse),
        ..base
    };
    if s.energy == EnergyChoice::On {
        d.on = true;
        d.reason = format!(
            "energy on (--energy on); validation NLL {:.4} vs the proposal's {:.4}",
            p4.nll, q.proposal_nll
        );
    } else if gain > gap && p.rmse <= q.rmse {
        d.on = true;
        d.reason = format!(
            "energy on: validation NLL {:.4} (K = {k4}; {:.4} at K = {k}) beats the proposal's {:.4}, conditional-mean RMSE {:.4} vs {:.4}",
            p4.nll, p.nll, q.proposal_nll, p4.rmse, q.rmse
        );
    } else {
        d.reason = format!(
            "energy off: the energy density does not beat its proposal on validation (NLL {:.4} at K = {k4}, {:.4} at K = {k}, proposal {:.4}; conditional-mean RMSE {:.4} vs {:.4}): the graph is the proposal",
            p4.nll, p.nll, q.proposal_nll, p4.rmse, q.rmse
        );
    }
    d
}

/// Runs `dense` over rows in chunks; returns the outputs flattened, standardised.
#[allow(clippy::too_many_arguments)]
fn dense_all(
    net: &Net,
    xs: &[f32],
    draws: &FixedDraws,
    n: usize,
    k: usize,
    d: usize,
    energy: bool,
    device: Device,
) -> [Vec<f32>; 7] {
    let mut out: [Vec<f32>; 7] = Default::default();
    tch::no_grad(|| {
        for start in (0..n).step_by(CHUNK) {
            let len = CHUNK.min(n - start);
            let rows = |v: &[f32], w: usize| {
                tensors::matrix(&v[start * w..(start + len) * w], len, w, device)
            };
            let x = rows(xs, d);
            let b = rows(&draws.observed, d);
            let u = rows(&draws.u, k * d).view([len as i64, k as i64, d as i64]);
            let z = rows(&draws.z, k * d).view([len as i64, k as i64, d as i64]);
            for (acc, t) in out.iter_mut().zip(net.dense(&x, &b, &u, &z, energy)) {
                acc.extend(tensors::to_vec(&t));
            }
        }
    });
    out
}

/// Test-split figures in libtorch at mask rate 0.5 (evaluate re-scores through ONNX
/// Runtime): NLL and imputation RMSE over the masked entries of the shipped density, each
/// error divided by the feature's test standard deviation, the same for the proposal alone,
/// and the mean-imputation RMSE for comparison.
fn test_kpis(
    net: &Net,
    snap: &Snapshot,
    k: usize,
    energy: bool,
    seed: u64,
    device: Device,
) -> BTreeMap<String, f64> {
    let t = &snap.test;
    let (n, d) = (t.n.min(4096), t.d);
    let k = if energy { k } else { 1 };
    let draws = fixed_draws(seed ^ 0x7e57, n, k, d, 0.5);
    let xs = &t.x[..n * d];
    let raw_log = |v: &[f32]| -> Vec<f32> {
        // In standardised units: the error ratios are the same as in raw units, and the raw
        // log density is log p̂ − log σ.
        v.iter()
            .enumerate()
            .map(|(i, &v)| v - snap.scaler.std[i % d].ln() as f32)
            .collect()
    };
    let [imputed, _, _, log_p, log_q, _, _] = dense_all(net, xs, &draws, n, k, d, energy, device);
    let sd = column_sd(&t.x, d);
    let mut m = emshap_kpis(xs, &draws.observed, &imputed, &raw_log(&log_p), &sd);
    let [q_mean, _, _, _, _, _, _] = if energy {
        dense_all(net, xs, &draws, n, k, d, false, device)
    } else {
        [
            imputed.clone(),
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        ]
    };
    let q = emshap_kpis(xs, &draws.observed, &q_mean, &raw_log(&log_q), &sd);
    m.insert("proposal_nll".into(), q["nll"]);
    m.insert("proposal_imputation_rmse".into(), q["imputation_rmse"]);
    // Mean imputation: the training mean, 0 in standardised units.
    let zeros = vec![0.0; n * d];
    let baseline = emshap_kpis(xs, &draws.observed, &zeros, &raw_log(&log_p), &sd);
    m.insert("mean_imputation_rmse".into(), baseline["imputation_rmse"]);
    m.insert("rows".into(), n as f64);
    m.insert("energy".into(), if energy { 1.0 } else { 0.0 });
    m
}

fn matrix_of(t: &Tensor) -> Matrix {
    let t = t.detach().to_device(Device::Cpu);
    let size = t.size();
    Matrix::new(size[0] as usize, size[1] as usize, tensors::to_vec(&t))
}

fn dense_of(l: &nn::Linear) -> Dense {
    Dense {
        w: matrix_of(&l.ws),
        b: tensors::to_vec(&l.bs.as_ref().expect("bias").detach().to_device(Device::Cpu)),
    }
}

/// The net's weights as plain arrays (the energy network only when it is kept).
fn weights(net: &Net, s: &EmshapSettings, energy: &EnergyDecision) -> EmshapWeights {
    let vec = |t: &Tensor| tensors::to_vec(&t.detach().to_device(Device::Cpu));
    EmshapWeights {
        mixtures: net.m as usize,
        context: net.c as usize,
        gru_w_ih: matrix_of(&net.w_ih),
        gru_b_ih: vec(&net.b_ih),
        gru_b_hh: vec(&net.b_hh),
        head1: dense_of(&net.head1),
        head2: dense_of(&net.head2),
        skip: net.skip.as_ref().map(dense_of),
        mask_linear: net
            .mask_linear
            .as_ref()
            .map(|(a, l)| (dense_of(a), dense_of(l))),
        energy: energy.on.then(|| EnergyWeights {
            inp: dense_of(&net.inp),
            blocks: net
                .blocks
                .iter()
                .map(|(a, b)| (dense_of(a), dense_of(b)))
                .collect(),
            out: dense_of(&net.out),
        }),
        proposals: s.proposals,
        energy_decision: energy.reason.clone(),
    }
}

/// DESIGN §5's `emshap_model.onnx`, built by the core from the net's weights.
fn export(net: &Net, snap: &Snapshot, s: &EmshapSettings, energy: &EnergyDecision) -> Vec<u8> {
    graphs::emshap_graph(&weights(net, s, energy), &Stamp::of(snap, &s.common.sha))
}

/// Moves uniforms away from the proposal CDF's steps (by less than nothing that matters:
/// the proof's draws are ours to choose), so a last-bit difference between the runtimes
/// cannot pick a different component.
fn keep_off_steps(u: &mut [f32], cdf: &[f32], n: usize, k: usize, d: usize, m: usize) {
    for row in 0..n {
        for kk in 0..k {
            for j in 0..d {
                let steps = &cdf[(row * d + j) * m..(row * d + j + 1) * m];
                let x = &mut u[(row * k + kk) * d + j];
                for _ in 0..16 {
                    if steps.iter().all(|s| (s - *x).abs() > 1e-4) {
                        break;
                    }
                    *x = (*x + 0.381_966).fract();
                }
            }
        }
    }
}

fn prove(
    model: &[u8],
    net: &Net,
    snap: &Snapshot,
    s: &EmshapSettings,
    energy: bool,
    device: Device,
) -> Result<super::Proof> {
    let rows = proof_rows(snap);
    let (n, d, k, m) = (rows.n, rows.d, s.proposals, s.mixtures);
    let raw = data::raw_features(&rows.x, &snap.scaler);
    let xs = data::standardise_like_graph(&raw, &snap.scaler.mean, &snap.scaler.std);
    let mut draws = fixed_draws(s.common.seed ^ 0x9f00f, n, k, d, 0.5);
    let cdf = tch::no_grad(|| {
        let mut all = Vec::with_capacity(n * d * m);
        for start in (0..n).step_by(CHUNK) {
            let len = CHUNK.min(n - start);
            let x = tensors::matrix(&xs[start * d..(start + len) * d], len, d, device);
            let b = tensors::matrix(
                &draws.observed[start * d..(start + len) * d],
                len,
                d,
                device,
            );
            all.extend(tensors::to_vec(&net.cdf(&x, &b)));
        }
        all
    });
    keep_off_steps(&mut draws.u, &cdf, n, k, d, m);
    let [imp, v, w, log_p, log_q, log_p_scale, logw_scale] =
        dense_all(net, &xs, &draws, n, k, d, energy, device);
    // Per entry, the largest logit term of its weights: the imputation's scale with σ.
    let entry_terms: Vec<f64> = (0..n * d)
        .map(|i| {
            let (row, j) = (i / d, i % d);
            (0..k)
                .map(|kk| f64::from(logw_scale[(row * k + kk) * d + j]))
                .fold(1.0, f64::max)
        })
        .collect();
    // The graph's raw-unit outputs, from the standardised ones, in f32 as the graph does.
    let mean: Vec<f32> = snap.scaler.mean.iter().map(|&v| v as f32).collect();
    let std: Vec<f32> = snap.scaler.std.iter().map(|&v| v as f32).collect();
    let log_std: Vec<f32> = snap.scaler.std.iter().map(|&v| v.ln() as f32).collect();
    let want_imputed: Vec<f32> = (0..n * d)
        .map(|i| {
            if draws.observed[i] > 0.5 {
                raw[i]
            } else {
                imp[i] * std[i % d] + mean[i % d]
            }
        })
        .collect();
    let want_samples: Vec<f32> = v
        .iter()
        .enumerate()
        .map(|(i, &x)| x * std[i % d] + mean[i % d])
        .collect();
    let masked = |v: &[f32]| -> Vec<f32> {
        (0..n * d)
            .map(|i| {
                if draws.observed[i] > 0.5 {
                    0.0
                } else {
                    v[i] - log_std[i % d]
                }
            })
            .collect()
    };
    let want_density = masked(&log_p);
    let want_proposal = masked(&log_q);
    let mut cmp = Comparison::default();
    let mut session = onnx::Session::new(model, s.common.threads)?;
    for start in (0..n).step_by(CHUNK) {
        let len = CHUNK.min(n - start);
        let nd = start * d..(start + len) * d;
        let nkd = start * k * d..(start + len) * k * d;
        let out = session.run(vec![
            (
                "features",
                onnx::Tensor {
                    shape: vec![len, d],
                    data: raw[nd.clone()].to_vec(),
                },
            ),
            (
                "observed",
                onnx::Tensor {
                    shape: vec![len, d],
                    data: draws.observed[nd.clone()].to_vec(),
                },
            ),
            (
                "noise",
                onnx::Tensor {
                    shape: vec![len, k, d],
                    data: draws.z[nkd.clone()].to_vec(),
                },
            ),
            (
                "component_u",
                onnx::Tensor {
                    shape: vec![len, k, d],
                    data: draws.u[nkd.clone()].to_vec(),
                },
            ),
        ])?;
        for (name, t) in &out {
            let want: &[f32] = match name.as_str() {
                "imputed" => &want_imputed[nd.clone()],
                "samples" => &want_samples[nkd.clone()],
                "weights" => &w[nkd.clone()],
                "log_density" => &want_density[nd.clone()],
                "proposal_log_density" => &want_proposal[nd.clone()],
                other => {
                    return Err(Error::Internal(anyhow::anyhow!(
                        "the EMSHAP graph has an unexpected output {other}"
                    )))
                }
            };
            // f32 rounding is relative to the terms a value is computed from, not to the
            // value: samples are compared on their feature's σ; log_density on the size of
            // E(x) and log Ẑ; the weights on the size of their logits' terms E(v) and
            // log q(v); the imputation on σ times its weights' largest term.
            let sd = |i: usize| snap.scaler.std[i % d];
            let terms = |i: usize| f64::from(log_p_scale[start * d + i]).max(1.0);
            // log p̂'s terms include log q's (equal with the energy off).
            let q_terms = terms;
            let w_terms = |i: usize| f64::from(logw_scale[start * k * d + i]).max(1.0);
            let imp_terms = |i: usize| snap.scaler.std[i % d] * entry_terms[start * d + i];
            match name.as_str() {
                "samples" => cmp.add_scaled(EMSHAP_ONNX, name, &t.data, want, sd)?,
                "imputed" => cmp.add_scaled(EMSHAP_ONNX, name, &t.data, want, imp_terms)?,
                "log_density" => cmp.add_scaled(EMSHAP_ONNX, name, &t.data, want, terms)?,
                "proposal_log_density" => {
                    cmp.add_scaled(EMSHAP_ONNX, name, &t.data, want, q_terms)?
                }
                "weights" => cmp.add_scaled(EMSHAP_ONNX, name, &t.data, want, w_terms)?,
                _ => cmp.add(EMSHAP_ONNX, name, &t.data, want)?,
            }
        }
    }
    Ok(cmp.finish(n))
}

pub fn train(s: &EmshapSettings, progress: &Progress) -> Result<TrainReport> {
    let c = &s.common;
    let device = tensors::device(c.device)?;
    emshap_ci::native::keep_freed_memory();
    let snap = data::load(&c.data)?;
    tch::set_num_threads(c.threads as i32);
    tch::manual_seed(c.seed as i64);
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    let default_rows = if device.is_cuda() {
        0
    } else {
        super::EMSHAP_CPU_ROWS
    };
    let train_split: Split = sample_rows(&snap.train, c.max_rows.unwrap_or(default_rows), c.seed);
    let s = &s.with_step_budget(train_split.n);
    let c = &s.common;
    let d = train_split.d;
    let k = s.val_proposals;
    let vn = snap.val.n.min(s.val_rows);
    let val = fixed_draws(c.seed ^ 0x7a1, vn, k, d, 0.5);
    // The validation draws in the [N, d, K] layout the sparse loss indexes by entry.
    let ndk = |v: &[f32]| {
        tensors::matrix(v, vn, k * d, device)
            .view([vn as i64, k as i64, d as i64])
            .permute([0, 2, 1])
            .contiguous()
    };
    let vs = nn::VarStore::new(device);
    let net = Net::new(&vs.root(), d as i64, s);
    let mut trainee = Emshap {
        net: &net,
        s,
        x: tensors::matrix(&train_split.x, train_split.n, d, device),
        val_x: tensors::matrix(&snap.val.x[..vn * d], vn, d, device),
        val_b: tensors::matrix(&val.observed, vn, d, device),
        val_u: ndk(&val.u),
        val_z: ndk(&val.z),
        device,
        phases: None,
        last_val: Default::default(),
        energy_rows: s
            .energy_rows
            .or((!device.is_cuda()).then_some(super::EMSHAP_CPU_ENERGY_ROWS)),
        average: (s.weight_average > 0.0).then(|| Average::new(&vs, s.weight_average)),
    };
    let fitted = fit::fit(&vs, &mut trainee, c, &mut rng, progress)?;
    progress.finish();

    let decision = decide(&trainee, c.seed);
    tracing::info!(energy = decision.on, reason = %decision.reason, "energy correction");
    let test = test_kpis(&net, &snap, k, decision.on, c.seed, device);
    let model = export(&net, &snap, s, &decision);
    // The proof's libtorch side runs on the CPU, like ONNX Runtime here: it checks the
    // export, not how a GPU rounds.
    let (_cpu_vs, cpu_net) = tensors::on_cpu(&vs, |p| Net::new(p, d as i64, s))?;
    let proof = prove(&model, &cpu_net, &snap, s, decision.on, Device::Cpu)?;
    super::finish(
        super::Trained {
            model: "emshap",
            vs: &vs,
            device,
            common: c,
            settings: serde_json::to_value(s).map_err(|e| Error::Internal(e.into()))?,
            rows_train: train_split.n,
            rows_val: vn,
            fitted,
            test,
            proof,
            onnx: (EMSHAP_ONNX, model),
            checkpoint: EMSHAP_CHECKPOINT,
            history_file: EMSHAP_HISTORY,
            energy: Some(serde_json::to_value(&decision).map_err(|e| Error::Internal(e.into()))?),
        },
        &snap,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use emshap_ci::kpi::masks;
    use emshap_ci::settings::{resolve_train_emshap, ConfigFile};

    #[test]
    fn the_proof_passes_an_exact_export_and_catches_a_graph_that_differs() {
        let dir = tempfile::tempdir().unwrap();
        let snap = data::embedded_snapshot(dir.path());
        let mut s = resolve_train_emshap(&Default::default(), &ConfigFile::default()).unwrap();
        s.proposals = 4;
        s.common.threads = 2;
        for (on, skip, mask_linear) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (true, false, true),
        ] {
            s.linear_skip = skip;
            s.mask_linear = mask_linear;
            let vs = nn::VarStore::new(Device::Cpu);
            let net = Net::new(&vs.root(), snap.train.d as i64, &s);
            // They start at zero: give them weights, so the export is checked on them.
            let zero_started = net
                .skip
                .iter()
                .chain(net.mask_linear.iter().map(|(_, l)| l));
            for l in zero_started {
                tch::no_grad(|| {
                    let mut ws = l.ws.shallow_clone();
                    ws.copy_(&(l.ws.randn_like() * 0.1));
                    let mut bs = l.bs.as_ref().unwrap().shallow_clone();
                    bs.copy_(&(bs.randn_like() * 0.1));
                });
            }
            let decision = EnergyDecision {
                on,
                reason: "test".into(),
                proposal_nll: 0.0,
                energy_nll: None,
                energy_nll_4k: None,
                k: 4,
                proposal_rmse: 0.0,
                energy_rmse: None,
            };
            let model = export(&net, &snap, &s, &decision);
            let proof = prove(&model, &net, &snap, &s, on, Device::Cpu).unwrap();
            assert!(proof.rows >= emshap_ci::train::PROOF_ROWS);
            assert_eq!(proof.max_rel_diff.len(), 5, "{:?}", proof.max_rel_diff);
            assert_eq!(
                emshap_ci::explain::energy_correction(&model),
                Some(on),
                "the metadata says whether the energy is on"
            );
            // libtorch's proposal moves away from the exported file: its samples differ.
            let mut bias = net.head2.bs.as_ref().unwrap().shallow_clone();
            tch::no_grad(|| {
                let _ = bias.f_add_scalar_(0.05).unwrap();
            });
            let e = prove(&model, &net, &snap, &s, on, Device::Cpu).unwrap_err();
            assert!(
                e.to_string()
                    .contains("export proof of emshap_model.onnx failed"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_weight_average_follows_its_decay_and_swaps_in_and_out() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().zeros("w", &[2]);
        let mut avg = Average::new(&vs, 0.5);
        let set = |v: f64| {
            tch::no_grad(|| {
                let _ = w.shallow_clone().fill_(v);
            })
        };
        let value = |t: &Tensor| t.double_value(&[1]);
        // Step t decays by min(0.5, (1 + t)/(10 + t)): 0.1, 2/11, 0.25, 4/13, 5/14, then 0.5.
        let mut want = 0.0;
        for t in 0..8 {
            let v = t as f64 + 1.0;
            set(v);
            avg.update();
            let beta = (0.5f64).min((1.0 + t as f64) / (10.0 + t as f64));
            want = beta * want + (1.0 - beta) * v;
        }
        assert!((value(&avg.pairs[0].1) - want).abs() < 1e-6);
        assert!(want < 8.0 && want > 6.0, "{want}");
        avg.swap(true);
        assert!(
            (value(&w) - want).abs() < 1e-6,
            "validation sees the average"
        );
        avg.swap(true);
        assert!((value(&w) - want).abs() < 1e-6, "swapping in twice is once");
        avg.swap(false);
        assert_eq!(value(&w), 8.0, "training continues on the raw weights");
    }

    #[test]
    fn masks_leave_at_least_one_unobserved_feature_per_row() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for rate in [0.0, 0.01, 0.5, 1.0] {
            let b = masks(&mut rng, 500, 7, rate);
            for row in b.chunks(7) {
                assert!(row.contains(&0.0), "rate {rate}: {row:?}");
            }
            let unobserved = b.iter().filter(|&&v| v == 0.0).count() as f64 / b.len() as f64;
            assert!(unobserved >= rate - 0.05, "rate {rate}: {unobserved}");
        }
    }
}
