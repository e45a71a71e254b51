"""The local search backend, on Optuna's terms: one study per search, one trial per point.

Each epoch is reported (``trial.report``): the dashboard draws learning curves and
``early_terminate`` (``HyperbandPruner``) can stop a point early. The study lives in a journal
file or a database, shared by any number of processes. A trial covers its point while running
and once complete or stopped early. A worker asks, under a file lock beside a journal or SQLite
file, for the first grid point or failed trial's point that no trial covers
(``PartialFixedSampler``), else ``random`` and ``bayes`` sample until ``run_cap`` trials cover
points; with a database server, the later of two trials of one point is dropped. A dead
worker's trial is failed, by Optuna's heartbeat on a database and by our own on a journal
(which has none), so its point is asked for again. Points and results: ``src/points.py``; the
W&B backend: ``src/tracking.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import socket
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage, RDBStorage, fail_stale_trials, get_storage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from src.config import ExperimentConfig, SearchConfig, with_overrides
from src.errors import UserError, brief
from src.io import atomic_write_json, exclusive
from src.points import (DEFAULT_OUTPUT_ROOT, PROGRAM, Point, PointResult, Row, StopEarly, Trainer, best_row,
                        check_points, format_table, grid_points, point_key, point_label, results_path,
                        search_identity)


def study_name(cfg: ExperimentConfig) -> str:
    """``<experiment>@<identity>-<space>``: a study's parameters keep one distribution each."""
    s = cfg.search
    space = json.dumps([s.method, [asdict(p) for p in s.parameters], s.early_terminate and asdict(s.early_terminate)])
    return f"{cfg.name}@{search_identity(cfg)}-{hashlib.sha256(space.encode()).hexdigest()[:6]}"


def suggest(trial: optuna.Trial, search: SearchConfig) -> Point:
    """The trial's point, each W&B distribution as its Optuna ``suggest_*``."""
    point = {}
    for p in search.parameters:
        if p.distribution in ("constant", "categorical"):
            point[p.name] = trial.suggest_categorical(p.name, list(p.values))
        elif p.distribution == "int_uniform":
            point[p.name] = trial.suggest_int(p.name, p.min, p.max)
        elif p.distribution == "log_uniform":  # W&B: natural log uniform on [min, max]
            point[p.name] = trial.suggest_float(p.name, math.exp(p.min), math.exp(p.max), log=True)
        else:
            point[p.name] = trial.suggest_float(p.name, p.min, p.max, step=p.q,
                                                log=p.distribution == "log_uniform_values")
    return point


def make_pruner(search: SearchConfig, max_epochs: int) -> optuna.pruners.BasePruner:
    """W&B's hyperband as Optuna's: iterations are epochs, ``eta`` the reduction factor."""
    h = search.early_terminate
    if h is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(min_resource=h.min_iter or 1, max_resource=h.max_iter or max_epochs,
                                          reduction_factor=h.eta)


def storage_files(location: str) -> tuple[str, Path | None]:
    """How to show a storage (any password hidden), and the file whose lock orders its workers:
    a journal or SQLite file; None for a database server."""
    if "://" not in location:
        return location, Path(location)
    from sqlalchemy.engine import make_url

    try:
        url = make_url(location)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported when opened
        return location.split("://", 1)[0] + "://...", None
    sqlite = url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:"
    return url.render_as_string(hide_password=True), Path(url.database) if sqlite else None


class LostTrialFinder:
    """Running trials of a journal whose ``heartbeat`` attribute has not changed for ``grace`` seconds.

    Time is this process's clock from when it first saw a beat, so hosts' clocks are never compared.
    """

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic):
        self.grace, self.clock = grace, clock
        self.seen: dict[int, tuple[Any, float]] = {}

    def lost(self, running: list[FrozenTrial]) -> list[tuple[FrozenTrial, str]]:
        now, found = self.clock(), []
        for trial in running:
            beat, seen = trial.user_attrs.get("heartbeat"), self.seen.get(trial.number)
            if seen is None or seen[0] != beat:
                self.seen[trial.number] = (beat, now)
            elif now - seen[1] > self.grace:
                found.append((trial, f"no heartbeat from {trial.user_attrs.get('worker')} for {now - seen[1]:.0f} s"))
        return found


@dataclass(frozen=True)
class SearchOptions:
    """How one process takes part in a search."""

    storage: str | None = None        # a journal file path or a database URL [output/search/<experiment>.journal]
    trials: int | None = None         # train at most this many points, then stop
    wait: bool = True                 # when none is left to ask for, wait for points others train
    heartbeat: float = 30.0           # seconds between heartbeats; a trial is lost after 3 missed
    poll: float = 1.0                 # seconds between looks at the storage while waiting
    write_config: Path | None = None  # a copy of the config with the best values, once the search is complete
    output_root: Path = DEFAULT_OUTPUT_ROOT


