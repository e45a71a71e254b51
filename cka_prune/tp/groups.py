"""What a Torch-Pruning group removes: its output layers and their channel maps.

A group (DepGraph) is a list of (dependency, indices) items: every layer coupled to the root
layer's output channels. The layers whose *output* channels it removes (Conv2d/Linear pruned by
an output-channel function) carry the representation CKA scores; their consumers' inputs,
BatchNorms and parameterless ops follow those outputs. Any other parameterised layer makes the
group one CKA cannot score (:class:`Skip`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch_pruning as tp
from torch import nn

# Torch-Pruning's pruning functions of Conv2d/Linear layers by role. (A normalisation layer's
# in- and out-channel functions are one and the same, so norms are told apart by type.)
OUTPUT_FNS = (tp.prune_conv_out_channels, tp.prune_depthwise_conv_out_channels, tp.prune_linear_out_channels)
CONSUMER_FNS = (tp.prune_conv_in_channels, tp.prune_depthwise_conv_in_channels, tp.prune_linear_in_channels)


@dataclass(frozen=True)
class OutputLayer:
    module: nn.Module
    channels: list[int]   # the module's output channels in the group
    positions: list[int]  # their positions in the group's importance vector


class Skip(Exception):
    """Why a group cannot be scored (turned into None and a warning)."""


def parameterised(module: object) -> bool:
    return isinstance(module, nn.Parameter) or (
        isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False)))


def module_name(module: object, names: dict[nn.Module, str], group: tp.Group | None = None) -> str:
    """The module's path in the model (from ``names`` or the group's graph)."""
    if module in names:
        return names[module]
    for item in group or ():
        if item.dep.target.module is module and item.dep.target._name:
            return item.dep.target._name
    return type(module).__name__


def output_layers(group: tp.Group, names: dict[nn.Module, str]) -> list[OutputLayer]:
    """The group's Conv2d/Linear layers whose output channels it removes, with channel maps;
    :class:`Skip` when the group has layers CKA cannot score. Adds every layer's path to ``names``
    (for later messages)."""
    position = {r: j for j, r in enumerate(group[0].root_idxs)}
    layers = []
    for item in group:
        dep, idxs = item.dep, list(item.idxs)
        module, fn = dep.target.module, dep.handler
        name = names.setdefault(module, module_name(module, names, group))
        if fn in OUTPUT_FNS and isinstance(module, (nn.Conv2d, nn.Linear)):
            if isinstance(module, nn.Conv2d) and module.groups not in (1, module.out_channels):
                raise Skip(f"it contains the grouped convolution {name}, which CKA does not score")
            if any(r is None for r in item.root_idxs):
                raise Skip(f"it maps channels of {name} to no root channel")
            layers.append(OutputLayer(module, idxs, [position[r] for r in item.root_idxs]))
        elif isinstance(module, nn.MultiheadAttention):
            raise Skip(f"it contains the attention {name} (MultiheadAttention); attention heads are not scored")
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) or not parameterised(module):
            continue  # a BatchNorm of a constant column is constant; parameterless ops follow
        elif fn in CONSUMER_FNS and isinstance(module, (nn.Conv2d, nn.Linear)):
            continue  # the next layers' inputs
        else:
            raise Skip(f"it contains {name} ({type(module).__name__}); CKA scores groups of Conv2d, "
                       "Linear and BatchNorm layers only")
    if not layers:
        raise Skip("it removes no Conv2d or Linear output channels")
    if len({pos for layer in layers for pos in layer.positions}) != len(group[0].idxs):
        raise Skip("a channel of it appears in no Conv2d/Linear output")
    return layers
