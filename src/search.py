"""Hyper-parameter search: train one model per point of the config's ``search`` grid.

A *point* is a dict of searchable parameters (``{"lr": 0.01}``, names from
``src.config.SEARCHABLE``); its model is the config with those values filled in, trained
with ``search.seed``. Each point is recorded with the validation loss and accuracy of its
best epoch; the best point by ``search.metric`` wins.

Backends:

* local (default): an Optuna study in a journal file (``output/search/<experiment>.journal``)
  or a database (``--storage URL``). Every point is enqueued as a waiting trial and each
  worker claims waiting trials; a claim is atomic in the storage, so any number of
  processes sharing one storage train every point exactly once. A trial whose worker died
  is failed and its point enqueued again (see :class:`LostTrialFinder`).
* wandb: a W&B sweep of the same grid (``wandb.sweep`` + ``wandb.agent``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import itertools
import json
import math
import os
import random
import socket
import threading
import time
import uuid
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, fail_stale_trials, get_storage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from src.config import SEARCHABLE, ExperimentConfig, SearchConfig, with_overrides
from src.data import Splits
from src.errors import UserError, brief
from src.io import atomic_write_json, read_json
from src.models import build_model
from src.tracking import LogFn, wandb_run
from src.train import evaluate, fit, load_experiment_data, select_device

Point = dict[str, Any]
# A trial in one of these states stands for its point: it will run, runs or ran.
LIVE_STATES = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
DEFAULT_OUTPUT_ROOT = Path("output/search")


# ---------------------------------------------------------------- points

def search_points(search: SearchConfig) -> list[Point]:
    """The points to train, in a fixed order.

    grid: every combination of the parameters' values (the first parameter varies slowest).
    random: ``search.trials`` distinct points of that grid (all by default), drawn with
    ``search.seed``; a larger ``trials`` keeps the points a smaller one drew.
    """
    names = [name for name, _ in search.parameters]
    grid = [dict(zip(names, combo)) for combo in itertools.product(*(v for _, v in search.parameters))]
    if search.method == "grid":
        return grid
    order = list(grid)
    random.Random(search.seed).shuffle(order)
    return order[: search.trials or len(order)]


def check_points(cfg: ExperimentConfig, points: Sequence[Point]) -> None:
    """Raise :class:`UserError` before any training if a point makes an invalid config."""
    if cfg.search.method == "grid" and cfg.search.trials is not None:
        raise UserError(f"{cfg.source}: search.trials applies to method random only (a grid trains every point)")
    keys = [point_key(p) for p in points]
    if len(set(keys)) != len(keys):
        raise UserError(f"{cfg.source}: search.parameters repeats a value")
    for point in points:
        try:
            with_overrides(cfg, point)
        except UserError as err:
            raise UserError(f"{err} (in search point {point_label(point)})") from None


def point_key(point: Point) -> str:
    """A canonical string for a point (storage and W&B hand points back as JSON)."""
    return json.dumps(point, sort_keys=True)


def point_label(point: Point) -> str:
    return " ".join(f"{name}={_format_value(value)}" for name, value in point.items())


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def search_identity(cfg: ExperimentConfig) -> str:
    """A digest of everything but the searched values that determines a point's result.

    Editing the model, data or a training parameter that is not searched starts a new search;
    adding or removing values keeps the points already trained.
    """
    identity = cfg.training_identity()
    for name, _ in cfg.search.parameters:
        section, key = SEARCHABLE[name]
        identity[section].pop(key, None)
    identity["seed"] = cfg.search.seed
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def study_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.name}@{search_identity(cfg)}"


# ---------------------------------------------------------------- training one point

@dataclass(frozen=True)
class PointResult:
    """The best epoch of one point's training (``val_loss`` is inf when training diverged)."""

    val_loss: float
    val_acc: float | None
    epochs: int
    best_epoch: int
    seconds: float
    diverged: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PointResult:
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


Trainer = Callable[[Point, LogFn | None], PointResult]


