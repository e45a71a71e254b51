"""Hyper-parameter search: python3 main_search.py CONFIG [--backend local|wandb] [--storage PATH_OR_URL]."""

import argparse
import warnings
from pathlib import Path

from src.cli import apply_threads, base_parser, run
from src.config import load_config
from src.errors import UserError
from src.tracking import require_wandb_credentials, resolve_mode


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def main(argv=None) -> int:
    parser = base_parser("Train one model per point of CONFIG's search grid and report the best point.")
    parser.add_argument("--backend", choices=("local", "wandb"), default="local",
                        help="local: Optuna, no account or network needed (default); wandb: a W&B sweep")
    parser.add_argument("--storage", metavar="PATH_OR_URL",
                        help="local backend: the Optuna storage that processes share: a journal file "
                             "(default output/search/<experiment>.journal) or a database URL")
    parser.add_argument("--trials", type=positive_int, metavar="N",
                        help="train at most N points in this process, then stop (default: until none is left)")
    parser.add_argument("--no-wait", action="store_true",
                        help="local backend: stop when no point is waiting, without waiting for "
                             "points other processes are training")
    parser.add_argument("--heartbeat", type=positive_float, default=30.0, metavar="SECONDS",
                        help="local backend: seconds between heartbeats; a trial without one for 3 "
                             "intervals is trained again (default 30)")
    parser.add_argument("--sweep-id", help="wandb backend: join this sweep instead of the one recorded "
                                           "in output/search/<experiment>.wandb.json")
    parser.add_argument("--sweep-run", action="store_true",
                        help="wandb backend: train the one point `wandb agent` started this process for")
    parser.add_argument("--write-config", type=Path, metavar="PATH",
                        help="local backend: write a copy of CONFIG with the best values filled in")
    parser.add_argument("--output-dir", type=Path, default=Path("output/search"),
                        help="where results and the default storage go (default output/search); main_train.py, "
                             "main_prune.py and src.reproduce read them from <their --output-dir>/search")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    if args.sweep_run:
        args.backend = "wandb"
    if args.backend == "wandb":
        local_only = {"--storage": args.storage is not None, "--write-config": args.write_config is not None,
                      "--no-wait": args.no_wait}
        given = [flag for flag, used in local_only.items() if used]
        if given:
            raise UserError(f"{given[0]} applies to the local backend only; W&B keeps the sweep's results")
        if args.wandb not in (None, "online"):
            raise UserError(f"--wandb {args.wandb}: a W&B sweep needs online runs (drop --wandb or use --backend local)")
        require_wandb_credentials("--backend wandb")
    else:
        resolve_mode(cfg, args.wandb)  # fails fast when online logging has no credentials
    # Imported only now: torch and optuna take seconds to load, a missing W&B key does not.
    import optuna

    from src.points import DataTrainer, check_points
    from src.lr_search import SearchOptions, run_lr_search
    from src.tracking import check_wandb_reachable, logged_trainer, run_sweep_point, run_wandb_search

    apply_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna marks the database heartbeat experimental; it is what recovers lost trials.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    train = DataTrainer(cfg, args.device)
    if args.sweep_run:
        run_sweep_point(cfg, train)
        return 0
    if args.backend == "wandb":
        import wandb

        check_wandb_reachable(wandb.setup().settings.base_url)
        check_points(cfg)
        return run_wandb_search(cfg, args.sweep_id, args.trials, args.output_dir, train)
    options = SearchOptions(storage=args.storage, trials=args.trials, wait=not args.no_wait,
                            heartbeat=args.heartbeat, write_config=args.write_config, output_root=args.output_dir)
    return run_lr_search(cfg, options, logged_trainer(cfg, train, resolve_mode(cfg, args.wandb)))


if __name__ == "__main__":
    run(main)
