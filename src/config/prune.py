"""The reader of the ``prune`` section: its parameters (retraining and its budget, compensation,
the sparsity sweep) and the checks that the combination has a defined meaning and fits the model
(its layers, or Torch-Pruning's groups for a zoo model)."""

from __future__ import annotations

import json
from dataclasses import replace

from src.config.options import (ACTIVATION_CRITERIA, ALLOCATIONS, COMPENSATIONS, CRITERIA, DEPTH_STRATEGY, ENGINES,
                                GREEDY_VARIANTS, HOOKS, KERNELS, REFIT_CRITERIA, RETRAIN_MODES, REWIND_EPOCHS,
                                STRATEGIES, TARGETS, TP_CRITERIA, ZOO_TYPES)
from src.config.reader import in_open_unit, int_list, is_int, is_number, positive_int, Section
from src.config.schema import ModelConfig, PruneConfig, PruneParams, TrainParams


def _read_retrain(p: Section, d: PruneParams, training_epochs: int) -> tuple[str | None, int | None]:
    """``retrain`` and ``rewind_epoch`` (defaults ``d``); JSON true is "finetune" (the meaning it had as a
    bool), false is None."""
    value = p.get("retrain", d.retrain, lambda v: isinstance(v, bool) or v in RETRAIN_MODES,
                  'must be "finetune", "rewind" or false (true means "finetune")')
    mode = "finetune" if value is True else None if value is False else value
    last = min(REWIND_EPOCHS, training_epochs)
    epoch = p.get("rewind_epoch", d.rewind_epoch, lambda v: is_int(v) and 0 <= v <= last,
                  f"must be an integer in [0, {last}]: 0 is the initialisation, k the weights after epoch k; "
                  f"training keeps epochs up to min({REWIND_EPOCHS}, params.epochs)")
    if mode == "rewind" and epoch is None:
        p.fail(p.key("rewind_epoch"), 'is required with retrain "rewind"')
    if mode != "rewind" and epoch is not None:
        p.fail(p.key("rewind_epoch"), f'applies to retrain "rewind" only, got retrain {json.dumps(value)}')
    return mode, epoch


