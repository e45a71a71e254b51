"""The whole study in one command: python3 -m src.reproduce CONFIG_DIR [--fresh] [--device D].

Every ``*.json`` in CONFIG_DIR is one criterion of the study (``config/demo``: cka and l1).
The command trains every seed of every config (configs with the same training settings share
their models), prunes each config's seeds, and writes a comparison report for each group of
configs that share their trained models (``report/``, or ``report-<model>/`` per group),
skipping work already done: a finished model is not retrained, a finished prune run not
redone, an interrupted one resumes (run identity, :mod:`src.results`). It prints one progress
bar over the whole plan (trainings + prune iterations, with an ETA) on a terminal, one line
per step in a batch log, and at the end the paper's table (test accuracy per iteration, mean
and min-max over seeds, per criterion) and the figure's path. What the steps print goes to
``<output>/<CONFIG_DIR name>/reproduce.log``.

With ``--jobs N`` (N > 1) the steps run as child processes instead, N at a time, one thread
each (as ``scripts/study.sh`` runs them with ``xargs -P``): first one ``main_train.py`` per model
file to train (configs sharing a training share it), then one ``main_prune.py`` per config and
seed. Each job's output is streamed to the console prefixed with its name (``[prune cka seed 1]``);
a failed job (a diverged training exits 1) does not stop the others, and the run ends with one
line naming every failed job (exit status 2), before the reports.

A config of ``prune.strategy`` "depth" is pruned by :mod:`src.pruning.depth` (one step per
removal count) and reported by :mod:`src.report.depth`: the depth configs of a study share one
report, ``report-depth/``, beside the width configs' reports.

With ``--portable-kernels`` the steps run as child processes (one at a time without ``--jobs``)
with :data:`src.provenance.PORTABLE_KERNELS` in their environment: the CPU kernels are chosen
when torch loads, so this process, which has loaded it, cannot change its own. The models and
records then say so in their provenance (``docs/reproducibility.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from src import results
from src.artifacts import load_model, model_family, model_path, output_dir
from src.cli import add_device_options, apply_threads, require_writable_dir, run
from src.config import ExperimentConfig, load_config
from src.data import Splits
from src.errors import UserError
from src.jobs import Job, failure_summary, run_jobs
from src.provenance import PORTABLE_KERNELS, kernel_settings
from src.pruning import depth
from src.pruning.resume import discard_other_runs, saved_progress
from src.pruning.strategy import prune_seed
from src.points import search_dir, searched_config
from src.report import build_report, paper_table, render_text, write_outputs
from src.report.depth import write_depth_report
from src.train import load_experiment_data, select_device, train_seed


ROOT = Path(__file__).resolve().parents[1]  # where main_train.py and main_prune.py are


@dataclass(frozen=True)
class Plan:
    configs: tuple[ExperimentConfig, ...]
    trainings: tuple[tuple[ExperimentConfig, int], ...]  # one per model file still to train
    iterations: int  # prune iterations (depth: removal counts) still to run, over all configs and seeds

    @property
    def steps(self) -> int:
        return len(self.trainings) + self.iterations


def load_study(directory: Path, use_search: bool = True, output_root: Path = Path("output")) -> list[ExperimentConfig]:
    """The configs of a study folder that have a prune section; UserError names a bad one.

    A config without a prune section (a search or training demo) is not part of the study and
    is named as such. As main_train.py and main_prune.py do, a config takes the best values of
    a finished search of its settings in ``<output_root>/search`` unless ``use_search`` is false.
    """
    if not directory.is_dir():
        raise UserError(f"{directory}: not a directory of experiment configs")
    configs = []
    for path in sorted(directory.glob("*.json")):
        cfg, searched = searched_config(load_config(path), use_search, search_dir(output_root))
        if cfg.prune is None and cfg.depth is None:
            print(f"{cfg.name}: no prune section, not part of the study")
            continue
        print(f"{cfg.name}: training parameters {searched}")
        configs.append(cfg)
    if not configs:
        raise UserError(f"{directory}: no *.json experiment config with a prune section")
    return configs


def make_plan(configs: Sequence[ExperimentConfig], models_dir: Path, output_root: Path) -> Plan:
    trainings: dict[Path, tuple[ExperimentConfig, int]] = {}
    iterations = 0
    for cfg in configs:
        for seed in cfg.seeds:
            path = model_path(cfg, seed, models_dir)
            if not path.exists():
                trainings.setdefault(path, (cfg, seed))
            if cfg.depth is not None:
                iterations += depth.counts_left(cfg, output_dir(cfg, output_root), seed)
                continue
            progress = saved_progress(output_dir(cfg, output_root), seed)  # the checkpoint is the truth
            iterations += progress.remaining(cfg.require_prune().params.iterations)
    return Plan(tuple(configs), tuple(trainings.values()), iterations)


def _check_identities(configs: Sequence[ExperimentConfig], models_dir: Path, output_root: Path, fresh: bool) -> None:
    """Before any work: every folder holds only results of the run its config asks for (or --fresh)."""
    for cfg in configs:
        models = {seed: model_path(cfg, seed, models_dir) for seed in cfg.seeds}
        if cfg.depth is not None:
            depth.discard_other_depth_runs(output_dir(cfg, output_root), cfg, models, fresh=fresh)
        else:
            discard_other_runs(output_dir(cfg, output_root), cfg, models, replace=fresh)


def reproduce(directory: Path, models_dir: Path, output_root: Path, device_name: str | None, fresh: bool,
              use_search: bool = True, jobs: int = 1, portable: bool = False) -> None:
    """Run the study and print its reports: one per trained-model family (configs sharing their models).

    ``jobs`` > 1: the trainings and prunes run as that many one-thread processes at a time;
    ``portable``: as processes (``jobs`` at a time) with :data:`PORTABLE_KERNELS` set.
    """
    configs = load_study(directory, use_search, output_root)
    _check_identities(configs, models_dir, output_root, fresh)
    plan = make_plan(configs, models_dir, output_root)
    device = select_device(device_name)
    study_dir = output_root / directory.name
    log_path = study_dir / "reproduce.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    in_processes = jobs > 1 or portable
    kernels = " with portable kernels" if portable else ""
    print(f"{directory}: {len(configs)} configs ({', '.join(cfg.name for cfg in configs)}), "
          f"{len(plan.trainings)} model(s) to train, {plan.iterations} prune iteration(s) to run, on {device}; "
          + (f"{jobs} job{'s' if jobs > 1 else ''} at a time{kernels}, their output below" if in_processes else f"details in {log_path}"))
    started = time.perf_counter()
    if in_processes:
        _run_in_processes(plan, models_dir, output_root, device_name, fresh, use_search, jobs,
                          PORTABLE_KERNELS if portable else {})
    else:
        _run_in_process(plan, models_dir, output_root, device, fresh, log_path)
    _write_reports(configs, output_root, study_dir)
    print(f"wall time {time.perf_counter() - started:.0f}s")


def _run_in_processes(plan: Plan, models_dir: Path, output_root: Path, device_name: str | None, fresh: bool,
                      use_search: bool, jobs: int, env: dict[str, str]) -> None:
    """The plan as child processes, ``jobs`` at a time, with ``env`` set in their environment: the trainings,
    then a prune per config and seed whose model exists; UserError naming the failed jobs."""
    options = ("--models-dir", str(models_dir.resolve()), "--output-dir", str(output_root.resolve()),
               "--threads", "1", "--wandb", "disabled", *(("--device", device_name) if device_name else ()),
               *(() if use_search else ("--no-search-params",)))

    def job(verb: str, script: str, cfg: ExperimentConfig, seed: int, *extra: str) -> Job:
        return Job(f"{verb} {cfg.name} seed {seed}",
                   (sys.executable, str(ROOT / script), str(cfg.source.resolve()), "--seed", str(seed), *options, *extra))

    trained = run_jobs([job("train", "main_train.py", cfg, seed) for cfg, seed in plan.trainings], jobs, ROOT, env=env)
    prunes = []
    for cfg in plan.configs:
        for seed in cfg.seeds:
            if model_path(cfg, seed, models_dir).exists():
                prunes.append(job("prune", "main_prune.py", cfg, seed, *(("--fresh",) if fresh else ())))
            else:
                print(f"{cfg.name} seed {seed}: no trained model (diverged?); not pruned")
    summary = failure_summary([*trained, *run_jobs(prunes, jobs, ROOT, env=env)])
    if summary is not None:
        raise UserError(summary)


def _run_in_process(plan: Plan, models_dir: Path, output_root: Path, device: torch.device, fresh: bool,
                    log_path: Path) -> None:
    """The plan in this process, one progress bar over its steps, the steps' output in ``log_path``."""
    interactive = sys.stderr.isatty()
    console = sys.stdout  # the steps' own output is redirected to the log
    bar = tqdm(total=plan.steps, unit="step", disable=not interactive, dynamic_ncols=True)
    started = time.perf_counter()
    step = 0

    def advance(what: str) -> None:
        nonlocal step
        step += 1
        bar.update(1)
        if not interactive:
            print(f"[{step}/{plan.steps}] {what} ({time.perf_counter() - started:.0f}s)", file=console, flush=True)

    splits_by_data: dict[str, Splits] = {}
    with open(log_path, "a", buffering=1) as log, bar:  # line-buffered: `tail -f` shows progress
        def splits_of(cfg: ExperimentConfig) -> Splits:
            key = repr(cfg.data.identity())
            if key not in splits_by_data:
                splits_by_data[key] = load_experiment_data(cfg, device)
            return splits_by_data[key]

        for cfg, seed in plan.trainings:
            bar.set_description(f"train {cfg.name} seed {seed}")
            with contextlib.redirect_stdout(log):
                train_seed(cfg, seed, splits_of(cfg), device, models_dir)
            advance(f"trained {cfg.name} seed {seed}")
        for cfg in plan.configs:
            out_dir = output_dir(cfg, output_root)
            for seed in cfg.seeds:
                path = model_path(cfg, seed, models_dir)
                if not path.exists():  # diverged: recorded by train_seed, nothing to prune
                    print(f"{cfg.name} seed {seed}: no trained model (diverged?); see {log_path}", file=console)
                    continue
                bar.set_description(f"prune {cfg.name} seed {seed}")
                if cfg.depth is not None:
                    # A model trained since the check above may differ from the one its stored record pruned.
                    depth.discard_other_depth_runs(out_dir, cfg, {seed: path}, fresh=fresh)

                    def on_point(pruned, point, cfg=cfg, seed=seed) -> None:
                        acc = (point.after_retrain or point.after_prune)["test_acc"]
                        advance(f"{cfg.name} seed {seed} {point.count} blocks removed: test acc {acc:.4f}")

                    with contextlib.redirect_stdout(log):
                        depth.prune_depth_seed(load_model(path, cfg, device), cfg, seed, splits_of(cfg), device,
                                               path, out_dir, on_point=on_point)
                    continue
                # A model trained since the check above may differ from the one its stored results pruned.
                discard_other_runs(out_dir, cfg, {seed: path}, replace=fresh)

                def on_iteration(result: results.SeedResult, cfg=cfg, seed=seed) -> None:
                    last = result.iterations[-1]
                    acc = (last.after_retrain or last.after_prune)["test_acc"]
                    advance(f"{cfg.name} seed {seed} iteration {last.iteration}/{result.planned_iterations}: "
                            f"test acc {acc:.4f}")

                with contextlib.redirect_stdout(log):
                    prune_seed(load_model(path, cfg, device), cfg, seed, splits_of(cfg), device, path, out_dir,
                               on_iteration=on_iteration)


