"""Depth pruning of one seed's trained model (``prune.strategy`` "depth"), resumable.

For each removal count k of the config, from the trained model: :func:`cka_prune.depth.select`
ranks and removes k of the model's removable blocks (:func:`cka_prune.depth.find_blocks`) on the
calibration samples, with the configured criterion, greediness, span and patch;
:func:`cka_prune.depth.apply` builds the smaller network; BatchNorm is recalibrated (if
configured), the network evaluated, sized and timed, then retrained (if configured) and
evaluated again. Each count is one :class:`src.depth_results.DepthPoint`; the record
(:mod:`src.depth_results`) is written after every count, so a rerun skips the counts done.
Because every count starts from the trained model, the record is the whole state: there is no
checkpoint.

**Random draws.** The calibration samples are drawn once per seed from the training split
(``pass_seed(seed, 0)``, a draw no width pass uses); count k's BatchNorm batches and retraining
derive from ``pass_seed(seed, k)``; the ``random`` criterion's generator is ``pass_seed(seed, 0)``.
So a count's result does not depend on which other counts ran, nor on an interruption.

**Calibration loss** (the ``loss`` criterion): the model's training loss, the mean cross-entropy
of :func:`src.train.evaluate` in eval mode, on the calibration samples.

With ``prune.params.damage`` the record also holds, once per seed, every removable block's
damage alone (validation and test metrics with the block as the identity and as its patch,
BatchNorm recalibrated first where configured, with the calibration draw's generator) and
every criterion's one-shot scores on the trained model, for ranking quality (Spearman rho,
regret of the first choice).
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

from cka_prune import depth
from src import depth_results, provenance
from src.config import DEPTH_CRITERIA, DepthParams, ExperimentConfig
from src.config.depth import check_counts
from src.data import Split, Splits, iterate_batches
from src.depth_results import BlockDamage, DepthPoint, DepthResult, Latency
from src.errors import UserError
from src.pruning.budget import recalibrate_batch_norm
from src.pruning.passes import pass_seed
from src.pruning.resume import IdentityMismatch, check_same_run
from src.results import RetrainSummary, RunIdentity, result_path
from src.train import evaluate, evaluate_all, fit

CALIBRATION_DRAW = 0  # the pass_seed "iteration" of the calibration samples: width passes start at 1
EVALUATED = ("val", "test")


class Calibration:
    """The seed's calibration samples: input batches for recording, and the training loss on them."""

    def __init__(self, splits: Splits, samples: int, batch_size: int, seed: int, device: torch.device):
        generator = torch.Generator().manual_seed(pass_seed(seed, CALIBRATION_DRAW))
        index = torch.randperm(len(splits.train), generator=generator)[:samples]
        self.split: Split = splits.train.take(index)
        self.batch_size = batch_size
        self.device = device
        self.batches = [x for x, _ in iterate_batches(self.split, batch_size, device=device)]

    def loss(self, model: nn.Module) -> float:
        return evaluate(model, self.split, self.batch_size, self.device).loss

    @property
    def example(self) -> torch.Tensor:
        """One calibration input on the CPU: what sizes and times a network."""
        return self.batches[0][:1].cpu()


def plan_removal(model: nn.Module, names: list[str], calibration: Calibration, p: DepthParams, criterion: str,
           count: int, seed: int, greedy: bool | None = None) -> depth.DepthPlan:
    """:func:`cka_prune.depth.select` as ``p`` configures it (``criterion``, ``greedy`` overriding it)."""
    return depth.select(model, names, calibration.batches, criterion=criterion, count=count,
                        greedy=p.greedy if greedy is None else greedy, span=p.library_span,
                        compensate=p.compensate, ridge=p.ridge, loss=calibration.loss,
                        seed=pass_seed(seed, CALIBRATION_DRAW))


def timed(model: nn.Module, example: torch.Tensor, wanted: bool) -> Latency | None:
    """One-thread CPU latency at batch 1 and 64 of an eval-mode CPU copy of ``model`` (None if not ``wanted``)."""
    if not wanted:
        return None
    seconds = depth.latency(copy.deepcopy(model).cpu().eval(), example, batch_sizes=(1, 64), threads=1)
    return {str(batch): float(s) for batch, s in seconds.items()}


def size(model: nn.Module, example: torch.Tensor) -> depth.Cost:
    return depth.cost(copy.deepcopy(model).cpu().eval(), example)


def stored_result(out_dir: Path, seed: int, identity: RunIdentity) -> DepthResult | None:
    """The seed's record to continue, None if there is none; IdentityMismatch if another run made it."""
    path = result_path(out_dir, seed)
    if not path.exists():
        return None
    previous = depth_results.load(path)
    check_same_run(previous, identity, path)
    return previous


