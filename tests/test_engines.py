"""Tests for cka_prune/engines.py (the research engines' namespace) and the package's own API."""

from __future__ import annotations

import importlib
import inspect

import cka_prune
from cka_prune import engines

# Where each name of cka_prune.engines.__all__ is defined: engines only re-exports.
DEFINED_IN = {
    "cka_prune.greedy_search": ["GREEDY", "TIE_RTOL", "Search", "allocate", "choose", "make_search", "run_search"],
    "cka_prune.reference": ["Recompute", "constant_columns", "reference_greedy", "reference_search"],
    "cka_prune.interactions": ["DEFAULT_MEMORY_BYTES", "CovarianceAccumulator", "choose_route",
                               "interactions_from_activations", "interactions_from_covariance"],
    "cka_prune.fast": ["SYMMETRY_RTOL", "cka_path", "fast_greedy_from_interactions", "fast_search"],
    "cka_prune.next_layer": ["fast_next_greedy", "next_layer_cka_path", "next_layer_search"],
    "cka_prune.refit": ["SingularError", "reference_refit_cka_path", "reference_refit_search", "refit_cka_path",
                        "refit_search", "ridge_fit", "ridge_lambda"],
    "cka_prune.obs": ["obs_greedy", "obs_search", "reference_obs_greedy", "reference_obs_search"],
    "cka_prune.checks": ["DEGENERATE_RTOL", "NO_VARIATION", "Groups", "candidate_mask", "check_activations",
                         "check_budget", "check_choice", "check_order", "normalize_groups", "ratio", "to_numpy"],
}


def test_engines_re_exports_each_name_from_its_defining_module() -> None:
    assert sorted(n for names in DEFINED_IN.values() for n in names) == sorted(engines.__all__)
    for module_name, names in DEFINED_IN.items():
        module = importlib.import_module(module_name)
        for name in names:
            obj = getattr(module, name)
            assert getattr(engines, name) is obj, name
            if inspect.isfunction(obj) or inspect.isclass(obj):  # defined there, not imported from elsewhere
                assert obj.__module__ == module_name, name


def test_the_package_exports_the_torch_pruning_users_api_only() -> None:
    assert sorted(cka_prune.__all__) == sorted(["CKAImportance", "baseline_importance", "channel_groups", "cka",
                                                "conv1d_to_linear", "feature_space_linear_cka", "gram_linear",
                                                "gram_rbf", "greedy_cka", "update_head_counts", "__version__"])
    assert all(hasattr(cka_prune, name) for name in cka_prune.__all__)
    assert not hasattr(cka_prune, "obs_greedy") and not hasattr(cka_prune, "refit_search")
    # A user reads each name's docstring.
    assert all(getattr(cka_prune, name).__doc__ for name in cka_prune.__all__ if name != "__version__")
