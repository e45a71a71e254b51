"""One pruning pass over a seed's model: which neurons or channels go, and the records of what went.

A masked model (MLP, CNN) loses neurons layer by layer (:func:`prune_pass`; with compensation
or type "obs" one layer after another, :func:`sequential_prune_pass`); a Torch-Pruning
model (ResNet, VGG, LeNet-5) loses every group's channels physically (:func:`physical_prune_pass`),
and with compensation its consumers are refit after the whole pass.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from src.config import ExperimentConfig, PruneParams
from src.data import Splits
from src.models import Net, PrunableLayer, prunable_layers
from src.pruning.compensate import compensate, consumer_targets
from src.pruning.criteria import Selection, select, select_global
from src.pruning.masks import alive_neurons, remove_neurons
from src.pruning.physical import physical_pass
from src.pruning.physical_compensate import compensate_pass
from src.pruning.scoring import ScoringSamples, draw_samples, record_samples
from src.results import ConsumerFit, LayerStep, SeedResult


def pass_seed(seed: int, iteration: int) -> int:
    """The seed of the random draws of seed ``seed``'s pass ``iteration`` (its scoring samples,
    taylor batches, BatchNorm recalibration and Torch-Pruning's random importance); distinct
    across seeds and iterations while iterations stay below 100_003."""
    return seed * 100_003 + iteration


def pass_samples(splits: Splits, params: PruneParams, batch_size: int, seed: int, iteration: int) -> ScoringSamples:
    """The samples pass ``iteration`` of seed ``seed`` scores on (and compensation fits on), drawn once."""
    generator = torch.Generator().manual_seed(pass_seed(seed, iteration))
    return draw_samples(splits.val, params, batch_size, generator, train=splits.train)


def prune_pass(model: Net, cfg: ExperimentConfig, splits: Splits, seed: int, iteration: int,
               device: torch.device) -> list[LayerStep]:
    """Prune every configured layer once; return one record per layer.

    Every layer's neurons are chosen against the representations recorded at the start of
    the pass. With allocation "global" all layers are chosen together (one budget), and each
    record's ``seconds`` is that joint selection's time. A sequential pass
    (:attr:`PruneParams.sequential`) goes to :func:`sequential_prune_pass`.
    """
    prune = cfg.require_prune()
    params = prune.params
    if params.sequential:
        return sequential_prune_pass(model, cfg, splits, seed, iteration, device)
    layers = [prunable_layers(model)[i] for i in prune.modules]
    samples = pass_samples(splits, params, cfg.params.batch_size, seed, iteration)
    recordings = record_samples(model, layers, samples, params, cfg.params.batch_size, device)
    alives = [alive_neurons(layer.block.layer).cpu().numpy() for layer in layers]
    if params.allocation == "global":
        start = time.perf_counter()
        choices = select_global([recordings[layer.index] for layer in layers], params, alives)
        seconds = [time.perf_counter() - start] * len(layers)
    else:
        choices, seconds = [], []
        for layer, alive in zip(layers, alives):
            start = time.perf_counter()
            choices.append(select(recordings[layer.index], params, alive, (seed, iteration, layer.index)))
            seconds.append(time.perf_counter() - start)
    records = []
    for layer, alive, choice, elapsed in zip(layers, alives, choices, seconds):
        if choice.removed:
            remove_neurons(layer.block.layer, choice.removed)
        records.append(_step(layer, alive, choice, elapsed))
    return records


def sequential_prune_pass(model: Net, cfg: ExperimentConfig, splits: Splits, seed: int, iteration: int,
                          device: torch.device) -> list[LayerStep]:
    """Prune the configured layers one after another in forward order; one record per layer.

    Each layer is scored on the current network (the layers before it already pruned and their
    consumers compensated), loses its neurons, and then, with ``compensate``, its consumer is
    compensated towards that consumer's pre-activation at the start of the pass
    (:mod:`src.pruning.compensate`). Scoring and fitting use the same samples, drawn once
    (:func:`pass_samples`).
    """
    prune = cfg.require_prune()
    params, batch_size = prune.params, cfg.params.batch_size
    layers = sorted((prunable_layers(model)[i] for i in prune.modules), key=lambda layer: layer.index)
    samples = pass_samples(splits, params, batch_size, seed, iteration)
    targets = ({} if params.compensate == "none" else
               consumer_targets(model, [layer.index for layer in layers], samples.scoring, batch_size, device))
    records = []
    for layer in layers:
        recording = record_samples(model, [layer], samples, params, batch_size, device)[layer.index]
        alive = alive_neurons(layer.block.layer).cpu().numpy()
        start = time.perf_counter()
        choice = select(recording, params, alive, (seed, iteration, layer.index))
        elapsed = time.perf_counter() - start
        if choice.removed:
            remove_neurons(layer.block.layer, choice.removed)
        fit = None
        if targets:
            fit = compensate(model, layer.index, targets[layer.index], samples.scoring, params.compensate,
                             params.compensate_ridge, batch_size, device)
        records.append(_step(layer, alive, choice, elapsed, fit))
    return records


def _step(layer: PrunableLayer, alive: np.ndarray, choice: Selection, elapsed: float,
          fit: ConsumerFit | None = None) -> LayerStep:
    return LayerStep(
        index=layer.index,
        alive_before=int(alive.sum()),
        alive_after=int(alive.sum()) - len(choice.removed),
        removed=tuple(choice.removed),
        scores=tuple(choice.scores),
        cka=tuple(choice.cka),
        seconds=elapsed,
        engine=choice.engine,
        skipped=choice.skipped,
        compensation=fit,
    )


def physical_prune_pass(model: nn.Module, cfg: ExperimentConfig, splits: Splits, seed: int, iteration: int,
                        result: SeedResult) -> tuple[list[LayerStep], list]:
    """Prune every Torch-Pruning group of ``model`` once, physically; one record per group that lost
    channels (numbered as in the trained model) or was left alone (``skipped``, with the reason),
    and the pass's pruning history.

    With ``compensate`` the consumers of the removed channels are then compensated towards a copy
    of the model at the start of the pass, on the scoring samples (:mod:`src.pruning.physical_compensate`);
    each group's record holds the fits of its consumers (:attr:`LayerStep.compensation`, a tuple).
    """
    params = cfg.require_prune().params
    device = next(model.parameters()).device
    scoring = pass_samples(splits, params, cfg.params.batch_size, seed, iteration).scoring
    x, y = scoring.batch(slice(None), device)  # images in [0, 1] or text windows' inputs, and their targets
    at_start = copy.deepcopy(model) if params.compensate != "none" else None
    start = time.perf_counter()
    passed = physical_pass(model, params.type, params.rate, x[:1], x, labels=y, engine=params.engine,
                           kernel=params.kernel, debiased=params.debiased,
                           global_pruning=params.allocation == "global", seed=pass_seed(seed, iteration),
                           batch_size=cfg.params.batch_size)
    seconds = (time.perf_counter() - start) / max(len(passed.groups), 1)
    fits = ({} if at_start is None else
            compensate_pass(at_start, model, passed, x, params.compensate, params.compensate_ridge,
                            cfg.params.batch_size))
    surviving = surviving_channels(result)
    number = {layer.name: layer.index for layer in result.layers}
    steps = []
    for group in passed.groups:
        original = surviving[group.root]
        removed = tuple(original[c] for c in group.removed)
        steps.append(LayerStep(
            index=number[group.root], alive_before=group.channels_before,
            alive_after=group.channels_before - len(removed), removed=removed,
            scores=group.cka if group.cka is not None else (None,) * len(removed), cka=group.cka or (),
            seconds=seconds, engine=passed.engine, skipped=group.skipped,
            compensation=tuple(fits[name] for name in group.consumers) if fits and group.consumers else None))
    return steps, passed.history


def surviving_channels(result: SeedResult) -> dict[str, list[int]]:
    """Per layer name, the trained model's indices of the channels still there after the result's
    last iteration (a sweep point's alone: :meth:`SeedResult.lineage`), in their current order."""
    alive = {layer.name: list(range(layer.width)) for layer in result.layers}
    name = {layer.index: layer.name for layer in result.layers}
    for it in result.lineage():
        for step in it.layers:
            gone = set(step.removed)
            alive[name[step.index]] = [c for c in alive[name[step.index]] if c not in gone]
    return alive
