"""Model surgery: a masked network -> the smaller dense network that computes the same.

A pruned neuron has zero incoming weights but keeps its bias, so in eval mode its output
is a constant ``c = relu(norm(bias))`` (after max pooling still ``c``; dropout is the
identity). Surgery deletes the neuron (a row of a Linear, a filter of a Conv2d, its
BatchNorm entries) and the matching inputs of the next layer, after adding what those
inputs contributed, ``W_next[:, removed] @ c``, to the next layer's bias:

* next Linear after a Linear: exact.
* next Linear after the last conv block: channel ``ch`` is the flattened columns
  ``ch*H*W .. (ch+1)*H*W - 1`` (NCHW), all equal to ``c_ch``: exact.
* next Conv2d without padding: every output position sees all taps of the constant
  channel, ``sum(W_next[:, ch]) * c_ch``: exact.
* next Conv2d with zero padding ("same"): border positions see fewer taps, so the folded
  interior value is wrong there. Such folds are marked ``"interior"`` and
  :attr:`Surgery.exact` is False.

Removed neurons are found as all-zero weight rows of the effective weight, which covers
both masked models and models whose masks were made permanent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from src.config import ModelConfig
from src.errors import UserError
from src.models import Block, Net, PrunableLayer, build_model, prunable_layers


@dataclass(frozen=True)
class LayerCut:
    """What surgery did to one prunable layer.

    ``fold``: ``"none"`` (nothing removed), ``"exact"``, or ``"interior"`` (the next conv
    zero-pads, so the fold is exact only away from the borders).
    """

    index: int
    name: str
    kind: str
    width_before: int
    width_after: int
    fold: str
    feeds: str
    note: str = ""


@dataclass(frozen=True)
class Surgery:
    """The smaller dense network (a plain :class:`Net`, CPU, eval mode), its config, and per layer what was cut."""

    model: Net
    config: ModelConfig
    layers: tuple[LayerCut, ...]
    warnings: tuple[str, ...] = ()

    @property
    def exact(self) -> bool:
        """True when the smaller network computes the masked network's outputs exactly."""
        return all(layer.fold != "interior" for layer in self.layers)


def smaller_dense(masked: Net, model_cfg: ModelConfig) -> Surgery:
    """The smaller dense network equivalent to ``masked`` in eval mode.

    ``masked`` is not modified. The new network is built by ``build_model(surgery.config)``
    (the global RNG is left untouched). A layer that lost every neuron keeps one dead neuron
    (its constant output is computed as before), so every width stays >= 1 and the config
    stays valid.
    """
    layers = prunable_layers(masked)
    _check_widths(layers, model_cfg)
    outputs = [*(layer.block.layer for layer in layers), masked.output]
    weights = [_effective_weight(module) for module in outputs]
    biases = [module.bias.detach().cpu().double().clone() for module in outputs]
    keeps, records, warnings = [], [], []
    for i, layer in enumerate(layers):
        keep, note = _kept_neurons(weights[i])
        next_module, next_name = outputs[i + 1], _module_name(masked, outputs[i + 1])
        removed = ~keep
        fold = "none"
        if removed.any():
            constants = _constant_outputs(layer.block, biases[i])[removed]
            shift, exact = _fold(next_module, weights[i + 1], removed, constants)
            biases[i + 1] += shift
            fold = "exact" if exact else "interior"
            if not exact:
                warnings.append(
                    f"layer {i} ({layer.name}): removed channels feed {next_name}, which zero-pads its input; "
                    "their constant contribution is folded as its interior value, so outputs near the image "
                    "borders differ from the masked model; compare the test accuracy of both")
        weights[i + 1] = _drop_inputs(next_module, weights[i + 1], keep)
        keeps.append(keep)
        records.append(LayerCut(index=i, name=layer.name, kind=layer.kind, width_before=layer.width,
                                width_after=int(keep.sum()), fold=fold, feeds=next_name, note=note))
    small_cfg = _smaller_config(model_cfg, [r.width_after for r in records])
    with torch.random.fork_rng(devices=[]):
        small = build_model(small_cfg)
    small.load_state_dict(_small_state(masked, small, weights, biases, keeps))
    return Surgery(model=small.eval(), config=small_cfg, layers=tuple(records), warnings=tuple(warnings))


