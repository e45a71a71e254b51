"""Readers of the sections that determine trained weights: ``model`` (the mlp and cnn, or a zoo
model with its depth, width and input shape, or a residual model with its sizes), ``data`` and
``params`` (the training recipe)."""

from __future__ import annotations

import json
from dataclasses import asdict

from src.config.options import (BYTES, DATASET_SHAPES, DATASETS, MODEL_TYPES, OPTIMIZERS, RESIDUAL_DEFAULTS,
                                RESIDUAL_TYPES, SCHEDULES, SEED_MAX, TEXT_CONTEXT, TEXT_DATASETS, VGG_DEPTHS,
                                ZOO_DEFAULTS, ZOO_TYPES)
from src.config.reader import int_list, is_int, is_number, positive_int, Section, is_seed
from src.config.schema import DataConfig, ModelConfig, TrainParams


_ZOO_KEYS = ("depth", "width", "input_shape", "output_size")
# The keys each residual model takes: its size keys, and the image shape and classes (not the decoder's).
_RESIDUAL_KEYS = {t: ("depth", "width", *RESIDUAL_DEFAULTS[t],
                      *(() if t == "decoder" else ("input_shape", "output_size"))) for t in RESIDUAL_TYPES}


def _drop_saved_defaults(s: Section, model_type: str, keys: tuple[str, ...]) -> None:
    """Drop the keys a saved config (asdict) writes at their defaults; fail on any other key not in ``keys``."""
    defaults = json.loads(json.dumps(asdict(ModelConfig())))
    for name in list(s.values):
        if name not in keys:
            if name not in defaults or s.values[name] != defaults[name]:
                s.fail(s.key(name), f"does not apply to a {model_type} model (it takes " + ", ".join(keys) + ")")
            del s.values[name]


def _read_residual_model(s: Section, model_type: str, data: DataConfig) -> ModelConfig:
    """A resmlp or vit on an image dataset, or a decoder on a text dataset, with its sizes."""
    text = data.dataset in TEXT_DATASETS
    if text != (model_type == "decoder"):
        s.fail(s.key("type"), f"{model_type} cannot read data.dataset {data.dataset} "
               f"({'the decoder reads text' if model_type == 'decoder' else 'it reads images'})")
    _drop_saved_defaults(s, model_type, _RESIDUAL_KEYS[model_type])
    depth, width = ZOO_DEFAULTS[model_type]
    defaults = RESIDUAL_DEFAULTS[model_type]
    size = {name: s.get(name, default, positive_int, "must be a positive integer")
            for name, default in (("depth", depth), ("width", width), *defaults.items())}
    if "heads" in size and size["width"] % size["heads"]:
        s.fail(s.key("heads"), f"must divide model.width ({size['width']})", size["heads"])
    if model_type == "decoder":
        s.done()
        return ModelConfig(type=model_type, **size, context=data.context, input_shape=(data.context,),
                           output_size=BYTES)
    shape = tuple(s.get("input_shape", list(DATASET_SHAPES[data.dataset]), lambda v: int_list(v) and len(v) == 3,
                        "must be [channels, height, width]"))
    if "patch_size" in size and (shape[1] % size["patch_size"] or shape[2] % size["patch_size"]):
        s.fail(s.key("patch_size"), f"must divide the image's height and width {list(shape[1:])}", size["patch_size"])
    cfg = ModelConfig(type=model_type, **size, input_shape=shape,
                      output_size=s.get("output_size", ModelConfig.output_size, lambda v: is_int(v) and v >= 2,
                                        "must be an integer >= 2"))
    s.done()
    return cfg


def _read_zoo_model(s: Section, model_type: str, dataset: str) -> ModelConfig:
    _drop_saved_defaults(s, model_type, _ZOO_KEYS)
    depth, width = ZOO_DEFAULTS[model_type]
    if model_type == "lenet5":
        for name in ("depth", "width"):
            if name in s.values:
                s.fail(s.key(name), "does not apply to a lenet5 model")
    elif model_type == "resnet":
        depth = s.get("depth", depth, lambda v: is_int(v) and v >= 8 and (v - 2) % 6 == 0,
                      "must be 6n + 2 for n >= 1 (20, 32, 56, 110)")
    else:
        depth = s.get("depth", depth, lambda v: v in VGG_DEPTHS, "must be one of " + ", ".join(map(str, VGG_DEPTHS)))
    if model_type != "lenet5":
        width = s.get("width", width, positive_int, "must be a positive integer")
    cfg = ModelConfig(
        type=model_type, depth=depth, width=width,
        input_shape=tuple(s.get("input_shape", list(DATASET_SHAPES[dataset]), lambda v: int_list(v) and len(v) == 3,
                                "must be [channels, height, width]")),
        output_size=s.get("output_size", ModelConfig.output_size, lambda v: is_int(v) and v >= 2, "must be an integer >= 2"),
    )
    s.done()
    return cfg


