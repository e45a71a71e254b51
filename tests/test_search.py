"""The hyper-parameter search: points, records, shared storages, lost workers, W&B."""

import dataclasses
import http.server
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from src import search
from src.config import load_config, parse_config
from src.errors import UserError
from src.tracking import check_wandb_reachable
from src.search import (LocalSearch, LostTrialFinder, PointResult, SearchOptions, WorkerLock, WorkerOptions,
                        open_study, point_key, run_search, search_identity, search_points)
from src.train import FitResult

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "main_search.py")
LRS = [0.1, 0.01, 0.001, 0.0001]


def tiny_search_raw(parameters: dict, **params) -> dict:
    """A config whose points train in a fraction of a second on mnist-5k."""
    return {
        "_comment": "kept by --write-config",
        "model": {"type": "mlp", "input_size": 784, "hidden_sizes": [8], "output_size": 10},
        "data": {"dataset": "mnist-5k"},
        "params": {"lr": 0.01, "batch_size": 512, "epochs": 1, "patience": 1, **params},
        "search": {"parameters": {name: {"values": values} for name, values in parameters.items()}},
    }


def write(path: Path, raw: dict) -> Path:
    path.write_text(json.dumps(raw))
    return path


def fake_result(point, on_epoch=None) -> PointResult:
    """A deterministic stand-in for training: lr 0.001 is best."""
    loss = abs(math.log10(point["lr"]) + 3) + 0.1
    return PointResult(val_loss=loss, val_acc=1 - loss / 10, epochs=2, best_epoch=1, seconds=0.01, diverged=False)


class CountingTrainer:
    def __init__(self, inner=fake_result):
        self.inner = inner
        self.calls = []

    def __call__(self, point, on_epoch=None):
        self.calls.append(point_key(point))
        return self.inner(point, on_epoch)


def journal_trials(path: Path) -> list:
    storage = JournalStorage(JournalFileBackend(str(path)))
    (name,) = optuna.get_all_study_names(storage=storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def subprocess_env(**extra) -> dict:
    # One thread per process: several workers share the test machine's cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


# ---------------------------------------------------------------- points and identity

def test_grid_points_in_order_and_random_subsets_are_seeded_prefixes():
    cfg = parse_config(tiny_search_raw({"lr": [0.1, 0.01], "batch_size": [32, 64, 128]}), Path("c.json"))
    grid = search_points(cfg.search)
    assert grid[:4] == [{"lr": 0.1, "batch_size": 32}, {"lr": 0.1, "batch_size": 64},
                        {"lr": 0.1, "batch_size": 128}, {"lr": 0.01, "batch_size": 32}]
    assert len(grid) == 6
    random3 = search_points(dataclasses.replace(cfg.search, method="random", trials=3))
    random5 = search_points(dataclasses.replace(cfg.search, method="random", trials=5))
    assert len({point_key(p) for p in random3}) == 3 and all(p in grid for p in random3)
    assert random5[:3] == random3


def test_bad_points_and_grid_trials_are_user_errors(tmp_path):
    cfg = parse_config(tiny_search_raw({"lr": [0.01, -1]}), Path("c.json"))
    with pytest.raises(UserError, match=r"params.lr must be a positive number, got -1 \(in search point lr=-1\)"):
        search.check_points(cfg, search_points(cfg.search))
    raw = tiny_search_raw({"lr": [0.01]})
    raw["search"]["trials"] = 2
    cfg = parse_config(raw, Path("c.json"))
    with pytest.raises(UserError, match="search.trials applies to method random only"):
        search.check_points(cfg, search_points(cfg.search))


def test_identity_ignores_searched_values_but_not_the_rest():
    base = parse_config(tiny_search_raw({"lr": LRS}), Path("c.json"))
    same = [tiny_search_raw({"lr": LRS}, lr=0.5), tiny_search_raw({"lr": [0.3]})]
    other = [tiny_search_raw({"lr": LRS}, epochs=2), tiny_search_raw({"batch_size": [64]})]
    seeded = tiny_search_raw({"lr": LRS})
    seeded["search"]["seed"] = 1
    assert all(search_identity(parse_config(raw, Path("c.json"))) == search_identity(base) for raw in same)
    assert all(search_identity(parse_config(raw, Path("c.json"))) != search_identity(base) for raw in [*other, seeded])


# ---------------------------------------------------------------- training and records

def test_a_point_records_its_best_epoch(mnist5k):
    cfg = parse_config(tiny_search_raw({"lr": [0.01]}, epochs=3, patience=3), Path("c.json"))
    epochs = []
    result = search.train_point(cfg, {"lr": 0.01}, mnist5k, torch.device("cpu"), epochs.append)
    assert len(epochs) == result.epochs == 3 and not result.diverged
    best = min(epochs, key=lambda row: row["val_loss"])
    assert result.best_epoch == best["epoch"]
    assert result.val_loss == pytest.approx(best["val_loss"], rel=1e-5)
    assert result.val_acc == pytest.approx(best["val_acc"])


def test_a_diverged_point_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch, capsys):
    real_fit = search.fit

    def fit_diverging_at_large_lr(model, splits, params, **kwargs):
        if params.lr >= 0.1:
            return FitResult(epochs=1, best_epoch=0, diverged=True, seconds=0.1)
        return real_fit(model, splits, params, **kwargs)

    monkeypatch.setattr(search, "fit", fit_diverging_at_large_lr)
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": [0.1, 0.01]})))
    assert run_search(cfg, SearchOptions(output_root=tmp_path / "out"), search.DataTrainer(cfg, "cpu")) == 0
    table = capsys.readouterr().out
    assert any(line.split()[:2] == ["0.1", "inf"] and line.endswith("diverged") for line in table.splitlines())
    assert "best: lr=0.01" in table
    doc = json.loads((tmp_path / "out" / "c.json").read_text())
    diverged = doc["points"][0]
    assert diverged["status"] == "diverged" and diverged["val_loss"] == math.inf and diverged["val_acc"] is None
    assert doc["complete"] and doc["best"]["params"] == {"lr": 0.01} and math.isfinite(doc["best"]["val_loss"])


