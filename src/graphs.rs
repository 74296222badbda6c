//! The two ONNX contracts of DESIGN §5 (what the Go service loads), built from plain weight
//! arrays, with no libtorch: the trainer converts its tch tensors into these structs and
//! calls `power_graph` / `emshap_graph`; the fake trainer of the tests does the same with
//! seeded weights. `reference` is a small pure-Rust forward pass of both graphs, which the
//! tests hold against ONNX Runtime within DESIGN §5's tolerance, so the contract is testable
//! without the torch wheel.

use prost::Message;

use crate::onnx::{attr_int, attr_ints, Dim, GraphBuilder};
use crate::train::data::Snapshot;

/// ½·log(2π).
pub const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_7;
/// The smallest scale of a proposal component (standardised units).
pub const SCALE_FLOOR: f64 = 1e-3;
/// Energies are clipped to [0, ENERGY_MAX].
pub const ENERGY_MAX: f64 = 30.0;

/// A row-major f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(rows * cols, data.len(), "matrix {rows}×{cols}");
        Matrix { rows, cols, data }
    }

    fn dims(&self) -> [i64; 2] {
        [self.rows as i64, self.cols as i64]
    }

    pub fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.cols + c]
    }

    /// Rows `from..from + len`.
    pub fn rows_range(&self, from: usize, len: usize) -> Matrix {
        Matrix::new(
            len,
            self.cols,
            self.data[from * self.cols..(from + len) * self.cols].to_vec(),
        )
    }

    /// Columns `from..from + len`.
    pub fn cols_range(&self, from: usize, len: usize) -> Matrix {
        let mut data = Vec::with_capacity(self.rows * len);
        for r in 0..self.rows {
            data.extend_from_slice(&self.data[r * self.cols + from..r * self.cols + from + len]);
        }
        Matrix::new(self.rows, len, data)
    }

    pub fn transposed(&self) -> Matrix {
        let mut data = Vec::with_capacity(self.data.len());
        for c in 0..self.cols {
            for r in 0..self.rows {
                data.push(self.at(r, c));
            }
        }
        Matrix::new(self.cols, self.rows, data)
    }

    /// y = W·x (W is [out, in]).
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        (0..self.rows)
            .map(|r| {
                let row = &self.data[r * self.cols..(r + 1) * self.cols];
                row.iter().zip(x).map(|(w, v)| w * v).sum()
            })
            .collect()
    }
}

/// A linear layer y = W·x + b, W stored [out, in] as tch keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub w: Matrix,
    pub b: Vec<f32>,
}

impl Dense {
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = self.w.apply(x);
        for (v, b) in y.iter_mut().zip(&self.b) {
            *v += b;
        }
        y
    }
}

/// What every graph carries about the data it was trained on: the features, the scaler
/// baked in front, and the lineage recorded in its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    pub features: Vec<String>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub scaler_sha256: String,
    pub snapshot_sha256: String,
    /// The commit the models are built from.
    pub sha: String,
}

impl Stamp {
    pub fn of(snap: &Snapshot, sha: &str) -> Self {
        Stamp {
            features: snap.dataset.features.clone(),
            mean: snap.scaler.mean.clone(),
            std: snap.scaler.std.clone(),
            scaler_sha256: snap.scaler_sha256.clone(),
            snapshot_sha256: snap.dataset.snapshot_sha256.clone(),
            sha: sha.to_string(),
        }
    }

    fn d(&self) -> usize {
        self.features.len()
    }

    fn metadata(&self, model: &str) -> Vec<(&'static str, String)> {
        vec![
            ("model", model.to_string()),
            ("feature_names", self.features.join(",")),
            ("commit_sha", self.sha.clone()),
            ("schema_version", crate::schema::SCHEMA_VERSION.to_string()),
            ("scaler_sha256", self.scaler_sha256.clone()),
            ("snapshot_sha256", self.snapshot_sha256.clone()),
            (
                "producer",
                format!("emshap-ci {}", env!("CARGO_PKG_VERSION")),
            ),
        ]
    }

    /// Standardises raw features inside the graph: (x − mean) / std, in f32 as ONNX Runtime
    /// does. Returns the standardised value's name.
    fn scaler_nodes(&self, g: &mut GraphBuilder, input: &str) -> String {
        let mean: Vec<f32> = self.mean.iter().map(|&v| v as f32).collect();
        let std: Vec<f32> = self.std.iter().map(|&v| v as f32).collect();
        let d = mean.len() as i64;
        let m = g.constant("scaler_mean", &[d], &mean);
        let s = g.constant("scaler_std", &[d], &std);
        let centred = g.op("Sub", &[input, &m], vec![]);
        g.op("Div", &[&centred, &s], vec![])
    }

    /// The same standardisation on the CPU, as the graph computes it.
    pub fn standardise(&self, raw: &[f32]) -> Vec<f32> {
        crate::train::data::standardise_like_graph(raw, &self.mean, &self.std)
    }
}

/// The power predictor (DESIGN §4): d → h1 → h2 → 1 with ReLU, an optional linear skip from
/// the (standardised) input to the second hidden layer, batch norm already folded into the
/// layers, and the target's de-standardisation behind.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerWeights {
    pub l1: Dense,
    pub l2: Dense,
    /// [h2, d], no bias.
    pub skip: Option<Matrix>,
    pub l3: Dense,
    pub target_mean: f64,
    pub target_std: f64,
    /// v(∅) = E[f(X)] over the train split (raw units), DESIGN §6.
    pub base_value: f64,
    pub base_value_rows: usize,
}

