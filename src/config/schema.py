"""The typed, frozen dataclasses a validated config is made of (``ExperimentConfig`` and its
sections), with the identities that name model files and runs. They hold values and derived
properties only; the readers (src.config.training, .prune, .search) build and check them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.config.options import CORPUS_SHA256, TEXT_DATASETS, ZOO_TYPES
from src.errors import UserError

if TYPE_CHECKING:
    from src.config.depth import DepthConfig


@dataclass(frozen=True)
class ModelConfig:
    """``mlp``: Linear-ReLU-Dropout per hidden layer. ``cnn``: conv blocks then an MLP head.

    ``resnet``, ``vgg``, ``lenet5`` (``ZOO_TYPES``): src.models' zoo, sized by ``depth`` and
    ``width`` (None for lenet5), taking ``input_shape`` and ``output_size``.

    ``resmlp``, ``vit``, ``decoder`` (``RESIDUAL_TYPES``): src.residual_models, also sized by
    ``mlp_ratio`` (MLP hidden width / width), ``heads`` (vit, decoder), ``patch_size`` (vit) and
    ``context`` (decoder: positions; its ``input_shape`` is ``(context,)`` tokens, its
    ``output_size`` the 256 byte values). None where unused.
    """

    type: str = "mlp"
    input_size: int = 784
    hidden_sizes: tuple[int, ...] = (512, 512)
    output_size: int = 10
    dropout_rate: float = 0.0
    input_shape: tuple[int, ...] = (1, 28, 28)
    conv_channels: tuple[int, ...] = ()
    kernel_size: int = 5
    padding: str = "valid"
    pool_every: int = 1
    fc_sizes: tuple[int, ...] = ()
    batch_norm: bool = False
    depth: int | None = None
    width: int | None = None
    heads: int | None = None
    patch_size: int | None = None
    context: int | None = None
    mlp_ratio: int | None = None

    def identity(self) -> dict[str, Any]:
        """The model as a dict without the size keys where unused (depth and width for mlp, cnn,
        lenet5; the residual models' keys elsewhere), so model files named by it before those keys
        existed keep their names."""
        return {k: v for k, v in asdict(self).items() if k not in _SIZE_KEYS or v is not None}

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


_SIZE_KEYS = ("depth", "width", "heads", "patch_size", "context", "mlp_ratio")


@dataclass(frozen=True)
class DataConfig:
    """``context``: bytes per window of a text dataset (``TEXT_DATASETS``), None for images."""

    dataset: str = "mnist"
    root: str = "data"
    val_split: float = 1 / 12
    split_seed: int = 0
    context: int | None = None

    def identity(self) -> dict[str, Any]:
        """What determines the data itself: not where its files live, nor settings the dataset ignores.
        A text dataset adds its window length and the SHA-256 of its committed corpus."""
        if self.dataset == "mnist-5k":  # a fixed split ships with the file
            return {"dataset": self.dataset}
        split = {"dataset": self.dataset, "val_split": self.val_split, "split_seed": self.split_seed}
        if self.dataset in TEXT_DATASETS:
            return {**split, "context": self.context, "sha256": CORPUS_SHA256[self.dataset]}
        return split


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
    # Re-estimate BatchNorm statistics after each pass, before evaluating it. A config's default
    # is `defaults_for` its model's (true with BatchNorm); False is the behaviour before it existed.
    recalibrate_bn: bool = False
    # Compensation of each pruned layer's consumer after a pass (COMPENSATIONS) and the ridge of
    # its refit, relative to the mean variance of the kept inputs (src.pruning.compensate).
    compensate: str = "none"
    compensate_ridge: float = 1e-3
    # one_shot only: a sparsity sweep, each rate pruned from the trained model (one iteration each).
    rates: tuple[float, ...] | None = None

    @classmethod
    def defaults_for(cls, model: ModelConfig) -> PruneParams:
        """What a prune section that sets nothing means for ``model``: these defaults, with
        recalibrate_bn on for a model with BatchNorm (pruning shifts the statistics it normalises by)."""
        return cls(recalibrate_bn=model.has_batch_norm)

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

    @property
    def scoring_engine(self) -> str:
        """The engine that scores and records damage: "fast" computes linear CKA only, so kernel
        "rbf" runs the reference engine whatever ``engine`` says."""
        return "fast" if self.engine == "fast" and self.kernel == "linear" else "reference"

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
    depth: DepthConfig | None = None  # a prune section of strategy "depth" (then prune is None)

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
        if self.depth is not None:
            raise UserError(f'{self.source}: prune.strategy "depth" removes blocks; this command prunes neurons '
                            '(main_prune.py runs depth configs)')
        if self.prune is None:
            raise UserError(f"{self.source}: prune section is required to prune")
        return self.prune

    def require_depth(self) -> DepthConfig:
        if self.depth is None:
            raise UserError(f'{self.source}: a prune section of strategy "depth" is required to remove blocks')
        return self.depth

    def training_identity(self) -> dict[str, Any]:
        """Everything that determines trained weights, apart from the seed."""
        return {"model": self.model.identity(), "data": self.data.identity(), "params": self.params.identity()}
