"""The result record: round trip, schema check, run identity."""

import dataclasses
import json
import math

import pytest
import torch

from src import results
from src.config import load_config
from src.errors import UserError
from src.provenance import Provenance
from src.results import (IterationRecord, LayerInfo, LayerStep, RetrainSummary, RunIdentity, SeedResult,
                         identity_changes, run_identity)
from tests.conftest import tiny_raw

PROVENANCE = Provenance(commit="0" * 40, dirty=False, python="3.11.2", torch="2.13.0", numpy="2.1.0",
                        torch_pruning="1.6.1", device="cpu", threads=1)


def metrics(test_acc: float) -> dict:
    return {"train_loss": 0.1, "train_acc": 0.99, "val_loss": 0.2, "val_acc": 0.97, "test_loss": 0.2, "test_acc": test_acc}


def a_result(**changes) -> SeedResult:
    step = LayerStep(index=0, alive_before=10, alive_after=8, removed=(3, 1), scores=(0.99, 0.97), cka=(0.99, 0.97),
                     seconds=0.01, engine="fast")
    record = IterationRecord(iteration=1, layers=(step, LayerStep(1, 6, 6, (), (), (), 0.0, "fast", "no variation")),
                             after_prune=metrics(0.8), after_retrain=metrics(math.nan),
                             retrain=RetrainSummary(epochs=2, best_epoch=1, diverged=False, seconds=0.5),
                             provenance=PROVENANCE)
    fields = dict(run=RunIdentity.of({"model_sha256": "ab", "prune": {"rate": (0.2,)}}), experiment="demo/cka", seed=3,
                  criterion="cka", strategy="iterative", model_file="models/m.pt",
                  layers=(LayerInfo(0, "hidden.0.layer", "linear", 10), LayerInfo(1, "hidden.1.layer", "linear", 6)),
                  baseline=metrics(0.9), planned_iterations=2, iterations=(record,))
    return SeedResult(**{**fields, **changes})


def test_a_result_survives_the_file_unchanged(tmp_path):
    result = a_result()
    path = results.save(result, tmp_path)
    assert path == tmp_path / "3.json"
    back = results.load(path)
    assert results.same(back, result)  # NaN compares equal here, unlike ==
    assert back.iterations[0].layers[1].skipped == "no variation" and back.iterations[0].retrain.epochs == 2
    assert back.run == result.run and isinstance(back.iterations[0].layers[0].removed, tuple)
    assert back.iterations[0].provenance == PROVENANCE
    assert json.loads(path.read_text())["complete"] is False


def test_completeness_and_alive_counts_follow_the_iterations():
    result = a_result()
    assert not result.complete and result.alive() == {0: 8, 1: 6} and result.alive(0) == {0: 10, 1: 6}
    assert a_result(planned_iterations=1).complete
    assert result.removed_up_to(1, 0) == {1, 3} and result.test_acc(0, retrained=False) == 0.9
    assert result.test_acc(1, retrained=False) == 0.8 and result.test_acc(2, retrained=True) is None


def test_a_schema_2_record_is_read_without_provenance(tmp_path):
    raw = a_result().to_dict()
    raw["schema"] = 2
    del raw["iterations"][0]["provenance"]
    path = tmp_path / "3.json"
    path.write_text(json.dumps(raw))
    back = results.load(path)
    assert back.iterations[0].provenance is None and back.schema == results.SCHEMA_VERSION
    assert back.iterations[0].after_prune == a_result().iterations[0].after_prune


def test_a_run_whose_retraining_diverged_is_complete_where_it_stopped():
    result = a_result(planned_iterations=5)
    assert result.diverged_at is None and not result.complete
    last = result.iterations[0]
    diverged = result.with_iteration(IterationRecord(
        iteration=2, layers=last.layers, after_prune=metrics(0.7), after_retrain=metrics(0.1),
        retrain=RetrainSummary(epochs=1, best_epoch=0, diverged=True, seconds=0.1)))
    assert diverged.diverged_at == 2 and diverged.complete and len(diverged.iterations) < 5


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.pop("schema"), "result schema 1, this version reads schemas 2, 3, 4, 5"),
    (lambda raw: raw.update(schema=6), "result schema 6"),
    (lambda raw: raw["iterations"][0].pop("after_prune"), "not a result record"),
    (lambda raw: raw.update(colour="red"), "not a result record"),
])
def test_a_file_of_another_schema_is_refused_in_one_line(tmp_path, edit, message):
    raw = a_result().to_dict()
    edit(raw)
    path = tmp_path / "3.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(UserError) as err:
        results.load(path)
    assert str(path) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_identity_changes_name_each_changed_key():
    old = {"prune": {"params": {"type": "cka", "rate": 0.25}, "modules": [0, 1]}, "model_sha256": "a"}
    new = {"prune": {"params": {"type": "l1", "rate": 0.25}, "modules": [0]}, "model_sha256": "a"}
    assert identity_changes(old, new) == ['prune.modules: [0, 1] -> [0]', 'prune.params.type: "cka" -> "l1"']