def counts_left(cfg: ExperimentConfig, out_dir: Path, seed: int) -> int:
    """The removal counts a run of ``cfg`` has still to make for ``seed`` (before the model is loaded:
    ``fractions`` as if no two gave the same count)."""
    p = cfg.require_depth().params
    asked = p.blocks or p.fractions
    path = result_path(out_dir, seed)
    done = depth_results.load(path).points if depth_results.is_depth_file(path) else ()
    return max(len(asked) - len(done), 0)


def exported_path(out_dir: Path, seed: int, count: int) -> Path:
    """Where ``--export`` saves the network of ``count`` blocks removed (:func:`src.export.export_depth`)."""
    return Path(out_dir) / "exported" / f"seed{seed}-k{count}.pt"


def discard_other_depth_runs(out_dir: Path, cfg: ExperimentConfig, model_files: dict[int, Path],
                             fresh: bool) -> None:
    """Before any work: a stored record of these seeds that another run made (another config or trained
    model, or a width result) raises IdentityMismatch, or with ``fresh`` is deleted with its exports."""
    for seed, model_file in model_files.items():
        path = result_path(out_dir, seed)
        if not path.exists() or not model_file.exists():
            continue
        identity = depth_results.run_identity(cfg, model_file)
        previous = depth_results.load(path) if depth_results.is_depth_file(path) else None
        if previous is not None and previous.run.digest == identity.digest:
            continue
        if not fresh:
            if previous is None:
                raise IdentityMismatch(f"{path} is not a depth-pruning result; rerun with --fresh to replace it, "
                                       "or give the config another name to keep both")
            check_same_run(previous, identity, path)
        path.unlink()
        for exported in Path(out_dir, "exported").glob(f"seed{seed}-k*"):
            exported.unlink()
        print(f"seed {seed}: removed the result of another run ({path})")


def prune_depth_seed(model: nn.Module, cfg: ExperimentConfig, seed: int, splits: Splits, device: torch.device,
                     model_file: Path, out_dir: Path,
                     on_point: Callable[[nn.Module, DepthPoint], None] | None = None) -> DepthResult:
    """Run every removal count of the config not yet in the seed's record; return the record.

    ``on_point(pruned, point)`` is called after each count is saved, with the pruned (and
    retrained) network: the exporter's hook.
    """
    p = cfg.require_depth().params
    identity = depth_results.run_identity(cfg, model_file)
    result = stored_result(out_dir, seed, identity)
    model.to(device).eval()
    calibration = Calibration(splits, p.samples, cfg.params.batch_size, seed, device)
    names = depth.find_blocks(model, calibration.batches[0][:1])
    if not names:
        raise UserError(f"{cfg.source}: the {cfg.model.type} model has no removable blocks")
    counts = check_counts(p, len(names), str(cfg.source))
    print(f"seed {seed}: {len(names)} removable blocks ({', '.join(names)}); removing {', '.join(map(str, counts))}")
    made_by = provenance.current(device)
    if result is None:
        cost = size(model, calibration.example)
        result = DepthResult(
            run=identity, experiment=cfg.name, seed=seed, criterion=p.criterion, model_file=str(model_file),
            blocks=tuple(names), baseline=_evaluate(model, cfg, splits, device), baseline_macs=cost.macs,
            baseline_parameters=cost.params, provenance=made_by, counts=counts,
            baseline_latency_seconds=timed(model, calibration.example, p.latency))
    result = replace(result, counts=counts)
    if p.damage and result.damage is None:
        result = replace(result, damage=block_damage(model, names, calibration, cfg, splits, seed, device),
                         criteria_scores=criteria_scores(model, names, calibration, p, seed))
    depth_results.save(result, out_dir)
    todo = [k for k in counts if result.point(k) is None]
    if not todo:
        print(f"seed {seed}: already pruned (counts {', '.join(map(str, counts))}), skipping")
    elif result.points:
        changes = result.points[-1].provenance.changes(made_by)
        if changes:
            print(f"seed {seed}: continuing under other conditions than count {result.points[-1].count} was made "
                  f"({'; '.join(changes)})")
    for count in todo:
        try:
            pruned, point = prune_count(model, names, calibration, cfg, splits, seed, count, device, made_by)
        except KeyboardInterrupt as interrupt:
            interrupt.add_note(f"seed {seed} count {count}, which will be redone "
                               f"({len(result.points)} counts of this seed are saved)")
            raise
        result = result.with_point(point)
        depth_results.save(result, out_dir)
        if on_point is not None:
            on_point(pruned, result.point(count))
    return result


def _evaluate(model: nn.Module, cfg: ExperimentConfig, splits: Splits, device: torch.device) -> dict[str, float]:
    return evaluate_all(model, splits, cfg.params.batch_size, device, EVALUATED)


