"""The report's figures; matplotlib is imported inside the functions only, so importing the report stays light.

One colour per criterion in every figure of every report, from the Okabe-Ito palette
(distinguishable with the common colour-vision deficiencies and in greyscale print).
"""

from __future__ import annotations

import colorsys
import hashlib
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from src.errors import UserError
from src.io import atomic_write_bytes
from src.report.build import Report
from src.report.stats import Stat
from src.results import LayerInfo

CRITERION_COLORS = {"cka": "#0072B2", "l1": "#D55E00", "l2": "#009E73", "random": "#000000",
                    "apoz": "#CC79A7", "mean_activation": "#56B4E9", "taylor": "#E69F00",
                    # obs and l2 are never compared in one study so far; obs takes l2's green.
                    "obs": "#009E73",
                    # Torch-Pruning's importances take their counterparts' colours (BN scale: l2's).
                    "tp_l1": "#D55E00", "tp_bn": "#009E73", "tp_taylor": "#E69F00", "tp_random": "#000000"}
# Variants drawn beside each other in one panel (the budget study's compute figure), and the depth
# criteria (cka_prune.depth), drawn beside cka, cka-refit and random, where no width criterion is.
LABEL_COLORS = {"cka-next": "#56B4E9", "cka-refit": "#882255",
                "tail": "#D55E00", "cosine": "#009E73", "angular": "#56B4E9", "loss": "#E69F00",
                "pons": "#CC79A7", "residual": "#999933"}
FIGURE_FORMATS = ("png", "pdf", "svg")
DPI = 150


def parse_formats(text: str) -> tuple[str, ...]:
    """``png,pdf`` -> ("png", "pdf"); UserError naming the option for anything else."""
    formats = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",")))
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown or not formats:
        raise UserError(f"--format: {', '.join(map(repr, unknown)) or repr(text)} is not a figure format; "
                        f"give one or more of {', '.join(FIGURE_FORMATS)}, separated by commas")
    return formats


def figure_style() -> dict[str, Any]:
    return {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
            "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False,
            "axes.grid": True, "grid.alpha": 0.3, "lines.linewidth": 1.6, "lines.markersize": 4,
            "svg.hashsalt": "cka-prune"}  # an SVG's element ids from a fixed salt, not a random one


def label_color(label: str) -> str:
    """The colour of a run labelled ``label`` in every figure: fixed per criterion, else from the name's hash.

    A name outside :data:`CRITERION_COLORS` (an experiment name, a new criterion) gets a hue from
    its sha256, so its colour depends on the name alone, never on its position in a report.
    """
    if label in CRITERION_COLORS or label in LABEL_COLORS:
        return CRITERION_COLORS.get(label) or LABEL_COLORS[label]
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


def save_with_legend(fig: Any, axes: Iterable[Any], path: Path, formats: Sequence[str],
                      title: str = "lines: mean over seeds; bands: min to max") -> list[Path]:
    """One legend for all panels, below them, where it covers no data."""
    entries = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.tight_layout()
    if not entries:  # nothing drawn: every seed diverged or none has an iteration yet
        return _save(fig, path, formats)
    fig.legend(entries.values(), entries.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(entries), 4), frameon=False, title=title)
    return _save(fig, path, formats)


# Without a creation date (and with fixed SVG ids) a figure made again from the same records is the same file.
UNDATED = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def _save(fig: Any, path: Path, formats: Sequence[str]) -> list[Path]:
    """``path`` (without suffix) in each of ``formats``, each file written atomically."""
    written = []
    for fmt in formats:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight", metadata=UNDATED.get(fmt))
        written.append(atomic_write_bytes(path.with_suffix(f".{fmt}"), buffer.getvalue()))
    return written


def _percent_decimals(span: float) -> int:
    """Enough decimals for ticks over an axis spanning ``span`` (a fraction) to differ, and no more."""
    return 0 if span >= 0.05 else 1 if span >= 0.005 else 2


def sweeps_only(report: Report) -> bool:
    """Whether every run of the report is a sparsity sweep: its per-iteration figures then plot against
    the sweep's rates (each point pruned the trained model at that rate), not the points' numbers."""
    seeds = [s for exp in report.experiments for s in exp.seeds]
    return bool(seeds) and all(s.sweep for s in seeds)


def _point_axis(ax: Any, sweep: bool) -> None:
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    if sweep:
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        ax.set_xlabel("sweep rate (removed from the trained model)")
        return
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
        return save_with_legend(fig, axes, path, formats)


def _layer_axes(fig: Any, report: Report, layers: Sequence[int]) -> dict[int, Any]:
    axes = fig.subplots(1, len(layers), sharey=True, squeeze=False)[0]
    info = report.layers
    for ax, i in zip(axes, layers):
        ax.set_title(layer_title(info[i]))
        _point_axis(ax, sweeps_only(report))
    return dict(zip(layers, axes))


def plot_cka(report: Report, path: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Per pruned layer: CKA(before, after) of each iteration's removals; None when nothing recorded."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    layers = sorted({i for row in report.rows for i in row.cka})
    if not layers:
        return []
    styles = _styles(report)
    sweep = sweeps_only(report)
    with rc_context(figure_style()):
        fig = Figure(figsize=(3.6 * len(layers) + 0.6, 3.2))
        axes = _layer_axes(fig, report, layers)
        for exp in report.experiments:
            for i, ax in axes.items():
                rows = [r for r in report.rows if r.label == exp.label and i in r.cka]
                if rows:
                    _band(ax, [r.rate if sweep else r.iteration for r in rows], [r.cka[i] for r in rows], exp.label, styles[exp.label])
        first = axes[layers[0]]
        first.set_ylabel("CKA(before, after)")
        fig.suptitle("CKA between each layer's output before and after the iteration's removals")
        return save_with_legend(fig, axes.values(), path, formats)


def plot_overlap(report: Report, path: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Per pruned layer: share of removed neurons the reference and each other criterion chose in common."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    if not report.overlaps:
        return []
    layers = sorted({o.layer for o in report.overlaps})
    styles = _styles(report)
    sweep = sweeps_only(report)
    with rc_context(figure_style()):
        fig = Figure(figsize=(3.6 * len(layers) + 0.6, 3.2))
        axes = _layer_axes(fig, report, layers)
        for i, ax in axes.items():
            for first, second in dict.fromkeys((o.first, o.second) for o in report.overlaps):
                # Two sweeps cut at other rates share no point (rate None): nothing to draw for them.
                rows = [o for o in report.overlaps if o.layer == i and (o.first, o.second) == (first, second)
                        and not (sweep and o.rate is None)]
                if not rows:
                    continue
                x, pair = [o.rate if sweep else o.iteration for o in rows], f"{first} & {second}"
                _band(ax, x, [o.common for o in rows], pair, styles[second])
                ax.plot(x, [o.chance.mean for o in rows], color="0.45", linestyle=":",
                        label="two random choices (expected)")
            ax.set_ylim(0, 1.02)
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        first = axes[layers[0]]
        first.set_ylabel("removed in this iteration by both")
        fig.suptitle("Overlap of the neurons removed (same trained models)")
        return save_with_legend(fig, axes.values(), path, formats)


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

