"""The command: python3 -m src.report RESULT_DIR... [--out DIR] [--fixed-endpoint ...] [--endpoint ...] [--all-pairs]
[--bootstrap]."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from src.config import load_config
from src.depth_results import is_depth_file
from src.errors import UserError
from src.io import atomic_write_text
from src.report.build import DEFAULT_CONFIG_ROOT, Report, ReportOptions, build_report
from src.report.csvs import endpoint_csv, gap_csv, iteration_csv, layers_csv, overlap_csv
from src.report.endpoints import MEAN, parse_endpoint, parse_fixed_endpoint
from src.report.figures import parse_formats, plot_accuracy, plot_cka, plot_heatmaps, plot_overlap
from src.report.tables import report_markdown, report_text
from src.results import seed_files

DEFAULT_OUTPUT_ROOT = Path("output")


@dataclass(frozen=True)
class ReportPaths:
    directory: Path
    markdown: Path
    accuracy_figure: Path
    csv: tuple[Path, ...]
    figures: tuple[Path, ...]  # every figure file: accuracy first, then cka / overlap when there is data, each in every format


def default_out_dir(report: Report) -> Path:
    """``<dir>/report`` for one folder; ``output/report/<a>_vs_<b>...`` (experiment names, '/' -> '-') for several."""
    if len(report.experiments) == 1:
        return report.experiments[0].directory / "report"
    return DEFAULT_OUTPUT_ROOT / "report" / "_vs_".join(exp.name.replace("/", "-") for exp in report.experiments)


def write_outputs(report: Report, out_dir: Path, formats: Sequence[str] = ("png",),
                  extra_figures: Sequence[Path] = ()) -> ReportPaths:
    """Write report.md, the CSV tables and the figures (each in every format) into ``out_dir``, each file atomically.

    ``extra_figures``: figures already written there (the CKA heatmap), listed in report.md too.
    """
    accuracy = plot_accuracy(report, out_dir / "accuracy", formats)
    figures = [*accuracy, *plot_cka(report, out_dir / "cka", formats), *plot_overlap(report, out_dir / "overlap", formats),
               *extra_figures]
    csvs = [atomic_write_text(out_dir / "iterations.csv", iteration_csv(report)),
            atomic_write_text(out_dir / "layers.csv", layers_csv(report))]
    if report.gaps:
        csvs.append(atomic_write_text(out_dir / "gap.csv", gap_csv(report)))
    if report.endpoints:
        csvs.append(atomic_write_text(out_dir / "endpoints.csv", endpoint_csv(report)))
    if report.overlaps:
        csvs.append(atomic_write_text(out_dir / "overlap.csv", overlap_csv(report)))
    markdown = atomic_write_text(out_dir / "report.md", report_markdown(report, figures))
    return ReportPaths(out_dir, markdown, accuracy[0], tuple(csvs), tuple(figures))


def heatmap_figure(report: Report, seed: int, samples: int, config_root: Path, out_dir: Path,
                   formats: Sequence[str]) -> list[Path]:
    """``cka_heatmap_seed<S>``: every run's trained vs final pruned network of ``seed`` (:mod:`src.heatmap`).

    The models are built from each experiment's ``<config_root>/<experiment>.json`` and fed the
    first ``samples`` validation samples of its dataset.
    """
    from src.heatmap import seed_heatmap  # torch: only when a heatmap is asked for
    from src.train import load_experiment_data, select_device

    if samples < 2:
        raise UserError(f"--heatmap-samples {samples}: CKA needs at least 2 samples")
    device = select_device()
    heatmaps = []
    for exp in report.experiments:
        path = config_root / f"{exp.name}.json"
        if not path.is_file():
            raise UserError(f"{path}: not found; --heatmap builds {exp.directory}'s models from its config "
                            "(give the folder that holds it with --config-root)")
        result = next((s for s in exp.all_seeds if s.seed == seed), None)
        if result is None:
            raise UserError(f"--heatmap {seed}: {exp.directory} has no result for seed {seed}")
        cfg = load_config(path)
        val = load_experiment_data(cfg, device).val
        heatmaps.append(seed_heatmap(cfg, result, exp.directory, exp.label, val, samples, device))
    return plot_heatmaps(heatmaps, out_dir / f"cka_heatmap_seed{seed}", formats)


def holds_depth_results(directory: Path) -> bool:
    """Whether the folder's result files are depth-pruning records (:mod:`src.depth_results`)."""
    files = seed_files(directory)
    return bool(files) and all(map(is_depth_file, files))


