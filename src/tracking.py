"""W&B: optional run logging for the three entry scripts, the sweep backend of the search, access checks.

The mode goes into the environment before wandb is first imported, so wandb's service
process starts in that mode. Passing ``mode="offline"`` only to ``wandb.init`` is not
enough: the service then starts with error reporting on and contacts its telemetry host at
exit, which hangs for about 10 s where that host does not answer. Offline runs also turn
error reporting off (``WANDB_ERROR_REPORTING=false``: the service starts with
``--no-observability``), so an offline run never waits on the network. In "disabled" mode
wandb is never imported. Runs log the resolved config (:func:`run_config`) and carry tags
(:func:`src.run_summary.run_tags`); what each kind of run logs is in :class:`TrainLog`,
:class:`PruneLog` and :class:`SearchLog`, the names and summaries in :mod:`src.run_summary`.
The sweep backend runs the config's ``search`` section as a W&B sweep (:func:`run_wandb_search`).
"""

from __future__ import annotations

import json
import netrc
import os
import subprocess
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

from src.artifacts import sidecar_path
from src.config import ExperimentConfig, with_overrides
from src.errors import UserError
from src.io import atomic_write_json, exclusive, read_json
from src.results import SeedResult
from src.run_summary import (artifact_name, fraction_remaining, prune_summary, run_tags, running_names,
                             train_summary)
from src.points import PROGRAM, Point, PointResult, Trainer, results_path
from src.train import EpochCallback as EpochFn

ROOT = Path(__file__).resolve().parents[1]

# The W&B API hosts wandb uses when WANDB_BASE_URL is not set (wandb.setup().settings.base_url;
# it differs between wandb releases).
DEFAULT_WANDB_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")


def resolve_mode(cfg: ExperimentConfig, override: str | None) -> str:
    """``--wandb`` if given, else the config's ``wandb.mode``; "online" needs credentials."""
    mode = override or cfg.wandb.mode
    if mode == "online":
        require_wandb_credentials("online W&B logging")
    return mode


def prepare_wandb_environment(mode: str) -> None:
    """Put ``mode`` into the environment wandb reads when it starts (see the module doc)."""
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")  # no banners between our own lines
    if mode == "offline":
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


def git_commit() -> str | None:
    """The repository's commit, or None outside a git checkout."""
    try:
        found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return found.stdout.strip() or None


def run_config(cfg: ExperimentConfig, **extra: Any) -> dict[str, Any]:
    """The resolved config (every default filled in, no comment keys) and ``extra`` (seed, device, ...)."""
    sections = {"model": asdict(cfg.model), "data": asdict(cfg.data), "params": asdict(cfg.params),
                "prune": None if cfg.prune is None else asdict(cfg.prune)}
    config = {"experiment": cfg.name, "config_file": str(cfg.source), **sections, "seeds": list(cfg.seeds),
              "git_commit": git_commit(), **extra}
    return json.loads(json.dumps(config))  # tuples as lists, as W&B stores them


@contextmanager
def wandb_run(cfg: ExperimentConfig, mode: str, *, job_type: str, name: str, config: dict[str, Any],
              run_id: str | None = None) -> Iterator[Any]:
    """One W&B run (``wandb.Run``), or None when logging is disabled.

    ``run_id``: continue that run (``resume="allow"``: a requeued job adds to its own run).
    """
    if mode == "disabled":
        yield None
        return
    prepare_wandb_environment(mode)
    import wandb

    run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, job_type=job_type, name=name,
                     group=cfg.name, tags=run_tags(cfg, job_type), config=config, id=run_id,
                     resume="allow" if run_id else None, reinit="finish_previous")
    try:
        yield run
    finally:
        run.finish()


class TrainLog:
    """A train run: per-epoch ``train/*`` and ``val/*`` against ``epoch``; summary: :func:`train_summary`."""

    def __init__(self, run: Any):
        self.run = run
        run.define_metric("epoch")
        for prefix in ("train", "val"):
            run.define_metric(f"{prefix}/*", step_metric="epoch")

    def epoch(self, row: Mapping[str, float]) -> None:
        self.run.log({"epoch": row["epoch"], "train/lr": row["lr"], "train/loss_running": row["train_loss"],
                      "train/acc_running": row["train_acc"], "val/loss": row["val_loss"], "val/acc": row["val_acc"],
                      "train/seconds": row["seconds"]})

    def finish(self, record: Mapping[str, Any]) -> None:
        """``record``: the trained model's sidecar."""
        self.run.summary.update(train_summary(record))


