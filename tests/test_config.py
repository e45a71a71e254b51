import json
from dataclasses import asdict, replace
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from src.config import SEARCHABLE, PruneParams, TrainParams, load_config, parse_config, with_overrides, write_configs
from src.errors import UserError
from src.results import config_description

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
    ("params.patience", True, "params.patience must be a positive integer or null, got true"),
    ("params.beta", 0.9, "params.beta is not a known key"),
    ("params.patience", 0, "params.patience must be a positive integer or null, got 0"),
    ("params.optimizer", "rmsprop", "params.optimizer must be one of adam, sgd"),
    ("params.momentum", 0.9, "params.momentum applies to optimizer sgd only"),
    ("params.nesterov", True, "params.nesterov applies to optimizer sgd only"),
    ("params.weight_decay", -0.1, "params.weight_decay must be a number >= 0"),
    ("params.schedule", "linear", "params.schedule must be one of constant, step, cosine"),
    ("params.schedule", "step", "params.milestones is required for schedule step"),
    ("params.milestones", [1], "params.milestones applies to schedule step only"),
    ("params.gamma", 0.5, "params.gamma applies to schedule step only"),
    ("params.warmup_epochs", 2, "params.warmup_epochs must be an integer in [0, params.epochs) = [0, 2)"),
    ("params.augment", "yes", "params.augment must be true or false"),
    ("seeds", [0, 2**64], "seeds must be a non-empty list of integers in [0, 4294967295], got [0, 18446744073709551616]"),
    ("seeds", [-1], "seeds must be a non-empty list of integers in [0, 4294967295]"),
    ("data.split_seed", 2**32, "data.split_seed must be an integer in [0, 4294967295]"),
    ("model.type", "rnn", "model.type must be one of mlp, cnn"),
    ("model.hidden_sizes", [16, 0], "model.hidden_sizes must be a list of positive integers"),
    ("model.dropout_rate", 1.0, "model.dropout_rate must be a number in [0, 1)"),
    ("data.dataset", "imagenet", "data.dataset must be one of mnist, fashion-mnist, cifar10, mnist-5k"),
    ("data.val_split", 0, "data.val_split must be a number in (0, 1)"),
    ("seeds", [], "seeds must be a non-empty list of integers in [0, 4294967295]"),
    ("seeds", [1, 1], "seeds must not repeat a seed"),
    ("extra", 1, "extra is not a known key"),
    ("prune.params.rate", 1.0, "prune.params.rate must be a number in (0, 1)"),
    ("prune.params.rate", 0, "prune.params.rate must be a number in (0, 1)"),
    ("prune.params.type", "snip", "prune.params.type must be one of cka, l1, l2, random"),
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
    assert "needs exactly one of rate, rates and stop_cka" in error_of(both)
    neither = edited("prune.params.rate", ...)
    assert "prune.params needs exactly one of rate, rates and stop_cka" in error_of(neither)
    only_stop = edited("prune.params.stop_cka", 0.95, edited("prune.params.rate", ...))
    assert parse_config(only_stop, Path("x.json")).prune.params.stop_cka == 0.95


def test_retrain_modes_and_the_rewind_epoch():
    def params(retrain, **extra):
        raw = edited("prune.params", {**BASE["prune"]["params"], "retrain": retrain, **extra})
        return parse_config(raw, Path("x.json")).prune.params

    assert parse_config(BASE, Path("x.json")).prune.params.retrain == "finetune"
    assert (params(True).retrain, params(False).retrain, params("finetune").retrain) == ("finetune", None, "finetune")
    rewind = params("rewind", rewind_epoch=2)  # BASE trains 2 epochs: 0, 1, 2 are kept
    assert (rewind.retrain, rewind.rewind_epoch) == ("rewind", 2)
    assert params("rewind", rewind_epoch=0).rewind_epoch == 0


