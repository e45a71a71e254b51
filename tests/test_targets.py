"""Tests for src/pruning/targets.py: each target's search and damage path, by either engine, equal
the literal definition: zero the removed neurons' weights in a copy of the network, run it again,
read the target representation, and take its CKA to the original (cka_prune.cka on linear Gram
matrices); the greedy search written as a loop over those CKAs."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from cka_prune.cka import cka, gram_linear
from cka_prune.greedy_search import run_search
from src.config import ModelConfig, PruneParams
from src.data import Split, to_unit_float
from src.models import build_model, next_layer, prunable_layers
from src.pruning.scoring import record_layers
from src.pruning.targets import TARGETS

CPU = torch.device("cpu")
MLP = ModelConfig(type="mlp", input_size=16, hidden_sizes=(6, 5), output_size=4, input_shape=(1, 4, 4))
CNN = ModelConfig(type="cnn", input_shape=(1, 14, 14), conv_channels=(3, 4), kernel_size=3, fc_sizes=(5,),
                  output_size=3, batch_norm=True)
DEAD = 2  # a neuron an earlier pass removed: its weights are zero and it is not alive


def _samples(model_cfg: ModelConfig, n: int = 40) -> Split:
    images = np.random.default_rng(1).integers(0, 256, (n, *model_cfg.input_shape)).astype(np.uint8)
    return Split(torch.from_numpy(images), torch.zeros(n, dtype=torch.int64))


def _network(model_cfg: ModelConfig, index: int):
    """A random network whose BatchNorm statistics are those of the samples (no channel is dead on
    them), with neuron DEAD of layer ``index`` removed."""
    torch.manual_seed(0)
    model = build_model(model_cfg)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average: after one batch, that batch's statistics
    with torch.no_grad():
        model.train()(to_unit_float(_samples(model_cfg).images))
    _zero(prunable_layers(model)[index].block.layer, [DEAD])
    return model.eval()


def _zero(layer: torch.nn.Module, neurons: list[int]) -> None:
    """Zero the incoming weights of ``neurons``; the bias stays (as src.pruning.masks prunes)."""
    with torch.no_grad():
        layer.weight[neurons] = 0


def _read(model, index: int, target: str, x: torch.Tensor, hook: str) -> np.ndarray:
    """From a plain forward run of ``model``: the layer's output ("layer"; after BatchNorm and ReLU
    with ``hook`` "nonlinearity"), the consumer's input A ("next", "refit") or the logits, flattened,
    float64."""
    block = prunable_layers(model)[index].block
    module = {"layer": block.act if hook == "nonlinearity" else block.layer, "next": next_layer(model, index),
              "refit": next_layer(model, index)}.get(target)
    seen = []
    handle = None if module is None else module.register_forward_hook(
        lambda m, a, o: seen.append(o if target == "layer" else a[0]))
    with torch.no_grad():
        logits = model(x)
    if handle is not None:
        handle.remove()
    return (logits if module is None else seen[0]).flatten(1).double().numpy()


def _refit(a: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Z's least-squares fit from the columns of A, with an intercept (numpy's lstsq, minimum norm)."""
    design = np.hstack([a, np.ones((len(a), 1))])
    return design @ np.linalg.lstsq(design, z, rcond=None)[0]


def _literal_cka(model, index: int, target: str, x: torch.Tensor, removed: list[int], hook: str = "module") -> float:
    """CKA between ``target`` in ``model`` and in a copy with ``removed`` neurons' weights zeroed.

    "next": Z = A W^T, W the consumer's weight in ``model``; "refit": Z and its refit from the
    pruned network's A (a zeroed neuron's columns are constant there, so drop out of the fit)."""
    pruned_model = copy.deepcopy(model)
    _zero(prunable_layers(pruned_model)[index].block.layer, removed)
    original, pruned = _read(model, index, target, x, hook), _read(pruned_model, index, target, x, hook)
    if target in ("next", "refit"):
        weight = next_layer(model, index).weight.detach().double().numpy()
        z = original @ weight.T
        original, pruned = z, _refit(pruned, z) if target == "refit" else pruned @ weight.T
    return float(cka(gram_linear(original), gram_linear(pruned)))


def _literal_greedy(score, candidates: list[int], k: int, greedy: str) -> tuple[list[int], list[float]]:
    """Conditional: each step removes the candidate whose removal, with those before, keeps CKA
    highest; independent: the candidates in decreasing order of their own CKA."""
    if greedy == "independent":
        alone = {i: score([i]) for i in candidates}
        order = sorted(candidates, key=lambda i: -alone[i])[:k]
        return order, [alone[i] for i in order]
    removed, scores = [], []
    for _ in range(k):
        values = {i: score(removed + [i]) for i in candidates if i not in removed}
        best = max(values, key=values.get)
        removed.append(best)
        scores.append(values[best])
    return removed, scores


