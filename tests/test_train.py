import json
import os
import subprocess
import sys
import time

import torch

from src.artifacts import model_path
from src.config import TrainParams, load_config
from src.models import build_model
from src.train import evaluate, fit, train_seed
from tests.conftest import ROOT


def test_training_lowers_the_loss(mnist5k, write_config):
    cfg = load_config(write_config())
    torch.manual_seed(0)
    model = build_model(cfg.model)
    before = evaluate(model, mnist5k.val, 256, torch.device("cpu"))
    result = fit(model, mnist5k, cfg.params, seed=0, device=torch.device("cpu"))
    after = evaluate(model, mnist5k.val, 256, torch.device("cpu"))
    assert after.loss < before.loss - 1.0 and after.acc > 0.8
    assert not result.diverged and result.epochs == 3 and len(result.history) == 3


def test_early_stopping_keeps_the_best_weights(mnist5k, write_config):
    cfg = load_config(write_config())
    params = TrainParams(lr=0.05, batch_size=64, epochs=30, patience=1)  # a large lr: val loss soon rises
    torch.manual_seed(0)
    model = build_model(cfg.model)
    result = fit(model, mnist5k, params, seed=0, device=torch.device("cpu"))
    assert result.epochs < 30
    assert result.epochs == result.best_epoch + params.patience
    best = min(row["val_loss"] for row in result.history)
    assert abs(evaluate(model, mnist5k.val, 64, torch.device("cpu")).loss - best) < 1e-6


def test_same_seed_same_weights(mnist5k, write_config, tmp_path):
    cfg = load_config(write_config())
    paths = [train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path / d) for d in ("a", "b")]
    a, b = (torch.load(p, weights_only=True) for p in paths)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = train_seed(cfg, 1, mnist5k, torch.device("cpu"), tmp_path / "a")
    assert not torch.equal(torch.load(other, weights_only=True)["output.weight"], a["output.weight"])


def test_existing_model_is_skipped_and_a_corrupt_one_retrained(mnist5k, write_config, tmp_path, capsys):
    cfg = load_config(write_config())
    path = train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert {"test_acc", "val_loss", "train_acc", "fit", "config"} <= sidecar.keys()
    stamp = path.stat().st_mtime_ns
    train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path)
    assert "model exists, skipping" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp
    path.write_bytes(path.read_bytes()[:100])  # truncated
    train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path)
    assert "cannot load" in capsys.readouterr().out
    torch.load(path, weights_only=True)


def test_shape_mismatch_is_retrained(mnist5k, write_config, tmp_path, capsys):
    small = load_config(write_config())
    torch.save(build_model(load_config(write_config(model={"hidden_sizes": [8, 8]})).model).state_dict(),
               model_path(small, 0, tmp_path))
    train_seed(small, 0, mnist5k, torch.device("cpu"), tmp_path)
    assert "retraining" in capsys.readouterr().out


def test_diverged_run_is_recorded_and_other_seeds_go_on(mnist5k, write_config, tmp_path):
    cfg = load_config(write_config(params={"lr": 1e30, "batch_size": 128, "epochs": 2, "patience": 1}, seeds=[0, 1]))
    for seed in cfg.seeds:
        path = train_seed(cfg, seed, mnist5k, torch.device("cpu"), tmp_path)
        record = json.loads(path.with_suffix(".diverged.json").read_text())
        assert record["diverged"] is True and not path.exists()


def test_cli_trains_then_skips_everything(write_config, tmp_path):
    config = write_config(seeds=[0, 1], params={"lr": 0.002, "batch_size": 256, "epochs": 1, "patience": 1})
    cmd = [sys.executable, str(ROOT / "main_train.py"), str(config), "--models-dir", str(tmp_path / "models")]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert len(list((tmp_path / "models").glob("*.pt"))) == 2
    start = time.perf_counter()
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert second.returncode == 0 and second.stdout.count("model exists, skipping") == 2
    assert time.perf_counter() - start < 30
    one = subprocess.run(cmd + ["--seed-index", "5"], capture_output=True, text=True, cwd=tmp_path)
    assert one.returncode == 2 and "--seed-index 5 is out of range" in one.stderr


def test_online_logging_without_credentials_is_a_user_error(write_config, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "none"))
    proc = subprocess.run([sys.executable, str(ROOT / "main_train.py"), str(write_config()), "--wandb", "online",
                           "--models-dir", str(tmp_path / "m")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "online W&B logging needs W&B credentials" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "m").exists()
