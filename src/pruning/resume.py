"""Where a seed's prune run stopped, and whether what is stored for it belongs to this run.

After every iteration :func:`save_progress` writes a checkpoint (the pruned weights, the result so
far, the physical pruning history, the W&B run id), then the result JSON (:mod:`src.results`),
both atomically, so the checkpoint is the truth: a JSON that is missing, unreadable or behind it
(a run killed between the two writes) is repaired from it on the next run, and a JSON without its
checkpoint cannot be continued. A rerun continues only the same run
(:func:`src.results.run_identity`): a result of another run under the same experiment name is
never appended to (:class:`IdentityMismatch`, checked before any work by
:func:`discard_other_runs`, which with ``replace`` deletes it instead). Raising ``iterations``
extends a finished run from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import torch

from src import results
from src.config import ExperimentConfig
from src.errors import UserError, brief
from src.io import atomic_torch_save
from src.results import RunIdentity, SeedResult


def checkpoint_path(out_dir: Path, seed: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"seed{seed}.pt"


class IdentityMismatch(UserError):
    """A result on disk was made by another run than the one asked for."""


def check_same_run(previous: SeedResult, identity: RunIdentity, where: Path) -> None:
    """Raise :class:`IdentityMismatch`, naming what changed, unless ``previous`` is of run ``identity``."""
    if previous.run.digest == identity.digest:
        return
    changes = results.identity_changes(previous.run.description, identity.description)
    raise IdentityMismatch(
        f"{where} is the result of another run ({'; '.join(changes)}); rerun with --fresh to replace it, "
        "or give the config another name to keep both")


def save_progress(out_dir: Path, seed: int, state_dict: dict[str, torch.Tensor], result: SeedResult,
                  history: list, run_id: str | None) -> None:
    """Write the seed's checkpoint, then its result JSON: the JSON is never ahead of its checkpoint."""
    atomic_torch_save(checkpoint_path(out_dir, seed),
                      {"state_dict": state_dict, "result": result.to_dict(), "history": history,
                       "wandb_run_id": run_id})
    results.save(result, out_dir)


def _read_checkpoint(path: Path) -> dict | None:
    """``{"state_dict", "result"}`` of a checkpoint, None if there is none; ValueError if unusable."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return {"state_dict": saved["state_dict"], "result": SeedResult.from_dict(saved["result"]),
                "history": saved.get("history", []), "wandb_run_id": saved.get("wandb_run_id")}
    except Exception as err:  # torch raises many types for a bad file; all mean "unusable"
        raise ValueError(f"{path}: unusable checkpoint ({brief(err)})") from None


def _read_result(path: Path) -> SeedResult | None:
    """The result JSON at ``path``, None if there is none; ValueError if unreadable."""
    if not path.exists():
        return None
    try:
        return results.load(path)
    except UserError as err:
        raise ValueError(str(err)) from None


def _stored(out_dir: Path, seed: int, report: Callable[[str], None]) -> tuple[dict | None, SeedResult | None]:
    """The seed's checkpoint and result JSON; an unusable file counts as absent, after ``report``-ing it."""
    stored = []
    for read, path in ((_read_checkpoint, checkpoint_path(out_dir, seed)),
                       (_read_result, results.result_path(out_dir, seed))):
        try:
            stored.append(read(path))
        except ValueError as err:
            report(str(err))
            stored.append(None)
    return stored[0], stored[1]


def _stored_seeds(out_dir: Path) -> list[int]:
    files = [*results.seed_files(out_dir), *Path(out_dir, "checkpoints").glob("seed*.pt")]
    return sorted({int(p.stem.removeprefix("seed")) for p in files if p.stem.removeprefix("seed").isdigit()})


def discard_other_runs(out_dir: Path, cfg: ExperimentConfig, model_files: dict[int, Path], replace: bool) -> None:
    """Check, before any work, that ``out_dir`` holds only results of the run asked for.

    ``model_files``: the trained model of each seed about to be pruned; one not trained yet is
    checked by the config alone (its model is to come). A stored result of another config (any
    seed) or of another trained model (these seeds) raises :class:`IdentityMismatch`; with
    ``replace``, the results of these seeds that another run made are deleted instead (their
    checkpoint, result and exported model), whether or not their new model exists yet, and
    other seeds' are left to their own jobs.
    """
    identities = {seed: results.run_identity(cfg, path) for seed, path in model_files.items() if path.exists()}
    current = results.RunIdentity.of(results.config_description(cfg)).digest
    for seed in _stored_seeds(out_dir):
        saved, written = _stored(out_dir, seed, report=lambda message: None)
        for previous, where in ((saved and saved["result"], checkpoint_path(out_dir, seed)),
                                (written, results.result_path(out_dir, seed))):
            if previous is None:
                continue
            expected = identities.get(seed)
            same = previous.run.digest == expected.digest if expected else previous.run.config_digest == current
            if same:
                continue
            if not replace:
                check_same_run(previous, expected or _config_only(cfg, previous), where)
            if seed in model_files:
                for path in (checkpoint_path(out_dir, seed), results.result_path(out_dir, seed),
                             Path(out_dir, "exported", f"seed{seed}.pt")):
                    path.unlink(missing_ok=True)
                print(f"seed {seed}: removed the result of another run ({where})")
                break


def _config_only(cfg: ExperimentConfig, previous: SeedResult) -> RunIdentity:
    """This config's identity with ``previous``'s model: for naming what changed in the config alone."""
    return results.RunIdentity.of({**results.config_description(cfg),
                                   "model_sha256": previous.run.description.get("model_sha256")})


def checkpoint_to_continue(seed: int, identity: RunIdentity, out_dir: Path) -> dict | None:
    """The seed's checkpoint (``{"state_dict", "result", "history", "wandb_run_id"}``) to continue
    run ``identity`` from, or None to start afresh.

    The checkpoint is the truth: a result JSON that is missing, unreadable or behind it is
    rewritten from it. A result JSON without its checkpoint cannot be continued.
    """
    json_path = results.result_path(out_dir, seed)
    saved, written = _stored(out_dir, seed, report=lambda message: print(f"seed {seed}: {message}"))
    for previous, where in ((saved and saved["result"], checkpoint_path(out_dir, seed)), (written, json_path)):
        if previous is not None:
            check_same_run(previous, identity, where)
    if saved is None:
        if written is not None:
            print(f"seed {seed}: {json_path} has no checkpoint to continue from; pruning this seed again")
        return None
    result = saved["result"]
    if not results.same(written, result):
        results.save(result, out_dir)
        print(f"seed {seed}: {json_path} repaired from its checkpoint ({len(result.iterations)} iterations)")
    return saved


class Progress(NamedTuple):
    """A seed's checkpoint: iterations done, whether its run stopped at a divergence, its W&B run id."""

    iterations: int
    stopped: bool
    run_id: str | None

    def remaining(self, planned: int) -> int:
        return 0 if self.stopped else max(planned - self.iterations, 0)


def saved_progress(out_dir: Path, seed: int) -> Progress:
    """The progress of a seed's checkpoint; none done without a usable one."""
    try:
        saved = _read_checkpoint(checkpoint_path(out_dir, seed))
    except ValueError:  # unusable: prune_seed starts this seed over
        saved = None
    if saved is None:
        return Progress(0, False, None)
    result = saved["result"]
    return Progress(len(result.iterations), result.diverged_at is not None, saved["wandb_run_id"])


def pruning_history(out_dir: Path, seed: int) -> list:
    """The physical pruning history of a seed's last checkpoint ([] for masked models)."""
    saved = _read_checkpoint(checkpoint_path(out_dir, seed))
    return [] if saved is None else saved["history"]
