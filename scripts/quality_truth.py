"""Ground-truth distributions for scripts/quality.py: every conditional known exactly.

A distribution here is a mixture over a discrete latent class c of Gaussian copulas:
within class c, the continuous features F_c are x_j = g_cj(z_j) with z ~ N(0, R_c)
(R_c a correlation matrix) and g_cj monotone (affine, bounded logistic, or exponential);
the other features A_c are atoms (a fixed value, e.g. gpu_util = 0 on nodes without a
GPU). A correlated Gaussian is the one-class, all-affine special case.

Given observed x_S (a boolean mask per row):
  * p(c | x_S) is exact: a class whose atom is observed with another value, or whose
    continuous feature is observed outside its support, is impossible; among the
    possible classes those with the most observed atoms win outright (a point mass beats
    any density); the rest is Bayes with the copula density including the Jacobians;
  * z_U | z_S, c is Gaussian, so E[x_i | x_S], the univariate density p(x_i | x_S) and exact
    joint draws of X_U | x_S follow.
Only numpy and the standard library: no scipy.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

METRICS = [
    "cpu_util", "mem_util", "disk_io", "net_io", "gpu_util", "gpu_mem", "temp_cpu",
    "temp_gpu", "fan_speed", "voltage", "current", "frequency", "cache_miss", "cache_hit",
    "context_switch", "page_fault", "interrupts", "load_avg", "process_count", "thread_count",
]

LOG_2PI = math.log(2.0 * math.pi)
_GH_T, _GH_W = np.polynomial.hermite.hermgauss(80)
_GH_W = _GH_W / math.sqrt(math.pi)
_GH_T = _GH_T * math.sqrt(2.0)  # E[h(Z)] = sum w h(t), Z ~ N(0, 1)


def sigmoid(a):
    return 0.5 * (1.0 + np.tanh(0.5 * a))


class Transform:
    """x = g(z), monotone increasing. kinds: affine (a + b z), logistic (lo + (hi - lo)
    sigmoid(a + b z)), exp (exp(a + b z))."""

    def __init__(self, kind, a, b, lo=0.0, hi=1.0):
        assert kind in ("affine", "logistic", "exp") and b > 0
        self.kind, self.a, self.b, self.lo, self.hi = kind, float(a), float(b), float(lo), float(hi)

    def forward(self, z):
        if self.kind == "affine":
            return self.a + self.b * z
        if self.kind == "exp":
            return np.exp(self.a + self.b * z)
        return self.lo + (self.hi - self.lo) * sigmoid(self.a + self.b * z)

    def inverse(self, x):
        """(z, log |dz/dx|, inside support)."""
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "affine":
            return (x - self.a) / self.b, np.full(x.shape, -math.log(self.b)), np.ones(x.shape, bool)
        if self.kind == "exp":
            ok = x > 0
            lx = np.log(np.where(ok, x, 1.0))
            return (lx - self.a) / self.b, -math.log(self.b) - lx, ok
        w = self.hi - self.lo
        s = (x - self.lo) / w
        ok = (s > 0) & (s < 1)
        s = np.clip(s, 1e-300, 1 - 1e-16)
        u = np.log(s) - np.log1p(-s)
        return (u - self.a) / self.b, -(math.log(self.b * w) + np.log(s) + np.log1p(-s)), ok

    def mean(self, m, v):
        """E[g(Z)], Z ~ N(m, v) (arrays)."""
        m = np.asarray(m, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        if self.kind == "affine":
            return self.a + self.b * m
        if self.kind == "exp":
            return np.exp(self.a + self.b * m + 0.5 * self.b * self.b * v)
        sd = np.sqrt(np.maximum(v, 0.0))
        z = m[..., None] + sd[..., None] * _GH_T
        return (self.forward(z) * _GH_W).sum(-1)

    def second_moment(self):
        """E[g(Z)^2], Z ~ N(0, 1)."""
        if self.kind == "affine":
            return self.a ** 2 + self.b ** 2
        if self.kind == "exp":
            return math.exp(2 * self.a + 2 * self.b ** 2)
        return float((self.forward(_GH_T) ** 2 * _GH_W).sum())


class Class:
    def __init__(self, prior, transforms, corr, atoms=None):
        """transforms: {feature index: Transform} (the continuous features F_c, in index
        order for corr); atoms: {feature index: value}."""
        self.prior = float(prior)
        self.cont = np.array(sorted(transforms), dtype=int)
        self.tf = transforms
        self.corr = np.asarray(corr, dtype=np.float64)
        assert self.corr.shape == (len(self.cont), len(self.cont))
        self.atoms = dict(atoms or {})
        self.chol = np.linalg.cholesky(self.corr)


class Mixture:
    """A mixture of Gaussian copulas over d features (see the module docstring)."""

    def __init__(self, d, classes):
        self.d = d
        self.classes = classes
        tot = sum(c.prior for c in classes)
        assert abs(tot - 1) < 1e-12, tot
        for c in classes:
            assert sorted(list(c.cont) + list(c.atoms)) == list(range(d))
        self._cache = {}

    # --- the Gaussian special case -------------------------------------------------------
    @staticmethod
    def gaussian(mu, cov):
        mu = np.asarray(mu, dtype=np.float64)
        cov = np.asarray(cov, dtype=np.float64)
        sd = np.sqrt(np.diag(cov))
        corr = cov / np.outer(sd, sd)
        tf = {j: Transform("affine", mu[j], sd[j]) for j in range(len(mu))}
        m = Mixture(len(mu), [Class(1.0, tf, corr)])
        m.mu, m.cov, m.sd = mu, cov, sd
        return m

    def marginal_moments(self):
        """Exact marginal mean and sd of every feature."""
        m1 = np.zeros(self.d)
        m2 = np.zeros(self.d)
        for c in self.classes:
            for j, t in c.tf.items():
                m1[j] += c.prior * float(t.mean(0.0, 1.0))
                m2[j] += c.prior * t.second_moment()
            for j, v in c.atoms.items():
                m1[j] += c.prior * v
                m2[j] += c.prior * v * v
        return m1, np.sqrt(m2 - m1 ** 2)

    def is_gaussian(self):
        return len(self.classes) == 1 and not self.classes[0].atoms and all(
            t.kind == "affine" for t in self.classes[0].tf.values())

    # --- sampling ------------------------------------------------------------------------
    def sample(self, rng, n):
        pri = np.array([c.prior for c in self.classes])
        cls = rng.choice(len(self.classes), size=n, p=pri)
        x = np.zeros((n, self.d))
        for ci, c in enumerate(self.classes):
            idx = np.nonzero(cls == ci)[0]
            z = rng.standard_normal((len(idx), len(c.cont))) @ c.chol.T
            for k, j in enumerate(c.cont):
                x[idx, j] = c.tf[j].forward(z[:, k])
            for j, v in c.atoms.items():
                x[idx, j] = v
        return x, cls

    # --- per (class, observed pattern) conditional Gaussians of z ------------------------
    def _cond(self, ci, obs_key):
        key = (ci, obs_key)
        got = self._cache.get(key)
        if got is not None:
            return got
        c = self.classes[ci]
        obs = np.frombuffer(obs_key, dtype=bool)
        o_pos = np.array([k for k, j in enumerate(c.cont) if obs[j]], dtype=int)
        u_pos = np.array([k for k, j in enumerate(c.cont) if not obs[j]], dtype=int)
        R = c.corr
        if len(o_pos):
            Roo = R[np.ix_(o_pos, o_pos)]
            Ruo = R[np.ix_(u_pos, o_pos)]
            Loo = np.linalg.cholesky(Roo)
            B = np.linalg.solve(Roo, Ruo.T).T  # [|U|, |O|]
            C = R[np.ix_(u_pos, u_pos)] - B @ Ruo.T
            logdet_oo = 2 * np.log(np.diag(Loo)).sum()
        else:
            Loo = None
            B = np.zeros((len(u_pos), 0))
            C = R[np.ix_(u_pos, u_pos)].copy()
            logdet_oo = 0.0
        C = 0.5 * (C + C.T)
        Lc = np.linalg.cholesky(C + 1e-12 * np.eye(len(u_pos))) if len(u_pos) else np.zeros((0, 0))
        got = dict(o_pos=o_pos, u_pos=u_pos, o_feat=c.cont[o_pos], u_feat=c.cont[u_pos],
                   Loo=Loo, B=B, C=C, Lc=Lc, logdet_oo=logdet_oo)
        self._cache[key] = got
        return got

    def _class_terms(self, x, obs):
        """For rows sharing one observed pattern `obs`: per class, the log posterior
        weights [n, C], and per class (z of the observed continuous features, cond)."""
        n = x.shape[0]
        key = obs.tobytes()
        logw = np.full((n, len(self.classes)), -np.inf)
        n_atoms = np.zeros(len(self.classes), dtype=int)
        feasible = np.ones((n, len(self.classes)), bool)
        zs = []
        for ci, c in enumerate(self.classes):
            cond = self._cond(ci, key)
            ll = np.full(n, math.log(c.prior))
            for j, v in c.atoms.items():
                if obs[j]:
                    n_atoms[ci] += 1
                    feasible[:, ci] &= x[:, j] == v
            zo = np.zeros((n, len(cond["o_feat"])))
            for k, j in enumerate(cond["o_feat"]):
                z, lj, ok = c.tf[j].inverse(x[:, j])
                zo[:, k] = np.where(ok, z, 0.0)
                feasible[:, ci] &= ok
                ll += lj
            if len(cond["o_feat"]):
                y = np.linalg.solve(cond["Loo"], zo.T).T
                ll += -0.5 * (y * y).sum(1) - 0.5 * cond["logdet_oo"] - 0.5 * len(cond["o_feat"]) * LOG_2PI
            logw[:, ci] = np.where(feasible[:, ci], ll, -np.inf)
            zs.append((zo, cond))
        # Point masses dominate: among feasible classes keep those with the most observed atoms.
        best = np.max(np.where(feasible, n_atoms[None, :], -1), axis=1)
        logw = np.where(feasible & (n_atoms[None, :] == best[:, None]), logw, -np.inf)
        mx = logw.max(1, keepdims=True)
        if not np.all(np.isfinite(mx)):
            raise ValueError("a row has probability 0 under every class")
        w = np.exp(logw - mx)
        return w / w.sum(1, keepdims=True), zs

    def _groups(self, obs):
        obs = np.asarray(obs, dtype=bool)
        keys, inv = np.unique(obs, axis=0, return_inverse=True)
        for g in range(len(keys)):
            yield keys[g], np.nonzero(inv.reshape(-1) == g)[0]

    # --- what the benchmark measures -----------------------------------------------------
    def cond_mean(self, x, obs):
        """E[x_i | x_S] for every entry (observed entries: x itself)."""
        x = np.asarray(x, dtype=np.float64)
        out = np.where(obs, x, 0.0)
        for key, rows in self._groups(obs):
            xr = x[rows]
            post, zs = self._class_terms(xr, key)
            acc = np.zeros((len(rows), self.d))
            for ci, c in enumerate(self.classes):
                zo, cond = zs[ci]
                m = zo @ cond["B"].T
                for k, j in enumerate(cond["u_feat"]):
                    acc[:, j] += post[:, ci] * c.tf[j].mean(m[:, k], np.full(len(rows), cond["C"][k, k]))
                for j, v in c.atoms.items():
                    if not key[j]:
                        acc[:, j] += post[:, ci] * v
            out[rows] = np.where(key[None, :], xr, acc)
        return out

    def atom_entries(self, x):
        """Entries equal to some class's atom value for that feature."""
        a = np.zeros(x.shape, bool)
        for c in self.classes:
            for j, v in c.atoms.items():
                a[:, j] |= x[:, j] == v
        return a

    def cond_logpdf(self, x, obs):
        """log p(x_i | x_S) at the given value for each unobserved entry (univariate, given
        the observed features only); NaN on atom entries (a point mass) and on observed
        entries."""
        x = np.asarray(x, dtype=np.float64)
        out = np.full(x.shape, np.nan)
        atom = self.atom_entries(x)
        for key, rows in self._groups(obs):
            xr = x[rows]
            post, zs = self._class_terms(xr, key)
            dens = np.zeros((len(rows), self.d))
            for ci, c in enumerate(self.classes):
                zo, cond = zs[ci]
                m = zo @ cond["B"].T
                for k, j in enumerate(cond["u_feat"]):
                    v = cond["C"][k, k]
                    z, lj, ok = c.tf[j].inverse(xr[:, j])
                    lp = -0.5 * (z - m[:, k]) ** 2 / v - 0.5 * math.log(v) - 0.5 * LOG_2PI + lj
                    dens[:, j] += np.where(ok & (post[:, ci] > 0), post[:, ci] * np.exp(np.where(ok, lp, 0.0)), 0.0)
            with np.errstate(divide="ignore"):
                ld = np.log(dens)
            ok_entry = (~key[None, :]) & ~atom[rows]
            out[rows] = np.where(ok_entry, ld, np.nan)
        return out

    def cond_draws(self, x, obs, eps):
        """Exact draws of X given x_S for rows sharing one pattern `obs`, by class:
        [(posterior weight [n], draws [n, M, d])], eps [M, d] standard normals shared by
        every row and pattern (common random numbers; column j drives feature j's slot)."""
        x = np.asarray(x, dtype=np.float64)
        post, zs = self._class_terms(x, obs)
        out = []
        M = eps.shape[0]
        for ci, c in enumerate(self.classes):
            zo, cond = zs[ci]
            xs = np.broadcast_to(x[:, None, :], (x.shape[0], M, self.d)).copy()
            if len(cond["u_feat"]):
                m = zo @ cond["B"].T  # [n, |U|]
                e = eps[:, cond["u_feat"]] @ cond["Lc"].T  # [M, |U|]
                z = m[:, None, :] + e[None, :, :]
                for k, j in enumerate(cond["u_feat"]):
                    xs[:, :, j] = c.tf[j].forward(z[:, :, k])
            for j, v in c.atoms.items():
                if not obs[j]:
                    xs[:, :, j] = v
            out.append((post[:, ci], xs))
        return out


