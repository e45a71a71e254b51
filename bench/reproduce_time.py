"""Masked vs shrunk retraining on the ex1 study: wall time, its ratio, and whether accuracies differ.

For each seed, trains the ex1 model once (config/ex1-fmnist/cka.json: Fashion-MNIST), then
prunes it twice in the same process, alternating the order per seed: retraining the masked
network (``shrink: false``) and the dense network of the surviving neurons (``shrink: true``).
Prints per-seed wall times, the ratio, the paired difference of the final test accuracy with a
95 % bootstrap CI (SciPy), and the projected time of the whole ex1 study (10 seeds x cka + l1).

    .venv/bin/python bench/reproduce_time.py [--seeds 0 1 2] [--iterations 15] [--config ...] [--device cpu]

Work goes to a temporary directory (``--work DIR`` keeps it, and reuses trained models).
"""

import argparse
import contextlib
import dataclasses
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.artifacts import load_model, model_path  # noqa: E402
from src.config import load_config  # noqa: E402
from src.pruning.strategy import prune_seed  # noqa: E402
from src.train import load_experiment_data, select_device, train_seed  # noqa: E402


def with_prune_params(cfg, **params):
    prune = cfg.require_prune()
    return dataclasses.replace(cfg, prune=dataclasses.replace(prune, params=dataclasses.replace(prune.params, **params)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/ex1-fmnist/cka.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--device")
    parser.add_argument("--work", type=Path, help="keep models and results here (default: a temporary directory)")
    args = parser.parse_args()
    device = select_device(args.device)
    base = load_config(args.config)
    splits = load_experiment_data(base, device)
    work = args.work or Path(tempfile.mkdtemp(prefix="reproduce-time-"))
    print(f"{base.name} on {device} ({torch.get_num_threads()} threads), {args.iterations} iterations, work in {work}")
    rows = []
    for n, seed in enumerate(args.seeds):
        start = time.perf_counter()
        trained_before = model_path(base, seed, work / "models").exists()
        with contextlib.redirect_stdout(io.StringIO()):
            model_file = train_seed(base, seed, splits, device, work / "models")
        modes = [False, True] if n % 2 == 0 else [True, False]  # alternate, so drifting load hits both
        row = {"seed": seed, "train": None if trained_before else time.perf_counter() - start}
        for shrink in modes:
            cfg = with_prune_params(base, iterations=args.iterations, shrink=shrink)
            model = load_model(model_file, cfg, device)
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                result = prune_seed(model, cfg, seed, splits, device, model_file,
                                    work / ("shrunk" if shrink else "masked") / cfg.name)
            mode = "shrunk" if shrink else "masked"
            row[mode] = time.perf_counter() - start
            row[f"{mode}_acc"] = result.iterations[-1].after_retrain["test_acc"]
            row["alive"] = "/".join(str(a) for a in result.alive().values())
        rows.append(row)
        trained = "model existed" if row["train"] is None else f"train {row['train']:.0f}s"
        print(f"seed {seed}: {trained}; prune+retrain masked {row['masked']:.0f}s, "
              f"shrunk {row['shrunk']:.0f}s ({row['masked'] / row['shrunk']:.2f}x); final test acc masked "
              f"{row['masked_acc']:.4f}, shrunk {row['shrunk_acc']:.4f}; alive {row['alive']}")
    masked, shrunk = sum(r["masked"] for r in rows), sum(r["shrunk"] for r in rows)
    print(f"total over {len(rows)} seed(s): masked {masked:.0f}s, shrunk {shrunk:.0f}s, ratio {masked / shrunk:.2f}x")
    diffs = np.array([r["shrunk_acc"] - r["masked_acc"] for r in rows])
    if len(diffs) >= 3:
        ci = stats.bootstrap((diffs,), np.mean, confidence_level=0.95, n_resamples=10_000,
                             random_state=np.random.default_rng(0)).confidence_interval
        print(f"final test accuracy, shrunk - masked: mean {100 * diffs.mean():+.2f} pp, 95 % bootstrap CI "
              f"[{100 * ci.low:+.2f}, {100 * ci.high:+.2f}] pp over {len(diffs)} seeds")
    trainings = [r["train"] for r in rows if r["train"] is not None]
    if not trainings:
        return
    train = statistics.mean(trainings)
    per_seed = {mode: statistics.mean(r[mode] for r in rows) for mode in ("masked", "shrunk")}
    for mode, seconds in per_seed.items():
        print(f"projected ex1 study (10 seeds x cka + l1, {mode} retraining, one process): "
              f"{(10 * train + 20 * seconds) / 60:.0f} min")


if __name__ == "__main__":
    main()
