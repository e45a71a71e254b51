"""The fast engine's interaction matrix of a channel group, from its layers' output blocks.

A Torch-Pruning group removes n channels at once from several output layers; channel c owns
P_l columns (its positions: H*W for a conv, 1 for a Linear) in each output layer l. Stacking
every layer's block side by side gives X (N, n, P), P = sum_l P_l, channel c's columns
X[:, c, :] (zero where a layer does not hold c: a zero column is constant, which CKA ignores).
With X column-centered and K_c = X_c X_c^T (N x N), the fast engine needs (`cka_prune.fast`)

    M[c, d] = <K_c, K_d>_F = ||X_c^T X_d||_F^2                 (biased)
    M[c, d] = <U(K_c), U(K_d)>_F = N (N-3) HSIC_u(K_c, K_d)     (debiased, U of center_gram)

Two exact float64 routes, each bounded in memory, the cheaper one taken (`choose_channel_route`):

- covariance (few columns per channel, P^2 < about N/2): per chunk A of channels,
  G_A = X_A^T X_{>=A} (the cross-covariances), M[A, >=A] = block sums of G_A o G_A; only the
  upper block triangle is computed (M is symmetric). Debiased, per column pair (a, b):
  E = G o G - N/(N-2) Q + d d^T / ((N-1)(N-2)), Q = (X o X)^T (X o X), d = diag(G)
  (`cka_prune.interactions._covariance_route`). N n^2 P^2 / 2 multiply-adds (twice debiased).
- gram (many columns per channel, e.g. early conv layers): the per-channel Grams K_c by
  batched products (n N^2 P), then M = F F^T with F (n, N(N+1)/2) the Grams' upper triangles,
  off-diagonal entries scaled by sqrt(2) so that F_c . F_d = <K_c, K_d>_F (a symmetric rank-k
  product: n^2 N^2 / 4). Chunks of channels when F exceeds the memory bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cka_prune.interactions import DEFAULT_MEMORY_BYTES

# Columns of G_A per covariance chunk: wide enough for efficient products, small enough for the cache.
CHUNK_COLUMNS = 512


@dataclass(frozen=True)
class ChannelBlock:
    """One output layer's share of a group: its outputs (N, k, P_l) on k of the group's channels,
    ``positions[i]`` the group position of its channel i."""

    outputs: torch.Tensor
    positions: Sequence[int]


def stack_channels(blocks: Sequence[ChannelBlock], n: int) -> np.ndarray:
    """X (N, n, P) float64, column-centered: every block's columns side by side, zero where a
    layer does not hold the channel."""
    samples = blocks[0].outputs.shape[0]
    widths = [b.outputs.shape[2] for b in blocks]
    x = np.zeros((samples, n, sum(widths)))
    offset = 0
    for block, width in zip(blocks, widths):
        y = block.outputs.detach().cpu().numpy()
        if list(block.positions) == list(range(n)):
            x[:, :, offset:offset + width] = y
        else:
            x[:, np.asarray(block.positions), offset:offset + width] = y
        offset += width
    x -= x.mean(axis=0)
    return x


def choose_channel_route(samples: int, n: int, width: int, debiased: bool) -> str:
    """'covariance' or 'gram', whichever needs fewer multiply-adds (module docstring)."""
    covariance = samples * (n * width) ** 2 / 2 * (2 if debiased else 1)
    gram = n * samples**2 * width + n**2 * samples**2 / 4
    return "covariance" if covariance <= gram else "gram"


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def _covariance_interactions(x: np.ndarray, debiased: bool) -> np.ndarray:
    """M from the cross-covariances of chunks of channels against the channels from the chunk on."""
    samples, n, width = x.shape
    flat = x.reshape(samples, n * width)
    squares = flat * flat if debiased else None
    m = np.empty((n, n))
    for chunk in _chunks(n, max(1, CHUNK_COLUMNS // width)):
        a, b = chunk.start * width, chunk.stop * width
        e = flat[:, a:b].T @ flat[:, a:]  # (|A| P, (n - start) P)
        e *= e
        if debiased:
            e -= samples / (samples - 2) * (squares[:, a:b].T @ squares[:, a:])
        # torch's strided sums are several times faster than NumPy's here.
        block = torch.from_numpy(e).view(len(chunk), width, n - chunk.start, width).sum(dim=3).sum(dim=1).numpy()
        m[chunk.start:chunk.stop, chunk.start:] = block
        m[chunk.start:, chunk.start:chunk.stop] = block.T
    if debiased:  # the rank-one term: block sums of d d^T are the outer product of d's channel sums
        d = squares.sum(axis=0).reshape(n, width).sum(axis=1)
        m += np.outer(d, d / ((samples - 1) * (samples - 2)))
    return m


def _packed_grams(x: np.ndarray, chunk: range, debiased: bool) -> np.ndarray:
    """F rows of the channels in ``chunk``: (|chunk|, N(N+1)/2), F_c . F_d = <K_c, K_d>_F
    (debiased: of U(K_c), U(K_d), with U as ``cka_prune.cka.center_gram(unbiased=True)``)."""
    samples = x.shape[0]
    xc = torch.from_numpy(np.ascontiguousarray(x[:, chunk.start:chunk.stop].transpose(1, 0, 2)))
    k = torch.bmm(xc, xc.transpose(1, 2))  # (|chunk|, N, N)
    if debiased:
        k.diagonal(dim1=1, dim2=2).zero_()
        means = k.sum(dim=2) / (samples - 2)
        means -= means.sum(dim=1, keepdim=True) / (2 * (samples - 1))
        k -= means[:, :, None]
        k -= means[:, None, :]
        k.diagonal(dim1=1, dim2=2).zero_()
    rows, cols = np.triu_indices(samples)
    packed = k.numpy()[:, rows, cols]
    packed[:, rows != cols] *= np.sqrt(2.0)
    return packed


def _gram_interactions(x: np.ndarray, debiased: bool, memory_bytes: int) -> np.ndarray:
    """M = F F^T in chunks of channels; when F does not fit, off-diagonal chunks are recomputed."""
    samples, n, _ = x.shape
    per_chunk = max(1, memory_bytes // (2 * 8 * samples * samples))
    chunks = _chunks(n, per_chunk)
    m = np.empty((n, n))
    for i, ca in enumerate(chunks):
        fa = _packed_grams(x, ca, debiased)
        m[ca.start:ca.stop, ca.start:ca.stop] = fa @ fa.T
        for cb in chunks[i + 1:]:
            block = fa @ _packed_grams(x, cb, debiased).T
            m[ca.start:ca.stop, cb.start:cb.stop] = block
            m[cb.start:cb.stop, ca.start:ca.stop] = block.T
    return m


def channel_interactions(blocks: Sequence[ChannelBlock], n: int, *, debiased: bool = False,
                         route: str = "auto", memory_bytes: int = DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """Interaction matrix M (n, n) of a group of n channels from its output layers' blocks
    (module docstring). route: 'covariance', 'gram' or 'auto' (`choose_channel_route`)."""
    if route not in ("auto", "covariance", "gram"):
        raise ValueError(f"route must be one of ('auto', 'covariance', 'gram'), got {route!r}")
    x = stack_channels(blocks, n)
    if route == "auto":
        route = choose_channel_route(x.shape[0], n, x.shape[2], debiased)
    return _covariance_interactions(x, debiased) if route == "covariance" else _gram_interactions(
        x, debiased, memory_bytes)
