"""One-shot and iterative pruning of one seed's trained model, resumable.

An iteration is: score and prune every layer of ``prune.modules`` (one pass; the layers'
original activations are recorded once, at the start of the pass) -> evaluate -> retrain
(Adam at ``params.lr`` with early stopping) -> evaluate.

After every iteration a checkpoint (masked weights + the results so far) is written, then
the results JSON, both atomically. Every random choice of an iteration derives from
(seed, iteration), so a run resumed from a checkpoint gives the same results as one that
never stopped.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from src.config import ExperimentConfig
from src.data import Splits
from src.io import atomic_torch_save, atomic_write_json
from src.models import Net, prunable_layers
from src.pruning.criteria import select
from src.pruning.masks import add_masks, alive_neurons, load_masked_state, remove_neurons
from src.pruning.scoring import record_layers
from src.train import evaluate_all, fit

EpochCallback = Callable[[dict[str, float]], None]


def checkpoint_path(out_dir: Path, seed: int) -> Path:
    return out_dir / "checkpoints" / f"seed{seed}.pt"


def result_path(out_dir: Path, seed: int) -> Path:
    return out_dir / f"{seed}.json"


def prune_pass(model: Net, cfg: ExperimentConfig, splits: Splits, seed: int, iteration: int,
               device: torch.device) -> list[dict[str, Any]]:
    """Prune every configured layer once; return one record per layer."""
    prune = cfg.require_prune()
    layers = [prunable_layers(model)[i] for i in prune.modules]
    generator = torch.Generator().manual_seed(seed * 100_003 + iteration)
    recordings = record_layers(model, layers, splits.val, prune.params, cfg.params.batch_size, generator, device)
    records = []
    for layer in layers:
        start = time.perf_counter()
        alive = alive_neurons(layer.block.layer).cpu().numpy()
        choice = select(recordings[layer.index], prune.params, alive, (seed, iteration, layer.index))
        if choice.removed:
            remove_neurons(layer.block.layer, choice.removed)
        records.append({
            "index": layer.index,
            "alive_before": int(alive.sum()),
            "alive_after": int(alive.sum()) - len(choice.removed),
            "removed": choice.removed,
            "scores": choice.scores,
            "cka": choice.cka,
            "seconds": time.perf_counter() - start,
            "engine": choice.engine,
        })
    return records


def _new_result(cfg: ExperimentConfig, seed: int, model: Net, model_file: Path, baseline: dict) -> dict:
    prune = cfg.require_prune()
    return {
        "experiment": cfg.name,
        "seed": seed,
        "criterion": prune.params.type,
        "strategy": prune.strategy,
        "prune": asdict(prune),
        "model_file": str(model_file),
        "layers": [{"index": l.index, "name": l.name, "kind": l.kind, "width": l.width}
                   for l in prunable_layers(model) if l.index in prune.modules],
        "baseline": baseline,
        "iterations": [],
        "planned_iterations": prune.params.iterations,
        "complete": False,
    }


def load_checkpoint(path: Path, model: Net, prune_modules: tuple[int, ...]) -> dict | None:
    """Restore masked weights from ``path`` into ``model``; return the saved results, or None."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        load_masked_state(model, saved["state_dict"], prune_modules)
        return saved["result"]
    except Exception as err:  # a checkpoint we cannot read is not trusted: start over
        print(f"{path}: unusable checkpoint ({type(err).__name__}); starting this seed over")
        return None


def saved_progress(out_dir: Path, seed: int) -> tuple[int, bool, str | None]:
    """(iterations done, complete, W&B run id) of a seed's checkpoint; (0, False, None) without one."""
    try:
        saved = torch.load(checkpoint_path(out_dir, seed), map_location="cpu", weights_only=True)
        return len(saved["result"]["iterations"]), saved["result"]["complete"], saved.get("wandb_run_id")
    except Exception:  # noqa: BLE001 - missing or unusable: prune_seed starts this seed over
        return 0, False, None


def prune_seed(model: Net, cfg: ExperimentConfig, seed: int, splits: Splits, device: torch.device,
               model_file: Path, out_dir: Path, on_epoch: EpochCallback | None = None,
               on_iteration: Callable[[dict], None] | None = None, run_id: str | None = None) -> dict:
    """Run the configured strategy on ``model`` (trained, unmasked), resuming if possible.

    ``on_iteration(result)`` is called after each iteration is saved; ``run_id`` (a W&B run)
    is kept in the checkpoint, so that a resumed run continues it.
    """
    prune = cfg.require_prune()
    ckpt = checkpoint_path(out_dir, seed)
    result = load_checkpoint(ckpt, model, prune.modules)
    model.to(device)
    batch = cfg.params.batch_size
    if result is None:
        add_masks(model, prune.modules)
        result = _new_result(cfg, seed, model, model_file, evaluate_all(model, splits, batch, device))
    elif result["complete"]:
        print(f"seed {seed}: already pruned ({len(result['iterations'])} iterations), skipping")
    elif result["iterations"]:
        print(f"seed {seed}: resuming after iteration {len(result['iterations'])} of {prune.params.iterations}")
    for iteration in range(len(result["iterations"]) + 1, prune.params.iterations + 1):
        label = f"seed {seed} iteration {iteration}/{prune.params.iterations}"
        start = time.perf_counter()
        layers = prune_pass(model, cfg, splits, seed, iteration, device)
        scoring = time.perf_counter() - start
        after_prune = evaluate_all(model, splits, batch, device)
        alive = ", ".join(f"L{r['index']} {r['alive_after']}" for r in layers)
        print(f"{label}: pruned to {alive} in {scoring:.2f}s; test acc {after_prune['test_acc']:.4f}")
        record = {"iteration": iteration, "layers": layers, "after_prune": after_prune,
                  "after_retrain": None, "retrain": None, "seconds_scoring": scoring, "seconds_retraining": 0.0}
        if prune.params.retrain:
            fitted = fit(model, splits, cfg.params, seed=seed * 1000 + iteration, device=device,
                         on_epoch=on_epoch, label=label)
            record["after_retrain"] = evaluate_all(model, splits, batch, device)
            record["retrain"] = {k: v for k, v in fitted.to_dict().items() if k != "history"}
            record["seconds_retraining"] = fitted.seconds
            print(f"{label}: retrained {fitted.epochs} epochs; test acc {record['after_retrain']['test_acc']:.4f}")
        result["iterations"].append(record)
        result["complete"] = iteration == prune.params.iterations
        atomic_torch_save(ckpt, {"state_dict": model.state_dict(), "result": result, "wandb_run_id": run_id})
        atomic_write_json(result_path(out_dir, seed), result)
        if on_iteration is not None:
            on_iteration(result)
    if not result_path(out_dir, seed).exists():
        atomic_write_json(result_path(out_dir, seed), result)
    return result


def final_alive(result: dict) -> dict[int, int]:
    """Neurons left per pruned layer after the last completed iteration."""
    alive = {layer["index"]: layer["width"] for layer in result["layers"]}
    for record in result["iterations"]:
        for layer in record["layers"]:
            alive[layer["index"]] = layer["alive_after"]
    return alive


def summary_rows(results: list[dict]) -> list[str]:
    """A small fixed-width table: seed, neurons left per layer, test accuracy at each stage."""
    rows = [f"{'seed':>6}  {'alive per layer':<22}{'baseline':>9}{'pruned':>9}{'retrained':>10}"]
    for result in results:
        last = result["iterations"][-1] if result["iterations"] else None
        alive = "/".join(str(n) for n in final_alive(result).values())
        pruned = last["after_prune"]["test_acc"] if last else float("nan")
        retrained = (last["after_retrain"] or {}).get("test_acc", float("nan")) if last else float("nan")
        rows.append(f"{result['seed']:>6}  {alive:<22}{result['baseline']['test_acc']:>9.4f}"
                    f"{pruned:>9.4f}{retrained:>10.4f}")
    return rows
