"""Where a group is scored: its sites (recorded tensors) and its units (what the pruner removes).

Rules, first match:

1. Attention (the group removes output channels of an attention's q/k/v projections): scored
   at the output projection's input, one unit per head (:mod:`cka_prune.tp.transformers`),
   when the pruner removes whole heads (``num_heads`` given for the projections,
   ``prune_num_heads=True``, ``prune_head_dims=False``); otherwise left alone, since a head
   dimension's q/k columns act through the attention weights, not as columns of any tensor
   the next layer reads. A fused qkv projection (timm's ``qkv``) is scored the same way; where
   Torch-Pruning maps its heads to channels the output projection does not have (GPT-2's
   ``c_attn``, split by size), it raises (:class:`FusedHeads`) as Torch-Pruning's own
   importances do, before anything is pruned.
2. MLP (the group removes exactly an MLP's up/gate units): scored at the down projection's
   input, after the activation, one unit per hidden unit.
3. Residual stream (the group holds a LayerNorm/RMSNorm): with ``residual='cka'`` scored at
   the inputs of its norms (the stream each block reads), one unit per channel; otherwise left
   alone. Removing a stream channel zeroes its column of every stream state; the norms then
   rescale the rest, which this score holds fixed (as SliceGPT's rotation does), so it is an
   approximation where rules 1 and 2 are exact.
4. Otherwise: the outputs of the Conv2d/Linear layers whose output channels the group removes
   (:func:`cka_prune.tp.groups.output_sites`), one unit per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch_pruning as tp
from torch import nn

from cka_prune.tp.groups import Site, Skip, module_name, output_modules, output_sites, read_sites
from cka_prune.tp.transformers import Attention, Blocks

RESIDUAL = ("skip", "cka")


@dataclass(frozen=True)
class HeadPruning:
    """The pruner's head settings: the layers it knows heads of, and whether it removes whole heads."""

    layers: frozenset[nn.Module]
    whole_heads: bool

    @classmethod
    def of(cls, pruner: tp.pruner.BasePruner | None) -> HeadPruning:
        if pruner is None:
            return cls(frozenset(), False)
        return cls(frozenset(pruner.num_heads), pruner.prune_num_heads and not pruner.prune_head_dims)


@dataclass(frozen=True)
class Plan:
    sites: list[Site]
    units: list[list[int]]  # per unit, its positions in the group's importance vector


class FusedHeads(ValueError):
    """Heads of a fused qkv projection that Torch-Pruning maps out of range: it cannot prune them."""


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _channels(n: int) -> list[list[int]]:
    return [[c] for c in range(n)]


def _heads(group: tp.Group, attention: Attention, heads: HeadPruning, names: dict[nn.Module, str]) -> Plan:
    name = module_name(attention.module, names, group)
    if not set(attention.projections) <= heads.layers or not heads.whole_heads:
        raise Skip(f"it holds the heads of {name}; CKA scores whole heads: give the pruner num_heads for its "
                   "projections, prune_num_heads=True and prune_head_dims=False")
    (site,) = read_sites(group, [attention.out], names)
    if max(site.channels) >= attention.out.in_features:
        raise FusedHeads(f"CKAImportance: Torch-Pruning maps the heads of {name} to channels "
                         f"{attention.out.in_features}..{max(site.channels)} of its output projection, which has "
                         f"{attention.out.in_features} (a fused qkv split by size): it cannot prune them (its own "
                         "importances fail there too); leave these projections out of num_heads")
    if len({p.out_features for p in attention.projections}) != 1:
        raise Skip(f"{name} has fewer key/value heads than query heads (grouped-query attention), "
                   "whose heads CKA does not score")
    n, head_dim = len(group[0].idxs), attention.head_dim
    if sorted(site.positions) != list(range(n)) or n % head_dim:
        raise Skip(f"its channels are not whole heads of {name}")
    by_head = [[] for _ in range(n // head_dim)]
    for channel, position in zip(site.channels, site.positions):
        by_head[channel // head_dim].append(position)
    return Plan([site], by_head)


def plan(group: tp.Group, names: dict[nn.Module, str], blocks: Blocks, heads: HeadPruning, residual: str) -> Plan:
    """The group's :class:`Plan` (rules in the module docstring); :class:`Skip` if it is left alone."""
    n = len(group[0].idxs)
    outputs = output_modules(group)
    if (attention := blocks.attention_of(outputs)) is not None:
        return _heads(group, attention, heads, names)
    if (mlp := blocks.mlp_of(outputs)) is not None and any(item.dep.target.module is mlp.down for item in group):
        return Plan(read_sites(group, [mlp.down], names), _channels(n))
    norms = list(dict.fromkeys(item.dep.target.module for item in group if is_norm(item.dep.target.module)))
    if norms and residual != "cka":
        listed = ", ".join(sorted(module_name(m, names, group) for m in norms))
        raise Skip(f"it is a residual stream (norms {listed}); "
                   "residual='cka' scores it")
    if norms:
        return Plan(read_sites(group, norms, names), _channels(n))
    return Plan(output_sites(group, names), _channels(n))
