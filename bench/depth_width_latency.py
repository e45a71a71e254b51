"""One-thread CPU latency of the depth study's networks at the endpoint's MACs, depth against width.

    OMP_NUM_THREADS=1 .venv/bin/python bench/depth_width_latency.py [--rounds 7] [--exported]

The study's records time only the depth networks, each in its own run, on a shared machine; this
times every shape the endpoint compares, in turns, in one process. The weights are random (a
network's time depends on its shapes alone): the dense model of config/depth-fmnist (12 blocks
of width 32); 6 blocks removed by ``tail`` (``cka_prune.depth``, Skip modules, with and without
the least-squares patch); and the widths the width cells prune to: ``cka`` keeps the residual
stream (32) and leaves 23 and 15 hidden units per block (9/32 and 17/32 removed), Torch-Pruning's
criteria leave 29 and 26 channels in every group (3/32 and 6/32). Prints MACs (Torch-Pruning's
counter, as the records) and the median over rounds of each round's median seconds, batch 1 and 64.
With ``--exported`` each network is timed as the ``torch.export`` program ``--export`` saves
(:func:`src.export.save_program`: batch dimension dynamic), loaded back, beside its eager module.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cka_prune import depth  # noqa: E402
from src.export import save_program  # noqa: E402
from src.residual_models import ResMLP  # noqa: E402

FEATURES, CLASSES, WIDTH, DEPTH = 784, 10, 32, 12
REMOVED = 6


def depth_network(model: torch.nn.Module, example: torch.Tensor, compensate: str) -> torch.nn.Module:
    names = depth.find_blocks(model, example[:1])
    plan = depth.select(model, names, [example], criterion="tail", count=REMOVED, compensate=compensate)
    return depth.apply(model, plan)


def networks(example: torch.Tensor) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    dense = ResMLP(FEATURES, WIDTH, DEPTH, WIDTH, CLASSES).eval()
    return {
        "dense": dense,
        f"depth {REMOVED} removed, patch": depth_network(dense, example, "lstsq"),
        f"depth {REMOVED} removed, no patch": depth_network(dense, example, "none"),
        "width cka 9/32 (hidden 23)": ResMLP(FEATURES, WIDTH, DEPTH, 23, CLASSES).eval(),
        "width tp 3/32 (all groups 29)": ResMLP(FEATURES, 29, DEPTH, 29, CLASSES).eval(),
        "width cka 17/32 (hidden 15)": ResMLP(FEATURES, WIDTH, DEPTH, 15, CLASSES).eval(),
        "width tp 6/32 (all groups 26)": ResMLP(FEATURES, 26, DEPTH, 26, CLASSES).eval(),
    }


def exported(net: torch.nn.Module, example: torch.Tensor, folder: Path) -> torch.nn.Module:
    """``net`` as the program ``--export`` writes, loaded back as a module."""
    path = folder / f"{id(net)}.pt2"
    save_program(path, net, tuple(example.shape[1:]), example[:2])
    return torch.export.load(path).module()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds, the networks in turns (default 7)")
    parser.add_argument("--exported", action="store_true", help="also time each network's torch.export program")
    args = parser.parse_args()
    torch.set_num_threads(1)
    example = torch.randn(512, 1, 28, 28)
    nets = networks(example)
    if args.exported:
        with tempfile.TemporaryDirectory() as folder:
            programs = {f"{name} [exported]": exported(net, example, Path(folder)) for name, net in nets.items()}
        nets = {**nets, **programs}
    seconds = {name: {1: [], 64: []} for name in nets}
    for _ in range(args.rounds):
        for name, net in nets.items():
            for batch, s in depth.latency(net, example[:1], batch_sizes=(1, 64), threads=1).items():
                seconds[name][batch].append(s)
    dense = {b: statistics.median(seconds["dense"][b]) for b in (1, 64)}
    rows = []
    for name, net in nets.items():
        cost = depth.cost(nets[name.removesuffix(" [exported]")], example[:1])
        medians = {b: statistics.median(seconds[name][b]) for b in (1, 64)}
        rows.append([name, cost.macs, f"{cost.macs / depth.cost(nets['dense'], example[:1]).macs:.3f}",
                     *(f"{1e3 * medians[b]:.3f} ({medians[b] / dense[b]:.2f})" for b in (1, 64))])
    print(f"one thread, median over {args.rounds} rounds (fraction of the dense network's)")
    print(tabulate(rows, headers=["network", "MACs", "MACs left", "ms @1", "ms @64"], tablefmt="pipe",
                   disable_numparse=True))


if __name__ == "__main__":
    main()
