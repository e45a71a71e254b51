"""Train one model per seed: python3 main_train.py CONFIG [--seed S | --seed-index I]."""

from src.cli import add_seed_options, apply_threads, base_parser, require_writable_dir, run, selected_seeds
from src.config import load_config
from src.tracking import resolve_mode, wandb_run
from src.train import load_experiment_data, select_device, train_seed

MODELS_DIR = "models"


def main(argv=None) -> int:
    parser = base_parser("Train one model per seed of CONFIG into models/.")
    add_seed_options(parser)
    parser.add_argument("--models-dir", default=MODELS_DIR, help="where trained models go (default: models/)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
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
        with wandb_run(cfg, mode, job_type="train", name=f"{cfg.name}-seed{seed}", config=cfg.raw) as log:
            path = train_seed(cfg, seed, splits, device, args.models_dir, on_epoch=log)
        if not path.exists():
            failed.append(seed)
    print(f"models are in {args.models_dir}/" + (f"; diverged seeds: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    run(main)
