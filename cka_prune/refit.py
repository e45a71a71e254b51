"""The least-squares refit of the consumer (the next Linear layer), and the CKA of that refit.

Setting. A (N, D) is the consumer's input (the pruned layer's post-activation output, flattened;
a conv channel owns a group of H*W columns), X = A - mean(A) its centred form, C = X^T X (D, D),
W (p, D) the consumer's weight and Z = X W^T (N, p) its centred pre-activation. A kept set K of
columns (the alive groups not removed yet) refits the consumer by ridge least squares with an
intercept (the bias takes the means, so only centred quantities enter):

    B_K = argmin_B ||Z - X_K B^T||_F^2 + lam ||B||_F^2 = W C[:, K] S,   S = (C[K, K] + lam I)^{-1}
    Zhat_K = X_K B_K^T,   J(K) = ||Z - Zhat_K||^2 + lam ||B_K||^2 = tr(Z^T Z) - tr(U S U^T),

U = W C[:, K] (p, |K|). lam = ridge x mean(diag C) over the columns alive at the start, fixed
during a pass (`ridge_lambda`). A column with zero variance (a dead unit) has a zero row and
column in C; with lam = 0 its row and column of C[K, K] + lam I are replaced by those of the
identity times the largest variance (the inputs' scale: the result does not depend on their units),
which gives it a zero coefficient and changes nothing else (the pseudo-inverse's answer; "zero" is
up to DEAD_RTOL x the largest variance, as centring a constant column leaves rounding); any other
singularity at lam = 0 is an error.

Removing a group g (m columns) from K is a block downdate of S (Schur complement), with
S_g = S[:, g] (|K|, m) and D_g = (S[g, g])^{-1} (m, m):

    S' = S - S_g D_g S_g^T        (row and column g of S' are 0: S' is S_{K\\g} padded)

B = U S are the current refit weights (p, |K|), B_g = B[:, g]. Structured OBS (:mod:`cka_prune.obs`)
builds on this setting and the helpers here: it removes the groups whose removal raises J least.

**refit CKA** (target "refit"). Score = linear CKA(Z, Zhat_K) = ||F||_F^2 / (||Z^T Z||_F ||M||_F)
with F = Z^T Zhat = U S U^T and M = Zhat^T Zhat = U T U^T (p, p), T = S C[K, K] S (|K|, |K|)
(at lam = 0, T = S, M = F and CKA = ||Z^T P_K Z||_F / ||Z^T Z||_F). With E = U T (p, |K|),
T_g = T[:, g] = S C S_g (|K|, m) and Gam_g = D_g T[g, g] D_g (m, m), substituting S' into
T' = S' C S', F' = U S' U^T and M' = U T' U^T (U's columns g meet the zero rows of S') gives

    T' = T - T_g D_g S_g^T - S_g D_g T_g^T + S_g Gam_g S_g^T
    F' = F - B_g D_g B_g^T
    M' = M + V_g Om_g V_g^T,   V_g = [E_g, B_g] (p, 2m),   Om_g = [[0, -D_g], [-D_g, Gam_g]]

(m = 1: D_g = 1 / S[j, j], Gam_g = T[j, j] / S[j, j]^2, rank-one and rank-two terms), so with
||X + Y||^2 = ||X||^2 + 2 <X, Y> + ||Y||^2 and <F, B_g D_g B_g^T> = tr(D_g B_g^T F B_g), every
candidate is scored from m x m and 2m x 2m blocks:

    ||F'||^2 = ||F||^2 - 2 tr(D_g B_g^T F B_g) + tr(D_g B_g^T B_g D_g B_g^T B_g)
    ||M'||^2 = ||M||^2 + 2 tr(Om_g V_g^T M V_g) + tr(Om_g V_g^T V_g Om_g V_g^T V_g).

The state keeps B, E, F B, M B and M E (p, |K|) besides S, T (|K|, |K|) and F, M (p, p); after a
removal each changes by terms of rank m, e.g. F'B' = F B - (F B)_g D_g S_g^T - B_g D_g (B_g^T B'),
M'E' = M E - (M E)_g D_g S_g^T - (M B)_g D_g T_g^T + (M B)_g Gam_g S_g^T + V_g Om_g (V_g^T E'):
O(p |K| m + |K|^2 m) per step (the start costs O(p D |K| + |K|^3)).

The reference functions do the literal thing: for every candidate, refit by `numpy.linalg.lstsq`
on the raw activations with an intercept column (ridge: lam through sqrt(lam) I rows) and measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cka_prune.cka import feature_space_linear_cka, to_float64
from cka_prune.checks import Groups, candidate_mask, check_order, normalize_groups, ratio
from cka_prune.greedy_search import Search, make_search

# A column whose variance is at most this fraction of the largest one's is constant (a dead unit).
DEAD_RTOL = 1e-20
# A Cholesky pivot of C[K, K] + lam I at most this fraction of its largest diagonal: singular.
SINGULAR_RTOL = 1e-12
_SINGULAR = "the kept units' covariance is singular (collinear inputs) and the ridge is 0; use a ridge > 0"


class SingularError(ValueError):
    """The refit is not unique: collinear kept inputs without a ridge."""


def ridge_lambda(cov: np.ndarray, columns: np.ndarray, ridge: float) -> float:
    """lam = ridge x mean(diag C[columns]): the ridge relative to the inputs' scale (0 without columns)."""
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    return float(ridge * np.mean(np.diag(cov)[columns])) if columns.size else 0.0


