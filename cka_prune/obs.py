"""Structured OBS on the consumer's refit (Hassibi & Stork 1993, Frantar & Alistarh 2022).

Setting and notation as in :mod:`cka_prune.refit`: Z, the kept set K, the ridge refit's objective
J(K), its weights B = U S (p, |K|), and the downdate of S to S' (with S_g and D_g) when a group g of
m columns leaves K. Removing g raises the ridge objective by

    cost_g = J(K \\ g) - J(K) = tr(B_g D_g B_g^T),   B_g = B[:, g]  (m = 1: ||B[:, j]||^2 / S[j, j]),

and after removing the cheapest, B' = U S' = B - B_g D_g S_g^T. O(p |K| m + |K|^2 m) per step.
Why: J(K) = tr(Z^T Z) - tr(U S U^T) and the padded S' has zero row and column g, so U S' U^T =
U S U^T - B_g D_g B_g^T. The greedy starts from the ridge refit of the alive units (at lam = 0
and with the earlier-removed units' columns constant, W itself), so the costs are the rises of
the objective `compensate: "lstsq"` minimises (which takes lam on the final kept set instead: the
same at lam = 0).

`reference_obs_greedy` does the literal thing: each step refits the consumer without each
candidate by `numpy.linalg.lstsq` on the raw activations (`cka_prune.refit.ridge_fit`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cka_prune.refit import blocks, centred_covariance, check, cross, layout, ridge_fit, ridge_inverse, ridge_lambda
from cka_prune.checks import Groups
from cka_prune.greedy_search import TIE_RTOL


def obs_greedy(cov: Any, weight: Any, k: int, groups: Groups = None, alive: Any = None,
               ridge: float = 0.0) -> tuple[list[int], list[float]]:
    """Structured OBS, closed form (module docstring): remove k groups, cheapest first.

    cov: (D, D) centred covariance C of the consumer's input; weight: (p, D) the consumer's W;
    groups: the columns of each unit (None: one per column); alive: the candidates (bool (n,) or
    ids); ridge: lam relative to mean(diag C) over the alive columns.
    Returns (removed group ids in order, the increase of the ridge objective J at each removal).
    """
    c, w = check(cov, weight)
    ids, columns, positions, _ = layout(groups, c.shape[0], alive)
    _check_k(k, ids.size)
    s = ridge_inverse(c[np.ix_(columns, columns)], ridge_lambda(c, columns, ridge))
    b = w @ c[:, columns] @ s
    scale = float(np.sum((w @ c) * w))
    live = np.ones(ids.size, dtype=bool)
    removed, costs = [], []
    for _ in range(k):
        cost = np.full(ids.size, np.inf)
        d = np.linalg.inv(blocks(s, positions[live]))
        cost[live] = np.einsum("gij,gji->g", d, cross(b, b, positions[live]))
        g = _cheapest(cost, live, scale)
        pos = positions[g]
        d_g = np.linalg.inv(s[np.ix_(pos, pos)])
        s_g = s[:, pos]
        b -= b[:, pos] @ d_g @ s_g.T
        s -= s_g @ d_g @ s_g.T
        s[pos, :], s[:, pos], b[:, pos] = 0.0, 0.0, 0.0
        live[g] = False
        removed.append(int(ids[g]))
        costs.append(float(cost[g]))
    return removed, costs


def _check_k(k: int, n_alive: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n_alive:
        raise ValueError(f"k must be an int in [0, {n_alive}] (the alive groups), got {k!r}")


def reference_obs_greedy(activations: Any, weight: Any, k: int, groups: Groups = None, alive: Any = None,
                         ridge: float = 0.0) -> tuple[list[int], list[float]]:
    """`obs_greedy` as a literal loop: each step refits the consumer without each candidate
    (`ridge_fit` on the raw activations (N, D)) and removes the one whose objective grows least."""
    a, c = centred_covariance(activations)
    w = check(c, weight)[1]
    ids, columns, positions, _ = layout(groups, c.shape[0], alive)
    _check_k(k, ids.size)
    lam = ridge_lambda(c, columns, ridge)
    z = a @ w.T
    scale = float(np.sum((w @ c) * w))
    live = np.ones(ids.size, dtype=bool)

    def objective(keep: np.ndarray) -> float:
        return ridge_fit(a[:, columns[positions[keep].ravel()]], z, lam)[1]

    current = objective(live)
    removed, costs = [], []
    for _ in range(k):
        value = np.full(ids.size, np.inf)
        for g in np.flatnonzero(live):
            keep = live.copy()
            keep[g] = False
            value[g] = objective(keep)
        g = _cheapest(value - current, live, scale)
        removed.append(int(ids[g]))
        costs.append(float(value[g] - current))
        live[g], current = False, float(value[g])
    return removed, costs


def _cheapest(costs: np.ndarray, live: np.ndarray, scale: float) -> int:
    """Lowest-cost live index; costs within TIE_RTOL x scale (the objective's size) tie -> lowest index."""
    best = np.min(costs[live])
    return int(np.flatnonzero(live & (costs <= best + TIE_RTOL * scale))[0])