/// `power_predictor.onnx`: features [N, d] (raw) → power_watts [N, 1].
pub fn power_graph(w: &PowerWeights, stamp: &Stamp) -> Vec<u8> {
    let d = stamp.d() as i64;
    let mut g = GraphBuilder::new();
    let x = g.input("features", &[Dim::Named("N"), Dim::Fixed(d)]);
    let xs = stamp.scaler_nodes(&mut g, &x);
    let gemm = |g: &mut GraphBuilder, input: &str, l: &Dense, hint: &str| {
        let wn = g.constant(&format!("{hint}_weight"), &l.w.dims(), &l.w.data);
        let bn = g.constant(&format!("{hint}_bias"), &[l.w.rows as i64], &l.b);
        g.op("Gemm", &[input, &wn, &bn], vec![attr_int("transB", 1)])
    };
    let h = gemm(&mut g, &xs, &w.l1, "l1");
    let h = g.op("Relu", &[&h], vec![]);
    let mut h = gemm(&mut g, &h, &w.l2, "l2");
    if let Some(skip) = &w.skip {
        let wn = g.constant("skip_weight", &skip.dims(), &skip.data);
        let s = g.op("Gemm", &[&xs, &wn], vec![attr_int("transB", 1)]);
        h = g.op("Add", &[&h, &s], vec![]);
    }
    let h = g.op("Relu", &[&h], vec![]);
    let y = gemm(&mut g, &h, &w.l3, "l3");
    let sd = g.scalar("target_std", w.target_std as f32);
    let mean = g.scalar("target_mean", w.target_mean as f32);
    let y = g.op("Mul", &[&y, &sd], vec![]);
    let y = g.op("Add", &[&y, &mean], vec![]);
    g.output(&y, "power_watts", &[Dim::Named("N"), Dim::Fixed(1)]);
    let mut meta = stamp.metadata("power_predictor");
    meta.push(("target_mean", w.target_mean.to_string()));
    meta.push(("target_std", w.target_std.to_string()));
    meta.push(("base_value", w.base_value.to_string()));
    meta.push(("base_value_rows", w.base_value_rows.to_string()));
    g.finish("power_predictor", &meta).encode_to_vec()
}

/// The energy network of EMSHAP: input [value, one-hot(feature), context] → residual blocks
/// → one energy.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyWeights {
    /// [eh, 1 + d + c].
    pub inp: Dense,
    pub blocks: Vec<(Dense, Dense)>,
    /// [1, eh].
    pub out: Dense,
}

/// EMSHAP (DESIGN §4): one GRU step from h0 = 0 over [x_S (0 elsewhere), mask], a head to
/// each feature's mixture parameters and context, and optionally the energy correction.
#[derive(Debug, Clone, PartialEq)]
pub struct EmshapWeights {
    /// M: Gaussian components per feature.
    pub mixtures: usize,
    /// C: the context's length.
    pub context: usize,
    /// [3h, 2d]: the r, z, n gates' input weights (PyTorch's order).
    pub gru_w_ih: Matrix,
    pub gru_b_ih: Vec<f32>,
    pub gru_b_hh: Vec<f32>,
    pub head1: Dense,
    /// [d·(3M + C), head1's width].
    pub head2: Dense,
    /// [d·(3M + C), 2d]: a linear path from [x_S, mask] added to head2's output (None: off).
    pub skip: Option<Dense>,
    /// ([mask_linear_hidden, d], [d·d, mask_linear_hidden]): mask → ReLU → A(mask), row-major
    /// [d, d]; each feature j's component means shift by Σ_k A_jk·x_S,k (None: off).
    pub mask_linear: Option<(Dense, Dense)>,
    /// None: the proposal alone is the density (energy correction off).
    pub energy: Option<EnergyWeights>,
    /// K the model was trained with (metadata).
    pub proposals: usize,
    /// Why the energy is on or off (metadata `energy_decision`).
    pub energy_decision: String,
}

impl EmshapWeights {
    fn gru_hidden(&self) -> usize {
        self.gru_w_ih.rows / 3
    }
}

