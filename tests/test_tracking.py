"""W&B run logging: what offline train and prune runs wrote, read back with wandb's own reader.

The W&B server cannot be reached from the test machine: every run here is a W&B offline run
(``--wandb offline``), or, where a :class:`PruneLog` is driven in-process, a recording fake of
``wandb.Run`` (:class:`RecordingRun`). ``wandb leet inspect --json`` prints the records of an
offline run's ``.wandb`` log and, with ``--summary``, the run's final summary and config.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.artifacts import model_path, sidecar_path
from src.config import WandbConfig, load_config, parse_config
from src.errors import UserError
from src.models import build_model
from src.pruning.resume import saved_progress
from src.pruning.strategy import prune_seed
from src.tracking import PruneLog

ROOT = Path(__file__).resolve().parents[1]
WANDB = str(Path(sys.executable).with_name("wandb"))


def run_entry(script: str, config: Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    # Artifacts are staged under WANDB_DATA_DIR; keep them out of the home directory.
    env.update({"WANDB_DIR": str(cwd), "WANDB_DATA_DIR": str(cwd / "wandb-data"), "OMP_NUM_THREADS": "1"})
    done = subprocess.run([sys.executable, str(ROOT / script), str(config), "--wandb", "offline", "--device", "cpu"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def inspect(run_dir: Path, *options: str):
    out = subprocess.run([WANDB, "leet", "inspect", "--json", *options, str(run_dir)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out) if "--summary" in options else [json.loads(line) for line in out.splitlines()]


def runs(tmp_path: Path) -> dict[str, list[Path]]:
    """Offline run directories by job type."""
    found: dict[str, list[Path]] = {}
    for run_dir in sorted((tmp_path / "wandb").glob("offline-run-*")):
        (run_record,) = [r["run"] for r in inspect(run_dir) if r["type"] == "run"]
        found.setdefault(run_record["job_type"], []).append(run_dir)
    return found


@pytest.fixture(scope="module")
def logged(tmp_path_factory, write_config_module):
    """Train and prune the tiny config once with offline logging, then run both again."""
    tmp_path = tmp_path_factory.mktemp("wandb")
    config = write_config_module(tmp_path)
    run_entry("main_train.py", config, tmp_path)
    run_entry("main_prune.py", config, tmp_path)
    first = runs(tmp_path)
    run_entry("main_train.py", config, tmp_path)
    run_entry("main_prune.py", config, tmp_path)
    return tmp_path, config, first, runs(tmp_path)


@pytest.fixture(scope="module")
def write_config_module():
    from conftest import tiny_raw

    def write(directory: Path) -> Path:
        path = directory / "tiny.json"
        raw = {"_comment": "not logged", **tiny_raw(), "search": {"parameters": {"lr": {"values": [0.002]}}},
               "wandb": {"log_model": True}}
        path.write_text(json.dumps(raw))
        return path
    return write


def history(run_dir: Path) -> list[dict]:
    return [r["history"]["item"] for r in inspect(run_dir) if r["type"] == "history"]


def test_a_prune_run_has_one_curve_point_per_iteration_and_ends_on_the_final_row(logged):
    tmp_path, config, first, _ = logged
    (run_dir,) = first["prune"]
    result = json.loads((tmp_path / "output" / "tiny" / "0.json").read_text())
    points = [row for row in history(run_dir) if "prune/iteration" in row]
    assert [row["prune/iteration"] for row in points] == [1, 2]
    widths = {layer["index"]: layer["width"] for layer in result["layers"]}
    for row, record in zip(points, result["iterations"]):
        alive = {layer["index"]: layer["alive_after"] for layer in record["layers"]}
        assert row["prune/fraction_remaining"] == pytest.approx(sum(alive.values()) / sum(widths.values()))
        assert {i: row[f"prune/alive/L{i}"] for i in alive} == alive
        assert row["prune/test_acc_pruned"] == pytest.approx(record["after_prune"]["test_acc"])
        assert row["prune/val_acc_retrained"] == pytest.approx(record["after_retrain"]["val_acc"])
        for layer in record["layers"]:
            assert row[f"prune/min_cka/L{layer['index']}"] == pytest.approx(min(layer["cka"]))
    summary = inspect(run_dir, "--summary")["summary"]
    final = result["iterations"][-1]
    assert summary["prune/iteration"] == 2
    assert summary["prune/test_acc_retrained"] == pytest.approx(final["after_retrain"]["test_acc"])
    assert summary["prune/test_acc_pruned"] == pytest.approx(final["after_prune"]["test_acc"])
    assert summary["prune/fraction_remaining"] == pytest.approx(points[-1]["prune/fraction_remaining"])
    epochs = sum(record["retrain"]["epochs"] for record in result["iterations"])
    retrain = [row for row in history(run_dir) if "retrain/step" in row]
    assert len(retrain) == epochs
    steps = [row["retrain/step"] for row in retrain]
    assert steps == sorted(set(steps))  # one global step across iterations


def test_prune_and_train_runs_declare_their_step_metrics(logged):
    _, _, first, _ = logged
    declared = {}
    for kind in ("prune", "train"):
        for record in inspect(first[kind][0]):
            if record["type"] == "metric" and "step_metric" in record["metric"]:
                metric = record["metric"]
                declared[metric.get("glob_name") or metric["name"]] = metric["step_metric"]
    assert declared == {"prune/*": "prune/fraction_remaining", "retrain/*": "retrain/step",
                        "train/*": "epoch", "val/*": "epoch"}


def test_a_train_run_summarises_the_kept_epoch_and_the_last_one(logged):
    tmp_path, config, first, _ = logged
    (run_dir,) = first["train"]
    cfg = load_config(config)
    record = json.loads(sidecar_path(model_path(cfg, 0, tmp_path / "models")).read_text())
    summary = inspect(run_dir, "--summary")
    values = summary["summary"]
    assert values["best/epoch"] == record["fit"]["best_epoch"] and values["epochs"] == record["fit"]["epochs"]
    for split in ("train", "val", "test"):
        for kind in ("loss", "acc"):
            assert values[f"best/{split}_{kind}"] == pytest.approx(record[f"{split}_{kind}"])
    rows = [row for row in history(run_dir) if "train/loss_running" in row]
    assert [row["epoch"] for row in rows] == list(range(1, record["fit"]["epochs"] + 1))
    last = record["fit"]["history"][-1]
    assert values["final/epoch"] == last["epoch"] == rows[-1]["epoch"]
    assert values["final/val_loss"] == pytest.approx(last["val_loss"])
    assert values["final/train_acc_running"] == pytest.approx(last["train_acc"])
    assert rows[-1]["train/acc_running"] == pytest.approx(last["train_acc"])
    config_logged = summary["config"]
    assert "_comment" not in config_logged and config_logged["seed"] == 0 and config_logged["device"] == "cpu"
    assert config_logged["params"]["lr"] == 0.002 and config_logged["model_file"].endswith("_seed0.pt")
    assert "git_commit" in config_logged


def test_a_summary_key_logged_in_the_history_means_what_its_last_row_does(logged):
    """``train/acc`` was the running train-mode mean in the history and an eval-mode
    re-evaluation of the kept weights in the summary; now every key means one thing."""
    _, _, first, _ = logged
    for kind in ("train", "prune"):
        (run_dir,) = first[kind]
        last: dict = {}
        for row in history(run_dir):
            last.update(row)
        summary = inspect(run_dir, "--summary")["summary"]
        shared = [key for key in summary if key in last and not key.startswith("_")]
        assert len(shared) >= 5
        for key in shared:
            assert summary[key] == pytest.approx(last[key]), (kind, key)
        assert not any(key.startswith(("best/", "final/")) for key in last)


def test_a_prune_run_summarises_the_baseline_the_final_and_the_best_iteration(logged):
    tmp_path, _, first, _ = logged
    (run_dir,) = first["prune"]
    result = json.loads((tmp_path / "output" / "tiny" / "0.json").read_text())
    summary = inspect(run_dir, "--summary")["summary"]
    widths = sum(layer["width"] for layer in result["layers"])

    def expected(prefix, record):
        metrics = record["after_retrain"]
        removed = sum(len(step["removed"]) for r in result["iterations"][:record["iteration"]] for step in r["layers"])
        return {f"{prefix}/test_acc": metrics["test_acc"], f"{prefix}/val_acc": metrics["val_acc"],
                f"{prefix}/parameters": record["parameters"], f"{prefix}/macs": record["macs"],
                f"{prefix}/iteration": record["iteration"], f"{prefix}/fraction_remaining": 1 - removed / widths}

    iterations = result["iterations"]
    best = max(iterations, key=lambda r: (r["after_retrain"]["val_acc"], r["iteration"]))
    wanted = {**expected("final", iterations[-1]), **expected("best", best),
              "baseline/test_acc": result["baseline"]["test_acc"], "baseline/val_acc": result["baseline"]["val_acc"],
              "baseline/parameters": result["baseline_parameters"], "baseline/macs": result["baseline_macs"]}
    assert {key: summary[key] for key in wanted} == pytest.approx(wanted)
    assert summary["final/parameters"] < summary["baseline/parameters"]


def test_runs_are_tagged_with_criterion_dataset_and_model(logged):
    _, _, first, _ = logged
    tags = {kind: [r["run"] for r in inspect(dirs[0]) if r["type"] == "run"][0].get("tags") for kind, dirs in first.items()}
    assert tags == {"train": ["dataset:mnist-5k", "model:mlp"],
                    "prune": ["criterion:cka", "dataset:mnist-5k", "model:mlp"]}


def test_with_log_model_the_pruned_model_is_a_model_artifact(logged):
    tmp_path, _, first, _ = logged
    (artifact,) = [r["artifact"] for r in inspect(first["prune"][0]) if r["type"] == "artifact"]
    assert (artifact["name"], artifact["type"]) == ("tiny-seed0-pruned", "model")
    assert sorted(entry["path"] for entry in artifact["manifest"]["contents"]) == ["seed0.json", "seed0.pt"]
    assert json.loads(artifact["metadata"])["final/iteration"] == 2
    assert (tmp_path / "output" / "tiny" / "exported" / "seed0.pt").exists()
    assert not [r for r in inspect(first["train"][0]) if r["type"] == "artifact"]


def test_log_model_is_off_by_default_and_must_be_a_boolean():
    from conftest import tiny_raw

    assert WandbConfig().log_model is False
    assert parse_config(tiny_raw(), Path("c.json")).wandb.log_model is False
    with pytest.raises(UserError, match=r"^c\.json: wandb\.log_model must be true or false"):
        parse_config({**tiny_raw(), "wandb": {"log_model": "yes"}}, Path("c.json"))


class RecordingRun:
    """A stand-in for ``wandb.Run`` (the W&B server is unreachable here): keeps what is logged."""

    def __init__(self):
        self.rows, self.summary = [], {}

    def define_metric(self, *args, **kwargs):
        pass

    def log(self, row):
        self.rows.append(dict(row))


# Without retraining: what these tests check is logged and saved by the pass, not by retraining.
UNRETRAINED = {"prune": {"params": {"type": "cka", "iterations": 2, "rate": 0.25, "samples": 64, "retrain": False},
                         "modules": [0, 1]}}
TINY_RESNET = {"model": {"type": "resnet", "depth": 8, "width": 4},
               "prune": {"params": {"type": "cka", "iterations": 2, "rate": 0.25, "samples": 64, "retrain": False}}}


@pytest.mark.parametrize("sections", [UNRETRAINED, TINY_RESNET], ids=["masked-mlp", "torch-pruning-resnet"])
def test_every_prune_point_carries_the_networks_parameters_and_macs(tmp_path, write_config, mnist5k, sections):
    cfg = load_config(write_config(**sections))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    run = RecordingRun()
    log = PruneLog(run, 1, cfg.params.epochs)
    result = prune_seed(model, cfg, 0, mnist5k, torch.device("cpu"), tmp_path / "m.pt", tmp_path,
                        on_iteration=log.iteration_done)
    points = [row for row in run.rows if "prune/iteration" in row]
    assert [(row["prune/parameters"], row["prune/macs"]) for row in points] == \
        [(record.parameters, record.macs) for record in result.iterations]
    sizes = [result.baseline_parameters] + [row["prune/parameters"] for row in points]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3  # each pass made it smaller
    final = result.iterations[-1]
    assert (run.summary["final/parameters"], run.summary["final/macs"]) == (final.parameters, final.macs)


def test_finished_work_opens_no_run(logged):
    _, _, first, second = logged
    assert {kind: len(dirs) for kind, dirs in first.items()} == {"train": 1, "prune": 1}
    assert second == first


def test_the_run_id_is_kept_in_the_checkpoint_for_a_resumed_job(tmp_path, write_config, mnist5k):
    cfg = load_config(write_config(**UNRETRAINED))
    seed = 0
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    seen = []
    result = prune_seed(model, cfg, seed, mnist5k, torch.device("cpu"), tmp_path / "m.pt", tmp_path,
                        on_iteration=lambda r: seen.append(len(r.iterations)), run_id="abc123")
    assert seen == [1, 2] and result.complete
    assert saved_progress(tmp_path, seed) == (2, False, "abc123")
    assert saved_progress(tmp_path, 1) == (0, False, None)