def default_depth_out_dir(result_dirs: Sequence[Path]) -> Path:
    """As :func:`default_out_dir`, from the folders' names."""
    if len(result_dirs) == 1:
        return Path(result_dirs[0]) / "report"
    return DEFAULT_OUTPUT_ROOT / "report" / "_vs_".join(Path(d).name for d in result_dirs)


def write_report(result_dirs: Sequence[Path], out_dir: Path | None = None,
                 config_root: Path | None = DEFAULT_CONFIG_ROOT) -> ReportPaths:
    """Load ``result_dirs``, aggregate, and write the report (``out_dir`` None: see default_out_dir)."""
    report = build_report(result_dirs, config_root)
    return write_outputs(report, out_dir if out_dir is not None else default_out_dir(report))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m src.report",
        description="Tables and figures comparing pruning runs (mean, min, max over seeds), with paired endpoint "
                    "tests (Holm-corrected) between them. Folders of depth-pruning results (prune.strategy \"depth\") "
                    "get the depth report instead: accuracy, MACs and latency per count, ranking quality "
                    "(src.report.depth); --out and --format apply.")
    parser.add_argument("result_dirs", nargs="+", type=Path, metavar="RESULT_DIR",
                        help="output/<experiment>/ folders from main_prune.py; the first is the reference for gaps")
    parser.add_argument("--out", type=Path,
                        help="where to write (default: RESULT_DIR/report for one folder, "
                             "output/report/<a>_vs_<b> for several)")
    parser.add_argument("--config-root", type=Path, default=DEFAULT_CONFIG_ROOT,
                        help="where to find <experiment>.json: the planned seeds, and the run to report when a "
                             "folder holds several (default: config/)")
    parser.add_argument("--fixed-endpoint", default=MEAN, type=parse_fixed_endpoint, metavar="KIND:VALUE",
                        help="the endpoint the study fixed before its run, the only one whose tests are marked "
                             "significant: mean (the mean accuracy over iterations, default), iteration:K or "
                             "remaining:F")
    parser.add_argument("--endpoint", action="append", default=[], type=parse_endpoint, metavar="KIND:VALUE",
                        help="also test, descriptively, the accuracy at iteration:K or at remaining:F (the first "
                             "iteration leaving at most a fraction F of the neurons); repeatable. The mean accuracy "
                             "over iterations is always tested")
    parser.add_argument("--all-pairs", action="store_true",
                        help="compare every pair of folders (default: each against the first)")
    parser.add_argument("--bootstrap", action="store_true",
                        help="BCa bootstrap intervals of the per-iteration gaps where at least 10 seeds are paired "
                             "(default and below 10 seeds: paired t-intervals)")
    parser.add_argument("--format", default="png", metavar="FORMATS",
                        help="figure formats, comma-separated: png, pdf, svg (default: png)")
    parser.add_argument("--heatmap", type=int, metavar="SEED",
                        help="also draw the CKA between every layer of SEED's trained network and of its final "
                             "pruned network, for each folder (needs the models and config/<experiment>.json)")
    parser.add_argument("--heatmap-samples", type=int, default=1000, metavar="N",
                        help="the heatmap's samples: the first N of the validation split (default: 1000)")
    args = parser.parse_args(argv)
    formats = parse_formats(args.format)
    if all(map(holds_depth_results, args.result_dirs)):
        from src.report.depth import write_depth_report
        paths = write_depth_report(args.result_dirs, args.out or default_depth_out_dir(args.result_dirs), formats)
        print(paths.markdown.read_text())
        print(f"report: {paths.markdown}\nfigure: {paths.accuracy_figure}")
        return 0
    options = ReportOptions(endpoints=tuple(dict.fromkeys(args.endpoint)), fixed=args.fixed_endpoint,
                            all_pairs=args.all_pairs, bootstrap=args.bootstrap)
    report = build_report(args.result_dirs, args.config_root, options)
    out_dir = args.out if args.out is not None else default_out_dir(report)
    extra = ([] if args.heatmap is None else
             heatmap_figure(report, args.heatmap, args.heatmap_samples, args.config_root, out_dir, formats))
    paths = write_outputs(report, out_dir, formats, extra)
    print(report_text(report))
    print(f"report: {paths.markdown}")
    print(f"figure: {paths.accuracy_figure}")
    return 0
