"""The committed depth-study configs are exactly what scripts/make_depth_configs.py writes, and each
study prunes the models its pilot's config trains (the ones committed in docs/depth/models)."""

import importlib.util
import json
from pathlib import Path

import pytest

from src.artifacts import model_stem
from src.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def module():
    spec = importlib.util.spec_from_file_location("make_depth_configs", REPO / "scripts" / "make_depth_configs.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_committed_configs_are_the_generators_output(module):
    written = {**module.fmnist_grid(), **module.lm_grid()}
    committed = {p.relative_to(REPO / "config") for folder in ("depth-fmnist", "depth-lm")
                 for p in (REPO / "config" / folder).rglob("*.json")}
    assert committed == set(written)
    for path, raw in written.items():
        assert json.loads((REPO / "config" / path).read_text()) == raw, path


def test_each_study_prunes_its_pilot_s_model(module):
    for grid, pilot in ((module.fmnist_grid(), module.PILOT), (module.lm_grid(), module.LM_PILOT)):
        trained = load_config(pilot)
        for path in grid:
            cfg = load_config(REPO / "config" / path)
            assert [model_stem(cfg, s) for s in cfg.seeds] == [model_stem(trained, s) for s in cfg.seeds], path
