"""Model-level pruning: engines agree on real activations, masks hold, runs resume exactly."""

import copy
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import main_prune
from src.artifacts import model_path
from src.config import PruneParams, load_config
from src.data import to_unit_float
from src.export import load_exported
from src.models import build_model, prunable_layers
from cka_prune.cka import feature_space_linear_cka
from src.data import Split
from src.pruning.criteria import NO_VARIATION, removal_count, select, select_global
from src.pruning.masks import add_masks, alive_neurons, load_unmasked_state, neurons_zeroed, remove_neurons
from src.pruning.scoring import record_layers, scoring_indices
from src.pruning.passes import prune_pass
from src.train import fit
from tests.conftest import ROOT, untimed

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained_cnn(mnist5k, tmp_path_factory):
    """A LeNet-style CNN (BatchNorm, no padding) trained briefly on the bundled data."""
    path = tmp_path_factory.mktemp("cnn") / "cnn.json"
    raw = {
        "model": {"type": "cnn", "conv_channels": [6, 8], "kernel_size": 5, "fc_sizes": [24], "batch_norm": True},
        "data": {"dataset": "mnist-5k"},
        "params": {"lr": 0.003, "batch_size": 128, "epochs": 2, "patience": 1},
        "prune": {"strategy": "iterative", "params": {"type": "cka", "iterations": 1, "rate": 0.3}, "modules": [0, 1, 2]},
        "seeds": [0],
    }
    path.write_text(json.dumps(raw))
    cfg = load_config(path)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    fit(model, mnist5k, cfg.params, seed=0, device=CPU)
    return cfg, model


@pytest.fixture(scope="module")
def trained_mlp(mnist5k, tmp_path_factory):
    from tests.conftest import tiny_raw
    path = tmp_path_factory.mktemp("mlp") / "mlp.json"
    path.write_text(json.dumps(tiny_raw()))
    cfg = load_config(path)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    fit(model, mnist5k, cfg.params, seed=0, device=CPU)
    return cfg, model


def _select_both(model, split, params, indices, already_pruned=()):
    """Run one pass's selection with each engine on the same recorded activations."""
    model = copy.deepcopy(model)
    layers = [prunable_layers(model)[i] for i in indices]
    add_masks(model, indices)
    for index, neurons in already_pruned:
        remove_neurons(prunable_layers(model)[index].block.layer, neurons)
    out = {}
    for engine in ("fast", "reference"):
        p = replace(params, engine=engine)
        recs = record_layers(model, layers, split, p, 96, torch.Generator().manual_seed(1), CPU)
        out[engine] = {i: select(recs[i], p, alive_neurons(layers[n].block.layer).numpy(), (0,))
                       for n, i in enumerate(indices)}
    return out


def _assert_same(choices):
    for index in choices["fast"]:
        fast, ref = choices["fast"][index], choices["reference"][index]
        assert fast.removed == ref.removed, f"layer {index}"
        assert ref.engine == "reference" and fast.engine == "fast"
        np.testing.assert_allclose(fast.cka, ref.cka, rtol=1e-6, atol=0)
        assert len(fast.removed) > 0


@pytest.mark.parametrize("hook", ["module", "nonlinearity"])
@pytest.mark.parametrize("budget", [{"rate": 0.3}, {"stop_cka": 0.97}])
def test_engines_agree_on_a_trained_cnn(trained_cnn, mnist5k, hook, budget):
    _, model = trained_cnn
    params = PruneParams(type="cka", hook=hook, **budget)
    _assert_same(_select_both(model, mnist5k.val, params, [0, 1, 2]))


@pytest.mark.parametrize("greedy", ["conditional", "independent"])
@pytest.mark.parametrize("debiased", [False, True])
def test_engines_agree_on_a_trained_mlp_after_earlier_pruning(trained_mlp, mnist5k, debiased, greedy):
    cfg, model = trained_mlp
    params = PruneParams(type="cka", rate=0.2, debiased=debiased, greedy=greedy)
    choices = _select_both(model, mnist5k.val, params, [0, 1], already_pruned=[(0, [3, 7, 11]), (1, [0])])
    _assert_same(choices)
    assert not {3, 7, 11} & set(choices["fast"][0].removed)
    assert len(choices["fast"][0].removed) == removal_count(0.2, 45)


@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_baselines_record_the_cka_damage_of_their_removals(trained_mlp, mnist5k, criterion):
    """Order from the criterion's definition; CKA after each removal from the layer recomputed by hand."""
    _, model = trained_mlp
    choices = _select_both(model, mnist5k.val, PruneParams(type=criterion, rate=0.25), [0, 1])
    index = scoring_indices(mnist5k.val, None, 96, torch.Generator().manual_seed(1))
    x = to_unit_float(mnist5k.val.images[index]).flatten(1)
    model = copy.deepcopy(model).eval()  # dropout off, as when a pass records
    with torch.no_grad():
        inputs = {0: x, 1: model.hidden[0](x)}
        for i in (0, 1):
            layer = model.hidden[i].layer
            if criterion == "random":
                expected = np.argsort(np.random.default_rng([0]).random(layer.out_features), kind="stable")
            else:
                expected = np.argsort(layer.weight.norm(p=int(criterion[1]), dim=1).numpy(), kind="stable")
            for engine in ("fast", "reference"):
                choice = choices[engine][i]
                assert choice.removed == [int(n) for n in expected[:removal_count(0.25, layer.out_features)]]
                original = layer(inputs[i]).double()
                for t, value in enumerate(choice.cka):
                    weight = layer.weight.clone()
                    weight[choice.removed[:t + 1]] = 0
                    pruned = torch.nn.functional.linear(inputs[i], weight, layer.bias).double()
                    assert value == pytest.approx(float(feature_space_linear_cka(original, pruned)), rel=1e-6)


def test_removal_count_rounds_and_never_empties_a_layer():
    assert removal_count(0.2, 512) == 102 and removal_count(0.2, 18) == 4 and removal_count(0.5, 5) == 3
    assert removal_count(0.5, 1) == 0 and removal_count(0.9, 2) == 1 and removal_count(None, 9) is None


def test_a_layer_without_variation_is_left_alone(trained_mlp, mnist5k):
    _, model = trained_mlp
    model = copy.deepcopy(model)
    layer = prunable_layers(model)[1]
    with torch.no_grad():
        layer.block.layer.bias.fill_(-1e3)  # every ReLU dead on every sample
    params = PruneParams(type="cka", rate=0.5, hook="nonlinearity")
    rec = record_layers(model, [layer], mnist5k.val, params, 96, torch.Generator().manual_seed(0), CPU)[1]
    assert select(rec, params, np.ones(32, bool), (0,)).removed == []


def test_l1_removes_the_smallest_rows(trained_mlp, mnist5k):
    _, model = trained_mlp
    layer = prunable_layers(model)[0]
    rec = record_layers(model, [layer], mnist5k.val, PruneParams(type="l1", rate=0.25), 96,
                        torch.Generator().manual_seed(0), CPU)[0]
    choice = select(rec, PruneParams(type="l1", rate=0.25), np.ones(48, bool), (0,))
    norms = layer.block.layer.weight.detach().abs().sum(1).numpy()
    assert choice.removed == list(np.argsort(norms)[:12])
    assert choice.scores == pytest.approx(sorted(norms)[:12], rel=1e-5)


def test_random_baseline_is_seeded(trained_mlp, mnist5k):
    _, model = trained_mlp
    layer = prunable_layers(model)[1]
    rec = record_layers(model, [layer], mnist5k.val, PruneParams(type="random", rate=0.5), 96,
                        torch.Generator().manual_seed(0), CPU)[1]
    pick = lambda seed: select(rec, PruneParams(type="random", rate=0.5), np.ones(32, bool), seed).removed  # noqa: E731
    # The order written out: the lowest of 32 uniform draws of NumPy's generator seeded with the seed's numbers.
    drawn = lambda seed: [int(n) for n in np.argsort(np.random.default_rng(list(seed)).random(32))[:16]]  # noqa: E731
    assert pick((0, 1, 1)) == drawn((0, 1, 1)) and pick((1, 1, 1)) == drawn((1, 1, 1))
    assert drawn((0, 1, 1)) != drawn((1, 1, 1))


