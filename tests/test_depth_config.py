"""The prune section of strategy "depth" (src.config.depth): what it reads, what it refuses in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import main_prune
from src.config import DEPTH_CRITERIA, DepthConfig, DepthParams, load_config, parse_config
from src.config.depth import check_counts
from src.depth_results import config_description
from src.errors import UserError
from tests.test_config import error_of

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "config" / "depth-demo" / "cka-lstsq.json"

BASE = {
    "model": {"type": "resnet", "depth": 14, "width": 4},
    "data": {"dataset": "mnist-5k"},
    "params": {"lr": 0.01, "batch_size": 64, "epochs": 2, "patience": 1, "warmup_epochs": 1},
    "prune": {"strategy": "depth", "params": {"criterion": "cosine", "blocks": [1, 2]}},
}


def with_params(**params) -> dict:
    raw = json.loads(json.dumps(BASE))
    raw["prune"]["params"] = params
    return raw


def test_a_depth_section_reads_into_its_own_config():
    cfg = parse_config(BASE, Path("cfg.json"))
    assert cfg.prune is None
    assert cfg.depth == DepthConfig(DepthParams(criterion="cosine", blocks=(1, 2), recalibrate_bn=True))
    assert cfg.require_depth() is cfg.depth


def test_the_shipped_demo_is_a_depth_config():
    p = load_config(DEMO).require_depth().params
    assert (p.criterion, p.compensate, p.fractions, p.retrain_epochs, p.damage) == \
        ("cka", "lstsq", (0.25, 0.5, 0.75), 1, True)


def test_width_commands_refuse_a_depth_config():
    with pytest.raises(UserError, match='prune.strategy "depth" removes blocks'):
        parse_config(BASE, Path("cfg.json")).require_prune()


@pytest.mark.parametrize("params, says", [
    ({"criterion": "width", "blocks": 1}, "prune.params.criterion must be one of cka, cosine, angular"),
    ({}, "prune.params needs exactly one of blocks and fractions"),
    ({"blocks": 1, "fractions": [0.5]}, "prune.params needs exactly one of blocks and fractions"),
    ({"blocks": [2, 2]}, "prune.params.blocks must be a positive integer or an increasing list"),
    ({"blocks": 0}, "prune.params.blocks must be a positive integer"),
    ({"fractions": [0.5, 1.0]}, "prune.params.fractions must be an increasing list of numbers in (0, 1)"),
    ({"blocks": 1, "compensate": "bias"}, "prune.params.compensate must be one of none, lstsq"),
    ({"blocks": 1, "ridge": 0.1}, 'prune.params.ridge applies to compensate "lstsq"'),
    ({"blocks": 1, "compensate": "lstsq", "ridge": -1}, "prune.params.ridge must be a number >= 0"),
    ({"blocks": 1, "span": 0}, "prune.params.span must be a positive integer"),
    ({"blocks": 1, "samples": "all"}, "prune.params.samples must be a positive integer"),
    ({"blocks": 1, "retrain_epochs": 1}, "prune.params.retrain_epochs must be > params.warmup_epochs (1)"),
    ({"blocks": 1, "retrain_lr": 0.1}, "prune.params.retrain_lr applies to retraining, but retrain_epochs is 0"),
    ({"blocks": 1, "damage": "yes"}, "prune.params.damage must be true or false"),
    ({"blocks": 1, "rate": 0.5}, "prune.params.rate is not a known key"),
])
def test_a_bad_depth_config_is_one_line_naming_the_key(params, says):
    assert says in error_of(with_params(**params))


def test_a_model_without_residual_blocks_is_refused():
    raw = {**BASE, "model": {"type": "mlp", "hidden_sizes": [8]}}
    assert 'prune.strategy "depth" needs a model with residual blocks' in error_of(raw)


def test_modules_do_not_apply_to_depth():
    raw = {**BASE, "prune": {**BASE["prune"], "modules": [0]}}
    assert "prune.modules does not apply to strategy \"depth\"" in error_of(raw)


def test_fractions_become_the_nearest_count_halves_up_without_repeats():
    assert DepthParams(fractions=(0.25, 0.5, 0.75)).counts(4) == (1, 2, 3)
    assert DepthParams(fractions=(0.25, 0.5, 0.75)).counts(7) == (2, 4, 5)  # 1.75, 3.5, 5.25
    assert DepthParams(fractions=(0.1, 0.25, 0.5)).counts(2) == (1,)        # 0.2 -> at least 1, 0.5 -> 1, 1
    assert DepthParams(blocks=(3, 5)).counts(7) == (3, 5)


def test_counts_beyond_the_model_or_off_the_span_are_one_line_errors():
    with pytest.raises(UserError, match=r"^cfg.json: prune.params.blocks asks for 5 blocks, but the model has 4 "):
        check_counts(DepthParams(blocks=(2, 5)), 4, "cfg.json")
    with pytest.raises(UserError, match=r"prune.params.fractions gives 3 blocks, not a multiple of prune.params.span"):
        check_counts(DepthParams(fractions=(0.75,), span=2), 4, "cfg.json")
    assert check_counts(DepthParams(blocks=(3,), span=True), 4, "cfg.json") == (3,)


def test_span_one_is_single_blocks_for_the_library():
    assert [DepthParams(span=s).library_span for s in (1, 2, True)] == [False, 2, True]


def test_what_a_run_measures_stays_out_of_its_identity():
    def identity(**params):
        return config_description(parse_config(with_params(**params), Path("cfg.json")))

    base = identity(criterion="cosine", blocks=[1])
    assert identity(criterion="cosine", blocks=[1, 2], damage=True, latency=False) == base
    assert identity(criterion="cosine", fractions=[0.5]) == base
    assert identity(criterion="cka", blocks=[1]) != base
    assert identity(criterion="cosine", blocks=[1], compensate="lstsq") != base
    assert identity(criterion="cosine", blocks=[1], span=2) != base


def test_the_criteria_are_the_library_s():
    from cka_prune import depth
    assert DEPTH_CRITERIA == tuple(depth.CRITERIA)


def test_main_prune_says_a_bad_depth_config_in_one_line_with_exit_2(tmp_path, entry_point):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(with_params(criterion="cosine", blocks=1, compensate="bias")))
    status, out, err = entry_point(main_prune, config, "--models-dir", tmp_path / "models",
                                   "--output-dir", tmp_path / "out")
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1
    assert lines[0] == f"error: {config}: prune.params.compensate must be one of none, lstsq, got \"bias\""
    assert not (tmp_path / "out").exists()
