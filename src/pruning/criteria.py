"""Which neurons of a layer a pass removes, for each criterion.

The baselines are static importances (lower = removed first), behind one small interface:
``importance(layer) -> (width,) scores``. Magnitude (``l1``, ``l2``: the norm of a neuron's
incoming weights) and ``random`` read the layer; the activation baselines carry what was
recorded on the scoring samples:

- ``apoz``: 1 - APoZ, APoZ the share of zero post-ReLU outputs (Hu et al. 2016): the neurons
  that are most often zero go first.
- ``mean_activation``: the mean post-ReLU output; the smallest go first.
- ``taylor``: the first-order Taylor importance of the neuron's output on training batches
  (Molchanov et al. 2019; `src.pruning.scoring.taylor_importance`); the smallest go first.

CKA is a greedy search (``cka_prune.greedy``), conditional or independent, at the layer's
own output or at a downstream target (`src.pruning.targets`: each target searches and scores
its damage path by the configured engine); target "refit" scores the CKA of the consumer's ridge
least-squares refit from the kept units (``cka_prune.refit``). ``obs`` (structured Optimal Brain
Surgeon, ``cka_prune.obs.obs_greedy``) removes the units whose removal raises the refit's
least-squares objective least. Both use the ridge lam = compensate_ridge x the mean variance of
the alive units' outputs, fixed during the pass. Every criterion also records the CKA between the
original and the pruned target representation after each removal, so damage curves compare
across criteria. ``select`` prunes one layer at the configured rate; ``select_global`` spends
one budget over several layers (allocation "global").
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import numpy as np
import torch
from torch import nn

from cka_prune.checks import NO_VARIATION as CKA_UNDEFINED
from cka_prune.obs import obs_greedy, reference_obs_greedy
from cka_prune.refit import SingularError
from cka_prune.greedy_search import Search, allocate, run_search
from src.config import REFIT_CRITERIA, PruneParams
from src.errors import UserError
from src.pruning.scoring import LayerRecording
from src.pruning.targets import ConsumerRecording, Path

# The reason a layer is left alone when its representation cannot be scored.
NO_VARIATION = f"{CKA_UNDEFINED}; layer left alone"

# The baselines whose importance is measured on data when the layer is recorded.
MEASURED = ("apoz", "mean_activation", "taylor")


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


@dataclass(frozen=True)
class RecordedImportance:
    """A per-neuron importance measured on data (activation statistics, Taylor): (width,)."""

    values: np.ndarray

    def __call__(self, layer: nn.Module) -> torch.Tensor:
        if self.values.shape != (layer.weight.shape[0],):
            raise ValueError(f"recorded importance has shape {self.values.shape}, the layer "
                             f"{layer.weight.shape[0]} neurons")
        return torch.from_numpy(self.values)


def importance_for(criterion: str, seed: tuple[int, ...], rec: LayerRecording | None = None) -> Importance:
    """The importance of a baseline criterion; ``rec`` carries what the activation baselines read."""
    if criterion in ("l1", "l2"):
        return NormImportance(int(criterion[1]))
    if criterion == "random":
        return RandomImportance(seed)
    if criterion in MEASURED and rec is not None and rec.measured is not None:
        return RecordedImportance(rec.measured)
    raise ValueError(f"no importance for criterion {criterion!r} (or its recording is missing)")


@dataclass
class Selection:
    removed: list[int]             # neuron indices in removal order
    scores: list[float | None]     # the criterion's value at each removal
    cka: list[float]               # CKA(original, pruned) after each removal (cumulative)
    engine: str
    skipped: str | None = None     # why the layer was left alone, if it was


def removal_count(rate: float | None, alive: int) -> int | None:
    """k = round(rate * alive), rounding halves up exactly, leaving at least one neuron alive.

    The product is taken on the decimal the rate was written as (Fraction(str(rate))), so
    0.7 * 45 = 31.5 rounds to 32 (in binary floating point it is 31.499...). None when the
    pass stops on CKA instead.
    """
    if rate is None:
        return None
    return min(math.floor(Fraction(str(rate)) * alive + Fraction(1, 2)), alive - 1)


@contextmanager
def _ridge_needed() -> Iterator[None]:
    """A refit without a unique solution is the config's ridge of 0: one line, exit 2."""
    try:
        yield
    except SingularError as err:
        raise UserError(f"prune.params.compensate_ridge: {err}") from None


