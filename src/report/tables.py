"""The report's tables, as aligned text (printed) and as markdown (report.md)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tabulate import tabulate

from src.report.build import Report
from src.report.endpoints import Endpoint, EndpointTest, endpoint_sentence
from src.report.stats import ALPHA, BOOTSTRAP_MIN_SEEDS, CONFIDENCE, POWER, Interval, Stat

NOTE_WIDTH = 100  # characters per line of the notes under a printed table


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
        point = str(row.iteration) if row.rate is None else f"{row.iteration} (rate {row.rate:g})"
        rows.append((row.label, point, *cells, _share(row.fraction.mean), str(len(row.seeds)),
                     _stat_cell(row.after_prune), _stat_cell(row.after_retrain),
                     "-" if row.retrain_epochs is None else f"{row.retrain_epochs.mean:.1f}",
                     "-" if row.min_cka is None else f"{row.min_cka:.4f}"))
    return Table(
        "Test accuracy per iteration",
        ("criterion", "iter", *(f"L{i} left" for i in layers), "remaining", "seeds",
         "pruned acc % [min, max]", "retrained acc % [min, max]", "epochs", "min CKA"),
        tuple(rows),
        ("Iteration 0 is the trained model before pruning; a sweep's iteration k is its point at the rate "
         "given, pruned from the trained model. Lx left: neurons remaining in layer x "
         "(% of its width); remaining: all pruned layers together. Accuracy: test accuracy right after "
         "pruning and after retraining, mean over seeds [min, max]. epochs: retraining epochs actually run "
         "(mean over seeds). min CKA: smallest CKA between a layer's "
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


def _ci_cell(interval: Interval | None) -> str:
    """``[low, high]`` in percentage points (``BCa`` appended for a bootstrap interval); never a mark."""
    if interval is None:
        return "-"
    suffix = " BCa" if interval.method == "BCa" else ""
    return f"[{_pct(interval.low, signed=True)}, {_pct(interval.high, signed=True)}]{suffix}"


def interval_note(report: Report) -> str:
    how = (f"a BCa bootstrap interval (9,999 resamples of the seeds) where at least {BOOTSTRAP_MIN_SEEDS} seeds "
           "are paired (marked BCa), else the paired t-interval (with fewer seeds the bootstrap covers far less "
           f"than {CONFIDENCE:.0%})" if report.bootstrap else "the paired t-interval")
    return (f"{CONFIDENCE:.0%} CI: {how} of the mean gap. DESCRIPTIVE only: these intervals are not corrected "
            "across iterations or pairs and mark nothing significant; significance is judged only by the "
            "endpoint tests (see 'Endpoint tests').")


def gap_table(report: Report) -> Table | None:
    if not report.gaps:
        return None
    rows = tuple((f"{g.reference} - {g.other}", str(g.iteration), _share(g.fraction_reference),
                  _share(g.fraction_other), str(g.after_prune.n),
                  _stat_cell(g.after_prune, signed=True), _ci_cell(g.ci_prune),
                  _stat_cell(g.after_retrain, signed=True), _ci_cell(g.ci_retrain))
                 for g in report.gaps)
    return Table(
        "Accuracy gap between criteria",
        ("gap", "iter", "remaining (ref)", "remaining (other)", "seeds", "pruned gap pp [min, max]", "pruned 95% CI",
         "retrained gap pp [min, max]", "retrained 95% CI"),
        rows,
        ("Test accuracy of the reference minus the other, in percentage points, per seed that completed "
         "the iteration in both and pruned the same trained model, then mean [min, max] over those seeds. "
         "Positive: the reference kept more accuracy at that iteration.", interval_note(report)))


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _endpoint_row(t: EndpointTest) -> tuple[str, ...]:
    s = t.test
    return (f"{t.reference} - {t.other}", t.name, str(len(t.seeds)),
            "-" if s is None else _pct(s.mean, signed=True),
            "-" if s is None else f"[{_pct(s.low, signed=True)}, {_pct(s.high, signed=True)}]",
            "-" if s is None else _p(s.p), _p(t.p_holm) + ("*" if t.significant else ""),
            "-" if s is None or s.seeds_needed is None else str(s.seeds_needed))


def significance_sentences(tests: Sequence[EndpointTest]) -> list[str]:
    """One sentence per pair and endpoint, from the corrected tests only."""
    sizes = {key: sum(t.endpoint == key and t.p_holm is not None for t in tests) for key in {t.endpoint for t in tests}}
    return [endpoint_sentence(t, sizes[t.endpoint]) for t in tests]


def endpoint_words(endpoint: Endpoint) -> str:
    """What one seed's number is on ``endpoint``, in words."""
    if endpoint.kind == "mean":
        return ("the mean test accuracy over iterations 1-N (the area under the accuracy-vs-iteration curve; "
                "N: the iterations every paired seed completed)")
    if endpoint.kind == "iteration":
        return f"the test accuracy at iteration {endpoint.value:g}"
    return f"the test accuracy at the first iteration leaving at most {endpoint.value:.1%} of the neurons"


def endpoint_note(tests: Sequence[EndpointTest]) -> str:
    """Which endpoint was fixed before the run (the only one marked) and which are descriptive."""
    fixed = next(t.endpoint for t in tests if t.fixed)
    descriptive = list(dict.fromkeys(t.endpoint for t in tests if not t.fixed))
    others = ("" if not descriptive else
              f" Descriptive, not findings (no mark, whatever their p): {'; '.join(map(endpoint_words, descriptive))}.")
    return (f"One number per seed, after retraining where the run retrains, else after pruning. The endpoint fixed "
            f"before the run: {endpoint_words(fixed)}.{others} Per pair of runs, the two-sided paired t-test of "
            "reference - other over the n seeds that pruned the same trained model; Holm correction over all pairs "
            f"of this report, one family per endpoint. * : Holm p < {ALPHA} on the fixed endpoint (the only "
            f"significance mark of this report). seeds for {POWER:.0%} power: the paired seeds a two-sided t-test at "
            f"an uncorrected alpha {ALPHA} needs to detect the observed mean difference, given the observed SD of "
            "the differences.")


def endpoint_table(report: Report) -> Table | None:
    if not report.endpoints:
        return None
    return Table(
        "Endpoint tests",
        ("pair", "endpoint", "n", "mean diff pp", "95% CI pp", "p", "Holm p", f"seeds for {POWER:.0%} power"),
        tuple(_endpoint_row(t) for t in report.endpoints),
        (endpoint_note(report.endpoints), *significance_sentences(report.endpoints)))


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
    return [t for t in (paper_table(report), iteration_table(report), endpoint_table(report), gap_table(report),
                        overlap_table(report)) if t is not None]


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
