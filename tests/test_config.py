import json
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import SEARCHABLE, load_config, parse_config, with_overrides
from src.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "config").rglob("*.json"))

BASE = {
    "model": {"type": "mlp", "input_size": 784, "hidden_sizes": [16, 8], "output_size": 10},
    "params": {"lr": 0.001, "batch_size": 32, "epochs": 2, "patience": 1},
    "prune": {"strategy": "iterative", "params": {"type": "cka", "iterations": 2, "rate": 0.2}, "modules": [0, 1]},
    "seeds": [0, 1],
}


def edited(path: str, value, base=BASE):
    """A deep copy of ``base`` with ``path`` ("a.b.c") set to ``value`` (or deleted for ...)."""
    raw = json.loads(json.dumps(base))
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return raw


def error_of(raw) -> str:
    with pytest.raises(UserError) as info:
        parse_config(raw, Path("cfg.json"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cfg.json: ")
    return message


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg.seeds


def test_defaults_match_the_original_setup():
    cfg = parse_config({"seeds": [3]}, Path("x.json"))
    assert cfg.data.dataset == "mnist" and cfg.data.root == "data"
    assert cfg.data.val_split == pytest.approx(1 / 12)
    assert cfg.model.type == "mlp" and cfg.prune is None
    assert [(p.name, p.values) for p in cfg.search.parameters] == [("lr", (0.1, 0.01, 0.001, 0.0001, 0.00001))]
    assert cfg.search.metric == "val_loss" and cfg.search.goal == "minimize" and cfg.search.seed == 666


def test_ex1_is_the_headline_experiment():
    cfg = load_config(ROOT / "config/ex1/cka.json")
    assert cfg.model.hidden_sizes == (512, 512) and cfg.model.dropout_rate == 0.5
    assert (cfg.params.lr, cfg.params.batch_size, cfg.params.epochs, cfg.params.patience) == (0.001, 512, 50, 3)
    assert cfg.prune.params.iterations == 15 and cfg.prune.params.rate == 0.2 and cfg.prune.modules == (0, 1)
    assert cfg.seeds == tuple(range(10))
    assert load_config(ROOT / "config/ex1/l1.json").prune.params.type == "l1"


@pytest.mark.parametrize("path, value, expected", [
    ("params.lr", "abc", 'params.lr must be a positive number, got "abc"'),
    ("params.lr", -1, "params.lr must be a positive number, got -1"),
    ("params.batch_size", 0, "params.batch_size must be a positive integer, got 0"),
    ("params.epochs", 1.5, "params.epochs must be a positive integer, got 1.5"),
    ("params.patience", True, "params.patience must be a positive integer, got true"),
    ("params.momentum", 0.9, "params.momentum is not a known key"),
    ("model.type", "rnn", "model.type must be one of mlp, cnn"),
    ("model.hidden_sizes", [16, 0], "model.hidden_sizes must be a list of positive integers"),
    ("model.dropout_rate", 1.0, "model.dropout_rate must be a number in [0, 1)"),
    ("data.dataset", "imagenet", "data.dataset must be one of mnist, fashion-mnist, cifar10, mnist-5k"),
    ("data.val_split", 0, "data.val_split must be a number in (0, 1)"),
    ("seeds", [], "seeds must be a non-empty list of integers >= 0"),
    ("seeds", [1, 1], "seeds must not repeat a seed"),
    ("extra", 1, "extra is not a known key"),
    ("prune.params.rate", 1.0, "prune.params.rate must be a number in (0, 1)"),
    ("prune.params.rate", 0, "prune.params.rate must be a number in (0, 1)"),
    ("prune.params.type", "taylor", "prune.params.type must be one of cka, l1, l2, random"),
    ("prune.params.engine", "gpu", "prune.params.engine must be one of fast, reference"),
    ("prune.params.kernel", "poly", "prune.params.kernel must be one of linear, rbf"),
    ("prune.params.iterations", 0, "prune.params.iterations must be an integer >= 1"),
    ("prune.params.samples", "some", 'prune.params.samples must be a positive integer, "all" or null'),
    ("prune.strategy", "lottery", "prune.strategy must be one of one_shot, iterative"),
    ("prune.modules", [0, 2], "prune.modules has layer 2, but the model has 2 prunable layers (0..1)"),
    ("prune.modules", [], "prune.modules must be a non-empty list of layer indices"),
    ("search.method", "anneal", "search.method must be one of grid, random, bayes"),
    ("search.parameters", {"momentum": {"values": [0.9]}}, "search.parameters.momentum is not searchable"),
    ("search.parameters", {"lr": {"values": []}}, "search.parameters.lr.values must be a non-empty list"),
    ("wandb.mode", "cloud", "wandb.mode must be one of disabled, offline, online"),
])
def test_bad_values_are_one_line_naming_the_key(path, value, expected):
    assert expected in error_of(edited(path, value))


def test_rate_and_stop_cka_are_exclusive():
    both = edited("prune.params.stop_cka", 0.9)
    assert "needs exactly one of rate and stop_cka" in error_of(both)
    neither = edited("prune.params.rate", ...)
    assert "prune.params needs exactly one of rate and stop_cka" in error_of(neither)
    only_stop = edited("prune.params.stop_cka", 0.95, edited("prune.params.rate", ...))
    assert parse_config(only_stop, Path("x.json")).prune.params.stop_cka == 0.95


def test_one_shot_means_one_iteration():
    raw = edited("prune.strategy", "one_shot")
    assert "iterations must be 1 for the one_shot strategy" in error_of(raw)


def test_cnn_counts_conv_and_fc_layers_as_prunable():
    raw = edited("model", {"type": "cnn", "conv_channels": [6, 16], "fc_sizes": [120, 84]})
    raw["prune"]["modules"] = [0, 1, 2, 3]
    cfg = parse_config(raw, Path("x.json"))
    assert cfg.model.num_prunable == 4
    assert "conv_channels must list at least one" in error_of(edited("model", {"type": "cnn"}))


def test_comment_keys_are_ignored():
    cfg = parse_config(edited("_note", "anything"), Path("x.json"))
    assert cfg.seeds == (0, 1)


def test_experiment_name_comes_from_the_path_below_config(tmp_path):
    assert load_config(ROOT / "config/demo/cka.json").name == "demo/cka"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(BASE))
    assert load_config(path).name == "mine"


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(UserError, match="missing.json: config file not found"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"seeds": [0],}')
    with pytest.raises(UserError, match="bad.json: not valid JSON at line 1"):
        load_config(bad)
    with pytest.raises(UserError, match="config must be a JSON object"):
        parse_config([1, 2], Path("x.json"))


def test_overrides_are_validated_and_leave_the_original_alone():
    cfg = parse_config(BASE, Path("x.json"))
    changed = with_overrides(cfg, {"lr": 0.1, "dropout_rate": 0.25})
    assert changed.params.lr == 0.1 and changed.model.dropout_rate == 0.25
    assert cfg.params.lr == 0.001 and cfg.raw["params"]["lr"] == 0.001
    assert set(SEARCHABLE) >= {"lr", "batch_size", "dropout_rate"}
    with pytest.raises(UserError, match="params.batch_size"):
        with_overrides(cfg, {"batch_size": 0})


def test_training_identity_ignores_the_prune_section():
    a = parse_config(BASE, Path("a.json"))
    b = parse_config(edited("prune.params.type", "l1"), Path("b.json"))
    assert a.training_identity() == b.training_identity()
    c = parse_config(edited("params.lr", 0.01), Path("c.json"))
    assert a.training_identity() != c.training_identity()


@pytest.mark.parametrize("content, expected", [
    (None, "missing.json: config file not found"),
    ('{"params": {"lr": "abc"}}', 'params.lr must be a positive number, got "abc"'),
])
def test_cli_exits_2_with_one_line(tmp_path, content, expected):
    path = tmp_path / "missing.json"
    if content is not None:
        path.write_text(content)
    for script in ("main_train.py",):
        proc = subprocess.run([sys.executable, str(ROOT / script), str(path)], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr
