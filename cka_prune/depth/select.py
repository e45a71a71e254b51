"""The driver: rank the candidate spans by a criterion and remove them, greedily or in one shot.

Greedy: at each step, record the spans of the current network (earlier removals applied, patches
included), score them, remove the lowest (ties: the first in forward order). One-shot: score the
dense network's spans once and take the lowest that do not overlap a span already taken. In both
modes a span's patch is fit on the network as it is when the span goes (the earlier spans removed
and patched), so a patch never maps from an input the pruned model no longer produces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from cka_prune.depth.blocks import NOT_REMOVABLE, Forward, Span, check_batches, contiguous_spans, label, remove, shapes
from cka_prune.depth.criteria import CRITERIA, Context, Criterion
from cka_prune.depth.patch import Patch, fit_patch
from cka_prune.depth.recording import Mask, record

COMPENSATE = ("none", "lstsq")


@dataclass(frozen=True)
class DepthPlan:
    """What `select` chose, and what `apply` needs.

    removed: block names in removal order; spans: the removed spans (tuples of names) in order;
    steps: each step's {label: score} over its candidates (one step in one-shot mode); patches:
    {span label: Patch} (empty when compensate="none"); patch_errors: {span label: relative
    least-squares error of its patch}; tuple_outputs: {block name: k} for blocks that return a
    k-tuple (their Skip returns (y, None, ...)).
    """

    criterion: str
    compensate: str
    greedy: bool
    removed: tuple[str, ...]
    spans: tuple[Span, ...]
    steps: tuple[dict[str, float], ...]
    patches: dict[str, Patch]
    patch_errors: dict[str, float]
    tuple_outputs: dict[str, int]


def _criterion(criterion: str | Criterion) -> tuple[str, Criterion]:
    if isinstance(criterion, Criterion):
        return type(criterion).__name__, criterion
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {tuple(CRITERIA)}, got {criterion!r}")
    return criterion, CRITERIA[criterion]


def _span_length(span: bool | int, count: int) -> int:
    if span is True:
        return count
    length = 1 if span is False else span
    if isinstance(length, bool) or not isinstance(length, int) or length < 1 or count % length:
        raise ValueError(f"span must be False, True or an int k >= 1 dividing count={count}, got {span!r}")
    return length


def _lowest(scores: dict[str, float], spans: Sequence[Span]) -> Span:
    """The span with the lowest score, the first in forward order among equals."""
    return min(spans, key=lambda s: scores[label(s)])


def _disjoint(scores: dict[str, float], spans: Sequence[Span], steps: int) -> list[Span]:
    """The `steps` lowest-scoring spans that share no block, in score order."""
    taken: list[Span] = []
    for s in sorted(spans, key=lambda s: scores[label(s)]):  # stable: forward order among equals
        if len(taken) < steps and not any(set(s) & set(t) for t in taken):
            taken.append(s)
    if len(taken) < steps:
        raise ValueError(f"only {len(taken)} disjoint spans of {len(spans[0])} blocks, {steps} asked")
    return taken


def select(model: nn.Module, names: Sequence[str], batches: Iterable[Any], criterion: str | Criterion = "cka",
           count: int = 1, *, greedy: bool = True, span: bool | int = False, compensate: str = "lstsq",
           ridge: float = 1e-3, loss: Callable[[nn.Module], float] | None = None, seed: int = 0,
           forward: Forward | None = None, mask: Mask | None = None) -> DepthPlan:
    """Rank and remove `count` of the blocks `names` on the calibration `batches`; `model` is left as is.

    criterion: a name in CRITERIA (or a Criterion); greedy: re-record and re-rank the current network
    after each removal, else rank the dense network once (module docstring); span: False (single
    blocks), True (one span of `count` consecutive blocks, as Gromov et al.) or an int k (spans of k
    blocks, `count` a multiple of k); compensate: "none" (the span becomes the identity) or "lstsq"
    (the ridge least-squares patch, :mod:`.patch`; ridge relative to the mean input variance);
    loss: callable(model) -> float, for "loss"; seed: the generator of "random";
    forward(model, batch) runs one batch; mask(batch) -> bool tensor of the positions to keep.
    """
    name, crit = _criterion(criterion)
    if compensate not in COMPENSATE:
        raise ValueError(f"compensate must be one of {COMPENSATE}, got {compensate!r}")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(names):
        raise ValueError(f"count must be an int in [1, {len(names)}] (the blocks named), got {count!r}")
    if len(set(names)) != len(names):
        raise ValueError("names must be distinct")
    length = _span_length(span, count)
    batches = check_batches(batches)
    first = next(iter(batches), None)
    if first is None:
        raise ValueError("batches is empty")
    seen = shapes(model, names, first, forward)
    for n in names:
        if n not in seen:
            raise ValueError(f"block {n!r} did not run in the model's forward pass")
        if seen[n][0] != seen[n][1]:
            raise ValueError(f"block {n!r} " + NOT_REMOVABLE.format(tuple(seen[n][1]), tuple(seen[n][0])))
    tuple_outputs = {n: k for n, (_, _, k) in seen.items() if k}
    work = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    fit = compensate == "lstsq"  # a patch is fit from the linear moments
    needs, linear = crit.needs_moments or fit, crit.needs_linear or fit

    def context(current: Sequence[str], candidates: Sequence[Span]) -> Context:
        moments = record(work, current, batches, forward, mask, spans=candidates, linear=linear) if needs else None
        return Context(work, model, list(current), candidates, batches, forward, mask, moments, compensate,
                       ridge, loss, rng, tuple_outputs)

    removed: list[str] = []
    spans: list[Span] = []
    steps: list[dict[str, float]] = []
    patches: dict[str, Patch] = {}

    def take(s: Span, patch: Patch | None) -> None:
        if patch is not None:
            patches[label(s)] = patch
        remove(work, [s], patches, tuple_outputs)
        spans.append(s)
        removed.extend(s)

    if greedy:
        for _ in range(count // length):
            current = [n for n in names if n not in removed]
            candidates = contiguous_spans(names, length, removed)
            if not candidates:
                raise ValueError(f"no span of {length} consecutive blocks is left to remove")
            ctx = context(current, candidates)
            scores = crit(ctx)
            steps.append(scores)
            best = _lowest(scores, candidates)
            take(best, ctx.patch(best))
    else:
        candidates = contiguous_spans(names, length)
        if not candidates:
            raise ValueError(f"no span of {length} consecutive blocks among the blocks named")
        scores = crit(context(names, candidates))
        steps.append(scores)
        for s in _disjoint(scores, candidates, count // length):
            take(s, fit_patch(record(work, names, batches, forward, mask, spans=[s])[label(s)], ridge) if fit else None)
    return DepthPlan(name, compensate, greedy, tuple(removed), tuple(spans), tuple(steps), patches,
                     {k: p.error for k, p in patches.items()}, tuple_outputs)
