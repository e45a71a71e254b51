"""The committed budget-study configs are exactly what scripts/make_budget_configs.py writes, and the
ResNet grid shares config/fmnist-cpu's trained models."""

import importlib.util
import json
from pathlib import Path

from src.artifacts import model_stem
from src.config import load_config

REPO = Path(__file__).resolve().parents[1]


def generator():
    spec = importlib.util.spec_from_file_location("make_budget_configs", REPO / "scripts" / "make_budget_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_configs_are_the_generators_output():
    module = generator()
    written = {**module.grid(), **module.resnet_grid()}
    committed = {p.relative_to(REPO / "config") for folder in ("budget-fmnist", "budget-fmnist-resnet")
                 for p in (REPO / "config" / folder).rglob("*.json")}
    assert committed == set(written)
    for path, raw in written.items():
        assert json.loads((REPO / "config" / path).read_text()) == raw, path


def test_each_grid_prunes_the_models_its_training_config_trains():
    module = generator()
    for grid, trainer in ((module.grid(), "study-fmnist/cka.json"), (module.resnet_grid(), "fmnist-cpu/cka.json")):
        trained = load_config(REPO / "config" / trainer)
        for path in grid:
            cfg = load_config(REPO / "config" / path)
            assert [model_stem(cfg, s) for s in cfg.seeds] == [model_stem(trained, s) for s in cfg.seeds], path