/// `emshap_model.onnx` with DESIGN §5's inputs (features, observed [N, d]; noise,
/// component_u [N, K, d]) and outputs (imputed, log_density, proposal_log_density [N, d];
/// samples, weights [N, K, d]).
pub fn emshap_graph(net: &EmshapWeights, stamp: &Stamp) -> Vec<u8> {
    let d = stamp.d() as i64;
    let (m, c) = (net.mixtures as i64, net.context as i64);
    let mut g = GraphBuilder::new();
    let features = g.input("features", &[Dim::Named("N"), Dim::Fixed(d)]);
    let observed = g.input("observed", &[Dim::Named("N"), Dim::Fixed(d)]);
    let noise = g.input("noise", &[Dim::Named("N"), Dim::Named("K"), Dim::Fixed(d)]);
    let cu = g.input(
        "component_u",
        &[Dim::Named("N"), Dim::Named("K"), Dim::Fixed(d)],
    );
    let xs = stamp.scaler_nodes(&mut g, &features);
    let half = g.scalar("half", 0.5);
    let zero = g.scalar("zero", 0.0);
    let one = g.scalar("one", 1.0);
    let obs = g.op("Greater", &[&observed, &half], vec![]);
    let obs_f = g.op("Cast", &[&obs], vec![attr_int("to", 1)]);
    let xb = g.op("Where", &[&obs, &xs, &zero], vec![]);
    let phi = g.op("Concat", &[&xb, &obs_f], vec![attr_int("axis", 1)]);

    // GRU, one step from h0 = 0: r and z take both biases; n takes r·b_hn.
    let h = net.gru_hidden();
    let gate = |g: &mut GraphBuilder, k: usize, with_hh: bool, name: &str| {
        let w = net.gru_w_ih.rows_range(k * h, h);
        let b: Vec<f32> = (0..h)
            .map(|i| {
                net.gru_b_ih[k * h + i]
                    + if with_hh {
                        net.gru_b_hh[k * h + i]
                    } else {
                        0.0
                    }
            })
            .collect();
        let wn = g.constant(&format!("gru_w{name}"), &w.dims(), &w.data);
        let bn = g.constant(&format!("gru_b{name}"), &[h as i64], &b);
        g.op("Gemm", &[&phi, &wn, &bn], vec![attr_int("transB", 1)])
    };
    let r = gate(&mut g, 0, true, "r");
    let r = g.op("Sigmoid", &[&r], vec![]);
    let z = gate(&mut g, 1, true, "z");
    let z = g.op("Sigmoid", &[&z], vec![]);
    let n = gate(&mut g, 2, false, "n");
    let bhn = g.constant("gru_bhn", &[h as i64], &net.gru_b_hh[2 * h..3 * h]);
    let rb = g.op("Mul", &[&r, &bhn], vec![]);
    let n = g.op("Add", &[&n, &rb], vec![]);
    let n = g.op("Tanh", &[&n], vec![]);
    let omz = g.op("Sub", &[&one, &z], vec![]);
    let hid = g.op("Mul", &[&omz, &n], vec![]);

    let linear = |g: &mut GraphBuilder, input: &str, l: &Dense, name: &str| {
        let wn = g.constant(&format!("{name}_weight"), &l.w.dims(), &l.w.data);
        let bn = g.constant(&format!("{name}_bias"), &[l.w.rows as i64], &l.b);
        g.op("Gemm", &[input, &wn, &bn], vec![attr_int("transB", 1)])
    };
    let hid = g.op("Relu", &[&hid], vec![]);
    let hid = linear(&mut g, &hid, &net.head1, "head1");
    let hid = g.op("Relu", &[&hid], vec![]);
    let mut p = linear(&mut g, &hid, &net.head2, "head2");
    if let Some(skip) = &net.skip {
        let s = linear(&mut g, &phi, skip, "skip");
        p = g.op("Add", &[&p, &s], vec![]);
    }
    let shape = g.constant_i64("params_shape", &[3], &[-1, d, 3 * m + c]);
    let p = g.op("Reshape", &[&p, &shape], vec![]);
    let axis2 = g.constant_i64("axis2", &[1], &[2]);
    let slice = |g: &mut GraphBuilder, input: &str, from: i64, to: i64, axes: &str| {
        let s = g.constant_i64("start", &[1], &[from]);
        let e = g.constant_i64("end", &[1], &[to]);
        g.op("Slice", &[input, &s, &e, axes], vec![])
    };
    let logits = slice(&mut g, &p, 0, m, &axis2);
    let mut means = slice(&mut g, &p, m, 2 * m, &axis2);
    if let Some((a, b)) = &net.mask_linear {
        let hm = linear(&mut g, &obs_f, a, "mask_linear_a");
        let hm = g.op("Relu", &[&hm], vec![]);
        let coef = linear(&mut g, &hm, b, "mask_linear_b");
        let coef_shape = g.constant_i64("mask_linear_shape", &[3], &[-1, d, d]);
        let coef = g.op("Reshape", &[&coef, &coef_shape], vec![]);
        let xcol = g.op("Unsqueeze", &[&xb, &axis2], vec![]);
        let shift = g.op("MatMul", &[&coef, &xcol], vec![]);
        means = g.op("Add", &[&means, &shift], vec![]);
    }
    let sraw = slice(&mut g, &p, 2 * m, 3 * m, &axis2);
    let ctx = slice(&mut g, &p, 3 * m, 3 * m + c, &axis2);
    let floor = g.scalar("scale_floor", SCALE_FLOOR as f32);
    let scales = g.op("Softplus", &[&sraw], vec![]);
    let scales = g.op("Add", &[&scales, &floor], vec![]);

    // Sampling by inverse CDF: component = #{m : cdf_m < u}, capped at M − 1.
    let ax1 = g.constant_i64("axis1", &[1], &[1]);
    let ax3 = g.constant_i64("axis3", &[1], &[3]);
    let probs = g.op("Softmax", &[&logits], vec![attr_int("axis", 2)]);
    let ax2_scalar = g.constant_i64("cumsum_axis", &[], &[2]);
    let cdf = g.op("CumSum", &[&probs, &ax2_scalar], vec![]);
    let cdf4 = g.op("Unsqueeze", &[&cdf, &ax1], vec![]);
    let u4 = g.op("Unsqueeze", &[&cu, &ax3], vec![]);
    let below = g.op("Less", &[&cdf4, &u4], vec![]);
    let below = g.op("Cast", &[&below], vec![attr_int("to", 1)]);
    let count = g.op("ReduceSum", &[&below, &ax3], vec![attr_int("keepdims", 0)]);
    let last = g.scalar("last_component", (m - 1) as f32);
    let comp = g.op("Min", &[&count, &last], vec![]);
    let comp4 = g.op("Unsqueeze", &[&comp, &ax3], vec![]);
    let range: Vec<f32> = (0..m).map(|v| v as f32).collect();
    let range = g.constant("components", &[m], &range);
    let onehot = g.op("Equal", &[&comp4, &range], vec![]);
    let onehot = g.op("Cast", &[&onehot], vec![attr_int("to", 1)]);
    let means4 = g.op("Unsqueeze", &[&means, &ax1], vec![]);
    let scales4 = g.op("Unsqueeze", &[&scales, &ax1], vec![]);
    let pick = |g: &mut GraphBuilder, of: &str| {
        let t = g.op("Mul", &[&onehot, of], vec![]);
        g.op("ReduceSum", &[&t, &ax3], vec![attr_int("keepdims", 0)])
    };
    let mu = pick(&mut g, &means4);
    let sd = pick(&mut g, &scales4);
    let step = g.op("Mul", &[&sd, &noise], vec![]);
    let v = g.op("Add", &[&mu, &step], vec![]);

    // log q of the mixture at values [N, K', d].
    let logpi = g.op("LogSoftmax", &[&logits], vec![attr_int("axis", 2)]);
    let logpi4 = g.op("Unsqueeze", &[&logpi, &ax1], vec![]);
    let logs = g.op("Log", &[&scales], vec![]);
    let logs4 = g.op("Unsqueeze", &[&logs, &ax1], vec![]);
    let neg_half = g.scalar("neg_half", -0.5);
    let c2pi = g.scalar("half_log_2pi", HALF_LOG_2PI as f32);
    let log_q = |g: &mut GraphBuilder, val: &str| {
        let v4 = g.op("Unsqueeze", &[val, &ax3], vec![]);
        let diff = g.op("Sub", &[&v4, &means4], vec![]);
        let zz = g.op("Div", &[&diff, &scales4], vec![]);
        let sq = g.op("Mul", &[&zz, &zz], vec![]);
        let lp = g.op("Mul", &[&sq, &neg_half], vec![]);
        let lp = g.op("Sub", &[&lp, &logs4], vec![]);
        let lp = g.op("Sub", &[&lp, &c2pi], vec![]);
        let t = g.op("Add", &[&logpi4, &lp], vec![]);
        g.op(
            "ReduceLogSumExp",
            &[&t],
            vec![attr_ints("axes", &[3]), attr_int("keepdims", 0)],
        )
    };
    let xs3 = g.op("Unsqueeze", &[&xs, &ax1], vec![]);
    let lq_x = log_q(&mut g, &xs3);
    let lq_x = g.op("Squeeze", &[&lq_x, &ax1], vec![]);

    let mean: Vec<f32> = stamp.mean.iter().map(|&v| v as f32).collect();
    let std: Vec<f32> = stamp.std.iter().map(|&v| v as f32).collect();
    let log_std: Vec<f32> = stamp.std.iter().map(|&v| v.ln() as f32).collect();
    let mean_c = g.constant("raw_mean", &[d], &mean);
    let std_c = g.constant("raw_std", &[d], &std);
    let log_std_c = g.constant("raw_log_std", &[d], &log_std);

    // The proposal's log density of the given values, raw units.
    let lq_raw = g.op("Sub", &[&lq_x, &log_std_c], vec![]);
    let proposal_log_density = g.op("Where", &[&obs, &zero, &lq_raw], vec![]);

    let (weights, imp, logp) = if let Some(en) = &net.energy {
        // Energies of [x, v_1..v_K]: the first layer's per-entry part once, then per
        // candidate.
        let w = &en.inp.w;
        let eh = w.rows as i64;
        let w_v = w.cols_range(0, 1);
        let w_v = g.constant("energy_wv", &[eh], &w_v.data);
        let w_oh_t = w.cols_range(1, d as usize).transposed();
        let w_oh_t = g.constant("energy_onehot", &w_oh_t.dims(), &w_oh_t.data);
        let w_c_t = w.cols_range(1 + d as usize, c as usize).transposed();
        let w_c_t = g.constant("energy_wc", &w_c_t.dims(), &w_c_t.data);
        let b_in = g.constant("energy_bias", &[eh], &en.inp.b);
        let base = g.op("MatMul", &[&ctx, &w_c_t], vec![]);
        let base = g.op("Add", &[&base, &b_in], vec![]);
        let base = g.op("Add", &[&base, &w_oh_t], vec![]);
        let base4 = g.op("Unsqueeze", &[&base, &ax1], vec![]);
        let cand = g.op("Concat", &[&xs3, &v], vec![attr_int("axis", 1)]);
        let cand4 = g.op("Unsqueeze", &[&cand, &ax3], vec![]);
        let hh = g.op("Mul", &[&cand4, &w_v], vec![]);
        let mut hh = g.op("Add", &[&hh, &base4], vec![]);
        let matmul = |g: &mut GraphBuilder, input: &str, l: &Dense, name: &str| {
            let wt = l.w.transposed();
            let wn = g.constant(&format!("{name}_weight_t"), &wt.dims(), &wt.data);
            let bn = g.constant(&format!("{name}_bias"), &[wt.cols as i64], &l.b);
            let t = g.op("MatMul", &[input, &wn], vec![]);
            g.op("Add", &[&t, &bn], vec![])
        };
        for (i, (a, b)) in en.blocks.iter().enumerate() {
            let t = matmul(&mut g, &hh, a, &format!("block{i}_a"));
            let t = g.op("Relu", &[&t], vec![]);
            let t = matmul(&mut g, &t, b, &format!("block{i}_b"));
            hh = g.op("Add", &[&hh, &t], vec![]);
        }
        let hh = g.op("Relu", &[&hh], vec![]);
        let e = matmul(&mut g, &hh, &en.out, "energy_out");
        let e = g.op("Squeeze", &[&e, &ax3], vec![]);
        let e = g.op("Softplus", &[&e], vec![]);
        let emax = g.scalar("energy_max", ENERGY_MAX as f32);
        let e = g.op("Clip", &[&e, &zero, &emax], vec![]);
        let s0 = g.constant_i64("start", &[1], &[0]);
        let s1 = g.constant_i64("end", &[1], &[1]);
        let send = g.constant_i64("end", &[1], &[i64::MAX]);
        let e_x = g.op("Slice", &[&e, &s0, &s1, &ax1], vec![]);
        let e_x = g.op("Squeeze", &[&e_x, &ax1], vec![]);
        let e_v = g.op("Slice", &[&e, &s1, &send, &ax1], vec![]);
        // Residual form p ∝ q·exp(−E): weights ∝ exp(−E(v_k)), bounded.
        let logw = g.op("Neg", &[&e_v], vec![]);
        let weights = g.op("Softmax", &[&logw], vec![attr_int("axis", 1)]);
        let wv = g.op("Mul", &[&weights, &v], vec![]);
        let imp = g.op("ReduceSum", &[&wv, &ax1], vec![attr_int("keepdims", 0)]);
        let shape = g.op("Shape", &[&noise], vec![]);
        let k_idx = g.constant_i64("k_index", &[], &[1]);
        let k_n = g.op("Gather", &[&shape, &k_idx], vec![attr_int("axis", 0)]);
        let k_f = g.op("Cast", &[&k_n], vec![attr_int("to", 1)]);
        let log_k = g.op("Log", &[&k_f], vec![]);
        let lse = g.op(
            "ReduceLogSumExp",
            &[&logw],
            vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)],
        );
        let log_z = g.op("Sub", &[&lse, &log_k], vec![]);
        let logp = g.op("Sub", &[&lq_x, &e_x], vec![]);
        let logp = g.op("Sub", &[&logp, &log_z], vec![]);
        (weights, imp, logp)
    } else {
        // The proposal alone: uniform weights, the mixture's exact mean, log q.
        let zeros = g.op("Mul", &[&v, &zero], vec![]);
        let weights = g.op("Softmax", &[&zeros], vec![attr_int("axis", 1)]);
        let pm = g.op("Mul", &[&probs, &means], vec![]);
        let imp = g.op("ReduceSum", &[&pm, &axis2], vec![attr_int("keepdims", 0)]);
        (weights, imp, lq_x.clone())
    };
    let imp = g.op("Mul", &[&imp, &std_c], vec![]);
    let imp = g.op("Add", &[&imp, &mean_c], vec![]);
    let imputed = g.op("Where", &[&obs, &features, &imp], vec![]);
    let samples = g.op("Mul", &[&v, &std_c], vec![]);
    let samples = g.op("Add", &[&samples, &mean_c], vec![]);
    let logp = g.op("Sub", &[&logp, &log_std_c], vec![]);
    let log_density = g.op("Where", &[&obs, &zero, &logp], vec![]);

    let nd = [Dim::Named("N"), Dim::Fixed(d)];
    let nkd = [Dim::Named("N"), Dim::Named("K"), Dim::Fixed(d)];
    g.output(&imputed, "imputed", &nd);
    g.output(&samples, "samples", &nkd);
    g.output(&weights, "weights", &nkd);
    g.output(&log_density, "log_density", &nd);
    g.output(&proposal_log_density, "proposal_log_density", &nd);
    let mut meta = stamp.metadata("emshap");
    meta.push(("proposals", net.proposals.to_string()));
    meta.push(("mixtures", net.mixtures.to_string()));
    meta.push((
        "energy_correction",
        if net.energy.is_some() { "on" } else { "off" }.to_string(),
    ));
    meta.push(("energy_decision", net.energy_decision.clone()));
    meta.push(("density_form", "residual: p ∝ q·exp(−E)".to_string()));
    g.finish("emshap_model", &meta).encode_to_vec()
}

