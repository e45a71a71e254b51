"""The training loop: cross-entropy with the config's recipe (optimizer, learning-rate
schedule, augmentation), early stopping on validation loss, per-epoch checkpoints to resume.

Classifiers and language models share it: the loss is the mean cross-entropy over targets, which
are one label per sample ``(B,)`` for a classifier and one next byte per position ``(B, T)`` for
the decoder (:func:`token_cross_entropy`); accuracy is over the same targets.

The loop trains any model, masked ones included (``torch.nn.utils.prune`` keeps pruned
weights at zero through its forward pre-hook), so pruning's retraining uses it too.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from src import provenance
from src.artifacts import ModelFileError, load_model, model_path, rewind_path, save_model, sidecar_path
from src.augment import augment_batch
from src.config import REWIND_EPOCHS, ExperimentConfig, TrainParams
from src.data import Split, Splits, iterate_batches, load_splits
from src.errors import UserError
from src.io import atomic_torch_save, atomic_write_json
from src.models import build_model, check_model_fits_data
from src.text_data import TokenSplit


@dataclass(frozen=True)
class Metrics:
    loss: float
    acc: float


@dataclass
class FitResult:
    epochs: int                     # epochs actually run
    best_epoch: int                 # 1-based epoch whose weights were kept (0: none)
    diverged: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


EpochCallback = Callable[[dict[str, float]], None]


def select_device(name: str | None = None) -> torch.device:
    """``name`` if given ("cpu", "cuda", "cuda:1"), else CUDA when available, else CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name (cpu, cuda, cuda:N)") from None


def load_experiment_data(cfg: ExperimentConfig, device: torch.device) -> Splits:
    """The config's dataset on ``device``, after checking that the config's model can take it."""
    splits = load_splits(cfg.data)
    check_model_fits_data(cfg.model, splits.input_shape, splits.num_classes, str(cfg.source))
    return splits.to(device)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits ``(..., classes)`` against targets ``(...)``: ``(B, C)`` with ``(B,)``,
    or a language model's ``(B, T, V)`` with ``(B, T)``; "mean" averages over every target."""
    return nn.functional.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction=reduction)


def evaluate(model: nn.Module, split: Split | TokenSplit, batch_size: int, device: torch.device) -> Metrics:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) over the targets of ``split``
    (samples, or every position of every text window)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    targets = 0
    with torch.no_grad():
        for x, y in iterate_batches(split, max(batch_size, 1024), device=device):
            logits = model(x)
            loss_sum += token_cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(-1) == y).sum()
            targets += y.numel()
    model.train(was_training)
    n = max(targets, 1)
    return Metrics(loss=loss_sum.item() / n, acc=correct.item() / n)