class LocalSearch:
    """One worker of a search shared through an Optuna storage (a journal path or a database URL)."""

    def __init__(self, cfg: ExperimentConfig, location: str, options: SearchOptions,
                 say: Callable[[str], None] = print):
        self.search, self.options, self.say = cfg.search, options, say
        self.grid = grid_points(cfg.search) if cfg.search.method == "grid" else None
        self.shown, lock = storage_files(location)
        self.lock = (lambda: exclusive(lock)) if lock is not None else nullcontext
        # A journal has no heartbeat of Optuna's: its trials beat through a user attribute.
        self.finder = None if "://" in location else LostTrialFinder(3 * options.heartbeat)
        with self.lock():  # processes creating one SQLite database at once would collide
            if self.finder is not None:
                Path(location).parent.mkdir(parents=True, exist_ok=True)
                self.storage = JournalStorage(JournalFileBackend(location))
            else:
                beat = max(1, round(options.heartbeat))
                try:
                    self.storage = get_storage(RDBStorage(location, heartbeat_interval=beat, grace_period=3 * beat))
                except Exception as err:  # noqa: BLE001 - SQLAlchemy and drivers raise many types
                    raise UserError(f"--storage {self.shown}: cannot open ({brief(err)})") from None
            self.study = optuna.create_study(storage=self.storage, study_name=study_name(cfg), load_if_exists=True,
                                             direction=cfg.search.goal,
                                             pruner=make_pruner(cfg.search, cfg.params.epochs))
        self.study_id = self.storage.get_study_id_from_name(self.study.study_name)

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        """Trials with a point, by default those that stand for it: running, complete, or stopped early."""
        states = states or (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        return [t for t in self.study.get_trials(deepcopy=False, states=states) if t.params]

    def rows(self) -> list[Row]:
        """Grid: one row per point (finished, else running, else waiting); else one per trial."""
        rows = []
        for t in self.trials():
            row = {"params": t.params, "status": "running", "trial": t.number}
            if t.state != TrialState.RUNNING and "epochs" in t.user_attrs:
                result = {f.name: t.user_attrs[f.name] for f in fields(PointResult)}
                status = "diverged" if result["diverged"] else "stopped" if result["stopped"] else "done"
                row.update(status=status, **result)
            rows.append(row)
        if self.grid is None:
            return rows
        by_point = {point_key(r["params"]): r for r in sorted(rows, key=lambda r: r["status"] != "running")}
        return [by_point.get(point_key(p), {"params": p, "status": "waiting", "trial": None}) for p in self.grid]

    def complete(self, rows: list[Row]) -> bool:
        finished = [r for r in rows if r["status"] not in ("running", "waiting")]
        return len(finished) == len(rows) and (self.grid is not None or len(finished) >= self.search.run_cap)

    def lose(self, number: int, reason: str) -> bool:
        """Fail a running trial, saying why in its ``lost`` attribute; False if it had ended."""
        trial_id = self.trial_id(number)
        try:
            self.storage.set_trial_user_attr(trial_id, "lost", reason)
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return False
        return True

    def ask(self) -> tuple[optuna.Trial, Point] | None:
        """Start a trial for the first point nobody covers; None when none is left to ask for."""
        with self.lock():
            if self.finder is None:
                fail_stale_trials(self.study)  # a database: Optuna's heartbeat
            else:
                for trial, reason in self.finder.lost(self.trials(TrialState.RUNNING)):
                    if self.lose(trial.number, reason):
                        self.say(f"trial {trial.number} ({point_label(trial.params)}) was lost: {reason}; "
                                 f"it is trained again")
            covered = self.trials()
            taken = {point_key(t.params) for t in covered}
            # Every grid point is wanted; a sampled point whose trial failed is wanted again, with its values.
            wanted = self.grid if self.grid is not None else [t.params for t in self.trials(TrialState.FAIL)]
            missing = [p for p in wanted if point_key(p) not in taken]
            if not missing and (self.grid is not None or len(covered) >= self.search.run_cap):
                return None
            # Seeded per trial: reproducible, yet workers sharing the study draw different points.
            seed = (self.search.seed * 1_000_003 + len(self.study.get_trials(deepcopy=False))) % 2**32
            sampler = (optuna.samplers.TPESampler if self.search.method == "bayes" else optuna.samplers.RandomSampler)
            sampler = sampler(seed=seed)
            self.study.sampler = optuna.samplers.PartialFixedSampler(missing[0], sampler) if missing else sampler
            trial = self.study.ask()
            point = suggest(trial, self.search)
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        key = point_key(point)
        earlier = [t.number for t in self.trials() if t.number < trial.number and point_key(t.params) == key]
        if earlier:  # a database server (no lock file): two workers asked for one point at once
            self.lose(trial.number, f"a copy of trial {earlier[0]}")
            return self.ask()
        return trial, point

    def beat(self, trial_id: int, stop: threading.Event) -> None:
        """Until ``stop``: Optuna's heartbeat on a database, a ``heartbeat`` count on a journal."""
        for count in itertools.count():
            try:
                if self.finder is None:
                    self.storage.record_heartbeat(trial_id)
                else:
                    self.storage.set_trial_user_attr(trial_id, "heartbeat", count)
            except UpdateFinishedTrialError:
                return  # another worker gave the trial up; run_trial reports it
            if stop.wait(self.options.heartbeat):
                return

    def run_trial(self, trial: optuna.Trial, point: Point, train: Trainer) -> None:
        """Train an asked point, reporting every epoch, and record its best epoch."""
        label = point_label(point)
        self.say(f"{label}: training (trial {trial.number})")

        def report(row: dict[str, float]) -> None:
            trial.report(row[self.search.metric], int(row["epoch"]))
            if trial.should_prune():
                raise StopEarly()

        stop = threading.Event()
        beating = threading.Thread(target=self.beat, args=(self.trial_id(trial.number), stop), daemon=True)
        beating.start()
        try:
            result = train(point, report)
        except BaseException as err:
            # Interrupted (Ctrl-C, SIGTERM from Slurm) or crashed: hand the point back now.
            self.lose(trial.number, f"{type(err).__name__} in worker pid {os.getpid()}")
            raise
        finally:
            stop.set()
            beating.join()
        worst = math.inf if self.search.goal == "minimize" else -math.inf
        try:
            for name, value in asdict(result).items():
                trial.set_user_attr(name, value)
            if result.stopped:
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                self.study.tell(trial, worst if result.diverged else getattr(result, self.search.metric))
        except UpdateFinishedTrialError:
            self.say(f"{label}: another worker gave trial {trial.number} up as lost while it ran here; "
                     f"the point's retry is recorded instead")
            return
        what = ("diverged; recorded as val_loss inf" if result.diverged else
                f"val_loss {result.val_loss:.4f} val_acc {result.val_acc:.4f}"
                + (" (stopped early)" if result.stopped else ""))
        self.say(f"{label}: {what} ({result.epochs} epochs, {result.seconds:.1f} s)")

    def work(self, train: Trainer, on_progress: Callable[[], None] = lambda: None) -> None:
        """Train points until none is left or ``options.trials`` are done, then (``wait``) wait for others."""
        trained, announced = 0, False
        while self.options.trials is None or trained < self.options.trials:
            asked = self.ask()
            if asked is not None:
                self.run_trial(*asked, train)
                trained += 1
                on_progress()
                continue
            running = [r for r in self.rows() if r["status"] == "running"]
            if not running or not self.options.wait:
                break
            if not announced:
                self.say(f"waiting for {len(running)} point(s) other workers are training: "
                         + ", ".join(point_label(r["params"]) for r in running))
                announced = True
            time.sleep(self.options.poll)


def run_lr_search(cfg: ExperimentConfig, options: SearchOptions, train: Trainer) -> int:
    """Run, join or finish the config's search on the local backend and print its table; return the exit status."""
    check_points(cfg)
    location = options.storage or str(results_path(cfg, options.output_root, ".journal"))
    search = LocalSearch(cfg, location, options, say=lambda line: print(line, flush=True))
    size = f"{len(search.grid)} points" if search.grid is not None else f"run_cap {cfg.search.run_cap}"
    print(f"{cfg.name}: {cfg.search.method} search over {', '.join(p.name for p in cfg.search.parameters)} "
          f"({size}, seed {cfg.search.seed}, {cfg.search.metric} {cfg.search.goal}); "
          f"storage {search.shown}, study {search.study.study_name}", flush=True)
    out = results_path(cfg, options.output_root)
    header = {"experiment": cfg.name, "config": str(cfg.source), "identity": search_identity(cfg), "backend": "local",
              "storage": search.shown, "study": search.study.study_name, "search": cfg.search.as_sweep(PROGRAM),
              "seed": cfg.search.seed}

    def write_results() -> list[Row]:
        """``output/search/<experiment>.json``, read back by :func:`searched_config`."""
        with exclusive(out):  # read and write under one lock: the last file written is the newest
            rows = search.rows()
            best = best_row(rows, cfg.search)
            atomic_write_json(out, {**header, "complete": search.complete(rows),
                                    "best": best and {k: v for k, v in best.items() if k not in ("status", "trial")},
                                    "points": rows})
        return rows

    search.work(train, on_progress=write_results)
    rows = write_results()
    complete, best = search.complete(rows), best_row(rows, cfg.search)
    print(f"\n{format_table(rows, cfg.search)}\nresults: {out}")
    if not complete:
        print("the search is not finished; run the same command again to finish it")
    if options.write_config is None:
        return 0
    if not complete or best is None:
        why = "the search is not finished" if not complete else "every point diverged"
        print(f"--write-config: {options.write_config} not written: {why}")
        return 1
    atomic_write_json(options.write_config, with_overrides(cfg, best["params"]).raw)
    print(f"wrote {options.write_config} with {point_label(best['params'])}")
    return 0
