"""Recording the scoring samples: hooks on the taps, rows, padding masks, a seeded reservoir.

Rows (samples): one per input image for a Conv2d; for any other tap (a Linear's output or
input, a norm's input), one per position of its leading dimensions: tokens (B, T, D) give B*T
rows, less the padding tokens when the batch has a mask (B, T) (``attention_mask``).

Bounded memory: each tap keeps, per call of its module, the ``max_samples`` rows of smallest
key, the keys drawn once per batch and number of rows from one seeded generator, so every tap
with the same rows per batch keeps the same rows (in the order they came). A batch adds only
its rows with a key below the tap's current largest kept key, so memory is set by
``max_samples`` and one batch, not by the calibration set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cka_prune.tp.groups import Tap

MaskFrom = str | Callable[[tuple, dict], torch.Tensor | None] | None


@dataclass(frozen=True)
class Recording:
    """What one recording keeps, on the CPU, per tap.

    outputs: (rows, channels, positions x calls); inputs: every call's input rows of an output
    tap's module (reference engine only); unequal: taps whose calls gave different numbers of
    rows; shapes: the modules' weight shapes when recorded (a pruned module's recording is stale).
    """

    outputs: dict[Tap, torch.Tensor]
    inputs: dict[nn.Module, list[torch.Tensor]]
    unequal: set[Tap]
    shapes: dict[nn.Module, tuple[int, ...] | None]


def weight_shape(module: nn.Module) -> tuple[int, ...] | None:
    weight = getattr(module, "weight", None)
    return tuple(weight.shape) if isinstance(weight, torch.Tensor) else None


def rows(x: torch.Tensor, module: nn.Module, mask: torch.Tensor | None) -> torch.Tensor:
    """One sample per row: a Conv2d's images, otherwise the leading dimensions flattened (tokens),
    the masked-out tokens dropped when ``mask`` has the leading dimensions' shape."""
    if isinstance(module, nn.Conv2d):
        return x
    if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
        return x[mask.to(x.device, torch.bool)]
    return x.reshape(-1, x.shape[-1])


def channels_last_positions(y: torch.Tensor) -> torch.Tensor:
    """An output in rows as (R, C, P): channel c owns y[:, c, :] (a Linear: P = 1)."""
    return y.reshape(y.shape[0], y.shape[1], -1)


class Reservoir:
    """The ``cap`` rows of smallest key seen so far, in arrival order (all rows when cap is None)."""

    def __init__(self, cap: int | None):
        self.cap = cap
        self.rows: torch.Tensor | None = None
        self.keys = torch.empty(0)
        self.seen = 0

    def add(self, y: torch.Tensor, keys: torch.Tensor) -> None:
        """Add a batch's rows y (R, ...) on any device, with their keys (R,)."""
        self.seen += len(y)
        if self.cap is not None and len(self.keys) >= self.cap:
            enter = (keys < self.keys.max()).nonzero().squeeze(1)  # only these can be kept
            y, keys = y[enter.to(y.device)], keys[enter]
        elif self.cap is not None and len(keys) > self.cap:  # keep at most cap of the batch before copying
            enter = torch.topk(keys, self.cap, largest=False).indices.sort().values
            y, keys = y[enter.to(y.device)], keys[enter]
        # A copy on the CPU: the model may change the output in place later (Conv2d -> ReLU(inplace=True)).
        y = y.detach().to("cpu", copy=True)
        self.rows = y if self.rows is None else torch.cat([self.rows, y])
        self.keys = torch.cat([self.keys, keys])
        if self.cap is not None and len(self.keys) > self.cap:
            keep = torch.topk(self.keys, self.cap, largest=False).indices.sort().values
            self.rows, self.keys = self.rows[keep], self.keys[keep]


def batch_mask(args: tuple, kwargs: dict, mask_from: MaskFrom) -> torch.Tensor | None:
    """The (B, T) mask of a model call: ``mask_from`` as a keyword argument or a key of a dict
    first argument, or ``mask_from(args, kwargs)``; None for none."""
    if mask_from is None:
        return None
    if callable(mask_from):
        return mask_from(args, kwargs)
    if mask_from in kwargs:
        return kwargs[mask_from]
    if args and isinstance(args[0], Mapping):
        return args[0].get(mask_from)
    return None


