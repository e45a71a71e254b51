"""cka_prune: structured pruning with Centered Kernel Alignment (CKA).

- :mod:`cka_prune.cka`: linear and RBF CKA, biased and debiased (NumPy, float64).
- :mod:`cka_prune.greedy`: greedy CKA pruning of one layer (``greedy_cka``), and the engines' public API:
  :mod:`cka_prune.greedy_search` (the greedy driver, global allocation), :mod:`cka_prune.reference` (the
  literal loop), :mod:`cka_prune.interactions` and :mod:`cka_prune.fast` (the closed form for
  linear CKA), :mod:`cka_prune.next_layer` (CKA at the next Linear layer's pre-activation).
- :mod:`cka_prune.refit`: the consumer's least-squares refit and the CKA of the refit
  (``refit_search``); :mod:`cka_prune.obs`: structured OBS on that refit (``obs_greedy``); both
  with literal reference loops.
- :mod:`cka_prune.tp_importance`: ``CKAImportance`` for Torch-Pruning's pruners, and its
  own importances as baselines (``baseline_importance``).
"""

from cka_prune.cka import cka, feature_space_linear_cka, gram_linear, gram_rbf
from cka_prune.greedy import channel_groups, greedy_cka
from cka_prune.obs import obs_greedy
from cka_prune.refit import refit_search
from cka_prune.tp_importance import CKAImportance, baseline_importance

__version__ = "0.1.0"

__all__ = ["CKAImportance", "baseline_importance", "channel_groups", "cka", "feature_space_linear_cka",
           "gram_linear", "gram_rbf", "greedy_cka", "obs_greedy", "refit_search", "__version__"]
