"""The fast engine: the exact greedy pass for linear CKA from the interaction matrix.

With X the column-centered activations and K_g = X_g X_g^T the Gram of group g, linear CKA
only needs the n x n interaction matrix (`cka_prune.interactions`)

    M[g, h] = <K_g, K_h>_F                 (biased)
    M[g, h] = N (N-3) HSIC_u(K_g, K_h)      (debiased; HSIC_u is bilinear)

since for the kept set R, with m = M 1 and T = 1^T M 1,

    CKA(A, A_R) = sum_{h in R} m[h] / sqrt(T * sum_{g,h in R} M[g, h]).

The greedy pass then costs O(n) per step (`fast_greedy_from_interactions`), and gives the
reference engine's removal order and scores (`cka_prune.reference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cka_prune.cka import to_float64
from cka_prune.checks import NO_VARIATION, candidate_mask, check_budget, check_order, ratio
from cka_prune.greedy_search import Search, make_search, run_search


# Largest |M - M^T| accepted, relative to M's largest entry.
SYMMETRY_RTOL = 1e-9


@dataclass
class _FastState:
    """num, den2 and r (see fast_greedy_from_interactions) for the current kept set, with
    rise = M[i, i] - 2 r[i], the change of den2 on removing i."""

    interactions: np.ndarray  # M (n, n)
    m: np.ndarray             # M 1 (n,)
    total: float              # T = 1^T M 1
    num: float = field(init=False)
    den2: float = field(init=False)
    rise: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.num = self.den2 = self.total  # nothing removed yet: R = all groups
        self.rise = np.diag(self.interactions) - 2.0 * self.m

    def scores(self, removed: list[int], candidates: np.ndarray) -> np.ndarray:
        """(n,) score of removing each group next (meaningful for candidates only)."""
        return ratio(self.num - self.m, self.den2 + self.rise, self.total)

    def remove(self, j: int) -> None:
        self.num -= self.m[j]
        self.den2 += self.rise[j]
        row = self.interactions[j]  # = column j (M is symmetric): r loses M[:, j], rise gains 2 M[:, j]
        self.rise += row
        self.rise += row


def _check_interactions(interactions: Any) -> np.ndarray:
    """M as a finite, square, symmetric float64 matrix (n, n). Symmetry within SYMMETRY_RTOL of M's
    largest entry: the routes sum the same products in different orders."""
    m_mat = to_float64(interactions)
    if m_mat.ndim != 2 or m_mat.shape[0] != m_mat.shape[1] or m_mat.shape[0] == 0:
        raise ValueError(f"interactions must be a square (n, n) matrix, got shape {m_mat.shape}")
    # A finite sum is one pass; only when it is not (NaN, inf, or an overflow) are the entries checked.
    if not np.isfinite(m_mat.sum()) and not np.all(np.isfinite(m_mat)):
        raise ValueError("interactions contain NaN or inf")
    asymmetry = m_mat - m_mat.T
    np.abs(asymmetry, out=asymmetry)
    if asymmetry.max() > SYMMETRY_RTOL * np.max(np.abs(m_mat)):
        raise ValueError("interactions must be symmetric")
    return m_mat


def fast_search(interactions: Any, alive: Any = None, greedy: str = "conditional") -> Search:
    """The closed-form engine as a Search from the interaction matrix M (n, n), O(n) per step.

    State for the kept set R: num = sum_{h in R} m[h], den2 = sum_{g,h in R} M[g, h],
    r = M[:, R] 1 (m = M 1, T = 1^T M 1). Removing i gives
        num_i = num - m[i],  den2_i = den2 - 2 r[i] + M[i, i],  score_i = num_i / sqrt(T den2_i).
    """
    m_mat = _check_interactions(interactions)
    m = m_mat.sum(axis=0)
    candidates = candidate_mask(alive, m_mat.shape[0])
    total = float(m.sum())
    if not total > 0:
        raise ValueError(NO_VARIATION)
    state = _FastState(m_mat, m, total)
    return make_search(candidates, state.scores, state.remove, greedy)


def fast_greedy_from_interactions(interactions: Any, k: int | None, alive: Any = None,
                                  stop_cka: float | None = None,
                                  greedy: str = "conditional") -> tuple[list[int], list[float]]:
    """Exact greedy pass from the interaction matrix M (n, n) (`fast_search`).

    Returns (removed group indices in removal order, score at each removal).
    """
    search = fast_search(interactions, alive, greedy)
    check_budget(k, stop_cka, int(search.candidates.sum()))
    return run_search(search, k, stop_cka)


def cka_path(interactions: Any, order: Sequence[int]) -> list[float]:
    """CKA(A, A with order[:t+1] removed) for each t: the damage curve of a given removal order."""
    m_mat = _check_interactions(interactions)
    ids = check_order(order, m_mat.shape[0])
    m = m_mat.sum(axis=0)
    state = _FastState(m_mat, m, float(m.sum()))
    out = []
    for j in ids:
        state.remove(j)
        out.append(float(ratio(state.num, state.den2, state.total)))
    return out
