"""Optional W&B run logging, shared by the three entry scripts.

The mode is set through ``WANDB_MODE`` before wandb is imported: passing the mode only to
``wandb.init`` still let wandb contact its telemetry host at exit, which hangs for seconds
where that host does not answer. In "disabled" mode wandb is never imported.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from src.config import ExperimentConfig

LogFn = Callable[[dict[str, Any]], None]


def resolve_mode(cfg: ExperimentConfig, override: str | None) -> str:
    return override or os.environ.get("CKA_PRUNE_WANDB") or cfg.wandb.mode


@contextmanager
def wandb_run(cfg: ExperimentConfig, mode: str, *, job_type: str, name: str,
              config: dict[str, Any]) -> Iterator[LogFn | None]:
    """Yield a ``log(dict)`` function for one W&B run, or ``None`` when logging is disabled."""
    if mode == "disabled":
        yield None
        return
    os.environ["WANDB_MODE"] = mode
    if mode == "offline":
        os.environ.setdefault("WANDB_DISABLE_SERVICE_TELEMETRY", "true")
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    import wandb

    run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, job_type=job_type,
                     name=name, group=cfg.name, config=config, reinit="finish_previous")
    try:
        yield run.log
    finally:
        run.finish()