class PruneLog:
    """A prune run: one ``prune/*`` point per iteration, drawn against the fraction of neurons left,
    and the retraining epochs under ``retrain/*`` against one step over all iterations."""

    def __init__(self, run: Any, first_iteration: int, max_epochs: int):
        self.run = run
        self.iteration = first_iteration
        self.max_epochs = max_epochs
        run.define_metric("prune/fraction_remaining")
        run.define_metric("prune/*", step_metric="prune/fraction_remaining")
        run.define_metric("retrain/step")
        run.define_metric("retrain/*", step_metric="retrain/step")

    def retrain_epoch(self, row: Mapping[str, float]) -> None:
        # (iteration - 1) * max_epochs + epoch: increasing, and the same after a resume.
        step = (self.iteration - 1) * self.max_epochs + int(row["epoch"])
        self.run.log({"retrain/step": step, "retrain/iteration": self.iteration,
                      **{f"retrain/{k}": v for k, v in running_names(row).items()}})

    def iteration_done(self, result: SeedResult) -> None:
        """The result's last iteration as one point of the pruning curve; the summary of :func:`prune_summary`."""
        record = result.iterations[-1]
        alive = result.alive()
        stages = {"pruned": record.after_prune, "retrained": record.after_retrain or {}}
        sizes = {"parameters": record.parameters, "macs": record.macs}
        row = {"prune/iteration": record.iteration,
               "prune/fraction_remaining": fraction_remaining(result),
               **{f"prune/{name}": n for name, n in sizes.items() if n is not None},
               **{f"prune/alive/L{index}": n for index, n in alive.items()},
               **{f"prune/{split}_acc_{stage}": metrics[f"{split}_acc"] for stage, metrics in stages.items()
                  for split in ("test", "val") if f"{split}_acc" in metrics},
               **{f"prune/min_cka/L{step.index}": min(step.cka) for step in record.layers if step.cka}}
        self.run.log(row)
        self.run.summary.update(prune_summary(result))
        self.iteration = record.iteration + 1

    def model(self, path: Path, result: SeedResult) -> None:
        """Log the exported pruned model at ``path`` and its sidecar as a ``model`` artifact whose
        metadata is the run's :func:`prune_summary`."""
        import wandb

        artifact = wandb.Artifact(artifact_name(result.experiment, result.seed), type="model",
                                  metadata=prune_summary(result))
        for file in (path, sidecar_path(path)):
            artifact.add_file(str(file))
        self.run.log_artifact(artifact)


class SearchLog:
    """A local search point's run: per-epoch metrics against ``epoch``."""

    def __init__(self, run: Any):
        self.run = run
        run.define_metric("epoch")
        run.define_metric("*", step_metric="epoch")

    def __call__(self, row: Mapping[str, float]) -> None:
        self.run.log(running_names(row))


def logged_trainer(cfg: ExperimentConfig, train: Trainer, mode: str) -> Trainer:
    """``train`` with one W&B run per point of a local search (summary: its result), unless disabled."""
    def logged(point: Point, on_epoch: EpochFn | None = None) -> PointResult:
        name = f"{cfg.name}-" + "-".join(f"{k}={v}" for k, v in point.items())
        config = {**run_config(with_overrides(cfg, point), seed=cfg.search.seed), "search_point": point}
        with wandb_run(cfg, mode, job_type="search", name=name, config=config) as run:
            log = SearchLog(run)

            def both(row: dict[str, float]) -> None:
                log(row)
                if on_epoch is not None:
                    on_epoch(row)
            result = train(point, both)
            run.summary.update(asdict(result))
        return result
    return train if mode == "disabled" else logged


def sweep_of(cfg: ExperimentConfig) -> dict[str, Any]:
    """The sweep W&B gets: ``wandb agent SWEEP_ID`` runs ``main_search.py CONFIG --sweep-run``."""
    return cfg.search.as_sweep(PROGRAM, (str(cfg.source), "--sweep-run"))


def run_sweep_point(cfg: ExperimentConfig, train: Trainer) -> None:
    """One run of a W&B sweep: the agent's values, the full resolved config logged."""
    import wandb

    run = wandb.init(job_type="search", group=cfg.name, tags=run_tags(cfg, "search"), config=run_config(cfg))
    try:
        point = {p.name: run.config[p.name] for p in cfg.search.parameters}
        run.config.update(run_config(with_overrides(cfg, point)), allow_val_change=True)
        result = train(point, lambda row: run.log(running_names(row)))
        run.summary.update(asdict(result))
    finally:
        run.finish()


