"""Optional W&B run logging, shared by the three entry scripts, and W&B access checks.

The mode goes into the environment before wandb is first imported, so wandb's service
process starts in that mode. Passing ``mode="offline"`` only to ``wandb.init`` is not
enough: the service then starts with error reporting on and contacts its telemetry host at
exit, which hangs for about 10 s where that host does not answer. Offline runs also turn
error reporting off (``WANDB_ERROR_REPORTING=false``: the service starts with
``--no-observability``), so an offline run never waits on the network. In "disabled" mode
wandb is never imported.
"""

from __future__ import annotations

import netrc
import os
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from src.config import ExperimentConfig
from src.errors import UserError

LogFn = Callable[[dict[str, Any]], None]

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
    if mode == "offline":
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")


@contextmanager
def wandb_run(cfg: ExperimentConfig, mode: str, *, job_type: str, name: str,
              config: dict[str, Any]) -> Iterator[LogFn | None]:
    """Yield a ``log(dict)`` function for one W&B run, or ``None`` when logging is disabled."""
    if mode == "disabled":
        yield None
        return
    prepare_wandb_environment(mode)
    import wandb

    run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, job_type=job_type,
                     name=name, group=cfg.name, config=config, reinit="finish_previous")
    try:
        yield run.log
    finally:
        run.finish()


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
