"""Transformer blocks: where an attention's heads and an MLP's hidden units are read.

Recognised by their layers' names (Hugging Face ViT/LLaMA ``q_proj k_proj v_proj o_proj``,
BERT ``query key value`` + ``output.dense``, GPT-2 ``c_attn c_proj``, timm ``qkv proj``; MLPs
``fc1 fc2``, ``gate_proj up_proj down_proj``, ``c_fc c_proj``, BERT ``intermediate.dense`` +
``output.dense``):

- Attention: what the output projection reads is the heads' outputs side by side, (rows, H * d),
  head h owning columns [h d, (h + 1) d). Removing head h (its q, k, v slices and the output
  projection's input slice) leaves every other head's output unchanged, so it zeroes exactly
  head h's columns of that input: a head is a column group of it, and the fast engine is exact.
- MLP: the down projection reads act(up) (or act(gate) * up); removing hidden unit u (its row
  of up/gate, its column of down) zeroes exactly column u of that input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ATTENTION_LAYERS = ((("q_proj", "k_proj", "v_proj"), "o_proj"), (("qkv",), "proj"), (("c_attn",), "c_proj"))
MLP_LAYERS = ((("fc1",), "fc2"), (("gate_proj", "up_proj"), "down_proj"), (("c_fc",), "c_proj"))
HEAD_DIM_NAMES = ("head_dim", "attention_head_size")
HEAD_COUNT_NAMES = ("num_heads", "num_attention_heads")


@dataclass(frozen=True)
class Attention:
    module: nn.Module  # holds the head count and head size
    projections: tuple[nn.Module, ...]  # q, k, v (or one fused qkv)
    out: nn.Module  # reads the heads' outputs side by side
    head_dim: int

    @property
    def heads(self) -> int:
        return self.out.in_features // self.head_dim


@dataclass(frozen=True)
class Mlp:
    up: tuple[nn.Module, ...]  # the layers whose output units the down projection reads (after act)
    down: nn.Module


@dataclass(frozen=True)
class Blocks:
    attentions: tuple[Attention, ...]
    mlps: tuple[Mlp, ...]

    def attention_of(self, modules: list[nn.Module]) -> Attention | None:
        """The attention whose projections' output channels ``modules`` (a group's) include."""
        return next((a for a in self.attentions if any(m in a.projections for m in modules)), None)

    def mlp_of(self, modules: list[nn.Module]) -> Mlp | None:
        """The MLP whose up layers are exactly the output layers ``modules`` (a group's)."""
        return next((m for m in self.mlps if modules and set(modules) <= set(m.up)), None)


def _children(module: nn.Module, names: tuple[str, ...]) -> tuple[nn.Module, ...] | None:
    found = tuple(getattr(module, name, None) for name in names)
    return found if all(isinstance(m, nn.Module) for m in found) else None


def _head_dim(module: nn.Module) -> int | None:
    return next((getattr(module, n) for n in HEAD_DIM_NAMES if isinstance(getattr(module, n, None), int)), None)


def find_blocks(model: nn.Module) -> Blocks:
    """The model's attentions (with a head size attribute) and MLPs, by their layers' names."""
    attentions, mlps = [], []
    for module in model.modules():
        head_dim = _head_dim(module)
        for inputs, output in ATTENTION_LAYERS:
            layers = _children(module, (*inputs, output))
            if layers and head_dim:
                attentions.append(Attention(module, layers[:-1], layers[-1], head_dim))
        bert_output = getattr(getattr(module, "output", None), "dense", None)
        if (layers := _children(module, ("query", "key", "value"))) and head_dim:
            # BERT: the self-attention's sibling output.dense reads it
            parent = next(p for p in model.modules() if getattr(p, "self", None) is module)
            attentions.append(Attention(module, layers, parent.output.dense, head_dim))
        for inputs, output in MLP_LAYERS:
            layers = _children(module, (*inputs, output))
            if layers and not head_dim:
                mlps.append(Mlp(layers[:-1], layers[-1]))
        if isinstance(getattr(getattr(module, "intermediate", None), "dense", None), nn.Module) and bert_output:
            mlps.append(Mlp((module.intermediate.dense,), bert_output))
    return Blocks(tuple(attentions), tuple(mlps))


def update_head_counts(model: nn.Module) -> dict[str, int]:
    """Set each recognised attention's head count attributes (``num_heads``,
    ``num_attention_heads``, ``all_head_size``, ``embed_dim``/``split_size`` of a fused qkv)
    from its layers' current widths, after a pruner step removed heads; returns {path: heads}.

    Head sizes stay (prune whole heads: ``prune_head_dims=False``).
    """
    names = {module: name for name, module in model.named_modules()}
    counts = {}
    for attention in find_blocks(model).attentions:
        heads, module = attention.heads, attention.module
        for name in HEAD_COUNT_NAMES:
            if isinstance(getattr(module, name, None), int):
                setattr(module, name, heads)
        if isinstance(getattr(module, "all_head_size", None), int):
            module.all_head_size = heads * attention.head_dim
        if len(attention.projections) == 1:  # fused qkv: split into q, k, v of heads * head_dim each
            for name in ("split_size", "embed_dim"):
                if isinstance(getattr(module, name, None), int):
                    setattr(module, name, heads * attention.head_dim)
        counts[names[module]] = heads
    return counts


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2's layers): a Linear with its weight stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def check_no_conv1d(model: nn.Module) -> None:
    """One line if the model has Hugging Face ``Conv1D`` layers (Torch-Pruning prunes them as
    convolutions, on the wrong weight axis)."""
    found = [name for name, module in model.named_modules() if is_conv1d(module)]
    if found:
        raise ValueError(f"CKAImportance: {found[0]} and {len(found) - 1} more are Hugging Face Conv1D layers, "
                         "which Torch-Pruning does not prune as Linear layers: convert them first with "
                         "cka_prune.conv1d_to_linear(model)")


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replace every Hugging Face ``Conv1D`` (y = x W + b, W (in, out)) by the ``nn.Linear`` computing
    the same (weight W^T), in place; returns the model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_conv1d(child):
                linear = nn.Linear(*child.weight.shape, bias=child.bias is not None,
                                   device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.T)
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
    return model
