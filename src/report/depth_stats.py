"""The depth study's data and tests (:mod:`src.report.depth_study` writes them): each cell's options
with their endpoint per seed, the paired tests the endpoints fixed, and the ranking quality.

A study root holds one folder per cell, each holding one result folder per option:
``<root>/<budget>-<compensation>/<criterion>/<seed>.json`` (depth records, :mod:`src.depth_results`)
and ``<root>/width-<budget>-lstsq/<criterion>/<seed>.json`` (width records, :mod:`src.results`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from src import results
from src.depth_results import DepthResult
from src.errors import UserError
from src.report.depth import load_depth_experiment, regret, spearman, true_damage
from src.report.stats import ALPHA, PairedT, Stat, holm, paired_t

REPRESENTATION_AWARE = ("cka", "cka-refit", "residual")
BASELINES = ("tail", "cosine", "angular")
MATCHED, MATCHED_UNPATCHED = 1, 2  # the width sweep's points matching the depth endpoint with and without the patch


@dataclass(frozen=True)
class Metric:
    """The endpoint: a record's metric (``key``), which way is better, and how it prints (``scale``
    times the stored value, to ``digits``; a difference in ``unit``)."""

    key: str
    label: str
    unit: str
    scale: float
    digits: int
    higher_is_better: bool

    @property
    def sign(self) -> int:
        """+1 where a higher value is better, -1 where a lower one is: ``sign * value`` orders best last."""
        return 1 if self.higher_is_better else -1

    def value(self, v: float) -> str:
        return f"{self.scale * v:.{self.digits}f}"

    def difference(self, v: float) -> str:
        return f"{self.scale * v:+.{self.digits}f}"


METRICS = {"test_acc": Metric("test_acc", "test acc %", "pp", 100.0, 2, True),
           "val_loss": Metric("val_loss", "val loss (nats)", "nats", 1.0, 4, False)}


@dataclass(frozen=True)
class Option:
    """One config of a cell: its endpoint and its MACs there, per seed."""

    cell: str
    name: str
    endpoint: dict[int, float]
    macs: dict[int, int]
    baseline_macs: dict[int, int]

    @property
    def stat(self) -> Stat | None:
        return Stat.of(list(self.endpoint.values()))

    @property
    def macs_fraction(self) -> float:
        return math.fsum(self.macs[s] / self.baseline_macs[s] for s in self.macs) / len(self.macs)


@dataclass(frozen=True)
class PairTest:
    """``a`` - ``b`` over ``seeds``; ``p_holm`` adjusted within ``family``."""

    family: str
    a: str
    b: str
    seeds: tuple[int, ...]
    test: PairedT | None
    p_holm: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


def _folders(cell_dir: Path) -> list[Path]:
    return sorted(p for p in Path(cell_dir).iterdir() if p.is_dir())


def load_depth_cell(cell_dir: Path) -> dict[str, list[DepthResult]]:
    """The cell's depth records by option (folder name), read once for every count."""
    return {folder.name: list(load_depth_experiment(folder).seeds) for folder in _folders(cell_dir)}


def load_width_cell(cell_dir: Path) -> dict[str, list[results.SeedResult]]:
    """The cell's width records by option (folder name), read once for every sweep point."""
    return {folder.name: [results.load(path) for path in results.seed_files(folder)] for folder in _folders(cell_dir)}


def _options(cell: str, records: dict[str, list], at: Callable[[Any], Any], metric: Metric) -> list[Option]:
    """One option per folder: each seed's endpoint and MACs at ``at(record)`` (a depth point or a
    width iteration; seeds where it is None left out)."""
    options = []
    for name, seeds in records.items():
        done = [(r, at(r)) for r in seeds if at(r) is not None]
        options.append(Option(cell, name, {r.seed: (p.after_retrain or p.after_prune)[metric.key] for r, p in done},
                              {r.seed: p.macs for r, p in done}, {r.seed: r.baseline_macs for r, _ in done}))
    return options


def depth_options(cell: str, records: dict[str, list[DepthResult]], count: int, metric: Metric) -> list[Option]:
    """The cell's criteria at ``count`` blocks removed, from its records by option."""
    return _options(cell, records, lambda r: r.point(count), metric)


def width_options(cell: str, records: dict[str, list[results.SeedResult]], point: int,
                  metric: Metric) -> list[Option]:
    """The cell's width options at sweep point ``point``, from its records by option."""
    return _options(cell, records, lambda s: s.iteration(point), metric)


