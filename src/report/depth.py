"""The report of depth-pruning runs (:mod:`src.depth_results`): one table, two CSVs, one figure.

- ``report.md``: per experiment and removal count, over seeds: the MACs left (fraction of the
  dense network's), test accuracy and validation loss after removal and after retraining (mean,
  min, max), one-thread latency at batch 1 and 64 (mean); with the damage table, per criterion
  the ranking quality on the trained model: Spearman rho between its scores and the true damage
  (the validation loss's rise with the block removed alone; patched when the run patches), and
  the regret of its first choice (the damage of the block it ranks first minus the smallest
  damage), mean over seeds. Descriptive: nothing here is a test.
- ``points.csv``: one row per seed and count; ``damage.csv``: one row per seed and block.
- ``accuracy``: test accuracy (a language model's: validation loss, which does not saturate)
  against the fraction of MACs left, each experiment a line (after removal solid, after
  retraining dashed; mean over seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from scipy import stats
from tabulate import tabulate

from src.config import TEXT_DATASETS
from src.depth_results import DepthResult, load
from src.errors import UserError
from src.io import atomic_write_text
from src.report.cli import ReportPaths
from src.report.csvs import csv_text
from src.report.figures import figure_style, label_color, save_with_legend
from src.report.stats import Stat
from src.results import seed_files


@dataclass(frozen=True)
class DepthExperiment:
    directory: Path
    name: str
    criterion: str
    seeds: tuple[DepthResult, ...]
    notes: tuple[str, ...]

    @property
    def metric(self) -> str:
        """What the figure draws: ``val_loss`` for a model of a text dataset, else ``test_acc``."""
        text = any(r.run.description["training"]["data"]["dataset"] in TEXT_DATASETS for r in self.seeds)
        return "val_loss" if text else "test_acc"


def load_depth_experiment(directory: Path) -> DepthExperiment:
    """Every readable depth record of ``directory``; an unreadable one is a note."""
    seeds, notes = [], []
    for path in seed_files(directory):
        try:
            seeds.append(load(path))
        except UserError as err:
            notes.append(str(err))
    name = seeds[0].experiment if seeds else Path(directory).name
    criterion = seeds[0].criterion if seeds else "?"
    return DepthExperiment(Path(directory), name, criterion, tuple(seeds), tuple(notes))


def spearman(scores: dict[str, float], damage: dict[str, float]) -> float:
    """Spearman's rho between a criterion's scores and the damage over the blocks both have (NaN if undefined)."""
    blocks = sorted(set(scores) & set(damage))
    if len(blocks) < 2:
        return math.nan
    rho = stats.spearmanr([scores[b] for b in blocks], [damage[b] for b in blocks]).statistic
    return float(rho)


def regret(scores: dict[str, float], damage: dict[str, float]) -> float:
    """The damage of the criterion's first choice (lowest score) minus the smallest damage."""
    first = min((b for b in scores if b in damage), key=lambda b: scores[b])
    return damage[first] - min(damage.values())


def true_damage(result: DepthResult, patched: bool) -> dict[str, float]:
    """Each block's rise of the validation loss removed alone (as its patch with ``patched``)."""
    return {d.block: (d.patched if patched else d.removed)["val_loss"] - result.baseline["val_loss"]
            for d in result.damage}


def point_rows(exp: DepthExperiment) -> list[dict]:
    rows = []
    for result in exp.seeds:
        for point in sorted(result.points, key=lambda p: p.count):
            latency = point.latency_seconds or {}
            rows.append({"experiment": exp.name, "criterion": exp.criterion, "seed": result.seed,
                         "count": point.count, "blocks": len(result.blocks), "removed": " ".join(point.removed),
                         "macs": point.macs, "macs_fraction": point.macs / result.baseline_macs,
                         "parameters": point.parameters,
                         **{f"{k}_pruned": v for k, v in point.after_prune.items()},
                         **{f"{k}_retrained": v for k, v in (point.after_retrain or {}).items()},
                         "latency_b1_seconds": latency.get("1"), "latency_b64_seconds": latency.get("64")})
    return rows


def damage_rows(exp: DepthExperiment) -> list[dict]:
    return [{"experiment": exp.name, "seed": r.seed, "block": d.block, "patch_error": d.patch_error,
             **{f"{k}_removed": v for k, v in d.removed.items()}, **{f"{k}_patched": v for k, v in d.patched.items()},
             **{f"score_{c}": scores.get(d.block) for c, scores in (r.criteria_scores or {}).items()}}
            for r in exp.seeds if r.damage is not None for d in r.damage]


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def _stat(stat: Stat | None) -> str:
    return "-" if stat is None else f"{100 * stat.mean:.2f} ({100 * stat.min:.2f}-{100 * stat.max:.2f})"


