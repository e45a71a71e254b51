"""Search points, whichever backend searches them (Optuna here in ``src.lr_search``, W&B in ``src.tracking``).

A *point* is a dict of searched values (``{"lr": 0.01}``); its model is the config with them
filled in, trained with ``search.seed``. A search's results (``output/search/<experiment>.json``)
carry the identity of everything but the searched values, so ``main_train.py``,
``main_prune.py`` and ``src.reproduce`` use the best point of a finished search only for the
same settings; they look for it under their results root (``<--output-dir>/search``). No Optuna
here: the training entry points import this module and start without it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch
from tabulate import tabulate

from src.config import SEARCHABLE, ExperimentConfig, SearchConfig, with_overrides
from src.data import Splits
from src.errors import UserError
from src.io import read_json
from src.models import build_model
from src.train import EpochCallback as EpochFn, fit, load_experiment_data, select_device

Point = dict[str, Any]
Row = dict[str, Any]  # a point's line in the results: params, status, trial and, once finished, its PointResult
SEARCH_FOLDER = "search"
DEFAULT_OUTPUT_ROOT = Path("output") / SEARCH_FOLDER
PROGRAM = "main_search.py"


def point_key(point: Point) -> str:
    return json.dumps(point, sort_keys=True)


def point_label(point: Point) -> str:
    return " ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in point.items())


def grid_points(search: SearchConfig) -> list[Point]:
    """Every combination of the parameters' values, the first parameter varying slowest."""
    names = [p.name for p in search.parameters]
    return [dict(zip(names, combo)) for combo in itertools.product(*(p.values for p in search.parameters))]


def check_points(cfg: ExperimentConfig) -> None:
    """Raise :class:`UserError` before any training if a value (or a range's end) makes an invalid config."""
    for p in cfg.search.parameters:
        ends = p.values or ((math.exp(p.min), math.exp(p.max)) if p.distribution == "log_uniform" else (p.min, p.max))
        for value in ends:
            try:
                with_overrides(cfg, {p.name: value})
            except UserError as err:
                raise UserError(f"{err} (in search.parameters.{p.name})") from None


def search_identity(cfg: ExperimentConfig) -> str:
    """A digest of everything but the searched values that determines a point's result."""
    identity = cfg.training_identity()
    for p in cfg.search.parameters:
        section, key = SEARCHABLE[p.name]
        identity[section].pop(key, None)
    identity["seed"] = cfg.search.seed
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]



class StopEarly(Exception):
    """Raised by a point's epoch callback to stop it (a pruner's ``early_terminate``); its best epoch counts."""


@dataclass(frozen=True)
class PointResult:
    """The best epoch of one point (``val_loss`` inf when diverged; ``stopped``: early-terminated)."""

    val_loss: float
    val_acc: float | None
    epochs: int
    best_epoch: int
    seconds: float
    diverged: bool
    stopped: bool = False


Trainer = Callable[[Point, EpochFn | None], PointResult]


def train_point(cfg: ExperimentConfig, point: Point, splits: Splits, device: torch.device,
                on_epoch: EpochFn | None = None) -> PointResult:
    """Train the config with ``point`` filled in, seeded with ``search.seed``; nothing is saved.

    ``on_epoch`` may raise :class:`StopEarly`; the best epoch so far counts.
    """
    point_cfg = with_overrides(cfg, point)
    torch.manual_seed(cfg.search.seed)
    model = build_model(point_cfg.model)
    history: list[dict[str, float]] = []
    started = time.perf_counter()

    def epoch(row: dict[str, float]) -> None:
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)

    try:
        fitted = fit(model, splits, point_cfg.params, seed=cfg.search.seed, device=device, on_epoch=epoch,
                     label=point_label(point))
        stopped, diverged = False, fitted.diverged
    except StopEarly:
        stopped, diverged = True, False
    best = min(history, key=lambda row: row["val_loss"], default=None)
    if diverged or best is None:
        return PointResult(math.inf, None, len(history) + 1, 0, time.perf_counter() - started, True)
    return PointResult(best["val_loss"], best["val_acc"], len(history), int(best["epoch"]),
                       time.perf_counter() - started, False, stopped)


class DataTrainer:
    """A :data:`Trainer` that loads the data on its first call (a finished search loads nothing)."""

    def __init__(self, cfg: ExperimentConfig, device_name: str | None):
        self.cfg = cfg
        self.device = select_device(device_name)

    @cached_property
    def splits(self) -> Splits:
        return load_experiment_data(self.cfg, self.device)

    def __call__(self, point: Point, on_epoch: EpochFn | None = None) -> PointResult:
        return train_point(self.cfg, point, self.splits, self.device, on_epoch)



def best_row(rows: list[Row], search: SearchConfig) -> Row | None:
    """The finished, non-diverged row with the best metric (the first of equals)."""
    sign = 1 if search.goal == "minimize" else -1
    return min((r for r in rows if r["status"] == "done"), key=lambda r: sign * r[search.metric], default=None)


def format_table(rows: list[Row], search: SearchConfig) -> str:
    """One line per point: values, val_loss, val_acc, epochs run, seconds, status; ``*`` marks the best."""
    best = best_row(rows, search)
    names = [p.name for p in search.parameters]
    table = [["*" if row is best else "", *(row["params"].get(n) for n in names),
              *(row.get(k) for k in ("val_loss", "val_acc", "epochs", "seconds")), row["status"]] for row in rows]
    text = tabulate(table, ["", *names, "val_loss", "val_acc", "epochs run", "seconds", "status"],
                    floatfmt=("", *["g"] * len(names), ".4f", ".4f", "", ".1f"), missingval="-")
    if best is None:
        return text + "\nbest: none yet"
    value = best[search.metric]
    return text + f"\nbest: {point_label(best['params'])} ({search.metric} {value:.4f}, goal {search.goal})"


def results_path(cfg: ExperimentConfig, output_root: Path, suffix: str = ".json") -> Path:
    """``output/search/<experiment>.json``; ``demo/cka`` nests as ``demo/cka.json``."""
    return Path(output_root) / f"{cfg.name}{suffix}"


def search_dir(results_root: Path) -> Path:
    """Where the entry points given a results root (``--output-dir``, default ``output/``) read a
    finished search: ``<root>/search``, the folder ``main_search.py`` writes by default."""
    return Path(results_root) / SEARCH_FOLDER


def searched_config(cfg: ExperimentConfig, use_search: bool,
                    output_root: Path = DEFAULT_OUTPUT_ROOT) -> tuple[ExperimentConfig, str]:
    """``cfg`` with the best values of a finished search of the same identity, and a line saying so.

    The experiment's own results are looked at first, then any other experiment's (``demo/l1``
    trains the models ``demo/cka`` searched for: same identity, same models).
    """
    names = [p.name for p in cfg.search.parameters]
    own = ", ".join(f"{n}={getattr(getattr(cfg, SEARCHABLE[n][0]), SEARCHABLE[n][1]):g}" for n in names)
    if not use_search:
        return cfg, f"{own} from {cfg.source} (--no-search-params)"
    for candidate in [results_path(cfg, output_root), *sorted(Path(output_root).rglob("*.json"))]:
        try:
            doc = read_json(candidate)
        except (OSError, ValueError):
            continue  # missing, or not a results file: the next one may do
        if isinstance(doc, dict) and doc.get("identity") == search_identity(cfg) and doc.get("complete") \
                and doc.get("best"):
            best = doc["best"]["params"]
            return with_overrides(cfg, best), f"{point_label(best)} from the search in {candidate}"
    return cfg, f"{own} from {cfg.source} (no finished search of these settings in {output_root})"