def train_point(cfg: ExperimentConfig, point: Point, splits: Splits, device: torch.device,
                on_epoch: LogFn | None = None) -> PointResult:
    """Train the config with ``point`` filled in, seeded with ``search.seed``; nothing is saved."""
    point_cfg = with_overrides(cfg, point)
    seed = cfg.search.seed
    torch.manual_seed(seed)
    model = build_model(point_cfg.model)
    fitted = fit(model, splits, point_cfg.params, seed=seed, device=device, on_epoch=on_epoch,
                 label=point_label(point))
    if fitted.diverged:
        return PointResult(val_loss=math.inf, val_acc=None, epochs=fitted.epochs, best_epoch=fitted.best_epoch,
                           seconds=fitted.seconds, diverged=True)
    val = evaluate(model, splits.val, point_cfg.params.batch_size, device)
    return PointResult(val_loss=val.loss, val_acc=val.acc, epochs=fitted.epochs, best_epoch=fitted.best_epoch,
                       seconds=fitted.seconds, diverged=False)


class DataTrainer:
    """A :data:`Trainer` that loads the data on its first call (a finished search loads nothing)."""

    def __init__(self, cfg: ExperimentConfig, device_name: str | None):
        self.cfg = cfg
        self.device = select_device(device_name)
        self._splits: Splits | None = None

    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = load_experiment_data(self.cfg, self.device)
        return self._splits

    def __call__(self, point: Point, on_epoch: LogFn | None = None) -> PointResult:
        return train_point(self.cfg, point, self.splits(), self.device, on_epoch)


def logged_trainer(cfg: ExperimentConfig, train: Trainer, mode: str) -> Trainer:
    """``train`` with one W&B run per point (per-epoch metrics) unless ``mode`` is disabled."""
    def run(point: Point, on_epoch: LogFn | None = None) -> PointResult:
        name = f"{cfg.name}-{point_label(point).replace(' ', '-')}"
        config = {**cfg.raw, "search_point": point, "search_seed": cfg.search.seed}
        with wandb_run(cfg, mode, job_type="search", name=name, config=config) as log:
            result = train(point, log)
            if log is not None:
                log({"best_val_loss": result.val_loss, "best_val_acc": result.val_acc, "diverged": result.diverged})
        return result
    return run


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class Row:
    point: Point
    status: str                       # "done", "diverged", "running" or "waiting"
    result: PointResult | None = None
    trial: int | None = None


def objective(result: PointResult, search: SearchConfig) -> float:
    """The value of ``search.metric``; a diverged point gets the worst value for the goal."""
    worst = math.inf if search.goal == "minimize" else -math.inf
    if result.diverged:
        return worst
    value = getattr(result, search.metric)
    return worst if value is None else value


def best_row(rows: Sequence[Row], search: SearchConfig) -> Row | None:
    """The finished, non-diverged row with the best metric (the first of equals)."""
    done = [r for r in rows if r.status == "done" and r.result is not None]
    if not done:
        return None
    sign = 1 if search.goal == "minimize" else -1
    return min(done, key=lambda r: sign * objective(r.result, search))


def format_table(rows: Sequence[Row], search: SearchConfig) -> str:
    """One line per point: its values, val_loss, val_acc, epochs, seconds, status; ``*`` marks the best."""
    best = best_row(rows, search)
    names = [name for name, _ in search.parameters]
    lines = [["", *names, "val_loss", "val_acc", "epochs", "seconds", "status"]]
    for row in rows:
        r = row.result
        metrics = ["-"] * 4 if r is None else [
            f"{r.val_loss:.4f}" if math.isfinite(r.val_loss) else "inf",
            "-" if r.val_acc is None else f"{r.val_acc:.4f}",
            str(r.epochs),
            f"{r.seconds:.1f}",
        ]
        lines.append(["*" if row is best else "", *(_format_value(row.point[n]) for n in names), *metrics, row.status])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join([*(cell.rjust(w) for cell, w in zip(line[:-1], widths)), line[-1]]) for line in lines]
    if best is None:
        text.append("best: none yet")
    else:
        value = getattr(best.result, search.metric)
        text.append(f"best: {point_label(best.point)} ({search.metric} {value:.4f}, goal {search.goal})")
    return "\n".join(text)