/// Pure-Rust forward passes of both graphs (f32, as ONNX Runtime computes them): the
/// reference the contract tests hold ONNX Runtime against, and what the fake trainer
/// scores its models with.
pub mod reference {
    use super::*;

    fn relu(v: &mut [f32]) {
        for x in v {
            *x = x.max(0.0);
        }
    }

    fn sigmoid(x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }

    fn softplus(x: f32) -> f32 {
        if x > 20.0 {
            x
        } else {
            x.exp().ln_1p()
        }
    }

    fn log_sum_exp(v: &[f32]) -> f32 {
        let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        m + v.iter().map(|x| (x - m).exp()).sum::<f32>().ln()
    }

    /// power_watts for `n` rows of raw features.
    pub fn power(w: &PowerWeights, stamp: &Stamp, raw: &[f32]) -> Vec<f32> {
        let d = stamp.d();
        raw.chunks(d)
            .map(|row| {
                let xs = stamp.standardise(row);
                let mut h = w.l1.apply(&xs);
                relu(&mut h);
                let mut h = w.l2.apply(&h);
                if let Some(skip) = &w.skip {
                    for (v, s) in h.iter_mut().zip(skip.apply(&xs)) {
                        *v += s;
                    }
                }
                relu(&mut h);
                let y = w.l3.apply(&h)[0];
                y * w.target_std as f32 + w.target_mean as f32
            })
            .collect()
    }

