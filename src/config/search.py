"""Readers of the ``search`` section (a W&B sweep: method, metric, the searched parameters with
W&B's distributions, hyperband early termination) and of the ``wandb`` section."""

from __future__ import annotations

import json
from dataclasses import asdict

from src.config.options import SEARCH_DISTRIBUTIONS, SEARCH_METHODS, SEARCH_METRICS, SEARCHABLE, WANDB_MODES
from src.config.reader import is_int, is_number, positive_int, Section
from src.config.schema import Hyperband, ModelConfig, SearchConfig, SearchParameter, TrainParams, WandbConfig


_DEFAULTS = {"params": asdict(TrainParams()), "model": asdict(ModelConfig())}


def _read_parameter(p: Section, name: str) -> SearchParameter:
    """One entry of ``search.parameters``, with W&B's rule for an absent ``distribution``."""
    if name not in SEARCHABLE:
        p.fail(p.key(name), "is not searchable; use one of " + ", ".join(SEARCHABLE))
    spec = p.section(name)
    given = spec.values
    if "distribution" in given:
        distribution = spec.choice("distribution", "", SEARCH_DISTRIBUTIONS)
    elif "values" in given:
        distribution = "categorical"
    elif "value" in given:
        distribution = "constant"
    elif "min" in given and "max" in given:
        distribution = "int_uniform" if is_int(given["min"]) and is_int(given["max"]) else "uniform"
    else:
        spec.fail(spec.path, "needs values, value, or min and max")
    if distribution == "constant":
        if "value" not in given:
            spec.fail(spec.key("value"), "is required for distribution constant")
        param = SearchParameter(name, distribution, values=(spec.values.pop("value"),))
    elif distribution == "categorical":
        values = spec.get("values", None, lambda v: isinstance(v, list) and len(v) > 0, "must be a non-empty list")
        if values is None:
            spec.fail(spec.key("values"), "is required for distribution categorical")
        if len({json.dumps(v) for v in values}) != len(values):
            spec.fail(spec.key("values"), "must not repeat a value", values)
        param = SearchParameter(name, distribution, values=tuple(values))
    else:
        check = is_int if distribution == "int_uniform" else is_number
        what = "must be an integer" if distribution == "int_uniform" else "must be a number"
        bounds = [spec.get(key, None, check, what) for key in ("min", "max")]
        if None in bounds:
            spec.fail(spec.key("min" if bounds[0] is None else "max"), f"is required for distribution {distribution}")
        low, high = bounds
        if not low < high:
            spec.fail(spec.path, f"needs min < max, got min {low} and max {high}")
        if distribution == "log_uniform_values" and low <= 0:
            spec.fail(spec.key("min"), "must be > 0 for log_uniform_values", low)
        q = spec.get("q", None, lambda v: is_number(v) and v > 0, "must be a positive number")
        if distribution == "q_uniform" and q is None:
            q = 1.0
        elif distribution != "q_uniform" and q is not None:
            spec.fail(spec.key("q"), "applies to distribution q_uniform only")
        param = SearchParameter(name, distribution, min=low, max=high, q=q)
        section, key = SEARCHABLE[name]
        if distribution != "int_uniform" and is_int(_DEFAULTS[section][key]):
            spec.fail(spec.key("distribution"), f"{distribution} draws fractions, but {name} is an integer "
                                                f"(use int_uniform or values)")
    spec.done()
    return param


def _read_hyperband(s: Section) -> Hyperband:
    s.choice("type", "", ("hyperband",))
    cfg = Hyperband(
        min_iter=s.get("min_iter", None, positive_int, "must be a positive integer"),
        max_iter=s.get("max_iter", None, positive_int, "must be a positive integer"),
        eta=s.get("eta", 3, lambda v: is_int(v) and v >= 2, "must be an integer >= 2"),
    )
    if cfg.min_iter is None and cfg.max_iter is None:
        s.fail(s.path, "needs min_iter or max_iter")
    s.done()
    return cfg


def _read_search(s: Section) -> SearchConfig:
    d = SearchConfig()
    method = s.choice("method", d.method, SEARCH_METHODS)
    metric = s.section("metric")
    metric_name = metric.choice("name", d.metric, SEARCH_METRICS)
    goal = metric.choice("goal", "maximize" if metric_name == "val_acc" else "minimize", ("minimize", "maximize"))
    metric.done()
    parameters = d.parameters
    if "parameters" in s.values:
        p = s.section("parameters")
        parameters = tuple(_read_parameter(p, name) for name in list(p.values))
        if not parameters:
            p.fail(p.path, "must name at least one parameter")
        for param in parameters:
            if method == "grid" and param.distribution not in ("constant", "categorical"):
                p.fail(p.key(param.name), f"has distribution {param.distribution}, but method grid needs "
                                          f"values or value (use method random or bayes)")
    early = _read_hyperband(s.section("early_terminate")) if "early_terminate" in s.values else None
    cfg = SearchConfig(
        method=method,
        metric=metric_name,
        goal=goal,
        parameters=parameters,
        early_terminate=early,
        run_cap=s.get("run_cap", d.run_cap, positive_int, "must be a positive integer"),
        seed=s.get("seed", d.seed, is_int, "must be an integer"),
        project=s.get("project", d.project, lambda v: isinstance(v, str) and v != "", "must be a non-empty string"),
        name=s.get("name", d.name, lambda v: isinstance(v, str), "must be a string"),
        description=s.get("description", d.description, lambda v: isinstance(v, str), "must be a string"),
    )
    if method != "grid" and cfg.run_cap is None:
        s.fail(s.key("run_cap"), f"is required for method {method} (how many points to train)")
    s.done()
    return cfg


def _read_wandb(s: Section) -> WandbConfig:
    d = WandbConfig()
    cfg = WandbConfig(
        mode=s.choice("mode", d.mode, WANDB_MODES),
        project=s.get("project", d.project, lambda v: isinstance(v, str) and v != "", "must be a non-empty string"),
        entity=s.get("entity", d.entity, lambda v: v is None or isinstance(v, str), "must be a string"),
        log_model=s.get("log_model", d.log_model, lambda v: isinstance(v, bool), "must be true or false"),
    )
    s.done()
    return cfg