def results_document(cfg: ExperimentConfig, rows: Sequence[Row], extra: dict[str, Any]) -> dict[str, Any]:
    """What goes into ``output/search/<experiment>.json``."""
    best = best_row(rows, cfg.search)
    return {
        "experiment": cfg.name,
        "config": str(cfg.source),
        **extra,
        "method": cfg.search.method,
        "metric": cfg.search.metric,
        "goal": cfg.search.goal,
        "seed": cfg.search.seed,
        "parameters": {name: list(values) for name, values in cfg.search.parameters},
        "complete": all(r.status in ("done", "diverged") for r in rows),
        "best": None if best is None else {"params": best.point, **best.result.to_dict()},
        "points": [{"params": r.point, "status": r.status, "trial": r.trial,
                    **(r.result.to_dict() if r.result else {})} for r in rows],
    }


def best_config_raw(cfg: ExperimentConfig, point: Point) -> dict[str, Any]:
    """The config's JSON (comments kept) with ``point``'s values filled in."""
    return with_overrides(cfg, point).raw


def results_path(cfg: ExperimentConfig, output_root: Path, suffix: str = ".json") -> Path:
    """``output/search/<experiment>.json``; ``demo/cka`` nests as ``demo/cka.json``."""
    return Path(output_root) / f"{cfg.name}{suffix}"


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``.<name>.lock`` next to ``path`` (for read-then-write steps).

    Workers writing the results file read the storage and write under it, so the last file
    written is the newest snapshot; workers filling a journal's queue look and enqueue under
    it. Where the filesystem has no ``flock``, the step goes on unlocked.
    """
    lock_path = path.with_name(f".{path.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


# ---------------------------------------------------------------- local backend: storage

def default_storage(cfg: ExperimentConfig, output_root: Path) -> str:
    return str(results_path(cfg, output_root, ".journal"))


def is_database_url(location: str) -> bool:
    return "://" in location


def display_storage(location: str) -> str:
    """``location`` with any database password hidden."""
    if not is_database_url(location):
        return location
    from sqlalchemy.engine import make_url

    try:
        return make_url(location).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported when opened
        return location.split("://", 1)[0] + "://..."


def storage_file(location: str) -> Path | None:
    """The file holding the storage (a journal or an SQLite database), or None for a server."""
    if not is_database_url(location):
        return Path(location)
    from sqlalchemy.engine import make_url

    url = make_url(location)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database)
    return None


def open_storage(location: str, heartbeat: int) -> BaseStorage:
    """A journal file (a path) or a database (a URL, with Optuna's heartbeat)."""
    if not is_database_url(location):
        path = Path(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    from sqlalchemy.exc import ArgumentError

    try:
        # The same wrapper create_study would add; trials must be claimed through the
        # storage object the study uses.
        return get_storage(RDBStorage(location, heartbeat_interval=heartbeat, grace_period=3 * heartbeat))
    except (ImportError, ArgumentError) as err:
        raise UserError(f"--storage {display_storage(location)}: cannot open ({brief(err)})") from None


def open_study(location: str, name: str, direction: str, heartbeat: int,
               attempts: int = 8) -> tuple[BaseStorage, optuna.Study]:
    """Open (creating if needed) study ``name`` in the storage at ``location``.

    Processes that create one SQLite database at the same moment collide while creating
    its tables; such collisions are retried after a random pause.
    """
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(1, attempts + 1):
        try:
            storage = open_storage(location, heartbeat)
            study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True)
            return storage, study
        except SQLAlchemyError as err:
            if attempt == attempts:
                raise UserError(f"--storage {display_storage(location)}: cannot open ({brief(err)})") from None
            time.sleep(random.uniform(0.1, 0.5) * attempt)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- local backend: workers

def _point_of(trial: FrozenTrial) -> Point | None:
    """The point a trial stands for (Optuna keeps an enqueued trial's values here)."""
    return trial.system_attrs.get("fixed_params")


class WorkerLock:
    """A file this process holds an exclusive ``flock`` on for as long as it lives.

    The kernel drops the lock when the process dies, however it dies (SIGKILL, out of
    memory), so another worker on the same host tells a lost trial from a running one at
    once instead of waiting for its heartbeat to go stale.
    """

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.host = socket.gethostname()
        self.name = f"{self.host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        self.path = directory / self.name
        self._handle = open(self.path, "w")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except OSError:  # no flock on this filesystem: heartbeats alone tell
            self.held = False

    def describe(self) -> dict[str, Any]:
        return {"host": self.host, "pid": os.getpid(), "lock": self.name if self.held else None}

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        self._handle.close()


def worker_gone(lock_path: Path) -> bool | None:
    """True if the owner of a :class:`WorkerLock` file has died, False if it lives, None if unknowable."""
    try:
        handle = open(lock_path)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return None
        lock_path.unlink(missing_ok=True)
        return True


class LostTrialFinder:
    """Finds the running trials of a journal storage whose worker is gone.

    A worker records ``{"host", "pid", "lock"}`` when it claims a trial, then a heartbeat
    every few seconds. A trial of a worker on this host is lost when the worker no longer
    holds its lock file; any other trial when its heartbeat has not changed for ``grace``
    seconds of this process's clock (so the clocks of different hosts are never compared).
    """

    def __init__(self, lock_dir: Path, host: str, grace: float, clock: Callable[[], float] = time.monotonic):
        self.lock_dir = lock_dir
        self.host = host
        self.grace = grace
        self.clock = clock
        self._last_beat: dict[int, tuple[Any, float]] = {}

    def lost(self, running: Sequence[FrozenTrial]) -> list[tuple[FrozenTrial, str]]:
        now = self.clock()
        found = []
        for trial in running:
            worker = trial.system_attrs.get("worker") or {}
            if worker.get("host") == self.host and worker.get("lock"):
                gone = worker_gone(self.lock_dir / worker["lock"])
                if gone:
                    found.append((trial, f"its worker (pid {worker.get('pid')}) has stopped"))
                if gone is not None:
                    continue  # on this host the lock tells for sure
            beat = trial.system_attrs.get("heartbeat")
            seen = self._last_beat.get(trial.number)
            if seen is None or seen[0] != beat:
                self._last_beat[trial.number] = (beat, now)
            elif now - seen[1] > self.grace:
                where = f"{worker.get('host')}:{worker.get('pid')}" if worker else "its worker"
                found.append((trial, f"no heartbeat from {where} for {now - seen[1]:.0f} s"))
        return found


@contextmanager
def heartbeat(storage: BaseStorage, trial_id: int, interval: float) -> Iterator[None]:
    """Record every ``interval`` seconds, from a thread, that this process works on the trial."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                if isinstance(storage, JournalStorage):
                    storage.set_trial_system_attr(trial_id, "heartbeat", time.time())
                else:
                    storage.record_heartbeat(trial_id)
            except UpdateFinishedTrialError:
                return  # another worker gave the trial up as lost; run_trial reports it
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="search-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class WorkerOptions:
    """How one process takes part in a search."""

    trials: int | None = None         # train at most this many points, then stop
    wait: bool = True                 # when none is waiting, wait for points others are training
    heartbeat: float = 30.0           # seconds between heartbeats; a trial is lost after 3 missed
    poll: float = 1.0                 # seconds between looks at the storage while waiting


class LocalSearch:
    """One worker of a search shared through an Optuna storage."""

    def __init__(self, cfg: ExperimentConfig, storage: BaseStorage, study: optuna.Study,
                 points: Sequence[Point], worker: WorkerLock | None, options: WorkerOptions,
                 say: Callable[[str], None] = print, queue_lock: Path | None = None):
        self.cfg = cfg
        self.storage = storage
        self.study = study
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.points = list(points)
        self.worker = worker
        self.options = options
        self.say = say
        self.queue_lock = queue_lock
        self._wanted = {point_key(p) for p in self.points}
        self._finder = None if worker is None else LostTrialFinder(worker.directory, worker.host, 3 * options.heartbeat)

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=states)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def rows(self) -> list[Row]:
        """The state of every point of this search: done or diverged, else running, else waiting."""
        rank = {"done": 3, "diverged": 3, "running": 2, "waiting": 1}
        by_point: dict[str, Row] = {}
        for trial in self.trials(LIVE_STATES):
            point = _point_of(trial)
            if point is None:
                continue
            if trial.state == TrialState.COMPLETE:
                result = PointResult.from_dict(trial.user_attrs["result"])
                row = Row(point, "diverged" if result.diverged else "done", result, trial.number)
            else:
                row = Row(point, "running" if trial.state == TrialState.RUNNING else "waiting", None, trial.number)
            key = point_key(point)
            if key not in by_point or rank[row.status] > rank[by_point[key].status]:
                by_point[key] = row
        return [by_point.get(point_key(p), Row(p, "waiting")) for p in self.points]

    def give_up(self, trial_id: int, reason: str) -> bool:
        """Fail a running trial so that its point is enqueued again; False if it had ended.

        Only one of several workers giving up the same trial succeeds (the storage refuses
        to change a finished trial), so a lost point is enqueued once.
        """
        try:
            self.storage.set_trial_system_attr(trial_id, "lost", reason)
            return self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return False

    def recover_lost(self) -> None:
        """Fail the trials of dead workers; :meth:`enqueue_missing` then enqueues their points."""
        if not isinstance(self.storage, JournalStorage):
            fail_stale_trials(self.study)  # a database: Optuna's own heartbeat
            return
        if self._finder is None:
            return
        for trial, reason in self._finder.lost(self.trials((TrialState.RUNNING,))):
            if self.give_up(self.trial_id(trial.number), reason):
                self.say(f"trial {trial.number} ({point_label(_point_of(trial) or {})}) was lost: {reason}; "
                         f"it is trained again")

    def enqueue_missing(self) -> int:
        """Enqueue every point that has no waiting, running or finished trial.

        (``enqueue_trial(skip_if_exists=True)`` would skip a point whose only trial failed.)
        Workers look and enqueue under :meth:`queue_locked`; without a lock file (a database
        server), two workers may both enqueue a point, and :meth:`claim` runs one copy.
        """
        with self.queue_locked():
            covered = {point_key(p) for t in self.trials(LIVE_STATES) if (p := _point_of(t)) is not None}
            missing = [p for p in self.points if point_key(p) not in covered]
            for point in missing:
                self.study.enqueue_trial(point)
        return len(missing)

    def queue_locked(self) -> AbstractContextManager:
        """Hold the file lock that orders the workers of a journal or SQLite storage.

        A journal orders claims by itself, but SQLite ignores ``SELECT ... FOR UPDATE``:
        without the lock two workers can both move one trial from waiting to running.
        Database servers (PostgreSQL, MySQL) lock the row and need no file.
        """
        return exclusive(self.queue_lock) if self.queue_lock else nullcontext()

    def claim(self) -> tuple[int, int, Point] | None:
        """Take a waiting trial of this search: ``(trial_id, number, point)``, or None.

        Moving a trial from waiting to running succeeds for exactly one worker. Of a point's
        live trials only the lowest-numbered one runs; a later copy is pruned.
        """
        with self.queue_locked():
            return self._claim()

    def _claim(self) -> tuple[int, int, Point] | None:
        for trial in self.trials((TrialState.WAITING,)):
            point = _point_of(trial)
            if point is None or point_key(point) not in self._wanted:
                continue
            trial_id = self.trial_id(trial.number)
            try:
                if not self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                    continue
            except UpdateFinishedTrialError:
                continue
            if self.worker is not None:
                self.storage.set_trial_system_attr(trial_id, "worker", self.worker.describe())
            earlier = [t.number for t in self.trials(LIVE_STATES)
                       if t.number < trial.number and point_key(_point_of(t) or {}) == point_key(point)]
            if earlier:
                self.storage.set_trial_system_attr(trial_id, "duplicate_of", earlier[0])
                self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
                continue
            return trial_id, trial.number, point
        return None

    def run_trial(self, trial_id: int, number: int, point: Point, train: Trainer) -> PointResult | None:
        """Train a claimed point and record it; None if another worker gave it up meanwhile."""
        label = point_label(point)
        self.say(f"{label}: training (trial {number})")
        _record_params(optuna.Trial(self.study, trial_id), point, self.cfg)
        try:
            with heartbeat(self.storage, trial_id, self.options.heartbeat):
                result = train(point, None)
        except BaseException as err:
            # Interrupted (Ctrl-C, SIGTERM from Slurm) or crashed: hand the point back now.
            self.give_up(trial_id, f"{type(err).__name__} in worker pid {os.getpid()}")
            raise
        try:
            self.storage.set_trial_user_attr(trial_id, "result", result.to_dict())
            self.study.tell(number, objective(result, self.cfg.search))
        except UpdateFinishedTrialError:
            self.say(f"{label}: another worker gave trial {number} up as lost while it ran here; "
                     f"the point's retry is recorded instead")
            return None
        if result.diverged:
            self.say(f"{label}: diverged after {result.epochs} epoch(s); recorded as val_loss inf")
        else:
            self.say(f"{label}: val_loss {result.val_loss:.4f} val_acc {result.val_acc:.4f} "
                     f"({result.epochs} epochs, {result.seconds:.1f} s)")
        return result

    def work(self, train: Trainer, on_progress: Callable[[], None] = lambda: None) -> int:
        """Train waiting points until none is left or ``options.trials`` are done.

        With ``options.wait``, then wait while other workers train the last points, taking
        over the points of workers that die meanwhile. Returns the number trained here.
        """
        trained = 0
        announced = False
        while self.options.trials is None or trained < self.options.trials:
            self.recover_lost()
            self.enqueue_missing()
            claimed = self.claim()
            if claimed is not None:
                self.run_trial(*claimed, train)
                trained += 1
                on_progress()
                continue
            unfinished = [r for r in self.rows() if r.status in ("running", "waiting")]
            if not unfinished or not self.options.wait:
                break
            if not announced:
                self.say(f"waiting for {len(unfinished)} point(s) other workers are training: "
                         + ", ".join(point_label(r.point) for r in unfinished))
                announced = True
            time.sleep(self.options.poll)
        return trained


def _record_params(trial: optuna.Trial, point: Point, cfg: ExperimentConfig) -> None:
    """Make the point the trial's Optuna parameters too (for Optuna's own tools).

    Each value is suggested as a one-value range: a categorical over the grid would clash
    with trials of an earlier, different grid kept in the same study.
    """
    for name, value in point.items():
        section, key = SEARCHABLE[name]
        default = {f.name: f.default for f in dataclasses.fields(getattr(cfg, section))}[key]
        if isinstance(default, float):
            trial.suggest_float(name, float(value), float(value))
        else:
            trial.suggest_int(name, value, value)


# ---------------------------------------------------------------- entry points

@dataclass(frozen=True)
class SearchOptions:
    backend: str = "local"
    storage: str | None = None        # a journal file path or a database URL (local backend)
    worker: WorkerOptions = WorkerOptions()
    sweep_id: str | None = None       # join this W&B sweep (wandb backend)
    write_config: Path | None = None
    output_root: Path = DEFAULT_OUTPUT_ROOT
    wandb_mode: str = "disabled"      # W&B run logging of the local backend


def run_search(cfg: ExperimentConfig, options: SearchOptions, train: Trainer) -> int:
    """Run, join or finish the config's search and print its table; return the exit status."""
    points = search_points(cfg.search)
    check_points(cfg, points)
    if options.backend == "wandb":
        return run_wandb_search(cfg, points, options, train)
    return run_local_search(cfg, points, options, logged_trainer(cfg, train, options.wandb_mode))


