"""Commands run N at a time as child processes, each output line streamed under its job's name.

Used by ``python3 -m src.reproduce --jobs N`` (as ``scripts/study.sh`` does with ``xargs -P``).
An interrupt (Ctrl-C, SIGTERM) cancels the jobs not started and sends SIGTERM to those running,
which save their work as the scripts do on SIGTERM (:func:`src.cli.run`), then re-raises.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, TextIO


@dataclass(frozen=True)
class Job:
    """``name``: how the output and the summary call it; ``command``: the argv to run."""

    name: str
    command: tuple[str, ...]


@dataclass(frozen=True)
class Outcome:
    job: Job
    returncode: int
    seconds: float

    @property
    def failed(self) -> bool:
        return self.returncode != 0


def failure_summary(outcomes: Sequence[Outcome]) -> str | None:
    """``2 of 6 jobs failed: train cka seed 0 (exit 1), ...``; None when every job succeeded."""
    failed = [o for o in outcomes if o.failed]
    if not failed:
        return None
    listing = ", ".join(f"{o.job.name} (exit {o.returncode})" for o in failed)
    return f"{len(failed)} of {len(outcomes)} jobs failed: {listing}"


def run_jobs(jobs: Sequence[Job], parallel: int, cwd: Path, out: TextIO | None = None,
             env: Mapping[str, str] | None = None) -> list[Outcome]:
    """Run ``jobs``, at most ``parallel`` at a time, in ``cwd``; their outcomes in the order of ``jobs``.

    Each job's environment is this process's with ``env`` set on top (variables read when a
    library loads, such as :data:`src.provenance.PORTABLE_KERNELS`, reach a job only this way).

    Each line a job prints (stdout and stderr together, unbuffered) goes to ``out`` as
    ``[name] line`` as soon as it is printed, whole lines only, so concurrent jobs never interleave
    within a line. ``out`` defaults to ``sys.stdout`` as it is when called.
    """
    out = out or sys.stdout
    environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    lock = threading.Lock()
    running: set[subprocess.Popen] = set()
    stopping = threading.Event()

    def one(job: Job) -> Outcome:
        start = time.perf_counter()
        with lock:
            if stopping.is_set():
                return Outcome(job, -1, 0.0)
            proc = subprocess.Popen(job.command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=environment)
            running.add(proc)
        try:
            for line in proc.stdout:
                with lock:
                    print(f"[{job.name}] {line.rstrip()}", file=out, flush=True)
            return Outcome(job, proc.wait(), time.perf_counter() - start)
        finally:
            with lock:
                running.discard(proc)

    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        futures = [pool.submit(one, job) for job in jobs]
        return [future.result() for future in futures]
    except BaseException:
        with lock:
            stopping.set()
            for proc in running:
                proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
