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

After every iteration a checkpoint (masked weights + the result so far) is written, then
the result JSON (:mod:`src.results`), both atomically; a JSON left behind its checkpoint (a
run killed between the two writes) is repaired from the checkpoint on the next run. Every
random choice of an iteration derives from (seed, iteration), so a run resumed from a
checkpoint gives the same result as one that never stopped.

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

A rerun continues only the same run (:func:`src.results.run_identity`): a result of another
run under the same experiment name is never appended to (:class:`IdentityMismatch`).
Raising ``iterations`` extends a finished run from its last checkpoint. Every iteration
records its provenance (:mod:`src.provenance`); a run continued under another one says so.

A retraining that diverges (a non-finite training loss) ends the seed's run after that
iteration is recorded: its weights are not finite, so there is nothing left to prune, and the
report keeps the seed out of its statistics.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from tabulate import tabulate
from torch import nn

from src import provenance, results
from src.artifacts import load_rewind_state
from src.config import ExperimentConfig
from src.data import Splits
from src.errors import UserError, brief
from src.io import atomic_torch_save
from src.models import build_model, prunable_layers
from src.pruning.budget import dropout_rate, recalibrate_batch_norm
from src.pruning.masks import add_masks, ensure_mask, load_masked_state, load_unmasked_state
from src.pruning.passes import physical_prune_pass, prune_pass
from src.pruning.physical import group_roots, rebuild
from src.pruning.shrink import carry_back, remaining_size, shrunk
from src.results import IterationRecord, LayerInfo, RetrainSummary, RunIdentity, SeedResult
from src.train import FitResult, evaluate_all, fit

EpochCallback = Callable[[dict[str, float]], None]


