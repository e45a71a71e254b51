"""What a pruned model costs: MACs and parameters (Torch-Pruning's counter), and latency
(``torch.utils.benchmark``, median seconds per forward)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.utils import benchmark

from cka_prune.batches import run_batch
from cka_prune.depth.blocks import evaluating


@dataclass(frozen=True)
class Cost:
    """Multiply-accumulates of one forward on the example, and parameters."""

    macs: int
    params: int


def _plain(example: Any) -> Any:
    """A mapping as a dict (Torch-Pruning's counter unpacks dicts only), a list as a tuple."""
    if isinstance(example, Mapping):
        return dict(example)
    return tuple(example) if isinstance(example, list) else example


def cost(model: nn.Module, example: Any) -> Cost:
    """Torch-Pruning's ``count_ops_and_params`` on `example` (a patch's Linear or 1x1 conv counts)."""
    with evaluating(model):
        macs, params = tp.utils.count_ops_and_params(model, _plain(example))
    return Cost(int(macs), int(params))


def batch_of(example: Any, size: int) -> Any:
    """`example`'s first sample repeated `size` times (every tensor of a tuple or mapping)."""
    if isinstance(example, torch.Tensor):
        return example[:1].repeat_interleave(size, dim=0)
    if isinstance(example, Mapping):
        return {k: batch_of(v, size) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return tuple(batch_of(v, size) for v in example)
    raise ValueError(f"the example must be a tensor, a tuple or a mapping of tensors, got {type(example).__name__}")


def latency(model: nn.Module, example: Any, batch_sizes: Sequence[int] = (1, 64), threads: int = 1,
            min_run_time: float = 0.5) -> dict[int, float]:
    """{batch size: median seconds of one forward} of `model` in eval mode without gradients, on
    `example`'s first sample repeated to each batch size, with `threads` threads."""
    out = {}
    with evaluating(model):
        for size in batch_sizes:
            batch = batch_of(example, size)
            run_batch(model, batch)  # warm-up: the first call allocates
            timer = benchmark.Timer(stmt="run_batch(model, batch)", num_threads=threads,
                                    globals={"run_batch": run_batch, "model": model, "batch": batch})
            out[int(size)] = float(timer.blocked_autorange(min_run_time=min_run_time).median)
    return out
