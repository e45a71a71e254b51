"""Aggregation over seeds (pure): accuracy per iteration, the paired gaps, the shared removals.

Every function reads :class:`~src.report.records.Experiment` seeds (diverged seeds are not
among them) and pairs only through :class:`~src.report.records.Pairing` (same trained model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from src.report.records import Experiment, Pairing
from src.report.stats import Interval, Stat, paired_interval
from src.results import IterationRecord, SeedResult


@dataclass(frozen=True)
class IterationRow:
    """One criterion after one iteration, over the seeds that completed it (iteration 0: unpruned)."""

    label: str
    iteration: int
    seeds: tuple[int, ...]
    remaining: dict[int, Stat]  # layer index -> neurons alive
    layer_fraction: dict[int, Stat]  # layer index -> alive / width
    fraction: Stat  # alive / width over all pruned layers together
    after_prune: Stat
    after_retrain: Stat | None  # None when no seed retrained
    min_cka: float | None  # smallest CKA accepted in this iteration, any seed and layer
    cka: dict[int, Stat] = field(default_factory=dict)  # layer -> CKA after the pass's last removal
    retrain_epochs: Stat | None = None  # epochs the retraining actually ran (early stopping)
    rate: float | None = None  # a sparsity sweep's point: the rate every seed pruned the trained model at


def iteration_rows(exp: Experiment) -> list[IterationRow]:
    """Rows for iteration 0 (unpruned) and every iteration at least one seed completed (none without seeds)."""
    if not exp.seeds:
        return []
    return [_row(exp, 0, list(exp.seeds))] + [
        _row(exp, number, [s for s in exp.seeds if s.iteration(number) is not None])
        for number in exp.iteration_numbers()]


def _row(exp: Experiment, number: int, seeds: list[SeedResult]) -> IterationRow:
    alive = {s.seed: s.alive(number) for s in seeds}  # a sweep point's: counted from the trained model
    widths = {s.seed: {layer.index: layer.width for layer in s.layers} for s in seeds}
    layers = sorted({index for a in alive.values() for index in a})
    iterations = [it for s in seeds if (it := s.iteration(number)) is not None]
    steps = [step for it in iterations for step in it.layers]
    accepted = [v for step in steps for v in step.cka]
    retrained = [v for s in seeds if (v := s.test_acc(number, retrained=True)) is not None]
    return IterationRow(
        label=exp.label,
        iteration=number,
        seeds=tuple(s.seed for s in seeds),
        remaining={i: Stat.of([a[i] for a in alive.values() if i in a]) for i in layers},
        layer_fraction={i: Stat.of([a[i] / widths[s][i] for s, a in alive.items() if i in a]) for i in layers},
        fraction=Stat.of([sum(a.values()) / sum(widths[s].values()) for s, a in alive.items()]),
        after_prune=Stat.of([s.test_acc(number, retrained=False) for s in seeds]),
        after_retrain=Stat.of(retrained),
        min_cka=min(accepted) if accepted else None,
        cka={i: Stat.of(values) for i in layers
             if (values := [step.cka[-1] for step in steps if step.index == i and step.cka])},
        retrain_epochs=Stat.of([it.retrain.epochs for it in iterations if it.retrain is not None]),
        rate=point_rate(iterations),
    )


def point_rate(iterations: Iterable[IterationRecord]) -> float | None:
    """The rate of a sweep point that ``iterations`` (one per seed) all are; None for other iterations."""
    rates = {it.rate for it in iterations}
    return rates.pop() if len(rates) == 1 else None


def fraction_remaining(seed: SeedResult, number: int) -> float:
    """Alive neurons over the width of all pruned layers after iteration ``number``."""
    return sum(seed.alive(number).values()) / sum(layer.width for layer in seed.layers)


@dataclass(frozen=True)
class GapRow:
    """Test accuracy of ``reference`` minus ``other`` after one iteration, over seeds that pruned the same model.

    ``after_prune``/``after_retrain``: mean, min and max of the per-seed gaps; ``ci_*``: the
    interval of their mean (:func:`~src.report.stats.paired_interval`; None below two seeds).
    Descriptive: not corrected across iterations or pairs, so no significance is read from it.
    """

    reference: str
    other: str
    iteration: int
    fraction_reference: float  # mean fraction of neurons remaining, over the paired seeds
    fraction_other: float
    after_prune: Stat | None
    after_retrain: Stat | None
    ci_prune: Interval | None = None
    ci_retrain: Interval | None = None


def accuracy_gaps(pairing: Pairing, bootstrap: bool = False) -> list[GapRow]:
    """A row for every iteration both completed for at least one pair of seeds (0: unpruned)."""
    rows = []
    for number in [0] + pairing.first.iteration_numbers():
        done = [(a, b) for a, b in pairing.pairs if number == 0 or (a.iteration(number) and b.iteration(number))]
        if not done:
            continue

        def gaps(retrained: bool) -> list[float]:
            return [x - y for a, b in done
                    if (x := a.test_acc(number, retrained)) is not None and (y := b.test_acc(number, retrained)) is not None]

        rows.append(GapRow(
            reference=pairing.first.label, other=pairing.second.label, iteration=number,
            fraction_reference=_mean([fraction_remaining(a, number) for a, _ in done]),
            fraction_other=_mean([fraction_remaining(b, number) for _, b in done]),
            after_prune=Stat.of(gaps(False)), after_retrain=Stat.of(gaps(True)),
            ci_prune=paired_interval(gaps(False), bootstrap), ci_retrain=paired_interval(gaps(True), bootstrap)))
    return rows


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def overlap_fraction(a: Iterable[int], b: Iterable[int]) -> float | None:
    """|A & B| / max(|A|, |B|): the fraction of removed neurons both chose (None if neither removed any).

    For equally many removals this is the share of one choice the other also made; it is 1 only
    when the two sets are identical.
    """
    a, b = set(a), set(b)
    if not a and not b:
        return None
    return len(a & b) / max(len(a), len(b))


@dataclass(frozen=True)
class OverlapRow:
    """Neurons ``first`` and ``second`` both removed from one layer, over seeds with the same trained model."""

    first: str
    second: str
    iteration: int
    layer: int
    removed: Stat  # neurons ``first`` removed in this iteration
    common: Stat  # overlap_fraction of this iteration's removals
    cumulative: Stat  # overlap_fraction of everything removed up to this iteration
    chance: Stat  # what two independent random choices would share: min(|A|, |B|) / alive_before
    chance_cumulative: Stat  # the same for the cumulative sets: min(|A|, |B|) / width
    rate: float | None = None  # a sparsity sweep's point: its rate (its removals are all its network misses)


def removal_overlaps(pairing: Pairing) -> list[OverlapRow]:
    """Per iteration and layer: the share of removals the paired seeds chose in common."""
    first = pairing.first
    widths = {a.seed: {layer.index: layer.width for layer in a.layers} for a, _ in pairing.pairs}
    rows = []
    for number in first.iteration_numbers():
        for layer in sorted(first.layers):
            per_seed = []
            for a, b in pairing.pairs:
                it_a, it_b = a.iteration(number), b.iteration(number)
                step_a, step_b = it_a and it_a.step(layer), it_b and it_b.step(layer)
                if step_a is None or step_b is None:
                    continue
                common = overlap_fraction(step_a.removed, step_b.removed)
                if common is None or step_a.alive_before == 0:
                    continue
                gone_a, gone_b = a.removed_up_to(number, layer), b.removed_up_to(number, layer)
                per_seed.append((
                    len(step_a.removed), common, overlap_fraction(gone_a, gone_b),
                    min(len(set(step_a.removed)), len(set(step_b.removed))) / step_a.alive_before,
                    min(len(gone_a), len(gone_b)) / widths[a.seed][layer]))
            if per_seed:
                rate = point_rate(it for a, b in pairing.pairs for it in (a.iteration(number), b.iteration(number)) if it)
                rows.append(OverlapRow(first.label, pairing.second.label, number, layer,
                                       *(Stat.of(values) for values in zip(*per_seed)), rate=rate))
    return rows