def test_results_and_best_config_survive_a_rerun(tmp_path, capsys):
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    options = SearchOptions(output_root=tmp_path / "out", write_config=tmp_path / "best.json")
    first, second = CountingTrainer(), CountingTrainer()
    assert run_search(cfg, options, first) == 0
    table = capsys.readouterr().out.split("\n\n", 1)[1]
    assert run_search(cfg, options, second) == 0
    assert len(first.calls) == len(LRS) and second.calls == []
    assert capsys.readouterr().out.split("\n\n", 1)[1] == table
    best_lines = [line for line in table.splitlines() if line.startswith("*")]
    assert len(best_lines) == 1 and best_lines[0].split()[1] == "0.001"
    written = json.loads((tmp_path / "best.json").read_text())
    expected = tiny_search_raw({"lr": LRS}, lr=0.001)
    assert written == expected and written["_comment"] == "kept by --write-config"


def test_write_config_waits_for_a_finished_search(tmp_path):
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    options = SearchOptions(output_root=tmp_path / "out", write_config=tmp_path / "best.json",
                            worker=WorkerOptions(trials=2))
    assert run_search(cfg, options, CountingTrainer()) == 1
    assert not (tmp_path / "best.json").exists()


# ---------------------------------------------------------------- shared storage, in process

def local_search(tmp_path: Path, cfg, journal: Path, **options) -> LocalSearch:
    storage, study = open_study(str(journal), search.study_name(cfg), "minimize", 1)
    worker = WorkerLock(Path(f"{journal}.workers"))
    return LocalSearch(cfg, storage, study, search_points(cfg.search), worker,
                       WorkerOptions(heartbeat=1.0, poll=0.05, **options), say=lambda line: None)


def test_points_enqueued_twice_are_trained_once(tmp_path):
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    journal = tmp_path / "s.journal"
    worker = local_search(tmp_path, cfg, journal)
    for point in search_points(cfg.search) * 2:  # what two workers filling the queue at once may do
        worker.study.enqueue_trial(point)
    trainer = CountingTrainer()
    assert worker.work(trainer) == len(LRS)
    assert sorted(trainer.calls) == sorted(point_key({"lr": lr}) for lr in LRS)
    states = Counter(t.state for t in journal_trials(journal))
    assert states == {TrialState.COMPLETE: len(LRS), TrialState.PRUNED: len(LRS)}


def test_an_interrupted_point_is_handed_back(tmp_path):
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    journal = tmp_path / "s.journal"

    def interrupted(point, on_epoch=None):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        local_search(tmp_path, cfg, journal).work(interrupted)
    trainer = CountingTrainer()
    local_search(tmp_path, cfg, journal).work(trainer)
    assert len(trainer.calls) == len(LRS)
    trials = journal_trials(journal)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].system_attrs["lost"].startswith("KeyboardInterrupt")
    assert Counter(t.state for t in trials)[TrialState.COMPLETE] == len(LRS)


