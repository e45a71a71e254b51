"""Greedy CKA pruning of one layer from its activations.

Conditional greedy (the default): with S the groups removed so far in this call, each step
scores every alive candidate i by

    score_i = CKA(A, A with the columns of S and i made constant)

and removes the best (ties, i.e. scores within a relative 1e-10 of the best: lowest index).
It stops after k removals, or before removing a group whose score is <= stop_cka.

Independent greedy (greedy="independent"): every alive candidate is scored once, alone,

    score_i = CKA(A, A with only the columns of i made constant),

and the groups are removed in decreasing order of that score (ties as above). With stop_cka
the pass stops before the first group, in that order, whose own score is <= stop_cka; the
scores are the individual ones, not the CKA of the cumulative removals (`cka_path` gives that).

A group is one output column (a Linear neuron) or several (a Conv2d channel's H*W columns of
the flattened (N, C*H*W) output). Zeroing a group's incoming weights makes its columns constant
(the bias; relu(bias) after a ReLU), and a constant column drops out of centered CKA.

Two engines give the same removal order and scores:

- reference: the literal loop, one CKA evaluation of a recomputed representation per candidate
  per step (`reference_greedy`; O(k n) CKA evaluations).
- fast: the closed form for linear CKA. With X the column-centered activations and
  K_g = X_g X_g^T the Gram of group g, linear CKA only needs the n x n interaction matrix

      M[g, h] = <K_g, K_h>_F                 (biased)
      M[g, h] = N (N-3) HSIC_u(K_g, K_h)      (debiased; HSIC_u is bilinear)

  since for the kept set R, with m = M 1 and T = 1^T M 1,

      CKA(A, A_R) = sum_{h in R} m[h] / sqrt(T * sum_{g,h in R} M[g, h]).

  The greedy pass then costs O(n) per step (`fast_greedy_from_interactions`).

Next-layer target (`fast_next_greedy`, biased linear CKA, one column per neuron). The
representation kept is the next Linear layer's pre-activation Z = A W^T, A (N, n) the pruned
layer's post-activation output (the next layer's input) and W (p, n) the next layer's weight.
Assumption, as above: a removed neuron's column of A is constant (relu(bias)), so with X the
centered A and P_R the diagonal 0/1 selector of the kept set R, the centered pruned Z is
Z_R = X P_R W^T (the next layer's bias is a constant and drops out too). With C = X^T X and
G = W^T W (n x n) and S = P_R C P_R (C with removed rows and columns zeroed):

    <K_Z, K_{Z_R}>   = ||Z^T Z_R||_F^2 = ||W C P_R W^T||_F^2 = tr(C P_R G P_R C G)
                     = sum_{a,b in R} Q[a, b],       Q = (C G C) o G
    ||K_{Z_R}||_F^2  = ||Z_R^T Z_R||_F^2 = ||W S W^T||_F^2 = tr(S G S G) = sum (GS) o (GS)^T
    ||K_Z||_F^2      = T = 1^T Q 1
    CKA(Z, Z_R)      = sum_{a,b in R} Q[a, b] / sqrt(T tr(S G S G)).

The numerator is a quadratic form over R: with q = Q 1_R, removing i gives
num_i = num - 2 q[i] + Q[i, i], and q -= Q[:, j] after removing j. Removing i from S zeroes
its row and column: S_i = S - e_i t_i^T - t_i e_i^T with t_i = S e_i - S[i, i] e_i / 2, so

    tr(S_i G S_i G) = tr(S G S G) - 4 e_i^T G S G t_i
                      + 2 [ (e_i^T G t_i)^2 + G[i, i] t_i^T G t_i ],

    e_i^T G S G t_i = (GSGS)[i, i] - S[i, i] (GSG)[i, i] / 2
    e_i^T G t_i     = (GS)[i, i] - S[i, i] G[i, i] / 2
    t_i^T G t_i     = (SGS)[i, i] - S[i, i] (GS)[i, i] + S[i, i]^2 G[i, i] / 4,

where every diagonal is a row sum of an elementwise product of n x n matrices already held:
diag(GSGS) = rowsum(GS o (GS)^T), diag(GSG) = rowsum(GS o G), diag(SGS) = rowsum(S o (GS)^T).
After removing j: GS -= G[:, j] S[j, :] (row j of S gone), then column j of GS and row and
column j of S are zeroed. Every step is O(n^2) (Q costs O(n^3) once).

Global allocation (`allocate`): several layers' searches share one budget; each step removes,
over all layers, the best candidate of the layer whose own CKA falls by the smallest relative
amount (score / current CKA of that layer closest to 1; ties: the first layer). That is the
greedy step for maximising sum_l log CKA_l, i.e. the product of the layers' CKAs: CKA is
scale-free in [0, 1] whatever the layer's width or depth, a relative drop weighs a layer at
0.5 losing 0.05 like one at 1.0 losing 0.1, and a layer's CKA approaching 0 costs without bound.
No layer is emptied: a layer with one neuron left is no longer a candidate.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cka_prune.cka import center_gram, gram_linear, gram_rbf, to_float64

# Scores within this relative distance of the best are tied; the lowest index wins. Without it,
# exactly tied candidates (e.g. dead columns) would be ordered by float noise, differently in
# the two engines.
TIE_RTOL = 1e-10
# A pruned representation whose self-similarity is at most this fraction of the original's has
# no variation left (only constant columns); its CKA (0/0) is taken as 0.
DEGENERATE_RTOL = 1e-12
# Default memory bound for one interaction-matrix computation (covariance route: a few D x D
# float64 matrices; Gram route: a chunk of flattened N x N Grams).
DEFAULT_MEMORY_BYTES = 2 * 1024**3

_NO_VARIATION = ("activations have no variation across samples (or a debiased self-similarity "
                 "<= 0); CKA is undefined")

Groups = Sequence[Any] | None
Recompute = Callable[[list[int]], Any]
GREEDY = ("conditional", "independent")


# ---------------------------------------------------------------------------------------------
# Argument checks


def _check_activations(activations: Any, min_samples: int) -> np.ndarray:
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


def _to_numpy(x: Any) -> np.ndarray:
    """NumPy array of `x` (array, tensor or sequence), dtype kept."""
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def _normalize_groups(groups: Groups, n_columns: int) -> list[np.ndarray]:
    """Groups as int index arrays that partition range(n_columns); None -> one per column."""
    if groups is None:
        return [np.array([j]) for j in range(n_columns)]
    if isinstance(groups, np.ndarray) and groups.ndim == 2:  # (n, size): one row per group
        groups = list(groups)
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise ValueError(f"groups must be None or a list of column-index arrays, got {type(groups).__name__}")
    out = []
    for g, idx in enumerate(groups):
        arr = _to_numpy(idx)
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


def _candidate_mask(alive: Any, n_groups: int) -> np.ndarray:
    """Bool (n_groups,) mask of candidate groups from None, a bool mask or an index list."""
    if alive is None:
        return np.ones(n_groups, dtype=bool)
    arr = _to_numpy(alive)
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


def _check_budget(k: Any, stop_cka: Any, n_candidates: int) -> None:
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


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# The shared greedy driver (stop and tie rules for both engines)


def choose(scores: np.ndarray, candidates: np.ndarray) -> int:
    """Index of the best candidate; scores within TIE_RTOL (relative) of the best tie -> lowest index.

    scores: (n,) float, read only where `candidates` (n,) bool is True.
    """
    best = np.max(scores[candidates])
    tied = candidates & (scores >= best - TIE_RTOL * abs(best))
    return int(np.flatnonzero(tied)[0])


@dataclass
class Search:
    """One layer's greedy search, stepped by `run_search` (one layer) or `allocate` (several).

    candidates: bool (n,), True where a group may still be removed.
    step_scores(removed, candidates) -> (n,) score of removing each candidate next.
    on_remove(j): updates the engine's state after group j is removed.
    conditional: False for independent greedy, whose scores do not change between steps.
    """

    candidates: np.ndarray
    step_scores: Callable[[list[int], np.ndarray], np.ndarray]
    on_remove: Callable[[int], None]
    conditional: bool = True
    removed: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def best(self) -> tuple[int, float]:
        """(group, score) of the best candidate now; there must be a candidate."""
        step = self.step_scores(self.removed, self.candidates)
        j = choose(step, self.candidates)
        return j, float(step[j])

    def take(self, j: int, score: float) -> None:
        self.on_remove(j)
        self.candidates[j] = False
        self.removed.append(j)
        self.scores.append(score)

    @property
    def level(self) -> float:
        """What the next score is compared with: the current kept set's CKA (1 before any
        removal), or 1 for independent greedy, whose scores are against the original."""
        return self.scores[-1] if self.conditional and self.scores else 1.0


def _make_search(candidates: np.ndarray, step_scores: Callable[[list[int], np.ndarray], np.ndarray],
                 on_remove: Callable[[int], None], greedy: str) -> Search:
    """A Search for `greedy` ('conditional' or 'independent') over an engine's step_scores."""
    _check_choice("greedy", greedy, GREEDY)
    if greedy == "conditional":
        return Search(candidates.copy(), step_scores, on_remove)
    first: list[np.ndarray] = []

    def once(removed: list[int], cand: np.ndarray) -> np.ndarray:
        if not first:  # every candidate alone against the original: no earlier removal applied
            first.append(step_scores([], cand))
        return first[0]
    return Search(candidates.copy(), once, lambda j: None, conditional=False)