def _effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses (``weight_orig * weight_mask`` when masked), float64 CPU.

    Computed here rather than read from ``module.weight``, which a masked layer only
    refreshes in its next forward pass (stale right after ``load_state_dict``).
    """
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        weight = module.weight_orig * module.weight_mask
    else:
        weight = module.weight
    return weight.detach().cpu().double().clone()


def _kept_neurons(weight: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Bool ``(out,)``: neurons with a nonzero incoming weight; at least one is kept."""
    keep = weight.flatten(1).ne(0).any(dim=1)
    if keep.any():
        return keep, ""
    keep[0] = True
    return keep, f"all {len(keep)} neurons removed; one dead neuron kept"


def _constant_outputs(block: Block, bias: torch.Tensor) -> torch.Tensor:
    """``(width,)``: each neuron's eval-mode block output if its weights were zero.

    The layer then outputs its bias everywhere; BatchNorm (running statistics) and ReLU act
    per channel, and max pooling and dropout (eval) leave a constant map constant.
    """
    z = bias
    if isinstance(block.norm, nn.BatchNorm2d):
        bn = block.norm
        scale = bn.weight.detach().cpu().double() / torch.sqrt(bn.running_var.cpu().double() + bn.eps)
        z = (z - bn.running_mean.cpu().double()) * scale + bn.bias.detach().cpu().double()
    return torch.relu(z)


def _fold(next_module: nn.Module, next_weight: torch.Tensor, removed: torch.Tensor,
          constants: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The next layer's bias shift ``(out,)`` from constant inputs, and whether it is exact.

    next_weight: Linear ``(out, in)`` with ``in = channels * positions``, or Conv2d
    ``(out, channels, kh, kw)``; removed: bool ``(channels,)``; constants: ``(n_removed,)``.
    """
    channels = removed.numel()
    if isinstance(next_module, nn.Linear):
        per_channel = next_weight.reshape(next_weight.shape[0], channels, -1)[:, removed].sum(-1)
        return per_channel @ constants, True
    per_channel = next_weight[:, removed].sum(dim=(2, 3))
    padding = next_module.padding
    unpadded = padding == "valid" or (not isinstance(padding, str) and all(p == 0 for p in padding))
    # Reflect/replicate/circular padding of a constant map is constant: exact as well.
    return per_channel @ constants, unpadded or next_module.padding_mode != "zeros"


def _drop_inputs(next_module: nn.Module, next_weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``next_weight`` without the input columns/channels of removed neurons."""
    if isinstance(next_module, nn.Conv2d):
        return next_weight[:, keep]
    out = next_weight.shape[0]
    return next_weight.reshape(out, keep.numel(), -1)[:, keep].reshape(out, -1)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _check_widths(layers: list[PrunableLayer], cfg: ModelConfig) -> None:
    expected = list(cfg.hidden_sizes) if cfg.type == "mlp" else [*cfg.conv_channels, *cfg.fc_sizes]
    widths = [layer.width for layer in layers]
    if widths != expected:
        raise UserError(f"model: the layer widths {widths} do not match the model config's {expected}")


def _smaller_config(cfg: ModelConfig, widths: list[int]) -> ModelConfig:
    if cfg.type == "mlp":
        return dataclasses.replace(cfg, hidden_sizes=tuple(widths))
    n_conv = len(cfg.conv_channels)
    return dataclasses.replace(cfg, conv_channels=tuple(widths[:n_conv]), fc_sizes=tuple(widths[n_conv:]))


def _small_state(masked: Net, small: Net, weights: list[torch.Tensor], biases: list[torch.Tensor],
                    keeps: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The small network's full state dict: kept rows of each layer (and of its BatchNorm)."""
    dtype = small.output.weight.dtype
    state: dict[str, torch.Tensor] = {}
    for i, (old, new) in enumerate(zip(prunable_layers(masked), prunable_layers(small))):
        keep = keeps[i]
        state[f"{new.name}.weight"] = weights[i][keep].to(dtype)
        state[f"{new.name}.bias"] = biases[i][keep].to(dtype)
        if isinstance(old.block.norm, nn.BatchNorm2d):
            prefix = new.name.rsplit(".", 1)[0] + ".norm"
            for key, value in old.block.norm.state_dict().items():
                state[f"{prefix}.{key}"] = value.detach().cpu() if value.dim() == 0 else value.detach().cpu()[keep]
    state["output.weight"] = weights[-1].to(dtype)
    state["output.bias"] = biases[-1].to(dtype)
    return state