    /// One row's mixture over each feature: (logits, means, scales, context), [d][M or C].
    #[allow(clippy::type_complexity)]
    fn proposal(
        net: &EmshapWeights,
        xs: &[f32],
        obs: &[bool],
    ) -> Vec<(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)> {
        let d = xs.len();
        let (m, c) = (net.mixtures, net.context);
        let mut phi: Vec<f32> = xs
            .iter()
            .zip(obs)
            .map(|(&x, &o)| if o { x } else { 0.0 })
            .collect();
        phi.extend(obs.iter().map(|&o| if o { 1.0 } else { 0.0 }));
        let h = net.gru_hidden();
        let pre = net.gru_w_ih.apply(&phi);
        let mut hid: Vec<f32> = (0..h)
            .map(|i| {
                let r = sigmoid(pre[i] + net.gru_b_ih[i] + net.gru_b_hh[i]);
                let z = sigmoid(pre[h + i] + net.gru_b_ih[h + i] + net.gru_b_hh[h + i]);
                let n =
                    (pre[2 * h + i] + net.gru_b_ih[2 * h + i] + r * net.gru_b_hh[2 * h + i]).tanh();
                (1.0 - z) * n
            })
            .collect();
        relu(&mut hid);
        let mut hid = net.head1.apply(&hid);
        relu(&mut hid);
        let mut p = net.head2.apply(&hid);
        if let Some(skip) = &net.skip {
            for (v, s) in p.iter_mut().zip(skip.apply(&phi)) {
                *v += s;
            }
        }
        let width = 3 * m + c;
        if let Some((a, b)) = &net.mask_linear {
            let mut hm = a.apply(&phi[d..]);
            relu(&mut hm);
            let coef = b.apply(&hm);
            for j in 0..d {
                let shift: f32 = (0..d).map(|k| coef[j * d + k] * phi[k]).sum();
                for v in &mut p[j * width + m..j * width + 2 * m] {
                    *v += shift;
                }
            }
        }
        (0..d)
            .map(|j| {
                let q = &p[j * width..(j + 1) * width];
                let scales = q[2 * m..3 * m]
                    .iter()
                    .map(|&s| softplus(s) + SCALE_FLOOR as f32)
                    .collect();
                (
                    q[..m].to_vec(),
                    q[m..2 * m].to_vec(),
                    scales,
                    q[3 * m..].to_vec(),
                )
            })
            .collect()
    }