def test_a_dead_workers_trial_on_this_host_is_retried_at_once(tmp_path):
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    journal = tmp_path / "s.journal"
    dead = local_search(tmp_path, cfg, journal)
    dead.enqueue_missing()
    trial_id, number, point = dead.claim()
    dead.worker._handle.close()  # the kernel releases a dead process's lock just so
    trainer = CountingTrainer()
    started = time.monotonic()
    local_search(tmp_path, cfg, journal).work(trainer)
    assert time.monotonic() - started < 2.5  # well under the 3 s heartbeat grace
    assert Counter(trainer.calls) == {point_key({"lr": lr}): 1 for lr in LRS}
    lost = journal_trials(journal)[number]
    assert lost.state == TrialState.FAIL and "has stopped" in lost.system_attrs["lost"]


def test_a_trial_from_another_host_is_lost_when_its_heartbeat_stops(tmp_path):
    now = [0.0]
    finder = LostTrialFinder(tmp_path, "this-host", grace=90, clock=lambda: now[0])
    worker = {"host": "other-host", "pid": 7, "lock": "other-host-7.lock"}
    beating = SimpleNamespace(number=0, system_attrs={"worker": worker, "heartbeat": 1.0})
    silent = SimpleNamespace(number=1, system_attrs={"worker": worker, "heartbeat": 1.0})
    assert finder.lost([beating, silent]) == []
    for step in range(1, 4):
        now[0] = 50.0 * step
        beating.system_attrs["heartbeat"] = 1.0 + step
        lost = finder.lost([beating, silent])
        assert [t.number for t, _ in lost] == ([1] if now[0] > 90 else [])
    assert "no heartbeat from other-host:7" in lost[0][1]


# ---------------------------------------------------------------- real processes

@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_workers_sharing_a_storage_train_each_point_once(tmp_path, kind):
    lrs = [0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001]
    config = write(tmp_path / "c.json", tiny_search_raw({"lr": lrs}, epochs=2, patience=2))
    storage = str(tmp_path / "shared.journal") if kind == "journal" else f"sqlite:///{tmp_path}/shared.db"
    command = [sys.executable, SCRIPT, str(config), "--storage", storage, "--output-dir", str(tmp_path / "out")]
    workers = [subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    logs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], logs
    trained = Counter(line.split(": training")[0] for log in logs for line in log.splitlines() if ": training (trial" in line)
    assert trained == {f"lr={lr:g}": 1 for lr in lrs}
    if kind == "journal":
        trials = journal_trials(Path(storage))
        # Workers enqueue under a file lock next to a journal: no point is even enqueued twice.
        assert len(trials) == len(lrs) and all(t.state == TrialState.COMPLETE for t in trials)
    else:
        (name,) = optuna.get_all_study_names(storage=storage)
        states = Counter(t.state for t in optuna.load_study(study_name=name, storage=storage).trials)
        assert states[TrialState.COMPLETE] == len(lrs) and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert sum(1 for log in logs if "best: lr=" in log) == 3
    assert json.loads((tmp_path / "out" / "c.json").read_text())["complete"]


def test_a_killed_worker_is_resumed_without_retraining_finished_points(tmp_path):
    # The third point is slow enough to be killed in the middle of.
    config = write(tmp_path / "c.json", tiny_search_raw({"epochs": [1, 2, 400], "lr": [0.01]}, patience=400))
    command = [sys.executable, SCRIPT, str(config), "--output-dir", str(tmp_path / "out")]
    first = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in first.stdout:
        seen.append(line)
        if "epochs=400 lr=0.01 epoch   1:" in line:
            first.send_signal(signal.SIGKILL)
            break
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, "".join(seen)
    assert sum(": training (trial" in line for line in seen) == 3
    second = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    started = [line for line in second.stdout.splitlines() if ": training (trial" in line]
    assert [line.split(":")[0] for line in started] == ["epochs=400 lr=0.01"]
    assert "was lost: its worker" in second.stdout
    trials = journal_trials(tmp_path / "out" / "c.journal")
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 3, TrialState.FAIL: 1}
    third = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert ": training" not in third.stdout and "best: epochs=" in third.stdout


# ---------------------------------------------------------------- W&B