def _read_model(s: Section, data: DataConfig) -> ModelConfig:
    d = ModelConfig()
    model_type = s.choice("type", d.type, MODEL_TYPES + ZOO_TYPES)
    if model_type in RESIDUAL_TYPES:
        return _read_residual_model(s, model_type, data)
    if data.dataset in TEXT_DATASETS:
        s.fail(s.key("type"), f"{model_type} cannot read the text dataset {data.dataset} (the decoder does)")
    if model_type in ZOO_TYPES:
        return _read_zoo_model(s, model_type, data.dataset)
    positive_list = "must be a list of positive integers"
    cfg = ModelConfig(
        type=model_type,
        input_size=s.get("input_size", d.input_size, positive_int, "must be a positive integer"),
        hidden_sizes=tuple(s.get("hidden_sizes", list(d.hidden_sizes), int_list, positive_list)),
        output_size=s.get("output_size", d.output_size, lambda v: is_int(v) and v >= 2, "must be an integer >= 2"),
        dropout_rate=s.get("dropout_rate", d.dropout_rate, lambda v: is_number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
        input_shape=tuple(s.get("input_shape", list(d.input_shape), lambda v: int_list(v) and len(v) == 3, "must be [channels, height, width]")),
        conv_channels=tuple(s.get("conv_channels", list(d.conv_channels), int_list, positive_list)),
        kernel_size=s.get("kernel_size", d.kernel_size, positive_int, "must be a positive integer"),
        padding=s.choice("padding", d.padding, ("valid", "same")),
        pool_every=s.get("pool_every", d.pool_every, lambda v: is_int(v) and v >= 0, "must be an integer >= 0 (0: no pooling)"),
        fc_sizes=tuple(s.get("fc_sizes", list(d.fc_sizes), int_list, positive_list)),
        batch_norm=s.get("batch_norm", d.batch_norm, lambda v: isinstance(v, bool), "must be true or false"),
    )
    if model_type == "cnn" and not cfg.conv_channels:
        s.fail(s.key("conv_channels"), "must list at least one channel count for a cnn")
    for name in ("depth", "width"):
        if s.values.pop(name, None) is not None:
            s.fail(s.key(name), "applies to the zoo models only (" + ", ".join(t for t in ZOO_TYPES if t != "lenet5") + ")")
    for name in ("heads", "patch_size", "context", "mlp_ratio"):
        if s.values.pop(name, None) is not None:
            s.fail(s.key(name), "applies to the residual models only (" + ", ".join(RESIDUAL_TYPES) + ")")
    s.done()
    return cfg


def _read_data(s: Section) -> DataConfig:
    d = DataConfig()
    dataset = s.choice("dataset", d.dataset, DATASETS)
    text = dataset in TEXT_DATASETS
    if not text and s.values.pop("context", None) is not None:  # a saved config writes null
        s.fail(s.key("context"), "applies to the text datasets only (" + ", ".join(TEXT_DATASETS) + ")")
    held = 0.5 if text else 1  # a text corpus holds val_split of its bytes out twice: val and test
    cfg = DataConfig(
        dataset=dataset,
        root=s.get("root", d.root, lambda v: isinstance(v, str) and v != "", "must be a directory path"),
        val_split=s.get("val_split", d.val_split, lambda v: is_number(v) and 0 < v < held, f"must be a number in (0, {held})"),
        split_seed=s.get("split_seed", d.split_seed, is_seed, f"must be an integer in [0, {SEED_MAX}]"),
        context=s.get("context", TEXT_CONTEXT, lambda v: is_int(v) and v >= 2, "must be an integer >= 2") if text else None,
    )
    s.done()
    return cfg


def _read_params(s: Section) -> TrainParams:
    d = TrainParams()
    epochs = s.get("epochs", d.epochs, positive_int, "must be a positive integer")
    optimizer = s.choice("optimizer", d.optimizer, OPTIMIZERS)
    schedule = s.choice("schedule", d.schedule, SCHEDULES)
    for name, needs, value in (("momentum", "sgd", optimizer), ("nesterov", "sgd", optimizer),
                               ("milestones", "step", schedule), ("gamma", "step", schedule)):
        if name in s.values and value != needs:
            s.fail(s.key(name), f"applies to {'optimizer' if needs == 'sgd' else 'schedule'} {needs} only")
    warmup = s.get("warmup_epochs", d.warmup_epochs, lambda v: is_int(v) and 0 <= v < epochs,
                   f"must be an integer in [0, params.epochs) = [0, {epochs})")
    cfg = TrainParams(
        lr=s.get("lr", d.lr, lambda v: is_number(v) and v > 0, "must be a positive number"),
        batch_size=s.get("batch_size", d.batch_size, positive_int, "must be a positive integer"),
        epochs=epochs,
        patience=s.get("patience", d.patience, lambda v: v is None or positive_int(v), "must be a positive integer or null"),
        optimizer=optimizer,
        momentum=s.get("momentum", d.momentum, lambda v: is_number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
        nesterov=s.get("nesterov", d.nesterov, lambda v: isinstance(v, bool), "must be true or false"),
        weight_decay=s.get("weight_decay", d.weight_decay, lambda v: is_number(v) and v >= 0, "must be a number >= 0"),
        schedule=schedule,
        milestones=tuple(s.get("milestones", [], lambda v: int_list(v) and v == sorted(set(v)) and all(warmup < m < epochs for m in v),
                               f"must be increasing epochs between params.warmup_epochs and params.epochs, exclusive ({warmup} < m < {epochs})")),
        gamma=s.get("gamma", d.gamma, lambda v: is_number(v) and 0 < v <= 1, "must be a number in (0, 1]"),
        warmup_epochs=warmup,
        augment=s.get("augment", d.augment, lambda v: isinstance(v, bool), "must be true or false"),
    )
    if cfg.schedule == "step" and not cfg.milestones:
        s.fail(s.key("milestones"), "is required for schedule step (a list of epochs)")
    if cfg.nesterov and cfg.momentum == 0:
        s.fail(s.key("nesterov"), "needs params.momentum > 0")
    s.done()
    return cfg
