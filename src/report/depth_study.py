"""A depth study across its cells (``docs/depth``): the tests its endpoints fixed before the run.

A study root holds one folder per cell, each holding one result folder per option:
``<root>/<budget>-<compensation>/<criterion>/<seed>.json`` (depth records, :mod:`src.depth_results`)
and ``<root>/width-<budget>-lstsq/<criterion>/<seed>.json`` (width records, :mod:`src.results`).
The endpoint is each seed's ``--metric`` (test accuracy, or validation loss for a language model)
with ``--count`` blocks removed (after the cell's retraining where it retrains); a width option's
is its metric at sweep point 1 (the rate whose MACs match the depth endpoint with the patch) and,
secondary, point 2 (matching it without).

- **Criteria** (one family per depth cell): the paired t-test of a - b over the seeds both have,
  for every pair of the cell's criteria, Holm-corrected over the cell's pairs.
- **Patch** (one family per budget): ``lstsq`` - ``none`` per criterion, Holm over the criteria.
- **Ranking quality** (descriptive): per criterion and seed, Spearman rho between its scores on
  the trained model and the validation loss's rise with each block removed alone (as the identity
  and as its patch), and the regret of its first choice (:mod:`src.report.depth`); mean and 95 %
  t-interval over seeds.
- **Depth against width** (one test per budget, uncorrected): the depth option with the best
  mean endpoint of the ``lstsq`` cell against the width option with the best mean at point 1;
  secondary, the ``none`` cell's against point 2. Picking each side by its mean on the same seeds
  favours both; the test is read as descriptive where it is close.

Usage: ``python3 -m src.report.depth_study ROOT --count 6 --cells e0-none,e0-lstsq,e1-none,e1-lstsq
--out DIR [--metric test_acc|val_loss] [--endpoints README] [--format png]``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

from tabulate import tabulate

from src.cli import run
from src.io import atomic_write_text
from src.report.csvs import csv_text
from src.report.depth_figures import plot_accuracy_vs_macs, plot_latency
from src.report.depth_stats import (BASELINES, MATCHED, MATCHED_UNPATCHED, METRICS, REPRESENTATION_AWARE, Metric,
                                    Option, PairTest, Ranking, Study, best, criteria_tests, load_study, pair_test,
                                    patch_tests, rankings)
from src.report.figures import parse_formats
from src.report.stats import paired_interval


def _plural(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def _removed(count: int) -> str:
    return f"{_plural(count, 'block')} removed"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _summary(option: Option, metric: Metric) -> str:
    s = option.stat
    return "-" if s is None else f"{metric.value(s.mean)} ({metric.value(s.min)}-{metric.value(s.max)})"


def pair_row(t: PairTest, metric: Metric) -> list[str]:
    if t.test is None:
        return [t.a, t.b, str(len(t.seeds)), "-", "-", "-", "-", ""]
    s = t.test
    return [t.a, t.b, str(s.n), metric.difference(s.mean),
            f"{metric.difference(s.low)} to {metric.difference(s.high)}", _p(s.p), _p(t.p_holm),
            "yes" if t.significant else ""]


def test_headers(metric: Metric) -> list[str]:
    return ["a", "b", "n", f"a - b ({metric.unit})", "95 % t-interval", "p", "p Holm", "Holm p < 0.05"]


def _table(rows: list[list[str]], headers: Sequence[str]) -> str:
    return tabulate(rows, headers=list(headers), tablefmt="pipe", disable_numparse=True)


def _table_or_none(rows: list[list[str]], headers: Sequence[str]) -> list[str]:
    """The table, or no lines where it has no rows."""
    return [_table(rows, headers)] if rows else []


def _interval(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> str:
    mean = math.fsum(values) / len(values)
    ci = paired_interval(values)
    spread = "" if ci is None else f" ({scale * ci.low:.{digits}f} to {scale * ci.high:.{digits}f})"
    return f"{scale * mean:.{digits}f}{spread}"


def endpoint_rows(study: Study) -> list[dict]:
    key = study.metric.key
    rows = []
    for count, cells in ((study.count, study.cells), *study.secondary.items()):
        for cell, options in cells.items():
            rows += [{"cell": cell, "option": o.name, "blocks_removed": count, "seed": s, key: o.endpoint[s],
                      "macs": o.macs[s], "macs_fraction": o.macs[s] / o.baseline_macs[s]} for o in options
                     for s in sorted(o.endpoint)]
    for budget, points in study.width.items():
        for point, options in points.items():
            rows += [{"cell": f"width-{budget}-lstsq", "option": o.name, "blocks_removed": f"rate point {point}",
                      "seed": s, key: o.endpoint[s], "macs": o.macs[s],
                      "macs_fraction": o.macs[s] / o.baseline_macs[s]} for o in options for s in sorted(o.endpoint)]
    return rows


def pair_rows(tests: Sequence[PairTest], kind: str) -> list[dict]:
    return [{"kind": kind, "family": t.family, "a": t.a, "b": t.b, "n": len(t.seeds),
             "mean": None if t.test is None else t.test.mean, "low": None if t.test is None else t.test.low,
             "high": None if t.test is None else t.test.high, "p": None if t.test is None else t.test.p,
             "p_holm": t.p_holm, "significant": t.significant} for t in tests]


def _headline(t: PairTest) -> bool:
    """A representation-aware criterion against a baseline."""
    return bool({t.a, t.b} & set(REPRESENTATION_AWARE) and {t.a, t.b} & set(BASELINES))


def criteria_section(study: Study, tests: dict[str, list[PairTest]]) -> list[str]:
    m = study.metric
    headers = test_headers(m)
    out = [f"## Criteria at {_removed(study.count)}", "",
           f"Each cell: {m.label} with {_removed(study.count)}, mean (min-max) over seeds; the paired "
           "t-test of every pair of criteria, Holm over the cell's pairs (a pair with identical endpoints on every seed "
           "has no test and is out of the family). "
           "Headline: the representation-aware criteria against the baselines; every pair is in `tests.csv`."]
    for cell, options in study.cells.items():
        ranked = sorted(options, key=lambda o: -m.sign * o.stat.mean if o.stat else math.inf)
        tested = sum(t.test is not None and t.test.p is not None for t in tests[cell])
        counts = f"{_plural(len(options), 'criterion', 'criteria')}; Holm over {_plural(tested, 'tested pair')}."
        out += ["", f"### {cell}", "", counts, "",
                _table([[o.name, str(len(o.endpoint)), f"{o.macs_fraction:.3f}", _summary(o, m)] for o in ranked],
                       ["criterion", "seeds", "MACs left", m.label]), "",
                *_table_or_none([pair_row(t, m) for t in tests[cell] if _headline(t)], headers)]
        others = [t for t in tests[cell] if t.significant and not _headline(t)]
        if others:
            out += ["", "Other pairs with Holm p < 0.05:", "", _table([pair_row(t, m) for t in others], headers)]
    return out


def patch_section(patches: dict[str, list[PairTest]], metric: Metric) -> list[str]:
    out = ["## What the patch is worth", "",
           "`lstsq` - `none` at the endpoint, per criterion, paired over seeds, Holm over the criteria of the budget."]
    headers = ["criterion", "n", f"lstsq - none ({metric.unit})", *test_headers(metric)[4:]]
    for budget, tests in patches.items():
        out += ["", f"### {budget}", "", _table([[t.a, *pair_row(t, metric)[2:]] for t in tests], headers)]
    return out


def ranking_section(ranked: Sequence[Ranking]) -> list[str]:
    if not ranked:
        return []
    rows = [[r.criterion, "patch" if r.patched else "identity", str(len(r.rho)), _interval(r.rho),
             _interval(r.regret, digits=4)] for r in ranked]
    return ["## Ranking quality on the trained model", "",
            "Per seed: Spearman rho between each criterion's single-block scores and the rise of the validation loss "
            "with each block removed alone (as the identity, or as its least-squares patch), and the regret of its "
            "first choice (that rise for its lowest-scored block minus the smallest). Mean over seeds (95 % "
            "t-interval). Descriptive. A criterion that ranks the damage well has rho near 1; `random`'s rho is "
            "chance and `tail`'s is the damage's correlation with depth.", "",
            _table(rows, ["criterion", "damage as", "seeds", "Spearman rho", "regret (val loss)"])]


def width_section(study: Study) -> tuple[list[str], list[PairTest]]:
    m = study.metric
    out = ["## Depth against width at matched MACs", "",
           "Per budget: the depth criterion with the best mean endpoint against the width option with the best "
           "mean at the matched rate (width options at their rates' MACs); depth - width, paired over seeds. Each "
           "side is the best of its family on these seeds, so a close result is descriptive."]
    rows, tests = [], []
    for budget, points in study.width.items():
        for compensate, point in (("lstsq", MATCHED), ("none", MATCHED_UNPATCHED)):
            depth_cell = f"{budget}-{compensate}"
            if depth_cell not in study.cells or not points[point]:
                continue
            d, w = best(study.cells[depth_cell], m), best(points[point], m)
            t = pair_test(f"{budget} depth {compensate} vs width", d, w)
            tests.append(t)
            rows.append([depth_cell, d.name, f"{d.macs_fraction:.3f}", _summary(d, m), w.name,
                         f"{w.macs_fraction:.3f}", _summary(w, m), *pair_row(t, m)[2:6]])
        for point in (MATCHED, MATCHED_UNPATCHED):
            out_rows = [[f"width-{budget}-lstsq", o.name, str(point), f"{o.macs_fraction:.3f}", _summary(o, m)]
                        for o in points[point]]
            out += ["", _table(out_rows, ["cell", "width option", "rate point", "MACs left", m.label])]
    if not rows:
        return [], tests
    out += ["", _table(rows, ["depth cell", "depth", "MACs left", m.label, "width", "MACs left", m.label,
                              "n", f"depth - width ({m.unit})", "95 % t-interval", "p"])]
    return out, tests


def write_study(root: Path, cells: Sequence[str], count: int, secondary: Sequence[int], out_dir: Path,
                formats: Sequence[str] = ("png",), metric: Metric = METRICS["test_acc"],
                endpoints: Path | None = None) -> Path:
    """Every table of the study into ``out_dir``: ``report.md``, ``endpoints.csv``, ``tests.csv``,
    ``ranking.csv`` and the figures; returns the Markdown's path. ``endpoints``: the README that
    fixed them, named in the report."""
    study = load_study(root, cells, count, secondary, metric)
    tests = {cell: criteria_tests(cell, options) for cell, options in study.cells.items()}
    budgets = dict.fromkeys(c.rsplit("-", 1)[0] for c in cells)
    patches = {b: patch_tests(b, study.cells[f"{b}-none"], study.cells[f"{b}-lstsq"]) for b in budgets
               if f"{b}-none" in study.cells and f"{b}-lstsq" in study.cells}
    ranked = rankings([r for records in study.records.values() for r in records])
    width_lines, width_tests = width_section(study)
    secondary_lines = []
    for k, cells_k in study.secondary.items():
        secondary_lines += ["", f"### {_removed(k)}", "", _table(
            [[cell, o.name, f"{o.macs_fraction:.3f}", _summary(o, metric)] for cell, options in cells_k.items()
             for o in options if o.endpoint], ["cell", "criterion", "MACs left", metric.label])]
    fixed = "" if endpoints is None else f" (`{endpoints}`)"
    sections = [f"# The depth study: {_removed(count)}", "",
                "Made by `python3 -m src.report.depth_study` from the records; the endpoints were fixed before the "
                f"run{fixed}.", "",
                *criteria_section(study, tests), "", *patch_section(patches, metric), "", *ranking_section(ranked), "",
                *width_lines, "", "## Secondary, descriptive: the other counts", *secondary_lines]
    out_dir = Path(out_dir)
    markdown = atomic_write_text(out_dir / "report.md", "\n".join(sections) + "\n")
    atomic_write_text(out_dir / "endpoints.csv", csv_text(endpoint_rows(study)))
    atomic_write_text(out_dir / "tests.csv", csv_text(
        [row for cell_tests in tests.values() for row in pair_rows(cell_tests, "criteria")]
        + [row for p in patches.values() for row in pair_rows(p, "patch")] + pair_rows(width_tests, "depth vs width")))
    atomic_write_text(out_dir / "ranking.csv", csv_text(
        [{"criterion": r.criterion, "damage": "patch" if r.patched else "identity", "seed_index": i, "rho": rho,
          "regret_val_loss": g} for r in ranked for i, (rho, g) in enumerate(zip(r.rho, r.regret))]))
    width = {budget: [o for point in points.values() for o in point] for budget, points in study.width.items()}
    plot_accuracy_vs_macs(study.records, width, metric.key, out_dir / "accuracy-vs-macs", formats)
    timed = {cell: [r for r in records if r.baseline_latency_seconds and all(p.latency_seconds for p in r.points)]
             for cell, records in study.records.items()}
    latency = {cell: records for cell, records in timed.items() if records}
    if latency:
        plot_latency(latency, metric.key, out_dir / "latency", formats)
    return markdown


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m src.report.depth_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the study's records: <root>/<cell>/<criterion>/<seed>.json")
    parser.add_argument("--cells", required=True, help="the depth cells, comma-separated (<budget>-<compensation>)")
    parser.add_argument("--count", type=int, required=True, help="the endpoint: blocks removed")
    parser.add_argument("--secondary", type=_counts, default=(), help="other counts, comma-separated (descriptive)")
    parser.add_argument("--metric", choices=sorted(METRICS), default="test_acc",
                        help="the endpoint's metric (default: test_acc; val_loss for a language model)")
    parser.add_argument("--endpoints", type=Path, help="the README that fixed the endpoints, named in the report")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", default="png", metavar="FORMATS", help="figure formats, comma-separated")
    args = parser.parse_args(argv)
    path = write_study(args.root, [c for c in args.cells.split(",") if c], args.count, args.secondary, args.out,
                       parse_formats(args.format), METRICS[args.metric], args.endpoints)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    run(main)
