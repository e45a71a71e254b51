"""Which results a report reads and pairs: the run of a folder, pairs by trained model, diverged seeds."""

import json
import os

import pytest

from src import results
from src.config import load_config
from src.errors import UserError
from src.report import build_report
from src.report.records import load_experiment, pair_seeds
from tests.conftest import tiny_raw
from tests.report_helpers import runs, simple, write_result  # noqa: F401 (fixture)


def test_partial_and_missing_seeds_are_reported_not_fatal(runs):
    cka, l1 = runs
    (cka / "3.json").write_text('{"experiment": "demo/cka", "seed"')  # cut short
    (cka / "notes.json").write_text("{}")  # not a seed file: ignored
    report = build_report([cka, l1], config_root=None)
    notes = "\n".join(report.experiments[0].notes)
    assert "1 seed(s) complete: 0" in notes
    assert "seed 1: 1 of 2 iterations done" in notes
    assert "no results yet for seed(s) 2" in notes
    assert f"skipped {cka / '3.json'}: not a result file this version can read" in notes
    assert "notes.json" not in notes
    assert "seed 2: 0 of 2 iterations done" in "\n".join(report.experiments[1].notes)


def test_malformed_file_names_the_key(runs):
    cka, _ = runs
    raw = json.loads((cka / "0.json").read_text())
    del raw["iterations"][1]["after_prune"]["test_acc"]
    (cka / "0.json").write_text(json.dumps(raw))
    report = build_report([cka], config_root=None)
    assert [s.seed for s in report.experiments[0].seeds] == [1]
    assert any("iterations[2].after_prune.test_acc" in note for note in report.experiments[0].notes)


def _config(tmp_path, seeds=(0, 1, 5), rate=0.25):
    path = tmp_path / "config" / "demo" / "cka.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    prune = {"strategy": "iterative", "params": {"type": "cka", "iterations": 2, "rate": rate}, "modules": [0, 1]}
    path.write_text(json.dumps(tiny_raw(seeds=list(seeds), prune=prune)))
    return path


def test_planned_seeds_come_from_the_config(runs, tmp_path):
    cka, _ = runs
    _config(tmp_path)
    report = build_report([cka], config_root=tmp_path / "config")
    assert "no results yet for seed(s) 5" in report.experiments[0].notes


def test_a_folder_of_several_runs_without_a_config_is_refused_listing_them(runs):
    """Old code reported the run of the newest file: a copy (new mtimes) could change what a report showed."""
    cka, _ = runs
    write_result(cka, "demo/cka", "cka", 5, 0.5, [], rate=0.5)  # the config was edited since seeds 0 and 1
    os.utime(cka / "5.json", (1, 1))  # ... and it is older than them
    digests = {seed: results.load(cka / f"{seed}.json").run.config_digest for seed in (0, 5)}
    with pytest.raises(UserError) as err:
        build_report([cka], config_root=None)
    message = str(err.value)
    assert "\n" not in message and "results of 2 runs" in message
    assert f"run {digests[0]}: seed(s) 0, 1" in message and f"run {digests[5]}: seed(s) 5" in message


def test_a_folder_of_several_runs_reports_the_run_its_config_asks_for(tmp_path):
    """The run the config describes is reported, however old its files; the other run's seeds are named."""
    cfg = load_config(_config(tmp_path))
    folder = tmp_path / "output" / "demo" / "cka"
    described = results.RunIdentity.of({"model_sha256": "m0", **results.config_description(cfg)})
    write_result(folder, "demo/cka", "cka", 0, 0.9, [simple(1, 0.8, 0.85)], planned=1, run=described)
    write_result(folder, "demo/cka", "cka", 1, 0.9, [simple(1, 0.6, 0.65)], planned=1)  # another run, newer
    os.utime(folder / "0.json", (1, 1))
    experiment = build_report([folder], config_root=tmp_path / "config").experiments[0]
    assert [s.seed for s in experiment.seeds] == [0]
    assert experiment.run == results.RunIdentity.of(results.config_description(cfg)).config_digest
    assert any("seed(s) 1 are results of another run" in note for note in experiment.notes)
    with pytest.raises(UserError, match="none matches"):  # a config that describes neither run decides nothing
        load_experiment(folder, _config(tmp_path / "edited", rate=0.4).parents[1])


def test_seeds_pair_by_trained_model_not_by_number(runs, tmp_path):
    """Old code paired seed 1 of cka with seed 1 of l1 although they pruned different trained models."""
    report = build_report(list(runs), config_root=None)
    gaps = {g.iteration: g for g in report.gaps}
    assert gaps[1].after_prune.n == 1 and gaps[1].after_prune.mean == pytest.approx(0.10)  # seed 0 only
    assert all(t.seeds == (0,) for t in report.endpoints)
    notes = "\n".join(report.notes)
    assert "cka vs l1: seed(s) 1 of cka did not prune the same trained model as any seed of l1" in notes
    assert "seed(s) 1, 2 of l1 did not prune the same trained model as any seed of cka" in notes
    # The same model under another seed number pairs.
    a, b = tmp_path / "a", tmp_path / "b"
    write_result(a, "x/a", "cka", 0, 0.9, [simple(1, 0.8, 0.85)], planned=1, model_file="models/m.pt")
    write_result(b, "x/b", "l1", 7, 0.9, [simple(1, 0.7, 0.80)], planned=1, model_file="models/m.pt")
    pairing = pair_seeds(load_experiment(a), load_experiment(b))
    assert [(x.seed, y.seed) for x, y in pairing.pairs] == [(0, 7)] and not pairing.notes


def test_a_diverged_seed_is_named_and_enters_no_statistic(tmp_path):
    """Old code averaged a diverged seed's accuracy (a NaN network's: the share of one class) into every mean."""
    cka, l1 = tmp_path / "cka", tmp_path / "l1"
    for seed in (0, 1, 2):
        write_result(cka, "cka", "cka", seed, 0.9, [simple(1, 0.8, 0.85), simple(2, 0.7, 0.84)])
        write_result(l1, "l1", "l1", seed, 0.9, [simple(1, 0.8, 0.83), simple(2, 0.7, 0.80)])
    write_result(cka, "cka", "cka", 3, 0.9, [simple(1, 0.8, 0.85), simple(2, 0.7, 0.1, diverged=True)])
    write_result(l1, "l1", "l1", 3, 0.9, [simple(1, 0.8, 0.83), simple(2, 0.7, 0.80)])
    report = build_report([cka, l1], config_root=None)
    row = next(r for r in report.rows if (r.label, r.iteration) == ("cka", 2))
    assert row.seeds == (0, 1, 2) and row.after_retrain.mean == pytest.approx(0.84)
    assert next(r for r in report.rows if (r.label, r.iteration) == ("cka", 1)).seeds == (0, 1, 2)
    assert all(g.after_retrain.n == 3 for g in report.gaps)
    assert all(len(t.seeds) == 3 for t in report.endpoints)
    assert any("seed 3: DIVERGED in the retraining of iteration 2" in note for note in report.experiments[0].notes)
    assert "cka vs l1: seed(s) 3 of l1: the cka run of the same trained model diverged; left out of this pair's " \
           "gaps, endpoints and overlaps" in report.notes
