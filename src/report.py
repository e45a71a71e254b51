"""Compare pruning runs: python3 -m src.report RESULT_DIR... [--out DIR].

Each RESULT_DIR is an ``output/<experiment>/`` folder written by main_prune.py, holding one
``<seed>.json`` per seed. The report aggregates over seeds, per criterion and iteration:

- neurons remaining per pruned layer, test accuracy after pruning and after retraining
  (mean, min, max over seeds), the smallest CKA accepted in the iteration;
- with several folders, the accuracy gap between the first folder (the reference) and each
  other one at every iteration, paired by seed, with a bootstrap confidence interval of its
  mean and a Wilcoxon signed-rank test, and the fraction of removed neurons the two chose in
  common (only for seeds that pruned the same trained model).

Outputs (under --out; default ``<dir>/report`` for one folder, ``output/report/<a>_vs_<b>``
for several): ``report.md``, ``iterations.csv``, ``layers.csv`` (long format: one row per
seed, criterion, iteration and layer) (+ ``gap.csv``, ``overlap.csv``) and the figures
``accuracy``, ``cka``, ``overlap`` in each ``--format`` (png, pdf, svg). ``--heatmap SEED``
adds the layer-by-layer CKA between each run's trained and final pruned network
(:mod:`src.heatmap`). The tables are also printed.

Partial results are fine: a seed still running (fewer iterations, ``complete: false``), a seed
with no file yet, or an unreadable file is listed in the report's notes, not fatal. Iteration 0
is the trained model before pruning.
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import hashlib
import io
import math
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy import stats
from tabulate import tabulate

from src import results
from src.cli import run
from src.config import load_config
from src.errors import UserError
from src.io import atomic_write_bytes, atomic_write_text
from src.results import LayerInfo, SeedResult

DEFAULT_OUTPUT_ROOT = Path("output")
DEFAULT_CONFIG_ROOT = Path("config")
# One colour per criterion in every figure of every report, from the Okabe-Ito palette
# (distinguishable with the common colour-vision deficiencies and in greyscale print).
CRITERION_COLORS = {"cka": "#0072B2", "l1": "#D55E00", "l2": "#009E73", "random": "#000000",
                    "apoz": "#CC79A7", "mean_activation": "#56B4E9", "taylor": "#E69F00",
                    # Torch-Pruning's importances take their counterparts' colours (BN scale: l2's).
                    "tp_l1": "#D55E00", "tp_bn": "#009E73", "tp_taylor": "#E69F00", "tp_random": "#000000"}
FIGURE_FORMATS = ("png", "pdf", "svg")
DPI = 150
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
# A bootstrap bound that is 0 in exact arithmetic (the mean of a resample of differences that
# cancel) comes out as +-1e-19 or so; closer to 0 than this counts as 0.
ZERO_TOLERANCE = 1e-12
NOTE_WIDTH = 100  # characters per line of the notes under a printed table


# ---------------------------------------------------------------------------------------------
# Results as read from disk


@dataclass(frozen=True)
class Experiment:
    """The results of one folder, all of one run. ``label`` names it in tables and legends (unique in a report)."""

    directory: Path
    name: str
    criterion: str
    label: str
    seeds: tuple[SeedResult, ...]
    notes: tuple[str, ...] = ()

    @property
    def layers(self) -> dict[int, LayerInfo]:
        return {layer.index: layer for seed in self.seeds for layer in seed.layers}

    def iteration_numbers(self) -> list[int]:
        return sorted({it.iteration for seed in self.seeds for it in seed.iterations})

    @property
    def run(self) -> str:
        return self.seeds[0].run.config_digest if self.seeds else ""


def load_experiment(directory: Path) -> Experiment:
    """Every readable ``<seed>.json`` in ``directory`` of one run; the others become notes.

    When the folder holds results of several runs (another config), the run of the most
    recently written result is reported and the others are named in the notes, never mixed.
    """
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory (expected an output/<experiment>/ folder written by main_prune.py)")
    loaded: list[tuple[float, SeedResult]] = []
    notes: list[str] = []
    for path in results.seed_files(directory):
        try:
            loaded.append((path.stat().st_mtime, results.load(path)))
        except UserError as err:
            notes.append(f"skipped {err}")
    if not loaded:
        return Experiment(directory, directory.name, "", directory.name, (), tuple(notes))
    run = max(loaded, key=lambda pair: pair[0])[1].run.config_digest
    seeds = tuple(result for _, result in loaded if result.run.config_digest == run)
    other = [result.seed for _, result in loaded if result.run.config_digest != run]
    if other:
        notes.append(f"seed(s) {_seed_list(other)} are results of another run (another config) and are left out; "
                     f"rerun main_prune.py with --fresh to replace them")
    first = seeds[0]
    return Experiment(directory, first.experiment, first.criterion, first.criterion, seeds, tuple(notes))


def with_unique_labels(experiments: Sequence[Experiment]) -> list[Experiment]:
    """Label by criterion; where two share one, by experiment name (its last part, ``cka-next`` for
    ``study-fmnist/cka-next``, where that is unique); where names clash too, by folder."""
    def clashes(key: Callable[[Experiment], str], exp: Experiment) -> bool:
        return sum(key(other) == key(exp) for other in experiments) > 1

    def short(exp: Experiment) -> str:
        return exp.name.rsplit("/", 1)[-1]

    out = []
    for exp in experiments:
        label = exp.criterion
        if clashes(lambda e: e.criterion, exp):
            label = (str(exp.directory) if clashes(lambda e: e.name, exp) else
                     exp.name if clashes(short, exp) else short(exp))
        out.append(replace(exp, label=label))
    return out


def configured_seeds(experiment: str, config_root: Path | None) -> tuple[int, ...]:
    """The seeds config/<experiment>.json asks for, when that file exists and is valid, else ()."""
    if config_root is None:
        return ()
    path = config_root / f"{experiment}.json"
    if not path.is_file():
        return ()
    try:
        return tuple(load_config(path).seeds)
    except (UserError, OSError, ValueError):
        return ()


def _seed_list(seeds: Iterable[int]) -> str:
    return ", ".join(str(s) for s in sorted(seeds))


def seed_status(exp: Experiment, expected: Iterable[int]) -> list[str]:
    """One line per kind of seed: complete, still running (with progress), missing."""
    done = [s.seed for s in exp.seeds if s.complete]
    lines = [f"{len(done)} seed(s) complete" + (f": {_seed_list(done)}" if done else "")]
    for s in exp.seeds:
        if not s.complete:
            lines.append(f"seed {s.seed}: {len(s.iterations)} of {s.planned_iterations} iterations done "
                         "(running or stopped)")
    missing = sorted(set(expected) - {s.seed for s in exp.seeds})
    if missing:
        lines.append(f"no results yet for seed(s) {_seed_list(missing)}")
    return lines


# ---------------------------------------------------------------------------------------------
# Aggregation (pure)


@dataclass(frozen=True)
class Stat:
    """Mean, min and max of values over seeds; ``n`` values. NaN in, NaN out."""

    mean: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        if not values:
            return None
        if any(math.isnan(v) for v in values):
            return cls(math.nan, math.nan, math.nan, len(values))
        return cls(math.fsum(values) / len(values), min(values), max(values), len(values))


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


def iteration_rows(exp: Experiment) -> list[IterationRow]:
    """Rows for iteration 0 (unpruned) and every iteration at least one seed completed."""
    return [_row(exp, 0, list(exp.seeds))] + [
        _row(exp, number, [s for s in exp.seeds if s.iteration(number) is not None])
        for number in exp.iteration_numbers()]


def _row(exp: Experiment, number: int, seeds: list[SeedResult]) -> IterationRow:
    alive = {s.seed: s.alive(number) for s in seeds}
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
    )


@dataclass(frozen=True)
class PairedTest:
    """Inference on paired differences d_s = a_s - b_s, one per seed.

    ``low``, ``high``: the 95 % bootstrap confidence interval of mean(d) (BCa, 9,999 resamples of
    the seeds, seeded: the same interval on every run); resampling whole seeds keeps each pair
    together, so this is the paired bootstrap of mean(a) - mean(b). ``p``: the two-sided Wilcoxon
    signed-rank test of H0 "d is symmetric about 0". With n nonzero differences its smallest
    possible p is 2 / 2^n, so with fewer than 6 seeds it cannot reach p < 0.05.
    """

    low: float
    high: float
    p: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > ZERO_TOLERANCE or self.high < -ZERO_TOLERANCE


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided exact Wilcoxon p with n nonzero differences (all of one sign): 2 / 2^n."""
    return min(1.0, 2.0 / 2**n)


