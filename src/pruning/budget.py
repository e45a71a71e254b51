"""The retraining budget's model-side settings: dropout while retraining, BatchNorm recalibration.

**Dropout while retraining** (``prune.params.retrain_dropout``): every ``nn.Dropout`` of the
network being retrained drops with the given rate during retraining and with its own rate
afterwards (:func:`dropout_rate`). A rate of 0.5 on a layer of 25 survivors is a much stronger
regulariser than on 512, which decides whether a short retraining helps or hurts.

**BatchNorm recalibration** (``prune.params.recalibrate_bn``): after a pass the running
statistics of every BatchNorm still describe the unpruned network's activations. They are
re-estimated on ``RECALIBRATION_BATCHES`` random training batches (fewer when the split is
smaller), in train mode without gradients and with dropout off (:func:`recalibrate_batch_norm`).
The statistics are reset and PyTorch's cumulative average (``momentum=None``) is used: after
batches ``b = 1..k``, channel ``c`` holds

    running_mean[c] = (1/k) sum_b mean_b[c],    running_var[c] = (1/k) sum_b var_b[c],

with ``mean_b``, ``var_b`` (unbiased, ``n/(n-1)``) over the batch's samples and positions. Only
these buffers change; weights, biases and the BatchNorm's affine parameters do not.
Augmentation is not applied: the statistics are those of the data the network is evaluated on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from src.data import Split, iterate_batches

RECALIBRATION_BATCHES = 20
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@contextmanager
def dropout_rate(model: nn.Module, rate: float | None) -> Iterator[None]:
    """Within the block every ``nn.Dropout`` of ``model`` drops with ``rate``; None leaves them as they are."""
    modules = [m for m in model.modules() if isinstance(m, nn.Dropout)] if rate is not None else []
    own = [m.p for m in modules]
    for module in modules:
        module.p = rate
    try:
        yield
    finally:
        for module, p in zip(modules, own):
            module.p = p


def recalibrate_batch_norm(model: nn.Module, split: Split, batch_size: int, generator: torch.Generator,
                           device: torch.device, batches: int = RECALIBRATION_BATCHES) -> int:
    """Re-estimate the running statistics of ``model``'s BatchNorms in place (module docstring).

    The batches are the first ``batches`` of one shuffled epoch of ``split`` drawn with
    ``generator``. The global random state is not touched. Returns the samples used (0 when the
    model has no BatchNorm).
    """
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    seen = 0
    try:
        with torch.no_grad():
            for i, (x, _) in enumerate(iterate_batches(split, batch_size, shuffle=True, generator=generator,
                                                       device=device)):
                if i == batches:
                    break
                model(x)
                seen += len(x)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)
    return seen
