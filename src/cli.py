"""What the three entry scripts share: common options and the user-error boundary."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Callable, Sequence

from src.config import ExperimentConfig
from src.errors import UserError


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help="JSON experiment config, e.g. config/demo/cka.json")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--wandb", choices=("disabled", "offline", "online"),
                        help="W&B run logging mode (default: the config's wandb.mode, else disabled)")
    return parser


def add_seed_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seed", type=int, help="run only this seed")
    group.add_argument("--seed-index", type=int,
                       help="run only the config's seeds[I] (for Slurm arrays: $SLURM_ARRAY_TASK_ID)")


def selected_seeds(cfg: ExperimentConfig, seed: int | None, seed_index: int | None) -> list[int]:
    if seed is not None:
        return [seed]
    if seed_index is not None:
        if not 0 <= seed_index < len(cfg.seeds):
            raise UserError(f"{cfg.source}: --seed-index {seed_index} is out of range: seeds has {len(cfg.seeds)} entries (0..{len(cfg.seeds) - 1})")
        return [cfg.seeds[seed_index]]
    return list(cfg.seeds)


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run an entry point: user errors become one stderr line and exit status 2.

    SIGTERM (Slurm's time-limit warning, preemption) is handled like Ctrl-C: results are
    written atomically, so stopping between writes loses nothing but the work in flight.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; run the same command again to resume", file=sys.stderr)
        code = 130
    sys.exit(code)


def _raise_interrupt(signum, frame):
    # A second SIGTERM (Slurm signals every process of the job) must not interrupt the cleanup.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt
