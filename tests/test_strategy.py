"""Prune runs end to end on the bundled data: strategies, retraining, rewinding, the physical path."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

import main_prune
import main_train
import src.provenance
import src.pruning.strategy
import src.train
from cka_prune.cka import cka, gram_rbf
from src import results
from src.artifacts import load_model, model_path, model_stem, rewind_path
from src.config import load_config
from src.errors import UserError
from src.data import load_splits, to_unit_float
from src.export import load_exported
from src.pruning.passes import pass_seed
from src.pruning.resume import checkpoint_path, saved_progress
from src.pruning.scoring import scoring_indices
from tests.conftest import ROOT, untimed
from tests.strategy_helpers import edit, prune_section, stored

def test_moving_the_data_does_not_retrain(write_config, run, tmp_path, monkeypatch):
    trainings = []
    fit = src.train.fit
    monkeypatch.setattr(src.train, "fit", lambda *a, **k: trainings.append(1) or fit(*a, **k))
    config = write_config("tiny")
    assert run(main_train, config) == 0 and len(trainings) == 1
    (tmp_path / "scratch").mkdir()
    edit(config, data={"dataset": "mnist-5k", "root": str(tmp_path / "scratch"), "val_split": 0.3})
    assert run(main_train, config) == 0 and len(trainings) == 1


def test_one_shot_without_retraining(write_config, trained, run, tmp_path):
    config = write_config("tiny", prune={"strategy": "one_shot", "params": {"type": "l2", "rate": 0.5, "retrain": False}})
    trained(config)
    assert run(main_prune, config) == 0
    result = stored(tmp_path)
    (only,) = result.iterations
    assert only.after_retrain is None and only.retrain is None
    assert [step.alive_after for step in only.layers] == [24, 16] and result.strategy == "one_shot"
    state = torch.load(checkpoint_path(tmp_path / "output/tiny", 0), weights_only=True)["state_dict"]
    trained = torch.load(result.model_file, weights_only=True)
    for step in only.layers:  # without retraining, surviving weights are the trained ones
        kept = [i for i in range(48 if step.index == 0 else 32) if i not in step.removed]
        name = f"hidden.{step.index}.layer"
        assert torch.equal(state[f"{name}.weight_orig"][kept], trained[f"{name}.weight"][kept])
        l2 = trained[f"{name}.weight"].norm(dim=1)
        assert sorted(step.removed) == sorted(torch.argsort(l2)[:len(step.removed)].tolist())


def test_rbf_kernel_at_model_level_records_the_literal_cka(write_config, trained, run, tmp_path):
    config = write_config("tiny", prune=prune_section(iterations=1, rate=0.25, kernel="rbf", samples=64))
    trained(config)
    assert run(main_prune, config) == 0
    result = stored(tmp_path)
    step = result.iterations[0].layers[1]
    assert step.engine == "reference" and len(step.removed) == 8
    # Recompute the recorded CKA path independently: the pass's scoring samples, through the trained
    # model (every layer's activations are recorded once, before the pass removes anything), with
    # the removed rows of layer 1 zeroed by hand.
    cfg = load_config(config)
    model = load_model(model_path(cfg, 0, tmp_path / "models"), cfg).eval()
    val = load_splits(cfg.data).val
    index = scoring_indices(val, 64, cfg.params.batch_size, torch.Generator().manual_seed(pass_seed(0, 1)))
    with torch.no_grad():
        inputs = model.hidden[0](to_unit_float(val.images[index]).flatten(1))
        layer = model.hidden[1].layer
        original = layer(inputs).double().numpy()
        for t in range(len(step.removed)):
            weight = layer.weight.clone()
            weight[list(step.removed[:t + 1])] = 0
            pruned = torch.nn.functional.linear(inputs, weight, layer.bias).double().numpy()
            np.testing.assert_allclose(step.cka[t], cka(gram_rbf(original), gram_rbf(pruned)), rtol=1e-6)


def test_rewinding_run_end_to_end(write_config, trained, run, tmp_path, monkeypatch):
    config = write_config("tiny", prune=prune_section("cka", retrain="rewind", rewind_epoch=1))
    trained(config)
    assert run(main_prune, config) == 0
    result = stored(tmp_path)
    assert result.run.description["prune"]["params"]["retrain"] == "rewind"
    assert result.run.description["prune"]["params"]["rewind_epoch"] == 1
    assert len(result.iterations) == 2 and all(it.after_retrain is not None for it in result.iterations)
    finetune = results.config_description(load_config(write_config("other", prune=prune_section("cka"))))
    assert results.RunIdentity.of(finetune).digest != result.run.config_digest

    # Without the retraining itself, the checkpoint holds exactly the epoch-1 weights, masked.
    monkeypatch.setattr(src.pruning.strategy, "retrain",
                        lambda model, *args, **kwargs: src.train.FitResult(0, 0, False, 0.0))
    assert run(main_prune, config, out="untrained") == 0
    early = torch.load(rewind_path(model_path(load_config(config), 0, tmp_path / "models")), weights_only=True)[1]
    state = torch.load(checkpoint_path(tmp_path / "untrained/tiny", 0), weights_only=True)["state_dict"]
    removed = stored(tmp_path, out="untrained").removed_up_to
    for index, width in ((0, 48), (1, 32)):
        name = f"hidden.{index}.layer"
        mask = state[f"{name}.weight_mask"]
        assert torch.equal(state[f"{name}.weight_orig"], early[f"{name}.weight"])
        assert torch.equal(state[f"{name}.bias"], early[f"{name}.bias"])
        gone = sorted(removed(2, index))
        assert len(gone) > 0 and not mask[gone].any() and mask[[i for i in range(width) if i not in gone]].all()
    assert torch.equal(state["output.weight"], early["output.weight"])


def test_rewinding_a_model_trained_without_early_weights_is_one_line(write_config, trained, run, tmp_path):
    config = write_config("tiny", prune=prune_section("cka", iterations=1, retrain="rewind", rewind_epoch=0))
    trained(config)
    (kept,) = (tmp_path / "models").glob("*.rewind.pth")
    kept.unlink()
    with pytest.raises(UserError) as info:
        run(main_prune, config)
    assert str(info.value).startswith(f"{kept}: no early weights to rewind to") and "main_train.py" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_resnet_is_pruned_physically_resumes_and_exports_smaller(write_config, trained, run, tmp_path):
    tiny_resnet = {"model": {"type": "resnet", "depth": 8, "width": 4},
                   "params": {"lr": 0.01, "batch_size": 128, "epochs": 1, "patience": 1}}

    def prune(iterations, out, *extra):
        config = write_config("tiny", **tiny_resnet, prune={"params": {"type": "cka", "iterations": iterations,
                                                                       "rate": 0.25, "samples": 64}})
        trained(config)
        assert run(main_prune, config, *extra, out=out) == 0
        return stored(tmp_path, out)

    prune(1, "cut")
    resumed = prune(2, "cut", "--export")  # rebuilds the pruned architecture from the checkpoint
    whole = prune(2, "whole")
    assert untimed(resumed) == untimed(whole)
    first = {step.index: step for step in whole.iterations[0].layers}
    assert first and all(step.engine == "fast" and len(step.cka) == len(step.removed) for step in first.values())
    # Indices stay the trained model's: a channel is removed at most once, and counts add up.
    for layer in whole.layers:
        removed = [c for it in whole.iterations for step in it.layers if step.index == layer.index for c in step.removed]
        assert len(set(removed)) == len(removed) and whole.alive()[layer.index] == layer.width - len(removed)
    exported, model_cfg = load_exported(tmp_path / "cut/tiny/exported/seed0.pt")
    cfg = load_config(tmp_path / "tiny.json")
    trained = load_model(model_path(cfg, 0, tmp_path / "models"), cfg)
    assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in trained.parameters())
    state = torch.load(checkpoint_path(tmp_path / "cut/tiny", 0), weights_only=True)["state_dict"]
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in state.items())


def test_rewinding_a_resnet_keeps_the_early_weights_of_the_surviving_channels(write_config, trained, run, tmp_path,
                                                                              monkeypatch):
    config = write_config("tiny", model={"type": "resnet", "depth": 8, "width": 4},
                          params={"lr": 0.01, "batch_size": 128, "epochs": 1, "patience": 1},
                          prune={"params": {"type": "tp_l1", "iterations": 2, "rate": 0.25, "retrain": "rewind",
                                            "rewind_epoch": 0}})
    monkeypatch.setattr(src.pruning.strategy, "retrain",
                        lambda model, *args, **kwargs: src.train.FitResult(0, 0, False, 0.0))
    trained(config)
    assert run(main_prune, config) == 0
    early = torch.load(rewind_path(model_path(load_config(config), 0, tmp_path / "models")), weights_only=True)[0]
    state = torch.load(checkpoint_path(tmp_path / "output/tiny", 0), weights_only=True)["state_dict"]
    result = stored(tmp_path)
    keep = {layer.name: [c for c in range(layer.width) if c not in result.removed_up_to(2, layer.index)]
            for layer in result.layers}
    assert all(len(kept) < layer.width for kept, layer in zip(keep.values(), result.layers))
    stem, block = keep["conv1"], keep["layer1.0.conv1"]  # the stage-1 residual stream, a block's inner channels
    assert torch.equal(state["conv1.weight"], early["conv1.weight"][stem])
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(state[f"bn1.{name}"], early[f"bn1.{name}"][stem])
        assert torch.equal(state[f"layer1.0.bn1.{name}"], early[f"layer1.0.bn1.{name}"][block])
    assert torch.equal(state["layer1.0.conv1.weight"], early["layer1.0.conv1.weight"][block][:, stem])
    assert torch.equal(state["layer1.0.conv2.weight"], early["layer1.0.conv2.weight"][stem][:, block])
    assert torch.equal(state["fc.weight"], early["fc.weight"][:, keep["layer3.0.shortcut.0"]])
    assert torch.equal(state["fc.bias"], early["fc.bias"])


def test_a_diverged_retraining_stops_the_seed_cleanly(write_config, trained, run, tmp_path, monkeypatch, capsys):
    config = write_config("tiny", prune=prune_section(iterations=4))
    trained(config)

    def diverging(model, cfg, splits, *, seed, device, on_epoch, label):  # as fit leaves a run whose loss went NaN
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(float("nan"))
        return src.train.FitResult(epochs=1, best_epoch=0, diverged=True, seconds=0.0)

    monkeypatch.setattr(src.pruning.strategy, "retrain", diverging)
    assert run(main_prune, config) == 0
    assert "retraining diverged in iteration 1; this seed's run stops here" in capsys.readouterr().out
    result = stored(tmp_path)
    assert len(result.iterations) == 1 and result.diverged_at == 1 and result.complete
    assert saved_progress(tmp_path / "output" / "tiny", 0).remaining(4) == 0
    assert run(main_prune, config) == 0  # a rerun does not prune NaN weights
    assert "stopped at iteration 1, where retraining diverged" in capsys.readouterr().out
    assert untimed(stored(tmp_path)) == untimed(result)


def test_every_iteration_records_its_provenance_and_a_resume_under_another_says_so(write_config, trained, run, tmp_path,
                                                                                  monkeypatch, capsys):
    config = write_config("tiny", prune=prune_section(iterations=2))
    trained(config)
    assert run(main_prune, config) == 0
    made = stored(tmp_path).iterations[0].provenance
    assert made == src.provenance.current(torch.device("cpu"))
    edit(config, prune=prune_section(iterations=3))
    other = dataclasses.replace(made, threads=made.threads + 7)
    monkeypatch.setattr(src.provenance, "current", lambda device: other)
    capsys.readouterr()
    assert run(main_prune, config) == 0
    out = capsys.readouterr().out
    assert (f"seed 0: continuing under other conditions than iteration 2 was made "
            f"(threads: {made.threads} -> {made.threads + 7})") in out
    assert [it.provenance for it in stored(tmp_path).iterations] == [made, made, other]


@pytest.mark.parametrize("kernel, engine", [("linear", "fast"), ("rbf", "reference")])
def test_a_physical_pass_records_the_engine_that_ran_and_the_groups_it_left_alone(write_config, mnist5k, kernel,
                                                                                  engine):
    from pathlib import Path

    from src.models import build_model
    from src.pruning.passes import physical_prune_pass
    from src.pruning.strategy import _new_result

    config = write_config("tiny", model={"type": "resnet", "depth": 8, "width": 4},
                          prune={"params": {"type": "cka", "kernel": kernel, "iterations": 1, "rate": 0.25,
                                            "samples": 8}})
    cfg = load_config(config)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        dict(model.named_modules())["layer1.0.conv1"].weight.zero_()  # its group's outputs do not vary
    result = _new_result(cfg, 0, model, Path("m.pt"), results.RunIdentity.of({}), {})
    steps, _ = physical_prune_pass(model, cfg, mnist5k, 0, 1, result)
    name = {layer.index: layer.name for layer in result.layers}
    by_name = {name[step.index]: step for step in steps}
    assert len(by_name) == len(result.layers) and all(step.engine == engine for step in steps)
    alone = by_name.pop("layer1.0.conv1")
    assert alone.removed == () and alone.alive_after == alone.alive_before == 4 and "no variation" in alone.skipped
    assert all(step.skipped is None and step.removed for step in by_name.values())


def old_retrain(model, cfg, splits, *, seed, device, on_epoch, label):
    """Retraining as it was before the budget keys: the params recipe, early-stopped (shrink aside)."""
    return src.train.fit(model, splits, cfg.params, seed=seed, device=device, on_epoch=on_epoch, label=label)


def test_without_the_budget_keys_a_run_is_the_early_stopped_run_from_before_them(write_config, trained, run, tmp_path,
                                                                                 monkeypatch):
    config = write_config("tiny")
    trained(config)
    assert run(main_prune, config, out="now") == 0
    monkeypatch.setattr(src.pruning.strategy, "retrain", old_retrain)
    assert run(main_prune, config, out="before") == 0
    now, before = stored(tmp_path, "now"), stored(tmp_path, "before")
    assert untimed(now) == untimed(before)
    assert now.run == results.RunIdentity.of({**before.run.description})
    assert [it.retrain.epochs for it in now.iterations] == [it.epochs_retrained for it in before.iterations]


@pytest.fixture
def spy_fit(monkeypatch):
    """Record, per call of fit from retraining: its recipe and the dropout rates of the network it trains."""
    calls = []

    def spy(model, splits, params, **kwargs):
        calls.append({"params": params, "dropout": [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]})
        return fit(model, splits, params, **kwargs)

    fit = src.train.fit
    monkeypatch.setattr(src.pruning.strategy, "fit", spy)
    return calls


def masked_tiny(cfg):
    from src.models import build_model, prunable_layers
    from src.pruning.masks import add_masks, remove_neurons
    torch.manual_seed(0)
    model = build_model(cfg.model)
    add_masks(model, cfg.prune.modules)
    for layer in prunable_layers(model):
        remove_neurons(layer.block.layer, range(layer.width // 2))
    return model


def rising_validation_loss(monkeypatch):
    """Every evaluation reports a higher loss than the one before: early stopping would stop at once."""
    losses = iter(range(1, 10_000))
    monkeypatch.setattr(src.train, "evaluate", lambda *args: src.train.Metrics(float(next(losses)), 0.5))


@pytest.mark.parametrize("shrink", [False, True], ids=["masked", "shrink"])
def test_retrain_epochs_lr_and_dropout_are_what_retraining_runs_with(write_config, mnist5k, spy_fit, monkeypatch,
                                                                     shrink):
    prune = {"params": {"type": "cka", "iterations": 2, "rate": 0.25, "shrink": shrink, "retrain_epochs": 4,
                        "retrain_lr": 0.0005, "retrain_dropout": 0.0}, "modules": [0, 1]}
    cfg = load_config(write_config("tiny", prune=prune))  # params: epochs 3, patience 2; dropout 0.2
    model = masked_tiny(cfg)
    rising_validation_loss(monkeypatch)
    fitted = src.pruning.strategy.retrain(model, cfg, mnist5k, seed=1, device=torch.device("cpu"), on_epoch=None,
                                          label="test")
    assert (fitted.epochs, fitted.best_epoch) == (4, 4)  # more than params.epochs, no early stop
    assert [row["lr"] for row in fitted.history] == [0.0005] * 4  # the optimizer's rate in each epoch
    (call,) = spy_fit
    assert call["dropout"] == [0.0, 0.0] and call["params"].patience is None
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]


def test_without_retrain_epochs_retraining_stops_early_at_the_trainings_rate(write_config, mnist5k, spy_fit,
                                                                             monkeypatch):
    cfg = load_config(write_config("tiny"))
    model = masked_tiny(cfg)
    rising_validation_loss(monkeypatch)
    fitted = src.pruning.strategy.retrain(model, cfg, mnist5k, seed=1, device=torch.device("cpu"), on_epoch=None,
                                          label="test")
    assert (fitted.epochs, fitted.best_epoch) == (3, 1) and [row["lr"] for row in fitted.history] == [0.002] * 3
    assert spy_fit[0]["dropout"] == [0.2, 0.2] and spy_fit[0]["params"] == cfg.params


@pytest.mark.parametrize("epochs", [0, 1])
def test_a_budget_of_n_epochs_end_to_end_records_the_epochs_and_parameters(write_config, trained, run, tmp_path,
                                                                            epochs):
    config = write_config("tiny", prune=prune_section("l1", iterations=2, rate=0.25, retrain_epochs=epochs))
    trained(config)
    assert run(main_prune, config) == 0
    result = stored(tmp_path)
    assert result.baseline_parameters == 784 * 48 + 48 + 48 * 32 + 32 + 32 * 10 + 10
    assert [it.epochs_retrained for it in result.iterations] == [epochs, epochs]
    for it in result.iterations:
        a, b = (step.alive_after for step in it.layers)
        # Torch-Pruning's count: multiply-adds, one add per bias, one operation per ReLU output.
        assert it.parameters == 784 * a + a + a * b + b + b * 10 + 10
        assert it.macs == 784 * a + a * b + b * 10 + (a + b + 10) + (a + b)
        if epochs == 0:
            assert it.after_retrain is None and it.retrain is None
        else:
            assert it.retrain.epochs == 1 and it.after_retrain is not None
    assert [step.alive_after for step in result.iterations[-1].layers] == [27, 18]
    assert result.run.description["prune"]["params"]["retrain_epochs"] == epochs


def recalibrated(model, cfg, splits, seed=0, iteration=1):
    """``model`` with its BatchNorm statistics re-estimated as iteration ``iteration`` of seed ``seed`` does."""
    from src.pruning.budget import recalibrate_batch_norm
    recalibrate_batch_norm(model, splits.train, cfg.params.batch_size,
                           torch.Generator().manual_seed(pass_seed(seed, iteration)), torch.device("cpu"))
    return model


def statistics(state):
    return {k: v for k, v in state.items() if "running" in k}


BN_CNN = {"type": "cnn", "conv_channels": [4, 6], "kernel_size": 3, "fc_sizes": [12], "batch_norm": True}
TINY_RESNET = {"model": {"type": "resnet", "depth": 8, "width": 4},
               "params": {"lr": 0.01, "batch_size": 128, "epochs": 1, "patience": 1}}


@pytest.mark.parametrize("sections, params", [
    ({"model": BN_CNN}, {"type": "l1", "rate": 0.5}),
    (TINY_RESNET, {"type": "tp_l1", "rate": 0.5}),
], ids=["masked-cnn", "resnet"])
def test_batch_norm_is_recalibrated_after_the_pass_before_it_is_evaluated(write_config, trained, run, tmp_path, mnist5k,
                                                                          sections, params):
    from src.models import build_model
    from src.pruning.masks import load_masked_state
    from src.pruning.physical import rebuild
    from src.train import evaluate_all

    def prune(out, **extra):
        config = write_config("tiny", **sections, prune={"strategy": "one_shot",
                                                         "params": {**params, "retrain": False, **extra}})
        trained(config)
        assert run(main_prune, config, out=out) == 0
        return load_config(config), torch.load(checkpoint_path(tmp_path / out / "tiny", 0), weights_only=True)

    cfg, stale = prune("stale", recalibrate_bn=False)
    assert cfg.prune.params.recalibrate_bn is False
    cfg, fresh = prune("fresh")  # the default for a model with BatchNorm
    assert cfg.prune.params.recalibrate_bn is True
    trained = torch.load(stored(tmp_path, "stale").model_file, weights_only=True)
    model = build_model(cfg.model)
    if cfg.model.uses_torch_pruning:
        rebuild(model, torch.zeros(1, *cfg.model.input_shape), stale["history"])
        model.load_state_dict(stale["state_dict"])
        assert all(statistics(stale["state_dict"])[k].numel() <= v.numel() for k, v in statistics(trained).items())
        assert sum(p.numel() for p in model.parameters()) == stored(tmp_path, "fresh").iterations[0].parameters
    else:
        load_masked_state(model, stale["state_dict"], cfg.prune.modules)
        assert all(torch.equal(statistics(stale["state_dict"])[k], v) for k, v in statistics(trained).items())
    recalibrated(model, cfg, mnist5k)
    for key, value in statistics(model.state_dict()).items():
        assert torch.equal(fresh["state_dict"][key], value), key
    assert any(not torch.equal(fresh["state_dict"][k], v) for k, v in statistics(stale["state_dict"]).items())
    (it,) = stored(tmp_path, "fresh").iterations
    assert it.after_prune == evaluate_all(model, mnist5k, cfg.params.batch_size, torch.device("cpu"), ("val", "test"))
    assert stored(tmp_path, "fresh").run.description["prune"]["params"]["recalibrate_bn"] is True
    assert "recalibrate_bn" not in stored(tmp_path, "stale").run.description["prune"]["params"]


@pytest.mark.parametrize("criterion", ["cka", "taylor"])
def test_defaults_reproduce_the_records_made_before_compensation_existed(write_config, run, tmp_path,
                                                                          criterion):
    """tests/data/golden-<criterion>.json: the removed neurons and accuracies of this tiny early-stopped run,
    recorded at the commit it names, before compensate, obs, the refit target and sweeps were added."""
    golden = json.loads((ROOT / "tests" / "data" / f"golden-{criterion}.json").read_text())
    config = write_config("tiny", prune=prune_section(criterion, iterations=2, rate=0.25))
    # What the golden model was trained from, checked before any training: a changed tiny config
    # or data file fails here at once, not as a mismatch after the run.
    assert model_stem(load_config(config), 0) == golden["model_stem"], "the tiny config trains another model"
    data = hashlib.sha256((ROOT / "data" / "mnist-5k.npz").read_bytes()).hexdigest()
    assert data == golden["data_sha256"], "data/mnist-5k.npz is not the golden record's data"
    # The golden record was made on two threads, and one trains another tiny model here.
    assert main_train.main([str(config), "--models-dir", str(tmp_path / "models"), "--threads", "2"]) == 0
    assert run(main_prune, config, "--threads", "2") == 0
    result = stored(tmp_path)
    if result.model_sha256 != golden["model_sha256"]:
        pytest.skip("this machine trains another tiny model than the golden record's (another CPU or BLAS); "
                    "the comparison needs the same trained model")
    for it, expected in zip(result.iterations, golden["iterations"], strict=True):
        assert [list(step.removed) for step in it.layers] == expected["removed"]
        assert it.after_prune == pytest.approx(expected["after_prune"], abs=1e-6)
        assert it.after_retrain == pytest.approx(expected["after_retrain"], abs=1e-6)
        assert it.retrain.epochs == expected["epochs"]