def paired_test(differences: Sequence[float]) -> PairedTest | None:
    """:class:`PairedTest` of ``differences``; None with fewer than two or any NaN (no interval then)."""
    d = np.asarray(differences, dtype=np.float64)
    if len(d) < 2 or np.isnan(d).any():
        return None
    if np.all(d == d[0]):
        # Every resample has the same mean; scipy's BCa interval is then undefined (NaN).
        low = high = float(d[0])
    else:
        interval = stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE,
                                   method="BCa", rng=np.random.default_rng(BOOTSTRAP_SEED)).confidence_interval
        low, high = float(interval.low), float(interval.high)
    # No nonzero difference: no evidence against H0. scipy also says 1, after a 0/0 warning.
    p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return PairedTest(low, high, p, len(d))


@dataclass(frozen=True)
class GapRow:
    """Test accuracy of ``reference`` minus ``other`` after one iteration, paired by seed.

    ``after_prune``/``after_retrain``: mean, min and max of the per-seed gaps; ``test_*``: their
    confidence interval and paired test (None with fewer than two paired seeds).
    """

    reference: str
    other: str
    iteration: int
    fraction_reference: float  # mean fraction of neurons remaining, over the paired seeds
    fraction_other: float
    after_prune: Stat | None
    after_retrain: Stat | None
    test_prune: PairedTest | None = None
    test_retrain: PairedTest | None = None


def accuracy_gaps(reference: Experiment, other: Experiment) -> list[GapRow]:
    """A row for every iteration both completed for at least one common seed (0: unpruned)."""
    other_seeds = {s.seed: s for s in other.seeds}
    pairs = [(s, other_seeds[s.seed]) for s in reference.seeds if s.seed in other_seeds]
    rows = []
    for number in [0] + reference.iteration_numbers():
        done = [(a, b) for a, b in pairs if number == 0 or (a.iteration(number) and b.iteration(number))]
        if not done:
            continue

        def gaps(retrained: bool) -> list[float]:
            return [x - y for a, b in done
                    if (x := a.test_acc(number, retrained)) is not None and (y := b.test_acc(number, retrained)) is not None]

        rows.append(GapRow(
            reference=reference.label, other=other.label, iteration=number,
            fraction_reference=_mean_fraction([a for a, _ in done], number),
            fraction_other=_mean_fraction([b for _, b in done], number),
            after_prune=Stat.of(gaps(False)), after_retrain=Stat.of(gaps(True)),
            test_prune=paired_test(gaps(False)), test_retrain=paired_test(gaps(True))))
    return rows


def significance_sentences(gaps: Sequence[GapRow]) -> list[str]:
    """Per criterion pair and stage, in words: where the gap's confidence interval excludes 0, and the test's reach."""
    sentences = []
    for pair in dict.fromkeys((g.reference, g.other) for g in gaps):
        rows = [g for g in gaps if (g.reference, g.other) == pair]
        for stage, test_of in (("after retraining", lambda g: g.test_retrain), ("after pruning", lambda g: g.test_prune)):
            tested = [(g.iteration, t) for g in rows if (t := test_of(g)) is not None]
            if not tested:
                continue
            ahead = [i for i, t in tested if t.excludes_zero and t.low > 0]
            behind = [i for i, t in tested if t.excludes_zero and t.high < 0]
            unclear = [i for i, t in tested if not t.excludes_zero]
            parts = []
            if ahead:
                parts.append(f"{pair[0]} is ahead at {_iterations(ahead)}")
            if behind:
                parts.append(f"{pair[0]} is behind at {_iterations(behind)}")
            if parts:
                found = f"the {CONFIDENCE:.0%} CI of the mean gap excludes 0 ({'; '.join(parts)})"
                found += f" and includes 0 at {_iterations(unclear)}" if unclear else " at every iteration"
            else:
                found = f"the {CONFIDENCE:.0%} CI of the mean gap includes 0 at every iteration: no significant difference"
            n = max(t.n for _, t in tested)
            if smallest_wilcoxon_p(n) >= 0.05:
                # A bootstrap over so few seeds is little more than their range and covers far
                # less than 95 %; the exact test says plainly that n is too small.
                wilcoxon = (f"but with n = {n} paired seeds the bootstrap interval falls well short of "
                            f"{CONFIDENCE:.0%} coverage and the Wilcoxon test cannot reach p < 0.05 (its smallest "
                            f"p is {smallest_wilcoxon_p(n):.3g}): n is too small to call any difference significant")
            else:
                low_p = [i for i, t in tested if t.p < 0.05]
                wilcoxon = f"Wilcoxon p < 0.05 at {_iterations(low_p) if low_p else 'no iteration'}"
            sentences.append(f"{pair[0]} - {pair[1]}, {stage}: {found}; {wilcoxon}.")
    return sentences


def _iterations(numbers: Sequence[int]) -> str:
    return ("iteration " if len(numbers) == 1 else "iterations ") + ", ".join(str(i) for i in numbers)


def _mean_fraction(seeds: list[SeedResult], number: int) -> float:
    fractions = [sum(s.alive(number).values()) / sum(layer.width for layer in s.layers) for s in seeds]
    return math.fsum(fractions) / len(fractions)


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


def removal_overlaps(first: Experiment, second: Experiment) -> tuple[list[OverlapRow], list[str]]:
    """Overlap rows and notes on the seeds left out (different or unknown trained model)."""
    second_seeds = {s.seed: s for s in second.seeds}
    pairs, skipped = [], []
    for a in first.seeds:
        b = second_seeds.get(a.seed)
        if b is None:
            continue
        if a.model_sha256 != b.model_sha256:
            skipped.append(a.seed)
        else:
            pairs.append((a, b))
    notes = []
    if skipped:
        notes.append(f"{first.label} vs {second.label}: seed(s) {_seed_list(skipped)} did not prune the same "
                     "trained model (the model files' sha256 differ), so their removals are not compared")
    widths = {a.seed: {layer.index: layer.width for layer in a.layers} for a, _ in pairs}
    rows = []
    for number in first.iteration_numbers():
        for layer in sorted(first.layers):
            per_seed = []
            for a, b in pairs:
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
                rows.append(OverlapRow(first.label, second.label, number, layer,
                                       *(Stat.of(values) for values in zip(*per_seed))))
    return rows, notes


@dataclass(frozen=True)
class Report:
    experiments: tuple[Experiment, ...]  # the first is the reference for gaps and overlaps
    rows: tuple[IterationRow, ...]
    gaps: tuple[GapRow, ...]
    overlaps: tuple[OverlapRow, ...]
    notes: tuple[str, ...]  # about the inputs as a whole (folders without results, overlap skips)

    @property
    def layers(self) -> dict[int, LayerInfo]:
        return {i: info for exp in reversed(self.experiments) for i, info in exp.layers.items()}


def build_report(result_dirs: Sequence[Path], config_root: Path | None = DEFAULT_CONFIG_ROOT) -> Report:
    """Load every folder and aggregate. ``config_root``: where to look up each experiment's seed list.

    Raises UserError when a folder does not exist or no folder holds a readable result.
    """
    unique = list(dict.fromkeys(Path(d) for d in result_dirs))
    loaded = [load_experiment(d) for d in unique]
    if not any(exp.seeds for exp in loaded):
        raise UserError(f"no readable result files (<seed>.json) in {', '.join(str(d) for d in unique)}; "
                        "run main_prune.py first")
    notes = [f"{exp.directory}: no result files yet" for exp in loaded if not exp.seeds]
    experiments = with_unique_labels([exp for exp in loaded if exp.seeds])
    every_seed = {s.seed for exp in experiments for s in exp.seeds}
    experiments = [replace(exp, notes=tuple(seed_status(exp, every_seed | set(configured_seeds(exp.name, config_root))))
                           + exp.notes) for exp in experiments]
    reference, others = experiments[0], experiments[1:]
    gaps = [row for other in others for row in accuracy_gaps(reference, other)]
    overlaps = []
    for other in others:
        rows, skip_notes = removal_overlaps(reference, other)
        overlaps += rows
        notes += skip_notes
    return Report(tuple(experiments), tuple(row for exp in experiments for row in iteration_rows(exp)),
                  tuple(gaps), tuple(overlaps), tuple(notes))


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass(frozen=True)
class Table:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()