def _read_prune(s: Section, model: ModelConfig, training: TrainParams) -> PruneConfig:
    strategy = s.choice("strategy", PruneConfig.strategy, STRATEGIES)
    if model.type == "decoder":  # its width path traces image-shaped float inputs; a byte model takes int tokens
        s.fail(s.key("strategy"), f'"{strategy}" is not supported for a decoder: prune it with "{DEPTH_STRATEGY}"')
    p = s.section("params")
    given = set(p.values)
    d = PruneParams.defaults_for(model)  # the one place a default lives
    retrain, rewind_epoch = _read_retrain(p, d, training.epochs)
    params = PruneParams(
        type=p.choice("type", d.type, CRITERIA + ACTIVATION_CRITERIA + REFIT_CRITERIA + TP_CRITERIA),
        iterations=p.get("iterations", d.iterations, positive_int, "must be an integer >= 1"),
        rate=p.get("rate", d.rate, in_open_unit, "must be a number in (0, 1)"),
        stop_cka=p.get("stop_cka", d.stop_cka, lambda v: is_number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
        engine=p.choice("engine", d.engine, ENGINES),
        kernel=p.choice("kernel", d.kernel, KERNELS),
        debiased=p.get("debiased", d.debiased, lambda v: isinstance(v, bool), "must be true or false"),
        samples=p.get("samples", d.samples, lambda v: v is None or v == "all" or positive_int(v), 'must be a positive integer, "all" or null'),
        hook=p.choice("hook", d.hook, HOOKS),
        retrain=retrain,
        rewind_epoch=rewind_epoch,
        shrink=p.get("shrink", d.shrink, lambda v: isinstance(v, bool), "must be true or false"),
        evaluate_train=p.get("evaluate_train", d.evaluate_train, lambda v: isinstance(v, bool), "must be true or false"),
        greedy=p.choice("greedy", d.greedy, GREEDY_VARIANTS),
        target=p.choice("target", d.target, TARGETS),
        allocation=p.choice("allocation", d.allocation, ALLOCATIONS),
    )
    params = _read_budget(p, params, d, model, training)
    params = _read_compensation(p, params, d, strategy, given, model)
    if params.rates is not None:
        if "iterations" in given:
            p.fail(p.key("iterations"), "does not apply with rates (one iteration per rate)")
        params = replace(params, iterations=len(params.rates))
    if params.shrink and model.type == "cnn" and model.padding == "same":
        p.fail(p.key("shrink"), 'needs model.padding "valid": with zero padding the smaller network is not exact')
    _check_prune_fits_model(s, p, params, model)
    if sum(value is not None for value in (params.rate, params.stop_cka, params.rates)) != 1:
        p.fail(p.path, "needs exactly one of rate, rates and stop_cka")
    if strategy == "one_shot" and params.rates is None and params.iterations != 1:
        p.fail(p.key("iterations"), "must be 1 for the one_shot strategy", params.iterations)
    _check_method(p, params)
    p.done()
    default_modules = list(range(model.num_prunable))
    modules = s.get("modules", default_modules, lambda v: int_list(v, 0) and len(v) > 0, "must be a non-empty list of layer indices")
    for index in modules:
        if index >= model.num_prunable:
            s.fail(s.key("modules"), f"has layer {index}, but the model has {model.num_prunable} prunable layers (0..{model.num_prunable - 1})")
    if len(set(modules)) != len(modules):
        s.fail(s.key("modules"), "must not repeat a layer", modules)
    if params.target in ("next", "refit") or params.type in REFIT_CRITERIA:
        key, what = ("type", params.type) if params.type in REFIT_CRITERIA else ("target", f'"{params.target}"')
        for index in modules:
            if not _feeds_linear(model, index):
                p.fail(p.key(key), f"{what} needs a Linear layer fed by each pruned layer's output; layer {index} has none")
    if params.target == "next":
        for index in modules:
            if params.engine == "fast" and _is_conv(model, index):
                p.fail(p.key("target"), f'"next" on conv layer {index} needs engine "reference" (the fast engine scores one column per neuron)')
    s.done()
    return PruneConfig(strategy=strategy, params=params, modules=tuple(sorted(modules)))


def _read_budget(p: Section, params: PruneParams, d: PruneParams, model: ModelConfig,
                 training: TrainParams) -> PruneParams:
    """``params`` with the retraining budget's keys: retrain_epochs, retrain_lr, retrain_dropout,
    recalibrate_bn (defaults ``d``). A rate or dropout equal to the training's is stored as None
    (the same run)."""
    epochs = p.get("retrain_epochs", d.retrain_epochs, lambda v: is_int(v) and v >= 0, "must be an integer >= 0 (0: no retraining)")
    if epochs is not None and params.retrain is None:
        p.fail(p.key("retrain_epochs"), "needs retraining, but retrain is false")
    if epochs == 0 and params.retrain == "rewind":
        p.fail(p.key("retrain_epochs"), 'must be >= 1 with retrain "rewind" (0 means no retraining)')
    if epochs and epochs <= training.warmup_epochs:
        p.fail(p.key("retrain_epochs"), f"must be > params.warmup_epochs ({training.warmup_epochs}): "
                                        f"retraining runs the params recipe's schedule", epochs)
    retrains = replace(params, retrain_epochs=epochs).retrains
    lr = p.get("retrain_lr", d.retrain_lr, lambda v: is_number(v) and v > 0, "must be a positive number")
    dropout = p.get("retrain_dropout", d.retrain_dropout, lambda v: is_number(v) and 0 <= v < 1, "must be a number in [0, 1)")
    for key, value in (("retrain_lr", lr), ("retrain_dropout", dropout)):
        if value is not None and not retrains:
            p.fail(p.key(key), "applies to retraining, but there is none (retrain false or retrain_epochs 0)")
    if dropout is not None and not model.has_dropout:
        p.fail(p.key("retrain_dropout"), "needs a model with dropout (model.dropout_rate > 0 and hidden Linear layers)")
    recalibrate = p.get("recalibrate_bn", d.recalibrate_bn, lambda v: isinstance(v, bool), "must be true or false")
    if recalibrate and not model.has_batch_norm:
        p.fail(p.key("recalibrate_bn"), f"needs a model with BatchNorm; this {model.type} has none")
    return replace(params, retrain_epochs=epochs, retrain_lr=None if lr == training.lr else lr,
                   retrain_dropout=None if dropout == model.dropout_rate else dropout, recalibrate_bn=recalibrate)


def _read_compensation(p: Section, params: PruneParams, d: PruneParams, strategy: str, given: set[str],
                       model: ModelConfig) -> PruneParams:
    """``params`` with compensate, compensate_ridge and rates (a one_shot sparsity sweep; defaults
    ``d``); ``given``: the keys the config sets. (A Torch-Pruning model compensates after the whole
    pass, so with either allocation.)"""
    compensate = p.choice("compensate", d.compensate, COMPENSATIONS)
    ridge = p.get("compensate_ridge", d.compensate_ridge, lambda v: is_number(v) and v >= 0,
                  "must be a number >= 0")
    if "compensate_ridge" in given and compensate != "lstsq" and params.type not in REFIT_CRITERIA \
            and params.target != "refit":
        p.fail(p.key("compensate_ridge"), 'applies to compensate "lstsq", type "obs" and target "refit" only')
    if compensate != "none" and params.allocation != "uniform" and not model.uses_torch_pruning:
        p.fail(p.key("compensate"), 'needs allocation "uniform" (compensated layers are pruned one after another)')
    if compensate != "none" and params.retrain == "rewind":
        p.fail(p.key("compensate"), 'does not combine with retrain "rewind" (rewinding resets the refit weights)')
    rates = p.get("rates", d.rates, lambda v: isinstance(v, list) and len(v) > 0 and all(in_open_unit(r) for r in v)
                  and all(a < b for a, b in zip(v, v[1:])), "must be an increasing list of numbers in (0, 1)")
    if rates is not None and strategy != "one_shot":
        p.fail(p.key("rates"), 'applies to strategy "one_shot" only (each rate is pruned from the trained model)')
    return replace(params, compensate=compensate, compensate_ridge=float(ridge),
                   rates=None if rates is None else tuple(float(r) for r in rates))


def _check_method(p: Section, params: PruneParams) -> None:
    """Combinations of greedy, target, allocation and the rest that have no defined meaning."""
    if params.target != "layer" and params.hook != "module":
        p.fail(p.key("hook"), f'applies to target "layer" only; target "{params.target}" fixes the representation')
    if params.target == "logits" and params.engine == "fast":
        p.fail(p.key("target"), '"logits" needs engine "reference" (there is no exact fast form)')
    if params.target == "next" and params.engine == "fast" and params.debiased:
        p.fail(p.key("target"), '"next" with debiased CKA needs engine "reference"')
    if params.allocation == "global" and params.type not in TP_CRITERIA:
        if params.type != "cka":
            p.fail(p.key("allocation"), f'"global" compares CKA damage across layers; it needs type "cka", got "{params.type}"')
        if params.rate is None and params.rates is None:
            p.fail(p.key("allocation"), '"global" spends the budget of rate; it needs rate or rates, not stop_cka')
        if params.target == "logits":
            p.fail(p.key("allocation"), '"global" needs target "layer" or "next"')
    if params.greedy != "conditional" and params.type != "cka":
        p.fail(p.key("greedy"), f'applies to type "cka" only, got type "{params.type}"')
    if params.target == "refit" and (params.kernel != "linear" or params.debiased):
        p.fail(p.key("target"), '"refit" needs kernel "linear" and debiased false (its exact form is linear CKA)')
    if params.type in REFIT_CRITERIA and params.target != "layer":
        p.fail(p.key("target"), f'does not apply to type "{params.type}" (it scores the consumer\'s refit)')
    if params.type in REFIT_CRITERIA and params.allocation != "uniform":
        p.fail(p.key("allocation"), f'type "{params.type}" prunes each layer on its own; it needs "uniform"')


def _is_conv(model: ModelConfig, index: int) -> bool:
    return model.type == "cnn" and index < len(model.conv_channels)


def _feeds_linear(model: ModelConfig, index: int) -> bool:
    """Whether prunable layer ``index``'s (flattened) output is the whole input of a Linear layer."""
    if model.type == "mlp":
        return True
    return model.type == "cnn" and index >= len(model.conv_channels) - 1


def _check_prune_fits_model(s: Section, p: Section, params: PruneParams, model: ModelConfig) -> None:
    """Torch-Pruning models take cka or a tp_ criterion, by rate, on every group."""
    if not model.uses_torch_pruning:
        if params.type in TP_CRITERIA:
            p.fail(p.key("type"), f"{params.type} needs a Torch-Pruning model (model.type " + ", ".join(ZOO_TYPES) + ")")
        return
    if params.type not in ("cka",) + TP_CRITERIA:
        p.fail(p.key("type"), f"must be cka or one of {', '.join(TP_CRITERIA)} for a {model.type} model", params.type)
    if params.stop_cka is not None:
        p.fail(p.key("stop_cka"), f"does not apply to a {model.type} model (Torch-Pruning prunes by rate)")
    if params.compensate == "bias" and model.type in ("resnet", "vgg"):
        p.fail(p.key("compensate"), f'"bias" needs consumers with a bias; {model.type} convolutions have none '
                                    '(BatchNorm follows): use "lstsq"')
    if params.hook != "module":
        p.fail(p.key("hook"), f"must be module for a {model.type} model", params.hook)
    for key, value, default in (("target", params.target, "layer"), ("greedy", params.greedy, "conditional"),
                                ("shrink", params.shrink, False)):
        if value != default:
            p.fail(p.key(key), f"does not apply to a {model.type} model (Torch-Pruning removes channels physically)",
                   value)
    if "modules" in s.values:
        s.fail(s.key("modules"), f"does not apply to a {model.type} model (every group but the classifier is pruned)")
