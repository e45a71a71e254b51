"""Sparsity sweeps (``prune.params.rates``): each point is the one-shot run at its rate, resumably."""

import pytest
import torch

import main_prune
import src.pruning.strategy
from src import results
from src.pruning.resume import checkpoint_path
from tests.conftest import untimed

RATES = [0.25, 0.5, 0.75]


def one_shot(rate=None, rates=None, **params):
    budget = {"rate": rate} if rates is None else {"rates": rates}
    return {"strategy": "one_shot", "params": {"type": "cka", **budget, **params}, "modules": [0, 1]}


def stored(tmp_path, out):
    return results.load(tmp_path / out / "tiny" / "0.json")


def points(result):
    """What a point's run decides: removals per layer and accuracies, without times or the point's number."""
    return [{"layers": [(s.index, s.alive_before, s.alive_after, s.removed) for s in it.layers],
             "after_prune": it.after_prune, "after_retrain": it.after_retrain,
             "parameters": it.parameters} for it in result.iterations]


@pytest.mark.parametrize("criterion", ["cka", "random"])
def test_a_sweep_is_the_one_shot_runs_at_its_rates(write_config, trained, run, tmp_path, criterion, capsys):
    config = write_config("tiny", prune=one_shot(rates=RATES[:2], type=criterion, retrain_epochs=1))
    trained(config)
    assert run(main_prune, config, out="sweep") == 0
    assert "a sweep over rates [0.25, 0.5], each from the trained model" in capsys.readouterr().out
    sweep = stored(tmp_path, "sweep")
    assert [it.iteration for it in sweep.iterations] == [1, 2] and [it.rate for it in sweep.iterations] == RATES[:2]
    assert sweep.sweep and sweep.complete and sweep.planned_iterations == 2
    separate = []
    for rate in RATES[:2]:
        write_config("tiny", prune=one_shot(rate, type=criterion, retrain_epochs=1))
        assert run(main_prune, config, out=f"rate{rate}") == 0
        single = stored(tmp_path, f"rate{rate}")
        assert not single.sweep and single.iterations[0].rate is None
        separate += points(single)
    assert points(sweep) == separate
    # every point is pruned from the trained model: absolute counts, nothing carried over from the last point
    assert sweep.alive(1) == {0: 36, 1: 24} and sweep.alive(2) == sweep.alive() == {0: 24, 1: 16}
    assert sweep.removed_up_to(2, 0) == set(sweep.iterations[1].layers[0].removed)
    assert sweep.alive(0) == {0: 48, 1: 32}


def test_a_sweep_resumed_after_an_interruption_is_the_uninterrupted_sweep(write_config, trained, run, tmp_path,
                                                                          monkeypatch):
    config = write_config("tiny", prune=one_shot(rates=RATES, retrain_epochs=1))
    trained(config)
    assert run(main_prune, config, out="whole") == 0
    retrain, calls = src.pruning.strategy.retrain, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return retrain(*args, **kwargs)

    monkeypatch.setattr(src.pruning.strategy, "retrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(main_prune, config, out="cut")
    assert len(stored(tmp_path, "cut").iterations) == 1
    monkeypatch.setattr(src.pruning.strategy, "retrain", retrain)
    assert run(main_prune, config, out="cut") == 0
    assert untimed(stored(tmp_path, "cut")) == untimed(stored(tmp_path, "whole"))


def test_a_resnet_sweep_prunes_each_rate_from_the_trained_model(write_config, trained, run, tmp_path, monkeypatch):
    monkeypatch.setattr(src.pruning.strategy, "retrain",
                        lambda model, *args, **kwargs: src.train.FitResult(0, 0, False, 0.0))
    resnet = {"model": {"type": "resnet", "depth": 8, "width": 4},
              "params": {"lr": 0.01, "batch_size": 128, "epochs": 1, "patience": 1}}
    prune = {"strategy": "one_shot", "params": {"type": "tp_l1", "rates": RATES[:2]}}
    config = write_config("tiny", **resnet, prune=prune)
    trained(config)
    assert run(main_prune, config, "--export", out="sweep") == 0
    sweep = stored(tmp_path, "sweep")
    separate = []
    for rate in RATES[:2]:
        write_config("tiny", **resnet, prune={**prune, "params": {"type": "tp_l1", "rate": rate}})
        assert run(main_prune, config, out=f"rate{rate}") == 0
        separate += points(stored(tmp_path, f"rate{rate}"))
    assert points(sweep) == separate
    # the checkpoint rebuilds the last point alone: its history is that point's pass only
    saved = torch.load(checkpoint_path(tmp_path / "sweep/tiny", 0), weights_only=True)
    single = torch.load(checkpoint_path(tmp_path / "rate0.5/tiny", 0), weights_only=True)
    assert saved["history"] == single["history"]
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in single["state_dict"].items())
