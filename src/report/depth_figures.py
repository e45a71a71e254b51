"""The depth study's figures (:mod:`src.report.depth_study`).

- ``accuracy-vs-macs``: one panel per depth cell; each criterion's mean metric over seeds (test
  accuracy, or validation loss for a language model) against the mean fraction of the dense
  network's MACs left, at every removal count (the dense model at 1), with the same budget's width
  options (lstsq) at their rates as open markers.
- ``latency``: per timed cell, each criterion's mean metric against its mean one-thread
  latency at batch 1 as a fraction of the dense network's, timed in the same run (the dense
  network at 1, a star), at every removal count. The ratio, not the seconds: on a shared machine
  the seconds drift between runs more than a removed block changes them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from src.depth_results import DepthResult
from src.report.depth import METRIC_LABELS
from src.report.figures import figure_style, label_color, save_with_legend

if TYPE_CHECKING:
    from src.report.depth_stats import Option


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _by_criterion(records: Sequence[DepthResult]) -> dict[str, list[DepthResult]]:
    grouped: dict[str, list[DepthResult]] = {}
    for r in records:
        grouped.setdefault(r.criterion, []).append(r)
    return grouped


def curve(records: Sequence[DepthResult], x: str, metric: str) -> list[tuple[float, float]]:
    """(mean x, mean ``metric``) at every count all ``records`` have, the dense model first;
    ``x``: ``macs`` or ``latency`` (at batch 1), each as a fraction of the dense network's."""
    def where(r: DepthResult, point) -> float:
        if x == "macs":
            return point.macs / r.baseline_macs
        return point.latency_seconds["1"] / r.baseline_latency_seconds["1"]

    counts = sorted(set.intersection(*({p.count for p in r.points} for r in records)))
    xy = [(1.0, _mean([r.baseline[metric] for r in records]))]
    for k in counts:
        points = [(r, r.point(k)) for r in records]
        xy.append((_mean([where(r, p) for r, p in points]),
                   _mean([(p.after_retrain or p.after_prune)[metric] for _, p in points])))
    return xy


def plot_accuracy_vs_macs(cells: dict[str, list[DepthResult]], width: dict[str, list[Option]], metric: str,
                          path: Path, formats: Sequence[str]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(figure_style()):
        columns = min(len(cells), 2)
        rows = math.ceil(len(cells) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(5.0 * columns, 3.6 * rows), squeeze=False)
        flat = [ax for row in axes for ax in row]
        for ax, (cell, records) in zip(flat, cells.items()):
            for criterion, group in sorted(_by_criterion(records).items()):
                ax.plot(*zip(*curve(group, "macs", metric)), "-", marker="o", markersize=3, color=label_color(criterion),
                        label=criterion)
            for option in width.get(cell.rsplit("-", 1)[0], []):
                ax.plot([option.macs_fraction], [option.stat.mean], linestyle="none", marker="s", fillstyle="none",
                        color=label_color(f"width {option.name}"), label=f"width {option.name} (lstsq)")
            ax.set_title(cell)
            ax.set_xlabel("fraction of MACs left")
            ax.set_ylabel(METRIC_LABELS[metric])
        for ax in flat[len(cells):]:
            ax.set_visible(False)
        written = save_with_legend(fig, flat[:len(cells)], path, formats, title="mean over seeds")
        plt.close(fig)
    return written


def plot_latency(cells: dict[str, list[DepthResult]], metric: str, path: Path, formats: Sequence[str]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(figure_style()):
        fig, axes = plt.subplots(1, len(cells), figsize=(5.0 * len(cells), 3.6), squeeze=False)
        for ax, (cell, records) in zip(axes[0], cells.items()):
            for criterion, group in sorted(_by_criterion(records).items()):
                (dense, *pruned) = curve(group, "latency", metric)
                ax.plot(*zip(*pruned), "-", marker="o", markersize=3, color=label_color(criterion), label=criterion)
                ax.plot(*dense, marker="*", color="black", linestyle="none", label="dense")
            ax.set_title(f"{cell}: one thread, batch 1")
            ax.set_xlabel("latency at batch 1, fraction of the dense network's")
            ax.set_ylabel(METRIC_LABELS[metric])
        written = save_with_legend(fig, list(axes[0]), path, formats, title="mean over seeds")
        plt.close(fig)
    return written