@pytest.mark.parametrize("extra, expected", [
    ({"retrain": "restart"}, 'prune.params.retrain must be "finetune", "rewind" or false (true means "finetune"), got "restart"'),
    ({"retrain": "rewind"}, 'prune.params.rewind_epoch is required with retrain "rewind"'),
    ({"retrain": "rewind", "rewind_epoch": -1}, "prune.params.rewind_epoch must be an integer in [0, 2]"),
    ({"retrain": "rewind", "rewind_epoch": 3}, "prune.params.rewind_epoch must be an integer in [0, 2]"),
    ({"retrain": "rewind", "rewind_epoch": True}, "prune.params.rewind_epoch must be an integer in [0, 2]"),
    ({"rewind_epoch": 1}, 'prune.params.rewind_epoch applies to retrain "rewind" only, got retrain "finetune"'),
    ({"retrain": False, "rewind_epoch": 1}, 'prune.params.rewind_epoch applies to retrain "rewind" only, got retrain false'),
])
def test_bad_retrain_settings_are_one_line(extra, expected):
    assert expected in error_of(edited("prune.params", {**BASE["prune"]["params"], **extra}))


def test_rewind_epoch_is_bounded_by_what_training_keeps():
    long = edited("params.epochs", 50)
    raw = edited("prune.params", {**BASE["prune"]["params"], "retrain": "rewind", "rewind_epoch": 6}, long)
    assert "prune.params.rewind_epoch must be an integer in [0, 5]" in error_of(raw)


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


def sgd_step(**extra):
    base = edited("params", {"lr": 0.1, "batch_size": 32, "epochs": 10, "patience": None, "optimizer": "sgd",
                             "momentum": 0.8, "nesterov": True, "weight_decay": 5e-4, "schedule": "step",
                             "milestones": [4, 7], "gamma": 0.2, "warmup_epochs": 2, "augment": True})
    base["params"].update(extra)
    return base


def test_a_full_recipe_is_read():
    p = parse_config(sgd_step(), Path("x.json")).params
    assert (p.optimizer, p.momentum, p.nesterov, p.weight_decay) == ("sgd", 0.8, True, 5e-4)
    assert (p.schedule, p.milestones, p.gamma, p.warmup_epochs) == ("step", (4, 7), 0.2, 2)
    assert p.augment is True and p.patience is None
    assert parse_config(edited("params.weight_decay", 0.01), Path("x.json")).params.weight_decay == 0.01  # adam too


@pytest.mark.parametrize("extra, expected", [
    ({"milestones": [7, 4]}, "params.milestones must be increasing epochs between params.warmup_epochs and params.epochs"),
    ({"milestones": [2, 7]}, "(2 < m < 10)"),
    ({"milestones": [4, 10]}, "(2 < m < 10)"),
    ({"momentum": 0, "nesterov": True}, "params.nesterov needs params.momentum > 0"),
    ({"gamma": 0}, "params.gamma must be a number in (0, 1]"),
])
def test_bad_recipes_are_one_line(extra, expected):
    assert expected in error_of(sgd_step(**extra))


def test_model_names_of_default_recipes_do_not_change():
    # Model files hash training_identity(); options added later must not rename older models.
    cfg = parse_config(BASE, Path("a.json"))
    assert cfg.training_identity()["params"] == {"lr": 0.001, "batch_size": 32, "epochs": 2, "patience": 1}
    sgd = parse_config(edited("params.optimizer", "sgd"), Path("a.json"))
    assert sgd.training_identity()["params"]["optimizer"] == "sgd"
    assert "momentum" not in sgd.training_identity()["params"]


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"_note": "caf\u00e9", "seeds": [0]}'.encode("latin-1"))
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: not a UTF-8 text file (byte 14 is 0xe9)")


def test_training_identity_ignores_the_prune_section():
    a = parse_config(BASE, Path("a.json"))
    b = parse_config(edited("prune.params.type", "l1"), Path("b.json"))
    assert a.training_identity() == b.training_identity()
    c = parse_config(edited("params.lr", 0.01), Path("c.json"))
    assert a.training_identity() != c.training_identity()


