"""The greedy search shared by every engine: one driver, so stop and tie rules cannot drift.

Conditional greedy (the default): with S the groups removed so far in this call, each step
scores every alive candidate i by

    score_i = CKA(A, A with the columns of S and i made constant)

and removes the best (ties, i.e. scores within a relative 1e-10 of the best: lowest index).
It stops after k removals, or before removing a group whose score is <= stop_cka.

Independent greedy (greedy="independent"): every alive candidate is scored once, alone,

    score_i = CKA(A, A with only the columns of i made constant),

and the groups are removed in decreasing order of that score (ties as above). With stop_cka
the pass stops before the first group, in that order, whose own score is <= stop_cka; the
scores are the individual ones, not the CKA of the cumulative removals (`cka_path` gives
that, `cka_prune.fast`).

An engine is a `Search`: its step_scores (the score of removing each candidate next) and its
state update on a removal. `run_search` steps one layer's search; `allocate` several. Every
engine goes through it, OBS included (`cka_prune.obs.obs_search`: its scores are minus the
objective's rise, its ties relative to the objective's scale rather than to the best score).

Global allocation (`allocate`): several layers' searches share one budget; each step removes,
over all layers, the best candidate of the layer whose own CKA falls by the smallest relative
amount (score / current CKA of that layer closest to 1; ties: the first layer). That is the
greedy step for maximising sum_l log CKA_l, i.e. the product of the layers' CKAs: CKA is
scale-free in [0, 1] whatever the layer's width or depth, a relative drop weighs a layer at
0.5 losing 0.05 like one at 1.0 losing 0.1, and a layer's CKA approaching 0 costs without bound.
No layer is emptied: a layer with one neuron left is no longer a candidate.

The argument checks every engine shares are `cka_prune.checks`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cka_prune.checks import check_choice

# Scores within this relative distance of the best are tied; the lowest index wins. Without it,
# exactly tied candidates (e.g. dead columns) would be ordered by float noise, differently in
# the two engines.
TIE_RTOL = 1e-10

GREEDY = ("conditional", "independent")


def choose(scores: np.ndarray, candidates: np.ndarray, tie_scale: float | None = None) -> int:
    """Index of the best candidate; scores within TIE_RTOL x tie_scale of the best tie -> lowest index.

    scores: (n,) float, read only where `candidates` (n,) bool is True. tie_scale: the scores' scale
    (None: the best score's own size, for CKA; an engine whose best score can be 0 while the others
    carry rounding of a larger quantity, e.g. OBS's costs, gives that quantity's size).
    """
    masked = np.where(candidates, scores, -np.inf)
    best = masked.max()
    if np.isnan(best) or not candidates.any():
        raise ValueError("choose: no candidate left, or a candidate's score is NaN")
    tied = candidates & (masked >= best - TIE_RTOL * (abs(best) if tie_scale is None else tie_scale))
    return int(np.argmax(tied))  # argmax of a bool array: the first True, i.e. the lowest tied candidate


@dataclass
class Search:
    """One layer's greedy search, stepped by `run_search` (one layer) or `allocate` (several).

    candidates: bool (n,), True where a group may still be removed.
    step_scores(removed, candidates) -> (n,) score of removing each candidate next.
    on_remove(j): updates the engine's state after group j is removed.
    conditional: False for independent greedy, whose scores do not change between steps.
    tie_scale: the scale ties are relative to (`choose`; None: the best score's).
    """

    candidates: np.ndarray
    step_scores: Callable[[list[int], np.ndarray], np.ndarray]
    on_remove: Callable[[int], None]
    conditional: bool = True
    tie_scale: float | None = None
    removed: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def best(self) -> tuple[int, float]:
        """(group, score) of the best candidate now; there must be a candidate."""
        step = self.step_scores(self.removed, self.candidates)
        j = choose(step, self.candidates, self.tie_scale)
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


def make_search(candidates: np.ndarray, step_scores: Callable[[list[int], np.ndarray], np.ndarray],
                 on_remove: Callable[[int], None], greedy: str) -> Search:
    """A Search for `greedy` ('conditional' or 'independent') over an engine's step_scores."""
    check_choice("greedy", greedy, GREEDY)
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
