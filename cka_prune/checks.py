"""The argument checks and the CKA ratio that every engine shares (public, so each engine and a
caller writing its own engine read the same rules).

- ``check_activations``: a finite (N, D) float64 matrix with enough samples.
- ``normalize_groups``: groups as int index arrays that partition the columns.
- ``candidate_mask``: the candidate groups from None, a bool mask or an index list.
- ``check_budget``, ``check_choice``: k / stop_cka and an option's value.
- ``check_order``: a given removal order (of a damage path): distinct, in range, alive.
- ``ratio``: CKA from its closed-form numerator and squared denominator, 0 where nothing varies.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from cka_prune.cka import to_float64

# A pruned representation whose self-similarity is at most this fraction of the original's has
# no variation left (only constant columns); its CKA (0/0) is taken as 0.
DEGENERATE_RTOL = 1e-12

# The one message for a representation CKA cannot be computed on (every engine, the Torch-Pruning
# importance and the harness say the same).
NO_VARIATION = "no variation across the samples (or a debiased self-similarity <= 0): CKA is undefined"

Groups = Sequence[Any] | None


def check_activations(activations: Any, min_samples: int) -> np.ndarray:
    x = to_float64(activations)
    if x.ndim != 2:
        raise ValueError(f"activations must have shape (N, D), got shape {x.shape}; "
                         "flatten a Conv2d output to (N, C*H*W) and pass groups")
    if x.shape[0] < min_samples or x.shape[1] < 1:
        raise ValueError(f"activations need N >= {min_samples} samples and D >= 1 columns, "
                         f"got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("activations contain NaN or inf")
    return x


def to_numpy(x: Any) -> np.ndarray:
    """NumPy array of `x` (array, tensor or sequence), dtype kept."""
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def normalize_groups(groups: Groups, n_columns: int) -> list[np.ndarray]:
    """Groups as int index arrays that partition range(n_columns); None -> one per column."""
    if groups is None:
        return [np.array([j]) for j in range(n_columns)]
    if isinstance(groups, np.ndarray) and groups.ndim == 2:  # (n, size): one row per group
        groups = list(groups)
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise ValueError(f"groups must be None or a list of column-index arrays, got {type(groups).__name__}")
    out = []
    for g, idx in enumerate(groups):
        arr = to_numpy(idx)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"groups[{g}] must be a non-empty 1-D array of int column indices")
        out.append(arr.astype(np.int64))
    if not out:
        raise ValueError("groups must not be empty")
    flat = np.concatenate(out)
    if flat.size != n_columns or not np.array_equal(np.sort(flat), np.arange(n_columns)):
        raise ValueError(f"groups must partition the {n_columns} activation columns "
                         "(every column in exactly one group)")
    return out


def candidate_mask(alive: Any, n_groups: int) -> np.ndarray:
    """Bool (n_groups,) mask of candidate groups from None, a bool mask or an index list."""
    if alive is None:
        return np.ones(n_groups, dtype=bool)
    arr = to_numpy(alive)
    if arr.dtype == bool:
        if arr.shape != (n_groups,):
            raise ValueError(f"alive mask must have shape ({n_groups},), got {arr.shape}")
        return arr.copy()
    if arr.size == 0:
        return np.zeros(n_groups, dtype=bool)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError("alive must be a bool mask or a 1-D list of int group indices")
    if arr.min() < 0 or arr.max() >= n_groups or np.unique(arr).size != arr.size:
        raise ValueError(f"alive indices must be distinct and in [0, {n_groups}), got {arr.tolist()}")
    mask = np.zeros(n_groups, dtype=bool)
    mask[arr] = True
    return mask


def check_budget(k: Any, stop_cka: Any, n_candidates: int) -> None:
    if k is None and stop_cka is None:
        raise ValueError("give k, stop_cka or both")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(f"k must be an int or None, got {k!r}")
        if not 0 <= k <= n_candidates:
            raise ValueError(f"k must be in [0, {n_candidates}] (the alive groups), got {k}")
    if stop_cka is not None:
        if isinstance(stop_cka, bool) or not isinstance(stop_cka, numbers.Real) or not np.isfinite(stop_cka):
            raise ValueError(f"stop_cka must be a finite number or None, got {stop_cka!r}")


def check_order(order: Any, n_groups: int, alive: np.ndarray | None = None) -> list[int]:
    """`order` as a list of int group ids, each in [0, n_groups), at most once, and alive where the
    bool mask `alive` (n_groups,) is given; else ValueError. A negative id is refused, not counted
    from the end: it would silently remove another group."""
    arr = to_numpy(order)
    if arr.size == 0:
        return []
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"order must be a 1-D list of int group indices, got {order!r}")
    ids = [int(j) for j in arr]
    bad = [j for j in ids if not 0 <= j < n_groups or (alive is not None and not alive[j])]
    if bad or len(set(ids)) != len(ids):
        where = f"alive groups {np.flatnonzero(alive).tolist()}" if alive is not None else f"[0, {n_groups})"
        raise ValueError(f"order must list distinct groups among the {where}, got {ids}")
    return ids


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def ratio(num: np.ndarray | float, den2: np.ndarray | float, total: float) -> np.ndarray:
    """CKA = num / sqrt(total * den2), and 0 where den2 <= DEGENERATE_RTOL * total."""
    num, den2 = np.asarray(num, dtype=np.float64), np.asarray(den2, dtype=np.float64)
    ok = den2 > DEGENERATE_RTOL * total
    if ok.all():  # the common case, without the masked copies (the greedy engines call this every step)
        return num / np.sqrt(total * den2)
    return np.where(ok, num / np.sqrt(total * np.where(ok, den2, 1.0)), 0.0)
