"""W&B run logging: what offline train and prune runs wrote, read back with wandb's own reader.

``wandb leet inspect --json`` prints the records of a run's ``.wandb`` log and, with
``--summary``, the run's final summary and config; no server is involved.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.artifacts import model_path, sidecar_path
from src.config import load_config
from src.models import build_model
from src.pruning.strategy import prune_seed, saved_progress

ROOT = Path(__file__).resolve().parents[1]
WANDB = str(Path(sys.executable).with_name("wandb"))


def run_entry(script: str, config: Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_DIR": str(cwd), "OMP_NUM_THREADS": "1"})
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
        raw = {"_comment": "not logged", **tiny_raw(), "search": {"parameters": {"lr": {"values": [0.002]}}}}
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


def test_a_train_run_summarises_the_kept_epoch_and_the_test_set(logged):
    tmp_path, config, first, _ = logged
    (run_dir,) = first["train"]
    cfg = load_config(config)
    record = json.loads(sidecar_path(model_path(cfg, 0, tmp_path / "models")).read_text())
    summary = inspect(run_dir, "--summary")
    values = summary["summary"]
    assert values["best_epoch"] == record["fit"]["best_epoch"] and values["epochs"] == record["fit"]["epochs"]
    assert values["test/acc"] == pytest.approx(record["test_acc"])
    assert values["val/loss"] == pytest.approx(record["val_loss"])
    rows = [row for row in history(run_dir) if "train/loss" in row]
    assert [row["epoch"] for row in rows] == list(range(1, record["fit"]["epochs"] + 1))
    config_logged = summary["config"]
    assert "_comment" not in config_logged and config_logged["seed"] == 0 and config_logged["device"] == "cpu"
    assert config_logged["params"]["lr"] == 0.002 and config_logged["model_file"].endswith("_seed0.pt")
    assert "git_commit" in config_logged


def test_finished_work_opens_no_run(logged):
    _, _, first, second = logged
    assert {kind: len(dirs) for kind, dirs in first.items()} == {"train": 1, "prune": 1}
    assert second == first


def test_the_run_id_is_kept_in_the_checkpoint_for_a_resumed_job(tmp_path, write_config, mnist5k):
    cfg = load_config(write_config())
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