def _pct(value: float, signed: bool = False) -> str:
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _share(value: float) -> str:
    return f"{100 * value:.1f}%"


def _stat_cell(stat: Stat | None, signed: bool = False) -> str:
    """``mean [min, max]`` in percent (percentage points when signed)."""
    if stat is None:
        return "-"
    return f"{_pct(stat.mean, signed)} [{_pct(stat.min, signed)}, {_pct(stat.max, signed)}]"


def _count(stat: Stat) -> str:
    """An integer count, or ``min-max`` when seeds differ."""
    return f"{stat.min:g}" if stat.min == stat.max else f"{stat.min:g}-{stat.max:g}"


def _layer_key(report: Report) -> str:
    return "; ".join(f"L{i} = {info.name} (width {info.width})" for i, info in sorted(report.layers.items()))


def iteration_table(report: Report) -> Table:
    layers = sorted(report.layers)
    rows = []
    for row in report.rows:
        cells = [f"{_count(row.remaining[i])} ({_share(row.layer_fraction[i].mean)})" if i in row.remaining else ""
                 for i in layers]
        rows.append((row.label, str(row.iteration), *cells, _share(row.fraction.mean), str(len(row.seeds)),
                     _stat_cell(row.after_prune), _stat_cell(row.after_retrain),
                     "-" if row.min_cka is None else f"{row.min_cka:.4f}"))
    return Table(
        "Test accuracy per iteration",
        ("criterion", "iter", *(f"L{i} left" for i in layers), "remaining", "seeds",
         "pruned acc % [min, max]", "retrained acc % [min, max]", "min CKA"),
        tuple(rows),
        ("Iteration 0 is the trained model before pruning. Lx left: neurons remaining in layer x "
         "(% of its width); remaining: all pruned layers together. Accuracy: test accuracy right after "
         "pruning and after retraining, mean over seeds [min, max]. min CKA: smallest CKA between a layer's "
         "output at the start of the iteration and after a removal, over the iteration's removals.", _layer_key(report)))


def paper_table(report: Report) -> Table:
    """Test accuracy after retraining per iteration, one column per criterion: the paper's table."""
    labels = [exp.label for exp in report.experiments]
    by_key = {(row.label, row.iteration): row for row in report.rows}
    numbers = sorted({row.iteration for row in report.rows})
    rows = []
    for number in numbers:
        fractions = [row.fraction.mean for label in labels if (row := by_key.get((label, number)))]
        cells = []
        for label in labels:
            row = by_key.get((label, number))
            stat = None if row is None else (row.after_prune if number == 0 else row.after_retrain)
            cells.append("-" if stat is None else f"{_pct(stat.mean)} [{_pct(stat.min)}-{_pct(stat.max)}] n={stat.n}")
        rows.append((str(number), _share(sum(fractions) / len(fractions)), *cells))
    return Table(
        "Test accuracy after retraining, per iteration",
        ("iter", "remaining", *(f"{label} % [min-max]" for label in labels)),
        tuple(rows),
        ("Mean over seeds [min-max], n seeds; iteration 0 is the trained model. remaining: neurons left in the "
         "pruned layers (mean over criteria).",))


def _ci_cell(test: PairedTest | None) -> str:
    """``[low, high]`` in percentage points, ``*`` when it excludes 0."""
    if test is None:
        return "-"
    return f"[{_pct(test.low, signed=True)}, {_pct(test.high, signed=True)}]{'*' if test.excludes_zero else ''}"


def _p_cell(test: PairedTest | None) -> str:
    return "-" if test is None else f"{test.p:.3g}"


def gap_table(report: Report) -> Table | None:
    if not report.gaps:
        return None
    rows = tuple((f"{g.reference} - {g.other}", str(g.iteration), _share(g.fraction_reference),
                  _share(g.fraction_other), str(g.after_prune.n),
                  _stat_cell(g.after_prune, signed=True), _ci_cell(g.test_prune), _p_cell(g.test_prune),
                  _stat_cell(g.after_retrain, signed=True), _ci_cell(g.test_retrain), _p_cell(g.test_retrain))
                 for g in report.gaps)
    return Table(
        "Accuracy gap between criteria",
        ("gap", "iter", "remaining (ref)", "remaining (other)", "seeds", "pruned gap pp [min, max]", "pruned 95% CI",
         "pruned p", "retrained gap pp [min, max]", "retrained 95% CI", "retrained p"),
        rows,
        ("Test accuracy of the reference (the first folder) minus the other, in percentage points, "
         "per seed that completed the iteration in both, then mean [min, max] over those seeds. "
         "Positive: the reference kept more accuracy at that iteration. 95% CI: bootstrap (BCa) confidence "
         "interval of the mean gap over seeds, * where it excludes 0. p: two-sided Wilcoxon signed-rank test "
         "of the paired gaps (below 6 seeds it cannot reach p < 0.05).", *significance_sentences(report.gaps)))


def overlap_table(report: Report) -> Table | None:
    if not report.overlaps:
        return None
    rows = tuple((f"{o.first} & {o.second}", str(o.iteration), f"L{o.layer}", f"{o.removed.mean:g}",
                  _stat_cell(o.common), _pct(o.chance.mean), _stat_cell(o.cumulative), _pct(o.chance_cumulative.mean),
                  str(o.common.n))
                 for o in report.overlaps)
    return Table(
        "Neurons removed by both criteria",
        ("criteria", "iter", "layer", "removed", "common % [min, max]", "random %", "cumulative % [min, max]",
         "random cum. %", "seeds"),
        rows,
        ("common: of the neurons removed in this iteration, the share both criteria chose "
         "(|A & B| / max(|A|, |B|)), over seeds that pruned the same trained model. cumulative: the same "
         "for everything removed up to and including this iteration. random, random cum.: what two "
         "independent random choices of as many neurons would share on average.", _layer_key(report)))