def _write_reports(configs: Sequence[ExperimentConfig], output_root: Path, study_dir: Path) -> None:
    """One report per trained-model family, with the paper's table printed."""
    depth_configs = [cfg for cfg in configs if cfg.depth is not None]
    if depth_configs:
        paths = write_depth_report([output_dir(cfg, output_root) for cfg in depth_configs], study_dir / "report-depth")
        print(f"\ndepth: {', '.join(cfg.name for cfg in depth_configs)}")
        print(paths.markdown.read_text())
        print(f"report: {paths.markdown}\nfigure: {paths.accuracy_figure}")
    families: dict[str, list[ExperimentConfig]] = {}
    for cfg in configs:
        if cfg.depth is None:
            families.setdefault(model_family(cfg), []).append(cfg)
    for family, members in families.items():
        report = build_report([output_dir(cfg, output_root) for cfg in members])
        report_dir = study_dir / ("report" if len(families) == 1 else f"report-{family}")
        paths = write_outputs(report, report_dir)
        print(f"\n{family}: {', '.join(cfg.name for cfg in members)}")
        print(render_text(paper_table(report)))
        print(f"report: {paths.markdown}\nfigure: {paths.accuracy_figure}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m src.reproduce",
                                     description="Train, prune and compare every config of a study folder.")
    parser.add_argument("config_dir", type=Path, help="folder of experiment configs, one per criterion, e.g. config/demo")
    add_device_options(parser)
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="trained models (default: models/)")
    parser.add_argument("--output-dir", type=Path, default=Path("output"), help="results root (default: output/)")
    parser.add_argument("--no-search-params", action="store_true",
                        help="use the configs' own values, not those of a finished search")
    parser.add_argument("--jobs", type=_job_count, default=1, metavar="N",
                        help="run the trainings, then the prunes, as N one-thread processes at a time "
                             "(default 1: everything in this process)")
    parser.add_argument("--portable-kernels", action="store_true",
                        help=f"run the steps as child processes with portable CPU kernels "
                             f"({kernel_settings(PORTABLE_KERNELS)}; slower; see docs/reproducibility.md)")
    parser.add_argument("--fresh", action="store_true",
                        help="replace results that another run made (see main_prune.py --fresh) instead of stopping")
    args = parser.parse_args(argv)
    require_writable_dir(args.models_dir, "--models-dir")
    require_writable_dir(args.output_dir, "--output-dir")
    apply_threads(args.threads)
    reproduce(args.config_dir, args.models_dir, args.output_dir, args.device, args.fresh, not args.no_search_params,
              args.jobs, args.portable_kernels)
    return 0


def _job_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


if __name__ == "__main__":
    run(main)