    fn energy(en: &EnergyWeights, value: f32, j: usize, ctx: &[f32]) -> f32 {
        let mut input = vec![0.0f32; en.inp.w.cols];
        let d = en.inp.w.cols - 1 - ctx.len();
        input[0] = value;
        input[1 + j] = 1.0;
        input[1 + d..].copy_from_slice(ctx);
        let mut hh = en.inp.apply(&input);
        for (a, b) in &en.blocks {
            let mut t = a.apply(&hh);
            relu(&mut t);
            for (v, dv) in hh.iter_mut().zip(b.apply(&t)) {
                *v += dv;
            }
        }
        relu(&mut hh);
        softplus(en.out.apply(&hh)[0]).clamp(0.0, ENERGY_MAX as f32)
    }

    /// The five outputs of `emshap_model.onnx`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct EmshapOutputs {
        pub imputed: Vec<f32>,
        pub samples: Vec<f32>,
        pub weights: Vec<f32>,
        pub log_density: Vec<f32>,
        pub proposal_log_density: Vec<f32>,
    }

    /// The graph's outputs for `n` rows: features, observed [n, d]; noise, component_u
    /// [n, k, d].
    pub fn emshap(
        net: &EmshapWeights,
        stamp: &Stamp,
        features: &[f32],
        observed: &[f32],
        noise: &[f32],
        component_u: &[f32],
        k: usize,
    ) -> EmshapOutputs {
        let d = stamp.d();
        let n = features.len() / d;
        let m = net.mixtures;
        let mut out = EmshapOutputs {
            imputed: Vec::with_capacity(n * d),
            samples: vec![0.0; n * k * d],
            weights: vec![0.0; n * k * d],
            log_density: Vec::with_capacity(n * d),
            proposal_log_density: Vec::with_capacity(n * d),
        };
        for row in 0..n {
            let raw = &features[row * d..(row + 1) * d];
            let xs = stamp.standardise(raw);
            let obs: Vec<bool> = observed[row * d..(row + 1) * d]
                .iter()
                .map(|&o| o > 0.5)
                .collect();
            let params = proposal(net, &xs, &obs);
            for j in 0..d {
                let (logits, means, scales, ctx) = &params[j];
                let lse = log_sum_exp(logits);
                let logpi: Vec<f32> = logits.iter().map(|l| l - lse).collect();
                let probs: Vec<f32> = logpi.iter().map(|l| l.exp()).collect();
                let mut cdf = Vec::with_capacity(m);
                let mut acc = 0.0f32;
                for p in &probs {
                    acc += p;
                    cdf.push(acc);
                }
                let log_q = |v: f32| {
                    let t: Vec<f32> = (0..m)
                        .map(|i| {
                            let z = (v - means[i]) / scales[i];
                            logpi[i] - 0.5 * z * z - scales[i].ln() - HALF_LOG_2PI as f32
                        })
                        .collect();
                    log_sum_exp(&t)
                };
                let mut v = Vec::with_capacity(k);
                for kk in 0..k {
                    let at = (row * k + kk) * d + j;
                    let count = cdf.iter().filter(|&&c| c < component_u[at]).count();
                    let comp = count.min(m - 1);
                    let val = means[comp] + scales[comp] * noise[at];
                    v.push(val);
                    out.samples[at] = val * stamp.std[j] as f32 + stamp.mean[j] as f32;
                }
                let lq_x = log_q(xs[j]);
                let log_std = stamp.std[j].ln() as f32;
                let (w, imp, logp) = match &net.energy {
                    Some(en) => {
                        let e_x = energy(en, xs[j], j, ctx);
                        let logw: Vec<f32> = v.iter().map(|&c| -energy(en, c, j, ctx)).collect();
                        let lse_w = log_sum_exp(&logw);
                        let w: Vec<f32> = logw.iter().map(|l| (l - lse_w).exp()).collect();
                        let imp = w.iter().zip(&v).map(|(a, b)| a * b).sum::<f32>();
                        let log_z = lse_w - (k as f32).ln();
                        (w, imp, lq_x - e_x - log_z)
                    }
                    None => {
                        let imp = probs.iter().zip(means).map(|(p, mu)| p * mu).sum::<f32>();
                        (vec![1.0 / k as f32; k], imp, lq_x)
                    }
                };
                for (kk, wk) in w.iter().enumerate() {
                    out.weights[(row * k + kk) * d + j] = *wk;
                }
                let o = obs[j];
                out.imputed.push(if o {
                    raw[j]
                } else {
                    imp * stamp.std[j] as f32 + stamp.mean[j] as f32
                });
                out.log_density.push(if o { 0.0 } else { logp - log_std });
                out.proposal_log_density
                    .push(if o { 0.0 } else { lq_x - log_std });
            }
        }
        out
    }
}

