"""One seed's depth-pruning result: the typed record ``main_prune.py`` writes for a config of
``prune.strategy`` "depth" and :mod:`src.report.depth` reads.

A result is ``output/<experiment>/<seed>.json`` holding a serialised :class:`DepthResult` (its
``kind`` is "depth", which tells it from a width result, :mod:`src.results`). This module is its
only writer and reader: ``to_dict`` / ``from_dict`` round-trip it, and a file of another kind or
schema version is refused with one line.

**Run identity.** As for width pruning (:func:`src.results.run_identity`): the trained model's
sha256, the settings that trained it, and the depth section without what it only measures (the
removal counts, the damage table, latency: :meth:`src.config.DepthConfig.identity`). Adding a
count extends a run; a record of another identity is never appended to.

**Timings.** Wall times and latencies are measurements: their keys contain ``seconds``, so that
comparing two runs' records without them (the tests' ``untimed``) compares what they computed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from src.config import ExperimentConfig
from src.errors import UserError
from src.io import atomic_write_json, read_json
from src.provenance import Provenance
from src.results import Metrics, RetrainSummary, RunIdentity, file_sha256, result_path

KIND = "depth"
SCHEMA_VERSION = 1
Latency = dict[str, float]  # median seconds of one forward pass, keyed by the batch size ("1", "64")


def config_description(cfg: ExperimentConfig) -> dict[str, Any]:
    """The part of a depth run's identity that the config gives: the same for all its seeds."""
    return {"training": cfg.training_identity(), "prune": cfg.require_depth().identity()}


def run_identity(cfg: ExperimentConfig, model_file: Path) -> RunIdentity:
    """The identity of depth-pruning ``model_file`` as ``cfg`` says (see the module docstring)."""
    return RunIdentity.of({"model_sha256": file_sha256(model_file), **config_description(cfg)})


@dataclass(frozen=True)
class DepthPoint:
    """One removal count, pruned from the trained model.

    ``removed``: block names in removal order; ``spans``: the removed spans' labels (names joined
    by ``+``) in order; ``scores``: each step's criterion score of every candidate (label ->
    score, the lowest removed; one step when ranked once); ``patch_errors``: each removed span's
    relative least-squares error (empty without the patch); ``macs``, ``parameters``: the pruned
    network's size per sample; ``latency_seconds``: its CPU latency on one thread (None when not
    measured); ``after_prune``: evaluated after removal (and BatchNorm recalibration);
    ``after_retrain``: after ``retrain`` (None without retraining).
    """

    count: int
    removed: tuple[str, ...]
    spans: tuple[str, ...]
    scores: tuple[dict[str, float], ...]
    patch_errors: dict[str, float]
    after_prune: Metrics
    macs: int
    parameters: int
    provenance: Provenance
    after_retrain: Metrics | None = None
    retrain: RetrainSummary | None = None
    latency_seconds: Latency | None = None
    seconds_selecting: float = 0.0
    seconds_retraining: float = 0.0

    def metrics(self, retrained: bool) -> Metrics | None:
        return self.after_retrain if retrained else self.after_prune


@dataclass(frozen=True)
class BlockDamage:
    """One removable block removed alone from the trained model: evaluated as the identity
    (``removed``) and replaced by its least-squares patch (``patched``, relative error ``patch_error``)."""

    block: str
    removed: Metrics
    patched: Metrics
    patch_error: float


@dataclass(frozen=True)
class DepthResult:
    """``blocks``: the removable blocks in forward order; ``counts``: the removal counts asked for
    (the last run's); ``points``: one per count done, in the order done; ``damage``: every block's
    damage alone and ``criteria_scores`` (criterion -> block -> score, ranked once on the trained
    model), with ``prune.params.damage``, else None; ``provenance``: where the baseline was made."""

    run: RunIdentity
    experiment: str
    seed: int
    criterion: str
    model_file: str
    blocks: tuple[str, ...]
    baseline: Metrics
    baseline_macs: int
    baseline_parameters: int
    provenance: Provenance
    counts: tuple[int, ...]
    points: tuple[DepthPoint, ...] = ()
    baseline_latency_seconds: Latency | None = None
    damage: tuple[BlockDamage, ...] | None = None
    criteria_scores: dict[str, dict[str, float]] | None = None
    kind: str = KIND
    schema: int = field(default=SCHEMA_VERSION)

    @property
    def complete(self) -> bool:
        return all(self.point(count) is not None for count in self.counts)

    def point(self, count: int) -> DepthPoint | None:
        return next((p for p in self.points if p.count == count), None)

    def with_point(self, point: DepthPoint) -> DepthResult:
        return replace(self, points=(*self.points, point))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}  # derived, not read back

    @classmethod
    def from_dict(cls, raw: Any) -> DepthResult:
        """The record of ``raw`` (a parsed JSON object); ValueError when it is not one of this kind and schema."""
        if not isinstance(raw, dict) or raw.get("kind") != KIND:
            raise ValueError("not a depth-pruning result")
        if raw.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"depth result schema {raw.get('schema')}, this version reads schema {SCHEMA_VERSION}")
        try:
            fields = {k: v for k, v in raw.items() if k != "complete"}
            damage = fields.get("damage")
            return cls(**{
                **fields,
                "run": RunIdentity(**fields["run"]),
                "blocks": tuple(fields["blocks"]),
                "counts": tuple(fields["counts"]),
                "provenance": Provenance(**fields["provenance"]),
                "points": tuple(_point(p) for p in fields["points"]),
                "damage": None if damage is None else tuple(BlockDamage(**d) for d in damage),
            })
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a depth result record ({type(err).__name__}: {err})") from None


def _point(raw: dict[str, Any]) -> DepthPoint:
    retrain = raw.get("retrain")
    return DepthPoint(**{**raw, "removed": tuple(raw["removed"]), "spans": tuple(raw["spans"]),
                         "scores": tuple(raw["scores"]), "provenance": Provenance(**raw["provenance"]),
                         "retrain": None if retrain is None else RetrainSummary(**retrain)})


def is_depth_file(path: Path) -> bool:
    """Whether ``path`` holds a JSON object of kind "depth" (of any schema); False if unreadable."""
    try:
        raw = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("kind") == KIND


def same(a: DepthResult | None, b: DepthResult | None) -> bool:
    """Whether two results would be written identically (NaN equals NaN here, unlike ``==``)."""
    return a is not None and b is not None and json.dumps(a.to_dict()) == json.dumps(b.to_dict())


def save(result: DepthResult, out_dir: Path) -> Path:
    return atomic_write_json(result_path(out_dir, result.seed), result.to_dict())


def load(path: Path) -> DepthResult:
    """Read one depth result file; UserError (one line naming the file) when it is not one of this schema."""
    try:
        return DepthResult.from_dict(read_json(path))
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except ValueError as err:  # json.JSONDecodeError is a ValueError too
        raise UserError(f"{path}: not a depth result file this version can read: {err}") from None
