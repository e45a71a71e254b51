"""The reference engine: the literal greedy loop, one CKA evaluation per candidate per step.

Each step, for every candidate, recomputes the representation with the groups removed so far
and that candidate removed (`recompute(removed)`, injected: a model-level caller re-runs the
module with their weights zeroed, `greedy_cka` sets their columns constant with
`constant_columns`) and scores it against the original,

    score = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),

K and L the Grams of the original and recomputed representations (linear or RBF kernel, biased
or unbiased HSIC, from cka_prune.cka). k removals from n groups cost O(k n) CKA evaluations;
the fast engines (`cka_prune.fast`, `cka_prune.next_layer`) must reproduce its order and scores.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from cka_prune.cka import center_gram, gram_linear, gram_rbf, to_float64
from cka_prune.checks import NO_VARIATION, candidate_mask, check_activations, check_budget, check_choice, ratio
from cka_prune.greedy_search import Search, make_search, run_search

Recompute = Callable[[list[int]], Any]


def reference_search(original: Any, recompute: Recompute, n_groups: int, *, alive: Any = None,
                     kernel: str = "linear", debiased: bool = False, greedy: str = "conditional") -> Search:
    """The literal loop as a Search: one CKA evaluation of a recomputed representation per candidate.

    original: (N, D) representation before this pass.
    recompute(removed) -> (N, D') that representation with the weights of the `removed` groups
        zeroed (a model-level caller re-runs the module; `greedy_cka` sets the columns constant).
    Score = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) from cka_prune.cka's Grams and centering (kernel
    linear or rbf, biased or unbiased HSIC); 0 when the recomputed output has no variation left.
    """
    check_choice("kernel", kernel, ("linear", "rbf"))
    x = check_activations(original, 4 if debiased else 2)
    if isinstance(n_groups, bool) or not isinstance(n_groups, numbers.Integral) or n_groups < 1:
        raise ValueError(f"n_groups must be a positive int, got {n_groups!r}")
    candidates = candidate_mask(alive, n_groups)
    gram = gram_linear if kernel == "linear" else gram_rbf
    # CKA = <Kc, Lc>_F / sqrt(<Kc, Kc>_F <Lc, Lc>_F) as in cka_prune.cka.cka, with the original's
    # centered Gram Kc computed once instead of once per candidate.
    kc = center_gram(gram(x), unbiased=debiased)
    kk = float(np.vdot(kc, kc))
    if not kk > 0:
        raise ValueError(NO_VARIATION)

    def score(removed: list[int]) -> float:
        y = to_float64(recompute(removed))
        if y.ndim != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(f"recompute must return ({x.shape[0]}, D) activations, got {y.shape}")
        if np.all(y == y[0]):  # no variation left (and no RBF bandwidth): CKA taken as 0
            return 0.0
        lc = center_gram(gram(y), unbiased=debiased)
        return float(ratio(np.vdot(kc, lc), np.vdot(lc, lc), kk))

    def step_scores(removed: list[int], cand: np.ndarray) -> np.ndarray:
        out = np.full(n_groups, -np.inf)
        for i in np.flatnonzero(cand):
            out[i] = score(removed + [int(i)])
        return out

    return make_search(candidates, step_scores, lambda j: None, greedy)


def reference_greedy(original: Any, recompute: Recompute, n_groups: int, k: int | None, *,
                     alive: Any = None, kernel: str = "linear", debiased: bool = False,
                     stop_cka: float | None = None,
                     greedy: str = "conditional") -> tuple[list[int], list[float]]:
    """Run `reference_search` for k removals or until stop_cka.

    Returns (removed group indices in removal order, score at each removal).
    """
    search = reference_search(original, recompute, n_groups, alive=alive, kernel=kernel,
                              debiased=debiased, greedy=greedy)
    check_budget(k, stop_cka, int(search.candidates.sum()))
    return run_search(search, k, stop_cka)


def constant_columns(x: np.ndarray, groups: list[np.ndarray]) -> Recompute:
    """recompute(removed) for activations: x (N, D) with the removed groups' columns set to 0."""
    def recompute(removed: list[int]) -> np.ndarray:
        out = x.copy()
        if removed:
            out[:, np.concatenate([groups[g] for g in removed])] = 0.0
        return out
    return recompute
