"""Model file names (what shares a trained model, what does not) and model files on disk."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from src.artifacts import (ModelFileError, load_model, load_rewind_state, model_path, model_stem, rewind_path,
                           save_model, sidecar_path)
from src.errors import UserError
from src.config import parse_config
from src.models import build_model
from tests.conftest import tiny_raw


def config(raw: dict, name: str = "tiny.json"):
    return parse_config(copy.deepcopy(raw), Path(name))


def test_same_training_gives_the_same_stem_whatever_the_file_key_order_or_pruning():
    raw = tiny_raw()
    reordered = json.loads(json.dumps({key: raw[key] for key in reversed(list(raw))}))
    reordered["model"] = {key: raw["model"][key] for key in reversed(list(raw["model"]))}
    l1 = tiny_raw(prune={"strategy": "one_shot", "params": {"type": "l1", "rate": 0.5}}, seeds=[0, 1, 2])
    stems = {model_stem(config(r, name), seed=3) for r, name in [(raw, "a.json"), (reordered, "b/c.json"), (l1, "l1.json")]}
    assert len(stems) == 1


def test_stem_names_the_architecture_dataset_and_seed():
    stem = model_stem(config(tiny_raw()), seed=7)
    assert stem.startswith("mlp-48-32_mnist-5k_") and stem.endswith("_seed7")
    assert model_path(config(tiny_raw()), 7, Path("models")) == Path("models") / f"{stem}.pt"


@pytest.mark.parametrize("section, key, value", [
    ("model", "hidden_sizes", [48, 31]),
    ("model", "dropout_rate", 0.1),
    ("params", "lr", 0.001),
    ("params", "batch_size", 64),
    ("params", "epochs", 4),
])
def test_anything_that_changes_the_weights_changes_the_stem(section, key, value):
    changed = tiny_raw()
    changed[section] = {**changed[section], key: value}
    assert model_stem(config(changed), 0) != model_stem(config(tiny_raw()), 0)


def test_seeds_get_different_stems():
    cfg = config(tiny_raw())
    assert model_stem(cfg, 0) != model_stem(cfg, 1)


def test_saved_model_loads_with_its_sidecar(tmp_path):
    cfg = config(tiny_raw())
    torch.manual_seed(0)
    model = build_model(cfg.model)
    path = model_path(cfg, 0, tmp_path)
    save_model(path, model, {"epochs": 3})
    loaded = load_model(path, cfg)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert json.loads(sidecar_path(path).read_text()) == {"epochs": 3}


def test_truncated_model_file_is_a_model_file_error(tmp_path):
    cfg = config(tiny_raw())
    path = tmp_path / "model.pt"
    save_model(path, build_model(cfg.model), {})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="model.pt: cannot load"):
        load_model(path, cfg)


def test_model_of_other_shapes_is_a_model_file_error(tmp_path):
    path = tmp_path / "model.pt"
    save_model(path, build_model(config(tiny_raw()).model), {})
    wider = tiny_raw()
    wider["model"] = {**wider["model"], "hidden_sizes": [64, 32]}
    with pytest.raises(ModelFileError, match="model.pt: cannot load"):
        load_model(path, config(wider))


def test_early_weights_are_read_by_epoch_and_a_missing_epoch_is_one_line(tmp_path):
    model = tmp_path / "m_seed0.pt"
    assert rewind_path(model) == tmp_path / "m_seed0.rewind.pth"
    with pytest.raises(UserError, match=r"m_seed0\.rewind\.pth: no early weights to rewind to .* train it again"):
        load_rewind_state(model, 0)
    torch.save({0: {"w": torch.zeros(2)}, 1: {"w": torch.ones(2)}}, rewind_path(model))
    assert torch.equal(load_rewind_state(model, 1)["w"], torch.ones(2))
    with pytest.raises(UserError) as info:
        load_rewind_state(model, 3)  # a training that stopped early kept fewer epochs
    assert str(info.value) == (f"{rewind_path(model)}: holds the weights after epochs 0, 1, not after epoch 3: "
                               "prune.params.rewind_epoch must be one of them")
    rewind_path(model).write_bytes(b"cut short")
    with pytest.raises(UserError, match="cannot load"):
        load_rewind_state(model, 0)
