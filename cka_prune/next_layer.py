"""Next-layer target: greedy CKA at the next Linear layer's pre-activation, O(n^2) per step.

Next-layer target (`fast_next_greedy`, biased linear CKA, one column per neuron). The
representation kept is the next Linear layer's pre-activation Z = A W^T, A (N, n) the pruned
layer's post-activation output (the next layer's input) and W (p, n) the next layer's weight.
Assumption, as for every engine (`cka_prune.greedy`): a removed neuron's column of A is
constant (relu(bias)), so with X the centered A and P_R the diagonal 0/1 selector of the kept
set R, the centered pruned Z is Z_R = X P_R W^T (the next layer's bias is a constant and drops
out too). With C = X^T X and G = W^T W (n x n) and S = P_R C P_R (C with removed rows and
columns zeroed):

    <K_Z, K_{Z_R}>   = ||Z^T Z_R||_F^2 = ||W C P_R W^T||_F^2 = tr(C P_R G P_R C G)
                     = sum_{a,b in R} Q[a, b],       Q = (C G C) o G
    ||K_{Z_R}||_F^2  = ||Z_R^T Z_R||_F^2 = ||W S W^T||_F^2 = tr(S G S G) = sum (GS) o (GS)^T
    ||K_Z||_F^2      = T = 1^T Q 1
    CKA(Z, Z_R)      = sum_{a,b in R} Q[a, b] / sqrt(T tr(S G S G)).

The numerator is a quadratic form over R: with q = Q 1_R, removing i gives
num_i = num - 2 q[i] + Q[i, i], and q -= Q[:, j] after removing j. Removing i from S zeroes
its row and column: S_i = S - e_i t_i^T - t_i e_i^T with t_i = S e_i - S[i, i] e_i / 2, so

    tr(S_i G S_i G) = tr(S G S G) - 4 e_i^T G S G t_i
                      + 2 [ (e_i^T G t_i)^2 + G[i, i] t_i^T G t_i ],

    e_i^T G S G t_i = (GSGS)[i, i] - S[i, i] (GSG)[i, i] / 2
    e_i^T G t_i     = (GS)[i, i] - S[i, i] G[i, i] / 2
    t_i^T G t_i     = (SGS)[i, i] - S[i, i] (GS)[i, i] + S[i, i]^2 G[i, i] / 4,

where every diagonal is a row sum of an elementwise product of n x n matrices already held:
diag(GSGS) = rowsum(GS o (GS)^T), diag(GSG) = rowsum(GS o G), diag(SGS) = rowsum(S o (GS)^T).
After removing j: GS -= G[:, j] S[j, :] (row j of S gone), then column j of GS and row and
column j of S are zeroed. Every step is O(n^2) (Q costs O(n^3) once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cka_prune.cka import to_float64
from cka_prune.checks import NO_VARIATION, candidate_mask, check_budget, check_order, ratio
from cka_prune.greedy_search import Search, make_search, run_search


def _check_weight(weight: Any, n_columns: int) -> np.ndarray:
    w = to_float64(weight)
    if w.ndim != 2 or w.shape[1] != n_columns or w.shape[0] == 0:
        raise ValueError(f"next-layer weight must have shape (p, {n_columns}), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("next-layer weight contains NaN or inf")
    return w


def _check_next(cov: Any, weight: Any) -> tuple[np.ndarray, np.ndarray]:
    c = to_float64(cov)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"cov must be a square (n, n) matrix, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("cov contains NaN or inf")
    return c, _check_weight(weight, c.shape[0])


@dataclass
class _NextLayerState:
    """The next-layer target's state for the kept set R (module docstring).

    q_mat: Q = (C G C) o G; q = Q 1_R; num = 1_R^T Q 1_R; s = S = P_R C P_R; gs = G S;
    den2 = tr(S G S G); total = T = 1^T Q 1. All (n, n) or (n,), float64.
    """

    cov: np.ndarray
    gram: np.ndarray
    q_mat: np.ndarray = field(init=False)
    q: np.ndarray = field(init=False)
    total: float = field(init=False)
    num: float = field(init=False)
    s: np.ndarray = field(init=False)
    gs: np.ndarray = field(init=False)
    den2: float = field(init=False)

    def __post_init__(self) -> None:
        self.q_mat = (self.cov @ self.gram @ self.cov) * self.gram
        self.q = self.q_mat.sum(axis=0)
        self.total = self.num = float(self.q.sum())
        self.s = self.cov.copy()
        self.gs = self.gram @ self.s
        self.den2 = float(np.sum(self.gs * self.gs.T))

    def scores(self, removed: list[int], candidates: np.ndarray) -> np.ndarray:
        """(n,) score of removing each group next (meaningful for candidates only)."""
        d, g_ii, gs_ii = np.diag(self.s), np.diag(self.gram), np.diag(self.gs)
        gsgs = np.einsum("ik,ki->i", self.gs, self.gs)
        gsg = np.einsum("ik,ki->i", self.gs, self.gram)
        sgs = np.einsum("ik,ki->i", self.s, self.gs)
        e_gsg_t = gsgs - d * gsg / 2
        e_g_t = gs_ii - d * g_ii / 2
        t_g_t = sgs - d * gs_ii + d * d * g_ii / 4
        den2 = self.den2 - 4.0 * e_gsg_t + 2.0 * (e_g_t * e_g_t + g_ii * t_g_t)
        num = self.num - 2.0 * self.q + np.diag(self.q_mat)
        return ratio(num, den2, self.total)

    def remove(self, j: int) -> None:
        self.num += self.q_mat[j, j] - 2.0 * self.q[j]
        self.q -= self.q_mat[j]
        self.gs -= np.outer(self.gram[:, j], self.s[j])
        self.gs[:, j] = 0.0
        self.s[j, :] = 0.0
        self.s[:, j] = 0.0
        self.den2 = float(np.sum(self.gs * self.gs.T))

    def cka(self) -> float:
        return float(ratio(self.num, self.den2, self.total))


def next_layer_search(cov: Any, weight: Any, alive: Any = None, greedy: str = "conditional") -> Search:
    """The next-layer target's closed form as a Search, O(n^2) per step (module docstring).

    cov: (n, n) centered covariance C = X^T X of the pruned layer's post-activation output
        (one column per neuron; e.g. CovarianceAccumulator.centered()).
    weight: (p, n) the next Linear layer's weight W.
    """
    c, w = _check_next(cov, weight)
    candidates = candidate_mask(alive, c.shape[0])
    state = _NextLayerState(c, w.T @ w)
    if not state.total > 0:
        raise ValueError(NO_VARIATION)
    return make_search(candidates, state.scores, state.remove, greedy)


def fast_next_greedy(cov: Any, weight: Any, k: int | None, alive: Any = None, stop_cka: float | None = None,
                     greedy: str = "conditional") -> tuple[list[int], list[float]]:
    """Greedy pass scored at the next layer's pre-activation (`next_layer_search`).

    Returns (removed neuron indices in removal order, score at each removal).
    """
    search = next_layer_search(cov, weight, alive, greedy)
    check_budget(k, stop_cka, int(search.candidates.sum()))
    return run_search(search, k, stop_cka)


def next_layer_cka_path(cov: Any, weight: Any, order: Sequence[int]) -> list[float]:
    """CKA(Z, Z with order[:t+1] removed) for each t, Z = A W^T: the damage curve at the next layer."""
    c, w = _check_next(cov, weight)
    ids = check_order(order, c.shape[0])
    state = _NextLayerState(c, w.T @ w)
    out = []
    for j in ids:
        state.remove(j)
        out.append(state.cka())
    return out
