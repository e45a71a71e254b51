"""Train one model per seed: python3 main_train.py CONFIG [--seed S | --seed-index I]."""

from pathlib import Path

from src.artifacts import model_path, sidecar_path
from src.cli import add_seed_options, apply_threads, base_parser, require_writable_dir, run, selected_seeds
from src.config import load_config
from src.io import read_json
from src.points import search_dir, searched_config
from src.tracking import TrainLog, resolve_mode, run_config, wandb_run
from src.train import load_experiment_data, select_device, train_seed

MODELS_DIR = "models"


def main(argv=None) -> int:
    parser = base_parser("Train one model per seed of CONFIG into models/.")
    add_seed_options(parser)
    parser.add_argument("--models-dir", default=MODELS_DIR, help="where trained models go (default: models/)")
    parser.add_argument("--output-dir", type=Path, default=Path("output"),
                        help="results root, where a finished search is read from <output-dir>/search/ "
                             "(default: output/)")
    parser.add_argument("--no-search-params", action="store_true",
                        help="use the config's own values, not those of a finished search")
    args = parser.parse_args(argv)
    cfg, searched = searched_config(load_config(args.config), not args.no_search_params, search_dir(args.output_dir))
    print(f"training parameters: {searched}")
    seeds = selected_seeds(cfg, args.seed, args.seed_index)
    require_writable_dir(args.models_dir, "--models-dir")
    threads = apply_threads(args.threads)
    device = select_device(args.device)
    splits = load_experiment_data(cfg, device)
    print(f"{cfg.name}: {len(seeds)} seed(s) on {device} ({threads} CPU thread{'s' if threads > 1 else ''}); data {cfg.data.dataset} "
          f"({len(splits.train)}/{len(splits.val)}/{len(splits.test)} train/val/test)")
    mode = resolve_mode(cfg, args.wandb)
    failed = []
    for seed in seeds:
        path = model_path(cfg, seed, args.models_dir)
        config = run_config(cfg, seed=seed, device=str(device), model_file=str(path))
        # A run only for work to do: an existing model is skipped.
        with wandb_run(cfg, "disabled" if path.exists() else mode, job_type="train",
                       name=f"{cfg.name}-seed{seed}", config=config) as run:
            log = None if run is None else TrainLog(run)
            path = train_seed(cfg, seed, splits, device, args.models_dir, on_epoch=log and log.epoch)
            if log is not None and path.exists():
                log.finish(read_json(sidecar_path(path)))
        if not path.exists():
            failed.append(seed)
    print(f"models are in {args.models_dir}/" + (f"; diverged seeds: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    run(main)