def test_run_identity_covers_model_training_and_prune_but_not_iterations_or_data_location(write_config, tmp_path):
    model = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, model)
    base = run_identity(load_config(write_config("a")), model)
    prune = {"strategy": "iterative", "params": {"type": "cka", "iterations": 7, "rate": 0.25}, "modules": [0, 1]}
    assert run_identity(load_config(write_config("b", prune=prune)), model) == base
    moved = {"dataset": "mnist-5k", "root": "/scratch/data", "val_split": 0.5}  # mnist-5k has a fixed split
    assert run_identity(load_config(write_config("c", data=moved)), model) == base
    for changed in (write_config("d", prune={**prune, "params": {**prune["params"], "rate": 0.5}}),
                    write_config("e", params={"lr": 0.01, "batch_size": 128, "epochs": 3, "patience": 2})):
        assert run_identity(load_config(changed), model).digest != base.digest
    torch.save({"w": torch.zeros(2)}, model)
    other_model = run_identity(load_config(write_config("a")), model)
    assert other_model.digest != base.digest and other_model.config_digest == base.config_digest


# Keys added after runs were made (the budget, compensation, one_shot sweeps).
BUDGET_KEYS = ("retrain_epochs", "retrain_lr", "retrain_dropout", "recalibrate_bn", "compensate", "compensate_ridge",
               "rates")


def description_before_the_budget(cfg) -> dict:
    """What config_description gave before the budget keys existed: asdict of the prune section without them."""
    prune = dataclasses.asdict(cfg.prune)
    del prune["params"]["iterations"]
    for key in BUDGET_KEYS:
        del prune["params"][key]
    return {"training": cfg.training_identity(), "prune": prune}


@pytest.mark.parametrize("params", [{}, {"retrain_lr": 0.002, "recalibrate_bn": False}],
                         ids=["absent", "given-at-default"])
def test_the_budget_at_its_defaults_keeps_the_run_identity(write_config, tmp_path, params):
    model = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, model)
    raw = tiny_raw()["prune"]
    cfg = load_config(write_config("a", prune={**raw, "params": {**raw["params"], **params}}))
    old = RunIdentity.of({"model_sha256": results.file_sha256(model), **description_before_the_budget(cfg)})
    assert run_identity(cfg, model) == old


@pytest.mark.parametrize("params, change", [
    ({"retrain_epochs": 1}, "prune.params.retrain_epochs: null -> 1"),
    ({"retrain_lr": 0.0005}, "prune.params.retrain_lr: null -> 0.0005"),
    ({"retrain_dropout": 0.0}, "prune.params.retrain_dropout: null -> 0.0"),
])
def test_a_budget_that_changes_retraining_is_another_run(write_config, tmp_path, params, change):
    model = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, model)
    raw = tiny_raw()["prune"]
    base = run_identity(load_config(write_config("a")), model)
    other = run_identity(load_config(write_config("b", prune={**raw, "params": {**raw["params"], **params}})), model)
    assert other.digest != base.digest and identity_changes(base.description, other.description) == [change]


def test_batch_norm_recalibration_by_default_is_another_run_than_before_it_existed(write_config, tmp_path):
    model = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, model)
    cnn = {"type": "cnn", "conv_channels": [4], "fc_sizes": [8], "batch_norm": True}
    recalibrated = load_config(write_config("a", model=cnn))
    stale = load_config(write_config("b", model=cnn, prune={**tiny_raw()["prune"], "params": {
        **tiny_raw()["prune"]["params"], "recalibrate_bn": False}}))
    sha = results.file_sha256(model)
    assert run_identity(stale, model) == RunIdentity.of({"model_sha256": sha, **description_before_the_budget(stale)})
    assert identity_changes(run_identity(stale, model).description, run_identity(recalibrated, model).description) == [
        "prune.params.recalibrate_bn: null -> true"]


def test_sizes_and_epochs_retrained_survive_the_file_and_older_records_read_without_sizes(tmp_path):
    record = dataclasses.replace(a_result().iterations[0], parameters=1234, macs=5678)
    result = a_result(iterations=(record,), baseline_parameters=9999, baseline_macs=8888)
    back = results.load(results.save(result, tmp_path))
    assert results.same(back, result) and back.iterations[0].parameters == 1234 and back.baseline_macs == 8888
    assert back.iterations[0].epochs_retrained == 2
    assert dataclasses.replace(record, retrain=None).epochs_retrained == 0
    raw = result.to_dict()
    raw["schema"] = 3
    for key in ("baseline_parameters", "baseline_macs"):
        del raw[key]
    for key in ("parameters", "macs"):
        del raw["iterations"][0][key]
    (tmp_path / "4.json").write_text(json.dumps(raw))
    old = results.load(tmp_path / "4.json")
    assert old.baseline_parameters is None and old.iterations[0].parameters is None
    assert old.schema == results.SCHEMA_VERSION


def test_a_layers_compensation_round_trips_and_older_records_read_without_it(tmp_path):
    fit = results.ConsumerFit(consumer="hidden.1.layer", error_before=0.4, error_after=0.1)
    step = dataclasses.replace(a_result().iterations[0].layers[0], compensation=fit)
    result = a_result(iterations=(dataclasses.replace(a_result().iterations[0], layers=(step,)),))
    back = results.load(results.save(result, tmp_path))
    assert results.same(back, result) and back.iterations[0].layers[0].compensation == fit
    raw = a_result().to_dict()
    raw["schema"] = 4
    for layer in raw["iterations"][0]["layers"]:
        del layer["compensation"]
    (tmp_path / "4.json").write_text(json.dumps(raw))
    assert all(s.compensation is None for s in results.load(tmp_path / "4.json").iterations[0].layers)


def test_a_groups_consumer_fits_round_trip_as_a_tuple_and_a_single_fit_stays_one(tmp_path):
    fits = (results.ConsumerFit("layer1.0.conv1", 0.5, 0.2), results.ConsumerFit("fc", 0.3, float("nan")))
    single = results.ConsumerFit("hidden.1.layer", 0.4, 0.1)
    first = a_result().iterations[0]
    steps = tuple(dataclasses.replace(first.layers[0], compensation=fit) for fit in (fits, single))
    result = a_result(iterations=(dataclasses.replace(first, layers=steps),))
    back = results.load(results.save(result, tmp_path))
    assert results.same(back, result)
    group, layer = back.iterations[0].layers
    assert isinstance(group.compensation, tuple) and group.fits[0] == fits[0] and group.fits[1].consumer == "fc"
    assert layer.compensation == single and layer.fits == (single,) and first.layers[0].fits == ()
    raw = json.loads(results.result_path(tmp_path, result.seed).read_text())["iterations"][0]["layers"]
    assert isinstance(raw[0]["compensation"], list) and isinstance(raw[1]["compensation"], dict)
    # A checkpoint stores to_dict() as it is, the group's fits a tuple: read back as from the file.
    assert results.same(results.SeedResult.from_dict(result.to_dict()), result)


def test_sweep_points_keep_their_rate_and_count_from_the_trained_model(tmp_path):
    first = a_result().iterations[0]
    second = dataclasses.replace(first, iteration=2, rate=0.5, layers=(
        LayerStep(0, 10, 5, (0, 1, 3, 7, 9), (None,) * 5, (), 0.0, "fast"), LayerStep(1, 6, 3, (0, 1, 2), (None,) * 3, (), 0.0, "fast")))
    sweep = a_result(iterations=(dataclasses.replace(first, rate=0.2), second))
    back = results.load(results.save(sweep, tmp_path))
    assert results.same(back, sweep) and [it.rate for it in back.iterations] == [0.2, 0.5] and back.sweep
    # point 2 was pruned from the trained model: point 1's removals are not in it
    assert back.alive(2) == {0: 5, 1: 3} and back.alive(1) == {0: 8, 1: 6} and back.alive(0) == {0: 10, 1: 6}
    assert back.removed_up_to(2, 0) == {0, 1, 3, 7, 9} and back.removed_up_to(1, 0) == {1, 3}
    assert [it.iteration for it in back.lineage()] == [2]
    cumulative = a_result(iterations=(first, dataclasses.replace(second, rate=None)))
    assert not cumulative.sweep and cumulative.removed_up_to(2, 0) == {0, 1, 3, 7, 9}
    assert [it.iteration for it in cumulative.lineage()] == [1, 2]


def test_a_schema_4_record_is_read_with_no_sweep_rates(tmp_path):
    raw = a_result().to_dict()
    raw["schema"] = 4
    del raw["iterations"][0]["rate"]
    (tmp_path / "3.json").write_text(json.dumps(raw))
    old = results.load(tmp_path / "3.json")
    assert old.iterations[0].rate is None and not old.sweep and old.alive() == {0: 8, 1: 6}
