"""Activations and consumer weights shared by the tests of the refit criteria (tests/test_refit.py,
test_obs.py)."""

from __future__ import annotations

import numpy as np

from cka_prune.greedy import channel_groups


def data(n: int = 50, units: int = 9, m: int = 1, p: int = 6, seed: int = 0,
         dead: int | None = None, dead_column: int | None = None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Post-ReLU-like activations (n, units*m), a consumer weight (p, units*m) and the groups; ``dead``: a unit
    with a constant output, ``dead_column``: one constant column (a conv channel's always-zero position)."""
    rng = np.random.default_rng(seed)
    d = units * m
    a = np.maximum(rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) + rng.standard_normal((n, d)) + 0.3, 0)
    if dead is not None:
        a[:, dead * m:(dead + 1) * m] = 0.25  # a removed unit's constant output
    if dead_column is not None:
        a[:, dead_column] = 0.0
    return a.astype(np.float32).astype(np.float64), rng.standard_normal((p, d)), channel_groups(units, m)


def cov(a: np.ndarray) -> np.ndarray:
    x = a - a.mean(axis=0)
    return x.T @ x


CASES = [dict(), dict(dead=3), dict(m=4, units=6), dict(m=3, units=7, dead=2), dict(m=4, units=6, dead_column=9),
         dict(seed=5, p=12)]
