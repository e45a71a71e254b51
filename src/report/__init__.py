"""Compare pruning runs: python3 -m src.report RESULT_DIR... [--out DIR].

Each RESULT_DIR is an ``output/<experiment>/`` folder written by main_prune.py, holding one
``<seed>.json`` per seed. The report aggregates over seeds, per criterion and iteration:

- neurons remaining per pruned layer, test accuracy after pruning and after retraining
  (mean, min, max over seeds), the retraining epochs run, the smallest CKA accepted;
- with several folders, per pair (each against the first; every pair with ``--all-pairs``),
  over the seeds that pruned the same trained model: the accuracy gap at every iteration with
  a descriptive 95 % t-interval; the paired t-test of per-seed endpoints (the one the study fixed
  before its run, ``--fixed-endpoint``, default the mean accuracy over iterations; the mean and
  any ``--endpoint`` descriptively), Holm-corrected over the pairs, with the seeds a test would
  need at 80 % power; and the neurons the two removed in common.

Outputs (under --out; default ``<dir>/report`` for one folder, ``output/report/<a>_vs_<b>``
for several): ``report.md``, ``iterations.csv``, ``layers.csv`` (long format: one row per
seed, criterion, iteration and layer) (+ ``gap.csv``, ``endpoints.csv``, ``overlap.csv``) and
the figures ``accuracy``, ``cka``, ``overlap`` in each ``--format`` (png, pdf, svg).
``--heatmap SEED`` adds the layer-by-layer CKA between each run's trained and final pruned
network (:mod:`src.heatmap`). The tables are also printed.

Partial results are fine: a seed still running, a seed with no file yet, or an unreadable file
is listed in the report's notes, not fatal; so are diverged seeds (kept out of every
statistic), seeds that cannot be paired, layers a pass skipped, and iterations made under
different provenance. Iteration 0 is the trained model before pruning.

The parts: :mod:`.records` (folders, the run, pairing), :mod:`.notes` (provenance, skipped
layers), :mod:`.stats` (intervals, paired t, Holm, power), :mod:`.aggregate` (rows, gaps,
overlaps), :mod:`.endpoints` (per-seed endpoints and their tests), :mod:`.build` (the report),
:mod:`.tables`, :mod:`.csvs`, :mod:`.figures`, :mod:`.cli` (the command), :mod:`.grid` (a grid study's
cells side by side), :mod:`.committed` (the committed studies' reports, made again).
"""

from src.report.aggregate import GapRow, IterationRow, OverlapRow, overlap_fraction
from src.report.build import DEFAULT_CONFIG_ROOT, Report, ReportOptions, build_report
from src.report.cli import ReportPaths, default_out_dir, main, write_outputs, write_report
from src.report.csvs import layer_records
from src.report.endpoints import Endpoint, EndpointTest, parse_endpoint
from src.report.figures import CRITERION_COLORS, figure_style, label_color, parse_formats, run_style
from src.report.records import Experiment, Pairing, load_experiment, pair_seeds
from src.report.stats import Interval, PairedT, Stat, holm, paired_interval, paired_t, seeds_needed
from src.report.tables import Table, gap_table, paper_table, render_markdown, render_text, report_text

__all__ = [
    "CRITERION_COLORS", "DEFAULT_CONFIG_ROOT", "Endpoint", "EndpointTest", "Experiment", "GapRow", "Interval",
    "IterationRow", "OverlapRow", "PairedT", "Pairing", "Report", "ReportOptions", "ReportPaths", "Stat", "Table",
    "build_report", "default_out_dir", "figure_style", "gap_table", "holm", "label_color", "layer_records",
    "load_experiment", "main", "overlap_fraction", "pair_seeds", "paired_interval", "paired_t", "paper_table",
    "parse_endpoint", "parse_formats", "render_markdown", "render_text", "report_text", "run_style", "seeds_needed",
    "write_outputs", "write_report",
]