def run_local_search(cfg: ExperimentConfig, points: Sequence[Point], options: SearchOptions, train: Trainer) -> int:
    location = options.storage or default_storage(cfg, options.output_root)
    name = study_name(cfg)
    storage, study = open_study(location, name, cfg.search.goal, max(1, round(options.worker.heartbeat)))
    out = results_path(cfg, options.output_root)
    print(f"{cfg.name}: {cfg.search.method} search over {', '.join(n for n, _ in cfg.search.parameters)} "
          f"({len(points)} points, seed {cfg.search.seed}, {cfg.search.metric} {cfg.search.goal}); "
          f"storage {display_storage(location)}", flush=True)
    _note_other_studies(storage, cfg, name)
    journal = None if is_database_url(location) else Path(location)
    worker = None if journal is None else WorkerLock(Path(f"{journal}.workers"))
    search = LocalSearch(cfg, storage, study, points, worker, options.worker,
                         say=lambda line: print(line, flush=True), queue_lock=storage_file(location))
    extra = {"backend": "local", "storage": display_storage(location), "study": name}

    def write_results() -> list[Row]:
        # Read and write under one lock: the last file written is the newest snapshot.
        with exclusive(out):
            rows = search.rows()
            atomic_write_json(out, results_document(cfg, rows, extra))
        return rows

    try:
        search.work(train, on_progress=write_results)
        rows = write_results()
    finally:
        if worker is not None:
            worker.close()
    print()
    print(format_table(rows, cfg.search))
    print(f"results: {out}")
    return _finish(cfg, rows, options.write_config)


