"""What the machine provides for the tests marked ``fmnist`` and ``slurm``: each check says why
those tests cannot run here, and how to enable them, or None. Tests never install anything;
.ci/run installs and starts what CI exercises."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from src.data import FASHION_MNIST_SYSTEM_DIRS, IDX_FILES

SLURM_CONF = Path("/etc/slurm/slurm.conf")
CONF_MARKER = "# written by scripts/ci/start-local-slurm.sh"
LOCAL_SLURM_DIR = Path(os.environ.get("LOCAL_SLURM_DIR", "/tmp/cka-prune-slurm"))
SLURM_TOOLS = ("sbatch", "squeue", "scontrol", "scancel")
START_SLURM = "start it as root with scripts/ci/start-local-slurm.sh (.ci/run does)"


def fashion_mnist_missing() -> str | None:
    directory = FASHION_MNIST_SYSTEM_DIRS[0]
    if all((directory / f"{name}.gz").is_file() for name in IDX_FILES):
        return None
    return f"{directory} is missing: install the Debian package dataset-fashion-mnist (.ci/run does)"


def local_slurm_missing() -> str | None:
    """The cluster of scripts/ci/start-local-slurm.sh is running: its slurm.conf and its daemons.

    A slurm.conf without the marker is a real cluster's, where test jobs do not belong.
    """
    if not sys.platform.startswith("linux"):
        return "needs Linux to run a local Slurm cluster"
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} not on PATH): {START_SLURM}, which installs it"
    if not SLURM_CONF.exists():
        return f"no local Slurm cluster ({SLURM_CONF} is missing): {START_SLURM}"
    if CONF_MARKER not in SLURM_CONF.read_text(errors="replace"):
        return f"{SLURM_CONF} belongs to a real Slurm installation; the tests submit jobs only to a local cluster"
    if not daemons_alive():
        return f"the local Slurm cluster is not running: {START_SLURM}"
    return None


def daemons_alive() -> bool:
    """The daemons recorded by scripts/ci/start-local-slurm.sh run (a recycled pid is another program)."""
    for name in ("slurmctld", "slurmd"):
        try:
            pid = int((LOCAL_SLURM_DIR / f"{name}.pid").read_text())
            if Path(f"/proc/{pid}/comm").read_text().strip() != name:
                return False
        except (OSError, ValueError):
            return False
    return True


MISSING = {"fmnist": fashion_mnist_missing, "slurm": local_slurm_missing}
MARKERS = {
    "fmnist": "needs the real Fashion-MNIST of the Debian package dataset-fashion-mnist",
    "slurm": "needs the local Slurm cluster of scripts/ci/start-local-slurm.sh, running",
}
