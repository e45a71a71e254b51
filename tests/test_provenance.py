"""Provenance: what the code, the libraries and the machine were when a result was made."""

import json
import os
import subprocess
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy
import pytest
import torch

from src import provenance, results
from src.artifacts import model_family
from src.config import load_config
from src.provenance import PORTABLE_KERNELS, Provenance, kernel_settings
from tests.conftest import ROOT

# What torch 2.13.0+cpu's torch.__config__.show() says on x86-64, cut to the lines read.
TORCH_CONFIG = """PyTorch built with:
  - GCC 13.3
  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64 architecture applications
  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)
  - CPU capability usage: AVX512
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl, PERF_WITH_AVX=1, USE_MKL=ON,
"""
COMMITTED = ROOT / "docs/ex1-fmnist/records/cka/0.json"
NEW_FIELDS = ("cpu", "cpu_capability", "torch_blas", "torch_lapack", "mkl", "onednn", "numpy_blas", "blas_threads",
              "interop_threads", "kernel_settings")


def test_current_names_this_checkout_and_these_libraries():
    made = provenance.current(torch.device("cpu"))
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert made.commit == head.stdout.strip() and isinstance(made.dirty, bool)
    else:  # not a git checkout (an unpacked archive): nothing to name
        assert made.commit is None and made.dirty is None
    assert made.torch == torch.__version__ and made.numpy == numpy.__version__
    assert made.device == "cpu" and made.threads == torch.get_num_threads()


def test_current_names_the_cpu_kernels_and_thread_counts_of_this_process():
    made = provenance.current(torch.device("cpu"))
    assert made.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert made.interop_threads == torch.get_num_interop_threads()
    assert made.kernel_settings == kernel_settings(os.environ)
    build = provenance.torch_build(torch.__config__.show())
    assert (made.torch_blas, made.torch_lapack) == (build["torch_blas"], build["torch_lapack"])
    assert made.mkl == (build["mkl"] if torch.backends.mkl.is_available() else None)


def test_torch_build_reads_blas_lapack_mkl_and_onednn():
    assert provenance.torch_build(TORCH_CONFIG) == {"torch_blas": "mkl", "torch_lapack": "mkl", "mkl": "2024.2",
                                                    "onednn": "3.12.0"}
    without = "PyTorch built with:\n  - Build settings: BLAS_INFO=open, USE_MKL=OFF,\n"
    assert provenance.torch_build(without) == {"torch_blas": "open", "torch_lapack": None, "mkl": None, "onednn": None}


def test_cpu_name_is_the_model_name_line(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338 CPU\n"
                       "flags\t\t: fpu avx512f\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Gold 6338 CPU\n")
    assert provenance.cpu_name(cpuinfo) == "Intel(R) Xeon(R) Gold 6338 CPU"
    monkeypatch.setattr(provenance.platform, "processor", lambda: "arm")
    assert provenance.cpu_name(tmp_path / "absent") == "arm"  # not Linux: what the platform says
    cpuinfo.write_text("processor\t: 0\nCPU implementer\t: 0x41\n")  # Linux on ARM names no model
    monkeypatch.setattr(provenance.platform, "processor", lambda: "")
    assert provenance.cpu_name(cpuinfo) is None


def test_numpy_blas_is_numpys_own_library_whatever_else_is_loaded(monkeypatch):
    built = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if not built.get("found"):
        pytest.skip("this NumPy is built without a BLAS library")
    scipys = {"user_api": "blas", "internal_api": "openblas", "num_threads": 7, "version": "0.0.1", "architecture": "Zen"}
    numpys = {**scipys, "num_threads": 3, "version": built["version"], "architecture": "SkylakeX"}
    monkeypatch.setattr(provenance, "threadpool_info", lambda: [scipys, numpys])
    assert provenance.numpy_blas() == (f"{built['name']} {built['version']} (SkylakeX)", 3)
    monkeypatch.setattr(provenance, "threadpool_info", lambda: [scipys])  # its copy not found: name it, no threads
    assert provenance.numpy_blas() == (f"{built['name']} {built['version']}", None)


def test_kernel_settings_are_the_kernel_variables_set_as_a_shell_prefix():
    assert kernel_settings({"HOME": "/root", "OMP_NUM_THREADS": "1"}) == ""
    assert kernel_settings({"ONEDNN_MAX_CPU_ISA": "SSE41", "PATH": "/bin", "ATEN_CPU_CAPABILITY": "avx2"}) == \
        "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=SSE41"
    assert kernel_settings(PORTABLE_KERNELS) == "ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE ONEDNN_MAX_CPU_ISA=SSE41"


def test_a_process_started_with_the_portable_kernels_records_them():
    code = ("import json, torch; from dataclasses import asdict; from src import provenance; "
            "print(json.dumps(asdict(provenance.current(torch.device('cpu')))))")
    environ = {**os.environ, **PORTABLE_KERNELS}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, check=True)
    made = Provenance(**json.loads(done.stdout))
    assert made.cpu_capability == "DEFAULT"  # ATen's scalar kernels, not this CPU's vector ones
    assert made.kernel_settings == kernel_settings(environ) and "MKL_CBWR=COMPATIBLE" in made.kernel_settings


def test_outside_a_git_checkout_the_commit_is_unknown(monkeypatch, tmp_path):
    monkeypatch.setattr(provenance, "REPOSITORY", tmp_path)
    made = provenance.current(torch.device("cpu"))
    assert made.commit is None and made.dirty is None


def test_changes_name_each_field_that_differs():
    made = provenance.current(torch.device("cpu"))
    other = replace(made, threads=made.threads + 1, torch="0.0.1", cpu_capability="DEFAULT")
    assert made.changes(made) == []
    assert made.changes(other) == [f"torch: {made.torch} -> 0.0.1", f"threads: {made.threads} -> {made.threads + 1}",
                                   f"cpu_capability: {made.cpu_capability} -> DEFAULT"]


def test_a_record_round_trips_the_new_fields_and_one_made_before_them_still_loads(tmp_path):
    old = results.load(COMMITTED)
    made = old.iterations[0].provenance
    assert made is not None and made.torch == "2.13.0+cpu"
    assert all(getattr(made, name) is None for name in NEW_FIELDS) and {f.name for f in fields(Provenance)} >= set(NEW_FIELDS)
    now = provenance.current(torch.device("cpu"))
    results.save(replace(old, iterations=(replace(old.iterations[0], provenance=now),)), tmp_path)
    assert results.load(tmp_path / "0.json").iterations[0].provenance == now  # JSON keeps every value as made
    assert made.changes(now)[-1] == f"kernel_settings: None -> {now.kernel_settings}"


def test_the_committed_records_keep_their_run_and_model_identities():
    old, cfg = results.load(COMMITTED), load_config(ROOT / "config/ex1-fmnist/cka.json")
    assert results.RunIdentity.of(results.config_description(cfg)).digest == old.run.config_digest
    assert Path(old.model_file).name == f"{model_family(cfg)}_seed0.pt"
    assert "provenance" not in json.dumps(old.run.description)