def points_table(experiments: Sequence[DepthExperiment]) -> str:
    rows = []
    for exp in experiments:
        for count in sorted({p.count for r in exp.seeds for p in r.points}):
            points = [(r, r.point(count)) for r in exp.seeds if r.point(count) is not None]
            retrained = [p.after_retrain["test_acc"] for _, p in points if p.after_retrain is not None]
            rows.append([exp.name, count, len(points), f"{_mean([p.macs / r.baseline_macs for r, p in points]):.3f}",
                         _stat(Stat.of([p.after_prune["test_acc"] for _, p in points])),
                         f"{_mean([p.after_prune['val_loss'] for _, p in points]):.4f}", _stat(Stat.of(retrained)),
                         *(_ms(_mean([(p.latency_seconds or {}).get(b) for _, p in points])) for b in ("1", "64"))])
    return tabulate(rows, headers=["experiment", "blocks removed", "seeds", "MACs left", "test acc % (min-max)",
                                   "val loss", "retrained test acc %", "ms @1", "ms @64"],
                    tablefmt="pipe", disable_numparse=True)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.3f}"


def ranking_table(experiments: Sequence[DepthExperiment], patched: dict[str, bool]) -> str | None:
    rows = []
    for exp in experiments:
        scored = [r for r in exp.seeds if r.damage is not None and r.criteria_scores]
        for criterion in (scored[0].criteria_scores if scored else {}):
            damages = [(r.criteria_scores[criterion], true_damage(r, patched[exp.name])) for r in scored]
            rows.append([exp.name, criterion, len(scored), f"{_mean([spearman(s, d) for s, d in damages]):.3f}",
                         f"{_mean([regret(s, d) for s, d in damages]):.4f}"])
    if not rows:
        return None
    return tabulate(rows, headers=["experiment", "criterion", "seeds", "Spearman rho", "regret (val loss)"],
                    tablefmt="pipe", disable_numparse=True)


METRIC_LABELS = {"test_acc": "test accuracy", "val_loss": "validation loss"}


def plot_accuracy(experiments: Sequence[DepthExperiment], path: Path, formats: Sequence[str]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(figure_style()):
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for exp in experiments:
            counts = sorted({p.count for r in exp.seeds for p in r.points})
            for retrained, style in ((False, "-"), (True, "--")):
                xy = [(_mean([r.point(k).macs / r.baseline_macs for r in exp.seeds if r.point(k)]),
                       _mean([(r.point(k).metrics(retrained) or {}).get(exp.metric) for r in exp.seeds if r.point(k)]))
                      for k in counts]
                dense = (1.0, _mean([r.baseline[exp.metric] for r in exp.seeds]))
                xy = [dense] + [(x, y) for x, y in xy if y is not None]
                if len(xy) > 1:
                    ax.plot(*zip(*xy), style, marker="o", color=label_color(exp.criterion),
                            label=f"{exp.name}{' retrained' if retrained else ''}")
        ax.set_xlabel("fraction of MACs left")
        ax.set_ylabel(" / ".join(sorted({METRIC_LABELS[exp.metric] for exp in experiments})))
        written = save_with_legend(fig, [ax], path, formats, title="mean over seeds; dashed: retrained")
        plt.close(fig)
    return written


def write_depth_report(result_dirs: Sequence[Path], out_dir: Path, formats: Sequence[str] = ("png",),
                       patched: dict[str, bool] | None = None) -> ReportPaths:
    """Load the folders, write ``report.md``, the CSVs and the figure under ``out_dir``.

    ``patched``: per experiment, whether its ranking's true damage is the patched one (default:
    as its config patched, read from the record's run description).
    """
    experiments = [load_depth_experiment(d) for d in result_dirs]
    if not any(exp.seeds for exp in experiments):
        raise UserError(f"no readable depth results in {', '.join(map(str, result_dirs))}; run main_prune.py first")
    patched = patched or {exp.name: any(r.run.description["prune"]["params"]["compensate"] == "lstsq"
                                        for r in exp.seeds) for exp in experiments}
    out_dir = Path(out_dir)
    sections = ["# Depth pruning", "", "Mean over seeds (min-max); MACs left: fraction of the dense network's.",
                "", points_table(experiments)]
    ranking = ranking_table(experiments, patched)
    if ranking is not None:
        sections += ["", "## Ranking quality on the trained model", "",
                     "Spearman rho between each criterion's scores and the validation loss's rise with the block "
                     "removed alone; regret: that rise for its first choice minus the smallest. Mean over seeds.",
                     "", ranking]
    notes = [note for exp in experiments for note in exp.notes]
    if notes:
        sections += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    markdown = atomic_write_text(out_dir / "report.md", "\n".join(sections) + "\n")
    csvs = [atomic_write_text(out_dir / "points.csv", csv_text([r for e in experiments for r in point_rows(e)]))]
    damage = [r for e in experiments for r in damage_rows(e)]
    if damage:
        csvs.append(atomic_write_text(out_dir / "damage.csv", csv_text(damage)))
    figures = plot_accuracy(experiments, out_dir / "accuracy", formats)
    return ReportPaths(directory=out_dir, markdown=markdown, accuracy_figure=figures[0], csv=tuple(csvs),
                       figures=tuple(figures))