def _progress_wanted() -> bool:
    """Bars on a terminal; in a batch log (Slurm) one line per epoch instead."""
    return sys.stderr.isatty()


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """Adam (weight decay as L2 on the gradient, torch's Adam) or SGD with momentum."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if params.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=params.lr, momentum=params.momentum,
                               nesterov=params.nesterov, weight_decay=params.weight_decay)
    return torch.optim.Adam(trainable, lr=params.lr, weight_decay=params.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, params: TrainParams) -> LRScheduler | None:
    """The per-epoch learning-rate schedule, stepped once after every epoch; None when constant.

    With ``w = warmup_epochs`` and base rate ``lr``, epoch ``e`` (1-based) runs at

    * warmup, ``e <= w``: ``lr * e / (w + 1)`` (linear, reaching ``lr`` at epoch ``w + 1``);
    * ``constant``: ``lr``;
    * ``step``: ``lr * gamma ** (number of milestones m with m < e)``;
    * ``cosine``: ``lr * (1 + cos(pi * t / T)) / 2`` with ``t = e - 1 - w``, ``T = epochs - w``.
    """
    schedulers = torch.optim.lr_scheduler
    w = params.warmup_epochs
    main: LRScheduler | None = None
    if params.schedule == "step":
        # Inside SequentialLR the second schedule counts epochs from the end of the warmup.
        main = schedulers.MultiStepLR(optimizer, [m - w for m in params.milestones], gamma=params.gamma)
    elif params.schedule == "cosine":
        main = schedulers.CosineAnnealingLR(optimizer, T_max=params.epochs - w)
    if w == 0:
        return main
    warmup = schedulers.LinearLR(optimizer, start_factor=1 / (w + 1), end_factor=1.0, total_iters=w)
    if main is None:
        return warmup
    return schedulers.SequentialLR(optimizer, [warmup, main], milestones=[w])


@dataclass
class _EarlyStopping:
    """Best validation loss so far, its epoch and weights, and epochs since it improved."""

    patience: int | None
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0

    def update(self, val_loss: float, epoch: int, model: nn.Module) -> bool:
        """Record an epoch's validation loss; True when training should stop."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.stale = val_loss, epoch, 0
            if self.patience is not None:  # without early stopping the best weights are not kept
                self.best_state = copy.deepcopy(model.state_dict())
        else:
            self.stale += 1
        return self.patience is not None and self.stale >= self.patience


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor | None]:
    """Every random state training draws from: dropout (global), batch order and augmentation."""
    return {"torch": torch.get_rng_state(), "batches": generator.get_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict[str, torch.Tensor | None], generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["batches"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _load_checkpoint(path: Path, params: TrainParams, seed: int) -> dict | None:
    """The checkpoint at ``path`` if it exists and belongs to this training, else None."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - an unreadable checkpoint only costs the epochs in it
        print(f"{path}: unusable checkpoint ({type(err).__name__}); training from the start")
        return None
    if not isinstance(saved, dict) or saved.get("params") != asdict(params) or saved.get("seed") != seed:
        print(f"{path}: checkpoint of another training; training from the start")
        return None
    return saved


def _interrupted_note(label: str, epoch: int, saved_epoch: int, checkpoint: Path | None) -> str:
    """What an interruption in ``epoch`` leaves: said by the CLI boundary (exception note)."""
    if checkpoint is None:
        return f"{label} epoch {epoch}: this training is not checkpointed and will be redone"
    if saved_epoch == 0:
        return f"{label} epoch {epoch}: no epoch is checkpointed yet; training will restart at epoch 1"
    return (f"{label} epoch {epoch}: epochs up to {saved_epoch} are checkpointed in {checkpoint}; "
            f"epoch {epoch} will be redone")


def fit(model: nn.Module, splits: Splits, params: TrainParams, *, seed: int,
        device: torch.device, on_epoch: EpochCallback | None = None,
        label: str = "train", checkpoint: Path | None = None) -> FitResult:
    """Train in place with ``params``' recipe; with early stopping keep the best validation loss's weights.

    Stops when the validation loss has not improved for ``params.patience`` epochs, or at
    ``params.epochs``, or as soon as the training loss is not finite (``diverged``). With
    ``patience`` None there is no early stopping and the last epoch's weights are kept.

    With ``checkpoint``, the whole training state (weights, optimizer, schedule, early
    stopping, history, random states) is written there atomically after every epoch that
    training goes on from, and a call that finds a checkpoint of the same params and seed
    resumes from it, giving bit-identical weights. The caller removes it after saving the model.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params)
    early = _EarlyStopping(params.patience)
    history: list[dict[str, float]] = []
    seconds_before = 0.0
    saved = _load_checkpoint(checkpoint, params, seed) if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        early = _EarlyStopping(params.patience, **saved["early_stopping"])
        history, seconds_before = saved["history"], saved["seconds"]
        _set_rng_state(saved["rng"], generator, device)
        tqdm.write(f"{label}: resuming after epoch {saved['epoch']} from {checkpoint}")
    saved_epoch = saved["epoch"] if saved is not None else 0
    interactive = _progress_wanted()
    start = time.perf_counter()
    diverged = False
    epoch = saved_epoch + 1
    try:
        for epoch in range(saved_epoch + 1, params.epochs + 1):
            model.train()
            epoch_start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            # Running sums stay on the device: one host sync per epoch, not per batch.
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            targets = 0
            batches = iterate_batches(splits.train, params.batch_size, shuffle=True, generator=generator, device=device)
            total = math.ceil(len(splits.train) / params.batch_size)
            for x, y in tqdm(batches, total=total, desc=f"{label} epoch {epoch}", leave=False, disable=not interactive):
                if params.augment:
                    x = augment_batch(x, generator)
                logits = model(x)
                loss = token_cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum.add_(loss.detach(), alpha=y.numel())
                correct.add_((logits.detach().argmax(-1) == y).sum())
                targets += y.numel()
            train_loss = loss_sum.item() / targets
            if not math.isfinite(train_loss):
                diverged = True
                tqdm.write(f"{label}: training loss is {train_loss} in epoch {epoch}: diverged (try a smaller lr)")
                break
            val = evaluate(model, splits.val, params.batch_size, device)
            row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": correct.item() / targets,
                   "val_loss": val.loss, "val_acc": val.acc, "seconds": time.perf_counter() - epoch_start}
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            stop = early.update(val.loss, epoch, model)
            tqdm.write(f"{label} epoch {epoch:3d}: train loss {train_loss:.4f} acc {row['train_acc']:.4f} | "
                       f"val loss {val.loss:.4f} acc {val.acc:.4f}{'' if early.stale else ' *'} | {row['seconds']:.1f}s")
            if stop:
                break
            if scheduler is not None:
                scheduler.step()
            if checkpoint is not None and epoch < params.epochs:
                atomic_torch_save(checkpoint, {
                    "params": asdict(params), "seed": seed, "epoch": epoch,
                    "seconds": seconds_before + time.perf_counter() - start,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "early_stopping": {"best_loss": early.best_loss, "best_epoch": early.best_epoch,
                                       "best_state": early.best_state, "stale": early.stale},
                    "history": history, "rng": _rng_state(generator, device),
                })
                saved_epoch = epoch
    except KeyboardInterrupt as err:
        # Just after a checkpoint, ``epoch`` is still the epoch it holds; the next one is in flight.
        err.add_note(_interrupted_note(label, max(epoch, saved_epoch + 1), saved_epoch, checkpoint))
        raise
    if early.best_state is not None:
        model.load_state_dict(early.best_state)
    best_epoch = early.best_epoch if params.patience is not None else (0 if diverged else len(history))
    return FitResult(epochs=len(history) + int(diverged), best_epoch=best_epoch, diverged=diverged,
                     seconds=seconds_before + time.perf_counter() - start, history=history)


