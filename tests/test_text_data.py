"""The byte-level text dataset: the committed corpus and its hash, the split by file, the windows."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from src.config import CORPUS_SHA256, DataConfig, parse_config
from src.data import BUNDLED_DATA_DIR, iterate_batches, load_splits
from src.errors import UserError
from src.text_data import TokenSplit, read_corpus, split_files, windows

CORPUS = BUNDLED_DATA_DIR / "python-stdlib.tar.xz"


def stdlib(**values) -> DataConfig:
    return parse_config({"model": {"type": "decoder"}, "data": {"dataset": "python-stdlib", **values}}, Path("x.json")).data


def test_the_committed_corpus_is_the_one_its_hash_names():
    assert hashlib.sha256(CORPUS.read_bytes()).hexdigest() == CORPUS_SHA256["python-stdlib"]
    files = read_corpus(CORPUS, CORPUS_SHA256["python-stdlib"])
    assert len(files) == 118 and sum(map(len, files.values())) == 1_409_961
    assert list(files) == sorted(files) and all(name.endswith(".py") for name in files)


def test_a_corpus_with_other_bytes_is_refused_in_one_line(tmp_path):
    shutil.copy(CORPUS, tmp_path / CORPUS.name)
    with (tmp_path / CORPUS.name).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UserError) as err:
        load_splits(stdlib(root=str(tmp_path)))  # data.root is searched before the bundled copy
    assert "SHA-256" in str(err.value) and CORPUS_SHA256["python-stdlib"] in str(err.value)
    assert "\n" not in str(err.value)


def test_windows_overlap_by_one_byte_and_targets_are_the_next_bytes():
    split = windows(b"abcdefghijk", 3)  # (11 - 1) // 3 = 3 windows; the last byte is left over
    assert [bytes(w.tolist()) for w in split.tokens] == [b"abcd", b"defg", b"ghij"]
    x, y = split.batch(slice(0, 3), torch.device("cpu"))
    assert x.dtype == y.dtype == torch.int64
    assert bytes(x.flatten().tolist()) == b"abcdefghi" and bytes(y.flatten().tolist()) == b"bcdefghij"
    with pytest.raises(UserError, match="holds no window"):
        windows(b"abc", 3)


def test_the_split_by_file_is_disjoint_covers_every_file_and_holds_the_quota():
    sizes = {f"f{i:02d}.py": 100 + 37 * i for i in range(30)}
    train, val, test = split_files(sizes, 0.1, seed=3)
    assert sorted(train + val + test) == sorted(sizes) and len(set(train + val + test)) == 30
    for part in (val, test):
        held = sum(sizes[n] for n in part)
        assert held >= 0.1 * sum(sizes.values()) and held - max(sizes[n] for n in part) < 0.1 * sum(sizes.values())
    assert split_files(sizes, 0.1, seed=3) == (train, val, test)
    assert split_files(sizes, 0.1, seed=4) != (train, val, test)
    with pytest.raises(UserError, match="leaves no files for training"):
        split_files({"a.py": 10, "b.py": 10}, 0.4, seed=0)


def test_splits_are_deterministic_and_each_is_its_files_bytes_in_name_order():
    cfg = stdlib(context=64, val_split=0.1, split_seed=5)
    splits, again = load_splits(cfg), load_splits(cfg)
    assert splits.num_classes == 256 and splits.input_shape == (64,)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(splits, name).tokens, getattr(again, name).tokens)
    files = read_corpus(CORPUS, CORPUS_SHA256["python-stdlib"])
    _, val_files, _ = split_files({n: len(b) for n, b in files.items()}, 0.1, 5)
    stream = b"".join(files[n] for n in val_files)
    assert len(splits.val) == (len(stream) - 1) // 64
    assert bytes(splits.val.tokens[:, :-1].flatten().tolist()) == stream[:64 * len(splits.val)]
    other = load_splits(stdlib(context=64, val_split=0.1, split_seed=6))
    assert not torch.equal(other.val.tokens[:10], splits.val.tokens[:10])


def test_iterate_batches_gives_every_window_once_shuffled():
    split = windows(bytes(range(200)) * 3, 10)
    seen = []
    for x, y in iterate_batches(split, 16, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert x.shape[1] == 10 and torch.equal(x[:, 1:], y[:, :-1])
        seen += x[:, 0].tolist()
    assert sorted(seen) == sorted(split.tokens[:, 0].long().tolist()) and seen != split.tokens[:, 0].long().tolist()
    assert isinstance(split.to("cpu"), TokenSplit) and len(split.take(torch.tensor([2, 0]))) == 2


def test_the_data_identity_names_the_corpus_hash_and_the_window():
    identity = stdlib(context=32).identity()
    assert identity["sha256"] == CORPUS_SHA256["python-stdlib"] and identity["context"] == 32
    assert "context" not in DataConfig(dataset="fashion-mnist").identity()
