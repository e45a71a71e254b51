"""Compensation of a pruned layer's consumer (``prune.params.compensate``).

A removed neuron keeps its bias, so it outputs a constant (``relu(b)``, or ``relu(BN(b))``
for a conv block with BatchNorm). Its consumer, the layer that reads the pruned block's
output, then sees kept inputs plus constants. Compensation changes the consumer so that its
pre-activation on the fitting samples (the pass's scoring samples) is, in least squares, what
it was before the pass.

**Consumers.** The next Linear after a Linear; the first Linear after the last conv block
(through pooling and flattening: a channel owns H*W consecutive input columns); the next
Conv2d after a Conv2d. Each is a linear map of *rows*: a Linear's input (N, D); a Conv2d's
unfolded input (``F.unfold``: N*L rows, one per sample and output position, of C*kh*kw
columns, a channel owning kh*kw consecutive ones), so the conv is Z = A W^T + b with its
weight flattened to (O, C*kh*kw). A regression over those rows is, for a conv, one regression
per output channel over the kept input channels x kernel positions (ThiNet, Luo et al. 2017),
all sharing one Gram matrix.

**Notation** (one consumer in one pass; means over the rows).

- A: the consumer's input rows in the ORIGINAL network (the network at the start of the
  pass); W0, b0 its weight and bias then; Z = A W0^T + b0, the target.
- Â: its input rows in the CURRENT network (the producer pruned; upstream layers pruned and
  compensated earlier in the pass); W, b its current weight and bias (W = W0 unless something
  changed the consumer within the pass).
- K, R: the columns fed by kept and by removed units of the producer (every unit removed so
  far, not only in this pass).
- Σ(X, Y) = mean((X - mean X)^T (Y - mean Y)): centred (cross-)covariance.

**"bias".** Keep W. For fixed W, ||Â W^T + b' - Z||_F is smallest at
b' = mean(Z) - W mean(Â) = b0 + W0 mean(A) - W mean(Â), i.e. b + W (mean(A) - mean(Â)) when
W = W0. For a single pruned layer mean(Â_K) = mean(A_K), so this is
b + W[:, R] (mean(A_R) - c_R), c_R the constants the removed units output now.

**"lstsq".** Minimise ||Â_K W'_K^T + Â_R W_R^T + 1 b'^T - Z||_F^2 / n + λ ||W'_K||_F^2 over
W'_K and b', the columns W_R of removed units left as they are. For any W'_K the best bias
is b' = mean(Z) - W' mean(Â) over all columns: the intercept takes the means, including the
removed units' constant contribution W_R c_R. Substituting it centres everything:
min ||Zc - Â_Rc W_R^T - Â_Kc W'_K^T||^2 / n + λ ||W'_K||^2, whose normal equations are

    W'_K (Σ(Â_K, Â_K) + λ I) = Σ(Z, Â_K) - W_R Σ(Â_R, Â_K),   Σ(Z, Â_K) = W0 Σ(A, Â_K)

(Z is affine in A). Removed units output a constant, so Σ(Â_R, Â_K) = 0 and

    W'_K = W0 Σ(A, Â_K) (Σ(Â_K, Â_K) + λ I)^{-1},    b' = mean(Z) - W' mean(Â);

for a single pruned layer (Â_K = A_K) that is W0 C[:, K] (C[K, K] + λ I)^{-1}, C = Σ(A, A).
The W_R term is kept for a conv consumer with zero padding, whose border positions see the
padding's zeros instead of a removed channel's constant. λ = compensate_ridge x the mean of
the diagonal of Σ(Â_K, Â_K), so the ridge does not depend on the inputs' scale; with λ = 0
the system is solved by least squares (the minimum-norm solution where Σ(Â_K, Â_K) is
singular, e.g. for a kept unit that is dead on the fitting samples). W' = W0 is a candidate
when Â = A, and "bias" is "lstsq" restricted to W'_K = W_K, so on the fitting samples
lstsq <= bias <= none in reconstruction error up to the ridge.

The consumer may itself be a pruned layer: its removed rows have zero weights (their
pre-activation is their bias, a constant) and stay as they are; only its alive rows are
written, into ``weight_orig`` where it has a mask.

The streamed moments, the ridge solve and the error sums are the library's
(:mod:`cka_prune.compensate`, whose ``ConsumerRefit`` refits a Torch-Pruning model's Linear
consumers); the W_R term and the masks are this module's.

**Error.** ||Z_current - Z||_F / ||Z - mean(Z)||_F over the fitting rows (the denominator is
centred per output: the scale of Z's variation, which an offset does not change), recorded
before compensation (after pruning, the consumer unchanged) and after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cka_prune.compensate import ErrorSums, Moments, moments, ridge_solve
from src.data import Split
from src.models import Net, next_layer, prunable_layers
from src.pruning.masks import alive_neurons, refresh_weight
from src.pruning.scoring import run_hooked
from src.results import ConsumerFit

# Rows x columns of float64 per chunk when streaming a consumer's input rows (32 MiB).
CHUNK_ELEMENTS = 1 << 22


def bias_shift(target_weight: np.ndarray, target_bias: np.ndarray, weight: np.ndarray, m: Moments) -> np.ndarray:
    """The best bias for ``weight`` (O, d): b' = mean(Z) - W mean(Â), Z = A W0^T + b0 (W0: (O, d0)). (O,)"""
    return target_bias + target_weight @ m.mean_a - weight @ m.mean_h


