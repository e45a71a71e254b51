"""Write config/budget-fmnist/ and config/budget-fmnist-resnet/: the retraining-budget and
compensation study's configs.

Usage: python3 scripts/make_budget_configs.py

The MLP grid: one folder per cell of the one-shot grid (retraining budget x compensation), one
config per criterion in each, every config a sweep over RATES from the study's trained models (the
same model, data and params as config/study-fmnist, so the trained models are shared); and one
folder per compensation for the iterative 15 x 20 % schedule with one epoch of retraining per pass.
The ResNet-20 grid: the same one-shot cells for the Torch-Pruning criteria on config/fmnist-cpu's
trained models, every group pruned by RESNET_RATES. Rerun it after changing a grid; the configs it
writes are committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.config import write_configs  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "config"
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


# ResNet-20 (Torch-Pruning): config/fmnist-cpu's model, data and training, so its trained models are
# shared; one-shot pruning of every group. Fine-tuning uses a tenth of the training rate, as the
# CIFAR pruning recipes do; BatchNorm statistics are re-estimated after every pass (the default).
RESNET_MODEL = {"type": "resnet", "depth": 20, "width": 16}
RESNET_DATA = {"dataset": "fashion-mnist", "root": "data"}
RESNET_PARAMS = {"lr": 0.1, "batch_size": 128, "epochs": 3, "patience": None, "optimizer": "sgd", "momentum": 0.9,
                 "weight_decay": 0.0005, "schedule": "cosine", "augment": True}
RESNET_SEEDS = [0, 1, 2]
RESNET_RATES = [0.3, 0.5]
RESNET_SAMPLES = 512
RESNET_CRITERIA = ("cka", "tp_l1", "tp_bn", "tp_taylor", "tp_random")
RESNET_BUDGETS = {
    "e0": {"retrain_epochs": 0},
    "e1": {"retrain_epochs": 1, "retrain_lr": 0.01},
}
RESNET_COMPENSATIONS = ("none", "lstsq")


def config(comment: str, strategy: str, params: dict) -> dict:
    return {"_comment": comment, "model": MODEL, "data": DATA, "params": PARAMS,
            "prune": {"strategy": strategy, "params": {**params, "samples": SAMPLES}, "modules": [0, 1]},
            "seeds": SEEDS}


def resnet_grid() -> dict[Path, dict]:
    """Every config of the ResNet-20 study by its path under config/."""
    configs = {}
    for budget, retraining in RESNET_BUDGETS.items():
        for compensate in RESNET_COMPENSATIONS:
            for name in RESNET_CRITERIA:
                comment = (f"Budget study, ResNet-20 (scripts/budget.sh resnet): {name}, one-shot at each rate of "
                           f"every group from the trained model, compensate {compensate}, retraining {budget}.")
                params = {"type": name, "rates": RESNET_RATES, "compensate": compensate, **retraining,
                          "samples": RESNET_SAMPLES}
                configs[Path("budget-fmnist-resnet", f"{budget}-{compensate}", f"{name}.json")] = {
                    "_comment": comment, "model": RESNET_MODEL, "data": RESNET_DATA, "params": RESNET_PARAMS,
                    "prune": {"strategy": "one_shot", "params": params}, "seeds": RESNET_SEEDS}
    return configs


def grid() -> dict[Path, dict]:
    """Every config of the MLP study by its path under config/."""
    configs = {}
    for budget, retraining in BUDGETS.items():
        for compensate in COMPENSATIONS:
            for name, criterion in CRITERIA.items():
                comment = (f"Budget study (scripts/budget.sh): {name}, one-shot at each rate from the trained model, "
                           f"compensate {compensate}, retraining {budget}.")
                configs[Path("budget-fmnist", f"{budget}-{compensate}", f"{name}.json")] = config(
                    comment, "one_shot", {**criterion, "rates": RATES, "compensate": compensate, **retraining})
    for compensate in ITERATIVE_COMPENSATIONS:
        for name in ITERATIVE_CRITERIA:
            comment = (f"Budget study (scripts/budget.sh): {name}, 15 x 20 % with one epoch of retraining per pass, "
                       f"compensate {compensate}.")
            configs[Path("budget-fmnist", f"iterative-{compensate}", f"{name}.json")] = config(
                comment, "iterative", {**CRITERIA[name], "iterations": 15, "rate": 0.2, "retrain_epochs": 1,
                                       "shrink": True, "compensate": compensate})
    return configs


def main() -> None:
    configs = {**grid(), **resnet_grid()}
    write_configs(configs, CONFIG)
    print(f"wrote {len(configs)} configs under {CONFIG}/budget-fmnist*")


if __name__ == "__main__":
    main()
