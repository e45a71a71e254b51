"""The ridge least-squares patch of a removed span, and folding it into an adjacent layer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Patch:
    """y ~ x W + b: weight W (D_in, D_out), bias b (D_out,), ridge, relative error."""

    weight: np.ndarray
    bias: np.ndarray
    ridge: float
    error: float


def fit_patch(moments, ridge: float = 1e-3) -> Patch:
    """W = (Cxx + ridge s I)^{-1} Cxy, b = mean(y) - mean(x) W, s = mean diag Cxx."""
    raise NotImplementedError


def fold(model, span_label: str, into: str, side: str):
    """A copy of `model` with the patch of `span_label` folded into the layer `into`."""
    raise NotImplementedError
