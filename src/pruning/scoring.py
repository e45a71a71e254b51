"""What a pruning pass looks at: each layer's target representation on the scoring samples.

One forward pass over the scoring samples records, per pruned layer, its target
(`src.pruning.targets`: what the pass preserves, which searches and scores damage) and what the
criterion reads besides: the consumer (the next Linear layer's input A and weight W) for "obs",
the per-neuron importance measured on data for the baselines ``apoz`` and ``mean_activation``
(post-ReLU statistics on the same samples) and ``taylor`` (gradients on training batches,
`taylor_importance`).

A pass draws its samples once (`draw_samples`): what it scores on is also what compensation
fits on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from src.config import REFIT_CRITERIA, PruneParams
from src.data import Split, iterate_batches
from src.models import Net, PrunableLayer
from src.pruning.taps import Taps
from src.pruning.targets import TARGETS, ConsumerRecording, Target

# Training batches that score the taylor baseline ("a few", Molchanov et al. 2019).
TAYLOR_BATCHES = 4


@dataclass(frozen=True, eq=False)
class LayerRecording:
    """One layer's view of the scoring samples.

    target: the representation the pass preserves (`src.pruning.targets`).
    consumer: the next Linear layer's input and weight, for the target "next" or "refit" (the
        target's own) and the criterion "obs"; else None.
    measured: (width,) the importance an activation or gradient baseline measured on data
        (apoz: 1 - APoZ; mean_activation: the mean post-ReLU output; taylor), else None.
    """

    layer: PrunableLayer
    target: Target
    consumer: ConsumerRecording | None = None
    measured: np.ndarray | None = None

    @property
    def covariance(self) -> np.ndarray | None:
        """The target's streamed covariance; None when its activations were kept."""
        return self.target.covariance


@dataclass(frozen=True)
class ScoringSamples:
    """What one pass scores on, drawn once: ``scoring``, validation samples (every criterion, and
    the compensation's fit); ``taylor``, training batches for the taylor baseline, else None."""

    scoring: Split
    taylor: Split | None = None