# (model, pruned layer, target, engines): "next" at a conv layer and "logits" have the reference
# engine only; "refit" reads a Linear consumer's input.
CASES = [(MLP, 0, "layer", ("fast", "reference")), (MLP, 1, "layer", ("fast", "reference")),
         (CNN, 0, "layer", ("fast", "reference")), (MLP, 0, "next", ("fast", "reference")),
         (CNN, 1, "next", ("reference",)), (MLP, 0, "refit", ("fast", "reference")),
         (MLP, 0, "logits", ("reference",)), (CNN, 0, "logits", ("reference",))]
PARAMS = [(model, index, target, engine, samples)
          for model, index, target, engines in CASES for engine in engines
          for samples in ((None, "all") if engine == "fast" else (None,))]


def _recorded(model_cfg, index, target, engine, samples, greedy="conditional", hook="module"):
    """The network as a plain copy (the reference engine masks the one it re-runs), the samples, the
    params, the layer's recording and its alive neurons."""
    model = _network(model_cfg, index)
    plain = copy.deepcopy(model)
    split = _samples(model_cfg)
    params = PruneParams(type="cka", rate=0.5, target=target, engine=engine, samples=samples, greedy=greedy,
                         hook=hook, compensate_ridge=0.0)
    # samples None: one batch of len(split), i.e. every sample in order, kept; "all": streamed (Linear)
    rec = record_layers(model, [prunable_layers(model)[index]], split, params, len(split),
                        torch.Generator().manual_seed(0), CPU)[index]
    alive = np.ones(prunable_layers(model)[index].width, dtype=bool)
    alive[DEAD] = False
    return plain, to_unit_float(split.images), params, rec, alive


@pytest.mark.parametrize("model_cfg, index, target, engine, samples", PARAMS)
def test_the_path_is_the_cka_of_the_network_with_the_neurons_zeroed(model_cfg, index, target, engine, samples):
    model, x, params, rec, alive = _recorded(model_cfg, index, target, engine, samples)
    assert isinstance(rec.target, TARGETS[target]) and rec.target.varies()
    assert (rec.covariance is not None) == (samples == "all" and model_cfg.type == "mlp")
    order = [int(i) for i in np.flatnonzero(alive)][::-1][:-1]
    expected = [_literal_cka(model, index, target, x, order[: t + 1]) for t in range(len(order))]
    np.testing.assert_allclose(rec.target.path(params, alive)(order), expected, rtol=1e-6)


@pytest.mark.parametrize("greedy", ["conditional", "independent"])
@pytest.mark.parametrize("model_cfg, index, target, engine, samples", PARAMS)
def test_the_search_is_the_literal_greedy(model_cfg, index, target, engine, samples, greedy):
    model, x, params, rec, alive = _recorded(model_cfg, index, target, engine, samples, greedy)
    k = int(alive.sum()) - 1
    search = rec.target.search(params, alive)
    run_search(search, k, None)
    candidates = [int(i) for i in np.flatnonzero(alive)]
    removed, scores = _literal_greedy(lambda s: _literal_cka(model, index, target, x, s), candidates, k, greedy)
    assert list(search.removed) == removed
    np.testing.assert_allclose(search.scores, scores, rtol=1e-6)


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_the_nonlinearity_hook_reads_the_output_after_batch_norm_and_relu(engine):
    model, x, params, rec, alive = _recorded(CNN, 0, "layer", engine, None, hook="nonlinearity")
    path = rec.target.path(params, alive)
    for removed in (0, 1):  # of the two alive channels; removing both leaves a constant
        expected = _literal_cka(model, 0, "layer", x, [removed], "nonlinearity")
        assert path([removed])[0] == pytest.approx(expected, rel=1e-6)
        assert expected != pytest.approx(_literal_cka(model, 0, "layer", x, [removed]), rel=1e-3)  # not the module's


def test_logits_refuses_the_fast_engine():
    _, _, params, rec, alive = _recorded(MLP, 0, "logits", "reference", None)
    with pytest.raises(ValueError, match="reference"):
        rec.target.search(replace(params, engine="fast"), alive)


def test_a_constant_representation_does_not_vary():
    model, _, params, rec, _ = _recorded(MLP, 0, "layer", "fast", None)
    constant = replace(rec.target, outputs=torch.ones_like(rec.target.outputs))
    assert not constant.varies()