@pytest.mark.parametrize("content, expected", [
    (None, "missing.json: config file not found"),
    ('{"params": {"lr": "abc"}}', 'params.lr must be a positive number, got "abc"'),
    ('{"model": {"type": "decoder"}}', "model.type decoder cannot read data.dataset mnist (the decoder reads text)"),
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


def test_pruning_method_options_default_to_the_paper():
    params = parse_config(BASE, Path("x.json")).prune.params
    assert (params.greedy, params.target, params.allocation) == ("conditional", "layer", "uniform")
    raw = edited("prune.params", {"type": "cka", "rate": 0.2, "greedy": "independent", "target": "next",
                                  "allocation": "global"})
    params = parse_config(raw, Path("x.json")).prune.params
    assert (params.greedy, params.target, params.allocation) == ("independent", "next", "global")
    for criterion in ("apoz", "mean_activation", "taylor"):
        assert parse_config(edited("prune.params.type", criterion), Path("x.json")).prune.params.type == criterion


CNN = edited("model", {"type": "cnn", "conv_channels": [6, 16], "fc_sizes": [32]})


@pytest.mark.parametrize("params, base, expected", [
    ({"greedy": "lazy"}, BASE, "prune.params.greedy must be one of conditional, independent"),
    ({"target": "input"}, BASE, "prune.params.target must be one of layer, next, refit, logits"),
    ({"allocation": "even"}, BASE, "prune.params.allocation must be one of uniform, global"),
    ({"greedy": "independent", "type": "l1"}, BASE, 'prune.params.greedy applies to type "cka" only'),
    ({"target": "logits"}, BASE, 'prune.params.target "logits" needs engine "reference"'),
    ({"target": "next", "debiased": True}, BASE, 'prune.params.target "next" with debiased CKA needs engine "reference"'),
    ({"target": "next", "hook": "nonlinearity"}, BASE, 'prune.params.hook applies to target "layer" only'),
    ({"allocation": "global", "type": "l2"}, BASE, 'prune.params.allocation "global" compares CKA damage'),
    ({"allocation": "global", "rate": ..., "stop_cka": 0.9}, BASE, 'prune.params.allocation "global" spends the budget of rate'),
    ({"allocation": "global", "target": "logits", "engine": "reference"}, BASE, 'needs target "layer" or "next"'),
    ({"target": "next", "engine": "reference", "modules": [0, 1, 2]}, CNN, 'prune.params.target "next" needs a Linear layer fed by each pruned layer\'s output; layer 0 has none'),
    ({"target": "next"}, CNN, 'prune.params.target "next" on conv layer 1 needs engine "reference"'),
])
def test_pruning_method_combinations_are_checked(params, base, expected):
    raw = json.loads(json.dumps(base))
    params = dict(params)
    raw["prune"]["modules"] = params.pop("modules", [0, 1] if base is BASE else [1, 2])
    raw["prune"]["params"].update({k: v for k, v in params.items() if v is not ...})
    for key in [k for k, v in params.items() if v is ...]:
        del raw["prune"]["params"][key]
    assert expected in error_of(raw)


def test_next_target_is_valid_where_a_linear_layer_follows():
    raw = json.loads(json.dumps(CNN))
    raw["prune"]["params"].update({"target": "next", "engine": "reference"})
    raw["prune"]["modules"] = [1, 2]
    assert parse_config(raw, Path("x.json")).prune.params.target == "next"
    raw["prune"]["params"]["engine"] = "fast"
    raw["prune"]["modules"] = [2]
    assert parse_config(raw, Path("x.json")).prune.modules == (2,)


ZOO = {
    "model": {"type": "resnet", "depth": 20},
    "data": {"dataset": "fashion-mnist"},
    "prune": {"strategy": "one_shot", "params": {"type": "tp_l1", "rate": 0.5}},
}


def test_zoo_models_default_to_the_datasets_shape_and_prune_every_group():
    cfg = parse_config(ZOO, Path("x.json"))
    assert (cfg.model.type, cfg.model.depth, cfg.model.width, cfg.model.input_shape) == ("resnet", 20, 16, (1, 28, 28))
    assert cfg.model.uses_torch_pruning and cfg.prune.modules == () and cfg.prune.params.allocation == "uniform"
    vgg = parse_config(edited("data.dataset", "cifar10", edited("model", {"type": "vgg"}, ZOO)), Path("x.json")).model
    assert (vgg.depth, vgg.width, vgg.input_shape) == (16, 64, (3, 32, 32))
    assert parse_config(edited("prune.params.allocation", "global", ZOO), Path("x.json")).prune.params.allocation == "global"
    assert {"depth", "width"} <= set(cfg.training_identity()["model"])
    assert not {"depth", "width"} & set(parse_config(BASE, Path("x.json")).training_identity()["model"])
    # A model section written back from the dataclass (as export does) reads back the same.
    for model in (cfg.model, parse_config(BASE, Path("x.json")).model):
        raw = {"model": json.loads(json.dumps(asdict(model))), "data": ZOO["data"]}
        again = parse_config(raw, Path("x.json")).model
        assert again == model


@pytest.mark.parametrize("path, value, expected, base", [
    ("model.depth", 21, "model.depth must be 6n + 2 for n >= 1 (20, 32, 56, 110), got 21", ZOO),
    ("model.hidden_sizes", [8], "model.hidden_sizes does not apply to a resnet model", ZOO),
    ("model", {"type": "vgg", "depth": 12}, "model.depth must be one of 11, 13, 16, 19, got 12", ZOO),
    ("model", {"type": "lenet5", "width": 2}, "model.width does not apply to a lenet5 model", ZOO),
    ("model.depth", 20, "model.depth applies to the zoo models only (resnet, vgg, resmlp, vit, decoder)", BASE),
    ("prune.params.type", "l1", "prune.params.type must be cka or one of tp_l1, tp_bn, tp_taylor, tp_random for a resnet model", ZOO),
    ("prune.params.type", "tp_bn", "prune.params.type tp_bn needs a Torch-Pruning model (model.type resnet, vgg, lenet5, resmlp, vit, decoder)", BASE),
    ("prune.params.shrink", True, "prune.params.shrink does not apply to a resnet model", ZOO),
    ("prune.params.target", "next", "prune.params.target does not apply to a resnet model", ZOO),
    ("prune.modules", [0], "prune.modules does not apply to a resnet model", ZOO),
    ("prune.params", {"type": "cka", "stop_cka": 0.9}, "prune.params.stop_cka does not apply to a resnet model", ZOO),
    ("prune.params.hook", "nonlinearity", 'prune.params.hook must be module for a resnet model, got "nonlinearity"', ZOO),
    ("prune.params.compensate", "bias", 'prune.params.compensate "bias" needs consumers with a bias; resnet '
                                        'convolutions have none (BatchNorm follows): use "lstsq"', ZOO),
    ("model", {"type": "vgg", "depth": 11}, "vgg convolutions have none", edited("prune.params.compensate", "bias", ZOO)),
])
def test_zoo_config_errors_are_one_line(path, value, expected, base):
    assert expected in error_of(edited(path, value, base))


def test_zoo_models_take_compensation_bias_where_every_consumer_has_a_bias():
    lstsq = parse_config(edited("prune.params.compensate", "lstsq", ZOO), Path("x.json")).prune.params
    assert (lstsq.compensate, lstsq.recalibrate_bn) == ("lstsq", True)
    joint = edited("prune.params", {"type": "tp_l1", "rate": 0.5, "allocation": "global", "compensate": "lstsq"}, ZOO)
    assert parse_config(joint, Path("x.json")).prune.params.allocation == "global"  # compensated after the whole pass
    lenet = edited("model", {"type": "lenet5"}, edited("prune.params.compensate", "bias", ZOO))
    assert parse_config(lenet, Path("x.json")).prune.params.compensate == "bias"


BN_CNN = edited("model", {"type": "cnn", "conv_channels": [6], "fc_sizes": [16], "batch_norm": True, "dropout_rate": 0.5})
DROPOUT = edited("model.dropout_rate", 0.5)


def budget(base=BASE, **params):
    """``base``'s prune params with the budget keys ``params``, parsed."""
    raw = edited("prune.params", {**base["prune"]["params"], **params}, base)
    return parse_config(raw, Path("x.json")).prune.params


def test_the_retraining_budget_defaults_to_the_paper_and_to_recalibrating_batch_norm():
    plain = budget()
    assert (plain.retrain_epochs, plain.retrain_lr, plain.retrain_dropout, plain.recalibrate_bn) == (None, None, None, False)
    assert plain.retrains and plain.retraining(parse_config(BASE, Path("x.json")).params) == TrainParams(
        lr=0.001, batch_size=32, epochs=2, patience=1)
    assert budget(BN_CNN).recalibrate_bn is True and budget(BN_CNN, recalibrate_bn=False).recalibrate_bn is False
    resnet = edited("prune", {"params": {"type": "tp_l1", "rate": 0.2}}, edited("model", {"type": "resnet"}))
    assert parse_config(resnet, Path("x.json")).prune.params.recalibrate_bn is True
    lenet = edited("prune", {"params": {"type": "tp_l1", "rate": 0.2}}, edited("model", {"type": "lenet5"}))
    assert parse_config(lenet, Path("x.json")).prune.params.recalibrate_bn is False


def test_the_retraining_recipe_runs_exactly_retrain_epochs_at_retrain_lr():
    training = parse_config(BASE, Path("x.json")).params
    params = budget(DROPOUT, retrain_epochs=7, retrain_lr=0.01, retrain_dropout=0.0)
    assert (params.retrain_epochs, params.retrain_lr, params.retrain_dropout) == (7, 0.01, 0.0)
    assert params.retraining(training) == TrainParams(lr=0.01, batch_size=32, epochs=7, patience=None)
    assert budget(retrain_lr=0.01).retraining(training) == TrainParams(lr=0.01, batch_size=32, epochs=2, patience=1)
    none = budget(retrain_epochs=0)
    assert none.retrain_epochs == 0 and not none.retrains


def test_budget_values_equal_to_the_trainings_are_the_default():
    # The same retraining as leaving them out: the same run (src.results keys the identity on them).
    same = budget(DROPOUT, retrain_lr=0.001, retrain_dropout=0.5, recalibrate_bn=False)
    assert same == budget(DROPOUT)


def test_retrain_dropout_applies_to_a_cnn_with_dropout_in_its_head():
    assert budget(BN_CNN, retrain_dropout=0.1).retrain_dropout == 0.1


@pytest.mark.parametrize("params, base, expected", [
    ({"retrain_epochs": -1}, BASE, "prune.params.retrain_epochs must be an integer >= 0 (0: no retraining), got -1"),
    ({"retrain_epochs": 1.5}, BASE, "prune.params.retrain_epochs must be an integer >= 0"),
    ({"retrain_epochs": True}, BASE, "prune.params.retrain_epochs must be an integer >= 0"),
    ({"retrain_epochs": 2, "retrain": False}, BASE, "prune.params.retrain_epochs needs retraining, but retrain is false"),
    ({"retrain_epochs": 0, "retrain": "rewind", "rewind_epoch": 1}, BASE,
     'prune.params.retrain_epochs must be >= 1 with retrain "rewind" (0 means no retraining)'),
    ({"retrain_epochs": 1}, edited("params.warmup_epochs", 1), "prune.params.retrain_epochs must be > params.warmup_epochs (1)"),
    ({"retrain_lr": 0}, BASE, "prune.params.retrain_lr must be a positive number, got 0"),
    ({"retrain_lr": "fast"}, BASE, "prune.params.retrain_lr must be a positive number"),
    ({"retrain_lr": 0.01, "retrain": False}, BASE, "prune.params.retrain_lr applies to retraining, but there is none"),
    ({"retrain_lr": 0.01, "retrain_epochs": 0}, BASE, "prune.params.retrain_lr applies to retraining, but there is none"),
    ({"retrain_dropout": 1.0}, DROPOUT, "prune.params.retrain_dropout must be a number in [0, 1), got 1.0"),
    ({"retrain_dropout": -0.1}, DROPOUT, "prune.params.retrain_dropout must be a number in [0, 1)"),
    ({"retrain_dropout": 0.2}, BASE, "prune.params.retrain_dropout needs a model with dropout"),
    ({"retrain_dropout": 0.2, "retrain_epochs": 0}, DROPOUT, "prune.params.retrain_dropout applies to retraining"),
    ({"recalibrate_bn": "yes"}, BASE, "prune.params.recalibrate_bn must be true or false"),
    ({"recalibrate_bn": True}, BASE, "prune.params.recalibrate_bn needs a model with BatchNorm; this mlp has none"),
])
def test_bad_budgets_are_one_line_naming_the_key(params, base, expected):
    assert expected in error_of(edited("prune.params", {**base["prune"]["params"], **params}, base))


@pytest.mark.parametrize("model", [
    {"type": "mlp", "hidden_sizes": [8], "dropout_rate": 0.5}, {"type": "mlp", "hidden_sizes": [], "dropout_rate": 0.5},
    {"type": "mlp", "hidden_sizes": [8]}, {"type": "cnn", "conv_channels": [4], "dropout_rate": 0.5},
    {"type": "cnn", "conv_channels": [4], "fc_sizes": [8], "dropout_rate": 0.5, "batch_norm": True},
    {"type": "resnet", "depth": 8, "width": 4}, {"type": "vgg", "depth": 11, "width": 8}, {"type": "lenet5"},
])
def test_batch_norm_and_dropout_are_known_from_the_config_as_built(model):
    from torch import nn

    from src.models import build_model
    cfg = parse_config({"model": model, "data": {"dataset": "mnist-5k"}}, Path("x.json")).model
    built = list(build_model(cfg).modules())
    assert cfg.has_batch_norm == any(isinstance(m, nn.BatchNorm2d) for m in built)
    assert cfg.has_dropout == any(isinstance(m, nn.Dropout) for m in built)


def prune_params(**values):
    """BASE with a prune section of ``values`` over {type cka, rate 0.2}; a value ... leaves its key out."""
    params = {key: value for key, value in {"type": "cka", "rate": 0.2, **values}.items()
              if key != "strategy" and value is not ...}
    return edited("prune", {"strategy": values.get("strategy", "iterative"), "params": params})


def test_compensation_and_sweep_keys():
    params = parse_config(prune_params(compensate="lstsq", compensate_ridge=0.01), Path("x.json")).prune.params
    assert (params.compensate, params.compensate_ridge) == ("lstsq", 0.01)
    sweep = parse_config(prune_params(strategy="one_shot", rate=..., rates=[0.5, 0.9]), Path("x.json")).prune.params
    assert sweep.rates == (0.5, 0.9) and sweep.iterations == 2 and sweep.rate is None
    spread = parse_config(prune_params(strategy="one_shot", rate=..., rates=[0.5], allocation="global"),
                          Path("x.json")).prune.params
    assert spread.allocation == "global" and spread.rates == (0.5,)  # each point spends its rate's budget
    obs = parse_config(prune_params(type="obs", compensate="bias"), Path("x.json")).prune.params
    assert obs.type == "obs" and obs.compensate == "bias"
    assert parse_config(prune_params(target="refit"), Path("x.json")).prune.params.target == "refit"


@pytest.mark.parametrize("raw, expected", [
    (prune_params(compensate="ridge"), "prune.params.compensate must be one of none, bias, lstsq"),
    (prune_params(compensate="lstsq", compensate_ridge=-1), "prune.params.compensate_ridge must be a number >= 0"),
    (prune_params(compensate_ridge=0.1), 'prune.params.compensate_ridge applies to compensate "lstsq"'),
    (prune_params(compensate="bias", allocation="global"), 'prune.params.compensate needs allocation "uniform"'),
    (prune_params(compensate="lstsq", retrain="rewind", rewind_epoch=1),
     'prune.params.compensate does not combine with retrain "rewind"'),
    (prune_params(rate=..., strategy="one_shot", rates=[0.9, 0.5]),
     "prune.params.rates must be an increasing list of numbers in (0, 1)"),
    (prune_params(rate=..., strategy="one_shot", rates=[0.5, 1.0]),
     "prune.params.rates must be an increasing list of numbers in (0, 1)"),
    (prune_params(rate=..., rates=[0.5]), 'prune.params.rates applies to strategy "one_shot" only'),
    (prune_params(strategy="one_shot", rates=[0.5]), "needs exactly one of rate, rates and stop_cka"),
    (prune_params(rate=..., strategy="one_shot", rates=[0.5], iterations=1),
     "prune.params.iterations does not apply with rates"),
    (prune_params(target="refit", kernel="rbf", engine="reference"), 'prune.params.target "refit" needs kernel "linear"'),
    (prune_params(type="obs", target="next"), 'prune.params.target does not apply to type "obs"'),
])
def test_bad_compensation_and_sweep_keys(raw, expected):
    assert expected in error_of(raw)


def test_compensation_keys_at_their_defaults_keep_a_runs_identity():
    plain = parse_config(prune_params(), Path("x.json")).prune.identity()
    same = parse_config(prune_params(compensate="none"), Path("x.json")).prune.identity()
    assert plain == same and "compensate" not in plain and "rates" not in plain
    assert parse_config(prune_params(compensate="bias"), Path("x.json")).prune.identity() != plain


def test_a_pass_is_sequential_with_compensation_or_obs_only():
    assert not PruneParams().sequential and not PruneParams(type="l1").sequential
    assert PruneParams(compensate="bias").sequential and PruneParams(compensate="lstsq").sequential
    assert PruneParams(type="obs").sequential


def _committed_records():
    """(experiment, run description) of every result record committed under docs/, the budget
    study's packed ones included."""
    docs = ROOT / "docs"
    for path in sorted(docs.glob("*/records/*/*.json")):
        record = json.loads(path.read_text())
        yield record["experiment"], record["run"]["description"]
    with tarfile.open(docs / "budget" / "records.tar.xz") as packed:
        for member in packed.getmembers():
            if member.isfile() and member.name.endswith(".json"):
                record = json.loads(packed.extractfile(member).read())
                yield record["experiment"], record["run"]["description"]


def test_committed_configs_keep_the_run_identity_of_their_committed_records():
    """A config read now describes the run its committed records were made by (the model's hash aside)."""
    described, compared = {}, 0
    for experiment, description in _committed_records():
        if experiment not in described:
            described[experiment] = json.loads(json.dumps(config_description(load_config(ROOT / "config" / f"{experiment}.json"))))
        assert {k: v for k, v in description.items() if k != "model_sha256"} == described[experiment], experiment
        compared += 1
    assert compared > 900 and len(described) > 100  # ex1-fmnist, study and budget records all read


@pytest.mark.parametrize("model, recalibrate", [({"type": "mlp"}, False),
                                                ({"type": "cnn", "conv_channels": [4], "batch_norm": True}, True)])
def test_an_unset_prune_key_takes_the_one_default_for_the_model(model, recalibrate):
    raw = {"model": model, "prune": {"params": {"rate": 0.5}}, "seeds": [0]}
    cfg = parse_config(raw, Path("x.json"))
    assert cfg.prune.params == replace(PruneParams.defaults_for(cfg.model), rate=0.5)
    assert cfg.prune.params.recalibrate_bn is recalibrate
    assert "recalibrate_bn" not in PruneParams(rate=0.5).identity()  # False: left out of identities, as before


TEXT = {"model": {"type": "decoder"}, "data": {"dataset": "python-stdlib"}}
IMAGES = {"model": {"type": "resmlp"}, "data": {"dataset": "fashion-mnist"}}


def test_residual_models_default_their_sizes_and_keep_them_out_of_older_identities():
    resmlp = parse_config(IMAGES, Path("x.json"))
    assert (resmlp.model.depth, resmlp.model.width, resmlp.model.mlp_ratio, resmlp.model.heads) == (12, 64, 1, None)
    vit = parse_config(edited("model", {"type": "vit"}, IMAGES), Path("x.json")).model
    assert (vit.depth, vit.width, vit.heads, vit.patch_size, vit.mlp_ratio, vit.input_shape) == (12, 64, 4, 7, 2, (1, 28, 28))
    decoder = parse_config(TEXT, Path("x.json"))
    assert (decoder.model.depth, decoder.model.width, decoder.model.heads, decoder.model.mlp_ratio) == (8, 128, 4, 4)
    assert (decoder.model.context, decoder.model.input_shape, decoder.model.output_size) == (128, (128,), 256)
    assert decoder.data.context == 128 and parse_config(edited("data.context", 64, TEXT), Path("x.json")).model.context == 64
    assert {"heads", "patch_size", "context", "mlp_ratio"}.isdisjoint(parse_config(ZOO, Path("x.json")).training_identity()["model"])
    assert "mlp_ratio" in resmlp.training_identity()["model"] and "heads" not in resmlp.training_identity()["model"]
    # A model section written back from the dataclass reads back the same.
    raw = {"model": json.loads(json.dumps(asdict(vit))), "data": IMAGES["data"]}
    assert parse_config(raw, Path("x.json")).model == vit


@pytest.mark.parametrize("path, value, expected, base", [
    ("model.type", "resmlp", "model.type resmlp cannot read data.dataset python-stdlib (it reads images)", TEXT),
    ("model.type", "mlp", "model.type mlp cannot read the text dataset python-stdlib (the decoder does)", TEXT),
    ("model.heads", 3, "model.heads must divide model.width (128), got 3", TEXT),
    ("model.depth", 0, "model.depth must be a positive integer, got 0", TEXT),
    ("model.input_shape", [128], "model.input_shape does not apply to a decoder model (it takes depth, width, heads, mlp_ratio)", TEXT),
    ("model.heads", 2, "model.heads does not apply to a resmlp model (it takes depth, width, mlp_ratio, input_shape, output_size)", IMAGES),
    ("model", {"type": "vit", "patch_size": 5}, "model.patch_size must divide the image's height and width [28, 28], got 5", IMAGES),
    ("model", {"type": "mlp", "mlp_ratio": 2}, "model.mlp_ratio applies to the residual models only (resmlp, vit, decoder)", IMAGES),
    ("data.context", 64, "data.context applies to the text datasets only (python-stdlib)", IMAGES),
    ("data.context", 1, "data.context must be an integer >= 2, got 1", TEXT),
    ("data.val_split", 0.5, "data.val_split must be a number in (0, 0.5), got 0.5", TEXT),
    ("params.augment", True, "params.augment applies to images only, not to the text dataset python-stdlib", TEXT),
    ("prune", {"strategy": "one_shot", "params": {"type": "tp_l1", "rate": 0.5}},
     'prune.strategy "one_shot" is not supported for a decoder: prune it with "depth"', TEXT),
])
def test_residual_model_and_text_config_errors_are_one_line(path, value, expected, base):
    assert expected in error_of(edited(path, value, base))


def test_write_configs_writes_one_top_level_section_per_line_that_reads_back(tmp_path):
    raw = {"_comment": "a grid's config", "model": {"type": "mlp"}, "seeds": [0, 1]}
    write_configs({Path("cell", "cka.json"): raw}, tmp_path)
    text = (tmp_path / "cell" / "cka.json").read_text()
    assert text == '{\n  "_comment": "a grid\'s config",\n  "model": {"type": "mlp"},\n  "seeds": [0, 1]\n}\n'
    assert json.loads(text) == raw