def run_search(search: Search, k: int | None, stop_cka: float | None) -> tuple[list[int], list[float]]:
    """Remove up to k groups (None: all candidates), stopping before a score <= stop_cka.

    Returns (removed group indices in removal order, score at each removal).
    """
    limit = int(search.candidates.sum()) if k is None else k
    while len(search.removed) < limit and search.candidates.any():
        j, score = search.best()
        if stop_cka is not None and score <= stop_cka:
            break
        search.take(j, score)
    return list(search.removed), list(search.scores)


def allocate(searches: Sequence[Search], budget: int) -> None:
    """Spend exactly `budget` removals over several layers' searches (global allocation).

    Each step takes, from the layer whose best candidate keeps the largest share of the
    layer's current CKA (score / level; ties: the first layer), that candidate (module
    docstring). A layer with one candidate left is never emptied. The searches record their
    own removals and scores.
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 0:
        raise ValueError(f"budget must be an int >= 0, got {budget!r}")
    capacity = sum(max(int(s.candidates.sum()) - 1, 0) for s in searches)
    if budget > capacity:
        raise ValueError(f"budget {budget} exceeds the {capacity} groups that can go without emptying a layer")

    def best(search: Search) -> tuple[int, float] | None:
        return search.best() if search.candidates.sum() > 1 else None

    bests = [best(s) for s in searches]
    for _ in range(budget):
        # A layer whose CKA is already 0 loses nothing more: its share kept counts as 1.
        kept = np.array([-np.inf if b is None else (b[1] / s.level if s.level > 0 else 1.0)
                         for s, b in zip(searches, bests)])
        layer = choose(kept, np.isfinite(kept))
        searches[layer].take(*bests[layer])
        bests[layer] = best(searches[layer])


def _ratio(num: np.ndarray | float, den2: np.ndarray | float, total: float) -> np.ndarray:
    """CKA = num / sqrt(total * den2), and 0 where den2 <= DEGENERATE_RTOL * total."""
    num, den2 = np.asarray(num, dtype=np.float64), np.asarray(den2, dtype=np.float64)
    ok = den2 > DEGENERATE_RTOL * total
    return np.where(ok, num / np.sqrt(total * np.where(ok, den2, 1.0)), 0.0)


# ---------------------------------------------------------------------------------------------
# Reference engine


def reference_search(original: Any, recompute: Recompute, n_groups: int, *, alive: Any = None,
                     kernel: str = "linear", debiased: bool = False, greedy: str = "conditional") -> Search:
    """The literal loop as a Search: one CKA evaluation of a recomputed representation per candidate.

    original: (N, D) representation before this pass.
    recompute(removed) -> (N, D') that representation with the weights of the `removed` groups
        zeroed (a model-level caller re-runs the module; `greedy_cka` sets the columns constant).
    Score = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) from cka_prune.cka's Grams and centering (kernel
    linear or rbf, biased or unbiased HSIC); 0 when the recomputed output has no variation left.
    """
    _check_choice("kernel", kernel, ("linear", "rbf"))
    x = _check_activations(original, 4 if debiased else 2)
    if isinstance(n_groups, bool) or not isinstance(n_groups, numbers.Integral) or n_groups < 1:
        raise ValueError(f"n_groups must be a positive int, got {n_groups!r}")
    candidates = _candidate_mask(alive, n_groups)
    gram = gram_linear if kernel == "linear" else gram_rbf
    # CKA = <Kc, Lc>_F / sqrt(<Kc, Kc>_F <Lc, Lc>_F) as in cka_prune.cka.cka, with the original's
    # centered Gram Kc computed once instead of once per candidate.
    kc = center_gram(gram(x), unbiased=debiased)
    kk = float(np.vdot(kc, kc))
    if not kk > 0:
        raise ValueError(_NO_VARIATION)

    def score(removed: list[int]) -> float:
        y = to_float64(recompute(removed))
        if y.ndim != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(f"recompute must return ({x.shape[0]}, D) activations, got {y.shape}")
        if np.all(y == y[0]):  # no variation left (and no RBF bandwidth): CKA taken as 0
            return 0.0
        lc = center_gram(gram(y), unbiased=debiased)
        return float(_ratio(np.vdot(kc, lc), np.vdot(lc, lc), kk))

    def step_scores(removed: list[int], cand: np.ndarray) -> np.ndarray:
        out = np.full(n_groups, -np.inf)
        for i in np.flatnonzero(cand):
            out[i] = score(removed + [int(i)])
        return out

    return _make_search(candidates, step_scores, lambda j: None, greedy)


def reference_greedy(original: Any, recompute: Recompute, n_groups: int, k: int | None, *,
                     alive: Any = None, kernel: str = "linear", debiased: bool = False,
                     stop_cka: float | None = None,
                     greedy: str = "conditional") -> tuple[list[int], list[float]]:
    """Run `reference_search` for k removals or until stop_cka.

    Returns (removed group indices in removal order, score at each removal).
    """
    search = reference_search(original, recompute, n_groups, alive=alive, kernel=kernel,
                              debiased=debiased, greedy=greedy)
    _check_budget(k, stop_cka, int(search.candidates.sum()))
    return run_search(search, k, stop_cka)


def constant_columns(x: np.ndarray, groups: list[np.ndarray]) -> Recompute:
    """recompute(removed) for activations: x (N, D) with the removed groups' columns set to 0."""
    def recompute(removed: list[int]) -> np.ndarray:
        out = x.copy()
        if removed:
            out[:, np.concatenate([groups[g] for g in removed])] = 0.0
        return out
    return recompute