def render_text(table: Table) -> str:
    """Aligned plain text: the first column left-aligned, the others right-aligned."""
    body = tabulate(table.rows, headers=table.headers, tablefmt="simple", disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(table.headers) - 1))
    notes = [textwrap.fill(note, NOTE_WIDTH) for note in table.notes]
    return "\n".join([table.title, "=" * len(table.title), body, *notes]) + "\n"


def render_markdown(table: Table) -> str:
    escaped = [[cell.replace("|", "\\|") for cell in row] for row in table.rows]
    body = tabulate(escaped, headers=table.headers, tablefmt="pipe", disable_numparse=True,
                    colalign=("left",) + ("right",) * (len(table.headers) - 1))
    notes = "".join(f"\n{note}\n" for note in table.notes)
    return f"## {table.title}\n\n{body}\n{notes}"


def tables(report: Report) -> list[Table]:
    return [t for t in (paper_table(report), iteration_table(report), gap_table(report), overlap_table(report))
            if t is not None]


def input_lines(report: Report) -> list[str]:
    lines = []
    for exp in report.experiments:
        lines.append(f"{exp.label}: {exp.directory} (experiment {exp.name}, criterion {exp.criterion}, run {exp.run})")
        lines += [f"  {note}" for note in exp.notes]
    return lines + list(report.notes)


def report_text(report: Report) -> str:
    """Everything the command prints: inputs, seed status, then the tables."""
    return "\n".join(["\n".join(input_lines(report)) + "\n", *(render_text(t) for t in tables(report))])


def report_markdown(report: Report, figures: Sequence[Path]) -> str:
    title = " vs ".join(exp.label for exp in report.experiments)
    inputs = "\n".join(f"- {line.strip()}" if not line.startswith("  ") else f"  - {line.strip()}"
                       for line in input_lines(report))
    shown = {}  # one file per figure: an image markdown can show (png, svg) before a pdf
    for path in sorted(figures, key=lambda f: f.suffix == ".pdf"):
        shown.setdefault(path.stem, path)
    images = "".join(f"{'' if path.suffix == '.pdf' else '!'}[{path.stem}]({path.name})\n\n" for path in shown.values())
    return "\n".join([f"# Pruning report: {title}\n", inputs + "\n", *(render_markdown(t) for t in tables(report)),
                      "## Figures\n", images.rstrip() + "\n"])


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _stat_columns(prefix: str, stat: Stat | None) -> dict[str, Any]:
    return {f"{prefix}_{k}": None if stat is None else getattr(stat, k) for k in ("mean", "min", "max", "n")}


def iteration_csv(report: Report) -> str:
    """Fractions, not percent; one row per criterion and iteration."""
    layers = sorted(report.layers)
    rows = []
    for row in report.rows:
        out: dict[str, Any] = {"criterion": row.label, "iteration": row.iteration, "seeds": len(row.seeds),
                               "fraction_remaining": row.fraction.mean}
        for i in layers:
            out[f"L{i}_remaining"] = row.remaining[i].mean if i in row.remaining else None
            out[f"L{i}_fraction"] = row.layer_fraction[i].mean if i in row.layer_fraction else None
        out |= _stat_columns("test_acc_pruned", row.after_prune) | _stat_columns("test_acc_retrained", row.after_retrain)
        out["min_cka"] = row.min_cka
        out |= {f"L{i}_cka_mean": row.cka[i].mean if i in row.cka else None for i in layers}
        rows.append(out)
    return _csv(rows)


def _test_columns(prefix: str, test: PairedTest | None) -> dict[str, Any]:
    return {f"{prefix}_ci_low": None if test is None else test.low, f"{prefix}_ci_high": None if test is None else test.high,
            f"{prefix}_wilcoxon_p": None if test is None else test.p}


def gap_csv(report: Report) -> str:
    """Gaps as fractions; ``*_ci_low``/``*_ci_high``: the 95 % bootstrap CI of the mean gap; ``*_wilcoxon_p``."""
    return _csv([{"reference": g.reference, "other": g.other, "iteration": g.iteration,
                  "fraction_remaining_reference": g.fraction_reference, "fraction_remaining_other": g.fraction_other}
                 | _stat_columns("gap_pruned", g.after_prune) | _test_columns("gap_pruned", g.test_prune)
                 | _stat_columns("gap_retrained", g.after_retrain) | _test_columns("gap_retrained", g.test_retrain)
                 for g in report.gaps])


def layer_records(report: Report) -> list[dict[str, Any]]:
    """Long format: one record per seed, criterion, iteration (0: the trained model) and pruned layer.

    ``fraction_remaining_layer`` = alive_after / width; ``fraction_remaining`` = alive neurons
    over the width of all pruned layers after the iteration. ``min_cka``/``last_cka``: the
    smallest and the last CKA(layer output at the start of the iteration, after a removal) of the
    layer's removals in the iteration (empty when it removed nothing). Accuracies after the
    iteration's pruning and its retraining (empty when retraining is off); at iteration 0 both
    are the trained model's.
    """
    records = []
    for exp in report.experiments:
        for seed in exp.seeds:
            total = sum(layer.width for layer in seed.layers)
            for number in [0, *(it.iteration for it in seed.iterations)]:
                it = seed.iteration(number)
                alive = seed.alive(number)
                after_prune = seed.baseline if it is None else it.after_prune
                after_retrain = seed.baseline if it is None else it.after_retrain
                for layer in seed.layers:
                    step = None if it is None else it.step(layer.index)
                    records.append({
                        "seed": seed.seed, "criterion": exp.criterion, "label": exp.label, "experiment": exp.name,
                        "run": seed.run.config_digest, "iteration": number, "layer": layer.index,
                        "width": layer.width,
                        "alive_before": alive[layer.index] if step is None else step.alive_before,
                        "alive_after": alive[layer.index],
                        "fraction_remaining_layer": alive[layer.index] / layer.width,
                        "fraction_remaining": sum(alive.values()) / total,
                        "min_cka": min(step.cka) if step is not None and step.cka else None,
                        "last_cka": step.cka[-1] if step is not None and step.cka else None,
                        **{f"{split}_acc_{stage}": None if metrics is None else metrics.get(f"{split}_acc")
                           for stage, metrics in (("pruned", after_prune), ("retrained", after_retrain))
                           for split in ("test", "val")},
                    })
    return records