def layout(groups: Groups, n_columns: int, alive: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(ids, columns, positions, n): the alive groups' ids (a,), their columns in order (a*m,),
    each alive group's positions within ``columns`` (a, m), and the number of groups n.

    Groups must have one size m (a Linear unit: 1; a conv channel: H*W)."""
    group_list = normalize_groups(groups, n_columns)
    if len({len(g) for g in group_list}) != 1:
        raise ValueError("groups must all have the same number of columns")
    ids = np.flatnonzero(candidate_mask(alive, len(group_list)))
    m = len(group_list[0])
    columns = np.concatenate([group_list[g] for g in ids]) if ids.size else np.zeros(0, dtype=np.int64)
    return ids, columns, np.arange(ids.size * m).reshape(ids.size, m), len(group_list)


def ridge_inverse(c_kk: np.ndarray, lam: float) -> np.ndarray:
    """S = (C[K, K] + lam I)^{-1} (|K|, |K|); when lam = 0 a zero-variance column's row and column are
    those of the identity times the largest variance (a placeholder on the inputs' scale, so that the
    relative singularity test below does not depend on the activations' units)."""
    h = c_kk + lam * np.eye(c_kk.shape[0])
    if lam == 0:  # centring leaves a constant column at rounding level, not always at exactly 0
        largest = float(np.max(np.diag(c_kk), initial=0.0))
        dead = np.diag(c_kk) <= DEAD_RTOL * max(largest, 1e-300)
        h[dead, :], h[:, dead] = 0.0, 0.0
        h[dead, dead] = largest if largest > 0 else 1.0
    try:
        lower = np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        raise SingularError(_SINGULAR) from None
    pivots = np.diag(lower) ** 2  # Cholesky pivots: one near 0 is a (numerically) collinear column
    if h.size and np.min(pivots) <= SINGULAR_RTOL * np.max(np.diag(h)):
        raise SingularError(_SINGULAR)
    inverse = np.linalg.solve(lower, np.eye(h.shape[0]))  # L^{-1}: S = L^{-T} L^{-1}
    return inverse.T @ inverse


def check(cov: Any, weight: Any) -> tuple[np.ndarray, np.ndarray]:
    c, w = to_float64(cov), to_float64(weight)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"cov must be a square (D, D) matrix, got shape {c.shape}")
    if w.ndim != 2 or w.shape[1] != c.shape[0]:
        raise ValueError(f"weight must have shape (p, {c.shape[0]}), got {w.shape}")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(w))):
        raise ValueError("cov or weight contains NaN or inf")
    return c, w


def centred_covariance(activations: Any) -> tuple[np.ndarray, np.ndarray]:
    a = to_float64(activations)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"activations must have shape (N, D) with N >= 2, got {a.shape}")
    x = a - a.mean(axis=0)
    return a, x.T @ x


