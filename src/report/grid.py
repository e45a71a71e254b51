"""A grid study across its cells (``docs/budget``): per cell the criteria's paired tests, across cells
one summary, the decisions, and the figures that put every cell on one page.

A grid root holds one folder per cell (``e1-lstsq``: a retraining budget and a compensation),
each holding one result folder per criterion: ``<root>/<cell>/<criterion>/<seed>.json``. Within a
cell the criteria are compared as :mod:`src.report` compares folders: the paired t-test of one
endpoint fixed before the run, over every pair of criteria, Holm-corrected within the cell (one
family per cell). Across cells this module writes:

- ``grid-summary.csv``: per cell, criterion and iteration (a sweep's point): seeds, fraction of
  neurons and of parameters remaining, test accuracy (mean and its 95 % t-interval over seeds),
  the seconds spent up to it (scoring, compensation and retraining; an iterative run's add up);
- ``decisions.csv`` and ``decisions.md``: per cell, the best CKA option (a criterion labelled
  ``cka...``) against the best other criterion, by mean at the endpoint, with the paired
  difference, its t-interval and the Holm p within the cell; the family covers every pair, so
  picking the two best afterwards keeps the correction valid;
- figures: accuracy vs neurons remaining and vs parameters remaining (one panel per cell, 95 %
  t-intervals), and accuracy at ``--at`` remaining vs seconds spent, with the runs of
  ``--compare`` folders (e.g. the iterative study's) on the same axes.

Usage: ``python3 -m src.report.grid ROOT --endpoint iteration:3 [--cells e0-none,...]
[--compare DIR ...] [--at 0.1] --out DIR``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from src.cli import run
from src.errors import UserError
from src.io import atomic_write_text
from src.report.aggregate import fraction_remaining
from src.report.build import Report, ReportOptions, build_report
from src.report.csvs import csv_text
from src.report.endpoints import MEAN, Endpoint, accuracy, parse_fixed_endpoint, seed_value
from src.report.figures import FIGURE_FORMATS, figure_style, label_color, parse_formats, run_style, save_with_legend
from src.report.records import Experiment, load_experiment, with_unique_labels
from src.results import SeedResult

CKA_PREFIX = "cka"
INTERVALS = "mean over seeds, bars: 95 % t-interval"


@dataclass(frozen=True)
class Cell:
    name: str
    report: Report


@dataclass(frozen=True)
class Point:
    """One criterion at one iteration of a cell, over its seeds."""

    cell: str
    label: str         # the run's label in the cell (cka-next)
    criterion: str     # its criterion (cka): the colour; variants differ in marker and line style
    iteration: int
    n: int
    neurons: float     # mean fraction of the pruned layers' neurons remaining
    parameters: float  # mean fraction of the network's parameters remaining
    accuracy: float
    low: float
    high: float
    seconds: float


def seconds_spent(seed: SeedResult, number: int) -> float:
    """Scoring (with compensation) and retraining seconds that iteration ``number`` cost from the trained model:
    its own for a sweep point, the sum of the iterations up to it for an iterative run."""
    its = seed.iterations[:number] if seed.strategy == "iterative" else [seed.iterations[number - 1]]
    return math.fsum(it.seconds_scoring + it.seconds_retraining for it in its)


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of ``values`` (the single value twice below two values or without spread)."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if len(v) < 2 or np.all(v == v[0]):
        return mean, mean, mean
    low, high = stats.t.interval(0.95, len(v) - 1, loc=mean, scale=stats.sem(v))
    return mean, float(low), float(high)


def points(cell: str, exp: Experiment) -> list[Point]:
    out = []
    for number in exp.iteration_numbers():
        seeds = [s for s in exp.seeds if s.iteration(number) is not None and accuracy(s, number) is not None]
        if not seeds:
            continue
        acc = mean_interval([accuracy(s, number) for s in seeds])
        out.append(Point(
            cell, exp.label, exp.criterion, number, len(seeds),
            float(np.mean([fraction_remaining(s, number) for s in seeds])),
            float(np.mean([s.iteration(number).parameters / s.baseline_parameters for s in seeds
                           if s.iteration(number).parameters and s.baseline_parameters] or [math.nan])),
            *acc, float(np.mean([seconds_spent(s, number) for s in seeds]))))
    return out


def load_cells(root: Path, names: Sequence[str] | None, endpoint: Endpoint) -> list[Cell]:
    """Each cell's report over every pair of its criteria (the endpoint's family), in the order given."""
    folders = [root / name for name in names] if names else sorted(p for p in root.iterdir() if p.is_dir())
    cells = []
    for folder in folders:
        criteria = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        if not criteria:
            raise UserError(f"{folder}: no criterion folders (expected {root}/<cell>/<criterion>/<seed>.json)")
        options = ReportOptions(fixed=endpoint, all_pairs=True)
        cells.append(Cell(folder.name, build_report(criteria, config_root=None, options=options)))
    return cells


@dataclass(frozen=True)
class Decision:
    cell: str
    cka: str          # the best CKA option by mean at the endpoint
    other: str        # the best other criterion
    cka_mean: float
    other_mean: float
    n: int
    difference: float  # cka - other, paired
    low: float
    high: float
    p_holm: float | None
    family: int

    @property
    def verdict(self) -> str:
        if self.p_holm is None or self.p_holm >= 0.05:
            return "not distinguishable"
        return "CKA higher" if self.difference > 0 else "CKA lower"


def _endpoint_mean(exp: Experiment, endpoint: Endpoint, n: int) -> float:
    values = [v[0] for s in exp.seeds if (v := seed_value(s, endpoint, n)) is not None]
    return float(np.mean(values)) if values else math.nan


def decision(cell: Cell, endpoint: Endpoint) -> Decision | None:
    """The best CKA option against the best other criterion of ``cell``; None without both kinds."""
    tests = [t for t in cell.report.endpoints if t.endpoint == endpoint]
    n = max((t.iterations[0] for t in tests if t.endpoint == MEAN and t.iterations), default=0)
    means = {exp.label: _endpoint_mean(exp, endpoint, n) for exp in cell.report.experiments}
    cka = [label for label in means if label.startswith(CKA_PREFIX)]
    others = [label for label in means if not label.startswith(CKA_PREFIX)]
    if not cka or not others:
        return None
    best_cka, best_other = max(cka, key=means.get), max(others, key=means.get)
    test = next((t for t in tests if {t.reference, t.other} == {best_cka, best_other}), None)
    if test is None or test.test is None:
        return None
    sign = 1 if test.reference == best_cka else -1
    low, high = sorted((sign * test.test.low, sign * test.test.high))
    return Decision(cell.name, best_cka, best_other, means[best_cka], means[best_other], test.test.n,
                    sign * test.test.mean, low, high, test.p_holm, len(tests))


def decisions_markdown(rows: Sequence[Decision], endpoint: str) -> str:
    lines = [f"Endpoint: {endpoint}. Holm p within each cell over every pair of its criteria "
             "(family size given); paired over seeds that pruned the same trained model.", "",
             "| cell | best CKA option | best other | CKA - other (pp) | 95 % t-interval | n | Holm p (family) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for d in rows:
        p = "-" if d.p_holm is None else f"{d.p_holm:.3g}"
        lines.append(f"| {d.cell} | {d.cka} {100 * d.cka_mean:.2f} % | {d.other} {100 * d.other_mean:.2f} % | "
                     f"{100 * d.difference:+.2f} | [{100 * d.low:+.2f}, {100 * d.high:+.2f}] | {d.n} | "
                     f"{p} ({d.family}) | {d.verdict} |")
    return "\n".join(lines) + "\n"


def _panels(cells: Sequence[str]) -> tuple[list[str], list[str]]:
    """Rows and columns of the panel grid: ``<budget>-<compensation>`` names split at the last hyphen."""
    rows = list(dict.fromkeys(c.rsplit("-", 1)[0] for c in cells))
    cols = list(dict.fromkeys(c.rsplit("-", 1)[-1] for c in cells))
    return rows, cols


def plot_panels(all_points: Sequence[Point], x: str, xlabel: str, path: Path,
                formats: Sequence[str]) -> list[Path]:
    """Accuracy vs ``x`` ("neurons" or "parameters" remaining, log scale), one panel per cell, 95 % t-intervals."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure  # not pyplot: a figure nobody registers is freed when done

    cells = list(dict.fromkeys(p.cell for p in all_points))
    rows, cols = _panels(cells)
    with rc_context(figure_style()):
        fig = Figure(figsize=(3.3 * len(cols), 2.8 * len(rows)))
        axes = fig.subplots(len(rows), len(cols), sharex=True, sharey=True, squeeze=False)
        for cell in cells:
            budget, compensation = cell.rsplit("-", 1)
            ax = axes[rows.index(budget)][cols.index(compensation)]
            for label in dict.fromkeys(p.label for p in all_points):
                pts = [p for p in all_points if p.cell == cell and p.label == label]
                if not pts:
                    continue
                ax.errorbar([getattr(p, x) for p in pts], [100 * p.accuracy for p in pts],
                            yerr=[[100 * (p.accuracy - p.low) for p in pts], [100 * (p.high - p.accuracy) for p in pts]],
                            label=label, capsize=2, **run_style(label, pts[0].criterion))
            ax.set_title(f"{budget}, compensate {compensation}")
        _fraction_axis(axes.flat[0], sorted({getattr(p, x) for p in all_points}))
        fig.supxlabel(xlabel)
        fig.supylabel("test accuracy (%)")
        return save_with_legend(fig, axes.flat, path, formats, title=INTERVALS)



