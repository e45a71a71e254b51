"""cka_prune.depth.criteria: every criterion's scores equal a literal computation written here: run the
residual MLP block by block, skip (or patch) a block by hand, and evaluate."""

import numpy as np
import pytest
import torch

from cka_prune import depth
from tests.depth_helpers import ResidualMLP

NAMES = [f"blocks.{i}" for i in range(4)]


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = ResidualMLP().double().eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    return model, batches


def _run(model, x, replace=None):
    """The MLP written out; `replace` maps a block index to what runs instead (None: skipped).
    Returns (the input and output rows of every block that ran, the logits)."""
    replace = replace or {}
    h, io = model.embed(x), {}
    for i, block in enumerate(model.blocks):
        f = replace[i] if i in replace else block
        out = h if f is None else f(h)
        io[i] = (h.numpy(), out.numpy())
        h = out
    return io, model.head(h)


def _rows(model, batches, replace=None):
    with torch.no_grad():
        runs = [_run(model, x, replace)[0] for x in batches]
    return {i: (np.concatenate([r[i][0] for r in runs]), np.concatenate([r[i][1] for r in runs])) for i in runs[0]}


def _logits(model, batches, replace=None):
    with torch.no_grad():
        return np.concatenate([_run(model, x, replace)[1].numpy() for x in batches])


def _cka(x, y):
    xc, yc = x - x.mean(0), y - y.mean(0)
    return np.sum((xc.T @ yc) ** 2) / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))


def _cos(x, y):
    return np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def _lstsq(x, y):
    coef = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)[0]
    return coef[:-1], coef[-1]


def _error(x, y):
    w, b = _lstsq(x, y)
    return np.sum((y - x @ w - b) ** 2) / np.sum((y - y.mean(0)) ** 2)


def _refit(x, y):
    w, b = _lstsq(x, y)
    return 1 - _cka(y, x @ w + b)


def _scores(setting, criterion, **kwargs):
    model, batches = setting
    options = {"greedy": False, "compensate": "none", "ridge": 0.0} | kwargs
    return depth.select(model, NAMES, batches, criterion, 1, **options).steps[0]


def _assert_scores(scores, literal):
    assert list(scores) == list(literal)
    np.testing.assert_allclose(list(scores.values()), list(literal.values()), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("criterion, literal", [
    ("cka", lambda x, y: 1 - _cka(x, y)),
    ("cosine", lambda x, y: 1 - _cos(x, y).mean()),
    ("angular", lambda x, y: np.mean(np.arccos(np.clip(_cos(x, y), -1, 1)) / np.pi)),
    ("residual", _error),
    ("cka-refit", _refit),
])
def test_a_statistic_of_each_blocks_input_and_output(setting, criterion, literal):
    rows = _rows(*setting)
    _assert_scores(_scores(setting, criterion), {NAMES[i]: literal(*rows[i]) for i in range(4)})


def test_angular_over_spans_pairs_the_first_input_with_the_last_output(setting):
    model, batches = setting
    rows = _rows(*setting)
    scores = depth.select(model, NAMES, batches, "angular", 2, span=True).steps[0]
    literal = {f"{NAMES[i]}+{NAMES[i + 1]}": np.mean(np.arccos(np.clip(_cos(rows[i][0], rows[i + 1][1]), -1, 1)))
               / np.pi for i in range(3)}
    _assert_scores(scores, literal)


def test_tail_and_random(setting):
    _assert_scores(_scores(setting, "tail"), {n: 3.0 - i for i, n in enumerate(NAMES)})
    _assert_scores(_scores(setting, "random", seed=7), dict(zip(NAMES, np.random.default_rng(7).random(4))))


def _affine(x, y):
    w, b = (torch.from_numpy(a) for a in _lstsq(x, y))
    return lambda h: h @ w + b


@pytest.mark.parametrize("compensate", ["none", "lstsq"])
def test_loss_runs_the_network_without_the_block(setting, compensate):
    model, batches = setting

    def loss(m):
        return float(sum(m(x).pow(2).mean() for x in batches))

    rows = _rows(*setting)
    literal = {}
    for i in range(4):
        stand_in = _affine(*rows[i]) if compensate == "lstsq" else None
        literal[NAMES[i]] = float(np.sum([np.mean(out ** 2) for out in np.split(
            _logits(model, batches, {i: stand_in}), 3)]))
    _assert_scores(_scores(setting, "loss", loss=loss, compensate=compensate), literal)


def test_pons_is_one_minus_the_cka_of_the_dense_and_the_pruned_outputs(setting):
    model, batches = setting
    dense = _logits(model, batches)
    literal = {NAMES[i]: 1 - _cka(dense, _logits(model, batches, {i: None})) for i in range(4)}
    _assert_scores(_scores(setting, "pons"), literal)


def test_greedy_rescores_the_network_with_the_first_block_removed_and_patched(setting):
    model, batches = setting
    plan = depth.select(model, NAMES, batches, "residual", 2, greedy=True, compensate="lstsq", ridge=0.0)
    rows = _rows(*setting)
    first = min(range(4), key=lambda i: _error(*rows[i]))
    assert plan.removed[0] == NAMES[first]
    after = _rows(model, batches, {first: _affine(*rows[first])})
    literal = {NAMES[i]: _error(*after[i]) for i in range(4) if i != first}
    _assert_scores(plan.steps[1], literal)
    assert plan.removed[1] == min(literal, key=literal.get)
    second = NAMES.index(plan.removed[1])
    w, b = _lstsq(*after[second])
    np.testing.assert_allclose(plan.patches[plan.removed[1]].weight, w, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(plan.patch_errors[plan.removed[1]], literal[plan.removed[1]], rtol=1e-8)
