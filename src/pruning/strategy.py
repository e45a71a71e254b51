"""One-shot and iterative pruning of one seed's trained model, resumable.

An iteration is: score and prune every layer of ``prune.modules`` (one pass,
:mod:`src.pruning.passes`: the layers' activations recorded once at its start or, with
compensation or obs, each layer in turn on the network its predecessors left) -> evaluate -> retrain
(the ``params`` recipe, on the masked network or, with ``shrink``, on the smaller dense one)
-> evaluate. With ``retrain`` "rewind" the surviving weights are first reset to those after
epoch ``rewind_epoch`` of the original training (Frankle et al. 2020), removed neurons kept
removed; "finetune" retrains the pruned weights as they are. The retraining budget
(``retrain_epochs``, ``retrain_lr``, ``retrain_dropout``, ``recalibrate_bn``;
:mod:`src.pruning.budget`) sets how long and how retraining runs, and whether BatchNorm
statistics are re-estimated after the pass, before it is evaluated; each iteration records the
epochs run and the pruned network's size.

After every iteration a checkpoint and the result JSON are written (:mod:`src.pruning.resume`:
what a rerun continues, and when it refuses to). Every random choice of an iteration derives
from (seed, iteration), so a run resumed from a checkpoint gives the same result as one that
never stopped.

Models of the zoo (ResNet, VGG, LeNet-5) go through Torch-Pruning instead: a pass removes
every group's channels physically (:func:`physical_prune_pass`), results number channels as
in the trained model, and the checkpoint keeps the pruning history, from which a resumed run
rebuilds the pruned architecture.

A sparsity sweep (``params.rates``, one_shot only) runs one one-shot prune per rate, each from the
trained model: before point k the trained weights come back (fresh masks, or a fresh Torch-Pruning
model whose history is only that point's pass), and the pass runs at ``rates[k-1]`` with the random
choices of a one-shot run's iteration 1, so point k equals a separate one-shot run at that rate.
Iteration k of the result records point k (``IterationRecord.rate``); a resumed sweep continues
with the next rate from the trained model.

Every iteration records its provenance (:mod:`src.provenance`); a run continued under
another one says so.

A retraining that diverges (a non-finite training loss) ends the seed's run after that
iteration is recorded: its weights are not finite, so there is nothing left to prune, and the
report keeps the seed out of its statistics.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from tabulate import tabulate
from torch import nn

from src import provenance, results
from src.artifacts import load_rewind_state
from src.config import ExperimentConfig
from src.data import Splits
from src.models import build_model, prunable_layers
from src.pruning.budget import dropout_rate, recalibrate_batch_norm
from src.pruning.masks import add_masks, ensure_mask, load_masked_state, load_unmasked_state
from src.pruning.passes import pass_seed, physical_prune_pass, prune_pass
from src.pruning.physical import group_roots, rebuild
from src.pruning.resume import checkpoint_to_continue, save_progress
from src.pruning.shrink import carry_back, remaining_size, shrunk
from src.results import IterationRecord, LayerInfo, RetrainSummary, RunIdentity, SeedResult
from src.train import FitResult, evaluate_all, fit

EpochCallback = Callable[[dict[str, float]], None]


def _resume(model: nn.Module, cfg: ExperimentConfig, seed: int, identity: RunIdentity,
            out_dir: Path) -> tuple[SeedResult, list] | None:
    """The result to continue and the physical pruning history so far (the pruned state restored
    into ``model``), or None to start afresh (:func:`src.pruning.resume.checkpoint_to_continue`)."""
    saved = checkpoint_to_continue(seed, identity, out_dir)
    if saved is None:
        return None
    if cfg.model.uses_torch_pruning:
        rebuild(model, example_input(cfg, model), saved["history"])
        model.load_state_dict(saved["state_dict"])
    else:
        load_masked_state(model, saved["state_dict"], cfg.require_prune().modules)
    return saved["result"], saved["history"]


def example_input(cfg: ExperimentConfig, model: nn.Module) -> torch.Tensor:
    """One all-zero input sample for tracing ``model``, on its device."""
    device = next(model.parameters()).device
    return torch.zeros(1, *cfg.model.input_shape, device=device)


def _new_result(cfg: ExperimentConfig, seed: int, model: nn.Module, model_file: Path, identity: RunIdentity,
                baseline: dict[str, float]) -> SeedResult:
    prune = cfg.require_prune()
    if cfg.model.uses_torch_pruning:  # a layer = the root layer of a Torch-Pruning group
        layers = tuple(LayerInfo(i, name, kind, width)
                       for i, (name, kind, width) in enumerate(group_roots(model, example_input(cfg, model))))
    else:
        layers = tuple(LayerInfo(l.index, l.name, l.kind, l.width) for l in prunable_layers(model)
                       if l.index in prune.modules)
    parameters, macs = remaining_size(model, cfg.model)
    return SeedResult(
        run=identity, experiment=cfg.name, seed=seed, criterion=prune.params.type, strategy=prune.strategy,
        model_file=str(model_file), layers=layers, baseline=baseline, planned_iterations=prune.params.iterations,
        baseline_parameters=parameters, baseline_macs=macs)


def prune_seed(model: nn.Module, cfg: ExperimentConfig, seed: int, splits: Splits, device: torch.device,
               model_file: Path, out_dir: Path, on_epoch: EpochCallback | None = None,
               on_iteration: Callable[[SeedResult], None] | None = None, run_id: str | None = None) -> SeedResult:
    """Run the configured strategy on ``model`` (trained, unmasked), continuing the same run if possible.

    ``on_iteration`` is called with the result after each iteration is saved; ``run_id`` (a W&B
    run) is kept in the checkpoint, so a resumed job logs to the same run.
    """
    prune = cfg.require_prune()
    planned = prune.params.iterations
    identity = results.run_identity(cfg, model_file)
    trained = copy.deepcopy(model).to(device) if prune.params.rates is not None else None
    resumed = _resume(model, cfg, seed, identity, out_dir)
    result, history = resumed if resumed is not None else (None, [])
    model.to(device)
    splits_evaluated = ("train", "val", "test") if prune.params.evaluate_train else ("val", "test")

    def evaluate() -> dict[str, float]:
        return evaluate_all(model, splits, cfg.params.batch_size, device, splits_evaluated)

    if result is None:
        if not cfg.model.uses_torch_pruning:
            add_masks(model, prune.modules)
        result = _new_result(cfg, seed, model, model_file, identity, evaluate())
    done = len(result.iterations)
    if result.diverged_at is not None:
        print(f"seed {seed}: stopped at iteration {result.diverged_at}, where retraining diverged; skipping")
        return result
    if done >= planned:
        print(f"seed {seed}: already pruned ({done} iterations), skipping")
        return result
    made_by = provenance.current(device)
    if done:
        verb = "extending" if result.complete else "resuming"
        print(f"seed {seed}: {verb} after iteration {done} of {planned}")
        before = result.iterations[-1].provenance
        changes = before.changes(made_by) if before is not None else ["provenance: not recorded -> recorded"]
        if changes:
            print(f"seed {seed}: continuing under other conditions than iteration {done} was made "
                  f"({'; '.join(changes)})")
    result = replace(result, planned_iterations=planned)
    rewind_to = (load_rewind_state(model_file, prune.params.rewind_epoch)
                 if prune.params.retrain == "rewind" else None)
    for iteration in range(done + 1, planned + 1):
        if trained is not None:  # a sweep point starts from the trained model
            restore_trained(model, trained, cfg)
            history = []
        try:
            record = run_iteration(model, cfg, splits, seed, iteration, device, evaluate, on_epoch, result, history,
                                   rewind_to)
            record = replace(record, provenance=made_by)
        except KeyboardInterrupt as interrupt:
            interrupt.add_note(f"seed {seed} prune iteration {iteration}, which will be redone "
                               f"({iteration - 1} iterations of this seed are saved)")
            raise
        result = result.with_iteration(record)
        save_progress(out_dir, seed, model.state_dict(), result, history, run_id)
        if on_iteration is not None:
            on_iteration(result)
        if record.diverged:
            print(f"seed {seed}: retraining diverged in iteration {iteration}; this seed's run stops here")
            break
    return result


def run_iteration(model: nn.Module, cfg: ExperimentConfig, splits: Splits, seed: int, iteration: int,
                  device: torch.device, evaluate: Callable[[], dict[str, float]], on_epoch: EpochCallback | None,
                  result: SeedResult, history: list, rewind_to: dict[str, torch.Tensor] | None = None) -> IterationRecord:
    """One pass over the layers, evaluated, then retrained (if configured) and evaluated again.

    With ``recalibrate_bn`` the BatchNorm statistics are re-estimated before the first evaluation.
    A Torch-Pruning model is pruned physically; the pass's pruning history is appended to ``history``.
    ``rewind_to``: the unpruned model's early weights to reset the survivors to before retraining.
    """
    prune = cfg.require_prune()
    label = f"seed {seed} iteration {iteration}/{prune.params.iterations}"
    point, draw = sweep_point(cfg, iteration)
    start = time.perf_counter()
    if cfg.model.uses_torch_pruning:
        # a sweep point prunes the trained model: none of the earlier points' removals are in it
        before = result if prune.params.rates is None else replace(result, iterations=())
        layers, done = physical_prune_pass(model, point, splits, seed, draw, before)
        history.extend(done)
    else:
        layers = prune_pass(model, point, splits, seed, draw, device)
    scoring = time.perf_counter() - start
    if prune.params.recalibrate_bn:
        recalibrate_batch_norm(model, splits.train, cfg.params.batch_size,
                               torch.Generator().manual_seed(pass_seed(seed, draw)), device)
    after_prune = evaluate()
    alive = ", ".join(f"L{step.index} {step.alive_after}" for step in sorted(layers, key=lambda step: step.index))
    print(f"{label}: pruned to {alive} in {scoring:.2f}s; test acc {after_prune['test_acc']:.4f}")
    parameters, macs = remaining_size(model, cfg.model)
    record = IterationRecord(iteration=iteration, layers=tuple(layers), after_prune=after_prune,
                             seconds_scoring=scoring, parameters=parameters, macs=macs,
                             rate=None if prune.params.rates is None else point.require_prune().params.rate)
    if not prune.params.retrains:
        return record
    if rewind_to is not None:
        rewind(model, cfg, rewind_to, history)
    fitted = retrain(model, cfg, splits, seed=seed * 1000 + draw, device=device, on_epoch=on_epoch, label=label)
    record = replace(record, after_retrain=evaluate(),
                     retrain=RetrainSummary(fitted.epochs, fitted.best_epoch, fitted.diverged, fitted.seconds),
                     seconds_retraining=fitted.seconds)
    print(f"{label}: retrained {fitted.epochs} epochs; test acc {record.after_retrain['test_acc']:.4f}")
    return record


def sweep_point(cfg: ExperimentConfig, iteration: int) -> tuple[ExperimentConfig, int]:
    """The config the pass of ``iteration`` runs with, and the iteration its random choices derive from.

    ``(cfg, iteration)``, except for point k of a sparsity sweep: ``cfg`` with ``rate`` =
    ``rates[k-1]``, and 1, the random choices of a one-shot run's only iteration.
    """
    prune = cfg.require_prune()
    if prune.params.rates is None:
        return cfg, iteration
    params = replace(prune.params, rate=prune.params.rates[iteration - 1])
    return replace(cfg, prune=replace(prune, params=params)), 1


def restore_trained(model: nn.Module, trained: nn.Module, cfg: ExperimentConfig) -> None:
    """Make ``model`` (pruned) the ``trained`` one (unpruned, unmasked) again, in place.

    A masked model takes every trained parameter and buffer under all-ones masks. A Torch-Pruning
    model's layers have other shapes, so it takes a copy of ``trained``'s modules, parameters and
    buffers (its ``__dict__``): callers holding ``model`` then hold the restored network.
    """
    if cfg.model.uses_torch_pruning:
        model.__dict__.update(copy.deepcopy(trained).__dict__)
        return
    modules = cfg.require_prune().modules
    layers = prunable_layers(model)
    for index in modules:
        ensure_mask(layers[index].block.layer).fill_(1)
    load_unmasked_state(model, trained.state_dict(), modules)


def rewind(model: nn.Module, cfg: ExperimentConfig, state: dict[str, torch.Tensor], history: list) -> None:
    """Reset the pruned ``model`` to ``state`` (the unpruned model's early weights), removed neurons kept removed.

    Masked models keep their masks and take every parameter and buffer from ``state``. A
    Torch-Pruning model is rebuilt: a fresh model holding ``state`` and pruned by the same
    ``history`` keeps exactly the early weights of the surviving channels.
    """
    if not cfg.model.uses_torch_pruning:
        load_unmasked_state(model, state, cfg.require_prune().modules)
        return
    early = build_model(cfg.model).to(next(model.parameters()).device)
    early.load_state_dict(state)
    rebuild(early, example_input(cfg, early), history)
    model.load_state_dict(early.state_dict())


def retrain(model: nn.Module, cfg: ExperimentConfig, splits: Splits, *, seed: int, device: torch.device,
            on_epoch: EpochCallback | None, label: str) -> FitResult:
    """Retrain the masked ``model`` in place, or its dense surviving network with ``shrink``, with the
    retraining recipe (:meth:`src.config.PruneParams.retraining`) and dropout ``retrain_dropout``."""
    params = cfg.require_prune().params
    recipe = params.retraining(cfg.params)
    trained = shrunk(model, cfg.model) if params.shrink else model
    with dropout_rate(trained, params.retrain_dropout):
        fitted = fit(trained, splits, recipe, seed=seed, device=device, on_epoch=on_epoch, label=label)
    if params.shrink:
        carry_back(model, trained)
    return fitted


def summary_table(seed_results: list[SeedResult]) -> str:
    """Seed, neurons left per layer, test accuracy before pruning, after the last pass and its retraining."""
    rows = []
    for result in seed_results:
        last = result.iterations[-1] if result.iterations else None
        rows.append((result.seed, "/".join(str(n) for n in result.alive().values()), result.baseline["test_acc"],
                     last.after_prune["test_acc"] if last else None,
                     last.after_retrain["test_acc"] if last and last.after_retrain else None))
    return tabulate(rows, headers=("seed", "alive per layer", "baseline", "pruned", "retrained"),
                    floatfmt=".4f", missingval="-")
