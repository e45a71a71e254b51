"""The fast engine's interaction matrix of a channel group, from its layers' output blocks.

A Torch-Pruning group removes n channels at once from several output layers; channel c owns
P_l columns (its positions: H*W for a conv, 1 for a Linear) in each output layer l. Stacking
every layer's block side by side gives X (N, n, P), P = sum_l P_l, channel c's columns
X[:, c, :] (zero where a layer does not hold c: a zero column is constant, which CKA ignores).
With X column-centered and K_c = X_c X_c^T (N x N), the fast engine needs (`cka_prune.fast`)

    M[c, d] = <K_c, K_d>_F = ||X_c^T X_d||_F^2                 (biased)
    M[c, d] = <U(K_c), U(K_d)>_F = N (N-3) HSIC_u(K_c, K_d)     (debiased, U of center_gram)

Two exact routes, each bounded in memory, the one with fewer multiply-adds taken
(`choose_channel_route`):

- covariance (few columns per channel, P^2 < about N/2): per chunk A of channels,
  G_A = X_A^T X_{>=A} (the cross-covariances), M[A, >=A] = block sums of G_A o G_A; only the
  upper block triangle is computed (M is symmetric). Debiased, per column pair (a, b):
  E = G o G - N/(N-2) Q + d d^T / ((N-1)(N-2)), Q = (X o X)^T (X o X), d = diag(G)
  (`cka_prune.interactions._covariance_route`). N n^2 P^2 / 2 multiply-adds (twice debiased).
- gram (many columns per channel, e.g. early conv layers): the per-channel Grams K_c by
  batched products (n N^2 P), then M = F F^T with F (n, N(N+1)/2) the Grams' upper triangles,
  off-diagonal entries scaled by sqrt(2) so that F_c . F_d = <K_c, K_d>_F (a symmetric rank-k
  product: n^2 N^2 / 4). Chunks of channels when F exceeds the memory bound.

Both center each column in float64 first (a float32 mean can be off by more than the spread of
a nearly constant column) and take their products in float64, or in float32 when asked
(``precision``: about twice as fast; biased only, as the debiased estimator subtracts nearly
equal terms; its agreement with float64 is measured in docs/benchmarks.md). M is float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cka_prune.checks import check_choice
from cka_prune.interactions import DEFAULT_MEMORY_BYTES

PRECISIONS = ("float64", "float32")
# Columns of G_A per covariance chunk: wide enough for efficient products, small enough for the cache.
CHUNK_COLUMNS = 512
# Largest covariance (D x D float64) computed at once by a symmetric product; larger ones in chunks.
FULL_COVARIANCE_BYTES = 64 * 1024**2
# Bytes of float64 columns and Grams per step of the Gram route's build.
SUBCHUNK_BYTES = 8 * 1024**2


@dataclass(frozen=True)
class ChannelBlock:
    """One output layer's share of a group: its outputs (N, k, P_l) on k of the group's channels,
    ``positions[i]`` the group position of its channel i."""

    outputs: torch.Tensor
    positions: Sequence[int]


@dataclass(frozen=True)
class _Block:
    """A ChannelBlock as a NumPy view with, per group position, its channel index (-1: absent)."""

    outputs: np.ndarray  # (N, k, P_l), the recorded dtype
    local: np.ndarray    # (n,) int
    dtype: type          # of the products

    @classmethod
    def of(cls, block: ChannelBlock, n: int, dtype: type) -> _Block:
        local = np.full(n, -1)
        local[np.asarray(block.positions, dtype=np.int64)] = np.arange(len(block.positions))
        return cls(block.outputs.detach().cpu().numpy(), local, dtype)

    def centered(self, chunk: range) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the chunk's positions this layer holds, their columns (c, N, P_l) in the
        products' dtype, centered over the samples, contiguous per channel)."""
        idx = self.local[chunk.start:chunk.stop]
        have = idx >= 0
        held = idx[have]
        run = held.size and np.array_equal(held, np.arange(held[0], held[0] + held.size))
        y = self.outputs[:, held[0]:held[0] + held.size] if run else self.outputs[:, held]
        z = np.empty((y.shape[1], y.shape[0], y.shape[2]), dtype=self.dtype)
        # Centered in float64 (module docstring), converted and transposed in the same pass.
        np.subtract(y.transpose(1, 0, 2), y.mean(axis=0, dtype=np.float64)[:, None, :], out=z, casting="unsafe")
        return have, z