@pytest.mark.parametrize("criterion, target", [("cka", "layer"), ("cka", "refit"), ("obs", "layer")])
def test_streamed_covariance_matches_in_memory_activations(trained_mlp, mnist5k, criterion, target):
    _, model = trained_mlp
    layers = prunable_layers(model)
    picks = []
    for samples in ("all", len(mnist5k.val)):
        params = PruneParams(type=criterion, rate=0.3, samples=samples, target=target)
        recs = record_layers(model, layers, mnist5k.val, params, 128, torch.Generator().manual_seed(0), CPU)
        assert (recs[0].covariance is not None) == (samples == "all")
        if (criterion, target) != ("cka", "layer"):  # the consumer's input: streamed too
            assert (recs[0].consumer.covariance is not None) == (samples == "all")
        picks.append(select(recs[0], params, np.ones(48, bool), (0,)))
    assert picks[0].removed == picks[1].removed
    np.testing.assert_allclose(picks[0].cka, picks[1].cka, rtol=1e-9)
    np.testing.assert_allclose(picks[0].scores, picks[1].scores, rtol=1e-9)


def test_masks_survive_retraining(trained_mlp, mnist5k):
    cfg, model = trained_mlp
    model = copy.deepcopy(model)
    records = prune_pass(model, cfg, mnist5k, seed=0, iteration=1, device=CPU)
    fit(model, mnist5k, cfg.params, seed=1, device=CPU)
    for record in records:
        layer = prunable_layers(model)[record.index].block.layer
        removed = list(record.removed)
        assert torch.all(layer.weight[removed] == 0)
        assert int(alive_neurons(layer).sum()) == record.alive_after
        assert layer.weight_orig.grad is None or torch.all(layer.weight_orig.grad[removed] == 0)


def test_rewinding_restores_the_early_weights_and_keeps_the_masks(trained_cnn, mnist5k):
    cfg, model = trained_cnn
    model = copy.deepcopy(model)
    torch.manual_seed(5)
    early = build_model(cfg.model).state_dict()  # stands for the weights of an early epoch
    records = prune_pass(model, cfg, mnist5k, seed=0, iteration=1, device=CPU)
    masks = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("weight_mask")}
    load_unmasked_state(model, early, cfg.prune.modules)
    state = model.state_dict()
    assert {k: v for k, v in state.items() if k.endswith("weight_mask")}.keys() == masks.keys()
    assert all(torch.equal(state[k], masks[k]) for k in masks)
    for key, value in early.items():  # biases, BatchNorm statistics, the output layer: as saved
        assert torch.equal(state[key] if key in state else state[f"{key}_orig"], value), key
    for record in records:
        layer = prunable_layers(model)[record.index].block.layer
        alive = alive_neurons(layer)
        assert int(alive.sum()) == record.alive_after and not alive[list(record.removed)].any()
        name = prunable_layers(model)[record.index].name
        assert torch.equal(layer.weight[alive], early[f"{name}.weight"][alive])  # surviving neurons: rewound
        assert torch.all(layer.weight[~alive] == 0)  # removed neurons stay removed
    assert not torch.equal(trained_cnn[1].state_dict()["conv.0.norm.running_mean"], early["conv.0.norm.running_mean"])


