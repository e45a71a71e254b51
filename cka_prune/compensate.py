"""Least-squares refit of the Linear layers that read pruned channels (the *consumers*).

After a Torch-Pruning step has removed channels, each Linear whose input features shrank (a
transformer's ``fc2``/``down_proj``/BERT ``output.dense`` after MLP pruning, the attention output
projection after head pruning) is refit so that its output on calibration data is, in least
squares, what it was before the step. No retraining: one forward pass of the calibration batches
per consumer and one small linear solve.

**Notation** (one consumer; means over the rows). A row is one sample of a consumer's input or
output: for a (B, T, D) input each token is a row, padding tokens (``attention_mask`` == 0)
excluded.

- Z: (n, O) the consumer's outputs before the step (the dense network), recorded.
- Â: (n, d) its inputs after the step, consumers earlier in the model already refit.
- Σ(X, Y) = mean((X - mean X)^T (Y - mean Y)): centred (cross-)covariance.

**With a bias.** Minimise ||Â W'^T + 1 b'^T - Z||_F^2 / n + λ ||W'||_F^2. For any W' the best
b' is mean(Z) - W' mean(Â); substituting it centres both sides, and the normal equations are
W' (Σ(Â, Â) + λ I) = Σ(Z, Â):

    W' = Σ(Z, Â) (Σ(Â, Â) + λ I)^{-1},    b' = mean(Z) - W' mean(Â).

Z = A W0^T + b0 for the consumer's dense input A and weights W0, b0, so Σ(Z, Â) = W0 Σ(A, Â):
the harness's form (``src.pruning.compensate``). Recording Z instead of A keeps O columns instead
of d0 (a quarter for ``fc2``/``down_proj``).

**Without a bias** (LLaMA's projections). No intercept: min ||Â W'^T - Z||_F^2 / n + λ ||W'||_F^2,
whose normal equations are the same with the second moments taken about zero
(:func:`about_zero`), and no b'.

λ = ridge x the mean of the diagonal of the Gram, so the ridge does not depend on the inputs'
scale; at λ = 0 the system is solved by least squares (the minimum-norm solution where the Gram
is singular, e.g. for a unit dead on the calibration data).

**Consumers.** The Linear layers whose input features the pruner's groups remove (Torch-Pruning's
``prune_linear_in_channels`` in a group); after the step those whose inputs shrank are refit. One
whose output features were pruned too is fit on the dense outputs it still computes, known when the
step runs through :meth:`ConsumerRefit.step`. Convolutions are not refit here (the harness's
``src.pruning.physical_compensate`` unfolds them): a pruner that removes a convolution's input
channels is refused when the refit is made.

**Rows kept.** At most ``max_rows`` rows per consumer: while recording, every row gets a seeded
random key and the ``max_rows`` smallest keys are kept (a uniform subset without replacement;
memory ``max_rows`` x O plus one batch). After the step, the rows at the same positions of the
same batches are read, so :meth:`ConsumerRefit.fit` must get the batches recorded, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from cka_prune.batches import run_batch

# Rows per block when the moments and errors are streamed in float64.
BLOCK_ROWS = 4096
# Torch-Pruning's functions that remove a convolution's input channels: a consumer not refit here.
CONV_CONSUMER_FNS = (tp.prune_conv_in_channels, tp.prune_depthwise_conv_in_channels)


@dataclass(frozen=True)
class Moments:
    """First and second moments of the paired rows (A, Â), float64.

    mean_a: (d0,) mean(A); mean_h: (d,) mean(Â); cov_ah: (d0, d) Σ(A, Â); cov_hh: (d, d) Σ(Â, Â).
    (A: the target's rows, the consumer's outputs Z here and its original inputs in the harness.)
    """

    mean_a: np.ndarray
    mean_h: np.ndarray
    cov_ah: np.ndarray
    cov_hh: np.ndarray


def moments(pairs: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> Moments:
    """:class:`Moments` of row blocks ``(a, h)`` ((rows, d0), (rows, d)), streamed.

    Rows are shifted by the first block's means before the products are summed, so centring
    subtracts a small correction even for inputs with a large mean (ReLU outputs).
    """
    count, shift_a, shift_h = 0, None, None
    for a, h in pairs:
        a, h = a.double(), h.double()
        if shift_a is None:
            shift_a, shift_h = a.mean(dim=0), h.mean(dim=0)
            sum_a, sum_h = torch.zeros_like(shift_a), torch.zeros_like(shift_h)
            gram_ah, gram_hh = a.new_zeros(a.shape[1], h.shape[1]), h.new_zeros(h.shape[1], h.shape[1])
        a, h = a - shift_a, h - shift_h
        sum_a += a.sum(dim=0)
        sum_h += h.sum(dim=0)
        gram_ah += a.T @ h
        gram_hh += h.T @ h
        count += a.shape[0]
    if count == 0:
        raise ValueError("moments: no rows")
    mean_a, mean_h = sum_a / count, sum_h / count
    cov_ah = gram_ah / count - torch.outer(mean_a, mean_h)
    cov_hh = gram_hh / count - torch.outer(mean_h, mean_h)
    return Moments(*(t.cpu().numpy() for t in (mean_a + shift_a, mean_h + shift_h, cov_ah, cov_hh)))


def about_zero(m: Moments) -> Moments:
    """``m`` with the second moments taken about zero instead of the means, and zero means: the
    fit on them is the fit without an intercept (module docstring)."""
    return Moments(np.zeros_like(m.mean_a), np.zeros_like(m.mean_h), m.cov_ah + np.outer(m.mean_a, m.mean_h),
                   m.cov_hh + np.outer(m.mean_h, m.mean_h))


def ridge_solve(cross: np.ndarray, gram: np.ndarray, ridge: float) -> np.ndarray:
    """W' (O, d) solving W' (gram + λ I) = cross, λ = ``ridge`` x mean(diag(gram)), by least squares.

    cross: (O, d) Σ(Z, Â); gram: (d, d) Σ(Â, Â) (module docstring).
    """
    lam = ridge * float(np.mean(np.diag(gram)))
    solution, *_ = np.linalg.lstsq(gram + lam * np.eye(len(gram)), cross.T, rcond=None)
    return solution.T


def linear_refit(m: Moments, bias: bool, ridge: float) -> tuple[np.ndarray, np.ndarray | None]:
    """W' (O, d) and b' (O,) (None without a bias) from the moments of (Z, Â) (module docstring)."""
    if not bias:
        m = about_zero(m)
    weight = ridge_solve(m.cov_ah, m.cov_hh, ridge)
    return weight, (m.mean_a - weight @ m.mean_h) if bias else None


class ErrorSums:
    """Streams ||current - original||_F^2 and the centred ||original - mean(original)||_F^2."""

    def __init__(self) -> None:
        self.squared_error = 0.0
        self.squared = 0.0
        self.column_sums: torch.Tensor | float = 0.0
        self.rows = 0

    def add(self, current: torch.Tensor, original: torch.Tensor) -> None:
        self.squared_error += float(((current - original) ** 2).sum())
        self.squared += float((original ** 2).sum())
        self.column_sums = self.column_sums + original.sum(dim=0)
        self.rows += original.shape[0]

    def relative(self) -> float:
        centred = self.squared - float((self.column_sums ** 2).sum()) / self.rows
        return float(np.sqrt(self.squared_error / centred)) if centred > 0 else float("nan")


@dataclass(frozen=True)
class LayerRefit:
    """One consumer's refit: ||output - dense output||_F / ||dense output - its mean||_F on the rows
    kept, with the pruned weights (before) and the refit ones (after)."""

    name: str
    error_before: float
    error_after: float


def token_rows(x: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    """(rows, features) on the CPU: one row per position of ``x``'s leading dimensions, those where
    ``mask`` (shaped like the leading dimensions) is 0 left out."""
    rows = x.detach().reshape(-1, x.shape[-1])
    if mask is not None:
        if tuple(mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"ConsumerRefit: the mask has shape {tuple(mask.shape)}, but {name}'s rows come from "
                             f"{tuple(x.shape)}: one mask value per row (its leading dimensions) is needed")
        rows = rows[mask.reshape(-1).to(rows.device) != 0]
    return rows.to("cpu", torch.promote_types(rows.dtype, torch.float32), copy=True)


class _Sample:
    """A seeded uniform subset of at most ``cap`` rows of a stream of row blocks (module docstring);
    after :meth:`finish`, ``positions`` (sorted, in the stream) and ``rows`` in that order."""

    def __init__(self, cap: int | None, seed: int):
        self.cap, self.generator = cap, torch.Generator().manual_seed(seed)
        self.seen = 0
        self.keys = torch.empty(0, dtype=torch.float64)
        self.positions = torch.empty(0, dtype=torch.long)
        self.rows: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        n = len(rows)
        self.keys = torch.cat([self.keys, torch.rand(n, generator=self.generator, dtype=torch.float64)])
        self.positions = torch.cat([self.positions, torch.arange(self.seen, self.seen + n)])
        self.rows = rows if self.rows is None else torch.cat([self.rows, rows])
        self.seen += n
        if self.cap is not None and len(self.keys) > self.cap:
            kept = self.keys.topk(self.cap, largest=False).indices
            self.keys, self.positions, self.rows = self.keys[kept], self.positions[kept], self.rows[kept]

    def finish(self) -> None:
        order = self.positions.argsort()
        self.keys, self.positions = self.keys[order], self.positions[order]
        self.rows = self.rows[order] if self.rows is not None else None


class _Reader:
    """The rows of a stream of blocks at ``positions`` (sorted), read block by block."""

    def __init__(self, positions: torch.Tensor):
        self.positions, self.seen, self.rows = positions, 0, []

    def add(self, rows: torch.Tensor) -> None:
        inside = self.positions[(self.positions >= self.seen) & (self.positions < self.seen + len(rows))]
        self.rows.append(rows[inside - self.seen])
        self.seen += len(rows)


def linear_consumers(model: nn.Module, pruner: tp.pruner.BasePruner | None = None) -> dict[str, nn.Linear]:
    """The Linear layers whose input features ``pruner``'s groups remove (without a pruner: every
    Linear), by name in module order; a convolution whose input channels they remove is an error."""
    linear = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if pruner is None:
        return linear
    read = set()
    groups = pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types)
    for group in groups:
        for item in group:
            module, fn = item.dep.target.module, item.dep.handler
            if fn in CONV_CONSUMER_FNS:
                raise ValueError(f"ConsumerRefit refits Linear consumers only: the pruner removes input channels of "
                                 f"the convolution {item.dep.target._name or type(module).__name__}")
            if fn == tp.prune_linear_in_channels:
                read.add(module)
    return {name: m for name, m in linear.items() if m in read}


class ConsumerRefit:
    """Records the consumers' outputs before a pruner step and refits them after it (module docstring).

    Use::

        with ConsumerRefit(model, pruner) as refit:  # the forward passes in here are recorded
            for batch in calib:
                model(**batch)
        refit.step(pruner)                           # or pruner.step(), where no consumer loses outputs
        fits = refit.fit(calib)                      # {name: LayerRefit} of the consumers refit

    pruner: whose groups give the consumers (None: every Linear). ridge: λ's factor. max_rows:
    the most rows kept per consumer (None: all). mask_key: the keyword of the model's call whose
    value masks rows (padding); a mask must have the shape of the consumers' inputs' leading
    dimensions. seed: of the rows kept. The model runs in eval mode while it is recorded and fit.
    """

    def __init__(self, model: nn.Module, pruner: tp.pruner.BasePruner | None = None, *, ridge: float = 1e-3,
                 max_rows: int | None = 4096, mask_key: str = "attention_mask", seed: int = 0):
        if ridge < 0 or (max_rows is not None and max_rows < 1):
            raise ValueError(f"ConsumerRefit: ridge must be >= 0 and max_rows >= 1 or None, "
                             f"got {ridge!r}, {max_rows!r}")
        self.model, self.ridge, self.max_rows, self.mask_key, self.seed = model, ridge, max_rows, mask_key, seed
        self.consumers = linear_consumers(model, pruner)
        self.targets: dict[str, _Sample] = {}
        self.shapes: dict[str, tuple[int, int]] = {}  # (out_features, in_features) when recorded
        self.kept_outputs: dict[str, list[int]] = {}  # the recorded output features still there, by refit.step
        self._mask: torch.Tensor | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._was_training = False

    def __enter__(self) -> ConsumerRefit:
        self.targets = {name: _Sample(self.max_rows, self.seed) for name in self.consumers}
        self.shapes = {name: (m.out_features, m.in_features) for name, m in self.consumers.items()}
        self.kept_outputs = {name: list(range(m.out_features)) for name, m in self.consumers.items()}
        self._hook({name: target.add for name, target in self.targets.items()}, outputs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._unhook()
        for target in self.targets.values():
            target.finish()

    def _hook(self, sinks: dict[str, Callable[[torch.Tensor], None]], outputs: bool) -> None:
        """Hooks that pass each named consumer's rows (its outputs, or inputs) to its sink."""
        def mask(module, args, kwargs):
            self._mask = kwargs.get(self.mask_key)

        def rows(name):
            if outputs:
                return lambda m, args, out: sinks[name](token_rows(out, self._mask, name))
            return lambda m, args: sinks[name](token_rows(args[0], self._mask, name))

        modules = dict(self.model.named_modules())
        self._handles = [self.model.register_forward_pre_hook(mask, with_kwargs=True)]
        for name in sinks:
            module = modules[name]
            self._handles.append(module.register_forward_hook(rows(name)) if outputs
                                 else module.register_forward_pre_hook(rows(name)))
        self._was_training = self.model.training
        self.model.eval()

    def _unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._mask = [], None
        self.model.train(self._was_training)

    def step(self, pruner: tp.pruner.BasePruner) -> None:
        """``pruner.step()``, noting which output features of each consumer remain (a consumer whose
        outputs are pruned too is fit on those: the dense outputs' columns it still computes)."""
        modules = {m: name for name, m in self.consumers.items()}
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                name = modules.get(dep.target.module)
                if name is not None and dep.handler == tp.prune_linear_out_channels:
                    removed = {getattr(i, "idx", i) for i in idxs}
                    self.kept_outputs[name] = [k for j, k in enumerate(self.kept_outputs[name]) if j not in removed]
            group.prune()

    def refittable(self) -> list[str]:
        """The recorded consumers whose input features shrank since, in module order; a consumer whose
        output features changed other than through :meth:`step` is an error."""
        names = []
        for name, module in self.consumers.items():
            (outputs, inputs), kept = self.shapes[name], self.kept_outputs[name]
            if module.in_features == inputs:
                continue
            if module.out_features != len(kept):
                raise ValueError(f"ConsumerRefit: {name} lost output features too "
                                 f"({outputs} -> {module.out_features}); run the step as refit.step(pruner) so the "
                                 "outputs it keeps are known")
            names.append(name)
        return names

    @torch.no_grad()
    def fit(self, batches: Iterable[Any],
            forward: Callable[[nn.Module, Any], Any] = run_batch) -> dict[str, LayerRefit]:
        """Refit each consumer whose inputs shrank (in place, in module order, each on the network as
        the consumers before it left it) on ``batches``: the recorded ones in the same order, re-iterable
        (a list, or a DataLoader that does not shuffle: rows are paired by position), each run as
        ``forward(model, batch)``. Each refit consumer's :class:`LayerRefit`."""
        if not self.targets:
            raise ValueError("ConsumerRefit: nothing recorded; run the calibration batches inside `with refit:` first")
        fits = {}
        for name in self.refittable():
            target = self.targets[name]
            reader = _Reader(target.positions)
            self._hook({name: reader.add}, outputs=False)
            try:
                for batch in batches:
                    forward(self.model, batch)
            finally:
                self._unhook()
            if reader.seen != target.seen:
                raise ValueError(f"ConsumerRefit: {name} read {reader.seen} rows in fit but {target.seen} when "
                                 "recorded; fit needs the recorded batches again, in order (a list, or a DataLoader "
                                 "that does not shuffle; not an iterator)")
            fits[name] = refit_layer(self.consumers[name], target.rows[:, self.kept_outputs[name]],
                                     torch.cat(reader.rows), self.ridge, name)
        return fits


def refit_layer(layer: nn.Linear, target: torch.Tensor, inputs: torch.Tensor, ridge: float, name: str) -> LayerRefit:
    """Refit ``layer`` (in place) so that its output on ``inputs`` (n, d) Â is ``target`` (n, O) Z in
    least squares (module docstring); the relative errors before and after."""
    blocks = list(zip(target.split(BLOCK_ROWS), inputs.split(BLOCK_ROWS)))
    weight, bias = linear_refit(moments(iter(blocks)), layer.bias is not None, ridge)
    new = [torch.from_numpy(weight), None if bias is None else torch.from_numpy(bias)]
    old = [layer.weight.detach().double().cpu(), None if layer.bias is None else layer.bias.detach().double().cpu()]
    before, after = ErrorSums(), ErrorSums()
    for z, h in blocks:
        z, h = z.double(), h.double()
        before.add(torch.nn.functional.linear(h, *old), z)
        after.add(torch.nn.functional.linear(h, *new), z)
    with torch.no_grad():
        layer.weight.copy_(new[0])
        if bias is not None:
            layer.bias.copy_(new[1])
    return LayerRefit(name, before.relative(), after.relative())
