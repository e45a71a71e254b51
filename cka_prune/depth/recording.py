"""Streamed float64 statistics of blocks' (and spans') inputs and outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """n rows; sums of x and y (D,); X^T X, X^T Y, Y^T Y (D, D); sums of the per-row cosine and of
    the per-row angle arccos(cos) / pi."""

    n: int
    sum_x: np.ndarray
    sum_y: np.ndarray
    xtx: np.ndarray
    xty: np.ndarray
    yty: np.ndarray
    cos_sum: float
    angle_sum: float


def record(model, names, batches, forward=None, mask=None, span: int = 1) -> dict[str, Moments]:
    """Moments of every block's (span's) input and output over `batches`, keyed by label."""
    raise NotImplementedError
