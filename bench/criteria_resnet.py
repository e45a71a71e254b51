"""The Torch-Pruning head-to-head: one table and one figure from the results of a config folder.

    .venv/bin/python bench/criteria_resnet.py config/fmnist-cpu [--output-dir output] [--out docs/fmnist-cpu]

Run after ``python3 -m src.reproduce CONFIG_DIR`` (or main_train.py + main_prune.py per config)
has pruned every config of the folder (one-shot, physical: the zoo models). Per criterion, over
seeds, mean [min-max]: test accuracy of the trained model, after pruning, after fine-tuning, the
change from the trained model, and the MACs and parameter speed-ups of the pruned network,
counted on the architecture rebuilt from each seed's pruning history. Writes
``head-to-head.md`` (the table) and ``head-to-head.png`` (accuracy per seed) to ``--out``.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src import results  # noqa: E402
from src.artifacts import output_dir  # noqa: E402
from src.config import load_config  # noqa: E402
from src.models import build_model  # noqa: E402
from src.pruning.physical import rebuild  # noqa: E402
from src.pruning.shrink import network_size  # noqa: E402
from src.pruning.resume import pruning_history  # noqa: E402
from src.pruning.strategy import example_input  # noqa: E402
from src.report import label_color, figure_style  # noqa: E402

COLUMNS = ("trained acc %", "pruned acc %", "fine-tuned acc %", "change (pp)", "MACs speed-up", "params speed-up")


def seed_row(cfg, out_dir: Path, result: results.SeedResult) -> list[float]:
    """The six numbers of one seed (accuracies in %, speed-ups as ratios)."""
    original = build_model(cfg.model)
    pruned = rebuild(build_model(cfg.model), example_input(cfg, original), pruning_history(out_dir, result.seed))
    shape = tuple(cfg.model.input_shape)
    last = result.iterations[-1].iteration
    trained, after_prune, after_retrain = (100 * result.test_acc(0, True), 100 * result.test_acc(last, False),
                                           100 * result.test_acc(last, True))
    (params_before, macs_before), (params_after, macs_after) = (network_size(m, shape) for m in (original, pruned))
    return [trained, after_prune, after_retrain, after_retrain - trained, macs_before / macs_after,
            params_before / params_after]


def cell(values: np.ndarray) -> str:
    return f"{values.mean():.2f} [{values.min():.2f}-{values.max():.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_dir", type=Path)
    parser.add_argument("--output-dir", type=Path, default=Path("output"), help="results root (default output/)")
    parser.add_argument("--out", type=Path, help="where to write (default: print only)")
    args = parser.parse_args()

    table, per_seed = [], {}
    for path in sorted(args.config_dir.glob("*.json")):
        cfg = load_config(path)
        out_dir = output_dir(cfg, args.output_dir)
        done = [r for r in map(results.load, results.seed_files(out_dir)) if r.complete]
        if not done:
            print(f"{cfg.name}: no finished seed in {out_dir}; skipped")
            continue
        rows = np.array([seed_row(cfg, out_dir, r) for r in done])
        criterion = cfg.require_prune().params.type
        per_seed[criterion] = rows
        table.append([criterion, len(done), *(cell(rows[:, i]) for i in range(4)),
                      *(cell(rows[:, i]) + "x" for i in (4, 5))])
    text = tabulate(table, ["criterion", "seeds", *COLUMNS], tablefmt="github", disable_numparse=True)
    text += ("\n\nMean over seeds [min-max]. Accuracies on the test set; change: fine-tuned minus trained, "
             "in percentage points; speed-ups: trained / pruned, counted on the rebuilt pruned architecture.\n")
    print(text)
    if args.out is None or not per_seed:
        return

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "head-to-head.md").write_text(text)
    with plt.rc_context(figure_style()):
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))  # own y ranges: pruned and fine-tuned differ by ~70 pp
        for ax, column, title in ((axes[0], 1, "after pruning"), (axes[1], 2, "after fine-tuning")):
            for x, (criterion, rows) in enumerate(per_seed.items()):
                ax.scatter(np.full(len(rows), x), rows[:, column], color=label_color(criterion), s=18)
                ax.hlines(rows[:, column].mean(), x - 0.25, x + 0.25, color=label_color(criterion))
            base = np.mean([rows[:, 0].mean() for rows in per_seed.values()])
            ax.axhline(base, color="grey", linestyle="--", linewidth=1, label=f"trained ({base:.2f} %)")
            ax.set_xticks(range(len(per_seed)), list(per_seed))
            ax.set_title(title)
            ax.set_ylabel("test accuracy (%)")
            ax.legend(loc="best")
        fig.tight_layout()
        fig.savefig(args.out / "head-to-head.png", dpi=150)
    print(f"wrote {args.out / 'head-to-head.md'} and {args.out / 'head-to-head.png'}")


if __name__ == "__main__":
    main()
