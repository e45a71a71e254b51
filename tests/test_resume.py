"""Rerunning a prune run end to end: a result of another run is refused, never appended to; a finished
run extends; a result file behind its checkpoint is repaired (src/pruning/resume.py)."""

import dataclasses
import json
import shutil

import pytest
import torch

import main_prune
import src.provenance
from src import results
from src.artifacts import model_path
from src.config import load_config
from src.pruning.resume import IdentityMismatch
from tests.conftest import tiny_raw, untimed
from tests.strategy_helpers import edit, prune_section, stored


def test_editing_the_config_and_rerunning_never_mixes_runs(write_config, trained, run, tmp_path):
    config = write_config("tiny", prune=prune_section("cka", iterations=2, rate=0.25))
    trained(config)
    assert run(main_prune, config) == 0
    first = (tmp_path / "output/tiny/0.json").read_bytes()

    edit(config, prune=prune_section("l1", iterations=3, rate=0.5))
    with pytest.raises(IdentityMismatch) as err:
        run(main_prune, config)
    assert 'prune.params.type: "cka" -> "l1"' in str(err.value) and "prune.params.rate: 0.25 -> 0.5" in str(err.value)
    assert "iterations" not in str(err.value) and "--fresh" in str(err.value)
    assert (tmp_path / "output/tiny/0.json").read_bytes() == first  # nothing appended, nothing rewritten

    assert run(main_prune, config, "--fresh") == 0
    l1 = stored(tmp_path)
    assert l1.criterion == "l1" and l1.planned_iterations == 3 and len(l1.iterations) == 3 and l1.complete
    assert l1.iterations[0].layers[0].alive_before == 48 and l1.iterations[0].layers[0].alive_after == 24
    assert l1.run.description["prune"]["params"]["type"] == "l1"

    # Other training parameters: another trained model, which the result must not be appended to either.
    edit(config, params={**tiny_raw()["params"], "lr": 0.001})
    trained(config)
    with pytest.raises(IdentityMismatch, match=r"training\.params\.lr: 0\.002 -> 0\.001"):
        run(main_prune, config)
    assert run(main_prune, config, "--fresh") == 0
    retrained = stored(tmp_path)
    assert retrained.model_file == str(model_path(load_config(config), 0, tmp_path / "models"))
    assert retrained.model_file != l1.model_file and retrained.model_sha256 != l1.model_sha256


def test_a_changed_model_file_is_a_different_run(write_config, trained, run, tmp_path):
    config = write_config("tiny")
    trained(config)
    run(main_prune, config)
    path = model_path(load_config(config), 0, tmp_path / "models")
    state = torch.load(path, weights_only=True)
    state["hidden.0.layer.bias"] += 1.0  # as if trained again elsewhere
    torch.save(state, path)
    with pytest.raises(IdentityMismatch, match="model_sha256"):
        run(main_prune, config)


def test_a_mismatch_is_one_line_with_exit_status_2(write_config, trained, run, tmp_path, capsys, entry_point):
    config = write_config("tiny")
    trained(config)
    run(main_prune, config)
    edit(config, prune=prune_section("random"))
    capsys.readouterr()  # the first run's output
    status, out, err = entry_point(main_prune, config, "--models-dir", tmp_path / "models",
                                   "--output-dir", tmp_path / "output")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert 'prune.params.type: "cka" -> "random"' in err and out == ""


def test_raising_iterations_extends_a_finished_run(write_config, trained, run, tmp_path, capsys):
    config = write_config("tiny", prune=prune_section(iterations=2))
    trained(config)
    run(main_prune, config)
    two = stored(tmp_path)
    edit(config, prune=prune_section(iterations=3))
    capsys.readouterr()
    assert run(main_prune, config) == 0
    assert "extending after iteration 2 of 3" in capsys.readouterr().out
    three = stored(tmp_path)
    assert three.planned_iterations == 3 and three.complete and len(three.iterations) == 3
    assert three.iterations[:2] == two.iterations and three.run == two.run
    assert run(main_prune, config, out="whole") == 0  # three iterations without stopping
    assert untimed(stored(tmp_path, "whole")) == untimed(three)


def test_a_run_resumed_after_a_commit_equals_one_that_never_stopped(write_config, trained, run, tmp_path,
                                                                    monkeypatch):
    config = write_config("tiny", prune=prune_section(iterations=1))
    trained(config)
    here = src.provenance.current(torch.device("cpu"))
    earlier = dataclasses.replace(here, commit="0" * 40, dirty=not here.dirty)  # the checkout before a commit
    monkeypatch.setattr(src.provenance, "current", lambda device: earlier)
    assert run(main_prune, config, out="cut") == 0
    monkeypatch.undo()
    edit(config, prune=prune_section(iterations=2))
    assert run(main_prune, config, out="cut") == 0
    assert run(main_prune, config, out="whole") == 0
    resumed, whole = stored(tmp_path, "cut"), stored(tmp_path, "whole")
    assert resumed.iterations[0].provenance == earlier and whole.iterations[0].provenance == here
    assert untimed(resumed) == untimed(whole)
    other_threads = dataclasses.replace(here, threads=here.threads + 1)  # what the run computed with still counts
    changed = dataclasses.replace(whole, iterations=(dataclasses.replace(whole.iterations[0], provenance=other_threads),
                                                     *whole.iterations[1:]))
    assert untimed(changed) != untimed(whole)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, trained_cache):
    """The tiny config's finished two-iteration run: its folder, holding tiny.json and output/. Its model is the
    session's (in trained_cache), which pruning only reads; a test copies output/ before changing it."""
    import main_train

    root = tmp_path_factory.mktemp("finished-run")
    config = root / "tiny.json"
    config.write_text(json.dumps(tiny_raw(prune=prune_section(iterations=2))))
    assert main_train.main([str(config), "--models-dir", str(trained_cache)]) == 0
    assert main_prune.main([str(config), "--models-dir", str(trained_cache), "--output-dir", str(root / "output")]) == 0
    return root


@pytest.mark.parametrize("damage", ["missing", "truncated", "behind"])
def test_a_result_file_behind_its_checkpoint_is_repaired(finished_run, trained_cache, tmp_path, capsys, damage):
    shutil.copytree(finished_run / "output", tmp_path / "output")
    path, finished = tmp_path / "output/tiny/0.json", stored(tmp_path)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_text(path.read_text()[:100])
    else:  # killed between the checkpoint and the result write of iteration 2
        raw = json.loads(path.read_text())
        raw["iterations"] = raw["iterations"][:1]
        path.write_text(json.dumps(raw))
    capsys.readouterr()
    args = [finished_run / "tiny.json", "--models-dir", trained_cache, "--output-dir", tmp_path / "output"]
    assert main_prune.main([str(arg) for arg in args]) == 0
    out = capsys.readouterr().out
    assert "repaired from its checkpoint (2 iterations)" in out and "already pruned (2 iterations)" in out
    assert results.same(stored(tmp_path), finished)
