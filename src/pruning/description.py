"""What a prune run does, in words, before it starts: the configured choices and every value
derived from them (the engine that really runs, the scoring samples, the order of a pass, the
ridge, BatchNorm recalibration, retraining), so that nothing the run decides goes unsaid."""

from __future__ import annotations

from src.config import REFIT_CRITERIA, TP_CRITERIA, ExperimentConfig, PruneParams


def run_description(cfg: ExperimentConfig, device: str) -> list[str]:
    """The lines main_prune.py prints for ``cfg`` on ``device``."""
    prune = cfg.require_prune()
    p = prune.params
    budget = (f"a sweep over rates {list(p.rates)}, each from the trained model" if p.rates is not None else
              f"{p.iterations} x rate {p.rate}" if p.rate is not None else f"{p.iterations} x stop_cka {p.stop_cka}")
    where = "every Torch-Pruning group" if cfg.model.uses_torch_pruning else f"layers {list(prune.modules)}"
    return [f"{cfg.name}: {prune.strategy} {p.type} pruning of {where}, {budget}, on {device}",
            "  scoring: " + ", ".join(_scoring(cfg, p)),
            "  each pass: " + _pass_order(cfg, p),
            "  after each pass: " + ", ".join(_after_pass(cfg, p))]


def _scoring(cfg: ExperimentConfig, p: PruneParams) -> list[str]:
    samples = ("every validation sample" if p.samples == "all" else
               f"{cfg.params.batch_size} random validation samples (one batch)" if p.samples is None else
               f"{p.samples} random validation samples")
    if p.type in TP_CRITERIA:
        return [samples]
    engine = f"engine {p.scoring_engine}"
    if p.scoring_engine != p.engine:
        engine += f" (kernel {p.kernel}: the {p.engine} engine computes linear CKA only)"
    items = [engine, f"kernel {p.kernel}" + (" debiased" if p.debiased else "")]
    if not cfg.model.uses_torch_pruning:
        items.append(f"target {p.target}" + (f" (hook {p.hook})" if p.target == "layer" else ""))
    if p.type in REFIT_CRITERIA or p.target == "refit" or p.compensate == "lstsq":
        items.append(f"ridge {p.compensate_ridge} x the mean variance of the kept inputs")
    return items + [samples]


def _pass_order(cfg: ExperimentConfig, p: PruneParams) -> str:
    if cfg.model.uses_torch_pruning:
        refit = "" if p.compensate == "none" else f", then the removed channels' consumers compensated ({p.compensate})"
        return f"every group pruned at once (allocation {p.allocation}){refit}"
    if p.allocation == "global":
        return "every layer scored on the network at the start of the pass, one budget across them"
    if not p.sequential:
        return "every layer scored on the network at the start of the pass"
    why = f"compensate {p.compensate}" if p.compensate != "none" else f"type {p.type}"
    order = f"layer by layer in forward order, each scored on the network the layers before it left ({why})"
    return order if p.compensate == "none" else f"{order}, its consumer then compensated on the scoring samples"


def _after_pass(cfg: ExperimentConfig, p: PruneParams) -> list[str]:
    items = []
    if cfg.model.has_batch_norm:
        default = PruneParams.defaults_for(cfg.model).recalibrate_bn
        items.append(("BatchNorm statistics re-estimated" if p.recalibrate_bn else "BatchNorm statistics kept")
                     + (" (the default with BatchNorm)" if p.recalibrate_bn == default else ""))
    if not p.retrains:
        return items + ["no retraining"]
    recipe = p.retraining(cfg.params)
    epochs = (f"{recipe.epochs} epochs" if recipe.patience is None else
              f"up to {recipe.epochs} epochs, early-stopped (patience {recipe.patience})")
    rewind = f" from epoch {p.rewind_epoch}" if p.retrain == "rewind" else ""
    return items + [f"retrain ({p.retrain}{rewind}) {epochs} at lr {recipe.lr}"]