def run_wandb_search(cfg: ExperimentConfig, sweep_id: str | None, count: int | None, output_root: Path,
                     train: Trainer) -> int:
    """A W&B sweep of :func:`sweep_of`; this process runs one agent (``count`` runs at most).

    The sweep id is kept in ``output/search/<experiment>.wandb.json``, so running again, or
    from more processes sharing this directory, joins the same sweep.
    """
    import wandb

    sweep = sweep_of(cfg)
    record_path = results_path(cfg, output_root, ".wandb.json")
    with exclusive(record_path):
        record = read_json(record_path) if record_path.exists() else {}
        if sweep_id is None and record.get("sweep") == sweep and record.get("project") == cfg.search.project:
            sweep_id = record["sweep_id"]
        if sweep_id is None:
            sweep_id = wandb.sweep(sweep=sweep, project=cfg.search.project, entity=cfg.wandb.entity)
        atomic_write_json(record_path, {"sweep_id": sweep_id, "project": cfg.search.project, "sweep": sweep})
    print(f"{cfg.name}: W&B sweep {sweep_id} in project {cfg.search.project}; more agents: "
          f"wandb agent {cfg.wandb.entity + '/' if cfg.wandb.entity else ''}{cfg.search.project}/{sweep_id}",
          flush=True)
    wandb.agent(sweep_id, function=lambda: run_sweep_point(cfg, train), project=cfg.search.project,
                entity=cfg.wandb.entity, count=count)
    return 0


def wandb_hosts() -> tuple[str, ...]:
    """The W&B API host(s) credentials are looked up for: WANDB_BASE_URL's, else the defaults."""
    base_url = os.environ.get("WANDB_BASE_URL")
    if base_url:
        return (urlsplit(base_url).netloc or base_url,)
    return DEFAULT_WANDB_HOSTS


def _netrc_path() -> Path:
    """Where wandb reads its key: $NETRC, else ~/.netrc, else ~/_netrc."""
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    home_netrc = Path("~/.netrc").expanduser()
    windows_netrc = Path("~/_netrc").expanduser()
    return windows_netrc if not home_netrc.exists() and windows_netrc.exists() else home_netrc


def wandb_credentials_source() -> str | None:
    """Where wandb would find an API key (an environment variable or a netrc file), or None.

    Reads only the environment and the netrc file, without importing wandb, so a missing
    key is reported at once instead of after wandb's network timeouts.
    """
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(name):
            return name
    path = _netrc_path()
    try:
        entries = netrc.netrc(path)
    except (OSError, netrc.NetrcParseError):
        return None
    for host in wandb_hosts():
        found = entries.authenticators(host)
        if found and found[2]:
            return f"{path} ({host})"
    return None


def require_wandb_credentials(needed_by: str) -> str:
    """The credentials' source; raise :class:`UserError` (one line) when there are none."""
    source = wandb_credentials_source()
    if source is None:
        raise UserError(
            f"{needed_by} needs W&B credentials: set WANDB_API_KEY or run `wandb login` "
            f"(no key for {' or '.join(wandb_hosts())} in the environment or {_netrc_path()}); "
            f"the local backend and offline logging need neither an account nor a network"
        )
    return source


def check_wandb_reachable(base_url: str, timeout: float = 5.0) -> None:
    """Raise :class:`UserError` unless the W&B server at ``base_url`` answers within ``timeout`` s.

    Any HTTP answer counts (even an error status): the point is to fail in seconds where
    wandb itself would retry for minutes. Name resolution has no timeout of its own, so the
    request runs in a daemon thread that is abandoned when the time is up.
    """
    failure: list[str] = [f"no answer within {timeout:g} s"]

    def request() -> None:
        try:
            urllib.request.urlopen(base_url, timeout=timeout).close()
            failure.clear()
        except urllib.error.HTTPError:
            failure.clear()
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            failure[0] = getattr(reason, "strerror", None) or str(reason) or type(err).__name__

    thread = threading.Thread(target=request, name="wandb-reachable", daemon=True)
    thread.start()
    thread.join(timeout)
    reasons = list(failure)  # still the first one if the thread has not finished
    if reasons:
        raise UserError(f"--backend wandb: cannot reach the W&B server {base_url} ({reasons[0]}); "
                        f"--backend local works without a network")
