"""Compensation on the physical (Torch-Pruning) path: ``prune.params.compensate`` for the zoo models.

After a physical pass (:func:`src.pruning.physical.physical_pass`) has removed channels, every
Conv2d/Linear whose input channels it removed (a *consumer*: the layers Torch-Pruning's groups
shrank on their input side, :attr:`GroupRecord.consumers`; a residual add feeds several) is
changed so that its pre-activation on the fitting samples (the pass's scoring samples) is, in
least squares, what it was in the ORIGINAL network (a copy of the model at the start of the
pass). Consumers are fit in the model's module order (a topological order for the zoo models),
each on the current network as the consumers before it left it: one forward of each network
per consumer captures its input there.

The notation and maths are :mod:`src.pruning.compensate`'s, with A the consumer's input rows
in the original network ((rows, d0): for a Conv2d, unfolded, :func:`rows`) and Â in the current
one ((rows, d), d <= d0), and these differences:

- Removed channels are gone, not constants: Â has the current columns only and all of them are
  refit (K = every column; there is no W_R term).
- A consumer whose own output channels were pruned too (its group and its producer's both lost
  channels) is fit on the outputs still there: W0, b0 are the original rows of its kept output
  channels (:attr:`PassResult.kept_outputs`, in their current order), so Z = A W0^T + b0 is
  the original pre-activation of exactly the outputs the current consumer computes.
- "lstsq" with a bias: W' = W0 Σ(A, Â) (Σ(Â, Â) + λI)^{-1}, b' = mean(Z) - W' mean(Â).
- "lstsq" without a bias (ResNet's and VGG's convolutions, which BatchNorm follows): no
  intercept. min_W' ||Â W'^T - Z||_F^2 / n + λ ||W'||_F^2 with Z = A W0^T has the normal equations
  W' (S(Â, Â) + λI) = S(Z, Â) = W0 S(A, Â), S(X, Y) = mean(X^T Y) the second moments about zero:
  the centred solution with every mean set to zero (:func:`cka_prune.compensate.about_zero`),
  b' = 0 (no bias is added); λ = compensate_ridge x the mean of the diagonal of S(Â, Â).
- "bias": b' = mean(Z) - W mean(Â), W unchanged. It needs a bias: the config refuses it for
  ResNet and VGG, whose consumers are mostly bias-free convolutions. (Shifting the following
  BatchNorm's running mean instead would be undone by ``recalibrate_bn``.)
- A grouped or depthwise convolution (none in the zoo) is not fit: a warning is printed when
  the consumers are planned, and its fit is recorded with NaN errors.

A refit convolution's BatchNorm keeps its statistics here; with ``recalibrate_bn`` (the default
for models with BatchNorm) :mod:`src.pruning.strategy` re-estimates them on training batches
after the pass and its compensation, so the BatchNorm then normalises the refit outputs: that
is intended. The recorded errors are of the pre-activations, before that recalibration.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cka_prune.compensate import ErrorSums, about_zero, moments
from src.pruning.compensate import bias_shift, ridge_refit, row_pairs
from src.pruning.physical import PassResult
from src.results import ConsumerFit


def plan(model: nn.Module, passed: PassResult) -> tuple[list[str], list[str]]:
    """The consumers of the pass's groups to fit and those left alone (grouped convolutions, a
    warning printed for each), in the model's module order."""
    wanted = {name for group in passed.groups for name in group.consumers}
    fit, skipped = [], []
    for name, module in model.named_modules():
        if name not in wanted:
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            print(f"warning: compensate: {name} is a grouped convolution ({module.groups} groups); "
                  "it is left as pruned (its fit is recorded with NaN errors)")
            skipped.append(name)
        else:
            fit.append(name)
    return fit, skipped


def compensate_pass(original: nn.Module, model: nn.Module, passed: PassResult, inputs: torch.Tensor, method: str,
                    ridge: float, batch_size: int) -> dict[str, ConsumerFit]:
    """Compensate the consumers of ``passed`` in ``model`` (in place) towards ``original`` (the model
    at the start of the pass) on ``inputs`` (N, ...) by ``method`` ("bias" or "lstsq"); each
    consumer's fit by name."""
    fit, skipped = plan(model, passed)
    fits = {name: ConsumerFit(name, float("nan"), float("nan")) for name in skipped}
    before, now = dict(original.named_modules()), dict(model.named_modules())
    for name in fit:
        fits[name] = fit_consumer(before[name], now[name], layer_input(original, before[name], inputs, batch_size),
                                  layer_input(model, now[name], inputs, batch_size), passed.kept_outputs.get(name),
                                  method, ridge, name)
    return fits


def fit_consumer(original: nn.Module, module: nn.Module, original_input: torch.Tensor, current_input: torch.Tensor,
                 kept_outputs: tuple[int, ...] | None, method: str, ridge: float, name: str) -> ConsumerFit:
    """Refit ``module`` (in place) so its pre-activation on ``current_input`` reproduces ``original``'s
    on ``original_input`` (module docstring); ``kept_outputs``: the original output channels
    ``module`` still has, in order (None: all). The relative errors before and after."""
    w0, b0 = _weight(original), _bias(original)
    if kept_outputs is not None:
        w0, b0 = w0[list(kept_outputs)], b0[list(kept_outputs)]
    w, b = _weight(module), _bias(module)
    m = moments(row_pairs(module, original_input, current_input))
    target = (t.cpu().numpy() for t in (w0, b0, w))
    if method == "bias":
        if module.bias is None:
            raise ValueError(f"compensate: {name} has no bias to shift")
        fitted = w.cpu().numpy(), bias_shift(*target, m)
    else:
        fitted = ridge_refit(*target, m if module.bias is not None else about_zero(m),
                             np.ones(w.shape[1], dtype=bool), ridge)
    new_weight, new_bias = (torch.from_numpy(t).to(w.device) for t in fitted)
    errors_before, errors_after = ErrorSums(), ErrorSums()
    for a, h in row_pairs(module, original_input, current_input):
        z = a.double() @ w0.T + b0
        errors_before.add(h.double() @ w.T + b, z)
        errors_after.add(h.double() @ new_weight.T + new_bias, z)
    with torch.no_grad():
        module.weight.copy_(new_weight.view_as(module.weight))
        if module.bias is not None:
            module.bias.copy_(new_bias)
    return ConsumerFit(consumer=name, error_before=errors_before.relative(), error_after=errors_after.relative())


def layer_input(model: nn.Module, layer: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """What ``layer`` (a module of ``model``) receives when ``model`` runs on ``inputs``, in eval mode."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                model(inputs[start:start + batch_size])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured)


def _weight(module: nn.Module) -> torch.Tensor:
    """(O, d) float64: the weight flattened as the module's input rows."""
    return module.weight.detach().double().flatten(1).clone()


def _bias(module: nn.Module) -> torch.Tensor:
    """(O,) float64: the bias, zeros where there is none."""
    if module.bias is None:
        return module.weight.new_zeros(module.weight.shape[0], dtype=torch.float64)
    return module.bias.detach().double().clone()