def prune_count(model: nn.Module, names: list[str], calibration: Calibration, cfg: ExperimentConfig,
                splits: Splits, seed: int, count: int, device: torch.device,
                made_by: provenance.Provenance) -> tuple[nn.Module, DepthPoint]:
    """``count`` blocks removed from the trained ``model`` (left as it is): the pruned network and its
    point, made under ``made_by``."""
    p = cfg.require_depth().params
    label = f"seed {seed}: {count} of {len(names)} blocks"
    start = time.perf_counter()
    plan = plan_removal(model, names, calibration, p, p.criterion, count, seed)
    pruned = depth.apply(model, plan).to(device)
    selecting = time.perf_counter() - start
    if p.recalibrate_bn:
        recalibrate_batch_norm(pruned, splits.train, cfg.params.batch_size,
                               torch.Generator().manual_seed(pass_seed(seed, count)), device)
    cost = size(pruned, calibration.example)
    point = DepthPoint(
        count=count, removed=tuple(plan.removed), spans=tuple(depth.label(span) for span in plan.spans),
        scores=tuple({k: float(v) for k, v in step.items()} for step in plan.steps),
        patch_errors={k: float(v) for k, v in plan.patch_errors.items()},
        after_prune=_evaluate(pruned, cfg, splits, device), macs=cost.macs, parameters=cost.params,
        provenance=made_by, latency_seconds=timed(pruned, calibration.example, p.latency),
        seconds_selecting=selecting)
    print(f"{label}: removed {', '.join(plan.removed)} in {selecting:.2f}s; "
          f"test acc {point.after_prune['test_acc']:.4f}")
    if not p.retrain_epochs:
        return pruned, point
    fitted = fit(pruned, splits, p.retraining(cfg.params), seed=pass_seed(seed, count), device=device, label=label)
    pruned.eval()
    point = replace(point, after_retrain=_evaluate(pruned, cfg, splits, device),
                    retrain=RetrainSummary(fitted.epochs, fitted.best_epoch, fitted.diverged, fitted.seconds),
                    seconds_retraining=fitted.seconds)
    print(f"{label}: retrained {fitted.epochs} epochs; test acc {point.after_retrain['test_acc']:.4f}")
    return pruned, point


def block_damage(model: nn.Module, names: list[str], calibration: Calibration, cfg: ExperimentConfig,
                 splits: Splits, seed: int, device: torch.device) -> tuple[BlockDamage, ...]:
    """Every removable block removed alone from ``model`` (left as it is): evaluated as the identity and
    as its patch (fit on the calibration samples with the configured ridge), BatchNorm recalibrated
    first where configured (on a copy, with the calibration draw's generator)."""
    p = cfg.require_depth().params
    moments = depth.record(model, names, calibration.batches)

    def evaluated(name: str, patches: dict) -> dict[str, float]:
        trial = copy.deepcopy(model) if p.recalibrate_bn else model
        with depth.skipped(trial, [(name,)], patches):
            if p.recalibrate_bn:
                recalibrate_batch_norm(trial, splits.train, cfg.params.batch_size,
                                       torch.Generator().manual_seed(pass_seed(seed, CALIBRATION_DRAW)), device)
            return _evaluate(trial, cfg, splits, device)

    rows = []
    for name in names:
        patch = depth.fit_patch(moments[name], p.ridge)
        rows.append(BlockDamage(block=name, removed=evaluated(name, {}), patched=evaluated(name, {name: patch}),
                                patch_error=float(patch.error)))
    return tuple(rows)


def criteria_scores(model: nn.Module, names: list[str], calibration: Calibration, p: DepthParams,
                    seed: int) -> dict[str, dict[str, float]]:
    """Every criterion's scores of the single blocks, ranked once on the trained ``model``."""
    single = replace(p, span=1)
    scores = {}
    for criterion in DEPTH_CRITERIA:
        plan = plan_removal(model, names, calibration, single, criterion, 1, seed, greedy=False)
        scores[criterion] = {k: float(v) for k, v in plan.steps[0].items()}
    return scores


def depth_summary_table(results: list[DepthResult]) -> str:
    """Seed, count, blocks removed, test accuracy before, after removal and after retraining."""
    rows = [(r.seed, point.count, ", ".join(point.removed), r.baseline["test_acc"], point.after_prune["test_acc"],
             point.after_retrain["test_acc"] if point.after_retrain else None)
            for r in results for point in sorted(r.points, key=lambda q: q.count)]
    return tabulate(rows, headers=("seed", "blocks", "removed", "baseline", "pruned", "retrained"),
                    floatfmt=".4f", missingval="-")
