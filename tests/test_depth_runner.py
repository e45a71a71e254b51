"""Depth pruning through main_prune.py (src.pruning.depth): end to end on a tiny residual MLP,
resume, run identity, and the calibration samples and loss it hands the library."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cka_prune.depth import Skip
import main_prune
from src import depth_results
from src.artifacts import load_model, model_path, save_model
from src.config import DEPTH_CRITERIA, DepthParams, load_config, parse_config
from src.data import to_unit_float
from src.export import load_exported
from src.models import build_model
from src.pruning import depth
from src.pruning.budget import recalibrate_batch_norm
from src.results import result_path
from src.train import evaluate
from tests.conftest import tiny_raw, untimed

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"type": "resmlp", "depth": 4, "width": 16}
PARAMS = {"lr": 0.003, "batch_size": 128, "epochs": 2, "patience": 1}


def depth_config(write_config, **params):
    """A tiny depth config on mnist-5k: 4 blocks of width 16, one seed; ``params`` replace the defaults."""
    prune = {"criterion": "cosine", "blocks": [1, 2], "samples": 128, "latency": False, **params}
    return write_config(model=MODEL, params=PARAMS, prune={"strategy": "depth", "params": prune})


def prune(entry_point, tmp_path, config, *extra, out="out"):
    return entry_point(main_prune, config, "--models-dir", tmp_path / "models", "--output-dir", tmp_path / out, *extra)


def record(tmp_path, out="out", name="tiny"):
    return depth_results.load(result_path(tmp_path / out / name, 0))


def test_the_tiny_config_runs_end_to_end(write_config, trained, tmp_path, entry_point):
    config = depth_config(write_config, compensate="lstsq", retrain_epochs=1, damage=True, latency=True)
    trained(config)
    status, out, err = prune(entry_point, tmp_path, config, "--export")
    assert status == 0, err
    result = record(tmp_path)
    assert result.blocks == ("blocks.0", "blocks.1", "blocks.2", "blocks.3")
    assert [p.count for p in result.points] == [1, 2] and result.complete
    for point in result.points:
        assert len(point.removed) == point.count and set(point.removed) <= set(result.blocks)
        assert set(point.patch_errors) == set(point.spans) and point.after_retrain is not None
        assert set(point.latency_seconds) == {"1", "64"} and point.retrain.epochs == 1
        assert point.macs < result.baseline_macs
    assert [d.block for d in result.damage] == list(result.blocks)
    assert set(result.criteria_scores) == set(DEPTH_CRITERIA)
    assert all(set(scores) == set(result.blocks) for scores in result.criteria_scores.values())
    report = tmp_path / "out" / "tiny" / "report"
    assert {p.name for p in report.iterdir()} == {"report.md", "points.csv", "damage.csv", "accuracy.png"}
    assert "## Ranking quality on the trained model" in (report / "report.md").read_text()
    exported = tmp_path / "out" / "tiny" / "exported"
    assert {p.name for p in exported.glob("*.pt2")} == {"seed0-k1.pt2", "seed0-k2.pt2"}
    x = torch.rand(3, 1, 28, 28)
    for k in (1, 2):  # the module rebuilt from the state dict and sidecar computes what the program does
        module, model_cfg = load_exported(exported / f"seed0-k{k}.pt")
        assert model_cfg.type == "resmlp" and sum(isinstance(m, Skip) for m in module.modules()) == k
        torch.testing.assert_close(module(x), torch.export.load(exported / f"seed0-k{k}.pt2").module()(x))


def skipping(model: nn.Module, removed) -> nn.Module:
    """``model`` with the removed blocks replaced by the identity, by hand."""
    model = copy.deepcopy(model)
    for name in removed:
        model.blocks[int(name.removeprefix("blocks."))] = nn.Identity()
    return model.eval()


def test_a_point_is_the_dense_model_with_its_blocks_skipped(write_config, trained, tmp_path, entry_point, mnist5k):
    config = depth_config(write_config)
    trained(config)
    assert prune(entry_point, tmp_path, config, "--export")[0] == 0
    cfg = load_config(config)
    dense = load_model(model_path(cfg, 0, tmp_path / "models"), cfg)
    for point in record(tmp_path).points:
        literal = skipping(dense, point.removed)
        metrics = evaluate(literal, mnist5k.test, 128, torch.device("cpu"))
        assert point.after_prune["test_acc"] == metrics.acc
        assert point.after_prune["test_loss"] == pytest.approx(metrics.loss, rel=1e-6)
        program = torch.export.load(tmp_path / "out" / "tiny" / "exported" / f"seed0-k{point.count}.pt2").module()
        x = to_unit_float(mnist5k.test.images[:5])
        torch.testing.assert_close(program(x), literal(x), rtol=1e-5, atol=1e-5)


def test_the_damage_table_is_each_block_skipped_and_as_its_least_squares_patch(write_config, trained, tmp_path,
                                                                             entry_point, mnist5k):
    config = depth_config(write_config, blocks=[1], compensate="lstsq", ridge=0.0, damage=True)
    trained(config)
    assert prune(entry_point, tmp_path, config)[0] == 0
    cfg = load_config(config)
    dense = load_model(model_path(cfg, 0, tmp_path / "models"), cfg).eval()
    calibration = to_unit_float(depth.Calibration(mnist5k, 128, 128, 0, torch.device("cpu")).split.images)
    cpu = torch.device("cpu")
    for i, row in enumerate(record(tmp_path).damage):
        assert row.block == f"blocks.{i}"
        removed = skipping(dense, [row.block])
        assert row.removed["test_acc"] == evaluate(removed, mnist5k.test, 128, cpu).acc
        assert row.removed["val_loss"] == pytest.approx(evaluate(removed, mnist5k.val, 128, cpu).loss, rel=1e-6)
        # the patch at ridge 0: least squares with an intercept from the block's input to its output
        seen = {}
        hook = dense.blocks[i].register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
        with torch.no_grad():
            dense(calibration)
        hook.remove()
        x, y = seen["x"].double().numpy(), seen["y"].double().numpy()
        solution = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)[0]
        patch = nn.Linear(x.shape[1], y.shape[1])
        with torch.no_grad():
            patch.weight.copy_(torch.from_numpy(solution[:-1].T))
            patch.bias.copy_(torch.from_numpy(solution[-1]))
        patched = copy.deepcopy(dense)
        patched.blocks[i] = patch
        assert row.patched["test_loss"] == pytest.approx(evaluate(patched, mnist5k.test, 128, cpu).loss, rel=1e-4)
        assert row.patched["val_acc"] == pytest.approx(evaluate(patched, mnist5k.val, 128, cpu).acc, abs=2e-3)


def test_a_resumed_run_equals_an_uninterrupted_one(write_config, trained, tmp_path, entry_point, monkeypatch):
    def config_of(blocks):  # the same file, so the same experiment
        return depth_config(write_config, blocks=blocks, compensate="lstsq", retrain_epochs=1, damage=True)

    trained(config_of([1, 2]))
    assert prune(entry_point, tmp_path, config_of([1, 2]), out="whole")[0] == 0
    # The other run: count 1 first, then both asked for and stopped inside count 2, then resumed.
    assert prune(entry_point, tmp_path, config_of([1]), out="parts")[0] == 0
    config = config_of([1, 2])
    prune_count = depth.prune_count

    def interrupted(*args, **kwargs):
        if args[6] == 2:
            raise KeyboardInterrupt
        return prune_count(*args, **kwargs)
    monkeypatch.setattr(depth, "prune_count", interrupted)
    status, _, err = prune(entry_point, tmp_path, config, out="parts")
    assert status == 130 and "seed 0 count 2, which will be redone (1 counts of this seed are saved)" in err
    assert [p.count for p in record(tmp_path, "parts").points] == [1]
    monkeypatch.setattr(depth, "prune_count", prune_count)
    status, out, _ = prune(entry_point, tmp_path, config, out="parts")
    assert status == 0 and "seed 0: 1 of 4 blocks" not in out  # count 1 was not redone
    assert untimed(record(tmp_path, "parts")) == untimed(record(tmp_path, "whole"))
    status, out, _ = prune(entry_point, tmp_path, config, out="parts")
    assert status == 0 and "seed 0: already pruned (counts 1, 2), skipping" in out


def test_a_record_of_another_run_is_refused_in_one_line_and_fresh_replaces_it(write_config, trained, tmp_path,
                                                                              entry_point):
    config = depth_config(write_config, blocks=[1])
    trained(config)
    assert prune(entry_point, tmp_path, config)[0] == 0
    config = depth_config(write_config, blocks=[1], criterion="tail")
    status, _, err = prune(entry_point, tmp_path, config)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1
    assert 'is the result of another run (prune.params.criterion: "cosine" -> "tail")' in lines[0]
    assert record(tmp_path).criterion == "cosine"
    assert prune(entry_point, tmp_path, config, "--fresh")[0] == 0
    assert record(tmp_path).criterion == "tail"


def test_more_blocks_than_the_model_has_is_one_line_before_any_work(write_config, trained, tmp_path, entry_point):
    config = depth_config(write_config, blocks=[2, 5])
    trained(config)
    status, _, err = prune(entry_point, tmp_path, config)
    assert status == 2
    assert err.strip() == (f"error: {config}: prune.params.blocks asks for 5 blocks, but the model has 4 "
                           "removable blocks")
    assert not result_path(tmp_path / "out" / "tiny", 0).exists()


def test_calibration_is_drawn_once_per_seed_from_the_training_split(mnist5k):
    calibration = depth.Calibration(mnist5k, samples=100, batch_size=64, seed=3, device=torch.device("cpu"))
    index = torch.randperm(len(mnist5k.train), generator=torch.Generator().manual_seed(3 * 100_003))[:100]
    assert torch.equal(calibration.split.images, mnist5k.train.images[index])
    assert torch.equal(torch.cat(calibration.batches), to_unit_float(mnist5k.train.images[index]))
    assert [len(b) for b in calibration.batches] == [64, 36]


def test_the_calibration_loss_is_the_training_loss_on_the_calibration_samples(mnist5k):
    cfg = parse_config(tiny_raw(model=MODEL, prune={"strategy": "depth", "params": {"blocks": 1}}), Path("t.json"))
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    calibration = depth.Calibration(mnist5k, samples=100, batch_size=64, seed=0, device=torch.device("cpu"))
    with torch.no_grad():
        literal = F.cross_entropy(model(to_unit_float(calibration.split.images)), calibration.split.labels)
    assert calibration.loss(model) == pytest.approx(float(literal), rel=1e-6)


def test_every_criterion_scores_single_blocks_once(monkeypatch):
    calls = []

    def plan_removal(model, names, calibration, p, criterion, count, seed, greedy=None):
        calls.append((criterion, count, p.span, greedy))
        return type("Plan", (), {"steps": ({"blocks.0": 1, "blocks.1": 0.5},)})()
    monkeypatch.setattr(depth, "plan_removal", plan_removal)
    scores = depth.criteria_scores(None, ["blocks.0", "blocks.1"], None, DepthParams(blocks=(2,), span=2), seed=0)
    assert calls == [(c, 1, 1, False) for c in DEPTH_CRITERIA]
    assert scores["cka"] == {"blocks.0": 1.0, "blocks.1": 0.5}


def test_the_shipped_demo_runs_end_to_end(tmp_path, entry_point):
    import main_train
    config = tmp_path / "config" / "depth-demo" / "cka-lstsq.json"  # its own experiment name, outputs in tmp_path
    config.parent.mkdir(parents=True)
    config.write_text((ROOT / "config" / "depth-demo" / "cka-lstsq.json").read_text())
    models, out = tmp_path / "models", tmp_path / "out"
    assert entry_point(main_train, config, "--models-dir", models)[0] == 0
    status, stdout, err = entry_point(main_prune, config, "--models-dir", models, "--output-dir", out, "--export")
    assert status == 0, err
    result = depth_results.load(result_path(out / "depth-demo" / "cka-lstsq", 0))
    assert [p.count for p in result.points] == [2, 4, 6] and len(result.damage) == 8
    assert all(p.after_retrain is not None and p.patch_errors for p in result.points)
    assert len(list((out / "depth-demo" / "cka-lstsq" / "exported").glob("*.pt2"))) == 3


def test_a_resnet_loses_blocks_with_its_batch_norm_recalibrated(write_config, tmp_path, entry_point, mnist5k):
    config = write_config(model={"type": "resnet", "depth": 14, "width": 2}, params=PARAMS,
                          prune={"strategy": "depth", "params": {"criterion": "tail", "blocks": [1], "samples": 64,
                                                                 "latency": False, "damage": True}})
    cfg = load_config(config)
    torch.manual_seed(0)  # an initialised model will do: its BatchNorm statistics are far from the data's
    save_model(model_path(cfg, 0, tmp_path / "models"), build_model(cfg.model), {})
    assert prune(entry_point, tmp_path, config)[0] == 0
    result = record(tmp_path)
    assert result.blocks == ("layer1.0", "layer1.1", "layer2.1", "layer3.1")  # stride 1, equal channels
    point = result.point(1)
    assert point.removed == ("layer3.1",)  # tail: the last first
    cpu = torch.device("cpu")
    # count 1 recalibrates with the draw pass_seed(0, 1), the damage table with the calibration's, pass_seed(0, 0)
    for metrics, draw in ((point.after_prune, 1), (result.damage[-1].removed, 0)):
        literal = load_model(model_path(cfg, 0, tmp_path / "models"), cfg)
        literal.layer3[1] = nn.Identity()
        recalibrate_batch_norm(literal, mnist5k.train, 128, torch.Generator().manual_seed(draw), cpu)
        expected = evaluate(literal, mnist5k.test, 128, cpu)
        assert metrics["test_acc"] == expected.acc
        assert metrics["test_loss"] == pytest.approx(expected.loss, rel=1e-6)