# ---------------------------------------------------------------------------------------------
# Fast engine: interaction matrix


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
    layout = _layout(_normalize_groups(groups, g.shape[0]))
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
    _check_choice("route", route, ("auto", "covariance", "gram"))
    x = _check_activations(activations, 4 if debiased else 2)
    group_list = _normalize_groups(groups, x.shape[1])
    if route == "auto":
        route = choose_route(x.shape[0], x.shape[1], len(group_list), debiased, memory_bytes)
    x = x - x.mean(axis=0)
    if route == "gram":
        return _gram_route(x, group_list, debiased, memory_bytes)
    layout = _layout(group_list)
    if layout.perm is not None:
        x = x[:, layout.perm]
    return _covariance_route(x, layout, debiased)


# ---------------------------------------------------------------------------------------------
# Fast engine: greedy pass


@dataclass
class _FastState:
    """num, den2 and r (see fast_greedy_from_interactions) for the current kept set."""

    interactions: np.ndarray  # M (n, n)
    m: np.ndarray             # M 1 (n,)
    total: float              # T = 1^T M 1
    diag: np.ndarray = field(init=False)
    num: float = field(init=False)
    den2: float = field(init=False)
    r: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.diag = np.diag(self.interactions).copy()
        self.num = self.den2 = self.total  # nothing removed yet: R = all groups
        self.r = self.m.copy()

    def scores(self, removed: list[int], candidates: np.ndarray) -> np.ndarray:
        """(n,) score of removing each group next (meaningful for candidates only)."""
        return _ratio(self.num - self.m, self.den2 - 2.0 * self.r + self.diag, self.total)

    def remove(self, j: int) -> None:
        self.num -= self.m[j]
        self.den2 += self.diag[j] - 2.0 * self.r[j]
        self.r -= self.interactions[j]  # row j = column j (M is symmetric)