def _chunks(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def choose_channel_route(samples: int, n: int, width: int, debiased: bool) -> str:
    """'covariance' or 'gram', whichever needs fewer multiply-adds (module docstring)."""
    covariance = samples * (n * width) ** 2 / 2 * (2 if debiased else 1)
    gram = n * samples**2 * width + n**2 * samples**2 / 4
    return "covariance" if covariance <= gram else "gram"


def _stacked(blocks: list[_Block], n: int, width: int) -> np.ndarray:
    """X (N, n * P), centered, channel-major: every layer's columns of a channel side by side."""
    samples = blocks[0].outputs.shape[0]
    x = np.zeros((samples, n, width), dtype=blocks[0].dtype)
    offset = 0
    for block in blocks:
        have = block.local >= 0
        held = block.local[have]
        y = block.outputs if np.array_equal(held, np.arange(n)) else block.outputs[:, held]
        x[:, have, offset:offset + y.shape[2]] = y - y.mean(axis=0, dtype=np.float64)  # as in _Block.centered
        offset += y.shape[2]
    return x.reshape(samples, n * width)


def _block_sums(e: np.ndarray, rows: int, cols: int, width: int) -> np.ndarray:
    """(rows, cols) float64 sums of the width x width blocks of e (rows * width, cols * width)."""
    if width == 1:
        return e.astype(np.float64, copy=False)
    # torch's strided sums are several times faster than NumPy's here.
    return torch.from_numpy(e).view(rows, width, cols, width).sum(dim=3, dtype=torch.float64).sum(dim=1).numpy()


def _covariance_interactions(blocks: list[_Block], n: int, width: int, debiased: bool) -> np.ndarray:
    """M from the cross-covariances of chunks of channels against the channels from the chunk on
    (all at once, a symmetric product, when the covariance is at most FULL_COVARIANCE_BYTES)."""
    flat = _stacked(blocks, n, width)
    samples = flat.shape[0]
    squares = flat * flat if debiased else None
    if 8 * (n * width) ** 2 <= FULL_COVARIANCE_BYTES:
        e = flat.T @ flat
        e *= e
        if debiased:
            e -= samples / (samples - 2) * (squares.T @ squares)
        m = _block_sums(e, n, n, width)
    else:
        m = np.empty((n, n))
        for chunk in _chunks(n, max(1, CHUNK_COLUMNS // width)):
            a, b = chunk.start * width, chunk.stop * width
            e = flat[:, a:b].T @ flat[:, a:]  # (|A| P, (n - start) P)
            e *= e
            if debiased:
                e -= samples / (samples - 2) * (squares[:, a:b].T @ squares[:, a:])
            block = _block_sums(e, len(chunk), n - chunk.start, width)
            m[chunk.start:chunk.stop, chunk.start:] = block
            m[chunk.start:, chunk.start:chunk.stop] = block.T
    if debiased:  # the rank-one term: block sums of d d^T are the outer product of d's channel sums
        d = squares.sum(axis=0).reshape(n, width).sum(axis=1)
        m += np.outer(d, d / ((samples - 1) * (samples - 2)))
    return m


def _unbiased_center(k: np.ndarray) -> None:
    """U(K) in place for a stack of Grams (c, N, N), as ``cka_prune.cka.center_gram(unbiased=True)``."""
    samples = k.shape[1]
    diagonal = np.einsum("cii->ci", k)  # a writable view
    diagonal[...] = 0.0
    means = k.sum(axis=2) / (samples - 2)
    means -= means.sum(axis=1, keepdims=True) / (2 * (samples - 1))
    k -= means[:, :, None]
    k -= means[:, None, :]
    diagonal[...] = 0.0


def _packed_grams(blocks: list[_Block], chunk: range, debiased: bool) -> np.ndarray:
    """F rows of the channels in ``chunk``: (|chunk|, N(N+1)/2), F_c . F_d = <K_c, K_d>_F
    (debiased: of U(K_c), U(K_d)). Built SUBCHUNK_BYTES of columns at a time: small temporaries
    are reused by the allocator instead of costing fresh pages."""
    samples = blocks[0].outputs.shape[0]
    rows, cols = np.triu_indices(samples)
    upper = rows * samples + cols
    weight = np.where(rows == cols, 1.0, np.sqrt(2.0)).astype(blocks[0].dtype)
    dtype = blocks[0].dtype
    per_channel = 8 * samples * (samples + sum(b.outputs.shape[2] for b in blocks))
    packed = np.empty((len(chunk), upper.size), dtype=dtype)
    for sub in _chunks(len(chunk), max(1, SUBCHUNK_BYTES // per_channel)):
        part = range(chunk.start + sub.start, chunk.start + sub.stop)
        k = np.zeros((len(part), samples, samples), dtype=dtype)
        for block in blocks:
            have, z = block.centered(part)
            if have.all():
                k += np.matmul(z, z.transpose(0, 2, 1))
            elif have.any():
                k[have] += np.matmul(z, z.transpose(0, 2, 1))
        if debiased:
            _unbiased_center(k)
        np.take(k.reshape(len(part), -1), upper, axis=1, out=packed[sub.start:sub.stop])
    packed *= weight
    return packed


def _gram_interactions(blocks: list[_Block], n: int, debiased: bool, memory_bytes: int) -> np.ndarray:
    """M = F F^T in chunks of channels; when F does not fit, off-diagonal chunks are recomputed."""
    samples = blocks[0].outputs.shape[0]
    per_chunk = max(1, memory_bytes // (2 * 8 * samples * samples))
    chunks = _chunks(n, per_chunk)
    m = np.empty((n, n))
    for i, ca in enumerate(chunks):
        fa = _packed_grams(blocks, ca, debiased)
        m[ca.start:ca.stop, ca.start:ca.stop] = fa @ fa.T
        for cb in chunks[i + 1:]:
            block = fa @ _packed_grams(blocks, cb, debiased).T
            m[ca.start:ca.stop, cb.start:cb.stop] = block
            m[cb.start:cb.stop, ca.start:ca.stop] = block.T
    return m


def channel_interactions(blocks: Sequence[ChannelBlock], n: int, *, debiased: bool = False,
                         route: str = "auto", memory_bytes: int = DEFAULT_MEMORY_BYTES,
                         precision: str = "float64") -> np.ndarray:
    """Interaction matrix M (n, n) float64 of a group of n channels from its output layers'
    blocks (module docstring). route: 'covariance', 'gram' or 'auto' (`choose_channel_route`).
    precision: 'float64' or 'float32', the products' (module docstring)."""
    check_choice("route", route, ("auto", "covariance", "gram"))
    check_choice("precision", precision, PRECISIONS)
    if debiased and precision != "float64":
        raise ValueError("precision='float32' is for the biased estimator only (debiased=False)")
    views = [_Block.of(block, n, np.dtype(precision).type) for block in blocks]
    width = sum(block.outputs.shape[2] for block in views)
    if route == "auto":
        route = choose_channel_route(views[0].outputs.shape[0], n, width, debiased)
    if route == "covariance":
        return _covariance_interactions(views, n, width, debiased)
    return _gram_interactions(views, n, debiased, memory_bytes)
