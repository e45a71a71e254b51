"""What W&B runs are tagged with and log under which names: pure functions of configs and records.

**One meaning per key.** ``train_loss``/``train_acc`` of an epoch row are means over the
epoch's training batches in train mode while the weights change; they are logged as
``*_running`` (:func:`running_names`), never as an accuracy of the weights. Summaries add
``best/*``, ``final/*`` and ``baseline/*`` keys (:func:`train_summary`, :func:`prune_summary`)
that are never history keys, so a summary key that is also a history key holds that key's
last logged value (W&B's default) and means what the history means.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from src.config import ExperimentConfig
from src.results import IterationRecord, SeedResult


def run_tags(cfg: ExperimentConfig, job_type: str) -> list[str]:
    """``criterion:<prune type>`` (prune runs only: training does not depend on it),
    ``dataset:<dataset>`` and ``model:<model type>``, for filtering runs in W&B."""
    criterion = [f"criterion:{cfg.require_prune().params.type}"] if job_type == "prune" else []
    return [*criterion, f"dataset:{cfg.data.dataset}", f"model:{cfg.model.type}"]


def running_names(row: Mapping[str, float]) -> dict[str, float]:
    """An epoch row of :func:`src.train.fit` with ``train_loss``/``train_acc`` named ``*_running``:
    they are means over the epoch's batches in train mode, not an evaluation of the weights."""
    return {(f"{name}_running" if name in ("train_loss", "train_acc") else name): value
            for name, value in row.items()}


def train_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """A train run's summary from the model's sidecar ``record`` (:func:`src.train.train_seed`).

    ``best/*``: the kept weights (the lowest validation loss's epoch; the last epoch without
    early stopping) evaluated in eval mode on every split, and that epoch; ``final/*``: the
    last epoch trained, as its history row logged it; ``epochs``: epochs run.
    """
    fit = record.get("fit") or {}
    summary: dict[str, Any] = {f"best/{split}_{kind}": record[f"{split}_{kind}"]
                               for split in ("train", "val", "test") for kind in ("loss", "acc")}
    if fit:
        summary.update({"best/epoch": fit["best_epoch"], "epochs": fit["epochs"]})
    if fit.get("history"):
        last = running_names(fit["history"][-1])
        summary.update({f"final/{name}": last[name] for name in
                        ("epoch", "val_loss", "val_acc", "train_loss_running", "train_acc_running")})
    return summary


def fraction_remaining(result: SeedResult, number: int | None = None) -> float:
    """Neurons (channels) alive in the pruned layers after iteration ``number`` over their widths."""
    return sum(result.alive(number).values()) / sum(layer.width for layer in result.layers)


def ended_with(record: IterationRecord) -> dict[str, float]:
    """The metrics an iteration ended with: after retraining, else after the pass."""
    return record.after_retrain if record.after_retrain is not None else record.after_prune


def _entry(metrics: Mapping[str, float], parameters: int | None, macs: int | None, **where: Any) -> dict[str, Any]:
    values = {"test_acc": metrics.get("test_acc"), "val_acc": metrics.get("val_acc"),
              "parameters": parameters, "macs": macs, **where}
    return {name: value for name, value in values.items() if value is not None}


def iteration_entry(result: SeedResult, record: IterationRecord) -> dict[str, Any]:
    """An iteration as it ended: accuracies, size, number and fraction of neurons remaining."""
    return _entry(ended_with(record), record.parameters, record.macs, iteration=record.iteration,
                  fraction_remaining=fraction_remaining(result, record.iteration))


def best_iteration(result: SeedResult) -> IterationRecord | None:
    """The iteration with the highest validation accuracy as it ended; on a tie the later (more
    pruned) one. Diverged iterations and those without a validation accuracy are not candidates."""
    ranked = [r for r in result.iterations if not r.diverged and not math.isnan(ended_with(r).get("val_acc", math.nan))]
    return max(ranked, key=lambda r: (ended_with(r)["val_acc"], r.iteration), default=None)


def prune_summary(result: SeedResult) -> dict[str, Any]:
    """A prune run's summary keys beyond the last history row.

    ``baseline/*``: the trained model before pruning; ``final/*``: the last iteration;
    ``best/*``: :func:`best_iteration`, chosen by validation accuracy so that the test set picks
    nothing. Each has ``test_acc``, ``val_acc``, ``parameters``, ``macs``; ``final`` and ``best``
    (:func:`iteration_entry`, after retraining when there is retraining) also ``iteration`` and
    ``fraction_remaining``.
    """
    entries = {"baseline": _entry(result.baseline, result.baseline_parameters, result.baseline_macs)}
    if result.iterations:
        entries["final"] = iteration_entry(result, result.iterations[-1])
    best = best_iteration(result)
    if best is not None:
        entries["best"] = iteration_entry(result, best)
    return {f"{prefix}/{name}": value for prefix, entry in entries.items() for name, value in entry.items()}


def artifact_name(experiment: str, seed: int) -> str:
    """``<experiment>-seed<S>-pruned`` in the characters W&B allows in an artifact name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{experiment}-seed{seed}-pruned")
