"""What W&B runs are tagged with and log under which names, against hand-written records."""

import math
from pathlib import Path

import pytest

from src.config import parse_config
from src.results import IterationRecord, LayerInfo, LayerStep, RetrainSummary, RunIdentity, SeedResult
from src.run_summary import artifact_name, best_iteration, prune_summary, run_tags, running_names, train_summary
from tests.conftest import tiny_raw


def accuracies(val_acc: float, test_acc: float) -> dict:
    return {"val_loss": 0.3, "val_acc": val_acc, "test_loss": 0.3, "test_acc": test_acc}


def iteration(number: int, alive_after: int, val_acc: float, test_acc: float, *, retrained: bool = True,
              diverged: bool = False) -> IterationRecord:
    """An iteration of a 10-neuron layer that ends with ``alive_after`` neurons, 100 parameters per neuron."""
    step = LayerStep(0, alive_after + 2, alive_after, (number * 2, number * 2 + 1), (None, None), (), 0.0, "fast")
    after_prune = accuracies(val_acc - 0.5, test_acc - 0.5)
    return IterationRecord(iteration=number, layers=(step,), after_prune=after_prune,
                           after_retrain=accuracies(val_acc, test_acc) if retrained else None,
                           retrain=RetrainSummary(1, 1, diverged, 0.0) if retrained else None,
                           parameters=100 * alive_after, macs=90 * alive_after)


def result_of(*iterations: IterationRecord) -> SeedResult:
    return SeedResult(run=RunIdentity.of({"model_sha256": "ab"}), experiment="demo/cka", seed=0, criterion="cka",
                      strategy="iterative", model_file="m.pt", layers=(LayerInfo(0, "hidden.0", "linear", 10),),
                      baseline=accuracies(0.95, 0.94), planned_iterations=len(iterations), iterations=iterations,
                      baseline_parameters=1000, baseline_macs=900)


def test_the_prune_summary_holds_the_baseline_the_last_and_the_best_validated_iteration():
    result = result_of(iteration(1, 8, 0.90, 0.91), iteration(2, 6, 0.93, 0.89), iteration(3, 4, 0.80, 0.92))
    assert prune_summary(result) == {
        "baseline/test_acc": 0.94, "baseline/val_acc": 0.95, "baseline/parameters": 1000, "baseline/macs": 900,
        "final/test_acc": 0.92, "final/val_acc": 0.80, "final/parameters": 400, "final/macs": 360,
        "final/iteration": 3, "final/fraction_remaining": 0.4,
        # iteration 2 has the best validation accuracy; iteration 3's higher test accuracy picks nothing
        "best/test_acc": 0.89, "best/val_acc": 0.93, "best/parameters": 600, "best/macs": 540,
        "best/iteration": 2, "best/fraction_remaining": 0.6,
    }


def test_best_breaks_ties_towards_the_more_pruned_and_skips_diverged_and_nan():
    tie = result_of(iteration(1, 8, 0.9, 0.9), iteration(2, 6, 0.9, 0.8))
    assert best_iteration(tie).iteration == 2
    diverged = result_of(iteration(1, 8, 0.8, 0.8), iteration(2, 6, 0.99, 0.1, diverged=True))
    assert best_iteration(diverged).iteration == 1 and prune_summary(diverged)["final/iteration"] == 2
    unknown = result_of(iteration(1, 8, math.nan, 0.8))
    assert best_iteration(unknown) is None and not any(k.startswith("best/") for k in prune_summary(unknown))


def test_without_retraining_an_iteration_ends_after_its_pass():
    summary = prune_summary(result_of(iteration(1, 8, 0.9, 0.85, retrained=False)))
    assert (summary["final/val_acc"], summary["final/test_acc"]) == pytest.approx((0.4, 0.35))
    assert summary["best/iteration"] == 1


def test_a_result_before_its_first_iteration_has_only_the_baseline():
    assert set(prune_summary(result_of())) == {"baseline/test_acc", "baseline/val_acc", "baseline/parameters",
                                                "baseline/macs"}


def test_the_train_summary_separates_the_kept_weights_from_the_last_epoch():
    history = [{"epoch": 1, "lr": 0.01, "train_loss": 0.5, "train_acc": 0.8, "val_loss": 0.4, "val_acc": 0.85,
                "seconds": 1.0},
               {"epoch": 2, "lr": 0.01, "train_loss": 0.3, "train_acc": 0.9, "val_loss": 0.45, "val_acc": 0.86,
                "seconds": 1.0}]
    kept = {f"{split}_{kind}": value for split, (loss, acc) in
            {"train": (0.35, 0.88), "val": (0.4, 0.85), "test": (0.41, 0.84)}.items()
            for kind, value in (("loss", loss), ("acc", acc))}
    record = {"seed": 0, "fit": {"epochs": 2, "best_epoch": 1, "diverged": False, "seconds": 2.0, "history": history},
              **kept}
    assert train_summary(record) == {
        "best/epoch": 1, "epochs": 2, "best/train_loss": 0.35, "best/train_acc": 0.88, "best/val_loss": 0.4,
        "best/val_acc": 0.85, "best/test_loss": 0.41, "best/test_acc": 0.84,
        "final/epoch": 2, "final/val_loss": 0.45, "final/val_acc": 0.86, "final/train_loss_running": 0.3,
        "final/train_acc_running": 0.9,
    }
    assert train_summary({**kept, "fit": None}) == {f"best/{name}": value for name, value in kept.items()}


def test_running_means_are_named_as_such():
    assert running_names({"epoch": 1, "train_loss": 0.5, "train_acc": 0.8, "val_acc": 0.7}) == {
        "epoch": 1, "train_loss_running": 0.5, "train_acc_running": 0.8, "val_acc": 0.7}


def test_tags_name_the_criterion_of_prune_runs_only():
    cfg = parse_config(tiny_raw(model={"type": "resnet", "depth": 8, "width": 4},
                                prune={"params": {"type": "tp_l1", "rate": 0.5}}), Path("c.json"))
    assert run_tags(cfg, "prune") == ["criterion:tp_l1", "dataset:mnist-5k", "model:resnet"]
    assert run_tags(cfg, "train") == run_tags(cfg, "search") == ["dataset:mnist-5k", "model:resnet"]


def test_artifact_names_use_only_characters_wandb_allows():
    assert artifact_name("study-fmnist/cka next", 3) == "study-fmnist-cka-next-seed3-pruned"
