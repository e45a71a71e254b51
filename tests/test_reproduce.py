"""The whole study in one command: plan, skip finished work, resume after a kill, the paper's table."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from src import reproduce, results
from src.errors import UserError
from tests.conftest import ROOT, tiny_raw, untimed


def write_study(root):
    """A folder of two criteria (cka, l1) on the same tiny model, 2 seeds x 2 iterations."""
    folder = root / "study"
    folder.mkdir()
    for criterion in ("cka", "l1"):
        raw = tiny_raw(prune={"params": {"type": criterion, "iterations": 2, "rate": 0.3}}, seeds=[0, 1])
        (folder / f"{criterion}.json").write_text(json.dumps(raw))
    return folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The study run once in this process, on one thread as its killed twin below runs: (the folder that
    holds study/, models/ and out/, what the run printed). Tests read it, or copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    printed = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(printed):
            assert reproduce.main([str(write_study(root)), "--models-dir", str(root / "models"),
                                   "--output-dir", str(root / "out"), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    return root, printed.getvalue()


def test_a_study_runs_end_to_end_then_skips_everything(finished, tmp_path, capsys):
    root, out = finished
    assert "2 model(s) to train, 8 prune iteration(s) to run" in out  # two seeds shared by both criteria
    assert "[10/10]" in out and "Test accuracy after retraining, per iteration" in out
    table = out[out.index("Test accuracy after retraining"):]
    assert "cka % [min-max]" in table and "l1 % [min-max]" in table and "n=2" in table
    assert (root / "out/study/report/accuracy.png").exists()
    assert (root / "out/study/reproduce.log").read_text().count("retrained") == 8
    assert len(list((root / "models").glob("*.pt"))) == 2
    copy = shutil.copytree(root, tmp_path / "copy")
    args = [str(copy / "study"), "--models-dir", str(copy / "models"), "--output-dir", str(copy / "out")]
    assert reproduce.main(args) == 0
    assert "0 model(s) to train, 0 prune iteration(s) to run" in capsys.readouterr().out


def test_a_killed_study_resumes_to_the_same_results(finished, tmp_path):
    # The finished study's models (read, never written: they exist) are the ones the killed run prunes,
    # so that its records name the same model files.
    root, _ = finished

    def command(out):
        return [sys.executable, "-m", "src.reproduce", str(root / "study"), "--models-dir", str(root / "models"),
                "--output-dir", str(tmp_path / out), "--threads", "1"]

    proc = subprocess.Popen(command("cut"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith("[1/8]"):  # the models exist: the first prune iteration is saved
            proc.send_signal(signal.SIGTERM)
            break
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in out
    again = subprocess.run(command("cut"), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    planned = next(line for line in again.stdout.splitlines() if "model(s) to train" in line)
    assert "0 model(s) to train" in planned and "8 prune iteration(s)" not in planned  # finished work is not redone
    for criterion in ("cka", "l1"):
        for seed in (0, 1):
            cut, full = (folder / criterion / f"{seed}.json" for folder in (tmp_path / "cut", root / "out"))
            assert untimed(results.load(cut)) == untimed(results.load(full)), f"{criterion} seed {seed}"


def test_a_folder_without_a_prune_config_is_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match="no \\*.json experiment config with a prune section"):
        reproduce.load_study(tmp_path)
    (tmp_path / "train-only.json").write_text(json.dumps({k: v for k, v in tiny_raw().items() if k != "prune"}))
    with pytest.raises(UserError, match="no \\*.json experiment config with a prune section"):
        reproduce.load_study(tmp_path)
    (tmp_path / "cka.json").write_text(json.dumps(tiny_raw()))
    assert [cfg.name for cfg in reproduce.load_study(tmp_path)] == ["cka"]
    assert "train-only: no prune section, not part of the study" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps(tiny_raw(seeds=[-1])))
    with pytest.raises(UserError, match="bad.json: seeds"):
        reproduce.load_study(tmp_path)


def test_fresh_replaces_the_results_of_a_training_the_config_no_longer_asks_for(tmp_path, capsys):
    from src.pruning.resume import IdentityMismatch

    folder = tmp_path / "study"
    folder.mkdir()
    raw = tiny_raw(prune={"params": {"type": "cka", "iterations": 1, "rate": 0.3}})
    (folder / "cka.json").write_text(json.dumps(raw))
    args = [str(folder), "--models-dir", str(tmp_path / "models"), "--output-dir", str(tmp_path / "out")]
    assert reproduce.main(args) == 0
    old = results.load(tmp_path / "out/cka/0.json")

    raw["params"]["lr"] = 0.001  # another training: its model file does not exist yet
    (folder / "cka.json").write_text(json.dumps(raw))
    capsys.readouterr()
    with pytest.raises(IdentityMismatch, match=r"training\.params\.lr: 0\.002 -> 0\.001") as err:
        reproduce.main(args)
    assert "\n" not in str(err.value) and "--fresh" in str(err.value)
    assert len(list((tmp_path / "models").glob("*.pt"))) == 1  # stopped before any work
    assert "to train" not in capsys.readouterr().out

    assert reproduce.main([*args, "--fresh"]) == 0
    assert "1 model(s) to train, 1 prune iteration(s) to run" in capsys.readouterr().out
    new = results.load(tmp_path / "out/cka/0.json")
    assert new.run.description["training"]["params"]["lr"] == 0.001 and len(new.iterations) == 1
    assert new.model_sha256 != old.model_sha256 and new.model_file != old.model_file


def test_fresh_replaces_the_results_of_a_model_trained_again_differently(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "cka.json").write_text(json.dumps(tiny_raw(prune={"params": {"type": "cka", "iterations": 1,
                                                                           "rate": 0.3}})))
    args = [str(folder), "--models-dir", str(tmp_path / "models"), "--output-dir", str(tmp_path / "out")]
    assert reproduce.main(args) == 0
    old = results.load(tmp_path / "out/cka/0.json")
    for path in (tmp_path / "models").iterdir():
        path.unlink()  # the same config's model is trained again, elsewhere in effect: other weights
    trained = reproduce.train_seed

    def trained_otherwise(*args, **kwargs):
        path = trained(*args, **kwargs)
        state = torch.load(path, weights_only=True)
        state["hidden.0.layer.bias"] += 1.0
        torch.save(state, path)
        return path

    monkeypatch.setattr(reproduce, "train_seed", trained_otherwise)
    assert reproduce.main([*args, "--fresh"]) == 0
    assert "removed the result of another run" in capsys.readouterr().out
    new = results.load(tmp_path / "out/cka/0.json")
    assert new.model_sha256 != old.model_sha256 and len(new.iterations) == 1


def test_jobs_in_parallel_processes_give_the_results_of_one_process(tmp_path, capsys):
    folder = tmp_path / "pair"
    folder.mkdir()
    for criterion in ("cka", "random"):
        raw = tiny_raw(prune={"strategy": "one_shot", "params": {"type": criterion, "rate": 0.3, "retrain_epochs": 1}},
                       seeds=[0, 1])
        (folder / f"{criterion}.json").write_text(json.dumps(raw))

    def study(out, *extra):
        return reproduce.main([str(folder), "--models-dir", str(tmp_path / out / "models"),
                               "--output-dir", str(tmp_path / out), "--threads", "1", *extra])

    assert study("one") == 0
    capsys.readouterr()
    assert study("two", "--jobs", "2") == 0
    out = capsys.readouterr().out
    assert "2 jobs at a time" in out and "[train cka seed 1]" in out and "[prune random seed 0]" in out
    assert "[train random" not in out  # both configs share their trained models: each is trained once
    assert len(list((tmp_path / "two/models").glob("*.pt"))) == 2
    for criterion in ("cka", "random"):
        for seed in (0, 1):
            one, two = (results.load(tmp_path / run / criterion / f"{seed}.json") for run in ("one", "two"))
            assert untimed(two)["iterations"] == untimed(one)["iterations"] and two.baseline == one.baseline
    assert (tmp_path / "two/pair/report/accuracy.png").exists()


def test_a_failed_job_is_named_in_one_line(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "cka.json").write_text(json.dumps(tiny_raw(seeds=[0])))
    models = tmp_path / "models"
    models.write_text("")  # a file: main_train.py refuses it (exit 2)
    with pytest.raises(UserError, match=r"^1 of 1 jobs failed: train cka seed 0 \(exit 2\)$"):
        reproduce.reproduce(folder, models, tmp_path / "out", None, False, jobs=2)
    out = capsys.readouterr().out
    assert "[train cka seed 0] error: --models-dir" in out and "cka seed 0: no trained model" in out


def test_portable_kernels_reach_the_child_processes_and_their_records(tmp_path, capsys):
    from src.artifacts import model_path
    from src.config import load_config
    from src.provenance import PORTABLE_KERNELS, kernel_settings

    folder = tmp_path / "portable"
    folder.mkdir()
    raw = tiny_raw(params={"lr": 0.002, "batch_size": 128, "epochs": 1},
                   prune={"strategy": "one_shot", "params": {"type": "cka", "rate": 0.3, "retrain": False}})
    (folder / "cka.json").write_text(json.dumps(raw))
    models, out = tmp_path / "models", tmp_path / "out"
    assert reproduce.main([str(folder), "--models-dir", str(models), "--output-dir", str(out), "--portable-kernels"]) == 0
    assert "1 job at a time with portable kernels" in capsys.readouterr().out  # no --jobs: still a child process
    settings = kernel_settings({**os.environ, **PORTABLE_KERNELS})
    sidecar = json.loads(model_path(load_config(folder / "cka.json"), 0, models).with_suffix(".json").read_text())
    assert sidecar["provenance"]["cpu_capability"] == "DEFAULT" and sidecar["provenance"]["kernel_settings"] == settings
    pruned = results.load(out / "cka/0.json").iterations[0].provenance
    assert pruned.cpu_capability == "DEFAULT" and pruned.kernel_settings == settings


def test_a_study_with_a_depth_config_prunes_and_reports_it_beside_the_width_configs(tmp_path, capsys):
    folder = tmp_path / "study"
    folder.mkdir()
    model, params = {"type": "resmlp", "depth": 4, "width": 16}, {"lr": 0.003, "batch_size": 128, "epochs": 2}
    for name, prune in (("depth", {"strategy": "depth", "params": {"criterion": "tail", "blocks": [1, 2],
                                                                   "samples": 64, "latency": False}}),
                        ("width", {"strategy": "one_shot", "params": {"type": "tp_l1", "rate": 0.3, "retrain": False}})):
        (folder / f"{name}.json").write_text(json.dumps(tiny_raw(model=model, params=params, prune=prune)))
    args = [str(folder), "--models-dir", str(tmp_path / "models"), "--output-dir", str(tmp_path / "out")]
    assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    assert "1 model(s) to train, 3 prune iteration(s) to run" in out and "[4/4]" in out
    record = json.loads((tmp_path / "out/depth/0.json").read_text())
    assert [p["removed"] for p in record["points"]] == [["blocks.3"], ["blocks.3", "blocks.2"]]  # tail: the last first
    assert (tmp_path / "out/study/report-depth/report.md").exists()
    assert (tmp_path / "out/study/report/report.md").exists()
    assert reproduce.main(args) == 0
    assert "0 model(s) to train, 0 prune iteration(s) to run" in capsys.readouterr().out
