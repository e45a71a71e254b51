"""Prune the trained models of CONFIG: python3 main_prune.py CONFIG [--seed S | --seed-index I]."""

from pathlib import Path

from src.artifacts import ModelFileError, load_model, model_path, output_dir
from src.cli import add_seed_options, base_parser, run, selected_seeds
from src.config import load_config
from src.export import export_seed
from src.pruning.strategy import prune_seed, saved_progress, summary_rows
from src.report import write_report
from src.search import searched_config
from src.tracking import PruneLog, resolve_mode, run_config, wandb_run
from src.train import load_experiment_data, select_device


def log_iteration(log: PruneLog, result: dict) -> None:
    """The last iteration of a result as one point of the W&B pruning curve."""
    record = result["iterations"][-1]
    width = {layer["index"]: layer["width"] for layer in result["layers"]}
    alive = {layer["index"]: layer["alive_after"] for layer in record["layers"]}
    stages = {"pruned": record["after_prune"], "retrained": record["after_retrain"] or {}}
    log.iteration_done(
        record["iteration"], sum(alive.values()) / sum(width[i] for i in alive),
        {f"L{i}": n for i, n in alive.items()},
        {f"{split}_acc_{stage}": values.get(f"{split}_acc")
         for stage, values in stages.items() for split in ("test", "val")},
        {f"L{layer['index']}": min(layer["cka"], default=None) for layer in record["layers"]})


def main(argv=None) -> int:
    parser = base_parser("Prune the trained models of CONFIG; results go to output/<experiment>/.")
    add_seed_options(parser)
    parser.add_argument("--models-dir", default="models", help="where main_train.py put the models (default: models/)")
    parser.add_argument("--output-dir", default="output", help="results root (default: output/)")
    parser.add_argument("--export", action="store_true",
                        help="also save each pruned model as a smaller dense model in output/<experiment>/exported/")
    parser.add_argument("--no-search-params", action="store_true",
                        help="use the config's own values, not those of a finished search")
    args = parser.parse_args(argv)
    cfg, searched = searched_config(load_config(args.config), not args.no_search_params)
    print(f"training parameters: {searched}")
    prune = cfg.require_prune()
    seeds = selected_seeds(cfg, args.seed, args.seed_index)
    device = select_device(args.device)
    splits = load_experiment_data(cfg, device)
    out_dir = output_dir(cfg, Path(args.output_dir))
    p = prune.params
    budget = f"rate {p.rate}" if p.rate is not None else f"stop_cka {p.stop_cka}"
    print(f"{cfg.name}: {prune.strategy} {p.type} pruning of layers {list(prune.modules)}, "
          f"{p.iterations} x {budget}, on {device}")
    if p.type == "cka" and p.engine == "fast" and p.kernel == "rbf":
        print("note: the fast engine computes linear CKA only; kernel rbf runs the reference engine")
    mode = resolve_mode(cfg, args.wandb)
    results = []
    for seed in seeds:
        path = model_path(cfg, seed, Path(args.models_dir))
        if not path.exists():
            print(f"seed {seed}: no trained model at {path}; run main_train.py {cfg.source} first. Skipping.")
            continue
        try:
            model = load_model(path, cfg, device)
        except ModelFileError as err:
            print(f"seed {seed}: {err}; retrain it with main_train.py. Skipping.")
            continue
        done, complete, run_id = saved_progress(out_dir, seed)
        config = run_config(cfg, seed=seed, device=str(device), model_file=str(path))
        with wandb_run(cfg, "disabled" if complete else mode, job_type="prune", name=f"{cfg.name}-seed{seed}",
                       config=config, run_id=run_id) as run:
            log = None if run is None else PruneLog(run, done + 1, cfg.params.epochs)
            results.append(prune_seed(model, cfg, seed, splits, device, path, out_dir,
                                      on_epoch=log and log.retrain_epoch,
                                      on_iteration=log and (lambda result: log_iteration(log, result)),
                                      run_id=run and run.id))
        if args.export:
            export_seed(model, cfg, splits.test, out_dir / "exported" / f"seed{seed}.pt")
    if not results:
        print("nothing was pruned")
        return 1
    print("\n".join(summary_rows(results)))
    print(f"results are in {out_dir}/")
    report = write_report([out_dir], out_dir / "report")
    print(f"report: {report.markdown}\nfigure: {report.accuracy_figure}")
    return 0


if __name__ == "__main__":
    run(main)
