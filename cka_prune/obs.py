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

The search is the shared greedy driver's (`cka_prune.greedy_search`): `obs_search` scores each
candidate by -cost_g, so the best score is the cheapest removal, and ties are costs within
TIE_RTOL x tr(Z^T Z) (the objective's scale; a cost is a difference of two objectives, exact only
to that scale) -> the lowest index. Its scores are not CKAs: run it with `run_search` and no
stop_cka, not in `allocate`. `obs_greedy` runs it for k removals and returns the costs.

`reference_obs_search` does the literal thing: each step refits the consumer without each
candidate by `numpy.linalg.lstsq` on the raw activations (`cka_prune.refit.ridge_fit`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cka_prune.checks import Groups, candidate_mask
from cka_prune.greedy_search import Search, run_search
from cka_prune.refit import blocks, centred_covariance, check, cross, layout, ridge_fit, ridge_inverse, ridge_lambda


class _ObsState:
    """S and B = U S over the alive groups' columns for the kept set (module docstring)."""

    def __init__(self, c: np.ndarray, w: np.ndarray, groups: Groups, alive: Any, ridge: float):
        self.ids, columns, self.positions, n = layout(groups, c.shape[0], alive)
        self.local = np.full(n, -1)
        self.local[self.ids] = np.arange(self.ids.size)
        self.s = ridge_inverse(c[np.ix_(columns, columns)], ridge_lambda(c, columns, ridge))
        self.b = w @ c[:, columns] @ self.s

    def scores(self, removed: list[int], candidates: np.ndarray) -> np.ndarray:
        """(n,) -cost of removing each candidate group next (-inf elsewhere)."""
        out = np.full(self.local.size, -np.inf)
        pos = self.positions[self.local[candidates]]
        d = np.linalg.inv(blocks(self.s, pos))
        out[candidates] = -np.einsum("gij,gji->g", d, cross(self.b, self.b, pos))
        return out

    def remove(self, j: int) -> None:
        pos = self.positions[self.local[j]]
        d_g = np.linalg.inv(self.s[np.ix_(pos, pos)])
        s_g = self.s[:, pos]
        self.b -= self.b[:, pos] @ d_g @ s_g.T
        self.s -= s_g @ d_g @ s_g.T
        self.s[pos, :], self.s[:, pos], self.b[:, pos] = 0.0, 0.0, 0.0


def obs_search(cov: Any, weight: Any, groups: Groups = None, alive: Any = None, ridge: float = 0.0) -> Search:
    """Structured OBS, closed form, as a Search: scores -cost_g, ties within TIE_RTOL x tr(Z^T Z).

    cov: (D, D) centred covariance C of the consumer's input; weight: (p, D) the consumer's W;
    groups: the columns of each unit (None: one per column); alive: the candidates (bool (n,) or
    ids); ridge: lam relative to mean(diag C) over the alive columns.
    """
    c, w = check(cov, weight)
    state = _ObsState(c, w, groups, alive, ridge)
    return Search(candidate_mask(state.ids, state.local.size), state.scores, state.remove,
                  tie_scale=float(np.sum((w @ c) * w)))


def obs_greedy(cov: Any, weight: Any, k: int, groups: Groups = None, alive: Any = None,
               ridge: float = 0.0) -> tuple[list[int], list[float]]:
    """Structured OBS (`obs_search`): remove k groups, cheapest first.

    Returns (removed group ids in order, the increase of the ridge objective J at each removal).
    """
    return _costs(obs_search(cov, weight, groups, alive, ridge), k)


def _costs(search: Search, k: int) -> tuple[list[int], list[float]]:
    n_alive = int(search.candidates.sum())
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n_alive:
        raise ValueError(f"k must be an int in [0, {n_alive}] (the alive groups), got {k!r}")
    removed, scores = run_search(search, k, None)
    return removed, [-score for score in scores]


class _ReferenceObs:
    """Literal OBS: the ridge objective refit by `ridge_fit` on the raw activations (N, D)."""

    def __init__(self, activations: Any, weight: Any, groups: Groups, alive: Any, ridge: float):
        self.a, c = centred_covariance(activations)
        w = check(c, weight)[1]
        self.ids, self.columns, self.positions, n = layout(groups, c.shape[0], alive)
        self.lam = ridge_lambda(c, self.columns, ridge)
        self.z = self.a @ w.T
        self.scale = float(np.sum((w @ c) * w))
        self.local = np.full(n, -1)
        self.local[self.ids] = np.arange(self.ids.size)
        self.live = np.ones(self.ids.size, dtype=bool)
        self.values = np.full(n, np.inf)  # each candidate's objective without it, from the last step
        self.current = self.objective(self.live)

    def objective(self, keep: np.ndarray) -> float:
        return ridge_fit(self.a[:, self.columns[self.positions[keep].ravel()]], self.z, self.lam)[1]

    def scores(self, removed: list[int], candidates: np.ndarray) -> np.ndarray:
        """(n,) -(J without the candidate - J now), by a refit per candidate (-inf elsewhere)."""
        for g in np.flatnonzero(candidates):
            keep = self.live.copy()
            keep[self.local[g]] = False
            self.values[g] = self.objective(keep)
        return np.where(candidates, -(self.values - self.current), -np.inf)

    def remove(self, j: int) -> None:
        self.live[self.local[j]] = False
        self.current = float(self.values[j])


def reference_obs_search(activations: Any, weight: Any, groups: Groups = None, alive: Any = None,
                         ridge: float = 0.0) -> Search:
    """`obs_search` as a literal loop over the raw activations (N, D) of the consumer's input."""
    ref = _ReferenceObs(activations, weight, groups, alive, ridge)
    return Search(candidate_mask(ref.ids, ref.local.size), ref.scores, ref.remove, tie_scale=ref.scale)


def reference_obs_greedy(activations: Any, weight: Any, k: int, groups: Groups = None, alive: Any = None,
                         ridge: float = 0.0) -> tuple[list[int], list[float]]:
    """`obs_greedy` as a literal loop: each step refits the consumer without each candidate
    (`ridge_fit` on the raw activations (N, D)) and removes the one whose objective grows least."""
    return _costs(reference_obs_search(activations, weight, groups, alive, ridge), k)
