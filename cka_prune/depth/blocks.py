"""Finding, running, skipping and removing blocks.

A block is a child of an ``nn.Sequential`` or ``nn.ModuleList`` that holds at least two non-leaf
modules of one class (a ResNet stage, a ViT's ``blocks``, a decoder's ``layers``); it is removable
when its output has its input's shape. `find_blocks` tells that from one forward pass when given an
example, else from the layout alone: a block with a non-empty ``shortcut`` or ``downsample``
(a projection: the shape changes) is not removable.

A removed span of blocks becomes `Skip` modules: the first holds the patch (or nothing: the
identity), the others pass their input on. The container keeps its length, so the names of the
blocks left, and a Hugging Face layer's index into its cache, do not change.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from cka_prune.batches import run_batch

Span = tuple[str, ...]
Forward = Callable[[nn.Module, Any], Any]

NOT_REMOVABLE = "is not removable: its output shape {} differs from its input shape {}"


def label(span: Span | str) -> str:
    """A candidate's key: its block names joined by ``+`` (a single block: its name)."""
    return span if isinstance(span, str) else "+".join(span)


def check_batches(batches: Iterable[Any]) -> Iterable[Any]:
    """`batches`, which must be iterable more than once (a list, a DataLoader), not an iterator."""
    if iter(batches) is batches:
        raise ValueError("batches must be iterable more than once (a list or a DataLoader), not an iterator")
    return batches


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A block's input: its first positional argument, or ``hidden_states`` (Hugging Face)."""
    x = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(x, torch.Tensor):
        raise ValueError("a block's input must be a tensor, its first argument or hidden_states")
    return x


def first_tensor(output: Any) -> torch.Tensor:
    """A block's (or model's) representation: the tensor, a tuple's first element, or a mapping's
    ``logits`` (else its first value; a Hugging Face ModelOutput is a mapping)."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    elif isinstance(output, Mapping) and output:
        output = output["logits"] if "logits" in output else next(iter(output.values()))
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"expected a tensor, a tuple or a mapping of tensors, got {type(output).__name__}")
    return output


def rows(t: torch.Tensor) -> torch.Tensor:
    """Features per position, float64: (B, D) -> (B, D); (B, T, D) -> (B*T, D) (tokens);
    (B, C, H, W) -> (B*H*W, C) (a conv's channels at each pixel)."""
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)
    elif t.dim() not in (2, 3):
        raise ValueError(f"a block tensor must be (B, D), (B, T, D) or (B, C, H, W), got shape {tuple(t.shape)}")
    return t.reshape(-1, t.shape[-1]).double()


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode and without gradients, its training flags restored after. A `torch.export`
    program's module refuses `eval()` (its mode was fixed when it was traced): it runs as it is."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
    except NotImplementedError:  # refused before any submodule changed: nothing to restore
        modes = []
    try:
        with torch.no_grad():
            yield model
    finally:
        for m, mode in modes:
            m.train(mode)


def get_block(model: nn.Module, name: str) -> nn.Module:
    """The submodule `name`, or a one-line error naming it."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the model has no module named {name!r}") from None


CONTAINERS = (nn.Sequential, nn.ModuleList)


def _repeated_children(module: nn.Module) -> list[str]:
    """The keys of `module`'s children that are non-leaf modules of a class met at least twice
    (containers are stages, not blocks)."""
    kinds = {k: type(c) for k, c in module.named_children()
             if not isinstance(c, CONTAINERS) and any(True for _ in c.children())}
    counts = Counter(kinds.values())
    return [k for k, kind in kinds.items() if counts[kind] >= 2]


def _candidates(module: nn.Module, prefix: str = "") -> list[str]:
    """Block names in registration order; a container's blocks are not searched for more blocks."""
    if isinstance(module, CONTAINERS):
        keys = _repeated_children(module)
        if keys:
            return [f"{prefix}{k}" for k in keys]
    out = []
    for k, child in module.named_children():
        out += _candidates(child, f"{prefix}{k}.")
    return out


def _projects(block: nn.Module) -> bool:
    """Whether `block` has a ``shortcut`` or ``downsample`` module with parameters (a projection)."""
    for attribute in ("shortcut", "downsample"):
        path = getattr(block, attribute, None)
        if isinstance(path, nn.Module) and any(True for _ in path.parameters()):
            return True
    return False


def shapes(model: nn.Module, names: Sequence[str], example: Any, forward: Forward | None = None
           ) -> dict[str, tuple[torch.Size, torch.Size, int]]:
    """{name: (input shape, output shape, k)} from one forward pass on `example`, in the order the
    blocks ran; k is the length of the tuple the block returns (0: a tensor)."""
    seen: dict[str, tuple[torch.Size, torch.Size, int]] = {}
    inputs: dict[str, torch.Size] = {}

    def hooks(name: str):
        def pre(_m, args, kwargs):
            inputs[name] = block_input(args, kwargs).shape

        def post(_m, _args, _kwargs, out):
            seen[name] = (inputs[name], first_tensor(out).shape, len(out) if isinstance(out, tuple) else 0)
        return pre, post

    with block_hooks(model, names, hooks), evaluating(model):
        (forward or run_batch)(model, example)
    return seen


