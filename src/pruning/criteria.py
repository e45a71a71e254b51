"""Which neurons of a layer a pass removes, for each criterion.

Magnitude and random baselines are static importances (lower = removed first), behind one
small interface: ``importance(layer) -> (width,) scores``. CKA is a conditional greedy search
(``src.pruning.greedy``). Every criterion also records the CKA between the layer's original
and pruned outputs after each removal, so damage curves compare across criteria.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from lib.cka import cka, feature_space_linear_cka, gram_rbf
from src.config import PruneParams
from src.pruning.greedy import (cka_path, fast_greedy_from_interactions, interactions_from_activations,
                                interactions_from_covariance, reference_greedy)
from src.pruning.scoring import LayerRecording


class Importance(Protocol):
    def __call__(self, layer: nn.Module) -> torch.Tensor:
        """(out_features or out_channels,) importance; the lowest are removed first."""


@dataclass(frozen=True)
class NormImportance:
    """Lp norm of each neuron's incoming weights (a Linear row, a Conv2d filter)."""

    p: int

    def __call__(self, layer: nn.Module) -> torch.Tensor:
        return layer.weight.detach().flatten(1).norm(p=self.p, dim=1)


@dataclass(frozen=True)
class RandomImportance:
    seed: tuple[int, ...]

    def __call__(self, layer: nn.Module) -> torch.Tensor:
        rng = np.random.default_rng(list(self.seed))
        return torch.from_numpy(rng.random(layer.weight.shape[0]))


def importance_for(criterion: str, seed: tuple[int, ...]) -> Importance:
    return {"l1": NormImportance(1), "l2": NormImportance(2)}.get(criterion) or RandomImportance(seed)


@dataclass
class Selection:
    removed: list[int]             # neuron indices in removal order
    scores: list[float | None]     # the criterion's value at each removal
    cka: list[float]               # CKA(original, pruned) after each removal
    engine: str


def removal_count(rate: float | None, alive: int) -> int | None:
    """k = round(rate * alive), rounding halves up, leaving at least one neuron alive.

    None when the pass stops on CKA instead.
    """
    return None if rate is None else min(int(math.floor(rate * alive + 0.5)), alive - 1)


def select(rec: LayerRecording, params: PruneParams, alive: np.ndarray,
           random_seed: tuple[int, ...]) -> Selection:
    """Choose the neurons of one layer to remove in this pass."""
    k = removal_count(params.rate, int(alive.sum()))
    fast = params.engine == "fast" and params.kernel == "linear"
    if not _varies(rec):  # CKA is undefined (e.g. every alive ReLU dead on these samples)
        return Selection([], [], [], "fast" if fast else "reference")
    if fast:
        interactions = (interactions_from_covariance(rec.covariance, rec.groups) if rec.covariance is not None
                        else interactions_from_activations(rec.outputs, rec.groups, debiased=params.debiased))
        path = lambda order: cka_path(interactions, order)  # noqa: E731
    else:
        path = _reference_path(rec, params)
    if params.type == "cka":
        if fast:
            removed, scores = fast_greedy_from_interactions(interactions, k, alive=alive, stop_cka=params.stop_cka)
        else:
            removed, scores = reference_greedy(rec.outputs, rec.recompute, len(rec.groups), k, alive=alive,
                                               kernel=params.kernel, debiased=params.debiased,
                                               stop_cka=params.stop_cka)
        return Selection(removed, list(scores), list(scores), "fast" if fast else "reference")
    importance = importance_for(params.type, random_seed)(rec.layer.block.layer).cpu().numpy()
    order = [int(i) for i in np.argsort(importance, kind="stable") if alive[i]]
    order = order[:k] if k is not None else order
    damage = path(order)
    if params.stop_cka is not None:
        keep = next((t for t, value in enumerate(damage) if value <= params.stop_cka), len(order))
        order, damage = order[:keep], damage[:keep]
    scores = [None if params.type == "random" else float(importance[i]) for i in order]
    return Selection(order, scores, list(damage), "fast" if fast else "reference")


def _varies(rec: LayerRecording) -> bool:
    """Whether the layer's recorded output varies across the scoring samples."""
    if rec.covariance is not None:
        return bool(np.trace(rec.covariance) > 0)
    return bool((rec.outputs != rec.outputs[:1]).any())


def _reference_path(rec: LayerRecording, params: PruneParams) -> Callable[[list[int]], list[float]]:
    """CKA after each prefix of ``order``, by really zeroing weights and re-running the layer."""
    def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
        if params.kernel == "linear":
            return float(feature_space_linear_cka(a, b, debiased=params.debiased))
        return float(cka(gram_rbf(a), gram_rbf(b), debiased=params.debiased))

    def path(order: list[int]) -> list[float]:
        return [similarity(rec.outputs, rec.recompute(order[: t + 1])) for t in range(len(order))]
    return path
