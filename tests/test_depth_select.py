"""cka_prune.depth.select: the greedy and one-shot driver, spans, the plan, and the user's mistakes."""

import copy

import numpy as np
import pytest
import torch

from cka_prune import depth
from cka_prune.depth.criteria import Criterion
from tests.depth_helpers import models

NAMES = [f"blocks.{i}" for i in range(4)]


class Fixed(Criterion):
    """Scores from a table (so the driver's choices can be checked by hand), each call's candidates logged."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, context):
        self.calls.append([depth.label(s) for s in context.candidates])
        return {depth.label(s): self.table[depth.label(s)] for s in context.candidates}


@pytest.fixture(scope="module")
def mlp():
    _, model, batches, _ = models()[0]
    return model, batches


def test_greedy_removes_the_lowest_and_rescores_what_is_left(mlp):
    crit = Fixed({"blocks.0": 3.0, "blocks.1": 1.0, "blocks.2": 2.0, "blocks.3": 1.0})
    plan = depth.select(mlp[0], NAMES, mlp[1], crit, 3, compensate="none")
    assert plan.removed == ("blocks.1", "blocks.3", "blocks.2")  # a tie goes to the first in forward order
    assert crit.calls == [NAMES, ["blocks.0", "blocks.2", "blocks.3"], ["blocks.0", "blocks.2"]]
    assert plan.spans == (("blocks.1",), ("blocks.3",), ("blocks.2",)) and plan.patches == {}
    assert len(plan.steps) == 3 and plan.greedy and plan.compensate == "none"


def test_greedy_spans_close_over_the_blocks_removed(mlp):
    table = {"blocks.0+blocks.1": 3.0, "blocks.1+blocks.2": 1.0, "blocks.2+blocks.3": 2.0, "blocks.0+blocks.3": 0.0}
    crit = Fixed(table)
    plan = depth.select(mlp[0], NAMES, mlp[1], crit, 4, span=2, compensate="none")
    assert plan.spans == (("blocks.1", "blocks.2"), ("blocks.0", "blocks.3"))
    assert crit.calls[1] == ["blocks.0+blocks.3"]


def test_one_shot_ranks_once_and_takes_the_lowest_disjoint_spans(mlp):
    crit = Fixed({"blocks.0+blocks.1": 1.0, "blocks.1+blocks.2": 2.0, "blocks.2+blocks.3": 1.5})
    plan = depth.select(mlp[0], NAMES, mlp[1], crit, 4, greedy=False, span=2, compensate="none")
    assert plan.spans == (("blocks.0", "blocks.1"), ("blocks.2", "blocks.3")) and len(crit.calls) == 1
    crit = Fixed({"blocks.0+blocks.1": 2.0, "blocks.1+blocks.2": 1.0, "blocks.2+blocks.3": 3.0})
    with pytest.raises(ValueError, match="only 1 disjoint spans of 2 blocks, 2 asked"):
        depth.select(mlp[0], NAMES, mlp[1], crit, 4, greedy=False, span=2)


def _rows(model, name, batches):
    store = []
    block = model.get_submodule(name)
    handles = [block.register_forward_pre_hook(lambda m, a: store.append(("x", a[0].numpy()))),
               block.register_forward_hook(lambda m, a, o: store.append(("y", o.numpy())))]
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in handles:
        h.remove()
    return (np.concatenate([a for k, a in store if k == "x"]), np.concatenate([a for k, a in store if k == "y"]))


def test_one_shot_fits_each_patch_on_the_network_with_the_earlier_spans_removed(mlp):
    model, batches = mlp
    crit = Fixed({"blocks.0": 2.0, "blocks.1": 0.0, "blocks.2": 1.0, "blocks.3": 3.0})
    plan = depth.select(model, NAMES, batches, crit, 2, greedy=False, compensate="lstsq", ridge=0.0)
    assert plan.removed == ("blocks.1", "blocks.2")
    first = depth.DepthPlan("fixed", "lstsq", False, ("blocks.1",), (("blocks.1",),), (),
                            {"blocks.1": plan.patches["blocks.1"]}, {}, {})
    x, y = _rows(depth.apply(model, first), "blocks.2", batches)
    coef = np.linalg.lstsq(np.hstack([x, np.ones((len(x), 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(plan.patches["blocks.2"].weight, coef[:-1], rtol=1e-7, atol=1e-9)
    assert plan.patch_errors == {k: p.error for k, p in plan.patches.items()}


def test_span_true_removes_one_span_of_count_blocks(mlp):
    model, batches = mlp
    plan = depth.select(model, NAMES, batches, "tail", 3, span=True, compensate="lstsq")
    assert plan.spans == (("blocks.1", "blocks.2", "blocks.3"),)
    assert list(plan.patches) == ["blocks.1+blocks.2+blocks.3"]
    assert list(plan.steps[0]) == ["blocks.0+blocks.1+blocks.2", "blocks.1+blocks.2+blocks.3"]


def test_select_leaves_the_model_alone(mlp):
    model, batches = mlp
    before = copy.deepcopy(model.state_dict())
    for criterion in ("cka", "loss", "pons"):
        depth.select(model, NAMES, batches, criterion, 2, loss=lambda m: float(m(batches[0]).sum()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, depth.Skip) for m in model.modules())


def test_the_users_mistakes_get_one_line(mlp):
    model, batches = mlp
    _, conv, conv_batches, _ = models()[3]
    cases = [
        (dict(criterion="shortgpt"), "criterion must be one of"),
        (dict(compensate="refit"), "compensate must be one of"),
        (dict(count=5), r"count must be an int in \[1, 4\]"),
        (dict(count=3, span=2), "span must be False, True or an int"),
        (dict(criterion="loss"), "needs loss=callable"),
        (dict(batches=iter(batches)), "not an iterator"),
        (dict(batches=[]), "batches is empty"),
        (dict(names=["blocks.0", "blocks.0"]), "distinct"),
        (dict(names=["embed.weight"]), "the model has no module named 'embed.weight'"),
    ]
    for change, message in cases:
        args = {"names": NAMES, "batches": batches, "criterion": "cka", "count": 1} | change
        with pytest.raises(ValueError, match=message):
            depth.select(model, args.pop("names"), args.pop("batches"), **args)
    with pytest.raises(ValueError, match=r"block 'layer2.0' is not removable: its output shape \(4, 8, 3, 3\)"):
        depth.select(conv, ["layer2.0"], conv_batches, "cka", 1)


def test_the_d_by_d_sums_are_recorded_only_where_a_criterion_or_the_patch_needs_them(mlp):
    class Probe(Criterion):
        needs_moments = True

        def __init__(self):
            self.sizes = []

        def __call__(self, context):
            self.sizes.append({m.xtx.size for m in context.moments.values()})
            return {depth.label(s): 0.0 for s in context.candidates}

    for compensate, size in (("none", 0), ("lstsq", 8 * 8)):
        probe = Probe()
        depth.select(mlp[0], NAMES, mlp[1], probe, 1, compensate=compensate)
        assert probe.sizes == [{size}]
