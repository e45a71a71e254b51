"""cka_prune: structured pruning with Centered Kernel Alignment (CKA).

What a Torch-Pruning user reads:

- ``CKAImportance``: an importance for Torch-Pruning's pruners (record, then ``pruner.step()``), and
  ``baseline_importance``, Torch-Pruning's own importances by name; ``update_head_counts`` after a step
  that removed attention heads; ``conv1d_to_linear`` for Hugging Face's Conv1D (:mod:`cka_prune.tp`).
- ``greedy_cka``: greedy CKA pruning of one layer from its activations; ``channel_groups``: a Conv2d
  output's channels as column groups (:mod:`cka_prune.greedy`).
- ``cka``, ``gram_linear``, ``gram_rbf``, ``feature_space_linear_cka``: linear and RBF CKA, biased and
  debiased, NumPy float64 (:mod:`cka_prune.cka`).

The research engines (the searches and their driver, global allocation, damage paths, CKA at the
next layer, the consumer's refit CKA, structured OBS, the shared checks) are
:mod:`cka_prune.engines`.
"""

from cka_prune.cka import cka, feature_space_linear_cka, gram_linear, gram_rbf
from cka_prune.greedy import channel_groups, greedy_cka
from cka_prune.tp import CKAImportance, baseline_importance, conv1d_to_linear, update_head_counts

__version__ = "0.1.0"

__all__ = ["CKAImportance", "baseline_importance", "channel_groups", "cka", "conv1d_to_linear",
           "feature_space_linear_cka", "gram_linear", "gram_rbf", "greedy_cka", "update_head_counts", "__version__"]
