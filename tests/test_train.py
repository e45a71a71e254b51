import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import main_train
from src import train
from src.artifacts import ModelFileError, load_model, model_path, rewind_path
from src.config import TrainParams, load_config
from src.models import build_model
from src.train import evaluate, fit, train_seed
from tests.conftest import ROOT, untimed


ONE_EPOCH = {"lr": 0.002, "batch_size": 256, "epochs": 1, "patience": 1}  # where any trained model will do


def test_training_lowers_the_loss(mnist5k, write_config):
    cfg = load_config(write_config())
    torch.manual_seed(0)
    model = build_model(cfg.model)
    before = evaluate(model, mnist5k.val, 256, torch.device("cpu"))
    result = fit(model, mnist5k, cfg.params, seed=0, device=torch.device("cpu"))
    after = evaluate(model, mnist5k.val, 256, torch.device("cpu"))
    assert after.loss < before.loss - 1.0 and after.acc > 0.8
    assert not result.diverged and result.epochs == 3 and len(result.history) == 3


def test_early_stopping_keeps_the_best_weights(mnist5k, write_config):
    cfg = load_config(write_config())
    params = TrainParams(lr=0.05, batch_size=64, epochs=30, patience=1)  # a large lr: val loss soon rises
    torch.manual_seed(0)
    model = build_model(cfg.model)
    result = fit(model, mnist5k, params, seed=0, device=torch.device("cpu"))
    assert result.epochs < 30
    assert result.epochs == result.best_epoch + params.patience
    best = min(row["val_loss"] for row in result.history)
    assert abs(evaluate(model, mnist5k.val, 64, torch.device("cpu")).loss - best) < 1e-6


def test_same_seed_same_weights(mnist5k, write_config, tmp_path):
    cfg = load_config(write_config(params=ONE_EPOCH))
    paths = [train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path / d) for d in ("a", "b")]
    a, b = (torch.load(p, weights_only=True) for p in paths)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = train_seed(cfg, 1, mnist5k, torch.device("cpu"), tmp_path / "a")
    assert not torch.equal(torch.load(other, weights_only=True)["output.weight"], a["output.weight"])


def test_training_keeps_the_initialisation_and_early_epochs_for_rewinding(mnist5k, write_config, tmp_path):
    cfg = load_config(write_config(params={"lr": 0.002, "batch_size": 128, "epochs": 2, "patience": None}))
    path = train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path)
    kept = torch.load(rewind_path(path), weights_only=True)
    assert sorted(kept) == [0, 1, 2] and not list(tmp_path.glob("*.ckpt"))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    initial = model.state_dict()
    assert all(torch.equal(kept[0][k], initial[k]) for k in initial)
    fit(model, mnist5k, TrainParams(lr=0.002, batch_size=128, epochs=1, patience=None), seed=0, device=torch.device("cpu"))
    after_one = model.state_dict()
    assert all(torch.equal(kept[1][k], after_one[k]) for k in after_one)
    trained = torch.load(path, weights_only=True)  # without early stopping the last epoch's weights
    assert all(torch.equal(kept[2][k], trained[k]) for k in trained)
    assert not torch.equal(kept[1]["output.weight"], kept[2]["output.weight"])


def test_existing_model_is_skipped_and_a_corrupt_one_retrained(mnist5k, write_config, tmp_path, capsys):
    cfg = load_config(write_config(params=ONE_EPOCH))
    path = train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert {"test_acc", "val_loss", "train_acc", "fit", "config"} <= sidecar.keys()
    stamp = path.stat().st_mtime_ns
    train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path)
    assert "model exists, skipping" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp
    path.write_bytes(path.read_bytes()[:100])  # truncated
    train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path)
    assert "cannot load" in capsys.readouterr().out
    torch.load(path, weights_only=True)


def test_shape_mismatch_is_retrained(mnist5k, write_config, tmp_path, capsys):
    small = load_config(write_config(params=ONE_EPOCH))
    torch.save(build_model(load_config(write_config(model={"hidden_sizes": [8, 8]})).model).state_dict(),
               model_path(small, 0, tmp_path))
    train_seed(small, 0, mnist5k, torch.device("cpu"), tmp_path)
    assert "retraining" in capsys.readouterr().out