def select(rec: LayerRecording, params: PruneParams, alive: np.ndarray,
           random_seed: tuple[int, ...]) -> Selection:
    """Choose the neurons of one layer to remove in this pass (allocation "uniform").

    With stop_cka the pass also ends before the last alive neuron (independent greedy's
    individual scores can all stay above stop_cka).
    """
    with _ridge_needed():
        return _select(rec, params, alive, random_seed)


def _select(rec: LayerRecording, params: PruneParams, alive: np.ndarray,
            random_seed: tuple[int, ...]) -> Selection:
    alive_count = int(alive.sum())
    k = removal_count(params.rate, alive_count)
    k = max(alive_count - 1, 0) if k is None else k
    engine = params.scoring_engine
    if not rec.target.varies():  # CKA is undefined (e.g. every alive ReLU dead on these samples)
        return Selection([], [], [], engine, skipped=NO_VARIATION)
    if params.type == "cka":
        search = rec.target.search(params, alive)
        run_search(search, k, params.stop_cka)
        return _cka_selection(search, rec.target.path(params, alive), engine)
    path = rec.target.path(params, alive)
    if params.type in REFIT_CRITERIA:
        order, scores = _obs(rec.consumer, params, alive, k, engine)
    else:
        importance = importance_for(params.type, random_seed, rec)(rec.layer.block.layer).cpu().numpy()
        order = [int(i) for i in np.argsort(importance, kind="stable") if alive[i]][:k]
        scores = [None if params.type == "random" else float(importance[i]) for i in order]
    damage = path(order)
    if params.stop_cka is not None:
        keep = next((t for t, value in enumerate(damage) if value <= params.stop_cka), len(order))
        order, scores, damage = order[:keep], scores[:keep], damage[:keep]
    return Selection(order, scores, list(damage), engine)


def _obs(consumer: ConsumerRecording, params: PruneParams, alive: np.ndarray, k: int,
         engine: str) -> tuple[list[int], list[float]]:
    """Structured OBS's removal order and costs (the rise of the refit's objective) by ``engine``."""
    if engine == "reference":
        return reference_obs_greedy(consumer.inputs, consumer.weight, k, consumer.groups, alive,
                                    params.compensate_ridge)
    return obs_greedy(consumer.centred_covariance(), consumer.weight, k, consumer.groups, alive,
                      params.compensate_ridge)


def select_global(recs: list[LayerRecording], params: PruneParams, alives: list[np.ndarray]) -> list[Selection]:
    """Choose the neurons to remove in several layers with one budget (allocation "global").

    budget = sum over the layers that can be scored of round(rate * alive), the uniform
    rate's total; spent by `cka_prune.greedy_search.allocate` (smallest relative drop of a layer's
    own CKA first, never emptying a layer). One Selection per layer, in the order of ``recs``.
    """
    engine = params.scoring_engine
    scored = [rec.target.varies() for rec in recs]
    budget = sum(removal_count(params.rate, int(alive.sum())) for alive, ok in zip(alives, scored) if ok)
    with _ridge_needed():
        searches = [rec.target.search(params, alive) if ok else None for rec, alive, ok in zip(recs, alives, scored)]
        allocate([search for search in searches if search is not None], budget)
        return [Selection([], [], [], engine, skipped=NO_VARIATION) if search is None
                else _cka_selection(search, rec.target.path(params, alive), engine)
                for rec, alive, search in zip(recs, alives, searches)]


def _cka_selection(search: Search, path: Path, engine: str) -> Selection:
    """Scores as searched; cka of the cumulative removals (for independent greedy, not its scores)."""
    damage = search.scores if search.conditional else path(search.removed)
    return Selection(list(search.removed), list(search.scores), list(damage), engine)
