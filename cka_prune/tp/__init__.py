"""CKA as a Torch-Pruning importance (:mod:`cka_prune.tp.importance`), and Torch-Pruning's own
importances as baselines (:mod:`cka_prune.tp.baselines`).

- :mod:`cka_prune.tp.groups`: what a group removes (its output layers, channel maps).
- :mod:`cka_prune.tp.recording`: the forward hooks, rows and the kept subset of samples.
- :mod:`cka_prune.tp.importance`: :class:`CKAImportance`, the greedy CKA pass per group.
"""

from cka_prune.tp.baselines import baseline_importance
from cka_prune.tp.importance import CKAImportance, GroupScore, normalize

__all__ = ["CKAImportance", "GroupScore", "baseline_importance", "normalize"]