def layers_csv(report: Report) -> str:
    return _csv(layer_records(report))


def overlap_csv(report: Report) -> str:
    return _csv([{"first": o.first, "second": o.second, "iteration": o.iteration, "layer": o.layer,
                  "removed_mean": o.removed.mean} | _stat_columns("common", o.common)
                 | _stat_columns("cumulative", o.cumulative)
                 | {"chance_mean": o.chance.mean, "chance_cumulative_mean": o.chance_cumulative.mean}
                 for o in report.overlaps])


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib is imported here only, so importing this module stays light)


def figure_style() -> dict[str, Any]:
    return {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
            "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False,
            "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.6, "lines.markersize": 4}


def label_color(label: str) -> str:
    """The colour of a run labelled ``label`` in every figure: fixed per criterion, else from the name's hash.

    A name outside :data:`CRITERION_COLORS` (an experiment name, a new criterion) gets a hue from
    its sha256, so its colour depends on the name alone, never on its position in a report.
    """
    if label in CRITERION_COLORS:
        return CRITERION_COLORS[label]
    hue = _name_hash(label) / 2**32
    red, green, blue = colorsys.hls_to_rgb(hue, 0.45, 0.7)
    return f"#{round(255 * red):02x}{round(255 * green):02x}{round(255 * blue):02x}"


# Runs of one criterion that differ otherwise (cka-next, cka-global) share its colour and are told
# apart by marker and line style, chosen from the label alone like the colour.
VARIANT_MARKERS = ("s", "^", "D", "v", "P", "X")
VARIANT_LINESTYLES = ("--", "-.", ":")


def run_style(label: str, criterion: str) -> dict[str, str]:
    """Matplotlib line keywords of a run: its criterion's colour; ``o`` and a solid line unless it is a variant."""
    if label == criterion or criterion not in CRITERION_COLORS:
        return {"color": label_color(label), "marker": "o", "linestyle": "-"}
    pick = _name_hash(label)
    return {"color": CRITERION_COLORS[criterion], "marker": VARIANT_MARKERS[pick % len(VARIANT_MARKERS)],
            "linestyle": VARIANT_LINESTYLES[pick // len(VARIANT_MARKERS) % len(VARIANT_LINESTYLES)]}


def _name_hash(label: str) -> int:
    """A 32-bit number from ``label`` alone: the same in every report and every run."""
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:4], "big")


def _styles(report: Report) -> dict[str, dict[str, str]]:
    return {exp.label: run_style(exp.label, exp.criterion) for exp in report.experiments}


def layer_title(info: LayerInfo) -> str:
    """A layer as a reader of a paper knows it: ``layer 1 (512)`` (the table's L0), never the module's name."""
    unit = " channels" if info.kind == "conv" else ""
    return f"layer {info.index + 1} ({info.width}{unit})"


def _band(ax: Any, x: Sequence[float], stats: Sequence[Stat], label: str, style: dict[str, str]) -> None:
    """Mean line with a min-max band over seeds."""
    ax.fill_between(x, [s.min for s in stats], [s.max for s in stats], color=style["color"], alpha=0.2, linewidth=0)
    ax.plot(x, [s.mean for s in stats], label=label, **style)


def _save_with_legend(fig: Any, axes: Iterable[Any], path: Path, formats: Sequence[str]) -> list[Path]:
    """One legend for all panels, below them, where it covers no data."""
    entries = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.tight_layout()
    fig.legend(entries.values(), entries.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(entries), 4), frameon=False, title="lines: mean over seeds; bands: min to max")
    return _save(fig, path, formats)


def _save(fig: Any, path: Path, formats: Sequence[str]) -> list[Path]:
    """``path`` (without suffix) in each of ``formats``, each file written atomically."""
    written = []
    for fmt in formats:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight")
        written.append(atomic_write_bytes(path.with_suffix(f".{fmt}"), buffer.getvalue()))
    return written


def _percent_decimals(span: float) -> int:
    """Enough decimals for ticks over an axis spanning ``span`` (a fraction) to differ, and no more."""
    return 0 if span >= 0.05 else 1 if span >= 0.005 else 2


