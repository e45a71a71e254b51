import json
import os
import subprocess
import sys

import pytest
import torch

import main_prune
import main_train
from src import cli
from src.cli import apply_threads, default_threads, require_writable_dir
from src.errors import UserError
from tests.conftest import ROOT


def one_line_exit_2(script, *args, cwd):
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True, cwd=cwd)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    return lines[0]


# Tests run as root, for whom permission bits do not block writes (chmod 0o500 would not do):
# a path below a regular file, and /proc, cannot be written by anyone.
UNWRITABLE = ["file/sub", "/proc/cka-prune-models"]


@pytest.mark.parametrize("where", UNWRITABLE)
def test_unwritable_directory_is_a_user_error_that_creates_nothing(tmp_path, where):
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / where
    with pytest.raises(UserError, match=f"--models-dir {path}: cannot"):
        require_writable_dir(path, "--models-dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    require_writable_dir(tmp_path / "new" / "deeper", "--models-dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_train_and_prune_check_their_output_directory_before_any_work(write_config, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    config = write_config()
    for name in ("load_experiment_data", "apply_threads"):
        monkeypatch.setattr(main_train, name, lambda *a, name=name: pytest.fail(f"{name} ran"))
        monkeypatch.setattr(main_prune, name, lambda *a, name=name: pytest.fail(f"{name} ran"))
    with pytest.raises(UserError, match="--models-dir .*file/sub: cannot create a directory there: .*file is not a directory"):
        main_train.main([str(config), "--models-dir", str(tmp_path / "file" / "sub")])
    with pytest.raises(UserError, match="--output-dir /proc/out: cannot write to /proc"):
        main_prune.main([str(config), "--output-dir", "/proc/out"])


def test_unwritable_models_dir_from_the_command_line(write_config, tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_line_exit_2("main_train.py", write_config(), "--models-dir", tmp_path / "file" / "sub", cwd=tmp_path)
    assert line.startswith("error: --models-dir") and "is not a directory" in line


@pytest.mark.parametrize("seed", ["-3", "18446744073709551616", "4294967296"])
def test_out_of_range_seed_flag_is_one_line(write_config, tmp_path, seed):
    with pytest.raises(UserError, match=f"--seed {seed}: a seed must be an integer in \\[0, 4294967295\\]"):
        main_train.main([str(write_config()), "--seed", seed, "--models-dir", str(tmp_path / "m")])


def one_line_exit_2_in_process(entry_point, *args):
    """As one_line_exit_2, through the entry point's function (main_train.py's own wiring is tested above)."""
    status, _, err = entry_point(main_train, *args)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    return lines[0]


def test_seed_rule_at_the_command_line(write_config, tmp_path, entry_point):
    line = one_line_exit_2_in_process(entry_point, write_config(), "--seed", "-3")
    assert line == "error: --seed -3: a seed must be an integer in [0, 4294967295]"
    line = one_line_exit_2_in_process(entry_point, write_config(seeds=[2**64]))
    assert "seeds must be a non-empty list of integers in [0, 4294967295]" in line


def test_config_that_is_not_utf8_at_the_command_line(tmp_path, entry_point):
    path = tmp_path / "cfg.json"
    path.write_bytes(b'{"seeds": [0], "_note": "\xff"}')
    assert "cfg.json: not a UTF-8 text file" in one_line_exit_2_in_process(entry_point, path)


def test_interrupt_message_repeats_what_was_in_flight(capsys, monkeypatch):
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)  # leave pytest's own handlers alone

    def main(argv):
        err = KeyboardInterrupt()
        err.add_note("seed 3 epoch 7: epochs up to 6 are checkpointed in m.ckpt; epoch 7 will be redone")
        raise err

    with pytest.raises(SystemExit) as info:
        cli.run(main, [])
    assert info.value.code == 130
    assert capsys.readouterr().err == (
        "interrupted during seed 3 epoch 7: epochs up to 6 are checkpointed in m.ckpt; epoch 7 will be redone; "
        "finished work is saved; run the same command again to resume\n")


def test_threads_default_to_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an explicit request wins
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(UserError, match="OMP_NUM_THREADS='many' is not a positive integer"):
        default_threads()


def test_threads_option_sets_torchs_thread_count(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
        assert apply_threads(None) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_threads_option_caps_numpys_blas():
    from threadpoolctl import threadpool_info, threadpool_limits

    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    if not blas:
        pytest.skip("this NumPy reports no BLAS thread pool to cap")
    before = torch.get_num_threads()
    try:
        apply_threads(1)
        assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {1}
    finally:
        torch.set_num_threads(before)
        threadpool_limits(max(pool["num_threads"] for pool in blas), user_api="blas")


def test_threads_reach_the_training_process(write_config, tmp_path):
    # main_train prints torch's thread count, as the run used it.
    config = write_config(params={"lr": 0.002, "batch_size": 256, "epochs": 1, "patience": 1})
    proc = subprocess.run([sys.executable, str(ROOT / "main_train.py"), str(config), "--threads", "1",
                           "--models-dir", str(tmp_path / "m")], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "2", "SLURM_CPUS_PER_TASK": "2"})
    assert proc.returncode == 0, proc.stderr
    assert "1 CPU thread" in next(line for line in proc.stdout.splitlines() if "CPU thread" in line)
    assert json.loads(next((tmp_path / "m").glob("*.json")).read_text())["seed"] == 0
