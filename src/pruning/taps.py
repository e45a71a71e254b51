"""The forward hooks of one scoring pass (`Taps`): each captures a tensor from every batch, kept in
memory or streamed into its centred covariance, and hands it over once the pass has run."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from cka_prune.interactions import CovarianceAccumulator

# What a hook captured over the pass: (N, D) kept in memory, or (D, D) streamed centred covariance.
Captured = Callable[[], tuple[torch.Tensor | None, np.ndarray | None]]


class Taps:
    """The forward hooks of one scoring pass and what each captures from every batch."""

    def __init__(self) -> None:
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def hook(self, module: nn.Module, hook: Callable) -> None:
        self.handles.append(module.register_forward_hook(hook))

    def flat(self, module: nn.Module, streams: bool, *, of_input: bool = False) -> Captured:
        """``module``'s output (or input) flattened to (N, D) on the CPU; with ``streams`` only its
        centred float64 covariance is kept (`CovarianceAccumulator`)."""
        kept: list[torch.Tensor] = []
        accumulator = CovarianceAccumulator()

        def capture(m: nn.Module, a: tuple, o: torch.Tensor) -> None:
            flat = (a[0] if of_input else o).detach().flatten(1).cpu()
            if streams:
                accumulator.update(flat)
            else:
                kept.append(flat)
        self.hook(module, capture)
        return lambda: (None, accumulator.centered()) if streams else (torch.cat(kept), None)

    def inputs(self, module: nn.Module) -> Callable[[], torch.Tensor]:
        """``module``'s input (N, ...) as it is, for the reference engine to re-run it."""
        kept: list[torch.Tensor] = []
        self.hook(module, lambda m, a, o: kept.append(a[0].detach()))
        return lambda: torch.cat(kept)