def pair_test(family: str, a: Option, b: Option) -> PairTest:
    seeds = tuple(sorted(set(a.endpoint) & set(b.endpoint)))
    return PairTest(family, a.name, b.name, seeds, paired_t([a.endpoint[s] - b.endpoint[s] for s in seeds]))


def corrected(tests: Sequence[PairTest]) -> list[PairTest]:
    """The tests with Holm's adjustment over all of them (one family)."""
    adjusted = holm([None if t.test is None else t.test.p for t in tests])
    return [PairTest(t.family, t.a, t.b, t.seeds, t.test, p) for t, p in zip(tests, adjusted)]


def criteria_tests(cell: str, options: Sequence[Option]) -> list[PairTest]:
    """Every pair of the cell's options, in their order, Holm within the cell."""
    return corrected([pair_test(cell, a, b) for a, b in itertools.combinations(options, 2)])


def patch_tests(budget: str, none: Sequence[Option], lstsq: Sequence[Option]) -> list[PairTest]:
    """``lstsq`` - ``none`` for each criterion both cells hold, Holm over them."""
    unpatched = {o.name: o for o in none}
    return corrected([pair_test(budget, o, unpatched[o.name]) for o in lstsq if o.name in unpatched])


def best(options: Sequence[Option], metric: Metric) -> Option:
    """The option with the best mean endpoint."""
    return max((o for o in options if o.endpoint), key=lambda o: metric.sign * o.stat.mean)


@dataclass(frozen=True)
class Ranking:
    """One criterion's ranking quality over the seeds' damage tables, against the identity's or the patch's damage."""

    criterion: str
    patched: bool
    rho: tuple[float, ...]
    regret: tuple[float, ...]


def _patched(record: DepthResult) -> bool:
    return record.run.description["prune"]["params"]["compensate"] == "lstsq"


def rankings(records: Sequence[DepthResult]) -> list[Ranking]:
    """Every criterion scored in the damage tables, against both damages: the identity's with the
    scores of a table recorded without the patch, the patch's with those of one recorded with it
    (``loss`` and ``pons`` score the network as its cell compensates); a seed's one table serves
    both where it has one. The tables of a seed are of the same trained model and calibration samples."""
    tables: dict[bool, dict[int, DepthResult]] = {False: {}, True: {}}
    for r in records:
        if r.damage is not None and r.criteria_scores:
            tables[_patched(r)][r.seed] = r
    out = []
    for patched in (False, True):
        chosen = {**tables[not patched], **tables[patched]}
        scored = [chosen[s] for s in sorted(chosen)]
        for criterion in (scored[0].criteria_scores if scored else ()):
            pairs = [(r.criteria_scores[criterion], true_damage(r, patched)) for r in scored]
            out.append(Ranking(criterion, patched, tuple(spearman(s, d) for s, d in pairs),
                               tuple(regret(s, d) for s, d in pairs)))
    return out


@dataclass(frozen=True)
class Study:
    metric: Metric
    count: int
    cells: dict[str, list[Option]]                # depth cell -> its criteria at the endpoint
    secondary: dict[int, dict[str, list[Option]]]  # other counts -> cell -> criteria
    width: dict[str, dict[int, list[Option]]]      # budget -> point -> width options
    records: dict[str, list[DepthResult]]          # depth cell -> its records


def load_study(root: Path, cells: Sequence[str], count: int, secondary: Sequence[int], metric: Metric) -> Study:
    """The depth cells ``cells`` of ``root`` (``<budget>-<compensation>``) and each budget's width cell."""
    missing = [c for c in cells if not (Path(root) / c).is_dir()]
    if missing:
        raise UserError(f"{root}: no cell folder {', '.join(missing)}")
    loaded = {c: load_depth_cell(Path(root) / c) for c in cells}
    width = {}
    for budget in dict.fromkeys(c.rsplit("-", 1)[0] for c in cells):
        folder = Path(root) / f"width-{budget}-lstsq"
        if folder.is_dir():
            records = load_width_cell(folder)
            width[budget] = {p: width_options(folder.name, records, p, metric) for p in (MATCHED, MATCHED_UNPATCHED)}
    return Study(metric, count, {c: depth_options(c, loaded[c], count, metric) for c in cells},
                 {k: {c: depth_options(c, loaded[c], k, metric) for c in cells} for k in secondary},
                 width, {c: [r for seeds in loaded[c].values() for r in seeds] for c in cells})