def _fraction_axis(ax: Any, values: Sequence[float]) -> None:
    """A log fraction axis (shared by the panels), most pruned on the right, ticks at the points' rounded values."""
    from matplotlib.ticker import FixedLocator, NullLocator, PercentFormatter

    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = sorted({round(v, 2) for v in values if v > 0})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def compute_points(experiments: Sequence[tuple[str, Experiment]],
                   at: float) -> list[tuple[str, str, str, float, float, float, float, int]]:
    """Per (group, run): its label and criterion, mean seconds spent, accuracy mean and t-interval at the first
    iteration leaving at most ``at`` of the neurons, and n."""
    endpoint = Endpoint("remaining", at)
    out = []
    for group, exp in experiments:
        values = [(v[0], seconds_spent(s, v[1])) for s in exp.seeds if (v := seed_value(s, endpoint, 0)) is not None]
        if values:
            acc = mean_interval([a for a, _ in values])
            out.append((group, exp.label, exp.criterion, float(np.mean([t for _, t in values])), *acc, len(values)))
    return out


def compare_group(folder: Path) -> str:
    """The group a compared folder is drawn as: its parent folder (``records``' parent for committed records)."""
    return folder.parent.parent.name if folder.parent.name == "records" else folder.parent.name


def compared_experiments(folders: Sequence[Path]) -> list[tuple[str, Experiment]]:
    """Each folder's experiment with its group; labels are made unique within a group only (the group
    is the marker), so a criterion keeps its colour across groups."""
    groups: dict[str, list[Path]] = {}
    for folder in folders:
        groups.setdefault(compare_group(folder), []).append(folder)
    return [(group, exp) for group, members in groups.items()
            for exp in with_unique_labels([load_experiment(folder) for folder in members])]