def checkpoint_path(out_dir: Path, seed: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"seed{seed}.pt"


class IdentityMismatch(UserError):
    """A result on disk was made by another run than the one asked for."""


def check_same_run(previous: SeedResult, identity: RunIdentity, where: Path) -> None:
    """Raise :class:`IdentityMismatch`, naming what changed, unless ``previous`` is of run ``identity``."""
    if previous.run.digest == identity.digest:
        return
    changes = results.identity_changes(previous.run.description, identity.description)
    raise IdentityMismatch(
        f"{where} is the result of another run ({'; '.join(changes)}); rerun with --fresh to replace it, "
        "or give the config another name to keep both")


def _read_checkpoint(path: Path) -> dict | None:
    """``{"state_dict", "result"}`` of a checkpoint, None if there is none; ValueError if unusable."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return {"state_dict": saved["state_dict"], "result": SeedResult.from_dict(saved["result"]),
                "history": saved.get("history", []), "wandb_run_id": saved.get("wandb_run_id")}
    except Exception as err:  # torch raises many types for a bad file; all mean "unusable"
        raise ValueError(f"{path}: unusable checkpoint ({brief(err)})") from None


def _read_result(path: Path) -> SeedResult | None:
    """The result JSON at ``path``, None if there is none; ValueError if unreadable."""
    if not path.exists():
        return None
    try:
        return results.load(path)
    except UserError as err:
        raise ValueError(str(err)) from None


def _stored(out_dir: Path, seed: int, report: Callable[[str], None]) -> tuple[dict | None, SeedResult | None]:
    """The seed's checkpoint and result JSON; an unusable file counts as absent, after ``report``-ing it."""
    stored = []
    for read, path in ((_read_checkpoint, checkpoint_path(out_dir, seed)),
                       (_read_result, results.result_path(out_dir, seed))):
        try:
            stored.append(read(path))
        except ValueError as err:
            report(str(err))
            stored.append(None)
    return stored[0], stored[1]


def _stored_seeds(out_dir: Path) -> list[int]:
    files = [*results.seed_files(out_dir), *Path(out_dir, "checkpoints").glob("seed*.pt")]
    return sorted({int(p.stem.removeprefix("seed")) for p in files if p.stem.removeprefix("seed").isdigit()})


def discard_other_runs(out_dir: Path, cfg: ExperimentConfig, model_files: dict[int, Path], replace: bool) -> None:
    """Check, before any work, that ``out_dir`` holds only results of the run asked for.

    ``model_files``: the trained model of each seed about to be pruned; one not trained yet is
    checked by the config alone (its model is to come). A stored result of another config (any
    seed) or of another trained model (these seeds) raises :class:`IdentityMismatch`; with
    ``replace``, the results of these seeds that another run made are deleted instead (their
    checkpoint, result and exported model), whether or not their new model exists yet, and
    other seeds' are left to their own jobs.
    """
    identities = {seed: results.run_identity(cfg, path) for seed, path in model_files.items() if path.exists()}
    current = results.RunIdentity.of(results.config_description(cfg)).digest
    for seed in _stored_seeds(out_dir):
        saved, written = _stored(out_dir, seed, report=lambda message: None)
        for previous, where in ((saved and saved["result"], checkpoint_path(out_dir, seed)),
                                (written, results.result_path(out_dir, seed))):
            if previous is None:
                continue
            expected = identities.get(seed)
            same = previous.run.digest == expected.digest if expected else previous.run.config_digest == current
            if same:
                continue
            if not replace:
                check_same_run(previous, expected or _config_only(cfg, previous), where)
            if seed in model_files:
                for path in (checkpoint_path(out_dir, seed), results.result_path(out_dir, seed),
                             Path(out_dir, "exported", f"seed{seed}.pt")):
                    path.unlink(missing_ok=True)
                print(f"seed {seed}: removed the result of another run ({where})")
                break


def _config_only(cfg: ExperimentConfig, previous: SeedResult) -> RunIdentity:
    """This config's identity with ``previous``'s model: for naming what changed in the config alone."""
    return results.RunIdentity.of({**results.config_description(cfg),
                                   "model_sha256": previous.run.description.get("model_sha256")})


def _resume(model: nn.Module, cfg: ExperimentConfig, seed: int, identity: RunIdentity,
            out_dir: Path) -> tuple[SeedResult, list] | None:
    """The result to continue and the physical pruning history so far (the pruned state restored
    into ``model``), or None to start afresh.

    The checkpoint is the truth: a result JSON that is missing, unreadable or behind it is
    rewritten from it. A result JSON without its checkpoint cannot be continued.
    """
    json_path = results.result_path(out_dir, seed)
    saved, written = _stored(out_dir, seed, report=lambda message: print(f"seed {seed}: {message}"))
    for previous, where in ((saved and saved["result"], checkpoint_path(out_dir, seed)), (written, json_path)):
        if previous is not None:
            check_same_run(previous, identity, where)
    if saved is None:
        if written is not None:
            print(f"seed {seed}: {json_path} has no checkpoint to continue from; pruning this seed again")
        return None
    result = saved["result"]
    if not results.same(written, result):
        results.save(result, out_dir)
        print(f"seed {seed}: {json_path} repaired from its checkpoint ({len(result.iterations)} iterations)")
    if cfg.model.uses_torch_pruning:
        rebuild(model, example_input(cfg, model), saved["history"])
        model.load_state_dict(saved["state_dict"])
    else:
        load_masked_state(model, saved["state_dict"], cfg.require_prune().modules)
    return result, saved["history"]


class Progress(NamedTuple):
    """A seed's checkpoint: iterations done, whether its run stopped at a divergence, its W&B run id."""

    iterations: int
    stopped: bool
    run_id: str | None

    def remaining(self, planned: int) -> int:
        return 0 if self.stopped else max(planned - self.iterations, 0)


def saved_progress(out_dir: Path, seed: int) -> Progress:
    """The progress of a seed's checkpoint; none done without a usable one."""
    try:
        saved = _read_checkpoint(checkpoint_path(out_dir, seed))
    except ValueError:  # unusable: prune_seed starts this seed over
        saved = None
    if saved is None:
        return Progress(0, False, None)
    result = saved["result"]
    return Progress(len(result.iterations), result.diverged_at is not None, saved["wandb_run_id"])


def pruning_history(out_dir: Path, seed: int) -> list:
    """The physical pruning history of a seed's last checkpoint ([] for masked models)."""
    saved = _read_checkpoint(checkpoint_path(out_dir, seed))
    return [] if saved is None else saved["history"]


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
        atomic_torch_save(checkpoint_path(out_dir, seed),
                          {"state_dict": model.state_dict(), "result": result.to_dict(), "history": history,
                           "wandb_run_id": run_id})
        results.save(result, out_dir)
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
                               torch.Generator().manual_seed(seed * 100_003 + draw), device)
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