def _note_other_studies(storage: BaseStorage, cfg: ExperimentConfig, name: str) -> None:
    others = [s.study_name for s in storage.get_all_studies()
              if s.study_name.startswith(f"{cfg.name}@") and s.study_name != name]
    if others:
        print(f"note: this storage also holds {len(others)} search(es) of {cfg.name} with other model, data, "
              f"training or seed settings ({', '.join(others)}); they are not used", flush=True)


def _finish(cfg: ExperimentConfig, rows: Sequence[Row], write_config: Path | None) -> int:
    unfinished = [r for r in rows if r.status not in ("done", "diverged")]
    if unfinished:
        print(f"{len(unfinished)} of {len(rows)} points are not finished; run the same command again to finish them")
    if write_config is None:
        return 0
    best = best_row(rows, cfg.search)
    if unfinished or best is None:
        why = "the search is not finished" if unfinished else "every point diverged"
        print(f"--write-config: {write_config} not written: {why}")
        return 1
    atomic_write_json(write_config, best_config_raw(cfg, best.point))
    print(f"wrote {write_config} with {point_label(best.point)}")
    return 0


# ---------------------------------------------------------------- wandb backend

def run_wandb_search(cfg: ExperimentConfig, points: Sequence[Point], options: SearchOptions, train: Trainer) -> int:
    """A W&B sweep of ``search.as_sweep()``; this process runs one agent.

    The sweep id is kept in ``output/search/<experiment>.wandb.json``: running again, or
    from more processes sharing this directory, joins the same sweep, whose server hands
    each grid point to one agent. Each run logs per-epoch metrics and puts the best epoch's
    ``val_loss`` and ``val_acc`` (the sweep's metric) into its summary.
    """
    import wandb

    sweep = cfg.search.as_sweep()
    record_path = results_path(cfg, options.output_root, ".wandb.json")
    with exclusive(record_path):
        record = read_json(record_path) if record_path.exists() else {}
        sweep_id = options.sweep_id
        if sweep_id is None and record.get("sweep") == sweep and record.get("project") == cfg.search.project:
            sweep_id = record.get("sweep_id")
        if sweep_id is None:
            sweep_id = wandb.sweep(sweep=sweep, project=cfg.search.project, entity=cfg.wandb.entity)
        if record.get("sweep_id") != sweep_id:
            atomic_write_json(record_path, {"sweep_id": sweep_id, "project": cfg.search.project,
                                            "sweep": sweep, "runs": []})
    print(f"{cfg.name}: W&B sweep {sweep_id} in project {cfg.search.project} ({len(points)} points)", flush=True)
    names = [name for name, _ in cfg.search.parameters]

    def run_point() -> None:
        run = wandb.init(job_type="search", group=cfg.name,
                         config={"experiment": cfg.name, "search_seed": cfg.search.seed})
        try:
            point = {name: run.config[name] for name in names}
            result = train(point, run.log)
            run.summary.update(result.to_dict())
        finally:
            run.finish()
        with exclusive(record_path):
            record = read_json(record_path)
            record["runs"].append({"params": point, "run": run.id, **result.to_dict()})
            atomic_write_json(record_path, record)

    count = options.worker.trials
    if count is None and cfg.search.method == "random":
        count = len(points)  # a random sweep never runs out of points by itself
    wandb.agent(sweep_id, function=run_point, project=cfg.search.project, entity=cfg.wandb.entity, count=count)
    runs = read_json(record_path)["runs"]
    rows = [Row(r["params"], "diverged" if r["diverged"] else "done", PointResult.from_dict(r)) for r in runs]
    print()
    print(format_table(rows, cfg.search))
    print(f"runs of sweep {sweep_id} started from this directory: {record_path}")
    return 0