def plot_compute(rows: Sequence[tuple[str, str, str, float, float, float, float, int]], at: float, path: Path,
                 formats: Sequence[str]) -> list[Path]:
    """Accuracy at ``at`` remaining vs seconds spent (log x): a marker per group, a colour per run label
    (variants such as cka-next get their own, unlike in the panels, where they share their criterion's)."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    markers = "osD^v<>pPX*h"
    groups = list(dict.fromkeys(r[0] for r in rows))
    with rc_context(figure_style()):
        ax = Figure(figsize=(7.5, 4.5)).subplots()
        fig = ax.figure
        for group, label, criterion, seconds, acc, low, high, _ in rows:
            ax.errorbar([seconds], [100 * acc], yerr=[[100 * (acc - low)], [100 * (high - acc)]],
                        color=label_color(label), marker=markers[groups.index(group) % len(markers)],
                        linestyle="none", capsize=2)
        for i, group in enumerate(groups):
            ax.plot([], [], color="grey", marker=markers[i % len(markers)], linestyle="none", label=group)
        for label in dict.fromkeys(r[1] for r in rows):
            ax.plot([], [], color=label_color(label), linewidth=4, label=label)
        if min(r[3] for r in rows) > 0:  # records of a run always spent time; hand-made ones may not
            ax.set_xscale("log")
        ax.set_xlabel("seconds spent from the trained model (scoring, compensation, retraining; one CPU thread)")
        ax.set_ylabel(f"test accuracy at <= {at:.0%} of neurons left (%)")
        return save_with_legend(fig, [ax], path, formats, title=INTERVALS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m src.report.grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="<root>/<cell>/<criterion>/<seed>.json")
    parser.add_argument("--cells", help="comma-separated cell folders, in panel order (default: all, sorted)")
    parser.add_argument("--endpoint", default=MEAN, type=lambda text: parse_fixed_endpoint(text, "--endpoint"),
                        help="the cells' endpoint, fixed before the run: mean (default), iteration:K, remaining:F")
    parser.add_argument("--compare", type=Path, nargs="*", default=[], help="result folders for the compute figure")
    parser.add_argument("--at", type=float, default=0.1, help="fraction of neurons left for the compute figure [0.1]")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", default="png", help=f"comma-separated figure formats ({', '.join(FIGURE_FORMATS)})")
    args = parser.parse_args(argv)
    formats = parse_formats(args.format)
    endpoint = args.endpoint
    cells = load_cells(args.root, args.cells.split(",") if args.cells else None, endpoint)
    compared = [(cell.name, exp) for cell in cells for exp in cell.report.experiments]
    compared += compared_experiments(args.compare)
    args.out.mkdir(parents=True, exist_ok=True)
    all_points = [p for cell in cells for exp in cell.report.experiments for p in points(cell.name, exp)]
    atomic_write_text(args.out / "grid-summary.csv", csv_text([vars(p) for p in all_points]))
    rows = [d for cell in cells if (d := decision(cell, endpoint)) is not None]
    atomic_write_text(args.out / "decisions.csv", csv_text([{**vars(d), "verdict": d.verdict} for d in rows]))
    table = decisions_markdown(rows, endpoint.key)
    atomic_write_text(args.out / "decisions.md", table)
    print(table)
    plot_panels(all_points, "neurons", "fraction of the pruned layers' neurons remaining (log)",
                args.out / "accuracy-vs-neurons", formats)
    plot_panels(all_points, "parameters", "fraction of the parameters remaining (log)",
                args.out / "accuracy-vs-parameters", formats)
    plot_compute(compute_points(compared, args.at), args.at, args.out / "accuracy-vs-compute", formats)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run(main)
