"""The research engines in one namespace: every greedy search, its driver, the damage paths, the
refit CKA and structured OBS, and the argument checks they share.

A Torch-Pruning user needs `cka_prune` itself (`CKAImportance`, `greedy_cka`, the CKA functions);
this module is for a researcher who drives the searches directly, writes an engine, or compares
them. Each name is defined in the module that derives it (the derivations are there):

- driver (`cka_prune.greedy_search`): a `Search` is an engine's step scores and state update;
  `make_search` wraps them for conditional or independent greedy, `run_search` removes k groups
  or stops at a CKA, `allocate` spends one budget over several layers' searches, `choose` is the
  tie rule.
- layer CKA: `reference_search`/`reference_greedy` (the literal loop, any kernel,
  `cka_prune.reference`), `fast_search`/`fast_greedy_from_interactions` and `cka_path` (the
  closed form from the interaction matrix, `cka_prune.fast`, built by
  `interactions_from_activations`/`interactions_from_covariance`, `cka_prune.interactions`).
- next Linear layer's pre-activation: `next_layer_search`, `fast_next_greedy`,
  `next_layer_cka_path` (`cka_prune.next_layer`).
- the consumer's least-squares refit: `refit_search`, `refit_cka_path` and their literal
  `reference_*` loops (`cka_prune.refit`); structured OBS on it: `obs_search`, `obs_greedy` and
  `reference_obs_*` (`cka_prune.obs`).
- checks (`cka_prune.checks`): activations, groups, candidates, budgets, orders, the CKA ratio.

Every closed form is tested against its literal loop (same order, scores to 1e-8 or better).
"""

from cka_prune.checks import (DEGENERATE_RTOL, NO_VARIATION, Groups, candidate_mask, check_activations, check_budget,
                              check_choice, check_order, normalize_groups, ratio, to_numpy)
from cka_prune.fast import SYMMETRY_RTOL, cka_path, fast_greedy_from_interactions, fast_search
from cka_prune.greedy_search import GREEDY, TIE_RTOL, Search, allocate, choose, make_search, run_search
from cka_prune.interactions import (DEFAULT_MEMORY_BYTES, CovarianceAccumulator, choose_route,
                                    interactions_from_activations, interactions_from_covariance)
from cka_prune.next_layer import fast_next_greedy, next_layer_cka_path, next_layer_search
from cka_prune.obs import obs_greedy, obs_search, reference_obs_greedy, reference_obs_search
from cka_prune.reference import Recompute, constant_columns, reference_greedy, reference_search
from cka_prune.refit import (SingularError, reference_refit_cka_path, reference_refit_search, refit_cka_path,
                             refit_search, ridge_fit, ridge_lambda)

__all__ = [
    # driver
    "GREEDY", "TIE_RTOL", "Search", "allocate", "choose", "make_search", "run_search",
    # layer CKA
    "DEFAULT_MEMORY_BYTES", "CovarianceAccumulator", "Recompute", "SYMMETRY_RTOL", "choose_route", "cka_path",
    "constant_columns", "fast_greedy_from_interactions", "fast_search", "interactions_from_activations",
    "interactions_from_covariance", "reference_greedy", "reference_search",
    # next layer
    "fast_next_greedy", "next_layer_cka_path", "next_layer_search",
    # refit CKA and OBS
    "SingularError", "obs_greedy", "obs_search", "reference_obs_greedy", "reference_obs_search",
    "reference_refit_cka_path", "reference_refit_search", "refit_cka_path", "refit_search", "ridge_fit",
    "ridge_lambda",
    # checks
    "DEGENERATE_RTOL", "NO_VARIATION", "Groups", "candidate_mask", "check_activations", "check_budget",
    "check_choice", "check_order", "normalize_groups", "ratio", "to_numpy",
]