# --- Shapley machinery -------------------------------------------------------------------

def shapley_weights(d):
    """omega[k] = k! (d - k - 1)! / d!, the weight of adding a feature to a coalition of k."""
    return np.array([math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d) for k in range(d)])


def all_masks(d):
    """[2^d, d] booleans; coalition b has feature j iff bit j of b is set."""
    b = np.arange(2 ** d)
    return ((b[:, None] >> np.arange(d)[None, :]) & 1).astype(bool)


def shapley_from_values(v, d):
    """v [R, 2^d] coalition values (index = bitmask) -> phi [R, d] by enumeration."""
    om = shapley_weights(d)
    size = all_masks(d).sum(1)
    phi = np.zeros((v.shape[0], d))
    b = np.arange(2 ** d)
    for i in range(d):
        without = b[(b >> i) & 1 == 0]
        phi[:, i] = ((v[:, without | (1 << i)] - v[:, without]) * om[size[without]][None, :]).sum(1)
    return phi


class Target:
    """f(x) = c + w . z + z^T A z + h softplus(u . z + b), z = (x - m) / s (A symmetric,
    may be zero; h = 0: a polynomial)."""

    def __init__(self, name, c, w, A, m, s, h=0.0, u=None, b=0.0):
        self.name = name
        self.c = float(c)
        self.w = np.asarray(w, dtype=np.float64)
        self.A = np.asarray(A, dtype=np.float64)
        self.A = 0.5 * (self.A + self.A.T)
        self.m = np.asarray(m, dtype=np.float64)
        self.s = np.asarray(s, dtype=np.float64)
        self.h = float(h)
        self.u = np.zeros(len(self.w)) if u is None else np.asarray(u, dtype=np.float64)
        self.b = float(b)
        self.polynomial = self.h == 0.0
        self.linear = self.polynomial and not np.any(self.A)

    def __call__(self, x):
        z = (x - self.m) / self.s
        y = self.c + z @ self.w
        if np.any(self.A):
            y = y + np.einsum("...i,ij,...j->...", z, self.A, z)
        if not self.polynomial:
            y = y + self.h * np.logaddexp(0.0, z @ self.u + self.b)
        return y

    def expect_gaussian(self, mean, cov):
        """E[f(X)] for X ~ N(mean, cov) (mean [..., d], cov [d, d] or [..., d, d]); a
        polynomial f only."""
        assert self.polynomial
        zm = (mean - self.m) / self.s
        y = self.c + zm @ self.w
        if not self.linear:
            cz = cov / np.outer(self.s, self.s)
            y = y + np.einsum("...i,ij,...j->...", zm, self.A, zm) + np.sum(self.A * cz, axis=(-2, -1))
        return y


