"""Tests for src/pruning/description.py: the printed run description states every derived value."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.config import parse_config
from src.pruning.description import run_description
from tests.conftest import tiny_raw

CNN = {"type": "cnn", "input_shape": [1, 28, 28], "conv_channels": [4], "kernel_size": 5, "fc_sizes": [8],
       "output_size": 10, "batch_norm": True}


def describe(model: dict | None = None, **params) -> str:
    sections = {} if model is None else {"model": model}
    raw = tiny_raw(prune={"strategy": "iterative", "params": {"type": "cka", "iterations": 2, "rate": 0.25, **params}},
                   **sections)
    return "\n".join(run_description(parse_config(raw, Path("config/tiny.json")), "cpu"))


def test_the_defaults_are_spelt_out():
    text = describe()
    assert text.splitlines()[0] == "tiny: iterative cka pruning of layers [0, 1], 2 x rate 0.25, on cpu"
    assert "scoring: engine fast, kernel linear, target layer (hook module), 128 random validation samples" in text
    assert "each pass: every layer scored on the network at the start of the pass" in text
    assert "after each pass: retrain (finetune) up to 3 epochs, early-stopped (patience 2) at lr 0.002" in text
    assert "BatchNorm" not in text and "ridge" not in text


def test_kernel_rbf_says_the_reference_engine_runs():
    assert "engine reference (kernel rbf: the fast engine computes linear CKA only)" in describe(kernel="rbf")


@pytest.mark.parametrize("params, why", [({"compensate": "lstsq"}, "compensate lstsq"), ({"type": "obs"}, "type obs")])
def test_a_sequential_pass_says_so_and_why(params, why):
    text = describe(**params)
    assert f"each pass: layer by layer in forward order, each scored on the network the layers before it left ({why})" \
        in text
    assert "ridge 0.001 x the mean variance of the kept inputs" in text
    assert ("its consumer then compensated" in text) == ("compensate" in params)


@pytest.mark.parametrize("samples, said", [("all", "every validation sample"), (64, "64 random validation samples")])
def test_the_scoring_samples(samples, said):
    assert said in describe(samples=samples)


@pytest.mark.parametrize("params, said", [({}, "BatchNorm statistics re-estimated (the default with BatchNorm)"),
                                          ({"recalibrate_bn": False}, "BatchNorm statistics kept,")])
def test_batch_norm_recalibration_and_its_default(params, said):
    assert said in describe(CNN, **params)


def test_a_fixed_retraining_budget():
    text = describe(retrain_epochs=2, retrain_lr=0.01)
    assert "after each pass: retrain (finetune) 2 epochs at lr 0.01" in text
    assert "no retraining" in describe(retrain=False)


def test_retraining_without_early_stopping_says_no_patience():
    raw = tiny_raw()
    raw["params"]["patience"] = None
    text = "\n".join(run_description(parse_config(raw, Path("config/tiny.json")), "cpu"))
    assert "after each pass: retrain (finetune) 3 epochs at lr 0.002" in text
