"""The greedy and one-shot driver."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DepthPlan:
    """What `select` chose, and what `apply` needs.

    removed: block names in removal order; spans: the removed spans (tuples of names) in order;
    steps: each step's {label: score} over its candidates (one step in one-shot mode); patches:
    {span label: Patch} (empty when compensate="none"); patch_errors: {span label: relative
    least-squares error of its patch}; tuple_outputs: {block name: k} for blocks that return a
    k-tuple (their Skip returns (y, None, ...)).
    """

    criterion: str
    compensate: str
    greedy: bool
    removed: tuple[str, ...]
    spans: tuple[tuple[str, ...], ...]
    steps: tuple[dict[str, float], ...]
    patches: dict
    patch_errors: dict[str, float]
    tuple_outputs: dict[str, int]


def select(model, names, batches, criterion="cka", count=1, *, greedy=True, span=False, compensate="lstsq",
           ridge=1e-3, loss=None, seed=0, forward=None, mask=None) -> DepthPlan:
    """Rank and remove `count` blocks of `names` on `batches`.

    criterion: a name in CRITERIA (or a Criterion); count: blocks to remove; greedy: re-record and
    re-rank on the current network after each removal (else rank once on the dense network);
    span: False (single blocks), True (one span of `count` consecutive blocks) or an int k (spans of
    k blocks, count a multiple of k); compensate: "none" (identity) or "lstsq" (ridge patch, ridge
    relative to the mean input variance); loss: callable(model) -> float, needed by "loss";
    seed: "random"'s generator; forward(model, batch) runs one batch; mask(batch) -> bool rows.
    """
    raise NotImplementedError
