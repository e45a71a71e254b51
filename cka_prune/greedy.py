"""Greedy CKA pruning of one layer from its activations: `greedy_cka`.

The search (conditional or independent greedy, its stop and tie rules, global allocation over
several layers) is `cka_prune.greedy_search`.

A group is one output column (a Linear neuron) or several (a Conv2d channel's H*W columns of
the flattened (N, C*H*W) output). Zeroing a group's incoming weights makes its columns constant
(the bias; relu(bias) after a ReLU), and a constant column drops out of centered CKA.

Two engines give the same removal order and scores:

- reference: the literal loop, one CKA evaluation of a recomputed representation per candidate
  per step (`reference_greedy`, `cka_prune.reference`; O(k n) CKA evaluations).
- fast: the closed form for linear CKA, from the n x n interaction matrix M[g, h] = <K_g, K_h>_F
  of the groups' Grams (`cka_prune.interactions`); the greedy pass then costs O(n) per step
  (`fast_greedy_from_interactions`, `cka_prune.fast`). At the next Linear layer's
  pre-activation: `fast_next_greedy`, O(n^2) per step (`cka_prune.next_layer`).

Every engine's public names, the refit CKA and OBS included, are `cka_prune.engines`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from cka_prune.checks import Groups, candidate_mask, check_activations, check_budget, check_choice, normalize_groups
from cka_prune.fast import fast_greedy_from_interactions
from cka_prune.greedy_search import GREEDY
from cka_prune.interactions import interactions_from_activations
from cka_prune.next_layer import _check_weight, fast_next_greedy
from cka_prune.reference import constant_columns, reference_greedy

__all__ = ["channel_groups", "greedy_cka"]


def channel_groups(n_channels: int, positions: int) -> list[np.ndarray]:
    """Groups of a Conv2d output flattened to (N, C*H*W): channel c owns columns [c*HW, (c+1)*HW)."""
    return [np.arange(c * positions, (c + 1) * positions) for c in range(n_channels)]


def greedy_cka(activations: Any, k: int | None, groups: Groups = None, engine: str = "fast",
               kernel: str = "linear", stop_cka: float | None = None, *, debiased: bool = False,
               alive: Any = None, greedy: str = "conditional",
               next_weight: Any = None) -> tuple[list[int], list[float]]:
    """Greedily remove the groups of one layer whose removal keeps CKA to the original highest.

    activations: (N, D) array or tensor of the layer's outputs on the scoring samples.
    k: number of groups to remove (None: until stop_cka). stop_cka: stop before a removal
        whose score is <= stop_cka. With both, whichever comes first.
    groups: None (each column a group), a list of column-index arrays partitioning the D
        columns (e.g. `channel_groups(C, H*W)`), or an (n, size) int array, one row per group.
    engine: 'fast' (closed form, linear kernel) or 'reference' (literal loop).
    kernel: 'linear' or 'rbf'. rbf CKA is not a sum over groups: engine='fast' warns and runs
        the reference engine.
    debiased: unbiased HSIC (Song et al. 2012) instead of the biased estimator.
    alive: bool mask (n,) or group indices of the candidates; the others were pruned earlier
        (constant columns) and are never chosen.
    greedy: 'conditional' or 'independent' (`cka_prune.greedy_search`).
    next_weight: None, or (p, D) the next Linear layer's weight W: CKA is then measured at
        Z = activations W^T (activations being that layer's input). The fast engine needs
        biased CKA and one column per group.
    Returns (removed group indices in removal order, CKA score at each removal).
    """
    check_choice("engine", engine, ("fast", "reference"))
    check_choice("kernel", kernel, ("linear", "rbf"))
    check_choice("greedy", greedy, GREEDY)
    if not isinstance(debiased, bool):
        raise ValueError(f"debiased must be a bool, got {debiased!r}")
    x = check_activations(activations, 4 if debiased else 2)
    group_list = normalize_groups(groups, x.shape[1])
    candidates = candidate_mask(alive, len(group_list))
    check_budget(k, stop_cka, int(candidates.sum()))
    weight = None if next_weight is None else _check_weight(next_weight, x.shape[1])
    if engine == "fast" and kernel == "rbf":
        warnings.warn("greedy_cka: the fast engine does not support kernel='rbf' (RBF CKA is not a "
                      "sum over groups); running the reference engine", UserWarning, stacklevel=2)
        engine = "reference"
    if engine == "fast" and weight is not None:
        if debiased or groups is not None:
            raise ValueError("the next-layer fast engine needs biased CKA and one column per group")
        centered = x - x.mean(axis=0)
        return fast_next_greedy(centered.T @ centered, weight, k, alive=candidates, stop_cka=stop_cka,
                                greedy=greedy)
    if engine == "fast":
        interactions = interactions_from_activations(x, group_list, debiased=debiased)
        return fast_greedy_from_interactions(interactions, k, alive=candidates, stop_cka=stop_cka, greedy=greedy)
    columns = constant_columns(x, group_list)
    if weight is None:
        return reference_greedy(x, columns, len(group_list), k, alive=candidates, kernel=kernel,
                                debiased=debiased, stop_cka=stop_cka, greedy=greedy)
    return reference_greedy(x @ weight.T, lambda removed: columns(removed) @ weight.T, len(group_list), k,
                            alive=candidates, kernel=kernel, debiased=debiased, stop_cka=stop_cka, greedy=greedy)
