"""CKA as a Torch-Pruning importance (:mod:`cka_prune.tp.importance`), and Torch-Pruning's own
importances as baselines (:mod:`cka_prune.tp.baselines`).

- :mod:`cka_prune.tp.groups`: what a group removes (its output layers, channel maps).
- :mod:`cka_prune.tp.recording`: the forward hooks, rows, padding masks and the kept samples.
- :mod:`cka_prune.tp.plan`: where a group is scored (sites) and what it removes (units).
- :mod:`cka_prune.tp.transformers`: attention heads and MLPs by name; head counts after a step.
- :mod:`cka_prune.tp.importance`: :class:`CKAImportance`, the greedy CKA pass per group.
"""

from cka_prune.tp.baselines import baseline_importance
from cka_prune.tp.groups import GroupKey
from cka_prune.tp.importance import CKAImportance, GroupScore, normalize
from cka_prune.tp.transformers import conv1d_to_linear, update_head_counts

__all__ = ["CKAImportance", "GroupKey", "GroupScore", "baseline_importance", "conv1d_to_linear", "normalize",
           "update_head_counts"]
