"""Selection criteria: each a callable ``context -> {span label: score}``, the lowest removed first
(as a Torch-Pruning importance maps a group to scores). X, Y: a span's input and output rows.

- ``cka``: 1 - linear CKA(X, Y) (the most similar span first).
- ``cosine``: ShortGPT's block influence (Men et al. 2024), 1 - mean_i cos(x_i, y_i) over positions.
- ``angular``: Gromov et al. 2024 ("The unreasonable ineffectiveness of the deeper layers"), the mean
  angular distance arccos(cos(x_i, y_i)) / pi between the span's input and output; they take the
  last token of each sequence, here every position (a ``mask`` can keep the last tokens only).
- ``tail``: the number of blocks after the span's last one (the last blocks first; "Reassessing
  Layer Pruning in LLMs", Lu et al. 2024).
- ``loss``: SLEB (Song et al. 2024): the calibration loss ``loss(model)`` of the network with the
  span removed, by running it (in eval mode, without gradients).
- ``pons``: Pons et al. 2024: 1 - linear CKA between the dense network's output and the output of
  the network with the span removed: the model's output (a mapping's ``logits``) as rows per
  position like a block's, so its D x D moments cost O(D^2) memory (D: classes or vocabulary).
- ``random``: a uniform draw per candidate from the plan's generator.
- ``residual``: the relative error of the span's least-squares patch (the depth analogue of
  structured OBS: the span the patch replaces best goes first).
- ``cka-refit``: 1 - linear CKA(Y, Xc W), W the span's patch.

``loss`` and ``pons`` run the candidate network as it would be removed: with its patch when the plan
compensates. The statistics-based criteria read ``context.moments`` (:mod:`.recording`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from cka_prune.batches import run_batch
from cka_prune.depth.blocks import Forward, Span, evaluating, first_tensor, label, skipped
from cka_prune.depth.patch import Patch, fit_patch, linear_cka, refit_cka
from cka_prune.depth.recording import Accumulator, Mask, Moments, masked_rows


@dataclass(frozen=True)
class Context:
    """What a criterion may read at one step.

    model: the current network (earlier removals applied); dense: the unpruned network;
    names: the blocks not removed yet (forward order); candidates: the spans to score;
    moments: {label: Moments} of the candidates on the current network (None when no criterion
    or patch needs them); compensate, ridge: the patch; loss: callable(model) -> float;
    rng: the plan's generator; tuple_outputs: {block: k} (`Skip`).
    """

    model: nn.Module
    dense: nn.Module
    names: Sequence[str]
    candidates: Sequence[Span]
    batches: Iterable[Any]
    forward: Forward | None = None
    mask: Mask | None = None
    moments: Mapping[str, Moments] | None = None
    compensate: str = "none"
    ridge: float = 1e-3
    loss: Callable[[nn.Module], float] | None = None
    rng: np.random.Generator | None = None
    tuple_outputs: Mapping[str, int] | None = None

    def patch(self, span: Span) -> Patch | None:
        """The span's patch on the current network, None when the plan does not compensate."""
        if self.compensate == "none":
            return None
        if self.moments is None:
            raise ValueError("the patch needs the candidates' moments")
        return fit_patch(self.moments[label(span)], self.ridge)

    def removing(self, span: Span) -> AbstractContextManager[nn.Module]:
        """The current network with `span` removed as the plan would (context manager)."""
        patch = self.patch(span)
        return skipped(self.model, [span], {label(span): patch} if patch is not None else None, self.tuple_outputs)


class Criterion:
    """context -> {span label: score}, the lowest removed first. `needs_moments`: it reads
    ``context.moments``, so the driver records them; `needs_linear`: their D x D sums too (not
    only the cosines)."""

    needs_moments = False
    needs_linear = False

    def __call__(self, context: Context) -> dict[str, float]:
        raise NotImplementedError


class MomentCriterion(Criterion):
    """A score from each candidate's moments and the ridge."""

    needs_moments = True

    def __init__(self, score: Callable[[Moments, float], float], linear: bool = True):
        self.score, self.needs_linear = score, linear

    def __call__(self, context: Context) -> dict[str, float]:
        if context.moments is None:
            raise ValueError("this criterion needs the candidates' moments")
        return {label(s): self.score(context.moments[label(s)], context.ridge) for s in context.candidates}


class Tail(Criterion):
    def __call__(self, context: Context) -> dict[str, float]:
        last = len(context.names) - 1
        return {label(s): float(last - context.names.index(s[-1])) for s in context.candidates}


class Random(Criterion):
    def __call__(self, context: Context) -> dict[str, float]:
        if context.rng is None:
            raise ValueError("the random criterion needs the plan's generator")
        draws = context.rng.random(len(context.candidates))
        return {label(s): float(d) for s, d in zip(context.candidates, draws)}


class Loss(Criterion):
    def __call__(self, context: Context) -> dict[str, float]:
        if context.loss is None:
            raise ValueError("criterion 'loss' needs loss=callable(model) -> float")
        out = {}
        with evaluating(context.model):
            for s in context.candidates:
                with context.removing(s) as model:
                    out[label(s)] = float(context.loss(model))
        return out


class Pons(Criterion):
    def __call__(self, context: Context) -> dict[str, float]:
        forward = context.forward or run_batch
        acc = {label(s): Accumulator() for s in context.candidates}
        with evaluating(context.dense), evaluating(context.model):
            for batch in context.batches:
                keep = context.mask(batch) if context.mask is not None else None
                dense = masked_rows(first_tensor(forward(context.dense, batch)), keep)
                for s in context.candidates:
                    with context.removing(s) as model:
                        acc[label(s)].add(dense, masked_rows(first_tensor(forward(model, batch)), keep))
        return {k: 1.0 - linear_cka(a.moments()) for k, a in acc.items()}


def _refit(m: Moments, ridge: float) -> float:
    cxx, cxy, cyy = m.centered()
    p = fit_patch(m, ridge)
    return 1.0 - refit_cka(cxx, cxy, cyy, p.weight)


CRITERIA: dict[str, Criterion] = {
    "cka": MomentCriterion(lambda m, _ridge: 1.0 - linear_cka(m)),
    "cosine": MomentCriterion(lambda m, _ridge: 1.0 - m.cos_sum / m.n, linear=False),
    "angular": MomentCriterion(lambda m, _ridge: m.angle_sum / m.n, linear=False),
    "tail": Tail(),
    "loss": Loss(),
    "pons": Pons(),
    "random": Random(),
    "residual": MomentCriterion(lambda m, ridge: fit_patch(m, ridge).error),
    "cka-refit": MomentCriterion(_refit),
}
