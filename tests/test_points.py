"""Search points, whichever backend searches them: the grid, bad values, identity, training one point."""

from pathlib import Path

import pytest
import torch

from src import points
from src.config import parse_config
from src.errors import UserError
from src.points import grid_points, search_identity
from tests.conftest import LRS, tiny_search_raw


# ---------------------------------------------------------------- points and identity

def test_grid_points_in_order():
    cfg = parse_config(tiny_search_raw({"lr": [0.1, 0.01], "batch_size": [32, 64, 128]}), Path("c.json"))
    grid = grid_points(cfg.search)
    assert grid[:4] == [{"lr": 0.1, "batch_size": 32}, {"lr": 0.1, "batch_size": 64},
                        {"lr": 0.1, "batch_size": 128}, {"lr": 0.01, "batch_size": 32}]
    assert len(grid) == 6


def test_bad_values_are_user_errors():
    cfg = parse_config(tiny_search_raw({"lr": [0.01, -1]}), Path("c.json"))
    with pytest.raises(UserError, match=r"params.lr must be a positive number, got -1 \(in search.parameters.lr\)"):
        points.check_points(cfg)
    raw = tiny_search_raw({"lr": LRS})
    raw["search"] = {"method": "random", "run_cap": 2, "parameters": {"dropout_rate": {"min": 0.5, "max": 1.5}}}
    with pytest.raises(UserError, match=r"model.dropout_rate must be a number in \[0, 1\), got 1.5"):
        points.check_points(parse_config(raw, Path("c.json")))


def test_identity_ignores_searched_values_but_not_the_rest():
    base = parse_config(tiny_search_raw({"lr": LRS}), Path("c.json"))
    same = [tiny_search_raw({"lr": LRS}, lr=0.5), tiny_search_raw({"lr": [0.3]})]
    other = [tiny_search_raw({"lr": LRS}, epochs=2), tiny_search_raw({"batch_size": [64]})]
    seeded = tiny_search_raw({"lr": LRS})
    seeded["search"]["seed"] = 1
    assert all(search_identity(parse_config(raw, Path("c.json"))) == search_identity(base) for raw in same)
    assert all(search_identity(parse_config(raw, Path("c.json"))) != search_identity(base) for raw in [*other, seeded])


def test_a_point_records_its_best_epoch(mnist5k):
    cfg = parse_config(tiny_search_raw({"lr": [0.01]}, epochs=3, patience=3), Path("c.json"))
    epochs = []
    result = points.train_point(cfg, {"lr": 0.01}, mnist5k, torch.device("cpu"), epochs.append)
    assert len(epochs) == result.epochs == 3 and not result.diverged and not result.stopped
    best = min(epochs, key=lambda row: row["val_loss"])
    assert result.best_epoch == best["epoch"]
    assert result.val_loss == pytest.approx(best["val_loss"], rel=1e-5)
    assert result.val_acc == pytest.approx(best["val_acc"])


def test_a_point_stopped_early_keeps_its_best_epoch_so_far(mnist5k):
    cfg = parse_config(tiny_search_raw({"lr": [0.01]}, epochs=5, patience=5), Path("c.json"))
    seen = []

    def stop_after_two(row):
        seen.append(row)
        if len(seen) == 2:
            raise points.StopEarly()

    result = points.train_point(cfg, {"lr": 0.01}, mnist5k, torch.device("cpu"), stop_after_two)
    assert result.stopped and result.epochs == 2
    assert result.val_loss == min(row["val_loss"] for row in seen)


# ---------------------------------------------------------------- where the entry points find a search

def test_a_search_under_a_custom_output_dir_is_used_by_the_entry_points_given_it(tmp_path, capsys):
    import json

    import main_prune
    import main_search
    import main_train
    from src import reproduce
    from src.artifacts import model_path
    from src.config import load_config

    raw = tiny_search_raw({"lr": [0.05, 0.0005]})
    raw["prune"] = {"strategy": "iterative", "params": {"type": "l1", "iterations": 1, "rate": 0.25,
                                                        "retrain": False}, "modules": [0]}
    study = tmp_path / "study"
    study.mkdir()
    config = study / "c.json"
    config.write_text(json.dumps(raw))
    custom = tmp_path / "custom"
    assert main_search.main([str(config), "--output-dir", str(custom / "search")]) == 0
    found = f"from the search in {custom / 'search'}/"
    capsys.readouterr()

    models = tmp_path / "models"
    assert main_train.main([str(config), "--models-dir", str(models), "--output-dir", str(custom)]) == 0
    assert found in capsys.readouterr().out
    best = load_config(config)
    best, _ = points.searched_config(best, True, custom / "search")
    assert best.params.lr != raw["params"]["lr"] and model_path(best, 0, models).exists()
    assert main_prune.main([str(config), "--models-dir", str(models), "--output-dir", str(custom)]) == 0
    assert found in capsys.readouterr().out
    (cfg,) = reproduce.load_study(study, True, custom)
    assert cfg.params.lr == best.params.lr and found in capsys.readouterr().out