def gaussian_values(target, mu, cov, x, base_value):
    """Exact v(S) = E[f(x_S, X_U) | x_S] for every coalition, X ~ N(mu, cov) and a
    polynomial f of degree <= 2: [R, 2^d], with v(empty) = base_value."""
    d = len(mu)
    R = x.shape[0]
    masks = all_masks(d)
    v = np.zeros((R, 2 ** d))
    for b, S in enumerate(masks):
        U = ~S
        if not S.any():
            v[:, b] = base_value
            continue
        if not U.any():
            v[:, b] = target(x)
            continue
        Sss = cov[np.ix_(S, S)]
        Sus = cov[np.ix_(U, S)]
        B = np.linalg.solve(Sss, Sus.T).T
        m = np.tile(mu, (R, 1))
        m[:, S] = x[:, S]
        m[:, U] = mu[U] + (x[:, S] - mu[S]) @ B.T
        C = np.zeros((d, d))
        C[np.ix_(U, U)] = cov[np.ix_(U, U)] - B @ Sus.T
        v[:, b] = target.expect_gaussian(m, C)
    return v


def linear_shapley_matrix(w_x, cov):
    """For a linear f(x) = c + w_x . x and X ~ N(mu, cov), conditional Shapley values are
    phi = A (x - mu) (+ (v(empty) - base)/d if v(empty) is replaced): returns A [d, d].
    All 2^d coalitions, solved in batches (beta_S = cov_SS^-1 (cov w)_S)."""
    d = len(w_x)
    om = shapley_weights(d)
    sw = cov @ w_x
    A = np.zeros((d, d))
    for k in range(1, d + 1):
        combos = itertools.combinations(range(d), k)
        while True:
            chunk = list(itertools.islice(combos, 20000))
            if not chunk:
                break
            idx = np.array(chunk, dtype=int)  # [B, k]
            Sss = cov[idx[:, :, None], idx[:, None, :]]
            beta = np.linalg.solve(Sss, sw[idx][..., None])[..., 0]  # [B, k]
            Bfull = np.zeros((len(idx), d))
            np.put_along_axis(Bfull, idx, beta, axis=1)
            member = np.zeros((len(idx), d), bool)
            np.put_along_axis(member, idx, True, axis=1)
            # phi_i += omega(k-1) B_T for T containing i; -= omega(k) B_T for T without i (k < d).
            coef = np.where(member, om[k - 1], -om[k] if k < d else 0.0)  # [B, d]
            A += coef.T @ Bfull
    return A