def test_diverged_run_is_recorded_and_other_seeds_go_on(mnist5k, write_config, tmp_path):
    cfg = load_config(write_config(params={"lr": 1e30, "batch_size": 128, "epochs": 2, "patience": 1}, seeds=[0, 1]))
    for seed in cfg.seeds:
        path = train_seed(cfg, seed, mnist5k, torch.device("cpu"), tmp_path)
        record = json.loads(path.with_suffix(".diverged.json").read_text())
        assert record["diverged"] is True and not path.exists()


def test_cli_trains_then_skips_everything(write_config, tmp_path, entry_point):
    config = write_config(seeds=[0, 1], params=ONE_EPOCH)
    args = [str(config), "--models-dir", str(tmp_path / "models"), "--output-dir", str(tmp_path / "output")]
    status, _, err = entry_point(main_train, *args)  # main_train.py as a process: test_cli.py
    assert status == 0, err
    assert len(list((tmp_path / "models").glob("*.pt"))) == 2
    trained = {p: p.stat().st_mtime_ns for p in (tmp_path / "models").glob("*")}
    status, out, _ = entry_point(main_train, *args)
    assert status == 0 and out.count("model exists, skipping") == 2
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "models").glob("*")} == trained  # nothing rewritten
    status, _, err = entry_point(main_train, *args, "--seed-index", "5")
    assert status == 2 and "--seed-index 5 is out of range" in err


def test_online_logging_without_credentials_is_a_user_error(write_config, tmp_path, entry_point, monkeypatch):
    for name in [name for name in os.environ if name.startswith("WANDB")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    status, _, err = entry_point(main_train, write_config(), "--wandb", "online", "--models-dir", tmp_path / "m")
    assert status == 2 and "online W&B logging needs W&B credentials" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m").exists()


# ---------------------------------------------------------------- recipes

def plain_loop(model, splits, make_optimizer, batch_size, epochs, seed):
    """Training written out by hand: seeded global RNG (dropout), seeded shuffle, no extras."""
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model.parameters())
    images, labels = splits.train.images.to(torch.float32) / 255, splits.train.labels
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(labels), generator=order)
        for start in range(0, len(labels), batch_size):
            index = perm[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@pytest.mark.parametrize("params, make_optimizer", [
    ({"lr": 0.002, "batch_size": 128, "epochs": 2},
     lambda p: torch.optim.Adam(p, lr=0.002)),
    ({"lr": 0.05, "batch_size": 128, "epochs": 2, "optimizer": "sgd", "momentum": 0.8, "nesterov": True,
      "weight_decay": 0.001},
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.001)),
], ids=["default-adam", "sgd-nesterov"])
def test_recipe_trains_exactly_like_a_loop_written_by_hand(mnist5k, write_config, params, make_optimizer):
    cfg = load_config(write_config(params=params))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    by_hand = copy.deepcopy(model)
    result = fit(model, mnist5k, cfg.params, seed=0, device=torch.device("cpu"))
    assert result.best_epoch == 2  # the last epoch's weights are kept, as the hand loop keeps them
    plain_loop(by_hand, mnist5k, make_optimizer, params["batch_size"], 2, seed=0)
    mine, theirs = model.state_dict(), by_hand.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def lrs_of(mnist5k, write_config, **params):
    cfg = load_config(write_config(params={"batch_size": 1000, "patience": None, **params}))
    torch.manual_seed(0)
    result = fit(build_model(cfg.model), mnist5k, cfg.params, seed=0, device=torch.device("cpu"))
    return [row["lr"] for row in result.history]


def test_step_schedule_with_warmup_sets_each_epochs_rate(mnist5k, write_config):
    lrs = lrs_of(mnist5k, write_config, lr=0.1, epochs=6, optimizer="sgd", schedule="step",
                 milestones=[3, 5], gamma=0.5, warmup_epochs=2)
    assert lrs == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.05, 0.05, 0.025], rel=1e-12)


