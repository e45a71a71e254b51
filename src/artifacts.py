"""Where trained models and results live, and how model files are written and read."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from src.config import ExperimentConfig
from src.errors import UserError, brief
from src.io import atomic_torch_save, atomic_write_json
from src.models import Net, build_model


def model_family(cfg: ExperimentConfig) -> str:
    """A name derived from everything that determines the weights, apart from the seed.

    Two configs that train the same model on the same data with the same parameters (the
    cka and l1 configs of one experiment) share it, and so their trained models.
    """
    identity = json.dumps(cfg.training_identity(), sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    m = cfg.model
    if m.type == "mlp":
        arch = "-".join(str(w) for w in m.hidden_sizes)
    elif m.type == "cnn":
        arch = "-".join(str(w) for w in (*m.conv_channels, *m.fc_sizes))
    else:  # the zoo: depth x width (ResNet, VGG); LeNet-5 has neither
        arch = "x".join(str(v) for v in (m.depth, m.width) if v is not None)
    name = f"{m.type}-{arch}" if arch else m.type
    return f"{name}_{cfg.data.dataset}_{digest}"


def model_stem(cfg: ExperimentConfig, seed: int) -> str:
    """The file name of one seed's trained model."""
    return f"{model_family(cfg)}_seed{seed}"


def model_path(cfg: ExperimentConfig, seed: int, models_dir: Path) -> Path:
    return Path(models_dir) / f"{model_stem(cfg, seed)}.pt"


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def rewind_path(path: Path) -> Path:
    """Where the training of the model ``path`` keeps its early weights (``{epoch: state_dict}``).

    ``.pth``, not ``.pt``: ``models/*.pt`` stays the list of trained models.
    """
    return path.with_suffix(".rewind.pth")


def save_model(path: Path, model: Net, record: dict[str, Any]) -> None:
    """Weights first, then the sidecar JSON: a sidecar always describes a complete model."""
    atomic_torch_save(path, model.state_dict())
    atomic_write_json(sidecar_path(path), record)


class ModelFileError(Exception):
    """A model file exists but cannot be used (truncated, wrong shapes, unreadable)."""


def load_model(path: Path, cfg: ExperimentConfig, device: torch.device | str = "cpu") -> Net:
    """Build the config's model and load ``path`` into it, strictly."""
    model = build_model(cfg.model)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises loading with weights_only=False, which would run the
        # file's code; it is not repeated.
        raise ModelFileError(f"{path}: cannot load: not a valid model file (it holds Python objects "
                             f"other than weights, which are not loaded)") from err
    except Exception as err:  # torch raises many types for a bad file; all mean "unusable"
        raise ModelFileError(f"{path}: cannot load ({brief(err)})") from err
    try:
        model.load_state_dict(state)
    except Exception as err:  # wrong keys or shapes, or not a dict of tensors at all
        raise ModelFileError(f"{path}: cannot load: not a model of this config ({brief(err)})") from err
    return model.to(device)


def load_rewind_state(path: Path, epoch: int) -> dict[str, torch.Tensor]:
    """The weights after epoch ``epoch`` (0: the initialisation) of the training of the model ``path``.

    UserError (one line naming the file) when the training kept no such weights: a model trained
    before rewinding existed, or a training that stopped before that epoch.
    """
    file = rewind_path(path)
    if not file.exists():
        raise UserError(f"{file}: no early weights to rewind to (the model was trained before training kept "
                        f"them); delete {path} and train it again with main_train.py")
    try:
        kept = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean "unusable"
        raise UserError(f"{file}: cannot load ({brief(err)}); delete {path} and train it again with main_train.py") from None
    if epoch not in kept:
        raise UserError(f"{file}: holds the weights after epochs {', '.join(map(str, sorted(kept)))}, not after "
                        f"epoch {epoch}: prune.params.rewind_epoch must be one of them")
    return kept[epoch]


def output_dir(cfg: ExperimentConfig, output_root: Path) -> Path:
    """``output/<experiment>/`` (``output/demo/cka/``)."""
    return Path(output_root) / cfg.name
