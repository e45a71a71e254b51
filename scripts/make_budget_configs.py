"""Write config/budget-fmnist/: the retraining-budget and compensation study's configs.

Usage: python3 scripts/make_budget_configs.py

One folder per cell of the one-shot grid (retraining budget x compensation), one config per
criterion in each, every config a sweep over RATES from the study's trained models (the same
model, data and params as config/study-fmnist, so the trained models are shared); and one folder
per compensation for the iterative 15 x 20 % schedule with one epoch of retraining per pass.
Rerun it after changing the grid; the configs it writes are committed.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "config" / "budget-fmnist"
MODEL = {"type": "mlp", "input_size": 784, "hidden_sizes": [512, 512], "output_size": 10, "dropout_rate": 0.5}
DATA = {"dataset": "fashion-mnist", "root": "data", "val_split": 0.0833333}
PARAMS = {"lr": 0.001, "batch_size": 512, "epochs": 50, "patience": 3}
SEEDS = list(range(10))
RATES = [0.5, 0.75, 0.9, 0.95]
# Fitting (and scoring) samples of the validation split, for every criterion alike.
SAMPLES = 2000
CRITERIA = {
    "cka": {"type": "cka"},
    "cka-next": {"type": "cka", "target": "next"},
    "cka-refit": {"type": "cka", "target": "refit"},
    "obs": {"type": "obs"},
    "l1": {"type": "l1"},
    "taylor": {"type": "taylor"},
    "apoz": {"type": "apoz"},
    "random": {"type": "random"},
}
BUDGETS = {
    "e0": {"retrain_epochs": 0},
    "e1": {"retrain_epochs": 1, "shrink": True},
    "e1-nodrop": {"retrain_epochs": 1, "retrain_dropout": 0.0, "shrink": True},
}
COMPENSATIONS = ("none", "bias", "lstsq")
ITERATIVE_CRITERIA = ("cka", "cka-refit", "obs", "l1", "taylor", "random")
ITERATIVE_COMPENSATIONS = ("none", "lstsq")


def config(comment: str, strategy: str, params: dict) -> dict:
    return {"_comment": comment, "model": MODEL, "data": DATA, "params": PARAMS,
            "prune": {"strategy": strategy, "params": {**params, "samples": SAMPLES}, "modules": [0, 1]},
            "seeds": SEEDS}


def grid() -> dict[Path, dict]:
    """Every config of the study by its path under ROOT."""
    configs = {}
    for budget, retraining in BUDGETS.items():
        for compensate in COMPENSATIONS:
            for name, criterion in CRITERIA.items():
                comment = (f"Budget study (scripts/budget.sh): {name}, one-shot at each rate from the trained model, "
                           f"compensate {compensate}, retraining {budget}.")
                configs[Path(f"{budget}-{compensate}", f"{name}.json")] = config(
                    comment, "one_shot", {**criterion, "rates": RATES, "compensate": compensate, **retraining})
    for compensate in ITERATIVE_COMPENSATIONS:
        for name in ITERATIVE_CRITERIA:
            comment = (f"Budget study (scripts/budget.sh): {name}, 15 x 20 % with one epoch of retraining per pass, "
                       f"compensate {compensate}.")
            configs[Path(f"iterative-{compensate}", f"{name}.json")] = config(
                comment, "iterative", {**CRITERIA[name], "iterations": 15, "rate": 0.2, "retrain_epochs": 1,
                                       "shrink": True, "compensate": compensate})
    return configs


def main() -> None:
    for path, raw in grid().items():
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        lines = ",\n".join(f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in raw.items())
        (ROOT / path).write_text("{\n" + lines + "\n}\n")
    print(f"wrote {len(grid())} configs under {ROOT}")


if __name__ == "__main__":
    main()
