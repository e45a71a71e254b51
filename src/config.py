"""Experiment configs: JSON in, typed and validated dataclasses out.

Everything a config can say is checked here, once, before any work starts. A mistake is
reported as one line naming the file and the key path, e.g.
``config/ex1/cka.json: params.lr must be a positive number, got "abc"``; the rest of the
code trusts these objects. Keys starting with ``_`` are comments and are ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from src.errors import UserError

DATASETS = ("mnist", "fashion-mnist", "cifar10", "mnist-5k")
MODEL_TYPES = ("mlp", "cnn")
# Architectures pruned physically through Torch-Pruning (src.models' zoo).
ZOO_TYPES = ("resnet", "vgg", "lenet5")
ZOO_DEFAULTS = {"resnet": (20, 16), "vgg": (16, 64), "lenet5": (None, None)}  # (depth, width)
VGG_DEPTHS = (11, 13, 16, 19)
# Image shape (C, H, W) of each dataset: the zoo models' default input_shape.
DATASET_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "mnist-5k": (1, 28, 28)}
STRATEGIES = ("one_shot", "iterative")
CRITERIA = ("cka", "l1", "l2", "random")
# Baselines scored from the layer's post-ReLU outputs (taylor: and their gradients).
ACTIVATION_CRITERIA = ("apoz", "mean_activation", "taylor")
GREEDY_VARIANTS = ("conditional", "independent")
# "refit": the consumer's pre-activation as a least-squares refit of the kept units recovers it
# (src.pruning.criteria); "next" and "logits" as the paper's extensions.
TARGETS = ("layer", "next", "refit", "logits")
# Structured Optimal Brain Surgeon (Hassibi & Stork 1993, as Frantar & Alistarh 2022 prune structures):
# the unit whose removal the optimal refit of its consumer repairs best goes first.
REFIT_CRITERIA = ("obs",)
# prune.params.compensate: what the consumer of a pruned layer does about the removed units after
# a pass (src.pruning.compensate): nothing (the paper), absorb their mean in its bias, or refit.
COMPENSATIONS = ("none", "bias", "lstsq")
ALLOCATIONS = ("uniform", "global")
# Torch-Pruning's own importances, for the zoo models (cka_prune.tp_importance).
TP_CRITERIA = ("tp_l1", "tp_bn", "tp_taylor", "tp_random")
ENGINES = ("fast", "reference")
KERNELS = ("linear", "rbf")
HOOKS = ("module", "nonlinearity")
WANDB_MODES = ("disabled", "offline", "online")
SEARCH_METHODS = ("grid", "random", "bayes")
SEARCH_METRICS = ("val_loss", "val_acc")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "step", "cosine")
# prune.params.retrain: fine-tune the pruned weights, or rewind them first (Frankle et al. 2020).
RETRAIN_MODES = ("finetune", "rewind")
# Training keeps the weights of epochs 0 (the initialisation) to REWIND_EPOCHS next to the
# model, whatever any prune config says, so that every rewind point is there when a prune
# config asks for it; the early epochs are where Frankle et al. (2020) rewind to.
REWIND_EPOCHS = 5
# Seeds go to numpy and torch.manual_seed, which take unsigned 32-bit and 64-bit values; the
# common range is the one rule for the config's seeds and --seed.
SEED_MAX = 2**32 - 1
# W&B sweep distributions that both backends can search (Optuna: categorical, int, float, log float).
SEARCH_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform",
                        "log_uniform", "log_uniform_values")
# Search parameters and where they live in the config.
SEARCHABLE = {
    "lr": ("params", "lr"),
    "batch_size": ("params", "batch_size"),
    "epochs": ("params", "epochs"),
    "patience": ("params", "patience"),
    "dropout_rate": ("model", "dropout_rate"),
}


@dataclass(frozen=True)
class ModelConfig:
    """``mlp``: Linear-ReLU-Dropout per hidden layer. ``cnn``: conv blocks then an MLP head.

    ``resnet``, ``vgg``, ``lenet5`` (``ZOO_TYPES``): src.models' zoo, sized by ``depth`` and
    ``width`` (None for lenet5), taking ``input_shape`` and ``output_size``.
    """

    type: str = "mlp"
    input_size: int = 784
    hidden_sizes: tuple[int, ...] = (512, 512)
    output_size: int = 10
    dropout_rate: float = 0.0
    input_shape: tuple[int, int, int] = (1, 28, 28)
    conv_channels: tuple[int, ...] = ()
    kernel_size: int = 5
    padding: str = "valid"
    pool_every: int = 1
    fc_sizes: tuple[int, ...] = ()
    batch_norm: bool = False
    depth: int | None = None
    width: int | None = None

    def identity(self) -> dict[str, Any]:
        """The model as a dict without depth and width where unused (mlp, cnn, lenet5), so model
        files named by it before those keys existed keep their names."""
        return {k: v for k, v in asdict(self).items() if k not in ("depth", "width") or v is not None}

    @property
    def has_batch_norm(self) -> bool:
        """Whether the built model has BatchNorm layers (the zoo's resnet and vgg; a cnn with batch_norm)."""
        return self.type in ("resnet", "vgg") or (self.type == "cnn" and self.batch_norm)

    @property
    def has_dropout(self) -> bool:
        """Whether the built model has dropout: hidden Linear blocks (mlp, cnn) with dropout_rate > 0."""
        hidden = self.hidden_sizes if self.type == "mlp" else self.fc_sizes if self.type == "cnn" else ()
        return self.dropout_rate > 0 and len(hidden) > 0

    @property
    def uses_torch_pruning(self) -> bool:
        """Pruned physically through Torch-Pruning groups, not by masks on numbered layers."""
        return self.type in ZOO_TYPES

    @property
    def num_prunable(self) -> int:
        if self.type == "mlp":
            return len(self.hidden_sizes)
        if self.uses_torch_pruning:
            return 0
        return len(self.conv_channels) + len(self.fc_sizes)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    root: str = "data"
    val_split: float = 1 / 12
    split_seed: int = 0

    def identity(self) -> dict[str, Any]:
        """What determines the data itself: not where its files live, nor settings the dataset ignores."""
        if self.dataset == "mnist-5k":  # a fixed split ships with the file
            return {"dataset": self.dataset}
        return {"dataset": self.dataset, "val_split": self.val_split, "split_seed": self.split_seed}


@dataclass(frozen=True)
class TrainParams:
    """A training recipe. The defaults are plain Adam at a constant rate with early stopping."""

    lr: float = 1e-3
    batch_size: int = 512
    epochs: int = 50
    patience: int | None = 3            # None: no early stopping, the last epoch's weights are kept
    optimizer: str = "adam"
    momentum: float = 0.9               # sgd only
    nesterov: bool = False              # sgd only
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()    # step: epochs after which the rate is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0
    augment: bool = False

    def identity(self) -> dict[str, Any]:
        """The recipe as a dict, leaving out options at their defaults that came after the first four.

        Model file names hash this, so models trained before the recipe options existed keep
        their names.
        """
        default = TrainParams()
        return {k: v for k, v in asdict(self).items()
                if k in _FIRST_TRAIN_KEYS or v != getattr(default, k)}


_FIRST_TRAIN_KEYS = ("lr", "batch_size", "epochs", "patience")


@dataclass(frozen=True)
class PruneParams:
    type: str = "cka"
    iterations: int = 1
    rate: float | None = None
    stop_cka: float | None = None
    engine: str = "fast"
    kernel: str = "linear"
    debiased: bool = False
    # None: one random validation batch of params.batch_size; an int: that many samples; "all".
    samples: int | str | None = None
    hook: str = "module"
    # "finetune": retrain the pruned weights; "rewind": reset them to epoch rewind_epoch of the
    # original training first; None: no retraining. Truthy exactly when there is retraining.
    retrain: str | None = "finetune"
    rewind_epoch: int | None = None
    # Retrain the dense network of the surviving neurons instead of the masked one (src.pruning.shrink).
    shrink: bool = False
    # Also evaluate on the training set after each pass and retraining (the report does not need it).
    evaluate_train: bool = False
    greedy: str = "conditional"
    target: str = "layer"
    allocation: str = "uniform"
    # The retraining budget. retrain_epochs: exactly that many epochs after each pass, no early
    # stopping (0: no retraining); None: early-stopped retraining with params.epochs and patience.
    retrain_epochs: int | None = None
    retrain_lr: float | None = None        # None: params.lr
    retrain_dropout: float | None = None   # None: the model's dropout_rate
    # Re-estimate BatchNorm statistics after each pass, before evaluating it. The reader
    # defaults it to true for models with BatchNorm; False is the behaviour before it existed.
    recalibrate_bn: bool = False
    # Compensation of each pruned layer's consumer after a pass (COMPENSATIONS) and the ridge of
    # its refit, relative to the mean variance of the kept inputs (src.pruning.compensate).
    compensate: str = "none"
    compensate_ridge: float = 1e-3
    # one_shot only: a sparsity sweep, each rate pruned from the trained model (one iteration each).
    rates: tuple[float, ...] | None = None

    @property
    def retrains(self) -> bool:
        """Whether each pass is followed by retraining."""
        return self.retrain is not None and self.retrain_epochs != 0

    @property
    def sequential(self) -> bool:
        """Whether a pass prunes its layers one after another in forward order, each scored on the
        network as the layers before it left it (src.pruning.passes), instead of all on the network
        at the start of the pass."""
        return self.compensate != "none" or self.type == "obs"

    def retraining(self, training: TrainParams) -> TrainParams:
        """The recipe retraining runs: ``training`` at ``retrain_lr``, for exactly ``retrain_epochs``
        epochs without early stopping when that is set."""
        recipe = replace(training, lr=training.lr if self.retrain_lr is None else self.retrain_lr)
        if self.retrain_epochs is None:
            return recipe
        return replace(recipe, epochs=self.retrain_epochs, patience=None)

    def identity(self) -> dict[str, Any]:
        """The parameters as a dict, leaving out the budget options where they keep the behaviour from
        before they existed, so runs made before them keep their identity (src.results)."""
        default = PruneParams()
        return {k: v for k, v in asdict(self).items() if k not in _LATER_KEYS or v != getattr(default, k)}


# Keys added after runs were made: at their default they stay out of a run's identity.
_LATER_KEYS = ("retrain_epochs", "retrain_lr", "retrain_dropout", "recalibrate_bn", "compensate",
               "compensate_ridge", "rates")


@dataclass(frozen=True)
class PruneConfig:
    strategy: str = "iterative"
    params: PruneParams = field(default_factory=PruneParams)
    modules: tuple[int, ...] = ()

    def identity(self) -> dict[str, Any]:
        """The section as a dict, with :meth:`PruneParams.identity` for its parameters."""
        return {**asdict(self), "params": self.params.identity()}


@dataclass(frozen=True)
class SearchParameter:
    """One searched parameter in W&B's sweep terms.

    ``constant``/``categorical``: ``values`` (one value for constant); ``int_uniform``,
    ``uniform``: [min, max]; ``q_uniform``: [min, max] in steps of ``q``; ``log_uniform_values``:
    log-uniform on [min, max]; ``log_uniform``: log-uniform on [e^min, e^max].
    """

    name: str
    distribution: str = "categorical"
    values: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    q: float | None = None

    def as_sweep(self) -> dict[str, Any]:
        if self.distribution == "constant":
            return {"value": self.values[0]}
        if self.distribution == "categorical":
            return {"values": list(self.values)}
        spec = {"distribution": self.distribution, "min": self.min, "max": self.max}
        return spec if self.q is None else {**spec, "q": self.q}


@dataclass(frozen=True)
class Hyperband:
    """W&B's ``early_terminate: {type: hyperband, min_iter | max_iter, eta}``; iterations are epochs."""

    min_iter: int | None = None
    max_iter: int | None = None
    eta: int = 3

    def as_sweep(self) -> dict[str, Any]:
        bounds = {"min_iter": self.min_iter, "max_iter": self.max_iter}
        return {"type": "hyperband", "eta": self.eta, **{k: v for k, v in bounds.items() if v is not None}}


@dataclass(frozen=True)
class SearchConfig:
    """A W&B sweep configuration; the local backend runs the same search with Optuna.

    ``seed`` (training seed of every point, and the sampler's seed) is ours; the other keys
    are W&B's. ``run_cap`` bounds random and bayes searches (a grid has its own size).
    """

    method: str = "grid"
    metric: str = "val_loss"
    goal: str = "minimize"
    parameters: tuple[SearchParameter, ...] = (
        SearchParameter("lr", values=(0.1, 0.01, 0.001, 0.0001, 0.00001)),
    )
    early_terminate: Hyperband | None = None
    run_cap: int | None = None
    seed: int = 666
    project: str = "cka_prune"
    name: str | None = None
    description: str | None = None

    def as_sweep(self, program: str, arguments: tuple[str, ...] = ()) -> dict[str, Any]:
        """The dict ``wandb.sweep`` takes; ``wandb agent`` runs ``program arguments...`` per run."""
        sweep: dict[str, Any] = {
            "method": self.method,
            "metric": {"name": self.metric, "goal": self.goal},
            "parameters": {p.name: p.as_sweep() for p in self.parameters},
            "program": program,
            "command": ["${env}", "${interpreter}", "${program}", *arguments],
        }
        optional = {"early_terminate": self.early_terminate and self.early_terminate.as_sweep(),
                    "run_cap": self.run_cap, "name": self.name, "description": self.description}
        return {**sweep, **{k: v for k, v in optional.items() if v is not None}}


@dataclass(frozen=True)
class WandbConfig:
    mode: str = "disabled"
    project: str = "cka_prune"
    entity: str | None = None
    log_model: bool = False  # prune runs log the pruned model (the --export file) as a W&B artifact


@dataclass(frozen=True)
class ExperimentConfig:
    source: Path
    model: ModelConfig
    data: DataConfig
    params: TrainParams
    seeds: tuple[int, ...]
    prune: PruneConfig | None = None
    search: SearchConfig = field(default_factory=SearchConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        """Experiment name: the path below ``config/`` without ``.json`` (``demo/cka``)."""
        parts = self.source.resolve().with_suffix("").parts
        if "config" in parts:
            below = parts[len(parts) - parts[::-1].index("config"):]
            if below:
                return "/".join(below)
        return self.source.stem

    def require_prune(self) -> PruneConfig:
        if self.prune is None:
            raise UserError(f"{self.source}: prune section is required to prune")
        return self.prune

    def training_identity(self) -> dict[str, Any]:
        """Everything that determines trained weights, apart from the seed."""
        return {"model": self.model.identity(), "data": self.data.identity(), "params": self.params.identity()}


class _Section:
    """Reads one JSON object, checking each key; reports leftovers as unknown keys."""

    def __init__(self, file: Path, path: str, value: Any):
        self.file = file
        self.path = path
        if not isinstance(value, dict):
            self.fail(path or "config", "must be a JSON object", value)
        self.values = {k: v for k, v in value.items() if not k.startswith("_")}

    def fail(self, key: str, what: str, got: Any = ...) -> None:
        suffix = "" if got is ... else f", got {json.dumps(got)}"
        raise UserError(f"{self.file}: {key} {what}{suffix}")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any, check: Callable[[Any], bool], what: str) -> Any:
        if name not in self.values:
            return default
        value = self.values.pop(name)
        if not check(value):
            self.fail(self.key(name), what, value)
        return value

    def section(self, name: str) -> _Section:
        return _Section(self.file, self.key(name), self.values.pop(name, {}))

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        return self.get(name, default, lambda v: v in options, "must be one of " + ", ".join(options))

    def done(self) -> None:
        for name in self.values:
            self.fail(self.key(name), "is not a known key")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def is_seed(v: Any) -> bool:
    """An integer in ``[0, SEED_MAX]``."""
    return _is_int(v) and 0 <= v <= SEED_MAX


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def _int_list(v: Any, minimum: int = 1) -> bool:
    return isinstance(v, list) and all(_is_int(x) and x >= minimum for x in v)


def _in_open_unit(v: Any) -> bool:
    return _is_number(v) and 0 < v < 1


_ZOO_KEYS = ("depth", "width", "input_shape", "output_size")


def _read_zoo_model(s: _Section, model_type: str, dataset: str) -> ModelConfig:
    defaults = json.loads(json.dumps(asdict(ModelConfig())))  # as a saved config (asdict) writes them
    for name in list(s.values):
        if name not in _ZOO_KEYS:
            if name not in defaults or s.values[name] != defaults[name]:
                s.fail(s.key(name), f"does not apply to a {model_type} model (it takes " + ", ".join(_ZOO_KEYS) + ")")
            del s.values[name]
    depth, width = ZOO_DEFAULTS[model_type]
    if model_type == "lenet5":
        for name in ("depth", "width"):
            if name in s.values:
                s.fail(s.key(name), "does not apply to a lenet5 model")
    elif model_type == "resnet":
        depth = s.get("depth", depth, lambda v: _is_int(v) and v >= 8 and (v - 2) % 6 == 0,
                      "must be 6n + 2 for n >= 1 (20, 32, 56, 110)")
    else:
        depth = s.get("depth", depth, lambda v: v in VGG_DEPTHS, "must be one of " + ", ".join(map(str, VGG_DEPTHS)))
    if model_type != "lenet5":
        width = s.get("width", width, _positive_int, "must be a positive integer")
    cfg = ModelConfig(
        type=model_type, depth=depth, width=width,
        input_shape=tuple(s.get("input_shape", list(DATASET_SHAPES[dataset]), lambda v: _int_list(v) and len(v) == 3,
                                "must be [channels, height, width]")),
        output_size=s.get("output_size", ModelConfig.output_size, lambda v: _is_int(v) and v >= 2, "must be an integer >= 2"),
    )
    s.done()
    return cfg


def _read_model(s: _Section, dataset: str) -> ModelConfig:
    d = ModelConfig()
    model_type = s.choice("type", d.type, MODEL_TYPES + ZOO_TYPES)
    if model_type in ZOO_TYPES:
        return _read_zoo_model(s, model_type, dataset)
    positive_list = "must be a list of positive integers"
    cfg = ModelConfig(
        type=model_type,
        input_size=s.get("input_size", d.input_size, _positive_int, "must be a positive integer"),
        hidden_sizes=tuple(s.get("hidden_sizes", list(d.hidden_sizes), _int_list, positive_list)),
        output_size=s.get("output_size", d.output_size, lambda v: _is_int(v) and v >= 2, "must be an integer >= 2"),
        dropout_rate=s.get("dropout_rate", d.dropout_rate, lambda v: _is_number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
        input_shape=tuple(s.get("input_shape", list(d.input_shape), lambda v: _int_list(v) and len(v) == 3, "must be [channels, height, width]")),
        conv_channels=tuple(s.get("conv_channels", list(d.conv_channels), _int_list, positive_list)),
        kernel_size=s.get("kernel_size", d.kernel_size, _positive_int, "must be a positive integer"),
        padding=s.choice("padding", d.padding, ("valid", "same")),
        pool_every=s.get("pool_every", d.pool_every, lambda v: _is_int(v) and v >= 0, "must be an integer >= 0 (0: no pooling)"),
        fc_sizes=tuple(s.get("fc_sizes", list(d.fc_sizes), _int_list, positive_list)),
        batch_norm=s.get("batch_norm", d.batch_norm, lambda v: isinstance(v, bool), "must be true or false"),
    )
    if model_type == "cnn" and not cfg.conv_channels:
        s.fail(s.key("conv_channels"), "must list at least one channel count for a cnn")
    for name in ("depth", "width"):
        if s.values.pop(name, None) is not None:
            s.fail(s.key(name), "applies to the resnet and vgg models only")
    s.done()
    return cfg


def _read_data(s: _Section) -> DataConfig:
    d = DataConfig()
    cfg = DataConfig(
        dataset=s.choice("dataset", d.dataset, DATASETS),
        root=s.get("root", d.root, lambda v: isinstance(v, str) and v != "", "must be a directory path"),
        val_split=s.get("val_split", d.val_split, _in_open_unit, "must be a number in (0, 1)"),
        split_seed=s.get("split_seed", d.split_seed, is_seed, f"must be an integer in [0, {SEED_MAX}]"),
    )
    s.done()
    return cfg


def _read_params(s: _Section) -> TrainParams:
    d = TrainParams()
    epochs = s.get("epochs", d.epochs, _positive_int, "must be a positive integer")
    optimizer = s.choice("optimizer", d.optimizer, OPTIMIZERS)
    schedule = s.choice("schedule", d.schedule, SCHEDULES)
    for name, needs, value in (("momentum", "sgd", optimizer), ("nesterov", "sgd", optimizer),
                               ("milestones", "step", schedule), ("gamma", "step", schedule)):
        if name in s.values and value != needs:
            s.fail(s.key(name), f"applies to {'optimizer' if needs == 'sgd' else 'schedule'} {needs} only")
    warmup = s.get("warmup_epochs", d.warmup_epochs, lambda v: _is_int(v) and 0 <= v < epochs,
                   f"must be an integer in [0, params.epochs) = [0, {epochs})")
    cfg = TrainParams(
        lr=s.get("lr", d.lr, lambda v: _is_number(v) and v > 0, "must be a positive number"),
        batch_size=s.get("batch_size", d.batch_size, _positive_int, "must be a positive integer"),
        epochs=epochs,
        patience=s.get("patience", d.patience, lambda v: v is None or _positive_int(v), "must be a positive integer or null"),
        optimizer=optimizer,
        momentum=s.get("momentum", d.momentum, lambda v: _is_number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
        nesterov=s.get("nesterov", d.nesterov, lambda v: isinstance(v, bool), "must be true or false"),
        weight_decay=s.get("weight_decay", d.weight_decay, lambda v: _is_number(v) and v >= 0, "must be a number >= 0"),
        schedule=schedule,
        milestones=tuple(s.get("milestones", [], lambda v: _int_list(v) and v == sorted(set(v)) and all(warmup < m < epochs for m in v),
                               f"must be increasing epochs between params.warmup_epochs and params.epochs, exclusive ({warmup} < m < {epochs})")),
        gamma=s.get("gamma", d.gamma, lambda v: _is_number(v) and 0 < v <= 1, "must be a number in (0, 1]"),
        warmup_epochs=warmup,
        augment=s.get("augment", d.augment, lambda v: isinstance(v, bool), "must be true or false"),
    )
    if cfg.schedule == "step" and not cfg.milestones:
        s.fail(s.key("milestones"), "is required for schedule step (a list of epochs)")
    if cfg.nesterov and cfg.momentum == 0:
        s.fail(s.key("nesterov"), "needs params.momentum > 0")
    s.done()
    return cfg


def _read_retrain(p: _Section, training_epochs: int) -> tuple[str | None, int | None]:
    """``retrain`` and ``rewind_epoch``; JSON true is "finetune" (the meaning it had as a bool), false is None."""
    value = p.get("retrain", "finetune", lambda v: isinstance(v, bool) or v in RETRAIN_MODES,
                  'must be "finetune", "rewind" or false (true means "finetune")')
    mode = "finetune" if value is True else None if value is False else value
    last = min(REWIND_EPOCHS, training_epochs)
    epoch = p.get("rewind_epoch", None, lambda v: _is_int(v) and 0 <= v <= last,
                  f"must be an integer in [0, {last}]: 0 is the initialisation, k the weights after epoch k; "
                  f"training keeps epochs up to min({REWIND_EPOCHS}, params.epochs)")
    if mode == "rewind" and epoch is None:
        p.fail(p.key("rewind_epoch"), 'is required with retrain "rewind"')
    if mode != "rewind" and epoch is not None:
        p.fail(p.key("rewind_epoch"), f'applies to retrain "rewind" only, got retrain {json.dumps(value)}')
    return mode, epoch


def _read_prune(s: _Section, model: ModelConfig, training: TrainParams) -> PruneConfig:
    strategy = s.choice("strategy", "iterative", STRATEGIES)
    p = s.section("params")
    given = set(p.values)
    d = PruneParams()
    retrain, rewind_epoch = _read_retrain(p, training.epochs)
    params = PruneParams(
        type=p.choice("type", d.type, CRITERIA + ACTIVATION_CRITERIA + REFIT_CRITERIA + TP_CRITERIA),
        iterations=p.get("iterations", d.iterations, _positive_int, "must be an integer >= 1"),
        rate=p.get("rate", None, _in_open_unit, "must be a number in (0, 1)"),
        stop_cka=p.get("stop_cka", None, lambda v: _is_number(v) and 0 <= v < 1, "must be a number in [0, 1)"),
        engine=p.choice("engine", d.engine, ENGINES),
        kernel=p.choice("kernel", d.kernel, KERNELS),
        debiased=p.get("debiased", d.debiased, lambda v: isinstance(v, bool), "must be true or false"),
        samples=p.get("samples", d.samples, lambda v: v is None or v == "all" or _positive_int(v), 'must be a positive integer, "all" or null'),
        hook=p.choice("hook", d.hook, HOOKS),
        retrain=retrain,
        rewind_epoch=rewind_epoch,
        shrink=p.get("shrink", d.shrink, lambda v: isinstance(v, bool), "must be true or false"),
        evaluate_train=p.get("evaluate_train", d.evaluate_train, lambda v: isinstance(v, bool), "must be true or false"),
        greedy=p.choice("greedy", d.greedy, GREEDY_VARIANTS),
        target=p.choice("target", d.target, TARGETS),
        allocation=p.choice("allocation", d.allocation, ALLOCATIONS),
    )
    params = _read_budget(p, params, model, training)
    params = _read_compensation(p, params, strategy, given, model)
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
    modules = s.get("modules", default_modules, lambda v: _int_list(v, 0) and len(v) > 0, "must be a non-empty list of layer indices")
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


def _read_budget(p: _Section, params: PruneParams, model: ModelConfig, training: TrainParams) -> PruneParams:
    """``params`` with the retraining budget's keys: retrain_epochs, retrain_lr, retrain_dropout,
    recalibrate_bn. A rate or dropout equal to the training's is stored as None (the same run)."""
    epochs = p.get("retrain_epochs", None, lambda v: _is_int(v) and v >= 0, "must be an integer >= 0 (0: no retraining)")
    if epochs is not None and params.retrain is None:
        p.fail(p.key("retrain_epochs"), "needs retraining, but retrain is false")
    if epochs == 0 and params.retrain == "rewind":
        p.fail(p.key("retrain_epochs"), 'must be >= 1 with retrain "rewind" (0 means no retraining)')
    if epochs and epochs <= training.warmup_epochs:
        p.fail(p.key("retrain_epochs"), f"must be > params.warmup_epochs ({training.warmup_epochs}): "
                                        f"retraining runs the params recipe's schedule", epochs)
    retrains = replace(params, retrain_epochs=epochs).retrains
    lr = p.get("retrain_lr", None, lambda v: _is_number(v) and v > 0, "must be a positive number")
    dropout = p.get("retrain_dropout", None, lambda v: _is_number(v) and 0 <= v < 1, "must be a number in [0, 1)")
    for key, value in (("retrain_lr", lr), ("retrain_dropout", dropout)):
        if value is not None and not retrains:
            p.fail(p.key(key), "applies to retraining, but there is none (retrain false or retrain_epochs 0)")
    if dropout is not None and not model.has_dropout:
        p.fail(p.key("retrain_dropout"), "needs a model with dropout (model.dropout_rate > 0 and hidden Linear layers)")
    recalibrate = p.get("recalibrate_bn", model.has_batch_norm, lambda v: isinstance(v, bool), "must be true or false")
    if recalibrate and not model.has_batch_norm:
        p.fail(p.key("recalibrate_bn"), f"needs a model with BatchNorm; this {model.type} has none")
    return replace(params, retrain_epochs=epochs, retrain_lr=None if lr == training.lr else lr,
                   retrain_dropout=None if dropout == model.dropout_rate else dropout, recalibrate_bn=recalibrate)


def _read_compensation(p: _Section, params: PruneParams, strategy: str, given: set[str],
                       model: ModelConfig) -> PruneParams:
    """``params`` with compensate, compensate_ridge and rates (a one_shot sparsity sweep); ``given``:
    the keys the config sets. (A Torch-Pruning model compensates after the whole pass, so with
    either allocation.)"""
    compensate = p.choice("compensate", params.compensate, COMPENSATIONS)
    ridge = p.get("compensate_ridge", params.compensate_ridge, lambda v: _is_number(v) and v >= 0,
                  "must be a number >= 0")
    if "compensate_ridge" in given and compensate != "lstsq" and params.type not in REFIT_CRITERIA \
            and params.target != "refit":
        p.fail(p.key("compensate_ridge"), 'applies to compensate "lstsq", type "obs" and target "refit" only')
    if compensate != "none" and params.allocation != "uniform" and not model.uses_torch_pruning:
        p.fail(p.key("compensate"), 'needs allocation "uniform" (compensated layers are pruned one after another)')
    if compensate != "none" and params.retrain == "rewind":
        p.fail(p.key("compensate"), 'does not combine with retrain "rewind" (rewinding resets the refit weights)')
    rates = p.get("rates", None, lambda v: isinstance(v, list) and len(v) > 0 and all(_in_open_unit(r) for r in v)
                  and all(a < b for a, b in zip(v, v[1:])), "must be an increasing list of numbers in (0, 1)")
    if rates is not None and strategy != "one_shot":
        p.fail(p.key("rates"), 'applies to strategy "one_shot" only (each rate is pruned from the trained model)')
    return replace(params, compensate=compensate, compensate_ridge=float(ridge),
                   rates=None if rates is None else tuple(float(r) for r in rates))


def _check_method(p: _Section, params: PruneParams) -> None:
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


def _check_prune_fits_model(s: _Section, p: _Section, params: PruneParams, model: ModelConfig) -> None:
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
_DEFAULTS = {"params": asdict(TrainParams()), "model": asdict(ModelConfig())}


def _read_parameter(p: _Section, name: str) -> SearchParameter:
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
        distribution = "int_uniform" if _is_int(given["min"]) and _is_int(given["max"]) else "uniform"
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
        check = _is_int if distribution == "int_uniform" else _is_number
        what = "must be an integer" if distribution == "int_uniform" else "must be a number"
        bounds = [spec.get(key, None, check, what) for key in ("min", "max")]
        if None in bounds:
            spec.fail(spec.key("min" if bounds[0] is None else "max"), f"is required for distribution {distribution}")
        low, high = bounds
        if not low < high:
            spec.fail(spec.path, f"needs min < max, got min {low} and max {high}")
        if distribution == "log_uniform_values" and low <= 0:
            spec.fail(spec.key("min"), "must be > 0 for log_uniform_values", low)
        q = spec.get("q", None, lambda v: _is_number(v) and v > 0, "must be a positive number")
        if distribution == "q_uniform" and q is None:
            q = 1.0
        elif distribution != "q_uniform" and q is not None:
            spec.fail(spec.key("q"), "applies to distribution q_uniform only")
        param = SearchParameter(name, distribution, min=low, max=high, q=q)
        section, key = SEARCHABLE[name]
        if distribution != "int_uniform" and _is_int(_DEFAULTS[section][key]):
            spec.fail(spec.key("distribution"), f"{distribution} draws fractions, but {name} is an integer "
                                                f"(use int_uniform or values)")
    spec.done()
    return param


def _read_hyperband(s: _Section) -> Hyperband:
    s.choice("type", "", ("hyperband",))
    cfg = Hyperband(
        min_iter=s.get("min_iter", None, _positive_int, "must be a positive integer"),
        max_iter=s.get("max_iter", None, _positive_int, "must be a positive integer"),
        eta=s.get("eta", 3, lambda v: _is_int(v) and v >= 2, "must be an integer >= 2"),
    )
    if cfg.min_iter is None and cfg.max_iter is None:
        s.fail(s.path, "needs min_iter or max_iter")
    s.done()
    return cfg


def _read_search(s: _Section) -> SearchConfig:
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
        run_cap=s.get("run_cap", d.run_cap, _positive_int, "must be a positive integer"),
        seed=s.get("seed", d.seed, _is_int, "must be an integer"),
        project=s.get("project", d.project, lambda v: isinstance(v, str) and v != "", "must be a non-empty string"),
        name=s.get("name", d.name, lambda v: isinstance(v, str), "must be a string"),
        description=s.get("description", d.description, lambda v: isinstance(v, str), "must be a string"),
    )
    if method != "grid" and cfg.run_cap is None:
        s.fail(s.key("run_cap"), f"is required for method {method} (how many points to train)")
    s.done()
    return cfg


def _read_wandb(s: _Section) -> WandbConfig:
    d = WandbConfig()
    cfg = WandbConfig(
        mode=s.choice("mode", d.mode, WANDB_MODES),
        project=s.get("project", d.project, lambda v: isinstance(v, str) and v != "", "must be a non-empty string"),
        entity=s.get("entity", d.entity, lambda v: v is None or isinstance(v, str), "must be a string"),
        log_model=s.get("log_model", d.log_model, lambda v: isinstance(v, bool), "must be true or false"),
    )
    s.done()
    return cfg


def parse_config(raw: Any, source: Path) -> ExperimentConfig:
    """Validate a parsed JSON document; raise :class:`UserError` on the first problem."""
    top = _Section(source, "", raw)
    data = _read_data(top.section("data"))
    model = _read_model(top.section("model"), data.dataset)
    params = _read_params(top.section("params"))
    prune = _read_prune(top.section("prune"), model, params) if "prune" in top.values else None
    search = _read_search(top.section("search"))
    wandb = _read_wandb(top.section("wandb"))
    seeds = top.get("seeds", [0], lambda v: isinstance(v, list) and len(v) > 0 and all(map(is_seed, v)),
                    f"must be a non-empty list of integers in [0, {SEED_MAX}]")
    if len(set(seeds)) != len(seeds):
        top.fail("seeds", "must not repeat a seed", seeds)
    top.done()
    return ExperimentConfig(
        source=source, model=model, data=data, params=params, seeds=tuple(seeds),
        prune=prune, search=search, wandb=wandb, raw=raw,
    )


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
