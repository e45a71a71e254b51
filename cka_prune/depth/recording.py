"""Streamed float64 statistics of the inputs and outputs of blocks and spans.

For a span (one block, or consecutive blocks) with input rows X (N, D) and output rows Y (N, D)
(features per position, :func:`cka_prune.depth.blocks.rows`), over every batch:

    n, sum x, sum y (D,),  X^T X, X^T Y, Y^T Y (D, D),
    sum_i cos_i and sum_i arccos(cos_i) / pi,   cos_i = x_i . y_i / (||x_i|| ||y_i||)

accumulate in float64, so memory is O(D^2) per span whatever the number of samples. A row with a
zero vector has cos 0 (1e-300 guards the norms). The centred moments follow:
Cxx = X^T X - n mx mx^T, Cxy = X^T Y - n mx my^T, Cyy = Y^T Y - n my my^T (mx, my the means).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cka_prune.batches import run_batch
from cka_prune.depth.blocks import (NOT_REMOVABLE, Forward, Span, block_hooks, block_input, check_batches,
                                    contiguous_spans, evaluating, first_tensor, label, rows)

Mask = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class Moments:
    """The statistics of one span (module docstring); conv: its tensors are (B, C, H, W)."""

    n: int
    sum_x: np.ndarray
    sum_y: np.ndarray
    xtx: np.ndarray
    xty: np.ndarray
    yty: np.ndarray
    cos_sum: float
    angle_sum: float
    conv: bool

    def centered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Cxx, Cxy, Cyy), each (D, D)."""
        mx, my = self.sum_x / self.n, self.sum_y / self.n
        return (self.xtx - self.n * np.outer(mx, mx), self.xty - self.n * np.outer(mx, my),
                self.yty - self.n * np.outer(my, my))

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sum_x / self.n, self.sum_y / self.n


class Accumulator:
    """Running sums of `Moments` over (N, D) float64 row batches; `linear=False` keeps only the
    cosine sums (the D x D products are what costs)."""

    def __init__(self, linear: bool = True):
        self.linear = linear
        self.n, self.cos_sum, self.angle_sum, self.conv = 0, 0.0, 0.0, False
        self.sums: list[torch.Tensor] | None = None

    def add(self, x: torch.Tensor, y: torch.Tensor, conv: bool = False) -> None:
        if x.shape != y.shape:
            raise ValueError(f"input rows {tuple(x.shape)} and output rows {tuple(y.shape)} differ")
        cos = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-300)
        self.n += x.shape[0]
        self.conv = conv
        self.cos_sum += float(cos.sum())
        self.angle_sum += float(torch.arccos(cos.clamp(-1.0, 1.0)).sum()) / math.pi
        if self.linear:
            terms = [x.sum(0), y.sum(0), x.T @ x, x.T @ y, y.T @ y]
            self.sums = terms if self.sums is None else [s + t for s, t in zip(self.sums, terms)]

    def moments(self) -> Moments:
        if self.n == 0:
            raise ValueError("no rows were recorded (no batches, or the mask dropped every position)")
        empty = np.zeros(0)
        sums = [s.cpu().numpy() for s in self.sums] if self.sums is not None else [empty] * 5
        return Moments(self.n, *sums, self.cos_sum, self.angle_sum, self.conv)


def masked_rows(t: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """`rows(t)` without the positions where the bool `keep` (B,), (B, T) or (B, H, W) is False."""
    r = rows(t)
    if keep is None:
        return r
    keep = keep.reshape(-1).bool()
    if keep.numel() != r.shape[0]:
        raise ValueError(f"the mask has {keep.numel()} positions, the block tensor {r.shape[0]}")
    return r[keep]


def record(model: nn.Module, names: Sequence[str], batches: Iterable[Any], forward: Forward | None = None,
           mask: Mask | None = None, *, span: int = 1, removed: Sequence[str] = (),
           spans: Sequence[Span] | None = None, linear: bool = True) -> dict[str, Moments]:
    """{span label: Moments} of each span's input and output over `batches`, one forward per batch.

    names: the blocks (forward order); span: the spans' length (``contiguous_spans(names, span,
    removed)``; 1: each block alone); spans: the spans themselves instead. A span's input is its
    first block's input, its output its last block's output, from the same forward pass.
    mask(batch): a bool tensor of the positions to keep; linear=False: the cosine sums only.
    """
    spans = list(spans) if spans is not None else contiguous_spans(names, span, removed)
    blocks = sorted({n for s in spans for n in s})
    ins: dict[str, torch.Tensor] = {}
    outs: dict[str, torch.Tensor] = {}

    def hooks(name: str):
        def pre(_m, args, kwargs):
            ins[name] = block_input(args, kwargs).detach().clone()  # a model may add to it in place

        def post(_m, _args, _kwargs, out):
            outs[name] = first_tensor(out)
        return pre, post

    acc = {label(s): Accumulator(linear) for s in spans}
    with block_hooks(model, blocks, hooks), evaluating(model):
        for batch in check_batches(batches):
            ins.clear()
            outs.clear()
            (forward or run_batch)(model, batch)
            keep = mask(batch) if mask is not None else None
            for s in spans:
                x, y = ins[s[0]], outs[s[-1]]
                if x.shape != y.shape:
                    raise ValueError(f"block {label(s)} " + NOT_REMOVABLE.format(tuple(y.shape), tuple(x.shape)))
                acc[label(s)].add(masked_rows(x, keep), masked_rows(y, keep), conv=x.dim() == 4)
    return {k: a.moments() for k, a in acc.items()}
