"""Finding, skipping and removing blocks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

Span = tuple[str, ...]


def label(span: Span | str) -> str:
    """A candidate's key: its block names joined by ``+`` (a single block: its name)."""
    return span if isinstance(span, str) else "+".join(span)


def find_blocks(model: nn.Module, example=None, forward=None) -> list[str]:
    """Qualified names of the removable blocks, in forward order (see the package docstring)."""
    raise NotImplementedError


def contiguous_spans(names: Sequence[str], length: int, removed: Sequence[str] = ()) -> list[Span]:
    """Every span of `length` consecutive blocks among `names`, given the blocks already `removed`."""
    raise NotImplementedError


class Skip(nn.Module):
    """What replaces a removed block: the identity, or the patch map x -> x W + b."""


def skipped(model: nn.Module, spans, patches=None):
    """Context manager: `model` run with `spans` replaced by Skip (and their patches), in place."""
    raise NotImplementedError


def apply(model: nn.Module, plan) -> nn.Module:
    """A deep copy of `model` with the plan's blocks replaced by Skip modules (their patches)."""
    raise NotImplementedError
