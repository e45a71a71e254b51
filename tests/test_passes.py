"""Tests for src/pruning/passes.py: a pass's random draws come from one seed per (seed, iteration),
drawn once; compensation fits on exactly the samples the layers were scored on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import src.pruning.passes as passes
from src.config import DataConfig, ExperimentConfig, ModelConfig, PruneConfig, PruneParams, TrainParams
from src.data import Split, Splits
from src.models import build_model
from src.pruning.masks import add_masks
from src.pruning.passes import pass_samples, pass_seed, prune_pass

CPU = torch.device("cpu")
MODEL = ModelConfig(type="mlp", input_size=16, hidden_sizes=(8, 6), output_size=3, input_shape=(1, 4, 4))


def _split(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    return Split(torch.from_numpy(rng.integers(0, 256, (n, 1, 4, 4)).astype(np.uint8)),
                 torch.from_numpy(rng.integers(0, 3, n)))


SPLITS = Splits(_split(90, 0), _split(70, 1), _split(10, 2), 3)


def _config(**params) -> ExperimentConfig:
    prune = PruneConfig("one_shot", PruneParams(**{"rate": 0.25, "samples": 20, **params}), (0, 1))
    return ExperimentConfig(source=Path("c.json"), model=MODEL, data=DataConfig(), params=TrainParams(batch_size=8),
                            seeds=(0,), prune=prune)


def test_the_pass_seed_keeps_the_values_results_were_drawn_with():
    assert [pass_seed(0, 1), pass_seed(1, 1), pass_seed(2, 3)] == [1, 100_004, 200_009]
    seeds = {pass_seed(seed, iteration) for seed in range(20) for iteration in range(1, 50)}
    assert len(seeds) == 20 * 49


def test_the_samples_are_one_generator_s_draws_scoring_first_then_taylor():
    params = PruneParams(type="taylor", rate=0.5, samples=20)
    samples = pass_samples(SPLITS, params, 8, seed=3, iteration=2)
    generator = torch.Generator().manual_seed(pass_seed(3, 2))
    scoring = torch.randperm(70, generator=generator)[:20].sort().values
    taylor = torch.randperm(90, generator=generator)[:4 * 8]
    assert torch.equal(samples.scoring.images, SPLITS.val.images[scoring])
    assert torch.equal(samples.taylor.images, SPLITS.train.images[taylor])
    assert pass_samples(SPLITS, PruneParams(type="cka", rate=0.5), 8, 3, 2).taylor is None


@pytest.mark.parametrize("params", [dict(compensate="lstsq"), dict(type="taylor", compensate="bias"), dict(type="obs")])
def test_a_sequential_pass_scores_and_fits_on_the_samples_drawn_once(monkeypatch, params):
    scored, fitted = [], []
    record = passes.record_samples
    monkeypatch.setattr(passes, "record_samples", lambda model, layers, samples, *rest: (
        scored.append(samples), record(model, layers, samples, *rest))[1])
    targets = passes.consumer_targets
    monkeypatch.setattr(passes, "consumer_targets", lambda model, indices, subset, *rest: (
        fitted.append(subset), targets(model, indices, subset, *rest))[1])
    torch.manual_seed(0)
    model = build_model(MODEL).eval()
    add_masks(model, (0, 1))
    cfg = _config(**params)
    steps = prune_pass(model, cfg, SPLITS, seed=0, iteration=1, device=CPU)
    assert [len(step.removed) for step in steps] == [2, 2]
    assert len(scored) == 2 and len(fitted) == (0 if params == dict(type="obs") else 1)
    assert all(samples is scored[0] for samples in scored)  # one draw for every layer
    expected = pass_samples(SPLITS, cfg.prune.params, 8, 0, 1)
    for samples in [s.scoring for s in scored] + fitted:
        assert torch.equal(samples.images, expected.scoring.images)
    if params.get("type") == "taylor":
        assert all(torch.equal(s.taylor.images, expected.taylor.images) for s in scored)