def fast_search(interactions: Any, alive: Any = None, greedy: str = "conditional") -> Search:
    """The closed-form engine as a Search from the interaction matrix M (n, n), O(n) per step.

    State for the kept set R: num = sum_{h in R} m[h], den2 = sum_{g,h in R} M[g, h],
    r = M[:, R] 1 (m = M 1, T = 1^T M 1). Removing i gives
        num_i = num - m[i],  den2_i = den2 - 2 r[i] + M[i, i],  score_i = num_i / sqrt(T den2_i).
    """
    m_mat = to_float64(interactions)
    if m_mat.ndim != 2 or m_mat.shape[0] != m_mat.shape[1] or m_mat.shape[0] == 0:
        raise ValueError(f"interactions must be a square (n, n) matrix, got shape {m_mat.shape}")
    if not np.all(np.isfinite(m_mat)):
        raise ValueError("interactions contain NaN or inf")
    m = m_mat.sum(axis=0)
    # Cheap O(n^2) symmetry check (row sums = column sums); a full M == M^T costs far more.
    if not np.allclose(m, m_mat.sum(axis=1), rtol=1e-8, atol=1e-9 * np.abs(m).max()):
        raise ValueError("interactions must be symmetric")
    candidates = _candidate_mask(alive, m_mat.shape[0])
    total = float(m.sum())
    if not total > 0:
        raise ValueError(_NO_VARIATION)
    state = _FastState(m_mat, m, total)
    return _make_search(candidates, state.scores, state.remove, greedy)


