"""Result records for the report's tests, written as main_prune.py writes them (shared by tests/test_report_*.py)."""

from pathlib import Path

import pytest

from src import results
from src.provenance import Provenance
from src.results import IterationRecord, LayerInfo, LayerStep, RetrainSummary, RunIdentity, SeedResult

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (10, 8)


def metrics(test_acc: float) -> dict:
    return {"train_loss": 0.1, "train_acc": 0.99, "val_loss": 0.2, "val_acc": 0.97, "test_loss": 0.2, "test_acc": test_acc}


def provenance(threads: int = 1, torch: str = "2.13.0", commit: str = "a" * 40) -> Provenance:
    return Provenance(commit=commit, dirty=False, python="3.11.2", torch=torch, numpy="2.1.0",
                      torch_pruning="1.6.1", device="cpu", threads=threads)


def iteration(number: int, removed: list[list[int]], alive_before: list[int], cka: list[list[float]],
              pruned: float, retrained: float | None, epochs: int = 2, diverged: bool = False,
              skipped: dict[int, str] | None = None, made: Provenance | None = None) -> IterationRecord:
    """One iteration; layer j loses removed[j] out of alive_before[j] (nothing when skipped[j] gives a reason)."""
    skipped = skipped or {}
    layers = tuple(LayerStep(index=j, alive_before=alive_before[j], alive_after=alive_before[j] - len(removed[j]),
                             removed=tuple(removed[j]), scores=tuple(cka[j]), cka=tuple(cka[j]), seconds=0.01,
                             engine="fast", skipped=skipped.get(j)) for j in range(len(WIDTHS)))
    return IterationRecord(iteration=number, layers=layers, after_prune=metrics(pruned),
                           after_retrain=None if retrained is None else metrics(retrained),
                           retrain=RetrainSummary(epochs=epochs, best_epoch=1, diverged=diverged, seconds=0.5),
                           provenance=made)


def simple(number: int, pruned: float, retrained: float | None, **kwargs) -> IterationRecord:
    """An iteration that removes one neuron from each layer (10 -> 9 - number + 1 ...)."""
    return iteration(number, [[number], [number]], [WIDTHS[0] - number + 1, WIDTHS[1] - number + 1],
                     [[0.9], [0.9]], pruned, retrained, **kwargs)


def run_identity(model_file: str, criterion: str, rate: float = 0.2) -> RunIdentity:
    return RunIdentity.of({"model_sha256": model_file, "prune": {"type": criterion, "rate": rate}})


def write_result(folder: Path, experiment: str, criterion: str, seed: int, baseline: float,
                 iterations: list[IterationRecord], planned: int = 2, model_file: str | None = None,
                 rate: float = 0.2, run: RunIdentity | None = None) -> SeedResult:
    """A result as main_prune.py writes it; results of one folder share a run unless ``rate`` differs.

    The model file's name stands in for its sha256: seeds with the same ``model_file`` pruned the same model.
    """
    model_file = model_file or f"models/mlp_seed{seed}.pt"
    result = SeedResult(
        run=run or run_identity(model_file, criterion, rate), experiment=experiment, seed=seed, criterion=criterion,
        strategy="iterative", model_file=model_file,
        layers=tuple(LayerInfo(j, f"hidden.{j}.layer", "linear", w) for j, w in enumerate(WIDTHS)),
        baseline=metrics(baseline), planned_iterations=planned, iterations=tuple(iterations))
    results.save(result, folder)
    return result


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """cka: seed 0 complete, seed 1 stopped after iteration 1, seed 2 missing.
    l1: seeds 0-2; seed 1 pruned a different trained model."""
    cka, l1 = tmp_path / "output" / "demo" / "cka", tmp_path / "output" / "demo" / "l1"
    write_result(cka, "demo/cka", "cka", 0, 0.90, [
        iteration(1, [[1, 2], [0, 1]], [10, 8], [[0.99, 0.97], [0.98, 0.95]], 0.80, 0.88),
        iteration(2, [[3, 4], [5]], [8, 6], [[0.96, 0.93], [0.94]], 0.70, 0.85),
    ])
    write_result(cka, "demo/cka", "cka", 1, 0.94, [
        iteration(1, [[6, 7], [2, 3]], [10, 8], [[0.995, 0.96], [0.97, 0.96]], 0.86, 0.92),
    ])
    write_result(l1, "demo/l1", "l1", 0, 0.90, [
        iteration(1, [[2, 5], [1, 0]], [10, 8], [[0.9, 0.8], [0.9, 0.85]], 0.70, 0.86),
        iteration(2, [[1, 3], [5]], [8, 6], [[0.9, 0.7], [0.8]], 0.50, 0.80),
    ])
    write_result(l1, "demo/l1", "l1", 1, 0.94, [
        iteration(1, [[6, 7], [2, 3]], [10, 8], [[0.9, 0.8], [0.9, 0.8]], 0.86, 0.90),
        iteration(2, [[0, 1], [4]], [8, 6], [[0.9, 0.8], [0.9]], 0.60, 0.84),
    ], model_file="models/other_seed1.pt")
    write_result(l1, "demo/l1", "l1", 2, 0.92, [])
    return cka, l1


def seeds_with_gaps(tmp_path: Path, gaps: list[float], iterations: int = 1) -> tuple[Path, Path]:
    """cka and l1 runs over len(gaps) seeds; cka - l1 after retraining is gaps[s] on seed s at every iteration."""
    cka, l1 = tmp_path / "cka", tmp_path / "l1"
    for seed, gap in enumerate(gaps):
        write_result(cka, "cka", "cka", seed, 0.9, [simple(i, 0.7, 0.8 + gap) for i in range(1, iterations + 1)],
                     planned=iterations)
        write_result(l1, "l1", "l1", seed, 0.9, [simple(i, 0.7, 0.8) for i in range(1, iterations + 1)],
                     planned=iterations)
    return cka, l1
