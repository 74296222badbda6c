#!/usr/bin/env python3
"""Ground-truth quality benchmark for EMSHAP (DESIGN §4, §6, §7).

Data whose conditionals are known exactly (correlated Gaussians; a non-Gaussian
"telemetry-like" mixture of Gaussian copulas with atoms, see scripts/quality_truth.py) is
written as FeatureVector messages and run through the real CLI (`pull` → `train emshap`).
The power model is NOT trained: a known function f is written as power_predictor.onnx
(with its exact base_value = E[f(X)]), so every error isolates the value function. Then:

  (i)   conditional-mean error vs the true E[x_i | x_S] on masked test entries (RMSE in
        units of each feature's true sd): marginal mean, EMSHAP `imputed` at several K,
        the plain average of EMSHAP `samples`, a Gaussian fitted on the train rows
        (shapr's "gaussian"), and the truth itself;
  (ii)  conditional NLL of the true value (mean −log p over masked entries; the
        telemetry case's atom entries, x_i exactly 0 from a point mass, are excluded);
  (iii) Shapley values from `emshap-ci explain` vs the true conditional Shapley values
        of f (closed form for Gaussian + polynomial f, else Monte Carlo twice with
        independent seeds, the truth's own noise reported beside every figure), beside
        the independence baseline and the fitted-Gaussian reference; the d = 20
        KernelSHAP path against the closed-form truth for a linear f.

Writes every figure to --out (JSON) and prints markdown tables for BENCHMARKS.md.

    source ~/.cache/emshap-ci/env.sh
    cargo build --release --workspace
    "$EMSHAP_CI_PYTHON" scripts/quality.py [--fast] [--cases a,b] [--bin target/release/emshap-ci]

Cost on the 2-core dev machine (shared with other builds, so times are upper-ish bounds):
--fast (gauss8_rho0.5, 10k rows, the CLI's default 40 epochs) 1.5–4.5 min, training being
most of it; the default run (5 cases, 30k rows each) about 50 min, ~6–8 min of training and
~2 min of explain per case. The truth for a non-polynomial f or the telemetry case's
quadratic f is Monte Carlo (--truth-draws, twice): ~1–1.5 min per target at d = 8.
Every EMSHAP_CI_* variable that is a CLI setting is removed from the CLI's environment, and
the CLI runs inside --work (no emshap-ci.toml is picked up), so only the flags here count.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_truth import (  # noqa: E402
    METRICS, Class, Mixture, Target, Transform, all_masks, gaussian_values,
    linear_shapley_matrix, shapley_from_values,
)

REPO = Path(__file__).resolve().parent.parent
ALL_CASES = ["gauss8_rho0", "gauss8_rho0.5", "gauss8_rho0.9", "gauss20_rho0.5", "telemetry8"]
DEFAULT_K = 20  # EMSHAP's proposal samples K by default (DESIGN §4; explain --proposals)
# Environment variables that are not emshap-ci flags (scripts/setup.sh's env file).
KEEP_ENV = {"EMSHAP_CI_CACHE", "EMSHAP_CI_PYTHON", "EMSHAP_CI_TANSU", "EMSHAP_CI_MOTO_PYTHON",
            "EMSHAP_CI_ZIZMOR", "EMSHAP_CI_ACT"}


class CliError(Exception):
    pass


def log(*a):
    print("[quality]", *a, file=sys.stderr, flush=True)


# --- cases ---------------------------------------------------------------------------------

def gaussian_case(d, rho):
    i = np.arange(d)
    mu = 30.0 + 40.0 * ((i * 3) % d) / (d - 1)          # 30 .. 70
    sd = 5.0 + 7.0 * ((i * 5) % 7) / 6.0                 # 5 .. 12
    corr = rho ** np.abs(np.subtract.outer(i, i)) if rho > 0 else np.eye(d)
    return Mixture.gaussian(mu, corr * np.outer(sd, sd))


def factor_corr(loadings):
    L = np.asarray(loadings, dtype=np.float64)
    R = L @ L.T
    R[np.diag_indices(len(L))] = 1.0
    assert np.all(np.linalg.eigvalsh(R) > 1e-6)
    return R


def telemetry_case():
    """d = 8 (cpu_util, mem_util, disk_io, net_io, gpu_util, gpu_mem, temp_cpu, temp_gpu).
    1/3 of nodes have no GPU: gpu_util = gpu_mem = 0 exactly (atoms) and temp_gpu is a board
    sensor (Gaussian); 2/3 have one. Within a class, a Gaussian copula with bounded
    utilisations (100·logistic), log-normal I/O counters and bounded temperatures."""
    lg = lambda a, b, lo=0.0, hi=100.0: Transform("logistic", a, b, lo, hi)  # noqa: E731
    ex = lambda a, b: Transform("exp", a, b)  # noqa: E731
    no_gpu = Class(
        1.0 / 3.0,
        {0: lg(-0.6, 1.0), 1: lg(0.0, 0.7), 2: ex(3.0, 0.8), 3: ex(2.5, 1.0),
         6: lg(-0.5, 0.8, 30.0, 90.0), 7: Transform("affine", 32.0, 2.0)},
        # factors: load, io
        factor_corr([[0.8, 0.2], [0.6, 0.1], [0.3, 0.7], [0.2, 0.8], [0.85, 0.0], [0.5, 0.0]]),
        atoms={4: 0.0, 5: 0.0},
    )
    gpu = Class(
        2.0 / 3.0,
        {0: lg(0.2, 1.0), 1: lg(0.5, 0.8), 2: ex(3.5, 0.9), 3: ex(3.5, 0.9),
         4: lg(0.3, 1.8), 5: lg(0.0, 1.0), 6: lg(0.0, 0.8, 30.0, 95.0), 7: lg(0.2, 1.0, 30.0, 90.0)},
        # factors: load, io, gpu
        factor_corr([[0.6, 0.2, 0.4], [0.5, 0.2, 0.3], [0.2, 0.7, 0.1], [0.2, 0.75, 0.2],
                     [0.2, 0.0, 0.9], [0.1, 0.1, 0.85], [0.8, 0.0, 0.3], [0.1, 0.0, 0.9]]),
    )
    return Mixture(8, [no_gpu, gpu])


def make_targets(dist, d, which):
    """f = c + w·z + zᵀAz, z = (x − m)/s with m, s the exact marginal mean and sd."""
    m, s = dist.marginal_moments()
    i = np.arange(d)
    w = 10.0 * np.where(i % 3 == 1, -1.0, 1.0) * (0.4 + 0.8 * ((i * 7) % 5) / 4.0)
    out = []
    if "linear" in which:
        out.append(Target("linear", 200.0, w, np.zeros((d, d)), m, s))
    if "quadratic" in which:
        A = np.zeros((d, d))
        A[i, i] = 3.0 * np.where(i % 2 == 0, 1.0, -1.0)          # curvature
        for k in range(d - 1):                                     # adjacent (correlated) pairs
            A[k, k + 1] = A[k + 1, k] = 3.0 * (1.0 if k % 2 == 0 else -1.0)
        out.append(Target("quadratic", 200.0, w, A, m, s))
    if "softplus" in which:
        # A smooth max along a direction of correlated features (not a polynomial).
        u = np.zeros(d)
        u[[0, 1, 3]] = [1.0, 1.0, -1.0]
        out.append(Target("softplus", 200.0, w, np.zeros((d, d)), m, s, h=15.0, u=3.0 * u / math.sqrt(3.0), b=0.0))
    return out


def build_case(name, targets):
    mt = re.fullmatch(r"gauss(\d+)_rho([0-9.]+)", name)
    if mt:
        d, rho = int(mt.group(1)), float(mt.group(2))
        assert d <= len(METRICS) and 0 <= rho < 1
        dist = gaussian_case(d, rho)
        which = ["linear"] if d > 12 else targets
        return dict(name=name, d=d, dist=dist, kind="gaussian", rho=rho,
                    targets=make_targets(dist, d, which))
    if name == "telemetry8":
        dist = telemetry_case()
        return dict(name=name, d=8, dist=dist, kind="telemetry", targets=make_targets(dist, 8, targets))
    raise SystemExit(f"unknown case {name!r} (known: {', '.join(ALL_CASES)}, or gaussD_rhoR)")


# --- FeatureVector messages, length-delimited (src/framing.rs) ------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def write_messages(path, x, power, t0_ms=1_700_000_000_000, nodes=16):
    """cpu_util is field 4 … thread_count field 23 (DESIGN §3); every selected feature is
    written (0.0 too: proto3 optional keeps presence), timestamps increase with the row."""
    d = x.shape[1]
    tags = [varint(((4 + j) << 3) | 1) for j in range(d)]
    tag_power = varint((3 << 3) | 1)
    tail = varint(33 << 3) + varint(1)
    with open(path, "wb") as f:
        for r in range(x.shape[0]):
            node = f"q-node-{r % nodes:02d}".encode()
            msg = bytearray(b"\x0a" + varint(len(node)) + node)
            msg += b"\x10" + varint(t0_ms + r * 1000)
            msg += tag_power + struct.pack("<d", float(power[r]))
            for j in range(d):
                msg += tags[j] + struct.pack("<d", float(x[r, j]))
            msg += tail
            f.write(varint(len(msg)) + msg)


# --- the power model as ONNX -----------------------------------------------------------------

def write_power_onnx(path, target, names, base_value):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = len(names)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(f32(target.m), "m"),
        numpy_helper.from_array(f32(target.s), "s"),
        numpy_helper.from_array(f32(target.w).reshape(d, 1), "w"),
        numpy_helper.from_array(f32([target.c]), "c"),
    ]
    nodes = [
        helper.make_node("Sub", ["features", "m"], ["xc"]),
        helper.make_node("Div", ["xc", "s"], ["z"]),
        helper.make_node("MatMul", ["z", "w"], ["lin"]),
    ]
    last = "lin"
    if np.any(target.A):
        inits += [numpy_helper.from_array(f32(target.A), "A"),
                  numpy_helper.from_array(np.ones((d, 1), np.float32), "ones")]
        nodes += [
            helper.make_node("MatMul", ["z", "A"], ["za"]),
            helper.make_node("Mul", ["za", "z"], ["zaz"]),
            helper.make_node("MatMul", ["zaz", "ones"], ["quad"]),
            helper.make_node("Add", ["lin", "quad"], ["lq"]),
        ]
        last = "lq"
    if not target.polynomial:
        inits += [numpy_helper.from_array(f32(target.u).reshape(d, 1), "u"),
                  numpy_helper.from_array(f32([target.b]), "b"),
                  numpy_helper.from_array(f32([target.h]), "h")]
        nodes += [
            helper.make_node("MatMul", ["z", "u"], ["uz"]),
            helper.make_node("Add", ["uz", "b"], ["uzb"]),
            helper.make_node("Softplus", ["uzb"], ["sp"]),
            helper.make_node("Mul", ["sp", "h"], ["hsp"]),
            helper.make_node("Add", [last, "hsp"], ["lqs"]),
        ]
        last = "lqs"
    nodes.append(helper.make_node("Add", [last, "c"], ["power_watts"]))
    graph = helper.make_graph(
        nodes, f"quality_{target.name}",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("power_watts", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="scripts/quality.py")
    model.ir_version = 8
    helper.set_model_props(model, {
        "feature_names": ",".join(names),
        "base_value": repr(float(base_value)),
        "quality_target": target.name,
    })
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


# --- running the CLI -------------------------------------------------------------------------

def cli_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMSHAP_CI_") or k in KEEP_ENV}
    if "ORT_DYLIB_PATH" not in env or "LIBTORCH" not in env:
        cache = Path(env.get("EMSHAP_CI_CACHE", Path.home() / ".cache" / "emshap-ci"))
        f = cache / "env.sh"
        if f.exists():
            for line in f.read_text().splitlines():
                mt = re.match(r'export (\w+)="(.*)"$', line.strip())
                if mt and mt.group(1) not in env and (not mt.group(1).startswith("EMSHAP_CI_") or mt.group(1) in KEEP_ENV):
                    env[mt.group(1)] = mt.group(2)
    return env


def run_cli(binary, args, cwd, what):
    cmd = [str(binary), "--output", "json", *map(str, args)]
    log(" ".join(cmd))
    t = time.time()
    p = subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True)
    wall = time.time() - t
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + "\n" + p.stderr[-4000:] + "\n")
        msg = (p.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise CliError(f"{what} failed with exit {p.returncode}: {msg} [{' '.join(cmd)}]")
    last = [ln for ln in p.stdout.splitlines() if ln.strip()]
    try:
        report = json.loads(last[-1]) if last else {}
    except json.JSONDecodeError:
        report = {}
    return report, wall


def help_flags(binary, sub):
    p = subprocess.run([str(binary), sub, "--help"], env=cli_env(), capture_output=True, text=True)
    flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", p.stdout))
    if "uncentred" in p.stdout:
        flags.add("value-function=uncentred")
    return flags


# --- EMSHAP through onnxruntime --------------------------------------------------------------

class Emshap:
    def __init__(self, path, threads):
        import onnx
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}

    def run(self, x, obs, K, rng, max_elems=300_000):
        """imputed, sample mean, log_density, proposal_log_density (None when absent)."""
        n, d = x.shape
        want = [o for o in ("imputed", "samples", "log_density", "proposal_log_density") if o in self.outputs]
        res = {k: np.zeros((n, d)) for k in want}
        per = max(1, min(256, max_elems // (K * d)))
        for a in range(0, n, per):
            b = min(n, a + per)
            m = b - a
            feeds = {
                "features": x[a:b].astype(np.float32),
                "observed": obs[a:b].astype(np.float32),
                "noise": rng.standard_normal((m, K, d), dtype=np.float32),
                "component_u": rng.random((m, K, d), dtype=np.float32),
            }
            outs = dict(zip(want, self.sess.run(want, feeds)))
            for k in want:
                v = outs[k]
                res[k][a:b] = v.mean(1) if k == "samples" else v
        return res.get("imputed"), res.get("samples"), res.get("log_density"), res.get("proposal_log_density")


# --- measurements ----------------------------------------------------------------------------

def draw_masks(rng, n, d, rate):
    """True = masked (unobserved); each feature independently with `rate`, at least one
    masked and one observed per row."""
    m = rng.random((n, d)) < rate
    while True:
        bad = (m.sum(1) == 0) | (m.sum(1) == d)
        if not bad.any():
            return m
        m[bad] = rng.random((int(bad.sum()), d)) < rate


def rmse_sd(est, truth, masked, sd):
    e = ((est - truth) / sd[None, :])[masked]
    return float(np.sqrt(np.mean(e * e)))


def per_feature_rmse(est, truth, masked, sd, names):
    out = {}
    for j, nm in enumerate(names):
        sel = masked[:, j]
        if sel.any():
            e = (est[sel, j] - truth[sel, j]) / sd[j]
            out[nm] = round(float(np.sqrt(np.mean(e * e))), 4)
    return out


def mean_nll(logp, use):
    v = -logp[use]
    fin = np.isfinite(v)
    return (float(np.mean(v[fin])) if fin.any() else None), int((~fin).sum())


def rel_mae(phi, truth):
    return float(np.mean(np.abs(phi - truth)) / np.mean(np.abs(truth)))


def coalition_values(target, x, base_value, inner):
    """v(S) [R, 2^d] for every coalition: v(∅) = base_value, v(N) = f(x), and inner(S) [R]
    for the others."""
    R, d = x.shape
    v = np.zeros((R, 2 ** d))
    for b, S in enumerate(all_masks(d)):
        if not S.any():
            v[:, b] = base_value
        elif S.all():
            v[:, b] = target(x)
        else:
            v[:, b] = inner(S)
    return v


def mc_values(dist, target, x, base_value, eps, chunk_rows=25):
    """v(S) for every coalition by exact conditional draws (class mixture weighted exactly,
    common random numbers eps [M, d] across rows and coalitions)."""
    def inner(S):
        out = np.zeros(len(x))
        for a in range(0, len(x), chunk_rows):
            xr = x[a:a + chunk_rows]
            acc = np.zeros(len(xr))
            for post, xs in dist.cond_draws(xr, S, eps):
                live = post > 0
                if live.any():
                    acc[live] += post[live] * target(xs[live]).mean(1)
            out[a:a + chunk_rows] = acc
        return out
    return coalition_values(target, x, base_value, inner)


def independence_values(target, x, bg, base_value):
    R = len(x)

    def inner(S):
        xs = np.broadcast_to(bg[None, :, :], (R,) + bg.shape).copy()
        xs[:, :, S] = x[:, None, S]
        return target(xs).mean(1)
    return coalition_values(target, x, base_value, inner)


def linear_weights_x(target):
    """f = c0 + w_x·x for a linear target."""
    w_x = target.w / target.s
    return target.c - float(w_x @ target.m), w_x


def write_rows_csv(path, names, x):
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for row in x.astype(np.float32):
            f.write(",".join(repr(float(v)) for v in row) + "\n")


def explain_figures(att, truth, fx_true, base_value):
    phi = np.array([r["phi"] for r in att["rows"]], dtype=np.float64)
    out = {"rel_mae": rel_mae(phi, truth), "mae": float(np.mean(np.abs(phi - truth)))}
    se = [r.get("stderr") for r in att["rows"]]
    if all(s is not None for s in se):
        se = np.array(se, dtype=np.float64)
        err = np.abs(phi - truth)
        out["mean_stderr"] = float(np.mean(se))
        out["coverage_1.96se"] = float(np.mean(err <= 1.96 * se))
    fx = np.array([r["f_x"] for r in att["rows"]])
    out["max_abs_f_x_diff"] = float(np.max(np.abs(fx - fx_true)))
    out["base_value_reported"] = float(att["rows"][0]["base_value"])
    out["base_value_diff"] = float(abs(att["rows"][0]["base_value"] - base_value))
    for k in ("method", "samples", "value_function", "draws", "proposals", "energy_correction",
              "base_value_source", "seed", "seconds"):
        if k in att:
            out[k] = att[k]
    if "seconds" in att and att["seconds"]:
        out["rows_per_s"] = len(att["rows"]) / att["seconds"]
    return out, phi


# --- one case --------------------------------------------------------------------------------

def run_case(case, a, binary, flags_train, flags_explain, cix):
    name, d, dist = case["name"], case["d"], case["dist"]
    names = METRICS[:d]
    work = Path(a.work) / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    res = {"d": d, "kind": case["kind"], "features": names}
    if "rho" in case:
        res["rho"] = case["rho"]
    t_case = time.time()

    # Data.
    rng = np.random.default_rng([a.seed, cix, 1])
    x, cls = dist.sample(rng, a.rows)
    x = x.astype(np.float32).astype(np.float64)  # what the messages and ONNX see
    power = np.maximum(0.0, case["targets"][0](x))
    msgs = work / "messages.pb"
    write_messages(msgs, x, power)
    n = a.rows
    n_train = math.floor(n * 0.8)
    n_val = max(math.floor(n * (0.8 + 0.1)), n_train) - n_train
    lo_test = n_train + n_val
    res["rows"] = {"total": n, "train": n_train, "val": n_val, "test": n - lo_test}
    if case["kind"] == "telemetry":
        res["rows"]["no_gpu_share"] = float(np.mean(cls == 0))

    # pull.
    _, wall = run_cli(binary, ["pull", "--source", f"file:{msgs}", "--features", ",".join(names),
                                 "--out", work / "data", "-q"], work, "pull")
    ds = json.loads((work / "data" / "dataset.json").read_text())
    c = ds["counts"]
    problems = []
    if c["rows"] != n or c["duplicates"] != 0 or c["invalid_total"] != 0:
        problems.append(f"counts {c}")
    for sp, want in (("train", n_train), ("val", n_val), ("test", n - lo_test)):
        if ds["split"][sp]["rows"] != want:
            problems.append(f"{sp}: {ds['split'][sp]['rows']} rows, expected {want}")
    if ds["split"]["test"].get("first_timestamp_ms") != 1_700_000_000_000 + lo_test * 1000:
        problems.append("test split does not start at the expected row")
    if ds["features"] != names:
        problems.append(f"features {ds['features']}")
    if problems:
        raise CliError(f"{name}: pull did not keep the rows as generated: {problems}")
    res["pull"] = {"seconds_wall": wall, "verified": "rows, splits, first test timestamp and features match the generated data"}

    # train emshap (the CLI's defaults unless flags were given).
    targs = ["train", "emshap", "--data", work / "data", "--out", work / "models", "-q"]
    for flag, val in (("--epochs", a.epochs), ("--seed", a.train_seed), ("--max-rows", a.max_rows)):
        if val is not None:
            targs += [flag, val]
    for extra in a.train_arg:
        targs += extra.split("=", 1) if extra.startswith("--") and "=" in extra else [extra]
    rep, wall = run_cli(binary, targs, work, "train emshap")
    rep = rep.get("report", rep)
    res["train"] = {"seconds_wall": wall, "args": [str(t) for t in targs[1:]]}
    for k in ("seconds", "epochs_run", "best_epoch", "best_val_loss", "samples_per_s", "device", "test", "energy"):
        if k in rep:
            res["train"][k] = rep[k]
    hist = work / "models" / "emshap_history.json"
    if hist.exists():
        h = json.loads(hist.read_text())
        res["train"]["history"] = {
            "rows_train": h.get("rows_train"),
            "epochs": len(h.get("epochs", [])),
            "settings": h.get("settings"),
            "val_nll": [e.get("val_nll") for e in h.get("epochs", [])],
            "val_proposal_nll": [e.get("val_proposal_nll") for e in h.get("epochs", [])],
        }
    em = Emshap(work / "models" / "emshap_model.onnx", a.threads)
    res["emshap_outputs"] = em.outputs
    res["emshap_metadata"] = {k: v for k, v in em.meta.items() if k in ("energy_correction", "feature_names", "energy_reason", "energy")}
    res["emshap_metadata"].update({k: v for k, v in em.meta.items() if "energy" in k})

    # References fitted on the train rows.
    xtr = x[:n_train]
    mu_hat = xtr.mean(0)
    cov_hat = np.cov(xtr, rowvar=False)
    gref = Mixture.gaussian(mu_hat, cov_hat)
    _, true_sd = dist.marginal_moments()

    # Test subset.
    xte = x[lo_test:]
    srng = np.random.default_rng([a.seed, cix, 2])
    pick = np.sort(srng.choice(len(xte), size=min(a.eval_rows, len(xte)), replace=False))
    xe = xte[pick]
    atom = dist.atom_entries(xe)

    # (i), (ii)
    cm, nll = {}, {}
    for ri, rate in enumerate(a.mask_rates):
        masked = draw_masks(np.random.default_rng([a.seed, cix, 3, ri]), len(xe), d, rate)
        obs = ~masked
        truth = dist.cond_mean(xe, obs)
        est = {"marginal_mean": np.where(obs, xe, xtr.mean(0)[None, :]),
               "gaussian_ref": gref.cond_mean(xe, obs),
               "truth": dist.cond_mean(xe, obs)}
        lps = {"truth": dist.cond_logpdf(xe, obs), "gaussian_ref": gref.cond_logpdf(xe, obs)}
        timing = {}
        for K in a.ks:
            if K > 200 and a.big_k_rates is not None and rate not in a.big_k_rates:
                continue
            t = time.time()
            imp, smean, ld, pld = em.run(xe, obs, K, np.random.default_rng([a.seed, cix, 4, ri, K]))
            timing[f"k{K}"] = time.time() - t
            if imp is not None:
                est[f"emshap_imputed_k{K}"] = imp
            if smean is not None:
                est[f"emshap_sample_mean_k{K}"] = smean
            if ld is not None:
                lps[f"emshap_k{K}"] = ld
            if pld is not None:
                lps[f"emshap_proposal_k{K}"] = pld
        use = masked & ~atom
        key = str(rate)
        cm[key] = {k: rmse_sd(v, truth, masked, true_sd) for k, v in est.items()}
        cm[key]["_entries"] = int(masked.sum())
        cm[key]["_truth_vs_actual"] = rmse_sd(truth, xe, masked, true_sd)  # irreducible, for scale
        cm[key]["_emshap_seconds"] = timing
        if f"emshap_imputed_k{DEFAULT_K}" in est:
            cm[key]["_per_feature_emshap_k%d" % DEFAULT_K] = per_feature_rmse(est[f"emshap_imputed_k{DEFAULT_K}"], truth, masked, true_sd, names)
        nll[key] = {}
        for k, lp in lps.items():
            v, bad = mean_nll(lp, use)
            nll[key][k] = v
            if bad:
                nll[key][f"_{k}_nonfinite"] = bad
        nll[key]["_entries"] = int(use.sum())
        nll[key]["_atom_entries_excluded"] = int((masked & atom).sum())
    res["cond_mean_rmse_sd"] = cm
    res["nll"] = nll

    # (iii) Shapley values.
    R = min(a.explain_rows if d <= 12 else a.explain_rows_kernel, len(xe))
    xs_rows = xe[:R]
    rows_csv = work / "explain_rows.csv"
    write_rows_csv(rows_csv, names, xs_rows)
    bgi = np.random.default_rng([a.seed, cix, 5]).choice(n_train, size=min(a.background, n_train), replace=False)
    bg = xtr[bgi]
    shap = {}
    for target in case["targets"]:
        tdir = work / f"models_{target.name}"
        tdir.mkdir()
        for fn in ("emshap_model.onnx", "scaler.json"):
            if (work / "models" / fn).exists():
                shutil.copy(work / "models" / fn, tdir / fn)
        # base value v(∅) = E[f(X)] under the true distribution.
        if dist.is_gaussian() and target.polynomial:
            base, base_how = float(target.expect_gaussian(dist.mu, dist.cov)), "exact (Gaussian moments)"
        elif target.linear:
            ex = dist.cond_mean(np.zeros((1, d)), np.zeros((1, d), bool))[0]
            base, base_how = float(target.c + target.w @ ((ex - target.m) / target.s)), "exact (marginal means)"
        else:
            brng = np.random.default_rng([a.seed, cix, 6])
            acc, acc2, tot = 0.0, 0.0, 0
            for _ in range(a.base_mc // 500_000 or 1):
                xb, _ = dist.sample(brng, 500_000)
                fb = target(xb)
                acc += fb.sum()
                acc2 += (fb * fb).sum()
                tot += len(fb)
            base = acc / tot
            se = math.sqrt(max(acc2 / tot - base ** 2, 0) / tot)
            base_how = f"Monte Carlo, {tot} draws (stderr {se:.4f})"
        write_power_onnx(tdir / "power_predictor.onnx", target, names, base)
        # The ONNX graph computes f (f32).
        import onnxruntime as ort
        ps = ort.InferenceSession(str(tdir / "power_predictor.onnx"), providers=["CPUExecutionProvider"])
        f_onnx = ps.run(["power_watts"], {"features": xs_rows.astype(np.float32)})[0][:, 0]
        fx_true = target(xs_rows)
        entry = {"base_value": base, "base_value_how": base_how,
                 "onnx_vs_numpy_max_abs": float(np.max(np.abs(f_onnx - fx_true))),
                 "rows": R, "estimators": {}}

        # Truth.
        t = time.time()
        if d > 12:
            if not (dist.is_gaussian() and target.linear):
                continue
            c0, w_x = linear_weights_x(target)
            A = linear_shapley_matrix(w_x, dist.cov)
            truth = (xs_rows - dist.mu) @ A.T  # base = f(mu) exactly
            entry["truth_how"] = "closed form (Gaussian, linear f: phi = A (x - mu) over all 2^d coalitions)"
            entry["truth_self_noise_rel_mae"] = 0.0
            ind = w_x[None, :] * (xs_rows - bg.mean(0)) + (c0 + w_x @ bg.mean(0) - base) / d
            Ah = linear_shapley_matrix(w_x, cov_hat)
            gr = (xs_rows - mu_hat) @ Ah.T + (c0 + w_x @ mu_hat - base) / d
            gr_how = "Gaussian fitted on the train rows, closed form"
        else:
            if dist.is_gaussian() and target.polynomial:
                v = gaussian_values(target, dist.mu, dist.cov, xs_rows, base)
                truth = shapley_from_values(v, d)
                entry["truth_how"] = "closed form (Gaussian conditional mean and covariance, all 2^d coalitions)"
                entry["truth_self_noise_rel_mae"] = 0.0
            elif target.linear:
                v = np.zeros((R, 2 ** d))
                for b, S in enumerate(all_masks(d)):
                    if not S.any():
                        v[:, b] = base
                    else:
                        v[:, b] = target(dist.cond_mean(xs_rows, np.tile(S, (R, 1))))
                truth = shapley_from_values(v, d)
                entry["truth_how"] = "exact (linear f: v(S) = f(E[X | x_S]), E by quadrature per class)"
                entry["truth_self_noise_rel_mae"] = 0.0
            else:
                phis = []
                for rep_i in range(2):
                    half = np.random.default_rng([a.seed, cix, 7, rep_i]).standard_normal(((a.truth_draws + 1) // 2, d))
                    eps = np.concatenate([half, -half])  # antithetic pairs
                    phis.append(shapley_from_values(mc_values(dist, target, xs_rows, base, eps), d))
                truth = 0.5 * (phis[0] + phis[1])
                entry["truth_how"] = (f"Monte Carlo twice ({len(eps)} exact conditional draws per coalition, antithetic pairs, "
                                      "class mixture weighted exactly, common random numbers); truth = their mean")
                entry["truth_self_noise_rel_mae"] = rel_mae(phis[0], phis[1])
            ind = shapley_from_values(independence_values(target, xs_rows, bg, base), d)
            if target.polynomial:
                gr = shapley_from_values(gaussian_values(target, mu_hat, cov_hat, xs_rows, base), d)
                gr_how = "Gaussian fitted on the train rows, closed form (infinitely many draws)"
            else:
                half = np.random.default_rng([a.seed, cix, 8]).standard_normal(((a.truth_draws + 1) // 2, d))
                gr = shapley_from_values(mc_values(gref, target, xs_rows, base, np.concatenate([half, -half])), d)
                gr_how = f"Gaussian fitted on the train rows, {2 * len(half)} conditional draws per coalition"
        entry["truth_seconds"] = time.time() - t
        entry["mean_abs_phi_true"] = float(np.mean(np.abs(truth)))
        entry["estimators"]["independence"] = {"rel_mae": rel_mae(ind, truth), "how": f"background of {len(bg)} train rows"}
        entry["estimators"]["gaussian_ref"] = {"rel_mae": rel_mae(gr, truth), "how": gr_how}

        # EMSHAP through explain.
        runs = [("emshap_default", [])]
        if "--value-function" in flags_explain:
            runs.append(("emshap_mean", ["--value-function", "mean"]))
        if "value-function=uncentred" in flags_explain:
            runs.append(("emshap_uncentred", ["--value-function", "uncentred"]))
        if "--draws" in flags_explain:
            runs += [(f"emshap_draws{n_}", ["--draws", n_]) for n_ in a.draws_sweep]
        for label, extra in runs:
            args = ["explain", "--models", tdir, "--rows", rows_csv, "--out", work / f"explain_{target.name}_{label}.json", *extra]
            if d <= 12:
                args.append("--exact")
            if "--seed" in flags_explain:
                args += ["--seed", a.seed]
            if a.draws is not None and "--draws" in flags_explain and label == "emshap_default":
                args += ["--draws", a.draws]
            if a.proposals is not None and "--proposals" in flags_explain:
                args += ["--proposals", a.proposals]
            _, wall = run_cli(binary, args, work, "explain")
            att = json.loads(Path(args[args.index("--out") + 1]).read_text())
            fig, _ = explain_figures(att, truth, fx_true, base)
            fig["seconds_wall"] = wall
            fig["args"] = [str(x) for x in args[1:]]
            entry["estimators"][label] = fig
        shap[target.name] = entry
    res["shapley"] = shap
    res["seconds"] = time.time() - t_case
    return res


# --- report ----------------------------------------------------------------------------------

def fmt(v, p=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{p}f}"
    return str(v)


def markdown(out):
    L = []
    L.append(f"Quality benchmark (scripts/quality.py{' --fast' if out['config']['fast'] else ''}), "
             f"binary at {out['commit']}, {out['config']['rows']} rows per case, seed {out['config']['seed']}.")
    L.append("")
    for name, r in out["cases"].items():
        if "error" in r:
            L.append(f"### {name}")
            L.append("")
            L.append(f"NOT MEASURED: {r['error']}")
            L.append("")
            continue
        L.append(f"### {name} (d = {r['d']})")
        L.append("")
        tr = r.get("train", {})
        L.append(f"train emshap: {fmt(tr.get('seconds'), 1)} s ({tr.get('epochs_run', '?')} epochs, best {tr.get('best_epoch', '?')}); "
                 f"energy correction: {r['emshap_metadata'].get('energy_correction', 'unknown')}; "
                 f"outputs: {', '.join(r['emshap_outputs'])}")
        L.append("")
        rates = list(r["cond_mean_rmse_sd"].keys())
        keys = [k for k in r["cond_mean_rmse_sd"][rates[0]] if not k.startswith("_")]
        for rr in rates[1:]:
            keys += [k for k in r["cond_mean_rmse_sd"][rr] if not k.startswith("_") and k not in keys]
        L.append("Conditional-mean RMSE vs the true E[x_i | x_S] (true sd units), by mask rate:")
        L.append("")
        L.append("| estimator | " + " | ".join(rates) + " |")
        L.append("|---|" + "---:|" * len(rates))
        for k in keys:
            L.append(f"| {k} | " + " | ".join(fmt(r["cond_mean_rmse_sd"][rr].get(k)) for rr in rates) + " |")
        L.append("| (truth vs actual value, for scale) | " + " | ".join(fmt(r["cond_mean_rmse_sd"][rr]["_truth_vs_actual"]) for rr in rates) + " |")
        L.append("")
        nkeys = []
        for rr in rates:
            nkeys += [k for k in r["nll"][rr] if not k.startswith("_") and k not in nkeys]
        L.append("Conditional NLL of the true value (mean −log p over masked entries" +
                 (", atom entries excluded" if r["kind"] == "telemetry" else "") + "):")
        L.append("")
        L.append("| density | " + " | ".join(rates) + " |")
        L.append("|---|" + "---:|" * len(rates))
        for k in nkeys:
            L.append(f"| {k} | " + " | ".join(fmt(r["nll"][rr].get(k)) for rr in rates) + " |")
        L.append("")
        if r["shapley"]:
            tnames = list(r["shapley"].keys())
            L.append(f"Shapley relative MAE vs the true conditional Shapley values ({r['shapley'][tnames[0]]['rows']} test rows):")
            L.append("")
            L.append("| estimator | " + " | ".join(tnames) + " |")
            L.append("|---|" + "---:|" * len(tnames))
            ests = []
            for t in tnames:
                ests += [e for e in r["shapley"][t]["estimators"] if e not in ests]
            for e in ests:
                cells = []
                for t in tnames:
                    f = r["shapley"][t]["estimators"].get(e)
                    if f is None:
                        cells.append("–")
                        continue
                    s = fmt(f["rel_mae"])
                    if "coverage_1.96se" in f:
                        s += f" (cov {f['coverage_1.96se']:.2f})"
                    if "rows_per_s" in f:
                        s += f", {f['rows_per_s']:.2f} rows/s"
                    cells.append(s)
                L.append(f"| {e} | " + " | ".join(cells) + " |")
            L.append("| (truth self-noise) | " + " | ".join(fmt(r["shapley"][t]["truth_self_noise_rel_mae"]) for t in tnames) + " |")
            L.append("")
    L.append("Timings (seconds; explain rows/s with the default value function):")
    L.append("")
    L.append("| case | pull | train emshap | epochs | explain rows/s | case total |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for name, r in out["cases"].items():
        if "error" in r:
            L.append(f"| {name} | – | failed | – | – | – |")
            continue
        rps = []
        for t, e in r["shapley"].items():
            f = e["estimators"].get("emshap_default", {})
            if "rows_per_s" in f:
                rps.append(f"{t} {f['rows_per_s']:.2f} ({f.get('method', '?')})")
        tr = r.get("train", {})
        L.append(f"| {name} | {fmt(r['pull']['seconds_wall'], 1)} | {fmt(tr.get('seconds'), 1)} | {tr.get('epochs_run', '?')} | "
                 f"{'; '.join(rps) or '–'} | {fmt(r['seconds'], 0)} |")
    L.append("")
    L.append(f"Total {out['seconds']:.0f} s.")
    return "\n".join(L)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(REPO / "target" / "release" / "emshap-ci"))
    p.add_argument("--cases", default=None, help=f"comma list (default: {','.join(ALL_CASES)})")
    p.add_argument("--rows", type=int, default=None, help="rows generated per case (default 30000; --fast 10000)")
    p.add_argument("--eval-rows", type=int, default=None, help="test rows for the conditional figures (default 2000; --fast 1000)")
    p.add_argument("--explain-rows", type=int, default=None, help="test rows explained (default 50; --fast 20)")
    p.add_argument("--explain-rows-kernel", type=int, default=None, help="test rows explained by KernelSHAP at d > 12 (default 20; --fast 10)")
    p.add_argument("--epochs", type=int, default=None, help="train emshap --epochs (default: the CLI's)")
    p.add_argument("--max-rows", type=int, default=None, help="train emshap --max-rows (default: the CLI's)")
    p.add_argument("--train-seed", type=int, default=None, help="train emshap --seed (default: the CLI's)")
    p.add_argument("--train-arg", action="append", default=[], help="extra train emshap argument (repeatable, e.g. --train-arg=--lr=0.002)")
    p.add_argument("--targets", default="linear,quadratic",
                   help="power functions f at d <= 12: linear, quadratic, softplus (non-polynomial, Monte Carlo truth); d > 12: linear only")
    p.add_argument("--seed", type=int, default=7, help="data, masks, noise, truth and explain seed")
    p.add_argument("--ks", default=None, help="proposal sample counts K for the conditional figures (default 20,200,1000; --fast 20,200)")
    p.add_argument("--mask-rates", default=None, help="default 0.2,0.5,0.8; --fast 0.5")
    p.add_argument("--draws", type=int, default=None, help="explain --draws (default: the CLI's)")
    p.add_argument("--proposals", type=int, default=None, help="explain --proposals (default: the CLI's)")
    p.add_argument("--draws-sweep", default="", help="extra explain runs with these --draws, e.g. 256,1024 (default none)")
    p.add_argument("--truth-draws", type=int, default=10_000, help="Monte Carlo truth: draws per coalition")
    p.add_argument("--background", type=int, default=1000, help="independence baseline background rows")
    p.add_argument("--base-mc", type=int, default=4_000_000, help="Monte Carlo draws for a non-closed-form base value")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--work", default=None, help="work folder (default work/quality)")
    p.add_argument("--out", default=None, help="JSON output (default WORK/quality.json)")
    p.add_argument("--fast", action="store_true", help="one gauss8_rho0.5 case, 10k rows, 20 explained rows, mask 0.5, K 20,200")
    a = p.parse_args()

    a.draws_sweep = [int(v) for v in a.draws_sweep.split(",") if v.strip()]
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    a.cases = a.cases or ("gauss8_rho0.5" if a.fast else ",".join(ALL_CASES))
    a.rows = a.rows or (10_000 if a.fast else 30_000)
    a.eval_rows = a.eval_rows or (1000 if a.fast else 2000)
    a.explain_rows = a.explain_rows or (20 if a.fast else 50)
    a.explain_rows_kernel = a.explain_rows_kernel or (10 if a.fast else 20)
    a.ks = [int(k) for k in (a.ks or ("20,200" if a.fast else "20,200,1000")).split(",")]
    if DEFAULT_K not in a.ks:
        a.ks.insert(0, DEFAULT_K)
    a.mask_rates = [float(r) for r in (a.mask_rates or ("0.5" if a.fast else "0.2,0.5,0.8")).split(",")]
    a.big_k_rates = [0.5] if 0.5 in a.mask_rates else None  # K > 200 only at rate 0.5 (cost)
    a.work = a.work or str(REPO / "work" / "quality")
    a.out = a.out or str(Path(a.work) / "quality.json")
    binary = Path(a.bin).resolve()
    if not binary.exists():
        raise SystemExit(f"{binary} not found: build with `cargo build --release --workspace` (both executables) or pass --bin")
    Path(a.work).mkdir(parents=True, exist_ok=True)

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "build.rs"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        commit = sha[:12] + (" + uncommitted changes in src/" if dirty else "")
    except OSError:
        commit = "unknown"
    version = subprocess.run([str(binary), "--version"], env=cli_env(), capture_output=True, text=True).stdout.strip()
    flags_train = help_flags(binary, "train")
    flags_explain = help_flags(binary, "explain")
    out = {
        "format": "emshap-ci.quality/1",
        "commit": commit,
        "binary": str(binary),
        "binary_version": version,
        "binary_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(binary.stat().st_mtime)),
        "config": {k: v for k, v in vars(a).items() if k not in ("bin",)},
        "explain_flags_supported": sorted(f for f in flags_explain if f in ("--value-function", "--draws", "--proposals", "--seed", "--exact", "--samples")),
        "default_k": DEFAULT_K,
        "notes": [
            "cond_mean_rmse_sd: RMSE over masked entries of (estimate - true E[x_i|x_S]) / true sd_i.",
            "nll: mean over masked entries of -log density of the true value (raw units); telemetry atom entries excluded.",
            "shapley rel_mae = mean|phi - phi_true| / mean|phi_true| over rows x features; v(empty) = base_value and v(N) = f(x) for every estimator.",
        ],
        "cases": {},
    }
    t0 = time.time()
    failed = []
    for cix, name in enumerate(a.cases.split(",")):
        case = build_case(name.strip(), a.targets)
        log(f"case {name}")
        try:
            out["cases"][name] = run_case(case, a, binary, flags_train, flags_explain, ALL_CASES.index(name) if name in ALL_CASES else 100 + cix)
        except CliError as e:
            log(f"case {name} failed: {e}")
            out["cases"][name] = {"error": str(e)}
            failed.append(name)
        out["seconds"] = time.time() - t0
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1, default=float))
    out["seconds"] = time.time() - t0
    Path(a.out).write_text(json.dumps(out, indent=1, default=float))
    print(markdown(out))
    log(f"wrote {a.out} in {out['seconds']:.0f} s")
    if failed:
        raise SystemExit(f"cases that could not be measured: {', '.join(failed)}")


if __name__ == "__main__":
    main()
