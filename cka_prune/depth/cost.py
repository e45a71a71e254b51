"""MACs, parameters and latency of a model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int


def cost(model, example) -> Cost:
    """Torch-Pruning's count_ops_and_params on `example`."""
    raise NotImplementedError


def latency(model, example, batch_sizes=(1, 64), threads: int = 1) -> dict[int, float]:
    """Median seconds per forward at each batch size (torch.utils.benchmark)."""
    raise NotImplementedError
