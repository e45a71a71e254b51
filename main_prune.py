"""Prune the trained models of CONFIG: python3 main_prune.py CONFIG [--seed S | --seed-index I] [--fresh]."""

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from src.artifacts import ModelFileError, load_model, model_path, output_dir
from src.cli import add_seed_options, apply_threads, base_parser, require_writable_dir, run, selected_seeds
from src.config import ExperimentConfig, load_config
from src.data import iterate_batches
from src.errors import UserError
from src.export import export_depth, export_physical, export_seed
from src.pruning import depth
from src.pruning.description import run_description
from src.pruning.resume import discard_other_runs, pruning_history, saved_progress
from src.pruning.strategy import prune_seed, summary_table
from src.report import write_report
from src.report.depth import write_depth_report
from src.points import search_dir, searched_config
from src.tracking import PruneLog, resolve_mode, run_config, wandb_run
from src.train import load_experiment_data, select_device


def main(argv=None) -> int:
    parser = base_parser("Prune the trained models of CONFIG; results go to output/<experiment>/.")
    add_seed_options(parser)
    parser.add_argument("--models-dir", default="models", help="where main_train.py put the models (default: models/)")
    parser.add_argument("--output-dir", default="output",
                        help="results root; a finished search is read from <output-dir>/search/ (default: output/)")
    parser.add_argument("--export", action="store_true",
                        help="also save each pruned model as a smaller dense model in output/<experiment>/exported/ "
                             "(a W&B run with wandb.log_model also does, and logs it as an artifact)")
    parser.add_argument("--fresh", action="store_true",
                        help="replace this experiment's results that another run made (another config or trained "
                             "model) instead of stopping; results of this same run are kept and continued")
    parser.add_argument("--no-search-params", action="store_true",
                        help="use the config's own values, not those of a finished search")
    args = parser.parse_args(argv)
    cfg, searched = searched_config(load_config(args.config), not args.no_search_params, search_dir(args.output_dir))
    if cfg.depth is not None:
        return prune_depth(cfg, args)
    prune = cfg.require_prune()
    seeds = selected_seeds(cfg, args.seed, args.seed_index)
    require_writable_dir(args.output_dir, "--output-dir")
    apply_threads(args.threads)
    out_dir = output_dir(cfg, Path(args.output_dir))
    models = {seed: model_path(cfg, seed, Path(args.models_dir)) for seed in seeds}
    require_a_model(cfg, models)  # before the dataset, whose absence would hide this
    discard_other_runs(out_dir, cfg, models, replace=args.fresh)
    print(f"training parameters: {searched}")
    device = select_device(args.device)
    splits = load_experiment_data(cfg, device)
    p = prune.params
    print("\n".join(run_description(cfg, str(device))))
    mode = resolve_mode(cfg, args.wandb)
    done = []
    for seed, path, model in trained_models(cfg, models, device):
        progress = saved_progress(out_dir, seed)
        config = run_config(cfg, seed=seed, device=str(device), model_file=str(path))
        # A run only for work to do; a resumed or requeued job continues its own run.
        with wandb_run(cfg, mode if progress.remaining(p.iterations) else "disabled", job_type="prune",
                       name=f"{cfg.name}-seed{seed}", config=config, run_id=progress.run_id) as run:
            log = None if run is None else PruneLog(run, progress.iterations + 1, cfg.params.epochs)
            result = prune_seed(model, cfg, seed, splits, device, path, out_dir, on_epoch=log and log.retrain_epoch,
                                on_iteration=log and log.iteration_done, run_id=run and run.id)
            done.append(result)
            log_model = log is not None and cfg.wandb.log_model
            if args.export or log_model:
                exported = out_dir / "exported" / f"seed{seed}.pt"
                if cfg.model.uses_torch_pruning:
                    export_physical(model, cfg, pruning_history(out_dir, seed), exported)
                else:
                    export_seed(model, cfg, splits.test, exported)
                if log_model:
                    log.model(exported, result)
    if not done:
        print("nothing was pruned")
        return 1
    print(summary_table(done))
    print(f"results are in {out_dir}/ (run {done[0].run.config_digest})")
    report = write_report([out_dir], out_dir / "report")
    print(f"report: {report.markdown}\nfigure: {report.accuracy_figure}")
    return 0


def trained_models(cfg: ExperimentConfig, models: dict[int, Path],
                   device: torch.device) -> Iterator[tuple[int, Path, nn.Module]]:
    """Each seed's trained model, in seed order; a missing or unreadable file is skipped with one line."""
    for seed, path in models.items():
        if not path.exists():
            print(f"seed {seed}: no trained model at {path}; run main_train.py {cfg.source} first. Skipping.")
            continue
        try:
            yield seed, path, load_model(path, cfg, device)
        except ModelFileError as err:
            print(f"seed {seed}: {err}; retrain it with main_train.py. Skipping.")


def prune_depth(cfg: ExperimentConfig, args) -> int:
    """Remove blocks from each selected seed's trained model (``prune.strategy`` "depth", :mod:`src.pruning.depth`)."""
    seeds = selected_seeds(cfg, args.seed, args.seed_index)
    require_writable_dir(args.output_dir, "--output-dir")
    apply_threads(args.threads)
    out_dir = output_dir(cfg, Path(args.output_dir))
    models = {seed: model_path(cfg, seed, Path(args.models_dir)) for seed in seeds}
    require_a_model(cfg, models)
    depth.discard_other_depth_runs(out_dir, cfg, models, fresh=args.fresh)
    device = select_device(args.device)
    splits = load_experiment_data(cfg, device)
    p = cfg.require_depth().params
    example, _ = next(iterate_batches(splits.test, 2))  # what an exported program is traced on
    print(f"{cfg.name}: depth pruning by {p.criterion} ({'greedy' if p.greedy else 'ranked once'}, patch: "
          f"{p.compensate}, {p.samples} calibration samples, {p.retrain_epochs} retraining epochs), on {device}")
    if resolve_mode(cfg, args.wandb) != "disabled":
        print("W&B: depth runs are not logged to W&B; the record and report are local only")
    done = []
    for seed, path, model in trained_models(cfg, models, device):
        def export(pruned, point, seed=seed, dense=model):
            export_depth(pruned, dense, point, cfg, example, depth.exported_path(out_dir, seed, point.count))
        result = depth.prune_depth_seed(model, cfg, seed, splits, device, path, out_dir,
                                        on_point=export if args.export else None)
        done.append(result)
        unexported = [p.count for p in result.points if not depth.exported_path(out_dir, seed, p.count).exists()]
        if args.export and unexported:
            print(f"seed {seed}: counts {', '.join(map(str, unexported))} were pruned by an earlier run and are not "
                  "exported; rerun with --fresh to export them")
    if not done:
        print("nothing was pruned")
        return 1
    print(depth.depth_summary_table(done))
    print(f"results are in {out_dir}/ (run {done[0].run.config_digest})")
    report = write_depth_report([out_dir], out_dir / "report")
    print(f"report: {report.markdown}\nfigure: {report.accuracy_figure}")
    return 0


def require_a_model(cfg: ExperimentConfig, models: dict[int, Path]) -> None:
    """Stop when no selected seed has a trained model; a seed without one is skipped otherwise."""
    missing = [path for path in models.values() if not path.exists()]
    if len(missing) == len(models):
        seeds = ", ".join(map(str, models))
        where = missing[0] if len(missing) == 1 else f"{missing[0].parent}/ (e.g. {missing[0].name})"
        raise UserError(f"no trained model for seed {seeds} at {where}; run main_train.py {cfg.source} first")


if __name__ == "__main__":
    run(main)