def test_wandb_backend_without_credentials_fails_at_once(tmp_path):
    config = write(tmp_path / "c.json", tiny_search_raw({"lr": LRS}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    started = time.monotonic()
    run = subprocess.run([sys.executable, SCRIPT, str(config), "--backend", "wandb"], cwd=tmp_path,
                         env={**env, "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and "needs W&B credentials" in run.stderr
    assert elapsed < 1.0, elapsed


class FakeRun:
    def __init__(self, config, run_id):
        self.config = dict(config)
        self.id = run_id
        self.logged, self.summary, self.finished = [], {}, False

    def log(self, row):
        self.logged.append(dict(row))

    def finish(self):
        self.finished = True


class FakeWandb:
    """wandb.sweep/agent/init as a W&B server would drive them for a grid sweep."""

    def __init__(self):
        self.sweeps, self.agents, self.pending, self.runs = [], [], [], []

    def sweep(self, sweep, project=None, entity=None):
        self.sweeps.append({"sweep": sweep, "project": project, "entity": entity})
        return f"sweep{len(self.sweeps)}"

    def agent(self, sweep_id, function, project=None, entity=None, count=None):
        self.agents.append({"sweep_id": sweep_id, "project": project, "count": count})
        (parameter, spec), = self.sweeps[-1]["sweep"]["parameters"].items()
        for value in spec["values"][:count]:
            self.pending.append({parameter: value})
            function()

    def init(self, **kwargs):
        run = FakeRun({**kwargs.get("config", {}), **self.pending.pop(0)}, f"run{len(self.runs)}")
        self.runs.append(run)
        return run


class Unauthorized(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(401)

    def log_message(self, *args):
        pass


@pytest.fixture
def reachable_wandb_server(monkeypatch):
    """A local HTTP server standing in for the W&B server in the reachability check."""
    server = http.server.HTTPServer(("127.0.0.1", 0), Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    yield
    server.shutdown()
    server.server_close()


def stalling_port() -> socket.socket:
    """A listening socket nobody answers on: connections open, requests hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def test_an_unreachable_wandb_server_is_reported_in_seconds(reachable_wandb_server):
    check_wandb_reachable(os.environ["WANDB_BASE_URL"], timeout=2)  # an HTTP error is an answer
    with stalling_port() as server:
        started = time.monotonic()
        with pytest.raises(UserError, match=r"cannot reach the W&B server .*\(no answer within 0.5 s\)"):
            check_wandb_reachable(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
        assert time.monotonic() - started < 1.5
        port = server.getsockname()[1]
    with pytest.raises(UserError, match="cannot reach the W&B server"):
        check_wandb_reachable(f"http://127.0.0.1:{port}", timeout=2)  # closed now: refused


def test_wandb_backend_sends_the_search_dict_and_logs_each_run(tmp_path, monkeypatch, reachable_wandb_server):
    import wandb

    import main_search

    fake = FakeWandb()
    for name in ("sweep", "agent", "init"):
        monkeypatch.setattr(wandb, name, getattr(fake, name))
    config = write(tmp_path / "c.json", tiny_search_raw({"lr": [0.01, 0.001]}, epochs=2, patience=2))
    argv = [str(config), "--backend", "wandb", "--output-dir", str(tmp_path / "out")]
    assert main_search.main(argv) == 0
    cfg = load_config(config)
    assert fake.sweeps == [{"sweep": cfg.search.as_sweep(), "project": "cka_prune", "entity": None}]
    assert fake.sweeps[0]["sweep"]["metric"] == {"name": "val_loss", "goal": "minimize"}
    assert [a["sweep_id"] for a in fake.agents] == ["sweep1"]
    assert len(fake.runs) == 2
    for run in fake.runs:
        assert run.finished and [row["epoch"] for row in run.logged] == [1, 2]
        best = min(row["val_loss"] for row in run.logged)
        assert run.summary["val_loss"] == pytest.approx(best, rel=1e-5) and not run.summary["diverged"]
    record = json.loads((tmp_path / "out" / "c.wandb.json").read_text())
    assert [r["params"] for r in record["runs"]] == [{"lr": 0.01}, {"lr": 0.001}]
    # Running again joins the recorded sweep instead of creating another.
    assert main_search.main(argv + ["--trials", "1"]) == 0
    assert len(fake.sweeps) == 1 and fake.agents[-1] == {"sweep_id": "sweep1", "project": "cka_prune", "count": 1}


def test_offline_run_logging_never_touches_the_network(tmp_path):
    """Every HTTP(S) request goes to a proxy that accepts and never answers: a hang if used."""
    proxy = stalling_port()
    connections = []

    def accept_and_stall():
        try:
            while True:
                connections.append(proxy.accept())
        except OSError:  # closed at the end of the test
            return

    threading.Thread(target=accept_and_stall, daemon=True).start()
    url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({name: url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")})
    env.update({"NO_PROXY": "", "no_proxy": "", "WANDB_DIR": str(tmp_path)})
    config = write(tmp_path / "c.json", tiny_search_raw({"lr": [0.01, 0.001]}))
    started = time.monotonic()
    run = subprocess.run([sys.executable, SCRIPT, str(config), "--wandb", "offline", "--output-dir", str(tmp_path / "out")],
                         cwd=tmp_path, env=subprocess_env(**env), capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    proxy.close()
    assert run.returncode == 0, run.stdout + run.stderr
    assert connections == []
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 2
    assert elapsed < 20, elapsed
