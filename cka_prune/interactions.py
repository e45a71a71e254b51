"""The fast engine's interaction matrix M (n, n) of one layer's groups of columns.

With X (N, D) the column-centered activations and K_g = X_g X_g^T the Gram of group g, linear
CKA only needs

    M[g, h] = <K_g, K_h>_F                 (biased)
    M[g, h] = N (N-3) HSIC_u(K_g, K_h)      (debiased; HSIC_u is bilinear)

(`cka_prune.fast` runs the greedy pass from it). Two routes compute M; `choose_route`
takes the one with fewer flops that fits in memory:

- covariance: block sums over groups of per-column interactions E (D, D) from G = X^T X, for
  biased CKA E = G o G, so M[g, h] = ||X_g^T X_h||_F^2 = sum_{a in g, b in h} G[a, b]^2
  (debiased: `_covariance_route`). G can be streamed over batches (`CovarianceAccumulator`).
- gram: M = F F^T, F (n, N^2) the flattened centered per-group Grams, in chunks of groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cka_prune.cka import center_gram, to_float64
from cka_prune.checks import Groups, check_activations, check_choice, normalize_groups

# Default memory bound for one interaction-matrix computation (covariance route: a few D x D
# float64 matrices; Gram route: a chunk of flattened N x N Grams).
DEFAULT_MEMORY_BYTES = 2 * 1024**3


@dataclass
class CovarianceAccumulator:
    """Streams the centered covariance G = sum_i (a_i - mu)(a_i - mu)^T (D x D) over batches.

    Float64. Rows are shifted by the first batch's mean before accumulating, so the final
    centering G = S - N mu' mu'^T subtracts a small correction (little cancellation) even for
    activations with a large mean such as ReLU outputs.
    """

    shift: np.ndarray | None = None
    second: np.ndarray | None = None  # (D, D) sum of shifted outer products
    total: np.ndarray | None = None   # (D,) sum of shifted rows
    count: int = 0

    def update(self, batch: Any) -> None:
        """Add a batch of activations (B, D)."""
        a = to_float64(batch)
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(f"batch must have shape (B, D) with B >= 1, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("batch contains NaN or inf")
        if self.shift is None:
            self.shift = a.mean(axis=0)
            self.second = np.zeros((a.shape[1], a.shape[1]))
            self.total = np.zeros(a.shape[1])
        elif a.shape[1] != self.shift.shape[0]:
            raise ValueError(f"batch has {a.shape[1]} columns, expected {self.shift.shape[0]}")
        a = a - self.shift
        self.second += a.T @ a
        self.total += a.sum(axis=0)
        self.count += a.shape[0]

    def centered(self) -> np.ndarray:
        """Centered covariance G = X^T X of the column-centered activations seen so far (D, D)."""
        if self.count == 0:
            raise ValueError("CovarianceAccumulator.centered: no batch was added")
        mean = self.total / self.count
        return self.second - self.count * np.outer(mean, mean)


@dataclass(frozen=True)
class _Layout:
    """Groups as contiguous runs of columns after a permutation, for block sums."""

    perm: np.ndarray | None    # None: columns are already in group order
    starts: np.ndarray | None  # None: one column per group, in order (no block sums)
    size: int | None           # the common group size, None when sizes differ


def _layout(groups: list[np.ndarray]) -> _Layout:
    sizes = np.array([g.size for g in groups])
    perm = np.concatenate(groups)
    in_order = np.array_equal(perm, np.arange(perm.size))
    if in_order and np.all(sizes == 1):
        return _Layout(None, None, 1)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    size = int(sizes[0]) if np.all(sizes == sizes[0]) else None
    return _Layout(None if in_order else perm, starts, size)


def _block_sums(elements: np.ndarray, layout: _Layout) -> np.ndarray:
    """M[g, h] = sum of elements[a, b] over a in g, b in h; elements (D, D) in group order."""
    if layout.starts is None:
        return elements
    if layout.size is not None:  # equal sizes: a reshape, several times faster than reduceat
        n = layout.starts.size
        return elements.reshape(n, layout.size, n, layout.size).sum(axis=(1, 3))
    cols = np.add.reduceat(elements, layout.starts, axis=1)  # along rows first: contiguous
    return np.add.reduceat(cols, layout.starts, axis=0)


def interactions_from_covariance(cov: Any, groups: Groups = None) -> np.ndarray:
    """Biased-CKA interaction matrix from the centered covariance.

    M[g, h] = ||X_g^T X_h||_F^2 = sum_{a in g, b in h} G[a, b]^2, G = X^T X.
    cov: (D, D) centered covariance (e.g. CovarianceAccumulator.centered()) -> (n, n).
    """
    g = to_float64(cov)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"cov must be a square (D, D) matrix, got shape {g.shape}")
    layout = _layout(normalize_groups(groups, g.shape[0]))
    if layout.perm is not None:
        g = g[np.ix_(layout.perm, layout.perm)]
    return _block_sums(g * g, layout)


def _covariance_route(x: np.ndarray, layout: _Layout, debiased: bool) -> np.ndarray:
    """M by block sums of per-column interactions E (D x D), x (N, D) centered, in group order.

    Biased:   E = G o G, G = X^T X.
    Debiased: E[a, b] = N (N-3) HSIC_u(x_a x_a^T, x_b x_b^T) for centered columns x_a, x_b:
              tr(K~L~) = (x_a.x_b)^2 - sum_i x_ai^2 x_bi^2, 1^T K~ 1 = -||x_a||^2 and
              K~ 1 = -x_a o x_a, so
              E = G o G - N/(N-2) Q + d d^T / ((N-1)(N-2)),  Q = (X o X)^T (X o X), d = diag(G).
    """
    g = x.T @ x
    if not debiased:
        g *= g
        return _block_sums(g, layout)
    n = x.shape[0]
    d = np.diag(g).copy()
    sq = x * x
    q = sq.T @ sq
    del sq
    g *= g
    q *= n / (n - 2)
    g -= q
    del q
    # The rank-1 term's block sums are the outer product of d's group sums.
    d_groups = d if layout.starts is None else np.add.reduceat(d, layout.starts)
    return _block_sums(g, layout) + np.outer(d_groups, d_groups / ((n - 1) * (n - 2)))


def _gram_rows(x: np.ndarray, groups: list[np.ndarray], chunk: range, debiased: bool) -> np.ndarray:
    """Flattened centered Grams of the groups in `chunk`: (len(chunk), N*N).

    Biased: K_g = X_g X_g^T is already centered (X is). Debiased: the unbiased centering U(K_g)
    of cka_prune.cka.center_gram, for which <U(K), U(L)>_F = N (N-3) HSIC_u(K, L).
    """
    n = x.shape[0]
    rows = np.empty((len(chunk), n * n))
    for row, g in enumerate(chunk):
        xg = x[:, groups[g]]
        k = xg @ xg.T
        rows[row] = (center_gram(k, unbiased=True) if debiased else k).ravel()
    return rows


def _gram_route(x: np.ndarray, groups: list[np.ndarray], debiased: bool, memory_bytes: int) -> np.ndarray:
    """M = F F^T, F the (n, N^2) flattened centered per-group Grams, in chunks of groups.

    When F does not fit in `memory_bytes`, each off-diagonal chunk is recomputed per block row.
    """
    n_groups, n = len(groups), x.shape[0]
    per_chunk = max(1, memory_bytes // (2 * 8 * n * n))
    chunks = [range(s, min(s + per_chunk, n_groups)) for s in range(0, n_groups, per_chunk)]
    m = np.empty((n_groups, n_groups))
    for a, ca in enumerate(chunks):
        fa = _gram_rows(x, groups, ca, debiased)
        m[ca.start:ca.stop, ca.start:ca.stop] = fa @ fa.T
        for cb in chunks[a + 1:]:
            block = fa @ _gram_rows(x, groups, cb, debiased).T
            m[ca.start:ca.stop, cb.start:cb.stop] = block
            m[cb.start:cb.stop, ca.start:ca.stop] = block.T
    return m


def choose_route(n_samples: int, n_columns: int, n_groups: int, debiased: bool,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES) -> str:
    """'covariance' or 'gram', whichever is cheaper in flops, if the covariance route fits.

    covariance: N D^2 (x2 debiased) flops, about 2-3 D x D float64 matrices.
    gram:       N^2 D + n^2 N^2 flops (Grams, then F F^T), memory bounded by chunking.
    """
    cov_flops = n_samples * n_columns**2 * (2 if debiased else 1)
    cov_bytes = 8 * n_columns**2 * (3 if debiased else 2)
    gram_flops = n_samples**2 * n_columns + n_groups**2 * n_samples**2
    if cov_bytes > memory_bytes and n_groups < n_columns:
        return "gram"
    return "covariance" if cov_flops <= gram_flops else "gram"


def interactions_from_activations(activations: Any, groups: Groups = None, *, debiased: bool = False,
                                  route: str = "auto",
                                  memory_bytes: int = DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """Interaction matrix M (n, n) of the fast engine from activations (N, D).

    M[g, h] = <K_g, K_h>_F (biased) or N (N-3) HSIC_u(K_g, K_h) (debiased), K_g = X_g X_g^T from
    the column-centered activations X. Centering is exact for both estimators: constant
    columns drop out, and HSIC_u is unchanged by it. route: 'covariance', 'gram' or 'auto'
    (`choose_route`).
    """
    check_choice("route", route, ("auto", "covariance", "gram"))
    x = check_activations(activations, 4 if debiased else 2)
    group_list = normalize_groups(groups, x.shape[1])
    if route == "auto":
        route = choose_route(x.shape[0], x.shape[1], len(group_list), debiased, memory_bytes)
    x = x - x.mean(axis=0)
    if route == "gram":
        return _gram_route(x, group_list, debiased, memory_bytes)
    layout = _layout(group_list)
    if layout.perm is not None:
        x = x[:, layout.perm]
    return _covariance_route(x, layout, debiased)
