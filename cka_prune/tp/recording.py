"""Recording the scoring samples: forward hooks on the output layers, rows, the kept subset.

Rows (samples): one per input image for a Conv2d; for a Linear, one per position of its output's
leading dimensions (tokens (B, T, D) give B*T rows). A module called several times contributes
every call, on the same rows, as more positions of its output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Recording:
    """What one recording keeps, on the CPU, per recorded layer.

    outputs: (rows, channels, positions x calls); inputs: every call's input rows (reference
    engine only); unequal: layers whose calls gave different numbers of rows; shapes: the layers'
    weight shapes when recorded (a pruned layer's recording is stale).
    """

    outputs: dict[nn.Module, torch.Tensor]
    inputs: dict[nn.Module, list[torch.Tensor]]
    unequal: set[nn.Module]
    shapes: dict[nn.Module, tuple[int, ...]]


def rows(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A recorded tensor with one sample per row: a Linear's leading dimensions are flattened."""
    return x.reshape(-1, x.shape[-1]) if isinstance(module, nn.Linear) else x


def channels_last_positions(y: torch.Tensor) -> torch.Tensor:
    """An output in rows as (R, C, P): channel c owns y[:, c, :] (a Linear: P = 1)."""
    return y.reshape(y.shape[0], y.shape[1], -1)


def subset(n_rows: int, cap: int | None) -> torch.Tensor | None:
    """The rows kept of n_rows (seeded, sorted; the same for every layer with n_rows), or None for all."""
    if cap is None or n_rows <= cap:
        return None
    return torch.randperm(n_rows, generator=torch.Generator().manual_seed(0))[:cap].sort().values


def join_calls(calls: list[list[torch.Tensor]], cap: int | None) -> list[torch.Tensor] | None:
    """Each call's batches joined into rows, capped to the shared subset; None if the calls' rows differ."""
    joined = [batches[0] if len(batches) == 1 else torch.cat(batches) for batches in calls]
    if len({len(y) for y in joined}) != 1:
        return None
    keep = subset(len(joined[0]), cap)
    return joined if keep is None else [y[keep] for y in joined]


@torch.no_grad()
def record_layers(model: nn.Module, layers: list[nn.Module], forward: Callable[[Callable[[], None]], None],
                  keep_inputs: bool, max_samples: int | None) -> Recording:
    """Run ``forward(new_batch)`` (which calls the model on each batch, calling ``new_batch()``
    before each) with hooks on ``layers``, in eval mode; the model's mode is restored."""
    outputs: dict[nn.Module, list[list[torch.Tensor]]] = {m: [] for m in layers}  # [call][batch]
    inputs_seen: dict[nn.Module, list[list[torch.Tensor]]] = {m: [] for m in layers}
    calls: dict[nn.Module, int] = {}

    def hook(module, args, output):
        call = calls[module] = calls.get(module, 0) + 1
        if call > len(outputs[module]):
            outputs[module].append([])
            inputs_seen[module].append([])
        # A copy: the model may change the output in place later (Conv2d -> ReLU(inplace=True)).
        outputs[module][call - 1].append(rows(output.detach().to("cpu", copy=True), module))
        if keep_inputs:
            inputs_seen[module][call - 1].append(rows(args[0].detach().to("cpu", copy=True), module))

    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    model.eval()
    try:
        forward(calls.clear)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    kept_outputs, kept_inputs, unequal = {}, {}, set()
    for module in (m for m in layers if outputs[m]):  # a layer the inputs do not reach has no recording
        joined = join_calls(outputs[module], max_samples)
        if joined is None:
            unequal.add(module)
            continue
        # Every call's positions side by side; one call (the common case) is kept without a copy.
        outs = [channels_last_positions(y) for y in joined]
        kept_outputs[module] = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        if keep_inputs:
            kept_inputs[module] = join_calls(inputs_seen[module], max_samples)
    return Recording(kept_outputs, kept_inputs, unequal, {m: tuple(m.weight.shape) for m in layers})
