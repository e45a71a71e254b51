"""What produced a result: the code's version, the libraries', and where it ran.

Two runs of one config on one trained model can still differ: other code, another torch,
another thread count (float sums in another order). The run identity (:mod:`src.results`)
says *what* was computed; :class:`Provenance` says *how*, so that a resumed or extended run
made under other conditions says so, and a report can name it.

The same torch on another CPU runs other kernels: ATen picks its vectorised code (AVX512,
AVX2, ...) when it loads, MKL and oneDNN pick theirs by CPU, and a trained model differs in
its last bits, which training amplifies (``docs/reproducibility.md``). So the record names the
CPU, the kernels chosen and the variables that choose them; :data:`PORTABLE_KERNELS` are the
settings that make those choices the same on every x86-64 CPU (which, measured, still need not
give the same model on two of them).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Mapping

import numpy
import torch
from threadpoolctl import threadpool_info

REPOSITORY = Path(__file__).resolve().parents[1]
CPUINFO = Path("/proc/cpuinfo")

# The environment variables that choose CPU kernels; each library reads them once, when it loads.
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE",
                    "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OPENBLAS_CORETYPE")
# ATen's scalar kernels, MKL's conditional numerical reproducibility mode for any x86-64 CPU,
# oneDNN at most SSE4.1: slower, the same choice on every CPU.
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"}


@dataclass(frozen=True)
class Provenance:
    """``commit``: git HEAD of the checkout the code ran from (None outside a git checkout);
    ``dirty``: whether tracked files differed from it; ``device``: ``cpu`` or the GPU's name;
    ``threads``: PyTorch's intra-op threads.

    The CPU and its kernels (None in records made before they were recorded; each also None
    where this machine does not tell): ``cpu``: the CPU's model name; ``cpu_capability``: the
    vectorised kernels ATen runs (``AVX512``, ``AVX2``, ``DEFAULT``: scalar); ``torch_blas``,
    ``torch_lapack``: the libraries torch was built with for them (``mkl``); ``mkl``,
    ``onednn``: their versions in torch; ``numpy_blas``: NumPy's BLAS, its version and the core
    type it runs kernels for (``scipy-openblas 0.3.31 (SkylakeX)``); ``blas_threads``: its
    threads; ``interop_threads``: PyTorch's inter-op threads; ``kernel_settings``: the
    :data:`KERNEL_VARIABLES` set in the environment, as a shell prefix (``""``: none).
    """

    commit: str | None
    dirty: bool | None
    python: str
    torch: str
    numpy: str
    torch_pruning: str | None
    device: str
    threads: int
    cpu: str | None = None
    cpu_capability: str | None = None
    torch_blas: str | None = None
    torch_lapack: str | None = None
    mkl: str | None = None
    onednn: str | None = None
    numpy_blas: str | None = None
    blas_threads: int | None = None
    interop_threads: int | None = None
    kernel_settings: str | None = None

    def changes(self, other: Provenance) -> list[str]:
        """``key: self -> other`` for every field that differs."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{f.name}: {mine[f.name]} -> {theirs[f.name]}" for f in fields(self) if mine[f.name] != theirs[f.name]]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def cpu_name(cpuinfo: Path = CPUINFO) -> str | None:
    """The CPU's model name from ``cpuinfo`` (Linux), else what the platform says, else None."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def torch_build(config: str) -> dict[str, str | None]:
    """``torch_blas``, ``torch_lapack``, ``mkl`` and ``onednn`` as :func:`torch.__config__.show` text
    ``config`` names them (None where it does not)."""
    patterns = {"torch_blas": r"BLAS_INFO=([^,\s]+)", "torch_lapack": r"LAPACK_INFO=([^,\s]+)",
                "mkl": r"Math Kernel Library Version ([\d.]+)", "onednn": r"(?:MKL-DNN|oneDNN) v([\d.]+)"}
    return {key: (m.group(1) if (m := re.search(pattern, config)) else None) for key, pattern in patterns.items()}


def numpy_blas() -> tuple[str | None, int | None]:
    """NumPy's BLAS (``name version (core type)``) and its threads.

    NumPy names the library it was built with; the loaded copy of that version (threadpoolctl)
    tells the core type and threads. Other BLAS copies in the process (SciPy's) are left out:
    whether they are loaded yet depends on what was imported before.
    """
    built = numpy.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    if not built.get("found"):
        return None, None
    name = f"{built.get('name')} {built.get('version')}"
    loaded = [lib for lib in threadpool_info() if lib["user_api"] == "blas" and lib.get("version") == built.get("version")]
    if not loaded:
        return name, None
    core = loaded[0].get("architecture")
    return (f"{name} ({core})" if core else name), loaded[0]["num_threads"]


def kernel_settings(environ: Mapping[str, str] = os.environ) -> str:
    """The :data:`KERNEL_VARIABLES` set in ``environ``, as a shell prefix (``MKL_CBWR=COMPATIBLE``)."""
    return " ".join(f"{name}={environ[name]}" for name in KERNEL_VARIABLES if name in environ)


def current(device: torch.device) -> Provenance:
    """The provenance of work about to run on ``device`` in this process."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    build = torch_build(torch.__config__.show())
    blas, blas_threads = numpy_blas()
    return Provenance(
        commit=commit.strip() if commit else None,
        dirty=None if status is None else bool(status.strip()),
        python=platform.python_version(),
        torch=str(torch.__version__),  # a str subclass, which weights_only checkpoints refuse
        numpy=numpy.__version__,
        torch_pruning=_version("torch-pruning"),
        device=name,
        threads=torch.get_num_threads(),
        cpu=cpu_name(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        torch_blas=build["torch_blas"],
        torch_lapack=build["torch_lapack"],
        mkl=build["mkl"] if torch.backends.mkl.is_available() else None,
        onednn=build["onednn"] if torch.backends.mkldnn.is_available() else None,
        numpy_blas=blas,
        blas_threads=blas_threads,
        interop_threads=torch.get_num_interop_threads(),
        kernel_settings=kernel_settings(),
    )
