"""The report's CSV files: fractions, not percent; one row per record, for re-analysis."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from src.report.build import Report
from src.report.stats import Interval, Stat
from src.results import ConsumerFit


def csv_text(rows: list[dict[str, Any]]) -> str:
    """The rows under a header of the first row's keys; empty without rows (every seed diverged)."""
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _stat_columns(prefix: str, stat: Stat | None) -> dict[str, Any]:
    return {f"{prefix}_{k}": None if stat is None else getattr(stat, k) for k in ("mean", "min", "max", "n")}


def iteration_csv(report: Report) -> str:
    """One row per criterion and iteration."""
    layers = sorted(report.layers)
    rows = []
    for row in report.rows:
        out: dict[str, Any] = {"criterion": row.label, "iteration": row.iteration, "rate": row.rate,
                               "seeds": len(row.seeds), "fraction_remaining": row.fraction.mean}
        for i in layers:
            out[f"L{i}_remaining"] = row.remaining[i].mean if i in row.remaining else None
            out[f"L{i}_fraction"] = row.layer_fraction[i].mean if i in row.layer_fraction else None
        out |= _stat_columns("test_acc_pruned", row.after_prune) | _stat_columns("test_acc_retrained", row.after_retrain)
        out |= _stat_columns("retrain_epochs", row.retrain_epochs)
        out["min_cka"] = row.min_cka
        out |= {f"L{i}_cka_mean": row.cka[i].mean if i in row.cka else None for i in layers}
        rows.append(out)
    return csv_text(rows)


def _interval_columns(prefix: str, interval: Interval | None) -> dict[str, Any]:
    return {f"{prefix}_ci_low": None if interval is None else interval.low,
            f"{prefix}_ci_high": None if interval is None else interval.high,
            f"{prefix}_ci_method": None if interval is None else interval.method}


def gap_csv(report: Report) -> str:
    """Gaps as fractions; ``*_ci_low``/``*_ci_high``: the 95 % interval of the mean gap (``*_ci_method``: t or BCa)."""
    return csv_text([{"reference": g.reference, "other": g.other, "iteration": g.iteration,
                  "fraction_remaining_reference": g.fraction_reference, "fraction_remaining_other": g.fraction_other}
                 | _stat_columns("gap_pruned", g.after_prune) | _interval_columns("gap_pruned", g.ci_prune)
                 | _stat_columns("gap_retrained", g.after_retrain) | _interval_columns("gap_retrained", g.ci_retrain)
                 for g in report.gaps])


def endpoint_csv(report: Report) -> str:
    """One row per pair and endpoint: the paired t-test of reference - other, Holm-adjusted p, seeds for 80 % power.

    ``fixed``: the endpoint was fixed before the run; ``significant`` (Holm p < 0.05) only on it.
    """
    rows = []
    for t in report.endpoints:
        s = t.test
        rows.append({"reference": t.reference, "other": t.other, "endpoint": t.endpoint.key, "description": t.name,
                     "iterations": " ".join(map(str, t.iterations)), "n": len(t.seeds),
                     "seeds": " ".join(map(str, t.seeds)),
                     "mean_difference": None if s is None else s.mean, "sd_difference": None if s is None else s.sd,
                     "ci_low": None if s is None else s.low, "ci_high": None if s is None else s.high,
                     "p": None if s is None else s.p, "p_holm": t.p_holm, "fixed": t.fixed, "significant": t.significant,
                     "seeds_for_80pct_power": None if s is None else s.seeds_needed})
    return csv_text(rows)


def layer_records(report: Report) -> list[dict[str, Any]]:
    """Long format: one record per seed, criterion, iteration (0: the trained model) and pruned layer.

    ``fraction_remaining_layer`` = alive_after / width; ``fraction_remaining`` = alive neurons
    over the width of all pruned layers after the iteration. ``min_cka``/``last_cka``: the
    smallest and the last CKA(layer output at the start of the iteration, after a removal) of the
    layer's removals in the iteration (empty when it removed nothing). Accuracies after the
    iteration's pruning and its retraining (empty when retraining is off); at iteration 0 both
    are the trained model's. ``retrain_epochs``: epochs the iteration's retraining ran;
    ``skipped``: why the pass removed nothing from the layer; ``diverged_at``: the iteration whose
    retraining diverged (such seeds are listed here but enter no statistic). ``parameters``,
    ``macs``: the network's size after the iteration (the trained model's at 0; empty in records
    made before sizes were recorded), for comparisons at equal size, not only equal neurons.
    ``rate``: for a point of a sparsity sweep, the rate it pruned the trained model at (its counts
    and fractions are from the trained model, not from the previous point); empty otherwise.
    ``compensation_error_before``/``_after``: with ``compensate``, the relative error of the layer's
    consumer's pre-activation on the fitting samples after pruning, before and after compensation
    (:class:`src.results.ConsumerFit`; empty without it); for a Torch-Pruning group with several
    consumers, its worst one's (largest error after; a consumer left alone, NaN, is the worst).
    """
    records = []
    for exp in report.experiments:
        for seed in exp.all_seeds:
            total = sum(layer.width for layer in seed.layers)
            for number in [0, *(it.iteration for it in seed.iterations)]:
                it = seed.iteration(number)
                alive = seed.alive(number)
                after_prune = seed.baseline if it is None else it.after_prune
                after_retrain = seed.baseline if it is None else it.after_retrain
                for layer in seed.layers:
                    step = None if it is None else it.step(layer.index)
                    fit = None if step is None else max(step.fits, default=None, key=_worst)
                    records.append({
                        "seed": seed.seed, "criterion": exp.criterion, "label": exp.label, "experiment": exp.name,
                        "run": seed.run.config_digest, "iteration": number, "rate": None if it is None else it.rate,
                        "layer": layer.index,
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
                        "retrain_epochs": None if it is None or it.retrain is None else it.retrain.epochs,
                        "parameters": seed.baseline_parameters if it is None else it.parameters,
                        "macs": seed.baseline_macs if it is None else it.macs,
                        "skipped": None if step is None else step.skipped,
                        "compensation_error_before": None if fit is None else fit.error_before,
                        "compensation_error_after": None if fit is None else fit.error_after,
                        "diverged_at": seed.diverged_at,
                    })
    return records


def _worst(fit: ConsumerFit) -> tuple[bool, float]:
    return math.isnan(fit.error_after), fit.error_after


def layers_csv(report: Report) -> str:
    return csv_text(layer_records(report))


def overlap_csv(report: Report) -> str:
    return csv_text([{"first": o.first, "second": o.second, "iteration": o.iteration, "layer": o.layer,
                  "removed_mean": o.removed.mean} | _stat_columns("common", o.common)
                 | _stat_columns("cumulative", o.cumulative)
                 | {"chance_mean": o.chance.mean, "chance_cumulative_mean": o.chance_cumulative.mean}
                 for o in report.overlaps])
