"""Shared fixtures: tiny configs on the bundled MNIST subset, trained models shared by the session;
the markers of tests that need something of the machine (tests/system.py)."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One thread for every run the tests make, in this process (src.cli.default_threads reads it) and in
# the processes they start: on networks this small a second thread costs more CPU in synchronisation
# than it saves (test_strategy and test_sweep: 43 s of CPU on one thread against 311 s on two, on a
# busy machine). Tests about threads set their own count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests import system  # noqa: E402 - needs the repository on sys.path


def pytest_configure(config):
    for name, needs in system.MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {needs}; skipped, saying how to enable it, where missing")


def pytest_collection_modifyitems(config, items):
    missing = {marker: check() for marker, check in system.MISSING.items()}
    for item in items:
        for marker, reason in missing.items():
            if reason is not None and item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


def tiny_raw(**sections) -> dict:
    """A small, fast experiment on mnist-5k; ``sections`` replace or extend the defaults."""
    raw = {
        "model": {"type": "mlp", "input_size": 784, "hidden_sizes": [48, 32], "output_size": 10, "dropout_rate": 0.2},
        "data": {"dataset": "mnist-5k"},
        "params": {"lr": 0.002, "batch_size": 128, "epochs": 3, "patience": 2},
        "prune": {"strategy": "iterative", "params": {"type": "cka", "iterations": 2, "rate": 0.25}, "modules": [0, 1]},
        "seeds": [0],
    }
    for key, value in sections.items():
        raw[key] = value
    return raw


LRS = [0.1, 0.01, 0.001, 0.0001]  # the learning rates the search tests sweep


def tiny_search_raw(parameters: dict, **params) -> dict:
    """A config whose points train in a fraction of a second on mnist-5k."""
    return {
        "_comment": "kept by --write-config",
        "model": {"type": "mlp", "input_size": 784, "hidden_sizes": [8], "output_size": 10},
        "data": {"dataset": "mnist-5k"},
        "params": {"lr": 0.01, "batch_size": 512, "epochs": 1, "patience": 1, **params},
        "search": {"parameters": {name: {"values": values} for name, values in parameters.items()}},
    }


@pytest.fixture
def write_config(tmp_path):
    def write(name="tiny", **sections) -> Path:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(tiny_raw(**sections)))
        return path
    return write


@pytest.fixture
def run(tmp_path):
    """Run main_train/main_prune in this process on dirs under tmp_path; return the exit code."""
    import main_prune

    def call(script, config, *extra, out="output"):
        args = [str(config), "--models-dir", str(tmp_path / "models"), *extra]
        if script is main_prune:
            args += ["--output-dir", str(tmp_path / out)]
        return script.main(args)
    return call


@pytest.fixture(scope="session")
def trained_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trained")


@pytest.fixture
def trained(tmp_path, trained_cache):
    """Put the trained models of ``config`` into tmp_path/models, as ``main_train.py config`` does there.

    Each distinct model (configs that differ in their prune section share it) is trained once per
    session and then copied: a test may change or delete its copy. Tests of training itself train.
    """
    import main_train
    from src.artifacts import model_stem
    from src.config import load_config

    def call(config: Path) -> None:
        assert main_train.main([str(config), "--models-dir", str(trained_cache)]) == 0
        cfg = load_config(config)
        models = tmp_path / "models"
        models.mkdir(exist_ok=True)
        for seed in cfg.seeds:
            for file in trained_cache.glob(f"{model_stem(cfg, seed)}.*"):
                shutil.copy2(file, models / file.name)
    return call


@pytest.fixture
def entry_point(capsys, monkeypatch):
    """Run an entry script's ``main`` through src.cli.run in this process, as ``python main_X.py``
    does; return (exit status, stdout, stderr). The process's SIGTERM handler is left alone."""
    from src import cli

    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)

    def call(script, *args) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit:
            cli.run(script.main, [str(arg) for arg in args])
        out, err = capsys.readouterr()
        return exit.value.code, out, err
    return call


@pytest.fixture(scope="session")
def mnist5k():
    from src.config import DataConfig
    from src.data import load_splits
    return load_splits(DataConfig(dataset="mnist-5k"))


CHECKOUT = ("commit", "dirty")  # a provenance's fields that name the checkout's state


def untimed(obj):
    """``obj`` (JSON-like: dicts, lists) without its wall times (keys containing "seconds"), which no two
    runs share, nor the checkout its provenances name (:data:`CHECKOUT`): a commit or an edit made
    while a test's runs go on changes it between them, not what they compute. A result record is
    compared as the JSON its file holds."""
    if hasattr(obj, "to_dict"):
        obj = json.loads(json.dumps(obj.to_dict()))
    if isinstance(obj, dict):
        return {k: untimed({f: x for f, x in v.items() if f not in CHECKOUT} if k == "provenance" and v else v)
                for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj
