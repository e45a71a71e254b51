"""The hyper-parameter search: sweep format, points, records, shared storages, lost workers, W&B."""

import http.server
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from src import io, lr_search, points, tracking
from src.config import load_config, parse_config
from src.errors import UserError
from src.tracking import check_wandb_reachable
from src.points import PointResult, point_key, searched_config
from src.lr_search import LocalSearch, LostTrialFinder, SearchOptions, run_lr_search
from src.train import FitResult
from tests.conftest import LRS, tiny_search_raw
from tests.test_tracking import inspect

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "main_search.py")


def write(path: Path, raw: dict) -> Path:
    path.write_text(json.dumps(raw))
    return path


def fake_result(point, on_epoch=None) -> PointResult:
    """A deterministic stand-in for training: lr 0.001 is best; reports two epochs."""
    loss = abs(math.log10(point["lr"]) + 3) + 0.1
    for epoch in (1, 2):
        if on_epoch is not None:
            on_epoch({"epoch": epoch, "val_loss": loss + 2 - epoch, "val_acc": 0.5})
    return PointResult(val_loss=loss, val_acc=1 - loss / 10, epochs=2, best_epoch=2, seconds=0.01, diverged=False)


class CountingTrainer:
    def __init__(self, inner=fake_result):
        self.inner = inner
        self.calls = []

    def __call__(self, point, on_epoch=None):
        self.calls.append(point_key(point))
        return self.inner(point, on_epoch)


def journal_trials(path: Path | str) -> list:
    """The trials of the one study in a journal file (or a database URL)."""
    storage = str(path) if "://" in str(path) else JournalStorage(JournalFileBackend(str(path)))
    (name,) = optuna.get_all_study_names(storage=storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def subprocess_env(**extra) -> dict:
    # One thread per process: several workers share the test machine's cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def config_error(search_section: dict) -> str:
    raw = tiny_search_raw({"lr": LRS})
    raw["search"] = search_section
    with pytest.raises(UserError) as caught:
        parse_config(raw, Path("c.json"))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("c.json: ")
    return message


# ---------------------------------------------------------------- the W&B sweep format

# Sweep configurations as W&B's documentation writes them ("Define a sweep configuration",
# "Sweep configuration options"), limited to parameters this project searches. Each must load,
# and the sweep sent to W&B must say the same as the documentation's text.
WANDB_DOC_SWEEPS = [
    {"method": "random", "metric": {"goal": "minimize", "name": "val_loss"}, "run_cap": 10,
     "parameters": {"batch_size": {"values": [16, 32, 64]}, "epochs": {"value": 5},
                    "lr": {"max": 0.1, "min": 0.0001}}},
    {"method": "bayes", "metric": {"goal": "maximize", "name": "val_acc"}, "run_cap": 20,
     "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
                    "dropout_rate": {"distribution": "uniform", "min": 0.0, "max": 0.5},
                    "batch_size": {"distribution": "int_uniform", "min": 32, "max": 256}},
     "early_terminate": {"type": "hyperband", "min_iter": 3}},
    {"method": "grid", "metric": {"goal": "minimize", "name": "val_loss"},
     "parameters": {"lr": {"values": [0.1, 0.01, 0.001]}, "patience": {"value": 3}}},
    {"method": "random", "run_cap": 4, "parameters": {
        "lr": {"distribution": "q_uniform", "min": 0.01, "max": 0.1, "q": 0.01},
        "dropout_rate": {"distribution": "categorical", "values": [0.1, 0.3]},
        "epochs": {"distribution": "constant", "value": 2}},
     "early_terminate": {"type": "hyperband", "max_iter": 27, "eta": 3}},
]


@pytest.mark.parametrize("sweep", WANDB_DOC_SWEEPS, ids=lambda s: s["method"])
def test_documented_sweeps_load_and_go_to_wandb_as_written(sweep):
    raw = tiny_search_raw({"lr": LRS})
    raw["search"] = sweep
    cfg = parse_config(raw, Path("c.json"))
    sent = tracking.sweep_of(cfg)
    for name, spec in sweep["parameters"].items():
        got = sent["parameters"][name]
        if "values" in spec or "value" in spec:
            key = "values" if "values" in spec else "value"
            assert got == {key: spec[key]}, name
        else:
            kind = spec.get("distribution", "int_uniform" if isinstance(spec["min"], int) else "uniform")
            assert got["distribution"] == kind and (got["min"], got["max"]) == (spec["min"], spec["max"])
            assert got.get("q") == spec.get("q", 1.0 if kind == "q_uniform" else None)
    assert sent["method"] == sweep["method"]
    assert sent["metric"] == sweep.get("metric", {"name": "val_loss", "goal": "minimize"})
    assert sent.get("run_cap") == sweep.get("run_cap")
    early = sweep.get("early_terminate")
    assert sent.get("early_terminate") == (None if early is None else {"eta": 3, **early})
    assert sent["program"] == "main_search.py"
    assert sent["command"] == ["${env}", "${interpreter}", "${program}", "c.json", "--sweep-run"]


@pytest.mark.parametrize("section, expected", [
    ({"method": "hill", "parameters": {"lr": {"values": [0.1]}}}, "search.method must be one of grid, random, bayes"),
    ({"parameters": {"lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1}}},
     "search.parameters.lr has distribution log_uniform_values, but method grid needs values or value"),
    ({"method": "random", "parameters": {"lr": {"values": [0.1]}}}, "search.run_cap is required for method random"),
    ({"method": "bayes", "run_cap": 3, "parameters": {"lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}},
     "search.parameters.lr.min must be > 0 for log_uniform_values"),
    ({"method": "bayes", "run_cap": 3, "parameters": {"lr": {"distribution": "normal", "mu": 0, "sigma": 1}}},
     "search.parameters.lr.distribution must be one of constant, categorical"),
    ({"method": "random", "run_cap": 3, "parameters": {"lr": {"min": 0.1, "max": 0.01}}},
     "search.parameters.lr needs min < max"),
    ({"method": "random", "run_cap": 3, "parameters": {"batch_size": {"distribution": "uniform", "min": 16, "max": 64}}},
     "search.parameters.batch_size.distribution uniform draws fractions, but batch_size is an integer"),
    ({"parameters": {"lr": {"values": [0.1]}}, "early_terminate": {"type": "envelope"}},
     "search.early_terminate.type must be one of hyperband"),
    ({"parameters": {"lr": {"values": [0.1]}}, "early_terminate": {"type": "hyperband"}},
     "search.early_terminate needs min_iter or max_iter"),
    ({"parameters": {"lr": {}}}, "search.parameters.lr needs values, value, or min and max"),
    ({"parameters": {"lr": {"values": [0.1, 0.1]}}}, "search.parameters.lr.values must not repeat a value"),
    ({"parameters": {"momentum": {"values": [0.9]}}}, "search.parameters.momentum is not searchable"),
])
def test_sweeps_wandb_would_reject_are_one_line_errors(section, expected):
    assert expected in config_error(section)


def test_each_distribution_becomes_its_optuna_suggestion():
    raw = tiny_search_raw({"lr": LRS})
    raw["search"] = WANDB_DOC_SWEEPS[1]
    cfg = parse_config(raw, Path("c.json"))
    study = optuna.create_study()
    trial = study.ask()
    point = lr_search.suggest(trial, cfg.search)
    assert trial.distributions == {"lr": FloatDistribution(1e-5, 1e-1, log=True),
                                   "dropout_rate": FloatDistribution(0.0, 0.5),
                                   "batch_size": IntDistribution(32, 256)}
    assert 1e-5 <= point["lr"] <= 1e-1 and isinstance(point["batch_size"], int)
    raw["search"] = WANDB_DOC_SWEEPS[0]
    trial = optuna.create_study().ask()
    lr_search.suggest(trial, parse_config(raw, Path("c.json")).search)
    assert trial.distributions["batch_size"] == CategoricalDistribution([16, 32, 64])
    assert trial.distributions["epochs"] == CategoricalDistribution([5])
    pruner = lr_search.make_pruner(parse_config({**raw, "search": WANDB_DOC_SWEEPS[3]}, Path("c.json")).search, 50)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)


# ---------------------------------------------------------------- training and records

def test_a_diverged_point_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch, capsys):
    real_fit = points.fit

    def fit_diverging_at_large_lr(model, splits, params, **kwargs):
        if params.lr >= 0.1:
            return FitResult(epochs=1, best_epoch=0, diverged=True, seconds=0.1)
        return real_fit(model, splits, params, **kwargs)

    monkeypatch.setattr(points, "fit", fit_diverging_at_large_lr)
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": [0.1, 0.01]})))
    assert run_lr_search(cfg, SearchOptions(output_root=tmp_path / "out"), points.DataTrainer(cfg, "cpu")) == 0
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
    assert run_lr_search(cfg, options, first) == 0
    table = capsys.readouterr().out.split("\n\n", 1)[1]
    assert run_lr_search(cfg, options, second) == 0
    assert len(first.calls) == len(LRS) and second.calls == []
    assert capsys.readouterr().out.split("\n\n", 1)[1] == table
    best_lines = [line for line in table.splitlines() if line.startswith("*")]
    assert len(best_lines) == 1 and best_lines[0].split()[1] == "0.001"
    written = json.loads((tmp_path / "best.json").read_text())
    expected = tiny_search_raw({"lr": LRS}, lr=0.001)
    assert written == expected and written["_comment"] == "kept by --write-config"


def test_every_epoch_is_reported_to_optuna(tmp_path):
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    run_lr_search(cfg, SearchOptions(output_root=tmp_path / "out"), CountingTrainer())
    trials = journal_trials(tmp_path / "out" / "c.journal")
    assert len(trials) == len(LRS) and all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials:
        loss = fake_result(trial.params).val_loss
        assert trial.intermediate_values == {1: pytest.approx(loss + 1), 2: pytest.approx(loss)}  # dashboard curves
        assert trial.value == pytest.approx(loss) and trial.user_attrs["best_epoch"] == 2
        assert trial.distributions["lr"] == CategoricalDistribution(LRS)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_bayes_over_a_log_range_trains_run_cap_points(tmp_path, kind):
    storage = None if kind == "journal" else f"sqlite:///{tmp_path}/s.db"
    raw = tiny_search_raw({"lr": LRS})
    raw["search"] = {"method": "bayes", "run_cap": 6,
                     "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}}}
    cfg = load_config(write(tmp_path / "c.json", raw))
    trainer = CountingTrainer()
    options = SearchOptions(output_root=tmp_path / "out", storage=storage)
    assert run_lr_search(cfg, options, trainer) == 0
    assert len(trainer.calls) == 6
    trials = journal_trials(storage or tmp_path / "out" / "c.journal")
    assert all(t.distributions["lr"] == FloatDistribution(1e-4, 1e-1, log=True) for t in trials)
    assert len({t.params["lr"] for t in trials}) == 6
    doc = json.loads((tmp_path / "out" / "c.json").read_text())
    assert doc["complete"] and len(doc["points"]) == 6
    assert run_lr_search(cfg, options, trainer) == 0
    assert len(trainer.calls) == 6  # a finished search trains nothing new


def test_write_config_waits_for_a_finished_search(tmp_path):
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    options = SearchOptions(output_root=tmp_path / "out", write_config=tmp_path / "best.json",
                            trials=2)
    assert run_lr_search(cfg, options, CountingTrainer()) == 1
    assert not (tmp_path / "best.json").exists()


def test_training_uses_a_finished_search_of_the_same_identity(tmp_path):
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    out = tmp_path / "out"
    unused = (cfg, f"lr=0.01 from {cfg.source} (no finished search of these settings in {out})")
    assert searched_config(cfg, True, out) == unused
    run_lr_search(cfg, SearchOptions(output_root=out, trials=2), CountingTrainer())
    assert searched_config(cfg, True, out) == unused  # not finished
    run_lr_search(cfg, SearchOptions(output_root=out), CountingTrainer())
    used, line = searched_config(cfg, True, out)
    assert used.params.lr == 0.001 and line == f"lr=0.001 from the search in {out}/c.json"
    assert searched_config(cfg, False, out)[0].params.lr == 0.01
    other = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS}, epochs=2)))
    assert searched_config(other, True, out)[0].params.lr == 0.01
    # Another experiment with the same identity (the l1 twin of a cka config) uses the same search.
    twin = load_config(write(tmp_path / "twin.json", tiny_search_raw({"lr": LRS})))
    twin_used, twin_line = searched_config(twin, True, out)
    assert twin_used.params == used.params and twin_line == line


# ---------------------------------------------------------------- lost workers, in process

def local_search(cfg, journal: Path, **options) -> LocalSearch:
    return LocalSearch(cfg, str(journal), SearchOptions(poll=0.05, **options), say=lambda line: None)


def with_clock_past_grace(search: LocalSearch) -> LocalSearch:
    """``search`` whose lost-trial clock moves on by more than the grace at every look: a trial that
    has not beaten between two looks is lost at the second, whatever the wall clock says."""
    grace = search.finder.grace
    search.finder = LostTrialFinder(grace, clock=itertools.count(step=2 * grace).__next__)
    return search


def test_an_interrupted_point_is_handed_back(tmp_path):
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    journal = tmp_path / "s.journal"

    def interrupted(point, on_epoch=None):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        local_search(cfg, journal).work(interrupted)
    trainer = CountingTrainer()
    local_search(cfg, journal).work(trainer)
    assert len(trainer.calls) == len(LRS)
    trials = journal_trials(journal)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["lost"].startswith("KeyboardInterrupt")
    assert Counter(t.state for t in trials)[TrialState.COMPLETE] == len(LRS)


def test_a_dead_workers_trial_is_retried_once_its_heartbeat_stops(tmp_path):
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    journal = tmp_path / "s.journal"
    trial, point = local_search(cfg, journal).ask()  # a worker that dies right away
    trainer = CountingTrainer()
    with_clock_past_grace(local_search(cfg, journal)).work(trainer)
    assert Counter(trainer.calls) == {point_key({"lr": lr}): 1 for lr in LRS}
    lost = journal_trials(journal)[trial.number]
    assert lost.state == TrialState.FAIL and lost.user_attrs["lost"].startswith("no heartbeat from")


def test_a_sampled_point_that_was_lost_is_retried_with_its_values(tmp_path):
    raw = tiny_search_raw({"lr": LRS})
    raw["search"] = {"method": "random", "run_cap": 3, "parameters": {"lr": {"min": 0.001, "max": 0.1}}}
    cfg = load_config(write(tmp_path / "c.json", raw))
    journal = tmp_path / "s.journal"
    _, point = local_search(cfg, journal).ask()
    trainer = CountingTrainer()
    with_clock_past_grace(local_search(cfg, journal)).work(trainer)
    assert len(trainer.calls) == 3 and point_key(point) in trainer.calls


def test_a_trial_from_another_host_is_lost_when_its_heartbeat_stops(tmp_path):
    now = [0.0]
    finder = LostTrialFinder(grace=90, clock=lambda: now[0])
    worker = "other-host:7"
    beating = SimpleNamespace(number=0, user_attrs={"worker": worker, "heartbeat": 1})
    silent = SimpleNamespace(number=1, user_attrs={"worker": worker, "heartbeat": 1})
    assert finder.lost([beating, silent]) == []
    for step in range(1, 4):
        now[0] = 50.0 * step
        beating.user_attrs["heartbeat"] = 1 + step
        lost = finder.lost([beating, silent])
        assert [t.number for t, _ in lost] == ([1] if now[0] > 90 else [])
    assert "no heartbeat from other-host:7" in lost[0][1]