def test_an_interrupted_run_resumes_to_the_same_results(write_config, trained, run, tmp_path, capsys):
    """The interruption is a real SIGTERM to a real process; the other runs go in-process."""
    config = write_config(prune={"strategy": "iterative", "params": {"type": "cka", "iterations": 3, "rate": 0.25}})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    trained(config)
    assert run(main_prune, config, out="whole") == 0
    proc = subprocess.Popen([sys.executable, str(ROOT / "main_prune.py"), str(config), "--models-dir",
                             str(tmp_path / "models"), "--output-dir", str(tmp_path / "cut")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    for line in proc.stdout:
        if "iteration 2/3: pruned" in line:  # iteration 1 is saved, iteration 2 in flight
            proc.send_signal(signal.SIGTERM)
            break
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in out
    partial = json.loads((tmp_path / "cut/tiny/0.json").read_text())
    assert len(partial["iterations"]) == 1 and partial["complete"] is False
    capsys.readouterr()
    assert run(main_prune, config, out="cut") == 0 and "resuming after iteration 1 of 3" in capsys.readouterr().out
    a, b = (json.loads((tmp_path / d / "tiny/0.json").read_text()) for d in ("whole", "cut"))
    assert b["complete"] and len(b["iterations"]) == 3
    assert untimed(a) == untimed({**b, "model_file": a["model_file"]})
    assert run(main_prune, config, "--export", out="cut") == 0
    again = capsys.readouterr().out
    assert "seed 0: already pruned (3 iterations), skipping" in again
    exported, small_cfg = load_exported(tmp_path / "cut/tiny/exported/seed0.pt")
    alive = [layer["alive_after"] for layer in b["iterations"][-1]["layers"]]
    assert list(small_cfg.hidden_sizes) == alive and "exported model:" in again
    assert untimed(json.loads((tmp_path / "cut/tiny/0.json").read_text())) == untimed(b)


def test_missing_model_is_one_line_exit_2(write_config, tmp_path, entry_point):
    status, _, err = entry_point(main_prune, write_config(), "--models-dir", tmp_path / "none", "--output-dir",
                                 tmp_path / "out")
    assert "no trained model" in err and status == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("prune, expected", [
    (None, "prune section is required"),
    ({"params": {"type": "cka", "rate": 1.5}}, "prune.params.rate must be a number in (0, 1)"),
    ({"params": {"type": "cka", "rate": 0.2, "stop_cka": 0.9}}, "needs exactly one of rate, rates and stop_cka"),
    ({"params": {"type": "cka"}}, "needs exactly one of rate, rates and stop_cka"),
    ({"params": {"type": "cka", "rate": 0.2}, "modules": [5]}, "prune.modules has layer 5"),
    ({"params": {"type": "snip", "rate": 0.2}}, "prune.params.type must be one of"),
    ({"params": {"type": "cka", "rate": 0.2, "engine": "exact"}}, "prune.params.engine must be one of"),
    ({"params": {"type": "cka", "rate": 0.2, "kernel": "cosine"}}, "prune.params.kernel must be one of"),
    ({"params": {"type": "cka", "rate": 0.2, "iterations": 0}}, "prune.params.iterations must be an integer >= 1"),
])
def test_bad_prune_configs_exit_2_before_work(tmp_path, entry_point, prune, expected):
    path = bad_config(tmp_path, prune)
    status, out, err = entry_point(main_prune, path, "--models-dir", tmp_path / "none")
    assert status == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert out == ""  # stopped before loading data or models


def test_a_bad_prune_config_exits_2_from_the_command_line(tmp_path):
    path = bad_config(tmp_path, None)
    proc = subprocess.run([sys.executable, str(ROOT / "main_prune.py"), str(path), "--models-dir",
                           str(tmp_path / "none")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {path}: prune section is required") and proc.stderr.count("\n") == 1


def bad_config(tmp_path, prune):
    """tiny_raw with ``prune`` as its prune section (None: without one)."""
    from tests.conftest import tiny_raw
    raw = tiny_raw()
    if prune is None:
        del raw["prune"]
    else:
        raw["prune"] = prune
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return path


def test_trained_model_file_is_shared_by_criteria(write_config, tmp_path):
    cka = load_config(write_config("cka"))
    l1 = load_config(write_config("l1", prune={"params": {"type": "l1", "rate": 0.2}}))
    assert model_path(cka, 3, tmp_path) == model_path(l1, 3, tmp_path)


@pytest.mark.parametrize("greedy", ["conditional", "independent"])
@pytest.mark.parametrize("budget", [{"rate": 0.3}, {"stop_cka": 0.97}])
def test_next_layer_engines_agree_on_a_trained_mlp(trained_mlp, mnist5k, greedy, budget):
    _, model = trained_mlp
    params = PruneParams(type="cka", target="next", greedy=greedy, **budget)
    choices = _select_both(model, mnist5k.val, params, [0, 1], already_pruned=[(0, [2, 9])])
    _assert_same(choices)
    for index in (0, 1):
        fast, ref = choices["fast"][index], choices["reference"][index]
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-6, atol=0)
        if greedy == "independent":  # cka: the cumulative removals, not the individual scores
            assert fast.cka[0] == pytest.approx(fast.scores[0], rel=1e-9) and fast.cka[-1] < fast.scores[-1]
    # Never the last neuron, even where every individual score stays above stop_cka.
    assert len(choices["fast"][0].removed) <= 45 and len(choices["fast"][1].removed) <= 31
    # The next layer's CKA chooses differently from the layer's own on this model.
    own = _select_both(model, mnist5k.val, replace(params, target="layer"), [0])
    assert own["fast"][0].removed != choices["fast"][0].removed


def test_next_layer_score_is_cka_of_the_next_layers_input_times_its_weight(trained_cnn, mnist5k):
    _, model = trained_cnn
    model = copy.deepcopy(model)
    layers = prunable_layers(model)
    split = Split(mnist5k.val.images[:64], mnist5k.val.labels[:64])
    params = PruneParams(type="cka", target="next", engine="reference", rate=0.3)
    rec = record_layers(model, [layers[1]], split, params, 64, torch.Generator().manual_seed(2), CPU)[1]
    choice = select(rec, params, np.ones(8, bool), (0,))
    # Independently: the whole model run with channel j's filter zeroed; Z = the first fc
    # layer's input (the last conv block's pooled, flattened output) times its weight.
    seen = []
    handle = layers[2].block.layer.register_forward_hook(
        lambda m, a, o: seen.append(a[0].double() @ m.weight.double().T))
    x = split.images.float() / 255
    model.eval()
    with torch.no_grad():
        model(x)
        original = seen.pop()
        singles = []
        for j in range(8):
            with neurons_zeroed(layers[1].block.layer, [j]):
                model(x)
            singles.append(feature_space_linear_cka(original, seen.pop()))
    handle.remove()
    assert choice.removed[0] == int(np.argmax(singles))
    assert choice.scores[0] == pytest.approx(max(singles), rel=1e-9)


def test_logits_target_scores_the_network_output(trained_mlp, mnist5k):
    _, model = trained_mlp
    model = copy.deepcopy(model)
    layer = prunable_layers(model)[1]
    split = Split(mnist5k.val.images[:64], mnist5k.val.labels[:64])
    params = PruneParams(type="cka", target="logits", engine="reference", rate=0.1)
    rec = record_layers(model, [layer], split, params, 64, torch.Generator().manual_seed(0), CPU)[1]
    choice = select(rec, params, np.ones(32, bool), (0,))
    assert len(choice.removed) == 3 and choice.cka == choice.scores
    x = split.images.float() / 255
    model.eval()
    with torch.no_grad():
        logits = model(x)
        singles = []
        for j in range(32):
            with neurons_zeroed(layer.block.layer, [j]):
                singles.append(feature_space_linear_cka(logits, model(x)))
    assert choice.removed[0] == int(np.argmax(singles))
    assert choice.scores[0] == pytest.approx(max(singles), rel=1e-6)


@pytest.mark.parametrize("greedy", ["conditional", "independent"])
@pytest.mark.parametrize("target", ["layer", "next", "refit"])
def test_global_allocation_engines_agree_and_spend_the_uniform_budget(trained_mlp, mnist5k, greedy, target):
    _, model = trained_mlp
    model = copy.deepcopy(model)
    layers = prunable_layers(model)
    add_masks(model, [0, 1])
    remove_neurons(layers[0].block.layer, [1, 4])
    out = {}
    for engine in ("fast", "reference"):
        params = PruneParams(type="cka", rate=0.3, allocation="global", engine=engine, greedy=greedy, target=target)
        recs = record_layers(model, layers, mnist5k.val, params, 96, torch.Generator().manual_seed(1), CPU)
        alives = [alive_neurons(layer.block.layer).numpy() for layer in layers]
        out[engine] = select_global([recs[0], recs[1]], params, alives)
    for fast, ref in zip(out["fast"], out["reference"]):
        assert fast.removed == ref.removed
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-6, atol=0)
        np.testing.assert_allclose(fast.cka, ref.cka, rtol=1e-6, atol=0)
    removed = [len(choice.removed) for choice in out["fast"]]
    assert sum(removed) == removal_count(0.3, 46) + removal_count(0.3, 32)
    assert removed != [removal_count(0.3, 46), removal_count(0.3, 32)]  # not the uniform split


def test_global_prune_pass_records_widths_and_never_empties(trained_mlp, mnist5k):
    cfg, model = trained_mlp
    model = copy.deepcopy(model)
    params = replace(cfg.prune.params, rate=0.9, allocation="global")
    cfg = replace(cfg, prune=replace(cfg.prune, params=params))
    records = prune_pass(model, cfg, mnist5k, seed=0, iteration=1, device=CPU)
    assert sum(r.alive_before - r.alive_after for r in records) == removal_count(0.9, 48) + removal_count(0.9, 32)
    for record in records:
        layer = prunable_layers(model)[record.index].block.layer
        assert int(alive_neurons(layer).sum()) == record.alive_after >= 1
        assert record.skipped is None


def test_prune_pass_reports_a_skipped_layer(trained_mlp, mnist5k):
    cfg, model = trained_mlp
    model = copy.deepcopy(model)
    with torch.no_grad():
        prunable_layers(model)[1].block.layer.bias.fill_(-1e3)  # every ReLU dead on every sample
    cfg = replace(cfg, prune=replace(cfg.prune, params=replace(cfg.prune.params, hook="nonlinearity")))
    records = prune_pass(model, cfg, mnist5k, seed=0, iteration=1, device=CPU)
    assert records[0].skipped is None and records[0].removed
    assert records[1].skipped == NO_VARIATION and records[1].removed == ()


def test_next_layer_streamed_covariance_matches_in_memory_activations(trained_mlp, mnist5k):
    _, model = trained_mlp
    layers = prunable_layers(model)
    picks = []
    for samples in ("all", len(mnist5k.val)):
        params = PruneParams(type="cka", rate=0.3, samples=samples, target="next")
        recs = record_layers(model, layers, mnist5k.val, params, 128, torch.Generator().manual_seed(0), CPU)
        assert (recs[1].covariance is not None) == (samples == "all")
        picks.append(select(recs[1], params, np.ones(32, bool), (0,)))
    assert picks[0].removed == picks[1].removed
    np.testing.assert_allclose(picks[0].cka, picks[1].cka, rtol=1e-9)


REFIT_PARAMS = [PruneParams(type="obs", rate=0.3), PruneParams(type="obs", stop_cka=0.9),
                PruneParams(type="cka", target="refit", rate=0.3),
                PruneParams(type="cka", target="refit", greedy="independent", rate=0.3),
                PruneParams(type="l1", target="refit", rate=0.3)]


def _assert_same_scores(choices):
    """Scores within 1e-8 relative (obs: its costs, to 1e-8 of the largest, the literal refit's precision)."""
    for index in choices["fast"]:
        fast, ref = choices["fast"][index], choices["reference"][index]
        atol = max([1e-8 * abs(s) for s in ref.scores] + [1e-12])
        np.testing.assert_allclose(fast.scores, ref.scores, rtol=1e-8, atol=atol)


@pytest.mark.parametrize("params", REFIT_PARAMS)
def test_refit_criteria_engines_agree_on_a_trained_mlp(trained_mlp, mnist5k, params):
    _, model = trained_mlp
    choices = _select_both(model, mnist5k.val, params, [0, 1], already_pruned=[(0, [2, 9]), (1, [4])])
    _assert_same(choices)
    if params.type != "l1":  # l1's scores are its importances, the same in both
        _assert_same_scores(choices)
    assert not {2, 9} & set(choices["fast"][0].removed) and 4 not in choices["fast"][1].removed


@pytest.mark.parametrize("params", REFIT_PARAMS[:1] + REFIT_PARAMS[2:3])
def test_refit_criteria_engines_agree_on_a_cnns_last_conv(trained_cnn, mnist5k, params):
    """The last conv layer: each channel owns H*W columns of the flattened input of the Linear layer."""
    _, model = trained_cnn
    choices = _select_both(model, mnist5k.val, params, [1, 2], already_pruned=[(1, [5])])
    _assert_same(choices)
    _assert_same_scores(choices)
    assert 5 not in choices["fast"][1].removed


@pytest.mark.parametrize("params", [{"type": "obs", "rate": 0.5, "samples": "all"},
                                    {"type": "cka", "target": "refit", "rate": 0.5, "compensate_ridge": 0.01}])
def test_refit_criteria_run_end_to_end(write_config, trained, run, tmp_path, params):
    config = write_config(prune={"strategy": "iterative", "params": {**params, "iterations": 2}, "modules": [0, 1]})
    trained(config)
    assert run(main_prune, config, out="out") == 0
    result = json.loads((tmp_path / "out/tiny/0.json").read_text())
    assert result["complete"] and len(result["iterations"]) == 2
    for iteration in result["iterations"]:
        for layer in iteration["layers"]:
            assert layer["engine"] == "fast" and len(layer["removed"]) == len(layer["scores"]) == len(layer["cka"]) > 0
            if params["type"] == "obs":  # costs: rises of the refit's objective, never negative
                assert all(score >= 0 for score in layer["scores"])