def _integer_iterations(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")


def plot_accuracy(report: Report, path: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Test accuracy vs fraction of neurons remaining: after retraining (left), before (right).

    The x axis is logarithmic, so the sparse end, where criteria differ, is not squeezed
    together; both panels share it and the y range.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter, PercentFormatter

    styles = _styles(report)
    with rc_context(figure_style()):
        fig = Figure(figsize=(8, 3.4))
        axes = fig.subplots(1, 2, sharex=True, sharey=True)
        panels = (("after retraining", lambda r: r.after_retrain), ("after pruning, before retraining", lambda r: r.after_prune))
        for ax, (title, stat_of) in zip(axes, panels):
            for exp in report.experiments:
                rows = [r for r in report.rows if r.label == exp.label and stat_of(r) is not None]
                if len(rows) > 1:  # iteration 0 alone: this criterion never retrained
                    _band(ax, [r.fraction.mean for r in rows], [stat_of(r) for r in rows],
                          f"{exp.label} ({len(exp.seeds)} seed{'s' if len(exp.seeds) != 1 else ''})", styles[exp.label])
            if not ax.lines:
                ax.text(0.5, 0.5, "no retraining recorded", transform=ax.transAxes, ha="center", color="0.4")
            ax.set_title(title)
            ax.set_xlabel("neurons remaining (pruned layers, log scale)")
        axes[0].set_xscale("log")
        # 1-2-5 ticks in percent: a log axis's default ticks (powers of ten) are too few here.
        axes[0].xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes[0].xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=None))
        axes[0].xaxis.set_minor_formatter(NullFormatter())
        low, high = axes[0].get_ylim()
        axes[0].yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=_percent_decimals(high - low)))
        axes[0].set_ylabel("test accuracy")
        axes[0].invert_xaxis()  # shared: pruning proceeds left to right in both panels
        fig.suptitle("Test accuracy vs. neurons remaining")
        return _save_with_legend(fig, axes, path, formats)


def _layer_axes(fig: Any, report: Report, layers: Sequence[int]) -> dict[int, Any]:
    axes = fig.subplots(1, len(layers), sharey=True, squeeze=False)[0]
    info = report.layers
    for ax, i in zip(axes, layers):
        ax.set_title(layer_title(info[i]))
        _integer_iterations(ax)
    return dict(zip(layers, axes))