def scoring_indices(split: Split, samples: int | str | None, batch_size: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Which validation samples score a pass: one random batch (default), n random, or all."""
    n = len(split)
    if samples == "all":
        return torch.arange(n)
    count = min(batch_size if samples is None else int(samples), n)
    return torch.randperm(n, generator=generator)[:count].sort().values


def draw_samples(val: Split, params: PruneParams, batch_size: int, generator: torch.Generator,
                 train: Split | None = None) -> ScoringSamples:
    """The pass's samples: the scoring samples from ``val``, then (type "taylor") TAYLOR_BATCHES
    random batches of ``train``, both from ``generator`` in that order."""
    scoring = val.take(scoring_indices(val, params.samples, batch_size, generator))
    if params.type != "taylor" or train is None:
        return ScoringSamples(scoring)
    count = min(TAYLOR_BATCHES * batch_size, len(train))
    return ScoringSamples(scoring, train.take(torch.randperm(len(train), generator=generator)[:count]))


def record_layers(model: Net, layers: list[PrunableLayer], split: Split, params: PruneParams,
                  batch_size: int, generator: torch.Generator, device: torch.device,
                  train: Split | None = None) -> dict[int, LayerRecording]:
    """Draw the scoring samples from ``split`` (and ``train``'s for taylor) and record every layer of
    ``layers`` on them (`record_samples`)."""
    return record_samples(model, layers, draw_samples(split, params, batch_size, generator, train), params,
                          batch_size, device)


def record_samples(model: Net, layers: list[PrunableLayer], samples: ScoringSamples, params: PruneParams,
                   batch_size: int, device: torch.device) -> dict[int, LayerRecording]:
    """Run the scoring samples through ``model`` once, recording every layer of ``layers``."""
    # With samples "all" the fast linear engine keeps a Linear layer's covariance, not its activations.
    stream = (params.samples == "all" and params.scoring_engine == "fast" and not params.debiased
              and params.target != "logits")
    taps = Taps()
    targets, consumers, stats = {}, {}, {}
    for layer in layers:
        streams = stream and layer.kind == "linear"
        targets[layer.index] = TARGETS[params.target].record(model, layer, params, taps, streams)
        if params.type in REFIT_CRITERIA:  # besides the layer's own representation
            consumers[layer.index] = ConsumerRecording.record(model, layer, taps, streams)
        if params.type in ("apoz", "mean_activation"):
            kept: list[torch.Tensor] = stats.setdefault(layer.index, [])
            taps.hook(layer.block.act, lambda m, a, o, kept=kept: kept.append(_neuron_stats(o)))
    run_hooked(model, samples.scoring, batch_size, device, taps.handles)
    measured = _measured(model, layers, samples, params, stats, batch_size, device)
    recordings = {}
    for layer in layers:
        target = targets[layer.index]()
        consumer = consumers[layer.index]() if layer.index in consumers else target.consumer
        recordings[layer.index] = LayerRecording(layer, target, consumer, measured.get(layer.index))
    return recordings


def _measured(model: Net, layers: list[PrunableLayer], samples: ScoringSamples, params: PruneParams,
              stats: dict[int, list[torch.Tensor]], batch_size: int, device: torch.device) -> dict[int, np.ndarray]:
    """Per layer, the importance a baseline measured on data (none for the other criteria)."""
    if params.type == "taylor":
        if samples.taylor is None:
            raise ValueError("record_samples: the taylor baseline needs the training split")
        return taylor_importance(model, layers, samples.taylor, batch_size, device)
    measured = {}
    for i, kept in stats.items():
        zeros, sums, count = torch.stack(kept).sum(dim=0).numpy()
        measured[i] = 1.0 - zeros / count if params.type == "apoz" else sums / count
    return measured


def run_hooked(model: nn.Module, subset: Split, batch_size: int, device: torch.device,
               handles: list[torch.utils.hooks.RemovableHandle]) -> None:
    """Run ``subset`` through ``model`` in eval mode without gradients, for what its hooks record;
    the hooks (``handles``) are removed afterwards and the model's mode restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in iterate_batches(subset, max(batch_size, 1024), device=device):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _neuron_stats(activated: torch.Tensor) -> torch.Tensor:
    """(3, n) float64 on the CPU: per neuron, the count of zero outputs, their sum, the count of outputs."""
    per_neuron = activated.detach().transpose(0, 1).flatten(1).double()  # (n, B) or (n, B*H*W)
    count = torch.full((per_neuron.shape[0],), per_neuron.shape[1], dtype=torch.float64,
                       device=per_neuron.device)
    return torch.stack([(per_neuron == 0).sum(dim=1).double(), per_neuron.sum(dim=1), count]).cpu()


def taylor_importance(model: Net, layers: list[PrunableLayer], batches: Split, batch_size: int,
                      device: torch.device) -> dict[int, np.ndarray]:
    """First-order Taylor importance of each neuron (Molchanov et al. 2019), per layer: (n,).

    With a the neuron's post-ReLU output (a channel: all its H*W positions) and L a training
    batch's mean cross-entropy, a gate g multiplying the neuron's output has
    dL/dg = sum_{samples, positions} a * dL/da at g = 1, the first-order change of L when the
    neuron is switched off. The importance is (dL/dg)^2 averaged over the batches of
    ``batch_size`` of ``batches`` (TAYLOR_BATCHES random ones: `draw_samples`; the squared,
    per-batch variant). The model runs in eval mode (no dropout, BatchNorm's running
    statistics), as it is scored and evaluated.
    """
    totals = {layer.index: torch.zeros(layer.width, dtype=torch.float64) for layer in layers}
    captured: dict[int, torch.Tensor] = {}
    handles = [layer.block.act.register_forward_hook(lambda m, a, o, i=layer.index: captured.__setitem__(i, o))
               for layer in layers]
    was_training = model.training
    model.eval()
    count = 0
    try:
        for x, y in iterate_batches(batches, batch_size, device=device):
            loss = F.cross_entropy(model(x), y)
            keys = list(totals)
            grads = torch.autograd.grad(loss, [captured[i] for i in keys])
            for i, grad in zip(keys, grads):
                gate = (captured[i].detach() * grad).transpose(0, 1).flatten(1).sum(dim=1)
                totals[i] += gate.double().cpu() ** 2
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {i: (total / count).numpy() for i, total in totals.items()}