def test_cosine_schedule_with_warmup_sets_each_epochs_rate(mnist5k, write_config):
    lrs = lrs_of(mnist5k, write_config, lr=0.01, epochs=5, schedule="cosine", warmup_epochs=1)
    cosine = [0.01 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert lrs == pytest.approx([0.005, *cosine], rel=1e-12)


def test_constant_schedule_with_warmup_ramps_then_holds(mnist5k, write_config):
    assert lrs_of(mnist5k, write_config, lr=0.004, epochs=4, warmup_epochs=3) == pytest.approx([0.001, 0.002, 0.003, 0.004])


def test_without_early_stopping_the_last_epoch_is_kept(mnist5k, write_config, monkeypatch):
    cfg = load_config(write_config(params={"lr": 0.05, "batch_size": 256, "epochs": 3, "patience": None}))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    # Validation losses with their best at epoch 2, whatever this machine's float sums make of the
    # real trajectory: the test must not depend on the last epoch happening to be worse.
    losses = iter([0.9, 0.5, 0.8])
    monkeypatch.setattr(train, "evaluate", lambda *args: train.Metrics(loss=next(losses), acc=0.5))
    states = []
    result = fit(model, mnist5k, cfg.params, seed=0, device=torch.device("cpu"),
                 on_epoch=lambda row: states.append(copy.deepcopy(model.state_dict())))
    assert result.epochs == 3 and result.best_epoch == 3 and len(states) == 3
    final = model.state_dict()
    assert all(torch.equal(final[k], states[-1][k]) for k in final)  # the last epoch's weights ...
    assert not all(torch.equal(final[k], states[1][k]) for k in final)  # ... not the best epoch's


# ---------------------------------------------------------------- resuming

def interrupt_in(epoch):
    """An epoch callback that interrupts (as Ctrl-C or SIGTERM would) at the end of ``epoch``."""
    def callback(row):
        if row["epoch"] == epoch:
            raise KeyboardInterrupt
    return callback


def test_interrupted_fit_resumes_bit_identically(mnist5k, write_config, tmp_path):
    # Dropout, shuffling, augmentation, momentum, the schedule and early stopping all carry state.
    cfg = load_config(write_config(params={"lr": 0.05, "batch_size": 256, "epochs": 5, "patience": 3,
                                           "optimizer": "sgd", "nesterov": True, "schedule": "cosine",
                                           "warmup_epochs": 1, "augment": True}))
    device = torch.device("cpu")

    def fresh(seed=0):
        torch.manual_seed(seed)
        return build_model(cfg.model)

    clean = fresh()
    whole = fit(clean, mnist5k, cfg.params, seed=0, device=device)
    assert whole.epochs == 5

    checkpoint = tmp_path / "m.ckpt"
    with pytest.raises(KeyboardInterrupt) as info:
        fit(fresh(), mnist5k, cfg.params, seed=0, device=device, checkpoint=checkpoint, on_epoch=interrupt_in(3),
            label="seed 0")
    assert info.value.__notes__ == [f"seed 0 epoch 3: epochs up to 2 are checkpointed in {checkpoint}; epoch 3 will be redone"]
    resumed_model = fresh(seed=7)  # other initial weights: everything must come from the checkpoint
    resumed = fit(resumed_model, mnist5k, cfg.params, seed=0, device=device, checkpoint=checkpoint)
    a, b = clean.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert untimed(resumed.history) == untimed(whole.history)
    assert (resumed.epochs, resumed.best_epoch) == (whole.epochs, whole.best_epoch)

    plain = load_config(write_config(params={**cfg.raw["params"], "augment": False}))
    unaugmented = fresh()
    fit(unaugmented, mnist5k, plain.params, seed=0, device=device)
    assert not torch.equal(unaugmented.state_dict()["output.weight"], a["output.weight"])


def test_checkpoint_of_other_params_is_not_resumed(mnist5k, write_config, tmp_path, capsys):
    cfg = load_config(write_config(params={"lr": 0.002, "batch_size": 512, "epochs": 3, "patience": 2}))
    checkpoint = tmp_path / "m.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fit(build_model(cfg.model), mnist5k, cfg.params, seed=0, device=torch.device("cpu"), checkpoint=checkpoint,
            on_epoch=interrupt_in(2))
    other = load_config(write_config(params={"lr": 0.004, "batch_size": 512, "epochs": 3, "patience": 2}))
    result = fit(build_model(other.model), mnist5k, other.params, seed=0, device=torch.device("cpu"), checkpoint=checkpoint)
    assert "checkpoint of another training" in capsys.readouterr().out and result.epochs == 3