def plot_cka(report: Report, path: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Per pruned layer: CKA(before, after) of each iteration's removals; None when nothing recorded."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    layers = sorted({i for row in report.rows for i in row.cka})
    if not layers:
        return []
    styles = _styles(report)
    with rc_context(figure_style()):
        fig = Figure(figsize=(3.6 * len(layers) + 0.6, 3.2))
        axes = _layer_axes(fig, report, layers)
        for exp in report.experiments:
            for i, ax in axes.items():
                rows = [r for r in report.rows if r.label == exp.label and i in r.cka]
                if rows:
                    _band(ax, [r.iteration for r in rows], [r.cka[i] for r in rows], exp.label, styles[exp.label])
        first = axes[layers[0]]
        first.set_ylabel("CKA(before, after)")
        fig.suptitle("CKA between each layer's output before and after the iteration's removals")
        return _save_with_legend(fig, axes.values(), path, formats)


def plot_overlap(report: Report, path: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Per pruned layer: share of removed neurons the reference and each other criterion chose in common."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    if not report.overlaps:
        return []
    layers = sorted({o.layer for o in report.overlaps})
    styles = _styles(report)
    with rc_context(figure_style()):
        fig = Figure(figsize=(3.6 * len(layers) + 0.6, 3.2))
        axes = _layer_axes(fig, report, layers)
        for i, ax in axes.items():
            for second in dict.fromkeys(o.second for o in report.overlaps):
                rows = [o for o in report.overlaps if o.layer == i and o.second == second]
                if not rows:
                    continue
                x, pair = [o.iteration for o in rows], f"{rows[0].first} & {second}"
                _band(ax, x, [o.common for o in rows], pair, styles[second])
                ax.plot(x, [o.chance.mean for o in rows], color="0.45", linestyle=":",
                        label="two random choices (expected)")
            ax.set_ylim(0, 1.02)
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        first = axes[layers[0]]
        first.set_ylabel("removed in this iteration by both")
        fig.suptitle("Overlap of the neurons removed (same trained models)")
        return _save_with_legend(fig, axes.values(), path, formats)


def _heatmap_title(index: int, width: int, alive: int, last: bool) -> str:
    kept = f"{alive} of {width}" if alive != width else f"{width}"
    return f"output ({width})" if last else f"layer {index + 1} ({kept})"


def plot_heatmaps(heatmaps: Sequence[Any], path: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """One panel per run (:class:`src.heatmap.Heatmap`): rows the trained network's layers, columns the pruned one's."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    size = len(heatmaps[0].widths)
    with rc_context({**figure_style(), "axes.grid": False}):
        fig = Figure(figsize=(0.6 + (1.2 + 0.55 * size) * len(heatmaps), 1.4 + 0.55 * size), layout="constrained")
        axes = fig.subplots(1, len(heatmaps), squeeze=False)[0]
        for ax, heat in zip(axes, heatmaps):
            image = ax.imshow(heat.matrix, vmin=0, vmax=1, cmap="viridis")
            last = len(heat.widths) - 1
            ax.set_yticks(range(size), [_heatmap_title(i, w, w, i == last) for i, w in enumerate(heat.widths)])
            ax.set_xticks(range(size), [_heatmap_title(i, w, a, i == last) for i, (w, a) in
                                        enumerate(zip(heat.widths, heat.alive))], rotation=45, ha="right")
            if size <= 8:  # small enough to read every value
                for (i, j), value in np.ndenumerate(heat.matrix):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if value > 0.6 else "white")
            ax.set_title(f"{heat.label}, seed {heat.seed}: after iteration {heat.iteration}")
            ax.set_xlabel("pruned network")
        axes[0].set_ylabel("trained network")
        fig.colorbar(image, ax=list(axes), label="linear CKA", shrink=0.9)
        fig.suptitle("CKA between the layers of the trained and the pruned network")
        return _save(fig, path, formats)


# ---------------------------------------------------------------------------------------------
# Writing and the command


@dataclass(frozen=True)
class ReportPaths:
    directory: Path
    markdown: Path
    accuracy_figure: Path
    csv: tuple[Path, ...]
    figures: tuple[Path, ...]  # every figure file: accuracy first, then cka / overlap when there is data, each in every format


def default_out_dir(report: Report) -> Path:
    """``<dir>/report`` for one folder; ``output/report/<a>_vs_<b>...`` (experiment names, '/' -> '-') for several."""
    if len(report.experiments) == 1:
        return report.experiments[0].directory / "report"
    return DEFAULT_OUTPUT_ROOT / "report" / "_vs_".join(exp.name.replace("/", "-") for exp in report.experiments)


def parse_formats(text: str) -> tuple[str, ...]:
    """``png,pdf`` -> ("png", "pdf"); UserError naming the option for anything else."""
    formats = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",")))
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown or not formats:
        raise UserError(f"--format: {', '.join(map(repr, unknown)) or repr(text)} is not a figure format; "
                        f"give one or more of {', '.join(FIGURE_FORMATS)}, separated by commas")
    return formats


def write_outputs(report: Report, out_dir: Path, formats: Sequence[str] = ("png",),
                  extra_figures: Sequence[Path] = ()) -> ReportPaths:
    """Write report.md, the CSV tables and the figures (each in every format) into ``out_dir``, each file atomically.

    ``extra_figures``: figures already written there (the CKA heatmap), listed in report.md too.
    """
    accuracy = plot_accuracy(report, out_dir / "accuracy", formats)
    figures = [*accuracy, *plot_cka(report, out_dir / "cka", formats), *plot_overlap(report, out_dir / "overlap", formats),
               *extra_figures]
    csvs = [atomic_write_text(out_dir / "iterations.csv", iteration_csv(report)),
            atomic_write_text(out_dir / "layers.csv", layers_csv(report))]
    if report.gaps:
        csvs.append(atomic_write_text(out_dir / "gap.csv", gap_csv(report)))
    if report.overlaps:
        csvs.append(atomic_write_text(out_dir / "overlap.csv", overlap_csv(report)))
    markdown = atomic_write_text(out_dir / "report.md", report_markdown(report, figures))
    return ReportPaths(out_dir, markdown, accuracy[0], tuple(csvs), tuple(figures))


def heatmap_figure(report: Report, seed: int, samples: int, config_root: Path, out_dir: Path,
                   formats: Sequence[str]) -> list[Path]:
    """``cka_heatmap_seed<S>``: every run's trained vs final pruned network of ``seed`` (:mod:`src.heatmap`).

    The models are built from each experiment's ``<config_root>/<experiment>.json`` and fed the
    first ``samples`` validation samples of its dataset.
    """
    from src.heatmap import seed_heatmap  # torch: only when a heatmap is asked for
    from src.train import load_experiment_data, select_device

    if samples < 2:
        raise UserError(f"--heatmap-samples {samples}: CKA needs at least 2 samples")
    device = select_device()
    heatmaps = []
    for exp in report.experiments:
        path = config_root / f"{exp.name}.json"
        if not path.is_file():
            raise UserError(f"{path}: not found; --heatmap builds {exp.directory}'s models from its config "
                            "(give the folder that holds it with --config-root)")
        result = next((s for s in exp.seeds if s.seed == seed), None)
        if result is None:
            raise UserError(f"--heatmap {seed}: {exp.directory} has no result for seed {seed}")
        cfg = load_config(path)
        val = load_experiment_data(cfg, device).val
        heatmaps.append(seed_heatmap(cfg, result, exp.directory, exp.label, val, samples, device))
    return plot_heatmaps(heatmaps, out_dir / f"cka_heatmap_seed{seed}", formats)


def write_report(result_dirs: Sequence[Path], out_dir: Path | None = None,
                 config_root: Path | None = DEFAULT_CONFIG_ROOT) -> ReportPaths:
    """Load ``result_dirs``, aggregate, and write the report (``out_dir`` None: see default_out_dir)."""
    report = build_report(result_dirs, config_root)
    return write_outputs(report, out_dir if out_dir is not None else default_out_dir(report))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m src.report",
        description="Tables and figures comparing pruning runs (mean, min, max over seeds).")
    parser.add_argument("result_dirs", nargs="+", type=Path, metavar="RESULT_DIR",
                        help="output/<experiment>/ folders from main_prune.py; the first is the reference for gaps")
    parser.add_argument("--out", type=Path,
                        help="where to write (default: RESULT_DIR/report for one folder, "
                             "output/report/<a>_vs_<b> for several)")
    parser.add_argument("--config-root", type=Path, default=DEFAULT_CONFIG_ROOT,
                        help="where to find <experiment>.json for the list of planned seeds (default: config/)")
    parser.add_argument("--format", default="png", metavar="FORMATS",
                        help="figure formats, comma-separated: png, pdf, svg (default: png)")
    parser.add_argument("--heatmap", type=int, metavar="SEED",
                        help="also draw the CKA between every layer of SEED's trained network and of its final "
                             "pruned network, for each folder (needs the models and config/<experiment>.json)")
    parser.add_argument("--heatmap-samples", type=int, default=1000, metavar="N",
                        help="the heatmap's samples: the first N of the validation split (default: 1000)")
    args = parser.parse_args(argv)
    formats = parse_formats(args.format)
    report = build_report(args.result_dirs, args.config_root)
    out_dir = args.out if args.out is not None else default_out_dir(report)
    extra = ([] if args.heatmap is None else
             heatmap_figure(report, args.heatmap, args.heatmap_samples, args.config_root, out_dir, formats))
    paths = write_outputs(report, out_dir, formats, extra)
    print(report_text(report))
    print(f"report: {paths.markdown}")
    print(f"figure: {paths.accuracy_figure}")
    return 0


if __name__ == "__main__":
    run(main)