/// Seeded weights of the given shapes (uniform in ±1/√fan_in, as tch initialises linear
/// layers): for the contract tests and the fake trainer.
pub mod seeded {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    pub struct Seeded(ChaCha8Rng);

    impl Seeded {
        pub fn new(seed: u64) -> Self {
            Seeded(ChaCha8Rng::seed_from_u64(seed))
        }

        pub fn matrix(&mut self, rows: usize, cols: usize) -> Matrix {
            let bound = 1.0 / (cols.max(1) as f32).sqrt();
            let data = (0..rows * cols)
                .map(|_| self.0.random_range(-bound..bound))
                .collect();
            Matrix::new(rows, cols, data)
        }

        pub fn dense(&mut self, out: usize, inp: usize) -> Dense {
            let w = self.matrix(out, inp);
            let b = self.matrix(1, out).data;
            Dense { w, b }
        }

        pub fn uniform(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.0.random::<f32>()).collect()
        }

        pub fn normal(&mut self, n: usize) -> Vec<f32> {
            use rand_distr::{Distribution, StandardNormal};
            (0..n).map(|_| StandardNormal.sample(&mut self.0)).collect()
        }
    }

    /// An EMSHAP net for `d` features, M = `m`, C = `c`, GRU width `h`, head width `hw`,
    /// and, with `energy`, an energy network of width `eh` with one residual block.
    #[allow(clippy::too_many_arguments)]
    pub fn emshap(
        s: &mut Seeded,
        d: usize,
        m: usize,
        c: usize,
        h: usize,
        hw: usize,
        energy: Option<usize>,
    ) -> EmshapWeights {
        EmshapWeights {
            mixtures: m,
            context: c,
            gru_w_ih: s.matrix(3 * h, 2 * d),
            gru_b_ih: s.matrix(1, 3 * h).data,
            gru_b_hh: s.matrix(1, 3 * h).data,
            head1: s.dense(hw, h),
            head2: s.dense(d * (3 * m + c), hw),
            skip: None,
            mask_linear: None,
            energy: energy.map(|eh| EnergyWeights {
                inp: s.dense(eh, 1 + d + c),
                blocks: vec![(s.dense(eh, eh), s.dense(eh, eh))],
                out: s.dense(1, eh),
            }),
            proposals: 8,
            energy_decision: "seeded".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::seeded::Seeded;
    use super::*;
    use crate::onnx::{Session, Tensor};

    fn stamp(d: usize) -> Stamp {
        Stamp {
            features: (0..d).map(|j| format!("f{j}")).collect(),
            mean: (0..d).map(|j| 10.0 + j as f64).collect(),
            std: (0..d).map(|j| 2.0 + 0.5 * j as f64).collect(),
            scaler_sha256: "s".into(),
            snapshot_sha256: "t".into(),
            sha: "abc".into(),
        }
    }

    fn raw_rows(s: &mut Seeded, stamp: &Stamp, n: usize) -> Vec<f32> {
        let d = stamp.d();
        s.normal(n * d)
            .iter()
            .enumerate()
            .map(|(i, z)| stamp.mean[i % d] as f32 + 1.5 * z * stamp.std[i % d] as f32)
            .collect()
    }

    /// |a − b| / max(1, |b|), the largest over the slices (DESIGN §5's tolerance is 1e-4).
    fn max_rel(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs() / f64::from(y.abs()).max(1.0))
            .fold(0.0, f64::max)
    }

    #[test]
    fn the_power_graph_computes_what_the_reference_forward_pass_does() {
        let (d, n) = (5, 300);
        let st = stamp(d);
        let mut s = Seeded::new(7);
        for skip in [false, true] {
            let w = PowerWeights {
                l1: s.dense(16, d),
                l2: s.dense(8, 16),
                skip: skip.then(|| s.matrix(8, d)),
                l3: s.dense(1, 8),
                target_mean: 250.0,
                target_std: 40.0,
                base_value: 251.5,
                base_value_rows: 10,
            };
            let model = power_graph(&w, &st);
            let x = raw_rows(&mut s, &st, n);
            let want = reference::power(&w, &st, &x);
            let got = crate::onnx::run(
                &model,
                vec![(
                    "features",
                    Tensor {
                        shape: vec![n, d],
                        data: x,
                    },
                )],
                1,
            )
            .unwrap();
            assert_eq!(got[0].0, "power_watts");
            assert_eq!(got[0].1.shape, vec![n, 1]);
            let diff = max_rel(&got[0].1.data, &want);
            assert!(diff < 1e-4, "skip {skip}: {diff}");
            // Not vacuous: the outputs vary with the input.
            let spread = want.iter().fold(0.0f32, |a, &b| a.max((b - want[0]).abs()));
            assert!(spread > 1.0, "{spread}");
        }
    }

    #[test]
    fn the_emshap_graph_computes_what_the_reference_forward_pass_does() {
        let (d, n, k) = (4, 64, 6);
        let st = stamp(d);
        let mut s = Seeded::new(11);
        let cases = [
            (None, false, false),
            (Some(12), false, false),
            (None, true, false),
            (Some(12), false, true),
        ];
        for (energy, skip, mask_linear) in cases {
            let mut net = seeded::emshap(&mut s, d, 3, 2, 10, 12, energy);
            if skip {
                net.skip = Some(s.dense(net.head2.w.rows, 2 * d));
            }
            if mask_linear {
                net.mask_linear = Some((s.dense(9, d), s.dense(d * d, 9)));
            }
            let model = emshap_graph(&net, &st);
            let x = raw_rows(&mut s, &st, n);
            let observed: Vec<f32> = s
                .uniform(n * d)
                .iter()
                .map(|u| if *u < 0.5 { 1.0 } else { 0.0 })
                .collect();
            let noise = s.normal(n * k * d);
            let cu = s.uniform(n * k * d);
            let want = reference::emshap(&net, &st, &x, &observed, &noise, &cu, k);
            let mut session = Session::new(&model, 1).unwrap();
            let t = |shape: Vec<usize>, data: &[f32]| Tensor {
                shape,
                data: data.to_vec(),
            };
            let out = session
                .run(vec![
                    ("features", t(vec![n, d], &x)),
                    ("observed", t(vec![n, d], &observed)),
                    ("noise", t(vec![n, k, d], &noise)),
                    ("component_u", t(vec![n, k, d], &cu)),
                ])
                .unwrap();
            let get = |name: &str| {
                &out.iter()
                    .find(|(o, _)| o == name)
                    .unwrap_or_else(|| panic!("no output {name}"))
                    .1
                    .data
            };
            let checks: [(&str, &[f32], f64); 5] = [
                ("imputed", &want.imputed, 4.0),
                ("samples", &want.samples, 4.0),
                ("weights", &want.weights, 1.0),
                ("log_density", &want.log_density, 1.0),
                ("proposal_log_density", &want.proposal_log_density, 1.0),
            ];
            for (name, want, scale) in checks {
                let diff = max_rel(get(name), want);
                assert!(
                    diff < 1e-4 * scale,
                    "energy {energy:?}, skip {skip}, mask_linear {mask_linear}: {name} differs by {diff}"
                );
            }
            // Not vacuous: the energy makes the weights non-uniform, and densities vary.
            let w_spread = want.weights.iter().fold(0.0f32, |a, &b| a.max(b)) - 1.0 / k as f32;
            assert_eq!(energy.is_some(), w_spread > 1e-3, "{w_spread}");
            assert!(want.log_density.iter().any(|&v| v < -0.5));
        }
    }
}