def blocks(matrix: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(a, m, m): matrix[g, g] for each row g of positions (a, m)."""
    return matrix[positions[:, :, None], positions[:, None, :]]


def cross(left: np.ndarray, right: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(a', m, m): left[:, g]^T right[:, g] for each row g of positions (a', m); left, right (p, a*m),
    the alive groups' columns consecutive (`layout`), so the reshape is a view."""
    p, width = left.shape
    m = positions.shape[1]
    blocks = np.einsum("pgi,pgj->gij", left.reshape(p, width // m, m), right.reshape(p, width // m, m))
    return blocks[positions[:, 0] // m]


def ridge_fit(inputs: np.ndarray, targets: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Literal ridge refit with an unpenalised intercept by `numpy.linalg.lstsq`.

    inputs: (N, q) raw kept activations; targets: (N, p). Solves
    min ||targets - inputs B^T - 1 b^T||^2 + lam ||B||^2 (rows sqrt(lam) I appended; lam = 0: the
    minimum-norm solution). Returns (fitted values (N, p), the objective's value).
    """
    n, q = inputs.shape
    design = np.hstack([inputs, np.ones((n, 1))])
    rhs = targets
    if lam > 0 and q:
        design = np.vstack([design, np.hstack([np.sqrt(lam) * np.eye(q), np.zeros((q, 1))])])
        rhs = np.vstack([targets, np.zeros((q, targets.shape[1]))])
    coef, *_ = np.linalg.lstsq(design, rhs, rcond=None)
    fitted = design[:n] @ coef
    return fitted, float(np.sum((targets - fitted) ** 2) + lam * np.sum(coef[:q] ** 2))


# ---------------------------------------------------------------------------------------------
# refit CKA


class _RefitState:
    """The refit CKA's state for the kept set (module docstring); arrays over the alive columns."""

    def __init__(self, cov: np.ndarray, weight: np.ndarray, groups: Groups, alive: Any, ridge: float):
        c, w = cov, weight
        self.ids, columns, self.positions, n = layout(groups, c.shape[0], alive)
        self.local = np.full(n, -1)
        self.local[self.ids] = np.arange(self.ids.size)
        c_kk = c[np.ix_(columns, columns)]
        u = w @ c[:, columns]
        self.s = ridge_inverse(c_kk, ridge_lambda(c, columns, ridge))
        self.t = self.s @ c_kk @ self.s
        self.b, self.e = u @ self.s, u @ self.t
        self.f, self.m = _sym(self.b @ u.T), _sym(self.e @ u.T)
        self.fb, self.mb, self.me = self.f @ self.b, self.m @ self.b, self.m @ self.e
        self.total = float(np.sum((w @ c @ w.T) ** 2))
        self.live = np.ones(self.ids.size, dtype=bool)

    def scores(self, removed: list[int], candidates: np.ndarray) -> np.ndarray:
        """(n,) CKA(Z, Zhat) after removing each candidate group next (-inf elsewhere)."""
        out = np.full(self.local.size, -np.inf)
        local = self.local[np.flatnonzero(candidates)]
        pos = self.positions[local]
        d = np.linalg.inv(blocks(self.s, pos))
        gam = d @ blocks(self.t, pos) @ d
        btb = cross(self.b, self.b, pos)
        num = (np.sum(self.f ** 2) - 2 * _trace(d @ cross(self.b, self.fb, pos))
               + _trace(d @ btb @ d @ btb))
        vtv = _stack(cross(self.e, self.e, pos), cross(self.e, self.b, pos), btb)
        vtmv = _stack(cross(self.e, self.me, pos), cross(self.e, self.mb, pos), cross(self.b, self.mb, pos))
        zero = np.zeros_like(d)
        om = np.concatenate([np.concatenate([zero, -d], axis=2), np.concatenate([-d, gam], axis=2)], axis=1)
        den = np.sum(self.m ** 2) + 2 * _trace(om @ vtmv) + _trace(om @ vtv @ om @ vtv)
        out[np.flatnonzero(candidates)] = ratio(num, den, self.total)
        return out

    def remove(self, j: int) -> None:
        g = int(self.local[j])
        pos = self.positions[g]
        d = np.linalg.inv(self.s[np.ix_(pos, pos)])
        gam = d @ self.t[np.ix_(pos, pos)] @ d
        zero = np.zeros_like(d)
        s_g, t_g = self.s[:, pos].copy(), self.t[:, pos].copy()
        b_g, e_g = self.b[:, pos].copy(), self.e[:, pos].copy()
        fb_g, mb_g, me_g = self.fb[:, pos].copy(), self.mb[:, pos].copy(), self.me[:, pos].copy()
        v = np.hstack([e_g, b_g])
        om = np.block([[zero, -d], [-d, gam]])
        # Each downdate as one product of rank 2m (module docstring), to keep temporaries few.
        st = np.hstack([s_g, t_g])
        self.s -= s_g @ d @ s_g.T
        self.t -= st @ np.block([[-gam, d], [d, zero]]) @ st.T
        self.b -= b_g @ (d @ s_g.T)
        self.e -= v @ np.block([[d, zero], [-gam, d]]) @ st.T
        self.f -= b_g @ d @ b_g.T
        self.m += v @ om @ v.T
        self.fb -= np.hstack([fb_g, b_g]) @ np.vstack([d @ s_g.T, d @ (b_g.T @ self.b)])
        self.mb += np.hstack([mb_g, v]) @ np.vstack([-d @ s_g.T, om @ (v.T @ self.b)])
        self.me += np.hstack([me_g, mb_g, v]) @ np.vstack([-d @ s_g.T, gam @ s_g.T - d @ t_g.T,
                                                           om @ (v.T @ self.e)])
        for matrix in (self.s, self.t):
            matrix[pos, :], matrix[:, pos] = 0.0, 0.0
        for matrix in (self.b, self.e, self.fb, self.mb, self.me):
            matrix[:, pos] = 0.0
        self.live[g] = False

    def cka(self) -> float:
        return float(ratio(np.sum(self.f ** 2), np.sum(self.m ** 2), self.total))


def _sym(x: np.ndarray) -> np.ndarray:
    return (x + x.T) / 2


def _trace(x: np.ndarray) -> np.ndarray:
    return np.trace(x, axis1=-2, axis2=-1)


def _stack(top_left: np.ndarray, top_right: np.ndarray, bottom_right: np.ndarray) -> np.ndarray:
    """(a, 2m, 2m) symmetric blocks [[TL, TR], [TR^T, BR]] from (a, m, m) stacks."""
    return np.concatenate([np.concatenate([top_left, top_right], axis=2),
                           np.concatenate([top_right.transpose(0, 2, 1), bottom_right], axis=2)], axis=1)


def _refit_state(cov: Any, weight: Any, groups: Groups, alive: Any, ridge: float) -> _RefitState:
    c, w = check(cov, weight)
    state = _RefitState(c, w, groups, alive, ridge)
    if not state.total > 0:
        raise ValueError("the consumer's pre-activation has no variation; CKA is undefined")
    return state


def refit_search(cov: Any, weight: Any, groups: Groups = None, alive: Any = None, ridge: float = 0.0,
                 greedy: str = "conditional") -> Search:
    """The refit CKA's closed form as a Search (`cka_prune.greedy_search.run_search`, `allocate`).

    cov (D, D) centred covariance of the consumer's input, weight (p, D), groups, alive and ridge
    as in `cka_prune.obs.obs_greedy`. Scores: CKA(Z, Zhat) of the kept set after each candidate's removal.
    """
    state = _refit_state(cov, weight, groups, alive, ridge)
    return make_search(candidate_mask(state.ids, state.local.size), state.scores, state.remove, greedy)


def refit_cka_path(cov: Any, weight: Any, order: Sequence[int], groups: Groups = None, alive: Any = None,
                   ridge: float = 0.0) -> list[float]:
    """CKA(Z, Zhat) after each prefix of ``order`` (alive group ids): a damage curve at the refit."""
    state = _refit_state(cov, weight, groups, alive, ridge)
    out = []
    for j in check_order(order, state.local.size, state.local >= 0):
        state.remove(j)
        out.append(state.cka())
    return out


class _ReferenceRefit:
    """Literal refit CKA: refit by `ridge_fit` on the raw activations (N, D), then CKA(Z, Zhat)."""

    def __init__(self, activations: Any, weight: Any, groups: Groups, alive: Any, ridge: float):
        self.a, c = centred_covariance(activations)
        w = check(c, weight)[1]
        self.ids, self.columns, self.positions, self.n = layout(groups, c.shape[0], alive)
        self.lam = ridge_lambda(c, self.columns, ridge)
        self.z = self.a @ w.T
        if not np.any(self.z != self.z[:1]):
            raise ValueError("the consumer's pre-activation has no variation; CKA is undefined")
        self.local = np.full(self.n, -1)
        self.local[self.ids] = np.arange(self.ids.size)

    def cka(self, removed: list[int]) -> float:
        keep = np.ones(self.ids.size, dtype=bool)
        keep[self.local[removed]] = False
        fitted, _ = ridge_fit(self.a[:, self.columns[self.positions[keep].ravel()]], self.z, self.lam)
        if not np.any(np.abs(fitted - fitted.mean(axis=0)) > 0):
            return 0.0
        return float(feature_space_linear_cka(self.z, fitted))

    def step_scores(self, removed: list[int], candidates: np.ndarray) -> np.ndarray:
        out = np.full(self.n, -np.inf)
        for i in np.flatnonzero(candidates):
            out[i] = self.cka(removed + [int(i)])
        return out


def reference_refit_search(activations: Any, weight: Any, groups: Groups = None, alive: Any = None,
                           ridge: float = 0.0, greedy: str = "conditional") -> Search:
    """`refit_search` as a literal loop over the raw activations (N, D) of the consumer's input."""
    ref = _ReferenceRefit(activations, weight, groups, alive, ridge)
    return make_search(candidate_mask(ref.ids, ref.n), ref.step_scores, lambda j: None, greedy)


def reference_refit_cka_path(activations: Any, weight: Any, order: Sequence[int], groups: Groups = None,
                             alive: Any = None, ridge: float = 0.0) -> list[float]:
    """`refit_cka_path` by refitting after each prefix of ``order``."""
    ref = _ReferenceRefit(activations, weight, groups, alive, ridge)
    ids = check_order(order, ref.n, ref.local >= 0)
    return [ref.cka(ids[: t + 1]) for t in range(len(ids))]
