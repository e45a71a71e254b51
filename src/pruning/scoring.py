"""What a pruning pass looks at: each layer's activations on the scoring samples.

One forward pass over the scoring samples records, per pruned layer, the layer's output
(``hook="module"``: the Linear/Conv2d output; ``"nonlinearity"``: after BatchNorm and ReLU)
and the layer's input, so the reference engine can really zero weights and re-run the layer.
With ``samples="all"``, the fast linear engine streams each Linear layer's covariance
instead of keeping the activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from src.config import PruneParams
from src.data import Split, iterate_batches
from src.models import Block, PrunableLayer
from src.pruning.greedy import CovarianceAccumulator, channel_groups
from src.pruning.masks import neurons_zeroed


@dataclass
class LayerRecording:
    """One layer's view of the scoring samples.

    outputs: (N, D) flattened layer outputs (a conv channel owns H*W consecutive columns),
        or None when only the covariance was streamed.
    inputs: the layer's inputs (N, ...) when the reference engine needs them, else None.
    covariance: (D, D) centered float64 covariance when streamed, else None.
    groups: per neuron, its column indices in ``outputs``.
    """

    layer: PrunableLayer
    hook: str
    outputs: torch.Tensor | None = None
    inputs: torch.Tensor | None = None
    covariance: np.ndarray | None = None
    groups: list[np.ndarray] = field(default_factory=list)

    def recompute(self, removed: list[int]) -> torch.Tensor:
        """The layer output with ``removed`` neurons' weights really zeroed: (N, D)."""
        block = self.layer.block
        was_training = block.training
        block.eval()  # BatchNorm must use its running statistics, as when the outputs were recorded
        try:
            with torch.no_grad(), neurons_zeroed(block.layer, removed):
                return layer_output(block, self.inputs, self.hook).flatten(1)
        finally:
            block.train(was_training)


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


def record_layers(model: nn.Module, layers: list[PrunableLayer], split: Split, params: PruneParams,
                  batch_size: int, generator: torch.Generator,
                  device: torch.device) -> dict[int, LayerRecording]:
    """Run the scoring samples through ``model`` once, recording every layer of ``layers``."""
    index = scoring_indices(split, params.samples, batch_size, generator)
    subset = Split(split.images[index.to(split.images.device)], split.labels[index.to(split.labels.device)])
    need_inputs = params.engine == "reference" or params.kernel == "rbf"
    stream = (params.samples == "all" and params.engine == "fast" and params.kernel == "linear"
              and not params.debiased)
    recordings = {layer.index: LayerRecording(layer, params.hook) for layer in layers}
    outputs: dict[int, list[torch.Tensor]] = {i: [] for i in recordings}
    inputs: dict[int, list[torch.Tensor]] = {i: [] for i in recordings}
    accumulators: dict[int, CovarianceAccumulator] = {}

    handles = []
    for i, rec in recordings.items():
        block = rec.layer.block
        streams = stream and rec.layer.kind == "linear"
        target = block.act if params.hook == "nonlinearity" else block.layer
        if need_inputs:
            handles.append(block.layer.register_forward_hook(
                lambda m, a, o, i=i: inputs[i].append(a[0].detach())))
        handles.append(target.register_forward_hook(_output_hook(i, streams, outputs, accumulators)))
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
    for i, rec in recordings.items():
        if i in accumulators:
            rec.covariance = accumulators[i].centered()
            width = rec.covariance.shape[0]
        else:
            rec.outputs = torch.cat(outputs[i])
            width = rec.outputs.shape[1]
        if need_inputs:
            rec.inputs = torch.cat(inputs[i])
        rec.groups = channel_groups(rec.layer.width, width // rec.layer.width)
    return recordings


def _output_hook(i: int, streams: bool, outputs: dict[int, list[torch.Tensor]],
                 accumulators: dict[int, CovarianceAccumulator]):
    def hook(module, args, output):
        flat = output.detach().flatten(1).cpu()
        if streams:
            accumulators.setdefault(i, CovarianceAccumulator()).update(flat)
        else:
            outputs[i].append(flat)
    return hook