def test_sigterm_then_rerun_gives_the_weights_of_an_uninterrupted_run(write_config, tmp_path, monkeypatch):
    config = write_config(params={"lr": 0.002, "batch_size": 64, "epochs": 6, "patience": 6})

    def command(models):
        return [sys.executable, str(ROOT / "main_train.py"), str(config), "--models-dir", str(tmp_path / models),
                "--threads", "1"]

    monkeypatch.chdir(tmp_path)  # where the processes run
    threads = torch.get_num_threads()
    try:  # the uninterrupted run in this process, on the one thread the processes below use
        assert main_train.main(command("clean")[2:]) == 0
    finally:
        torch.set_num_threads(threads)
    proc = subprocess.Popen(command("cut"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # Epoch 1's checkpoint is written before epoch 2 starts, so before epoch 2's line.
    next(line for line in proc.stdout if re.match(r"seed 0 epoch +2:", line))
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    match = re.search(r"interrupted during seed 0 epoch (\d+): epochs up to (\d+) are checkpointed in (\S+);", stderr)
    assert match and int(match[2]) == int(match[1]) - 1 >= 1, stderr
    assert Path(match[3]).exists() and not list((tmp_path / "cut").glob("*.pt"))
    rerun = subprocess.run(command("cut"), capture_output=True, text=True, cwd=tmp_path)
    assert rerun.returncode == 0 and f"resuming after epoch {match[2]}" in rerun.stdout, rerun.stderr
    assert not list((tmp_path / "cut").glob("*.ckpt"))
    (a_path,) = (tmp_path / "clean").glob("*.pt")
    a, b = (torch.load(p, weights_only=True) for p in (a_path, tmp_path / "cut" / a_path.name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    early = [torch.load(rewind_path(p), weights_only=True) for p in (a_path, tmp_path / "cut" / a_path.name)]
    assert sorted(early[0]) == sorted(early[1]) == list(range(6))  # the resumed training kept every early epoch
    assert all(torch.equal(early[0][e][k], early[1][e][k]) for e in early[0] for k in early[0][e])
    history = [json.loads(p.with_suffix(".json").read_text())["fit"]["history"] for p in (a_path, tmp_path / "cut" / a_path.name)]
    assert [row["val_loss"] for row in history[0]] == [row["val_loss"] for row in history[1]]


# ---------------------------------------------------------------- model files

def test_missing_sidecar_is_rewritten_without_retraining(mnist5k, write_config, tmp_path, capsys, monkeypatch):
    cfg = load_config(write_config(params=ONE_EPOCH))
    path = train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path)
    sidecar = path.with_suffix(".json")
    before = json.loads(sidecar.read_text())
    sidecar.unlink()
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("retrained"))
    train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path)
    assert "sidecar was missing; re-evaluated it" in capsys.readouterr().out
    after = json.loads(sidecar.read_text())
    assert after["test_acc"] == before["test_acc"] and after["config"] == before["config"] and after["fit"] is None


class Arbitrary:
    """Any class: unpickling it needs code outside a plain tensor file."""


def test_a_model_file_with_objects_is_refused_without_relaying_torchs_advice(mnist5k, write_config, tmp_path, capsys):
    cfg = load_config(write_config(params=ONE_EPOCH))
    path = model_path(cfg, 0, tmp_path)
    torch.save({"output.weight": Arbitrary()}, path)
    with pytest.raises(ModelFileError) as info:
        load_model(path, cfg)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot load: not a valid model file") and "weights_only" not in message
    train_seed(cfg, 0, mnist5k, torch.device("cpu"), tmp_path)
    assert "not a valid model file" in capsys.readouterr().out
    load_model(path, cfg)  # retrained


# ---------------------------------------------------------------- residual models and language models

RESIDUAL = {
    "resmlp": ({"type": "resmlp", "depth": 2, "width": 8}, {"dataset": "mnist-5k"}),
    "vit": ({"type": "vit", "depth": 1, "width": 8, "heads": 2, "patch_size": 7, "mlp_ratio": 1}, {"dataset": "mnist-5k"}),
    "decoder": ({"type": "decoder", "depth": 1, "width": 8, "heads": 2, "mlp_ratio": 1},
                {"dataset": "python-stdlib", "context": 64, "val_split": 0.2}),
}


@pytest.fixture
def small_corpus(tmp_path, monkeypatch) -> Path:
    """A root holding a python-stdlib archive of the committed corpus's 40 smallest files (an epoch
    of the whole corpus takes a minute), with its hash put in place of the committed one."""
    import hashlib

    from scripts.make_stdlib_corpus import archive
    from src.config import CORPUS_SHA256
    from src.data import BUNDLED_DATA_DIR
    from src.text_data import read_corpus
    files = read_corpus(BUNDLED_DATA_DIR / "python-stdlib.tar.xz", CORPUS_SHA256["python-stdlib"])
    sources = tmp_path / "sources"
    sources.mkdir()
    for name in sorted(files, key=lambda n: len(files[n]))[:40]:
        (sources / name).write_bytes(files[name])
    blob = archive(sorted(sources.iterdir()))
    (tmp_path / "python-stdlib.tar.xz").write_bytes(blob)
    monkeypatch.setitem(CORPUS_SHA256, "python-stdlib", hashlib.sha256(blob).hexdigest())
    return tmp_path


@pytest.mark.parametrize("name", list(RESIDUAL))
def test_each_residual_model_trains_an_epoch_through_main_train(name, tmp_path, small_corpus):
    model, data = RESIDUAL[name]
    data = {**data, "root": str(small_corpus)} if name == "decoder" else data
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"model": model, "data": data, "seeds": [0],
                                  "params": {"lr": 0.01, "batch_size": 32, "epochs": 1, "patience": 1}}))
    assert main_train.main([str(config), "--models-dir", str(tmp_path / "models")]) == 0
    cfg = load_config(config)
    path = model_path(cfg, 0, tmp_path / "models")
    record = json.loads(path.with_suffix(".json").read_text())
    first = record["fit"]["history"][0]
    assert first["val_loss"] < math.log(cfg.model.output_size)  # better than uniform over the classes (bytes)
    assert record["val_loss"] == pytest.approx(first["val_loss"]) and {"test_loss", "test_acc"} <= set(record)
    assert isinstance(load_model(path, cfg), type(build_model(cfg.model)))


def test_a_language_models_loss_and_accuracy_are_over_every_next_byte():
    from src.config import parse_config
    from src.data import load_splits
    model, data = RESIDUAL["decoder"]
    cfg = parse_config({"model": model, "data": {**data, "context": 16}}, Path("x.json"))
    val = load_splits(cfg.data).val.take(torch.arange(37))
    torch.manual_seed(0)
    decoder = build_model(cfg.model)
    metrics = evaluate(decoder, val, 8, torch.device("cpu"))
    tokens = val.tokens.long()
    with torch.no_grad():
        logits = decoder(tokens[:, :-1])                        # (37, 16, 256)
    log_p = logits.log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    assert metrics.loss == pytest.approx(-log_p.double().mean().item(), rel=1e-6)
    assert metrics.acc == pytest.approx((logits.argmax(-1) == tokens[:, 1:]).double().mean().item())
