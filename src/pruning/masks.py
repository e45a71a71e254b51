"""Neuron masks on weights, through ``torch.nn.utils.prune``.

A pruned neuron of a Linear layer is a zero row of its weight mask; a pruned channel of a
Conv2d layer is a zero filter. The bias stays. Because the mask is applied by a forward
pre-hook (``weight = weight_orig * weight_mask``), retraining cannot revive a pruned weight.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn.utils import prune

from src.models import Net, prunable_layers


def refresh_weight(layer: nn.Module) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` now, outside autograd.

    The pre-hook does this before each forward; doing it eagerly keeps ``layer.weight``
    current after a mask or state-dict change (and a leaf tensor, so the model deep-copies).
    """
    with torch.no_grad():
        layer.weight = layer.weight_orig * layer.weight_mask


def ensure_mask(layer: nn.Module) -> torch.Tensor:
    """The layer's weight mask, adding an all-ones one if it has none."""
    if not prune.is_pruned(layer) or not hasattr(layer, "weight_mask"):
        prune.identity(layer, "weight")
        refresh_weight(layer)
    return layer.weight_mask


def add_masks(model: Net, indices: Iterable[int]) -> None:
    """Give the prunable layers ``indices`` a weight mask (so masked state dicts load)."""
    layers = prunable_layers(model)
    for index in indices:
        ensure_mask(layers[index].block.layer)


def load_masked_state(model: Net, state: dict, indices: Iterable[int]) -> None:
    """Load a state dict saved from a model whose layers ``indices`` carry masks."""
    indices = list(indices)
    add_masks(model, indices)
    model.load_state_dict(state)
    layers = prunable_layers(model)
    for index in indices:
        refresh_weight(layers[index].block.layer)


def load_unmasked_state(model: Net, state: dict, indices: Iterable[int]) -> None:
    """Load a plain state dict (of the unpruned model) into ``model``, keeping its masks.

    Each masked layer's ``weight_orig`` takes the plain ``weight``; every other parameter and
    buffer (biases, BatchNorm statistics) is taken as it is. The masks are untouched, so a
    removed neuron stays removed: its weights are loaded but multiplied by zero.
    """
    indices = list(indices)
    add_masks(model, indices)
    current = model.state_dict()
    model.load_state_dict({key: value if key.endswith("weight_mask") else state[key.removesuffix("_orig")]
                           for key, value in current.items()})
    layers = prunable_layers(model)
    for index in indices:
        refresh_weight(layers[index].block.layer)


def alive_neurons(layer: nn.Module) -> torch.Tensor:
    """Bool tensor (out_features or out_channels,): True where the neuron is not masked."""
    if not hasattr(layer, "weight_mask"):
        return torch.ones(layer.weight.shape[0], dtype=torch.bool, device=layer.weight.device)
    return layer.weight_mask.flatten(1).any(dim=1)


def remove_neurons(layer: nn.Module, neurons: Iterable[int]) -> None:
    """Mask the incoming weights of ``neurons`` (rows of a Linear, filters of a Conv2d)."""
    mask = ensure_mask(layer)
    index = torch.as_tensor(list(neurons), dtype=torch.long, device=mask.device)
    with torch.no_grad():
        mask[index] = 0
    refresh_weight(layer)


@contextmanager
def neurons_zeroed(layer: nn.Module, neurons: Iterable[int]) -> Iterator[None]:
    """Temporarily zero ``neurons``' weights (the reference engine's zero-score-restore)."""
    mask = ensure_mask(layer)
    saved = mask.clone()
    remove_neurons(layer, neurons)
    try:
        yield
    finally:
        with torch.no_grad():
            mask.copy_(saved)
        refresh_weight(layer)


def make_permanent(model: Net) -> Net:
    """Fold every mask into its weight (``prune.remove``): a plain state dict, zeros kept."""
    for layer in prunable_layers(model):
        if prune.is_pruned(layer.block.layer):
            prune.remove(layer.block.layer, "weight")
    return model