def test_a_file_system_without_locks_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    def no_locks(handle, operation):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(io.fcntl, "flock", no_locks)
    cfg = load_config(write(tmp_path / "c.json", tiny_search_raw({"lr": LRS})))
    with pytest.raises(UserError, match="cannot lock .*use --storage with a database URL"):
        run_lr_search(cfg, SearchOptions(output_root=tmp_path / "out"), CountingTrainer())


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


def test_a_killed_worker_is_resumed_without_retraining_finished_points(tmp_path, entry_point):
    import main_search
    # The third point is slow enough to be killed in the middle of.
    config = write(tmp_path / "c.json", tiny_search_raw({"epochs": [1, 2, 400], "lr": [0.01]}, patience=400))
    command = [sys.executable, SCRIPT, str(config), "--output-dir", str(tmp_path / "out"), "--heartbeat", "1"]
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
    assert "was lost: no heartbeat" in second.stdout
    trials = journal_trials(tmp_path / "out" / "c.journal")
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 3, TrialState.FAIL: 1}
    status, third, _ = entry_point(main_search, *command[2:])  # a finished search: nothing runs, in this process
    assert status == 0 and ": training" not in third and "best: epochs=" in third


# ---------------------------------------------------------------- W&B

def stalling_port() -> socket.socket:
    """A listening socket nobody answers on: connections open, requests hang."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


@pytest.fixture
def stalling_proxy(tmp_path):
    """An environment whose HTTP(S) traffic goes to a proxy that records connections and never answers."""
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update({name: url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")})
    env.update({"NO_PROXY": "", "no_proxy": "", "WANDB_DIR": str(tmp_path), "HOME": str(tmp_path)})
    yield subprocess_env(**env), connections
    proxy.close()


def test_wandb_backend_without_credentials_fails_before_any_connection(tmp_path, stalling_proxy, monkeypatch,
                                                                      entry_point):
    import main_search

    env, connections = stalling_proxy
    for name in set(os.environ) - set(env):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "c.json", tiny_search_raw({"lr": LRS}))
    status, out, err = entry_point(main_search, config, "--backend", "wandb")
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and "needs W&B credentials" in err
    assert connections == []


def test_offline_run_logging_never_touches_the_network(tmp_path, stalling_proxy):
    env, connections = stalling_proxy
    config = write(tmp_path / "c.json", tiny_search_raw({"lr": [0.01, 0.001]}))
    run = subprocess.run([sys.executable, SCRIPT, str(config), "--wandb", "offline", "--output-dir", str(tmp_path / "out")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert connections == []
    run_dirs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 2
    for run_dir in run_dirs:
        (record,) = [r["run"] for r in inspect(run_dir) if r["type"] == "run"]
        assert record["job_type"] == "search" and record["tags"] == ["dataset:mnist-5k", "model:mlp"]


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


def test_an_unreachable_wandb_server_is_reported(reachable_wandb_server):
    check_wandb_reachable(os.environ["WANDB_BASE_URL"], timeout=2)  # an HTTP error is an answer
    with stalling_port() as server:
        with pytest.raises(UserError, match=r"cannot reach the W&B server .*\((no answer within 0.5 s|timed out)\)"):
            check_wandb_reachable(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.5)
        port = server.getsockname()[1]
    with pytest.raises(UserError, match="cannot reach the W&B server"):
        check_wandb_reachable(f"http://127.0.0.1:{port}", timeout=2)  # closed now: refused


class FakeConfig(dict):
    def update(self, values, allow_val_change=False):
        super().update(values)


class FakeRun:
    def __init__(self, config, run_id):
        self.config = FakeConfig(config)
        self.id = run_id
        self.logged, self.summary, self.finished = [], {}, False

    def log(self, row):
        self.logged.append(dict(row))

    def finish(self):
        self.finished = True


class FakeWandb:
    """wandb.sweep, wandb.agent and wandb.init as a W&B server drives them for a grid sweep.

    These need the W&B server (unreachable from the test machine), so they are fakes.
    """

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
        # In a sweep, the agent's values win over the config passed to wandb.init.
        run = FakeRun({**kwargs.get("config", {}), **self.pending.pop(0)}, f"run{len(self.runs)}")
        run.tags = kwargs.get("tags")
        self.runs.append(run)
        return run


def test_wandb_backend_sends_the_sweep_and_logs_each_run(tmp_path, monkeypatch, reachable_wandb_server):
    import wandb

    import main_search

    fake = FakeWandb()
    for name in ("sweep", "agent", "init"):
        monkeypatch.setattr(wandb, name, getattr(fake, name))
    config = write(tmp_path / "c.json", tiny_search_raw({"lr": [0.01, 0.001]}, epochs=2, patience=2))
    argv = [str(config), "--backend", "wandb", "--output-dir", str(tmp_path / "out")]
    assert main_search.main(argv) == 0
    expected = {"method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
                "parameters": {"lr": {"values": [0.01, 0.001]}}, "program": "main_search.py",
                "command": ["${env}", "${interpreter}", "${program}", str(config), "--sweep-run"]}
    assert fake.sweeps == [{"sweep": expected, "project": "cka_prune", "entity": None}]
    assert [a["sweep_id"] for a in fake.agents] == ["sweep1"]
    assert len(fake.runs) == 2
    for run, lr in zip(fake.runs, [0.01, 0.001]):
        assert run.finished and [row["epoch"] for row in run.logged] == [1, 2]
        assert run.tags == ["dataset:mnist-5k", "model:mlp"]
        assert all("train_acc_running" in row and "train_acc" not in row for row in run.logged)
        assert run.config["params"] | {"lr": lr, "batch_size": 512, "epochs": 2, "patience": 2} == run.config["params"]
        assert run.config["params"]["optimizer"] == "adam"  # the resolved recipe, defaults included
        assert run.config["model"]["hidden_sizes"] == [8] and "_comment" not in run.config
        best = min(row["val_loss"] for row in run.logged)
        assert run.summary["val_loss"] == pytest.approx(best, rel=1e-5) and not run.summary["diverged"]
    # Running again joins the recorded sweep instead of creating another.
    assert main_search.main(argv + ["--trials", "1"]) == 0
    assert len(fake.sweeps) == 1 and fake.agents[-1] == {"sweep_id": "sweep1", "project": "cka_prune", "count": 1}


def test_the_study_loads_in_optuna_by_the_name_the_docs_give(tmp_path, monkeypatch, capsys):
    """docs/search.md's ``optuna.load_study`` example, run against a real search on mnist-5k
    kept in its default journal and in an SQLite database."""
    import main_search

    config = tmp_path / "config" / "demo" / "cka.json"
    config.parent.mkdir(parents=True)
    write(config, tiny_search_raw({"lr": [0.01, 0.001]}))
    monkeypatch.chdir(tmp_path)
    for storage in ([], ["--storage", "sqlite:///search.db"]):
        assert main_search.main(["config/demo/cka.json", *storage]) == 0
    recorded = json.loads(Path("output/search/demo/cka.json").read_text())
    name = recorded["study"]
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("demo/cka: grid search")]
    assert len(headers) == 2 and all(line.endswith(f", study {name}") for line in headers)
    assert optuna.get_all_study_names(storage="sqlite:///search.db") == [name]
    study = optuna.load_study(study_name=name, storage="sqlite:///search.db")
    assert study.best_params == recorded["best"]["params"] and len(study.trials) == 2
    page = (ROOT / "docs" / "search.md").read_text()
    example = page.split("<!-- run by tests/test_lr_search.py", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(example, "docs/search.md", "exec"), {})
    assert capsys.readouterr().out == f"{study.best_params} {study.best_value}\n"