@contextlib.contextmanager
def block_hooks(model: nn.Module, names: Iterable[str],
                hooks: Callable[[str], tuple[Callable, Callable]]) -> Iterator[None]:
    """Within the block, each named block runs ``hooks(name) = (pre, post)`` (forward pre-hook and
    forward hook, both with kwargs) around its forward; they are removed on the way out."""
    handles = []
    try:
        for name in names:
            pre, post = hooks(name)
            block = get_block(model, name)
            handles += [block.register_forward_pre_hook(pre, with_kwargs=True),
                        block.register_forward_hook(post, with_kwargs=True)]
        yield
    finally:
        for h in handles:
            h.remove()


def find_blocks(model: nn.Module, example: Any = None, forward: Forward | None = None) -> list[str]:
    """Qualified names of the removable blocks, in forward order (module docstring).

    example: one input batch; when given, a block is removable when its output shape equals its
    input shape in a forward pass on it, and the order is the order the blocks ran. Without it, the
    layout decides (no ``shortcut``/``downsample`` projection) and the order is registration order.
    """
    names = _candidates(model)
    if example is None:
        return [n for n in names if not _projects(model.get_submodule(n))]
    seen = shapes(model, names, example, forward)
    return [n for n in seen if seen[n][0] == seen[n][1]]


def _position(name: str) -> tuple[str, int]:
    parent, _, key = name.rpartition(".")
    if not key.isdigit():
        raise ValueError(f"block {name!r} is not an item of an nn.Sequential or nn.ModuleList")
    return parent, int(key)


def contiguous_spans(names: Sequence[str], length: int, removed: Sequence[str] = ()) -> list[Span]:
    """Every span of `length` blocks of `names` that follow one another in the current network:
    items of one container whose items in between were all `removed` already. In forward order."""
    if length < 1:
        raise ValueError(f"a span needs at least 1 block, got {length}")
    gone = set(removed)
    alive = [n for n in names if n not in gone]
    if length == 1:  # a single block may be any submodule the user names
        return [(n,) for n in alive]
    spans = []
    for i in range(len(alive) - length + 1):
        span = tuple(alive[i:i + length])
        pos = [_position(n) for n in span]
        if all(p == pos[0][0] for p, _ in pos) and all(
                f"{pos[0][0]}.{k}" in gone for (_, a), (_, b) in zip(pos, pos[1:]) for k in range(a + 1, b)):
            spans.append(span)
    return spans


class Skip(nn.Module):
    """What replaces a removed block: its input passed on, through ``patch`` when one is given (a
    Linear on the last dimension, or a 1x1 Conv2d). It accepts and ignores the extra arguments a
    model gives its blocks (attention masks, position embeddings, a cache) and returns a
    k-tuple ``(y, None, ...)`` where the block returned one (``tuple_len`` = k), else the tensor."""

    def __init__(self, patch: nn.Module | None = None, tuple_len: int = 0):
        super().__init__()
        self.patch = patch
        self.tuple_len = tuple_len

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        x = block_input(args, kwargs)
        y = x if self.patch is None else self.patch(x)
        return (y,) + (None,) * (self.tuple_len - 1) if self.tuple_len else y


def _replace(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    parent, _, key = name.rpartition(".")
    container = model.get_submodule(parent)
    old = container._modules[key]
    container._modules[key] = module
    return old


def _like(block: nn.Module) -> dict[str, Any]:
    """The dtype and device of `block`'s first parameter or buffer (a patch takes them on)."""
    t = next(iter([*block.parameters(), *block.buffers()]), None)
    return {} if t is None else {"dtype": t.dtype, "device": t.device}


def skip_modules(model: nn.Module, spans: Sequence[Span], patches: Mapping[str, Any] | None = None,
                 tuple_outputs: Mapping[str, int] | None = None) -> dict[str, Skip]:
    """{block name: its Skip} for the removed `spans` of `model`; a span's patch (a `Patch`, keyed by
    the span's label) goes on its first block, in that block's dtype and on its device."""
    patches, tuple_outputs = patches or {}, tuple_outputs or {}
    out = {}
    for span in spans:
        patch = patches.get(label(span))
        for i, name in enumerate(span):
            module = patch.module().to(**_like(model.get_submodule(name))) if patch is not None and i == 0 else None
            out[name] = Skip(module, tuple_outputs.get(name, 0))
    return out


@contextlib.contextmanager
def skipped(model: nn.Module, spans: Sequence[Span], patches: Mapping[str, Any] | None = None,
            tuple_outputs: Mapping[str, int] | None = None) -> Iterator[nn.Module]:
    """`model` itself with the `spans` replaced by Skip modules (`skip_modules`), restored on exit."""
    skips = skip_modules(model, spans, patches, tuple_outputs)
    old = {name: _replace(model, name, skip) for name, skip in skips.items()}
    try:
        yield model
    finally:
        for name, module in old.items():
            _replace(model, name, module)


def remove(model: nn.Module, spans: Sequence[Span], patches: Mapping[str, Any] | None = None,
           tuple_outputs: Mapping[str, int] | None = None) -> nn.Module:
    """`model` itself with the `spans` replaced by Skip modules for good (their parameters dropped)."""
    for name, skip in skip_modules(model, spans, patches, tuple_outputs).items():
        _replace(model, name, skip)
    return model


def apply(model: nn.Module, plan: Any) -> nn.Module:
    """A deep copy of `model` with the plan's spans removed (`remove`): the forward of the dense
    model with those blocks skipped and their patches applied, without their parameters."""
    return remove(copy.deepcopy(model), plan.spans, plan.patches, plan.tuple_outputs)
