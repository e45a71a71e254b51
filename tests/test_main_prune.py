"""Tests for main_prune.py: what it checks before any work."""

from __future__ import annotations

import pytest

import main_prune
from src.cli import run
from src.errors import UserError


def test_a_missing_model_is_reported_before_a_missing_dataset(write_config, tmp_path, monkeypatch, capsys):
    config = write_config(data={"dataset": "fashion-mnist", "root": str(tmp_path / "no-data")}, seeds=[0, 1])

    def no_dataset(*args):
        raise UserError("fashion-mnist: dataset files not found")
    monkeypatch.setattr(main_prune, "load_experiment_data", no_dataset)
    with pytest.raises(SystemExit) as exit:
        run(main_prune.main, [str(config), "--models-dir", str(tmp_path / "models"),
                              "--output-dir", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: no trained model for seed 0, 1 at ")
    assert f"run main_train.py {config} first" in lines[0]
    assert not (tmp_path / "out").exists()


def test_one_seed_s_missing_model_names_its_file(write_config, tmp_path, monkeypatch):
    config = write_config()
    monkeypatch.setattr(main_prune, "load_experiment_data", lambda *a: pytest.fail("the dataset was loaded"))
    with pytest.raises(UserError, match=r"no trained model for seed 0 at .*models/.*\.pt; run main_train.py"):
        main_prune.main([str(config), "--models-dir", str(tmp_path / "models"), "--output-dir", str(tmp_path / "out")])
