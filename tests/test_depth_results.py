"""The depth-pruning record (src.depth_results): written and read by one module, refused in one line otherwise."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from src import depth_results
from src.depth_results import BlockDamage, DepthPoint, DepthResult
from src.errors import UserError
from src.provenance import Provenance
from src.results import RetrainSummary, RunIdentity, result_path

PROVENANCE = Provenance(commit="abc", dirty=False, python="3.11", torch="2", numpy="2", torch_pruning="1.6",
                        device="cpu", threads=1)
METRICS = {"val_loss": 0.3, "val_acc": 0.9, "test_loss": 0.35, "test_acc": 0.88}


def point(count: int, acc: float, macs: int = 50, retrained: float | None = None) -> DepthPoint:
    removed = tuple(f"blocks.{i}" for i in range(count))
    return DepthPoint(
        count=count, removed=removed, spans=removed, scores=tuple({b: 0.1 * i} for i, b in enumerate(removed)),
        patch_errors={b: 0.2 for b in removed}, after_prune={**METRICS, "test_acc": acc}, macs=macs, parameters=10,
        provenance=PROVENANCE, latency_seconds={"1": 1e-3, "64": 2e-2}, seconds_selecting=0.5,
        after_retrain=None if retrained is None else {**METRICS, "test_acc": retrained},
        retrain=None if retrained is None else RetrainSummary(1, 1, False, 0.2))


def result(seed: int = 0, points=(), damage=None, scores=None, experiment="depth/x", compensate="none",
           dataset="mnist-5k") -> DepthResult:
    run = RunIdentity.of({"model_sha256": f"m{seed}", "training": {"data": {"dataset": dataset}},
                          "prune": {"params": {"compensate": compensate}}})
    return DepthResult(run=run, experiment=experiment, seed=seed, criterion="cka", model_file="m.pt",
                       blocks=("blocks.0", "blocks.1", "blocks.2"), baseline=METRICS, baseline_macs=100,
                       baseline_parameters=20, provenance=PROVENANCE, counts=tuple(p.count for p in points),
                       points=tuple(points), damage=damage, criteria_scores=scores)


def test_a_record_round_trips_through_its_file(tmp_path):
    damage = tuple(BlockDamage(f"blocks.{i}", METRICS, METRICS, 0.1 * i) for i in range(3))
    written = result(points=[point(1, 0.8, retrained=0.85), point(2, 0.7)], damage=damage,
                     scores={"cka": {"blocks.0": 0.5, "blocks.1": 0.2, "blocks.2": 0.9}})
    path = depth_results.save(written, tmp_path)
    assert path == result_path(tmp_path, 0)
    read = depth_results.load(path)
    assert read == written and depth_results.same(read, written)
    assert json.loads(path.read_text())["complete"] is True
    assert depth_results.is_depth_file(path)


def test_counts_not_done_leave_the_record_incomplete():
    partial = result(points=[point(1, 0.8)])
    assert partial.complete and not replace(partial, counts=(1, 2)).complete
    assert partial.point(1).count == 1 and partial.point(2) is None


@pytest.mark.parametrize("raw, says", [
    ({"schema": 5, "run": {}}, "not a depth-pruning result"),
    ({"kind": "depth", "schema": 99}, "depth result schema 99, this version reads schema 1"),
    ({"kind": "depth", "schema": 1}, "not a depth result record (KeyError"),
])
def test_another_record_is_refused_in_one_line(tmp_path, raw, says):
    path = tmp_path / "0.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(UserError) as info:
        depth_results.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a depth result file this version can read: ") and says in message
    assert "\n" not in message
