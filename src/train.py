"""The training loop: Adam, cross-entropy, early stopping on validation loss.

The loop trains any model, masked ones included (``torch.nn.utils.prune`` keeps pruned
weights at zero through its forward pre-hook), so pruning's retraining uses it too.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from pathlib import Path

from src.artifacts import ModelFileError, load_model, model_path, save_model
from src.config import ExperimentConfig, TrainParams
from src.data import Split, Splits, iterate_batches, load_splits
from src.errors import UserError
from src.io import atomic_write_json
from src.models import build_model, check_model_fits_data


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


def evaluate(model: nn.Module, split: Split, batch_size: int, device: torch.device) -> Metrics:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``split``."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad():
        for x, y in iterate_batches(split, max(batch_size, 1024), device=device):
            logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = max(len(split), 1)
    return Metrics(loss=loss_sum.item() / n, acc=correct.item() / n)


def _progress_wanted() -> bool:
    """Bars on a terminal; in a batch log (Slurm) one line per epoch instead."""
    return sys.stderr.isatty()


def fit(model: nn.Module, splits: Splits, params: TrainParams, *, seed: int,
        device: torch.device, on_epoch: EpochCallback | None = None,
        label: str = "train") -> FitResult:
    """Train in place with early stopping; keep the weights of the best validation loss.

    Stops when the validation loss has not improved for ``params.patience`` epochs, or at
    ``params.epochs``, or as soon as the training loss is not finite (``diverged``).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=params.lr)
    best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
    history: list[dict[str, float]] = []
    interactive = _progress_wanted()
    start = time.perf_counter()
    diverged = False
    for epoch in range(1, params.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        # Running sums stay on the device: one host sync per epoch, not per batch.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        batches = iterate_batches(splits.train, params.batch_size, shuffle=True, generator=generator, device=device)
        total = math.ceil(len(splits.train) / params.batch_size)
        for x, y in tqdm(batches, total=total, desc=f"{label} epoch {epoch}", leave=False, disable=not interactive):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum.add_(loss.detach(), alpha=len(y))
            correct.add_((logits.detach().argmax(1) == y).sum())
        train_loss = loss_sum.item() / len(splits.train)
        if not math.isfinite(train_loss):
            diverged = True
            tqdm.write(f"{label}: training loss is {train_loss} in epoch {epoch}: diverged (try a smaller lr)")
            break
        val = evaluate(model, splits.val, params.batch_size, device)
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": correct.item() / len(splits.train),
               "val_loss": val.loss, "val_acc": val.acc, "seconds": time.perf_counter() - epoch_start}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if val.loss < best_loss:
            best_loss, best_epoch, stale = val.loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        tqdm.write(f"{label} epoch {epoch:3d}: train loss {train_loss:.4f} acc {row['train_acc']:.4f} | "
                   f"val loss {val.loss:.4f} acc {val.acc:.4f}{'' if stale else ' *'} | {row['seconds']:.1f}s")
        if stale >= params.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(epochs=len(history) + int(diverged), best_epoch=best_epoch, diverged=diverged,
                     seconds=time.perf_counter() - start, history=history)


def evaluate_all(model: nn.Module, splits: Splits, batch_size: int, device: torch.device,
                 names: tuple[str, ...] = ("train", "val", "test")) -> dict[str, float]:
    """``{name}_{loss,acc}`` for each split of ``names``, in one flat dict."""
    out = {}
    for name in names:
        metrics = evaluate(model, getattr(splits, name), batch_size, device)
        out[f"{name}_loss"], out[f"{name}_acc"] = metrics.loss, metrics.acc
    return out


def train_seed(cfg: ExperimentConfig, seed: int, splits: Splits, device: torch.device,
               models_dir: Path, on_epoch: EpochCallback | None = None) -> Path:
    """Train one seed's model unless a usable one exists; return its path.

    A model file that fails to load is reported and retrained, never silently used. A
    diverged run is recorded in the sidecar (``"diverged": true``) without weights.
    """
    path = model_path(cfg, seed, models_dir)
    if path.exists():
        try:
            load_model(path, cfg)
            print(f"seed {seed}: model exists, skipping ({path})")
            return path
        except ModelFileError as err:
            print(f"seed {seed}: {err}; retraining")
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    result = fit(model, splits, cfg.params, seed=seed, device=device, on_epoch=on_epoch, label=f"seed {seed}")
    record = {
        "seed": seed,
        "config": cfg.training_identity(),
        "source": str(cfg.source),
        "fit": result.to_dict(),
        "diverged": result.diverged,
    }
    if result.diverged:
        diverged_path = path.with_suffix(".diverged.json")
        atomic_write_json(diverged_path, record)
        print(f"seed {seed}: diverged; recorded in {diverged_path}")
        return path
    record.update(evaluate_all(model, splits, cfg.params.batch_size, device))
    save_model(path, model, record)
    print(f"seed {seed}: test acc {record['test_acc']:.4f} after {result.epochs} epochs "
          f"({result.seconds:.1f}s) -> {path}")
    return path
