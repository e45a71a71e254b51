"""What a pruning pass looks at: each layer's activations on the scoring samples.

One forward pass over the scoring samples records, per pruned layer, the representation the
pass preserves and the layer's input, so the reference engine can really zero weights and
re-run the layer (and, for the targets "next" and "logits", what follows it). By target:

- "layer": the layer's output (``hook="module"``: the Linear/Conv2d output; "nonlinearity":
  after BatchNorm and ReLU).
- "next": the next Linear layer's input A (the layer's post-activation output, pooled and
  flattened after a conv layer) and that layer's weight W, as they are at the start of the
  pass; the representation is Z = A W^T (the next layer's bias is a constant and drops out
  of centered CKA).
- "refit": recorded as "next"; the representation is the least-squares refit of Z from the kept
  units (`cka_prune.refit`).
- "logits": the network's output.

The criterion "obs" also reads the consumer (the next Linear layer's input A and weight W,
`ConsumerRecording`), besides the layer's own representation for its damage path.

With ``samples="all"``, the fast linear engine streams each Linear layer's covariance
instead of keeping the activations. The baselines ``apoz`` and ``mean_activation`` read
per-neuron statistics of the post-ReLU output on the same samples (`ActivationStats`);
``taylor`` reads gradients on training batches (`taylor_importance`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cka_prune.greedy import channel_groups
from cka_prune.interactions import CovarianceAccumulator
from src.config import REFIT_CRITERIA, PruneParams
from src.data import Split, iterate_batches
from src.models import Block, Net, PrunableLayer, next_layer
from src.pruning.masks import neurons_zeroed

# Training batches that score the taylor baseline ("a few", Molchanov et al. 2019).
TAYLOR_BATCHES = 4


@dataclass(frozen=True)
class ActivationStats:
    """Per-neuron statistics of the post-ReLU output a = relu(norm(layer(x))) (before pooling).

    zero_fraction: (n,) APoZ (Hu et al. 2016), the share of a neuron's outputs that are 0 over
        the scoring samples and, for a channel, its H*W positions.
    mean: (n,) the mean of those outputs.
    """

    zero_fraction: np.ndarray
    mean: np.ndarray


@dataclass
class ConsumerRecording:
    """The next Linear layer of a pruned layer, as the refit criteria read it.

    inputs: (N, D) its input A (the pruned layer's post-activation output, flattened), or None
        when only the covariance was streamed.
    covariance: (D, D) centred float64 covariance of A when streamed, else None.
    weight: (p, D) its weight W at the start of the pass.
    groups: per neuron, its columns of A.
    """

    inputs: torch.Tensor | None
    covariance: np.ndarray | None
    weight: torch.Tensor
    groups: list[np.ndarray]

    def centred_covariance(self) -> np.ndarray:
        """C = X^T X (D, D), X the column-centred A, float64."""
        if self.covariance is not None:
            return self.covariance
        x = self.inputs.double()
        x = x - x.mean(dim=0)
        return (x.T @ x).numpy()


@dataclass
class LayerRecording:
    """One layer's view of the scoring samples.

    target: "layer", "next", "refit" or "logits" (module docstring).
    outputs: (N, D) the recorded representation: the layer's output (a conv channel owns H*W
        consecutive columns), the next layer's input A ("next") or the logits; None when only
        the covariance was streamed.
    inputs: the layer's inputs (N, ...) when the reference engine needs them, else None.
    covariance: (D, D) centered float64 covariance of ``outputs`` when streamed, else None.
    groups: per neuron, its column indices in ``outputs`` (empty for "logits").
    next_weight: (p, D) the next layer's weight W for target "next", else None.
    downstream: for "logits", the rest of the network (the layer block's output -> logits).
    eval_scope: the module put in eval mode while recomputing (the model for "logits"; None:
        the layer's block).
    activation: post-ReLU statistics for the apoz and mean_activation baselines, else None.
    taylor: (n,) the taylor baseline's importance (`taylor_importance`), else None.
    consumer: the next Linear layer's input and weight for target "refit" and type "obs", else None.
    """

    layer: PrunableLayer
    hook: str
    target: str = "layer"
    outputs: torch.Tensor | None = None
    inputs: torch.Tensor | None = None
    covariance: np.ndarray | None = None
    groups: list[np.ndarray] = field(default_factory=list)
    next_weight: torch.Tensor | None = None
    downstream: Callable[[torch.Tensor], torch.Tensor] | None = None
    eval_scope: nn.Module | None = None
    activation: ActivationStats | None = None
    taylor: np.ndarray | None = None
    consumer: ConsumerRecording | None = None

    def original(self) -> torch.Tensor:
        """The preserved representation before this pass: (N, D'), float64 for "next" and "refit"."""
        if self.target in ("next", "refit"):
            return self.outputs.double() @ self.next_weight.double().T
        return self.outputs

    def recompute(self, removed: list[int]) -> torch.Tensor:
        """The preserved representation with ``removed`` neurons' weights really zeroed: (N, D')."""
        if self.target == "refit":
            raise ValueError('target "refit" is a refit, not a recomputation (cka_prune.refit)')
        block = self.layer.block
        scope = self.eval_scope or block
        was_training = scope.training
        scope.eval()  # BatchNorm and dropout as when the outputs were recorded
        try:
            with torch.no_grad(), neurons_zeroed(block.layer, removed):
                if self.target == "layer":
                    return layer_output(block, self.inputs, self.hook).flatten(1)
                if self.target == "next":
                    return block(self.inputs).flatten(1).double() @ self.next_weight.double().T
                return self.downstream(block(self.inputs))
        finally:
            scope.train(was_training)


def layer_output(block: Block, x: torch.Tensor, hook: str) -> torch.Tensor:
    y = block.layer(x)
    return block.act(block.norm(y)) if hook == "nonlinearity" else y


def scoring_indices(split: Split, samples: int | str | None, batch_size: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Which validation samples score a pass: one random batch (default), n random, or all."""
    n = len(split)
    if samples == "all":
        return torch.arange(n)
    count = min(batch_size if samples is None else int(samples), n)
    return torch.randperm(n, generator=generator)[:count].sort().values


def record_layers(model: Net, layers: list[PrunableLayer], split: Split, params: PruneParams,
                  batch_size: int, generator: torch.Generator, device: torch.device,
                  train: Split | None = None) -> dict[int, LayerRecording]:
    """Run the scoring samples through ``model`` once, recording every layer of ``layers``.

    ``train``: the training split, which the taylor baseline needs (its gradients).
    """
    index = scoring_indices(split, params.samples, batch_size, generator)
    subset = split.take(index)
    need_inputs = params.engine == "reference" or params.kernel == "rbf"
    stream = (params.samples == "all" and params.engine == "fast" and params.kernel == "linear"
              and not params.debiased and params.target != "logits")
    need_stats = params.type in ("apoz", "mean_activation")
    need_consumer = params.type in REFIT_CRITERIA  # besides the layer's own representation
    recordings = {layer.index: LayerRecording(layer, params.hook, params.target) for layer in layers}
    outputs: dict[int, list[torch.Tensor]] = {i: [] for i in recordings}
    inputs: dict[int, list[torch.Tensor]] = {i: [] for i in recordings}
    accumulators: dict[int, CovarianceAccumulator] = {}
    stats: dict[int, list[torch.Tensor]] = {i: [] for i in recordings}
    consumed: dict[int, list[torch.Tensor]] = {i: [] for i in recordings}
    consumer_accumulators: dict[int, CovarianceAccumulator] = {}

    handles = []
    for i, rec in recordings.items():
        block = rec.layer.block
        streams = stream and rec.layer.kind == "linear"
        if need_inputs:
            handles.append(block.layer.register_forward_hook(
                lambda m, a, o, i=i: inputs[i].append(a[0].detach())))
        if need_stats:
            handles.append(block.act.register_forward_hook(lambda m, a, o, i=i: stats[i].append(_neuron_stats(o))))
        capture = _capture(i, streams, outputs, accumulators)
        if params.target == "layer":
            target = block.act if params.hook == "nonlinearity" else block.layer
            handles.append(target.register_forward_hook(lambda m, a, o, capture=capture: capture(o)))
        elif params.target in ("next", "refit"):
            following = next_layer(model, i)
            rec.next_weight = following.weight.detach().clone()
            handles.append(following.register_forward_hook(lambda m, a, o, capture=capture: capture(a[0])))
        else:
            rec.downstream, rec.eval_scope = downstream(model, i), model
            handles.append(model.output.register_forward_hook(lambda m, a, o, capture=capture: capture(o)))
        if need_consumer:
            take = _capture(i, streams, consumed, consumer_accumulators)
            handles.append(next_layer(model, i).register_forward_hook(lambda m, a, o, take=take: take(a[0])))
    run_hooked(model, subset, batch_size, device, handles)
    for i, rec in recordings.items():
        if i in accumulators:
            rec.covariance = accumulators[i].centered()
            width = rec.covariance.shape[0]
        else:
            rec.outputs = torch.cat(outputs[i])
            width = rec.outputs.shape[1]
        if need_inputs:
            rec.inputs = torch.cat(inputs[i])
        if need_stats:
            zeros, sums, count = torch.stack(stats[i]).sum(dim=0).numpy()
            rec.activation = ActivationStats(zeros / count, sums / count)
        if params.target != "logits":
            rec.groups = channel_groups(rec.layer.width, width // rec.layer.width)
        if params.target == "refit":
            rec.consumer = ConsumerRecording(rec.outputs, rec.covariance, rec.next_weight, rec.groups)
        if need_consumer:
            rec.consumer = _consumer(model, rec.layer, consumed[i], consumer_accumulators.get(i))
    if params.type == "taylor":
        if train is None:
            raise ValueError("record_layers: the taylor baseline needs the training split")
        for i, values in taylor_importance(model, layers, train, batch_size, generator, device).items():
            recordings[i].taylor = values
    return recordings


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


def _capture(i: int, streams: bool, outputs: dict[int, list[torch.Tensor]],
             accumulators: dict[int, CovarianceAccumulator]) -> Callable[[torch.Tensor], None]:
    def capture(output: torch.Tensor) -> None:
        flat = output.detach().flatten(1).cpu()
        if streams:
            accumulators.setdefault(i, CovarianceAccumulator()).update(flat)
        else:
            outputs[i].append(flat)
    return capture


def _consumer(model: Net, layer: PrunableLayer, inputs: list[torch.Tensor],
              accumulator: CovarianceAccumulator | None) -> ConsumerRecording:
    """The recorded input of ``layer``'s consumer (streamed or kept) with its weight and groups."""
    weight = next_layer(model, layer.index).weight.detach().clone()
    if accumulator is not None:
        return ConsumerRecording(None, accumulator.centered(), weight, channel_groups(layer.width, 1))
    kept = torch.cat(inputs)
    return ConsumerRecording(kept, None, weight, channel_groups(layer.width, kept.shape[1] // layer.width))


def _neuron_stats(activated: torch.Tensor) -> torch.Tensor:
    """(3, n) float64 on the CPU: per neuron, the count of zero outputs, their sum, the count of outputs."""
    per_neuron = activated.detach().transpose(0, 1).flatten(1).double()  # (n, B) or (n, B*H*W)
    count = torch.full((per_neuron.shape[0],), per_neuron.shape[1], dtype=torch.float64,
                       device=per_neuron.device)
    return torch.stack([(per_neuron == 0).sum(dim=1).double(), per_neuron.sum(dim=1), count]).cpu()


def downstream(model: Net, index: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The part of ``model`` after prunable block ``index``: that block's output -> logits."""
    n_conv = len(model.conv)

    def run(x: torch.Tensor) -> torch.Tensor:
        for block in model.conv[index + 1:]:
            x = block(x)
        x = x.flatten(1)
        for block in model.hidden[max(index + 1 - n_conv, 0):]:
            x = block(x)
        return model.output(x)
    return run


def taylor_importance(model: Net, layers: list[PrunableLayer], split: Split, batch_size: int,
                      generator: torch.Generator, device: torch.device) -> dict[int, np.ndarray]:
    """First-order Taylor importance of each neuron (Molchanov et al. 2019), per layer: (n,).

    With a the neuron's post-ReLU output (a channel: all its H*W positions) and L a training
    batch's mean cross-entropy, a gate g multiplying the neuron's output has
    dL/dg = sum_{samples, positions} a * dL/da at g = 1, the first-order change of L when the
    neuron is switched off. The importance is (dL/dg)^2 averaged over TAYLOR_BATCHES random
    training batches of ``batch_size`` (the squared, per-batch variant). The model runs in eval
    mode (no dropout, BatchNorm's running statistics), as it is scored and evaluated.
    """
    count = min(TAYLOR_BATCHES * batch_size, len(split))
    index = torch.randperm(len(split), generator=generator)[:count]
    subset = split.take(index)
    totals = {layer.index: torch.zeros(layer.width, dtype=torch.float64) for layer in layers}
    captured: dict[int, torch.Tensor] = {}
    handles = [layer.block.act.register_forward_hook(lambda m, a, o, i=layer.index: captured.__setitem__(i, o))
               for layer in layers]
    was_training = model.training
    model.eval()
    batches = 0
    try:
        for x, y in iterate_batches(subset, batch_size, device=device):
            loss = F.cross_entropy(model(x), y)
            keys = list(totals)
            grads = torch.autograd.grad(loss, [captured[i] for i in keys])
            for i, grad in zip(keys, grads):
                gate = (captured[i].detach() * grad).transpose(0, 1).flatten(1).sum(dim=1)
                totals[i] += gate.double().cpu() ** 2
            batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {i: (total / batches).numpy() for i, total in totals.items()}
