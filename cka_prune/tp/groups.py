"""What a Torch-Pruning group removes, and where its channels are read.

A group (DepGraph) is a list of (dependency, indices) items: every layer coupled to the root
layer's channels. A :class:`Site` is one recorded tensor the group's channels own columns of:
the output of a Conv2d/Linear whose output channels it removes (the default), or the input of
a layer that reads them (a consumer: an MLP's down projection, an attention's output
projection, a residual stream's norms; :mod:`cka_prune.tp.transformers`). Any other
parameterised layer in a default group makes it one CKA cannot score (:class:`Skip`).
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
class Tap:
    """A recorded tensor: the module's input (``reads``) or its output."""

    module: nn.Module
    reads: bool


@dataclass(frozen=True)
class Site:
    tap: Tap
    channels: list[int]   # the tensor's channels in the group
    positions: list[int]  # their positions in the group's importance vector


@dataclass(frozen=True)
class GroupKey:
    """A group's name, unique per group: its root layer and every named layer it holds (sorted)."""

    root: str
    layers: tuple[str, ...]

    def __str__(self) -> str:
        others = [name for name in self.layers if name != self.root]
        return self.root + (f" (with {', '.join(others)})" if others else "")


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


def group_key(group: tp.Group, names: dict[nn.Module, str]) -> GroupKey:
    layers = {module_name(item.dep.target.module, names, group) for item in group
              if parameterised(item.dep.target.module)}
    return GroupKey(module_name(group[0].dep.target.module, names, group), tuple(sorted(layers)))


def is_output(item) -> bool:  # item: one (dependency, indices) entry of a group
    return item.dep.handler in OUTPUT_FNS and isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))


def output_modules(group: tp.Group) -> list[nn.Module]:
    """The group's Conv2d/Linear layers whose output channels it removes."""
    return [item.dep.target.module for item in group if is_output(item)]


def _site(item, tap: Tap, position: dict[int, int], name: str) -> Site:
    if any(r is None for r in item.root_idxs):
        raise Skip(f"it maps channels of {name} to no root channel")
    return Site(tap, list(item.idxs), [position[r] for r in item.root_idxs])


def read_sites(group: tp.Group, modules: list[nn.Module], names: dict[nn.Module, str]) -> list[Site]:
    """The inputs of ``modules`` (each in the group), restricted to the group's channels."""
    position = {r: j for j, r in enumerate(group[0].root_idxs)}
    sites = {}
    for item in group:
        module = item.dep.target.module
        if module in modules and module not in sites and (not isinstance(module, (nn.Conv2d, nn.Linear))
                                                          or item.dep.handler in CONSUMER_FNS):
            sites[module] = _site(item, Tap(module, True), position, module_name(module, names, group))
    return [sites[m] for m in modules]


def output_sites(group: tp.Group, names: dict[nn.Module, str]) -> list[Site]:
    """The outputs of the group's Conv2d/Linear layers whose output channels it removes, with
    channel maps; :class:`Skip` when the group has layers CKA cannot score. Adds every layer's
    path to ``names`` (for later messages)."""
    position = {r: j for j, r in enumerate(group[0].root_idxs)}
    sites = []
    for item in group:
        module, fn = item.dep.target.module, item.dep.handler
        name = names.setdefault(module, module_name(module, names, group))
        if is_output(item):
            if isinstance(module, nn.Conv2d) and module.groups not in (1, module.out_channels):
                raise Skip(f"it contains the grouped convolution {name}, which CKA does not score")
            sites.append(_site(item, Tap(module, False), position, name))
        elif isinstance(module, nn.MultiheadAttention):
            raise Skip(f"it contains the attention {name} (MultiheadAttention); attention heads are not scored")
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) or not parameterised(module):
            continue  # a BatchNorm of a constant column is constant; parameterless ops follow
        elif fn in CONSUMER_FNS and isinstance(module, (nn.Conv2d, nn.Linear)):
            continue  # the next layers' inputs
        else:
            raise Skip(f"it contains {name} ({type(module).__name__}); CKA scores groups of Conv2d, "
                       "Linear and BatchNorm layers only")
    if not sites:
        raise Skip("it removes no Conv2d or Linear output channels")
    return sites