def fast_greedy_from_interactions(interactions: Any, k: int | None, alive: Any = None,
                                  stop_cka: float | None = None,
                                  greedy: str = "conditional") -> tuple[list[int], list[float]]:
    """Exact greedy pass from the interaction matrix M (n, n) (`fast_search`).

    Returns (removed group indices in removal order, score at each removal).
    """
    search = fast_search(interactions, alive, greedy)
    _check_budget(k, stop_cka, int(search.candidates.sum()))
    return run_search(search, k, stop_cka)


# ---------------------------------------------------------------------------------------------
# Fast engine: next-layer target


def _check_weight(weight: Any, n_columns: int) -> np.ndarray:
    w = to_float64(weight)
    if w.ndim != 2 or w.shape[1] != n_columns or w.shape[0] == 0:
        raise ValueError(f"next-layer weight must have shape (p, {n_columns}), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("next-layer weight contains NaN or inf")
    return w


def _check_next(cov: Any, weight: Any) -> tuple[np.ndarray, np.ndarray]:
    c = to_float64(cov)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] == 0:
        raise ValueError(f"cov must be a square (n, n) matrix, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("cov contains NaN or inf")
    return c, _check_weight(weight, c.shape[0])


@dataclass
class _NextLayerState:
    """The next-layer target's state for the kept set R (module docstring).

    q_mat: Q = (C G C) o G; q = Q 1_R; num = 1_R^T Q 1_R; s = S = P_R C P_R; gs = G S;
    den2 = tr(S G S G); total = T = 1^T Q 1. All (n, n) or (n,), float64.
    """

    cov: np.ndarray
    gram: np.ndarray
    q_mat: np.ndarray = field(init=False)
    q: np.ndarray = field(init=False)
    total: float = field(init=False)
    num: float = field(init=False)
    s: np.ndarray = field(init=False)
    gs: np.ndarray = field(init=False)
    den2: float = field(init=False)

    def __post_init__(self) -> None:
        self.q_mat = (self.cov @ self.gram @ self.cov) * self.gram
        self.q = self.q_mat.sum(axis=0)
        self.total = self.num = float(self.q.sum())
        self.s = self.cov.copy()
        self.gs = self.gram @ self.s
        self.den2 = float(np.sum(self.gs * self.gs.T))

    def scores(self, removed: list[int], candidates: np.ndarray) -> np.ndarray:
        """(n,) score of removing each group next (meaningful for candidates only)."""
        d, g_ii, gs_ii = np.diag(self.s), np.diag(self.gram), np.diag(self.gs)
        gsgs = np.einsum("ik,ki->i", self.gs, self.gs)
        gsg = np.einsum("ik,ki->i", self.gs, self.gram)
        sgs = np.einsum("ik,ki->i", self.s, self.gs)
        e_gsg_t = gsgs - d * gsg / 2
        e_g_t = gs_ii - d * g_ii / 2
        t_g_t = sgs - d * gs_ii + d * d * g_ii / 4
        den2 = self.den2 - 4.0 * e_gsg_t + 2.0 * (e_g_t * e_g_t + g_ii * t_g_t)
        num = self.num - 2.0 * self.q + np.diag(self.q_mat)
        return _ratio(num, den2, self.total)

    def remove(self, j: int) -> None:
        self.num += self.q_mat[j, j] - 2.0 * self.q[j]
        self.q -= self.q_mat[j]
        self.gs -= np.outer(self.gram[:, j], self.s[j])
        self.gs[:, j] = 0.0
        self.s[j, :] = 0.0
        self.s[:, j] = 0.0
        self.den2 = float(np.sum(self.gs * self.gs.T))

    def cka(self) -> float:
        return float(_ratio(self.num, self.den2, self.total))


def next_layer_search(cov: Any, weight: Any, alive: Any = None, greedy: str = "conditional") -> Search:
    """The next-layer target's closed form as a Search, O(n^2) per step (module docstring).

    cov: (n, n) centered covariance C = X^T X of the pruned layer's post-activation output
        (one column per neuron; e.g. CovarianceAccumulator.centered()).
    weight: (p, n) the next Linear layer's weight W.
    """
    c, w = _check_next(cov, weight)
    candidates = _candidate_mask(alive, c.shape[0])
    state = _NextLayerState(c, w.T @ w)
    if not state.total > 0:
        raise ValueError(_NO_VARIATION)
    return _make_search(candidates, state.scores, state.remove, greedy)


def fast_next_greedy(cov: Any, weight: Any, k: int | None, alive: Any = None, stop_cka: float | None = None,
                     greedy: str = "conditional") -> tuple[list[int], list[float]]:
    """Greedy pass scored at the next layer's pre-activation (`next_layer_search`).

    Returns (removed neuron indices in removal order, score at each removal).
    """
    search = next_layer_search(cov, weight, alive, greedy)
    _check_budget(k, stop_cka, int(search.candidates.sum()))
    return run_search(search, k, stop_cka)


def next_layer_cka_path(cov: Any, weight: Any, order: Sequence[int]) -> list[float]:
    """CKA(Z, Z with order[:t+1] removed) for each t, Z = A W^T: the damage curve at the next layer."""
    c, w = _check_next(cov, weight)
    state = _NextLayerState(c, w.T @ w)
    out = []
    for j in order:
        state.remove(int(j))
        out.append(state.cka())
    return out


# ---------------------------------------------------------------------------------------------
# Public entry point


def channel_groups(n_channels: int, positions: int) -> list[np.ndarray]:
    """Groups of a Conv2d output flattened to (N, C*H*W): channel c owns columns [c*HW, (c+1)*HW)."""
    return [np.arange(c * positions, (c + 1) * positions) for c in range(n_channels)]


def greedy_cka(activations: Any, k: int | None, groups: Groups = None, engine: str = "fast",
               kernel: str = "linear", stop_cka: float | None = None, *, debiased: bool = False,
               alive: Any = None, greedy: str = "conditional",
               next_weight: Any = None) -> tuple[list[int], list[float]]:
    """Greedily remove the groups of one layer whose removal keeps CKA to the original highest.

    activations: (N, D) array or tensor of the layer's outputs on the scoring samples.
    k: number of groups to remove (None: until stop_cka). stop_cka: stop before a removal
        whose score is <= stop_cka. With both, whichever comes first.
    groups: None (each column a group), a list of column-index arrays partitioning the D
        columns (e.g. `channel_groups(C, H*W)`), or an (n, size) int array, one row per group.
    engine: 'fast' (closed form, linear kernel) or 'reference' (literal loop).
    kernel: 'linear' or 'rbf'. rbf CKA is not a sum over groups: engine='fast' warns and runs
        the reference engine.
    debiased: unbiased HSIC (Song et al. 2012) instead of the biased estimator.
    alive: bool mask (n,) or group indices of the candidates; the others were pruned earlier
        (constant columns) and are never chosen.
    greedy: 'conditional' or 'independent' (module docstring).
    next_weight: None, or (p, D) the next Linear layer's weight W: CKA is then measured at
        Z = activations W^T (activations being that layer's input). The fast engine needs
        biased CKA and one column per group.
    Returns (removed group indices in removal order, CKA score at each removal).
    """
    _check_choice("engine", engine, ("fast", "reference"))
    _check_choice("kernel", kernel, ("linear", "rbf"))
    _check_choice("greedy", greedy, GREEDY)
    if not isinstance(debiased, bool):
        raise ValueError(f"debiased must be a bool, got {debiased!r}")
    x = _check_activations(activations, 4 if debiased else 2)
    group_list = _normalize_groups(groups, x.shape[1])
    candidates = _candidate_mask(alive, len(group_list))
    _check_budget(k, stop_cka, int(candidates.sum()))
    weight = None if next_weight is None else _check_weight(next_weight, x.shape[1])
    if engine == "fast" and kernel == "rbf":
        warnings.warn("greedy_cka: the fast engine does not support kernel='rbf' (RBF CKA is not a "
                      "sum over groups); running the reference engine", UserWarning, stacklevel=2)
        engine = "reference"
    if engine == "fast" and weight is not None:
        if debiased or groups is not None:
            raise ValueError("the next-layer fast engine needs biased CKA and one column per group")
        centered = x - x.mean(axis=0)
        return fast_next_greedy(centered.T @ centered, weight, k, alive=candidates, stop_cka=stop_cka,
                                greedy=greedy)
    if engine == "fast":
        interactions = interactions_from_activations(x, group_list, debiased=debiased)
        return fast_greedy_from_interactions(interactions, k, alive=candidates, stop_cka=stop_cka, greedy=greedy)
    columns = constant_columns(x, group_list)
    if weight is None:
        return reference_greedy(x, columns, len(group_list), k, alive=candidates, kernel=kernel,
                                debiased=debiased, stop_cka=stop_cka, greedy=greedy)
    return reference_greedy(x @ weight.T, lambda removed: columns(removed) @ weight.T, len(group_list), k,
                            alive=candidates, kernel=kernel, debiased=debiased, stop_cka=stop_cka, greedy=greedy)


def cka_path(interactions: Any, order: Sequence[int]) -> list[float]:
    """CKA(A, A with order[:t+1] removed) for each t: the damage curve of a given removal order."""
    m_mat = to_float64(interactions)
    m = m_mat.sum(axis=0)
    state = _FastState(m_mat, m, float(m.sum()))
    out = []
    for j in order:
        state.remove(int(j))
        out.append(float(_ratio(state.num, state.den2, state.total)))
    return out