class Recorder:
    """Forward hooks keeping a :class:`Reservoir` per tap and call, batch by batch.

    A batch is one call of the model; within it a module called several times contributes
    every call. keep_inputs: also keep each output tap's module input (reference engine).
    """

    def __init__(self, model: nn.Module, taps: list[Tap], keep_inputs: bool, max_samples: int | None,
                 mask_from: MaskFrom, seed: int = 0):
        self.model, self.taps, self.keep_inputs = model, taps, keep_inputs
        self.max_samples, self.mask_from = max_samples, mask_from
        self.generator = torch.Generator().manual_seed(seed)
        self.outputs: dict[Tap, list[Reservoir]] = {tap: [] for tap in taps}
        self.inputs: dict[Tap, list[Reservoir]] = {tap: [] for tap in taps}
        self.calls: dict[Tap, int] = {}
        self.keys: dict[int, torch.Tensor] = {}  # this batch's keys by number of rows
        self.mask: torch.Tensor | None = None
        self.handles: list = []
        self.was_training, self.grad = model.training, torch.is_grad_enabled()  # restored on exit

    def _new_batch(self, module, args, kwargs):
        self.calls, self.keys = {}, {}
        self.mask = batch_mask(args, kwargs, self.mask_from)

    def _keys(self, n: int) -> torch.Tensor:
        if n not in self.keys:
            self.keys[n] = torch.rand(n, generator=self.generator)
        return self.keys[n]

    def _keep(self, tap: Tap, tensor: torch.Tensor, inputs: torch.Tensor | None) -> None:
        call = self.calls[tap] = self.calls.get(tap, 0) + 1
        if call > len(self.outputs[tap]):
            self.outputs[tap].append(Reservoir(self.max_samples))
            self.inputs[tap].append(Reservoir(self.max_samples))
        y = rows(tensor.detach(), tap.module, self.mask)
        keys = self._keys(len(y))
        self.outputs[tap][call - 1].add(y, keys)
        if inputs is not None:
            self.inputs[tap][call - 1].add(rows(inputs.detach(), tap.module, self.mask), keys)

    def _hook(self, tap: Tap):
        if tap.reads:
            return lambda module, args: self._keep(tap, args[0], None)
        return lambda module, args, output: self._keep(tap, output, args[0] if self.keep_inputs else None)

    def __enter__(self) -> Recorder:
        self.handles = [self.model.register_forward_pre_hook(self._new_batch, with_kwargs=True)]
        for tap in self.taps:
            register = tap.module.register_forward_pre_hook if tap.reads else tap.module.register_forward_hook
            self.handles.append(register(self._hook(tap)))
        self.was_training, self.grad = self.model.training, torch.is_grad_enabled()
        self.model.eval()
        torch.set_grad_enabled(False)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.model.train(self.was_training)
        torch.set_grad_enabled(self.grad)

    def result(self) -> Recording:
        outputs, inputs, unequal = {}, {}, set()
        for tap, calls in self.outputs.items():
            if not calls:
                continue  # a tap the inputs do not reach has no recording
            if len({reservoir.seen for reservoir in calls}) != 1:
                unequal.add(tap)
                continue
            # Every call's positions side by side; one call (the common case) is kept without a copy.
            outs = [channels_last_positions(reservoir.rows) for reservoir in calls]
            outputs[tap] = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
            if self.keep_inputs and not tap.reads:
                inputs[tap.module] = [reservoir.rows for reservoir in self.inputs[tap]]
        return Recording(outputs, inputs, unequal, {tap.module: weight_shape(tap.module) for tap in self.taps})


def batches(inputs: object, batch_size: int) -> Iterator[tuple[tuple, dict]]:
    """(args, kwargs) of each batch of ``inputs``: a tensor (N, ...), a tuple/list of them (the
    model's positional arguments), or a mapping (a dict, a ``BatchEncoding``: keyword arguments;
    non-tensor values passed as they are)."""
    if isinstance(inputs, torch.Tensor):
        for start in range(0, len(inputs), batch_size):
            yield (inputs[start:start + batch_size],), {}
    elif isinstance(inputs, (tuple, list)):
        for start in range(0, len(inputs[0]), batch_size):
            yield tuple(x[start:start + batch_size] for x in inputs), {}
    elif isinstance(inputs, Mapping):
        n = len(next(v for v in inputs.values() if isinstance(v, torch.Tensor)))
        for start in range(0, n, batch_size):
            yield (), {k: v[start:start + batch_size] if isinstance(v, torch.Tensor) else v
                       for k, v in inputs.items()}
    else:
        raise TypeError(f"CKAImportance.record: inputs must be a tensor, a tuple of tensors or a dict of them, "
                        f"got {type(inputs).__name__}")
