"""What the three entry scripts share: common options and the user-error boundary."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from src.config import SEED_MAX, ExperimentConfig, is_seed
from src.errors import UserError


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set (the standard request, which torch honours too), else
    ``SLURM_CPUS_PER_TASK`` under Slurm, else the CPUs this process may run on."""
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(name, "")
        if value:
            if not value.isdigit() or int(value) < 1:
                raise UserError(f"{name}={value!r} is not a positive integer")
            return int(value)
    return len(os.sched_getaffinity(0))


def _thread_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help="JSON experiment config, e.g. config/demo/cka.json")
    add_device_options(parser)
    parser.add_argument("--wandb", choices=("disabled", "offline", "online"),
                        help="W&B run logging mode (default: the config's wandb.mode, else disabled)")
    return parser


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads``: where the work runs."""
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--threads", type=_thread_count, metavar="N",
                        help="CPU threads for PyTorch's operations (default: $OMP_NUM_THREADS if set, else "
                             "$SLURM_CPUS_PER_TASK under Slurm, else the CPUs this process may use)")


def apply_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op thread count and NumPy's BLAS threads (``--threads``, else
    :func:`default_threads`); return it.

    torch's own default is one thread per core of the machine, which oversubscribes a machine
    shared with other processes or a Slurm allocation smaller than the node. Inter-op threads
    are left alone: these scripts run no inter-op parallel work, and torch allows setting them
    only once per process.
    """
    import torch  # here, so that scripts can fail fast on a user error before torch loads
    from threadpoolctl import threadpool_limits

    count = threads if threads is not None else default_threads()
    torch.set_num_threads(count)
    # NumPy's BLAS would otherwise start a thread per core: small products (the greedy engines'
    # rank-one updates) then run about ten times slower on a shared machine.
    threadpool_limits(count, user_api="blas")
    return count


def add_seed_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=int, help=f"run only this seed (0..{SEED_MAX})")
    group.add_argument("--seed-index", type=int,
                       help="run only the config's seeds[I] (for Slurm arrays: $SLURM_ARRAY_TASK_ID)")


def selected_seeds(cfg: ExperimentConfig, seed: int | None, seed_index: int | None) -> list[int]:
    if seed is not None:
        if not is_seed(seed):
            raise UserError(f"--seed {seed}: a seed must be an integer in [0, {SEED_MAX}]")
        return [seed]
    if seed_index is not None:
        if not 0 <= seed_index < len(cfg.seeds):
            raise UserError(f"{cfg.source}: --seed-index {seed_index} is out of range: seeds has {len(cfg.seeds)} entries (0..{len(cfg.seeds) - 1})")
        return [cfg.seeds[seed_index]]
    return list(cfg.seeds)


def require_writable_dir(path: str | Path, option: str) -> None:
    """Fail before any work when files cannot be created in directory ``path`` (``option`` names it).

    Nothing is created: the test is a temporary file in ``path``, or, when it does not exist
    yet, in its nearest existing parent (where it would be created). Permission bits are not
    consulted because they do not bind root; only trying to write tells.
    """
    path = Path(path)
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{option} {path}: cannot create a directory there: {existing} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"{option} {path}: cannot write to {existing} ({err.strerror})") from None


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run an entry point: user errors become one stderr line and exit status 2.

    SIGTERM (Slurm's time-limit warning, preemption) is handled like Ctrl-C: results are
    written atomically, so stopping between writes loses nothing but the work in flight.
    The code doing that work says what it was as notes on the interrupt
    (``KeyboardInterrupt.add_note``), and the message here repeats them.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt as err:
        during = "; ".join(getattr(err, "__notes__", ()))
        print(f"interrupted{f' during {during}' if during else ''}; finished work is saved; "
              "run the same command again to resume", file=sys.stderr)
        code = 130
    sys.exit(code)


def _raise_interrupt(signum, frame):
    # A second SIGTERM (Slurm signals every process of the job) must not interrupt the cleanup.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt
