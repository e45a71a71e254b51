"""Torch-Pruning's own importances, by the names the harness gives them (the baselines)."""

from __future__ import annotations

import torch_pruning as tp


def baseline_importance(name: str) -> tp.importance.Importance:
    """Torch-Pruning's importance for a baseline name.

    tp_l1: group L1 norm (MagnitudeImportance(p=1), mean over the group's layers, mean-normalised);
    tp_bn: BatchNorm scale |gamma| (BNScaleImportance, network slimming); tp_taylor: first-order
    Taylor |w * dL/dw| (TaylorImportance; needs gradients); tp_random: RandomImportance.
    """
    return {
        "tp_l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "tp_bn": tp.importance.BNScaleImportance,
        "tp_taylor": tp.importance.TaylorImportance,
        "tp_random": tp.importance.RandomImportance,
    }[name]()