def evaluate_all(model: nn.Module, splits: Splits, batch_size: int, device: torch.device,
                 names: tuple[str, ...] = ("train", "val", "test")) -> dict[str, float]:
    """``{name}_{loss,acc}`` for each split of ``names``, in one flat dict."""
    out = {}
    for name in names:
        metrics = evaluate(model, getattr(splits, name), batch_size, device)
        out[f"{name}_loss"], out[f"{name}_acc"] = metrics.loss, metrics.acc
    return out


def checkpoint_path(path: Path) -> Path:
    """Where the training of the model ``path`` keeps its per-epoch checkpoint."""
    return path.with_suffix(".ckpt")


def _record(cfg: ExperimentConfig, seed: int, fit_result: FitResult | None, device: torch.device) -> dict:
    """The sidecar: what trained the model, how it went, and (``provenance``) the code, libraries
    and CPU kernels of the process that trained it; None for a model only re-evaluated here."""
    return {"seed": seed, "config": cfg.training_identity(), "source": str(cfg.source),
            "fit": None if fit_result is None else fit_result.to_dict(),
            "diverged": fit_result is not None and fit_result.diverged,
            "provenance": None if fit_result is None else asdict(provenance.current(device))}


def _early_weights(path: Path) -> dict[int, dict[str, torch.Tensor]]:
    """The early weights a stopped training of the model ``path`` kept so far ({} if none or unreadable)."""
    try:
        kept = torch.load(rewind_path(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - absent or unusable: the epochs are saved again as training runs them
        return {}
    return kept if isinstance(kept, dict) else {}


def _keeping_early_weights(model: nn.Module, path: Path, resuming: bool,
                           on_epoch: EpochCallback | None) -> EpochCallback:
    """Save the initialisation now, and the weights after each epoch up to REWIND_EPOCHS as training runs it.

    They are written to :func:`src.artifacts.rewind_path` (``{epoch: state_dict}`` on the CPU)
    before the epoch's training checkpoint, so a training ``resuming`` from that checkpoint
    finds every earlier epoch kept; a training from the start replaces whatever was there.
    """
    kept = _early_weights(path) if resuming else {}

    def keep(epoch: int) -> None:
        kept[epoch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        atomic_torch_save(rewind_path(path), kept)

    keep(0)

    def on_epoch_with_weights(row: dict[str, float]) -> None:
        if row["epoch"] <= REWIND_EPOCHS:
            keep(int(row["epoch"]))
        if on_epoch is not None:
            on_epoch(row)

    return on_epoch_with_weights


def train_seed(cfg: ExperimentConfig, seed: int, splits: Splits, device: torch.device,
               models_dir: Path, on_epoch: EpochCallback | None = None) -> Path:
    """Train one seed's model unless a usable one exists; return its path.

    Training checkpoints every epoch (:func:`checkpoint_path`) and a rerun resumes from
    there; the checkpoint is removed once the model and its sidecar are written. A model
    file that fails to load is reported and retrained, never silently used; a usable model
    whose sidecar is missing (stopped between the two writes) is re-evaluated and the sidecar
    written, without retraining. A diverged run is recorded (``"diverged": true``) without weights.
    The initialisation and the weights after epochs 1..REWIND_EPOCHS are kept beside the model
    (:func:`src.artifacts.rewind_path`) for rewinding.
    """
    path = model_path(cfg, seed, models_dir)
    checkpoint = checkpoint_path(path)
    if path.exists():
        try:
            model = load_model(path, cfg, device)
        except ModelFileError as err:
            print(f"seed {seed}: {err}; retraining")
        else:
            if sidecar_path(path).exists():
                print(f"seed {seed}: model exists, skipping ({path})")
            else:
                record = _record(cfg, seed, None, device) | evaluate_all(model, splits, cfg.params.batch_size, device)
                atomic_write_json(sidecar_path(path), record)
                print(f"seed {seed}: model exists but its sidecar was missing; re-evaluated it and wrote "
                      f"{sidecar_path(path)} (the training history is lost)")
            checkpoint.unlink(missing_ok=True)
            return path
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    result = fit(model, splits, cfg.params, seed=seed, device=device,
                 on_epoch=_keeping_early_weights(model, path, checkpoint.exists(), on_epoch), label=f"seed {seed}", checkpoint=checkpoint)
    record = _record(cfg, seed, result, device)
    if result.diverged:
        diverged_path = path.with_suffix(".diverged.json")
        atomic_write_json(diverged_path, record)
        checkpoint.unlink(missing_ok=True)
        rewind_path(path).unlink(missing_ok=True)
        print(f"seed {seed}: diverged; recorded in {diverged_path}")
        return path
    record.update(evaluate_all(model, splits, cfg.params.batch_size, device))
    save_model(path, model, record)
    checkpoint.unlink(missing_ok=True)
    print(f"seed {seed}: test loss {record['test_loss']:.4f} acc {record['test_acc']:.4f} after {result.epochs} epochs "
          f"({result.seconds:.1f}s) -> {path}")
    return path