def ridge_refit(target_weight: np.ndarray, target_bias: np.ndarray, weight: np.ndarray, m: Moments,
                keep: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """W', b' of "lstsq" (module docstring): the kept columns refit, the removed ones as in ``weight``.

    target_weight: (O, d0) W0; weight: (O, d) W; target_bias: (O,) b0; keep: bool (d,) the columns K.
    """
    kept, removed = np.flatnonzero(keep), np.flatnonzero(~keep)
    refit = weight.copy()
    if kept.size:
        rhs = target_weight @ m.cov_ah[:, kept] - weight[:, removed] @ m.cov_hh[np.ix_(removed, kept)]
        refit[:, kept] = ridge_solve(rhs, m.cov_hh[np.ix_(kept, kept)], ridge)
    return refit, bias_shift(target_weight, target_bias, refit, m)


def relative_error(current: torch.Tensor, original: torch.Tensor) -> float:
    """||current - original||_F / ||original - mean(original)||_F, means over the rows; (rows, O) each."""
    sums = ErrorSums()
    sums.add(current.double(), original.double())
    return sums.relative()


@dataclass(frozen=True)
class ConsumerTarget:
    """A pruned block's consumer as it was at the start of the pass.

    name: the consumer's module name; module: the consumer (a Linear or Conv2d);
    weight: (O, d) float64 W0, its effective weight flattened as its input rows; bias: (O,) b0;
    inputs: the pruned block's output on the fitting samples, (N, D) or (N, C, H, W): A before unfolding.
    """

    name: str
    module: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor
    inputs: torch.Tensor


def block_outputs(model: Net, indices: list[int], subset: Split, batch_size: int,
                  device: torch.device) -> dict[int, torch.Tensor]:
    """The outputs of prunable blocks ``indices`` on ``subset``, in eval mode: (N, ...) each."""
    blocks = model.blocks()
    outputs: dict[int, list[torch.Tensor]] = {i: [] for i in indices}
    handles = [blocks[i].register_forward_hook(lambda m, a, o, i=i: outputs[i].append(o.detach()))
               for i in indices]
    run_hooked(model, subset, batch_size, device, handles)
    return {i: torch.cat(chunks) for i, chunks in outputs.items()}


def consumer_targets(model: Net, indices: list[int], subset: Split, batch_size: int,
                     device: torch.device) -> dict[int, ConsumerTarget]:
    """Per pruned block of ``indices``, its consumer and that consumer's input, as they are now."""
    names = {id(module): name for name, module in model.named_modules()}
    inputs = block_outputs(model, indices, subset, batch_size, device)
    targets = {}
    for i in indices:
        module = next_layer(model, i)
        targets[i] = ConsumerTarget(names[id(module)], module, _effective_weight(module),
                                    module.bias.detach().double().clone(), inputs[i])
    return targets


def compensate(model: Net, index: int, target: ConsumerTarget, subset: Split, method: str, ridge: float,
               batch_size: int, device: torch.device) -> ConsumerFit:
    """Compensate the consumer of prunable block ``index`` by ``method`` ("bias" or "lstsq"), in place,
    towards ``target``; the relative errors of its pre-activation before and after."""
    module = target.module
    current = block_outputs(model, [index], subset, batch_size, device)[index]
    alive = alive_neurons(prunable_layers(model)[index].block.layer)
    weight, bias = _effective_weight(module), module.bias.detach().double()
    m = moments(row_pairs(module, target.inputs, current))
    w0, b0, w = (t.cpu().numpy() for t in (target.weight, target.bias, weight))
    if method == "bias":
        fitted = w, bias_shift(w0, b0, w, m)
    else:  # a unit owns weight.shape[1] // units consecutive columns (1, H*W or kh*kw)
        keep = alive.cpu().numpy().repeat(weight.shape[1] // alive.numel())
        fitted = ridge_refit(w0, b0, w, m, keep, ridge)
    new_weight, new_bias = (torch.from_numpy(t).to(weight.device) for t in fitted)
    before, after = ErrorSums(), ErrorSums()
    for a, h in row_pairs(module, target.inputs, current):
        z = a.double() @ target.weight.T + target.bias
        before.add(h.double() @ weight.T + bias, z)
        after.add(h.double() @ new_weight.T + new_bias, z)
    _write(module, new_weight, new_bias)
    return ConsumerFit(consumer=target.name, error_before=before.relative(), error_after=after.relative())


def _effective_weight(module: nn.Module) -> torch.Tensor:
    """(O, d) float64: the weight the forward pass uses, flattened as the module's input rows."""
    weight = module.weight_orig * module.weight_mask if hasattr(module, "weight_mask") else module.weight
    return weight.detach().double().flatten(1).clone()


def rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The consumer's input rows (module docstring): (N, D) for a Linear, (N*L, C*kh*kw) for a Conv2d."""
    if isinstance(module, nn.Linear):
        return x.flatten(1)
    if module.dilation != (1, 1):
        unfolded = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                            stride=module.stride)  # (N, C*kh*kw, L)
        return unfolded.transpose(1, 2).flatten(0, 1)
    # The same rows as F.unfold, from strided views: many times faster than its CPU im2col.
    (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
    patches = F.pad(x, (pw, pw, ph, ph)).unfold(2, kh, sh).unfold(3, kw, sw)  # (N, C, H', W', kh, kw)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)


def row_pairs(module: nn.Module, original: torch.Tensor,
              current: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Row blocks of (A, Â), a few samples at a time, so no (N*L, d) matrix is ever whole."""
    per_sample = rows(module, original[:1]).numel()
    step = max(1, CHUNK_ELEMENTS // per_sample)
    for start in range(0, original.shape[0], step):
        yield rows(module, original[start:start + step]), rows(module, current[start:start + step])


def _write(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Write the alive rows of ``weight`` (O, d) and ``bias`` into ``module``; removed rows stay as they are."""
    alive = alive_neurons(module)
    stored = module.weight_orig if hasattr(module, "weight_mask") else module.weight
    with torch.no_grad():
        stored[alive] = weight[alive].view_as(stored[alive]).to(stored.dtype)
        module.bias[alive] = bias[alive].to(module.bias.dtype)
    if hasattr(module, "weight_mask"):
        refresh_weight(module)
