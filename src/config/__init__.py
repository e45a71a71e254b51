"""Experiment configs: JSON in, typed and validated dataclasses out.

Everything a config can say is checked here, once, before any work starts. A mistake is
reported as one line naming the file and the key path, e.g.
``config/ex1/cka.json: params.lr must be a positive number, got "abc"``; the rest of the
code trusts these objects. Keys starting with ``_`` are comments and are ignored.

The package: ``options`` (the allowed values), ``schema`` (the dataclasses), ``reader`` (the
key-by-key reader and value checks), and a reader per section: ``training`` (model, data,
params), ``prune``, ``depth`` (a prune section of strategy "depth", with its dataclasses),
``search`` (search and wandb). Everything other code uses is imported from here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from src.config.options import (ACTIVATION_CRITERIA, ALLOCATIONS, BYTES, COMPENSATIONS, CORPUS_SHA256, CRITERIA,
                                DATASET_SHAPES, DATASETS, DEPTH_COMPENSATIONS, DEPTH_CRITERIA, DEPTH_STRATEGY,
                                DEPTH_TYPES, ENGINES, GREEDY_VARIANTS, HOOKS, KERNELS, MODEL_TYPES,
                                OPTIMIZERS, REFIT_CRITERIA, RESIDUAL_DEFAULTS, RESIDUAL_TYPES, RETRAIN_MODES,
                                REWIND_EPOCHS, SCHEDULES, SEARCH_DISTRIBUTIONS, SEARCH_METHODS, SEARCH_METRICS,
                                SEARCHABLE, SEED_MAX, STRATEGIES, TARGETS, TEXT_CONTEXT, TEXT_DATASETS, TP_CRITERIA,
                                VGG_DEPTHS, WANDB_MODES, ZOO_DEFAULTS, ZOO_TYPES)
from src.config.depth import DepthConfig, DepthParams, read_depth
from src.config.prune import _read_prune
from src.config.reader import Section, is_seed
from src.config.schema import (DataConfig, ExperimentConfig, Hyperband, ModelConfig, PruneConfig, PruneParams,
                               SearchConfig, SearchParameter, TrainParams, WandbConfig)
from src.config.search import _read_search, _read_wandb
from src.config.training import _read_data, _read_model, _read_params
from src.errors import UserError

__all__ = [
    "ACTIVATION_CRITERIA", "ALLOCATIONS", "BYTES", "COMPENSATIONS", "CORPUS_SHA256", "CRITERIA", "DATASET_SHAPES",
    "DATASETS", "DEPTH_COMPENSATIONS", "DEPTH_CRITERIA", "DEPTH_STRATEGY", "DEPTH_TYPES", "ENGINES",
    "GREEDY_VARIANTS", "HOOKS", "KERNELS", "MODEL_TYPES", "OPTIMIZERS", "REFIT_CRITERIA",
    "RESIDUAL_DEFAULTS", "RESIDUAL_TYPES", "RETRAIN_MODES", "REWIND_EPOCHS", "SCHEDULES", "SEARCH_DISTRIBUTIONS",
    "SEARCH_METHODS", "SEARCH_METRICS", "SEARCHABLE", "SEED_MAX", "STRATEGIES", "TARGETS", "TEXT_CONTEXT",
    "TEXT_DATASETS", "TP_CRITERIA", "VGG_DEPTHS", "WANDB_MODES", "ZOO_DEFAULTS", "ZOO_TYPES",
    "DataConfig", "DepthConfig", "DepthParams", "ExperimentConfig", "Hyperband", "ModelConfig", "PruneConfig",
    "PruneParams", "SearchConfig",
    "SearchParameter", "TrainParams", "WandbConfig",
    "is_seed", "load_config", "parse_config", "with_overrides", "write_configs",
]


def parse_config(raw: Any, source: Path) -> ExperimentConfig:
    """Validate a parsed JSON document; raise :class:`UserError` on the first problem."""
    top = Section(source, "", raw)
    data = _read_data(top.section("data"))
    model = _read_model(top.section("model"), data)
    params = _read_params(top.section("params"))
    if params.augment and data.dataset in TEXT_DATASETS:
        top.fail("params.augment", f"applies to images only, not to the text dataset {data.dataset}")
    prune = depth = None
    if "prune" in top.values:
        section = top.section("prune")
        if section.values.get("strategy") == DEPTH_STRATEGY:
            depth = read_depth(section, model, params)
        else:
            prune = _read_prune(section, model, params)
    search = _read_search(top.section("search"))
    wandb = _read_wandb(top.section("wandb"))
    seeds = top.get("seeds", [0], lambda v: isinstance(v, list) and len(v) > 0 and all(map(is_seed, v)),
                    f"must be a non-empty list of integers in [0, {SEED_MAX}]")
    if len(set(seeds)) != len(seeds):
        top.fail("seeds", "must not repeat a seed", seeds)
    top.done()
    return ExperimentConfig(
        source=source, model=model, data=data, params=params, seeds=tuple(seeds),
        prune=prune, search=search, wandb=wandb, raw=raw, depth=depth,
    )


def write_configs(configs: dict[Path, dict], root: Path) -> None:
    """Write each raw config to ``root / path`` in the committed layout: one top-level section per
    line, so that a grid's configs diff line by line. The study generators' writer. (Plain writes:
    the package stays importable on its own, as the batch scripts' config check imports it.)"""
    for path, raw in configs.items():
        lines = ",\n".join(f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in raw.items())
        (Path(root) / path).parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / path).write_text("{\n" + lines + "\n}\n")


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a JSON experiment config."""
    source = Path(path)
    try:
        text = source.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{source}: config file not found") from None
    except OSError as err:
        raise UserError(f"{source}: cannot read config file ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{source}: not a UTF-8 text file (byte {err.start} is 0x{err.object[err.start]:02x}); save it as UTF-8 JSON") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{source}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    return parse_config(raw, source)


def with_overrides(cfg: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """A copy of ``cfg`` with searchable parameters (``SEARCHABLE`` names) replaced, re-validated."""
    raw = json.loads(json.dumps(cfg.raw))
    for name, value in values.items():
        section, key = SEARCHABLE[name]
        raw.setdefault(section, {})[key] = value
    return parse_config(raw, cfg.source)
