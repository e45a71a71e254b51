"""Centered Kernel Alignment (Kornblith et al. 2019, arXiv:1905.00414), NumPy, float64.

For two representations of the same N examples, X (N, D1) and Y (N, D2), with Gram
matrices K = k(X, X) and L = l(Y, Y) (N, N):

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

Biased HSIC (Gretton et al. 2005), H = I - 11^T / N the centering matrix:

    HSIC(K, L) = tr(K H L H) / (N - 1)^2

Unbiased HSIC (Song et al. 2012), with K~ and L~ the Grams with their diagonals set to 0:

    HSIC_u(K, L) = [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((N-1)(N-2))
                     - 2/(N-2) 1^T K~ L~ 1 ] / (N (N-3))

"Debiased" CKA uses HSIC_u in all three places. Every function accepts NumPy arrays or
torch tensors and computes in float64 NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def to_float64(x: Any) -> np.ndarray:
    """Return `x` (NumPy array, torch tensor or nested sequence) as a float64 NumPy array."""
    if hasattr(x, "detach"):  # torch tensor; duck-typed so NumPy users need not import torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _as_matrix(x: Any, name: str) -> np.ndarray:
    """Float64 (N, D) matrix; a 1-D input is one feature per example (N, 1)."""
    arr = to_float64(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {arr.shape}")
    return arr


def _as_gram(gram: Any, name: str) -> np.ndarray:
    arr = to_float64(gram)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) Gram matrix, got shape {arr.shape}")
    return arr


def gram_linear(x: Any) -> np.ndarray:
    """Linear-kernel Gram matrix K = X X^T.

    x: (N, D) features -> (N, N).
    """
    x = _as_matrix(x, "x")
    return x @ x.T


def gram_rbf(x: Any, threshold: float = 1.0) -> np.ndarray:
    """RBF-kernel Gram matrix K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2)).

    The bandwidth is sigma = threshold * (median distance), taken as
    sigma^2 = threshold^2 * median_ij ||x_i - x_j||^2 over all N^2 pairs (diagonal included),
    the convention of Kornblith et al. When that median is 0 (at least half the pairs are
    identical rows, e.g. most samples pruned to the same constant output), it is taken over the
    nonzero squared distances instead (the pairs of distinct rows), so that the bandwidth keeps
    the scale of the distances that exist; every row identical (no distance at all) is an error.

    x: (N, D) features -> (N, N).
    """
    x = _as_matrix(x, "x")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    dots = x @ x.T
    sq_norms = np.diag(dots)
    sq_dist = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * dots, 0.0)
    sq_median = float(np.median(sq_dist))
    if sq_median <= 0.0:
        nonzero = sq_dist[sq_dist > 0.0]
        if nonzero.size == 0:
            raise ValueError("gram_rbf: every row is identical (no nonzero distance to take the median of); "
                             "the bandwidth is undefined")
        sq_median = float(np.median(nonzero))
    return np.exp(-sq_dist / (2.0 * threshold**2 * sq_median))


def center_gram(gram: Any, unbiased: bool = False) -> np.ndarray:
    """Center a Gram matrix so that Frobenius inner products give (scaled) HSIC.

    Biased:   returns H K H, and <HKH, HLH>_F = (N-1)^2 HSIC(K, L).
    Unbiased: returns U(K) with zero diagonal and
                  U(K)_ij = K~_ij - m_i - m_j,  m = K~ 1 / (N-2) - (1^T K~ 1) / (2 (N-1)(N-2)),
              for which <U(K), U(L)>_F = N (N-3) HSIC_u(K, L) (Song et al. 2012).

    gram: (N, N) symmetric -> (N, N) new array (the input is not modified).
    """
    gram = _as_gram(gram, "gram").copy()
    n = gram.shape[0]
    if unbiased:
        if n < 4:
            raise ValueError(f"unbiased centering needs N >= 4 examples, got {n}")
        np.fill_diagonal(gram, 0.0)
        means = gram.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0.0)
    else:
        means = gram.mean(axis=0)
        means -= means.mean() / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def hsic(gram_x: Any, gram_y: Any, unbiased: bool = False) -> float:
    """HSIC(K, L): biased tr(KHLH)/(N-1)^2, or unbiased HSIC_u (module docstring).

    gram_x, gram_y: (N, N) -> scalar.
    """
    gram_x, gram_y = _as_gram(gram_x, "gram_x"), _as_gram(gram_y, "gram_y")
    if gram_x.shape != gram_y.shape:
        raise ValueError(f"Gram shapes differ: {gram_x.shape} vs {gram_y.shape}")
    n = gram_x.shape[0]
    inner = float(np.vdot(center_gram(gram_x, unbiased), center_gram(gram_y, unbiased)))
    return inner / (n * (n - 3)) if unbiased else inner / (n - 1) ** 2


def cka(gram_x: Any, gram_y: Any, debiased: bool = False) -> float:
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) from two Gram matrices.

    The HSIC scale factors cancel, so this is <Kc, Lc>_F / (||Kc||_F ||Lc||_F) with Kc, Lc
    centered by `center_gram` (unbiased centering when `debiased`). It is NaN when either
    representation has no variation (0/0).

    gram_x, gram_y: (N, N) -> scalar.
    """
    gram_x, gram_y = _as_gram(gram_x, "gram_x"), _as_gram(gram_y, "gram_y")
    if gram_x.shape != gram_y.shape:
        raise ValueError(f"Gram shapes differ: {gram_x.shape} vs {gram_y.shape}")
    kc = center_gram(gram_x, unbiased=debiased)
    lc = center_gram(gram_y, unbiased=debiased)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.vdot(kc, lc) / np.sqrt(np.vdot(kc, kc) * np.vdot(lc, lc)))


def _feature_dot_similarity(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """Scaled HSIC of the linear kernels from column-centered features, without N x N Grams.

    Biased:   <K, L>_F = ||Y^T X||_F^2.
    Debiased: N (N-3) HSIC_u(K, L) = ||Y^T X||_F^2 - N/(N-2) r_x . r_y
                                     + (sum r_x)(sum r_y) / ((N-1)(N-2)),
              r_x = row squared norms of X. This follows from the Song et al. formula since
              centered columns give K 1 = 0: 1^T K~ 1 = -sum r_x and K~ 1 = -r_x.
    """
    dot = float(np.sum((y.T @ x) ** 2))
    if not debiased:
        return dot
    n = x.shape[0]
    rx, ry = np.sum(x * x, axis=1), np.sum(y * y, axis=1)
    return dot - n / (n - 2) * float(rx @ ry) + float(rx.sum() * ry.sum()) / ((n - 1) * (n - 2))


def feature_space_linear_cka(features_x: Any, features_y: Any, debiased: bool = False) -> float:
    """Linear CKA computed from features, O(N D^2) instead of O(N^2 D):

        CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)   (X, Y centered by column)

    with the unbiased-HSIC counterpart when `debiased`. Equals
    cka(gram_linear(x), gram_linear(y), debiased).

    features_x: (N, D1), features_y: (N, D2) -> scalar.
    """
    x = _as_matrix(features_x, "features_x")
    y = _as_matrix(features_y, "features_y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features need the same number of examples, got {x.shape[0]} and {y.shape[0]}")
    if debiased and x.shape[0] < 4:
        raise ValueError(f"debiased CKA needs N >= 4 examples, got {x.shape[0]}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    xy = _feature_dot_similarity(x, y, debiased)
    xx = _feature_dot_similarity(x, x, debiased)
    yy = _feature_dot_similarity(y, y, debiased)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(xy / np.sqrt(xx * yy))
