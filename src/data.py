"""Datasets held in memory as uint8 tensors, and fast mini-batches from them.

Every dataset becomes three :class:`Split` objects (train, val, test) of uint8 images
``(N, C, H, W)`` and int64 labels ``(N,)``. Images stay uint8 until a batch is drawn, so a
whole dataset fits on the GPU four times smaller than as floats, and each batch is turned
into float32 in ``[0, 1]`` exactly as torchvision's ``ToTensor`` would (``x / 255``).

Supported datasets (``DataConfig.dataset``):

* ``mnist``, ``fashion-mnist``: IDX files in torchvision's layout under ``cfg.root``
  (``MNIST/raw/``, ``FashionMNIST/raw/``), gzipped or not; Fashion-MNIST is also found where
  the Debian package ``dataset-fashion-mnist`` installs it (``/usr/share/datasets/fashion-mnist``).
* ``cifar10``: the Python pickles in ``<root>/cifar-10-batches-py/``.
* ``mnist-5k``: a 5,000-image MNIST subset with a fixed stratified split, bundled in the
  repository as ``data/mnist-5k.npz`` (``cfg.root`` is searched first).
* ``python-stdlib`` (``TEXT_DATASETS``): byte windows of a committed text corpus, split by file
  (:mod:`src.text_data`): :class:`~src.text_data.TokenSplit` objects of 256 classes (the bytes),
  whose batches are int64 inputs ``(B, T)`` and next-byte targets ``(B, T)``.

The official test set is the test split. The official training set is split into train and
val by a seeded random permutation (``torch.randperm`` with ``cfg.split_seed``), holding out
``round(N * cfg.val_split)`` samples; ``mnist-5k`` ignores ``val_split``/``split_seed`` and
uses the split stored in its file. If files are missing, a download through torchvision is
tried; if that fails too, :class:`UserError` says in one line which files to put where.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from src.config import CORPUS_SHA256, DATASETS, TEXT_DATASETS, DataConfig
from src.errors import UserError, brief
from src.text_data import BYTES, TokenSplit, load_text

NUM_CLASSES = 10
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Where the Debian package dataset-fashion-mnist puts the four gzipped IDX files.
FASHION_MNIST_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
MNIST5K_FILE = "mnist-5k.npz"
BUNDLED_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SPLIT_NAMES = ("train", "val", "test")

# IDX type byte -> element type (big-endian on disk).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class Split:
    """One subset of a dataset.

    images: uint8 ``(N, C, H, W)``; labels: int64 ``(N,)``, on the same device.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"Split.images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"Split.labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"Split has {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one image."""
        return tuple(int(s) for s in self.images.shape[1:])

    def batch(self, index: slice | torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 images in ``[0, 1]`` and labels of the samples at ``index``, converted on ``device``."""
        x, y = self.images[index], self.labels[index]
        return to_unit_float(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)

    def to(self, device: torch.device | str) -> Split:
        """The same split on ``device`` (no copy if it is already there)."""
        return Split(self.images.to(device), self.labels.to(device))

    def take(self, index: torch.Tensor) -> Split:
        """The samples at ``index`` (an index tensor on any device), in its order."""
        return Split(self.images[index.to(self.images.device)], self.labels[index.to(self.labels.device)])


@dataclass(frozen=True)
class Splits:
    """Images (:class:`Split`) or text windows (:class:`~src.text_data.TokenSplit`) alike."""

    train: Split | TokenSplit
    val: Split | TokenSplit
    test: Split | TokenSplit
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one image, or ``(T,)`` tokens of one window."""
        return self.train.sample_shape

    def to(self, device: torch.device | str) -> Splits:
        return Splits(self.train.to(device), self.val.to(device), self.test.to(device), self.num_classes)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape) -> float32 in ``[0, 1]``, bit-identical to ``ToTensor``.

    The divisor is a 0-d tensor on the images' device because CUDA divides by a Python
    scalar as a multiplication by its reciprocal, which is off by one ulp for about half the
    values; dividing by a tensor rounds exactly, so CPU and GPU batches are identical.
    """
    return images.to(torch.float32).div_(torch.full((), 255.0, device=images.device))


def iterate_batches(
    split: Split | TokenSplit,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(images, labels)`` batches on ``device`` (text: ``(inputs, targets)``, int64 ``(B, T)``).

    images: float32 ``(B, C, H, W)`` in ``[0, 1]``; labels: int64 ``(B,)``; the last batch
    may be smaller. With ``shuffle``, batches are consecutive slices of one
    ``torch.randperm(N, generator=generator)``, so every sample appears exactly once and the
    order depends only on the generator's state. Only the uint8 batch is moved, then converted
    on ``device``; a split already on ``device`` (see :meth:`Split.to`) is not copied at all.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    n = len(split)
    order = None
    if shuffle:
        perm_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=perm_device).to(split.device)
    for start in range(0, n, batch_size):
        yield split.batch(slice(start, start + batch_size) if order is None else order[start:start + batch_size], device)


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.dataset`` into memory (CPU); raise :class:`UserError` on any problem."""
    if cfg.dataset == "mnist-5k":
        return _load_mnist5k(Path(cfg.root))
    if cfg.dataset in TEXT_DATASETS:
        parts = load_text(cfg.dataset, Path(cfg.root), BUNDLED_DATA_DIR, CORPUS_SHA256[cfg.dataset], cfg.context,
                          cfg.val_split, cfg.split_seed)
        return Splits(*parts, num_classes=BYTES)
    loaders: dict[str, Callable[[Path], tuple[Split, Split]]] = {
        "mnist": lambda root: _load_idx_dataset("mnist", root),
        "fashion-mnist": lambda root: _load_idx_dataset("fashion-mnist", root),
        "cifar10": _load_cifar10,
    }
    if cfg.dataset not in loaders:
        raise UserError(f"data.dataset must be one of {', '.join(DATASETS)}, got {cfg.dataset!r}")
    full_train, test = loaders[cfg.dataset](Path(cfg.root))
    train, val = split_train_val(full_train, cfg.val_split, cfg.split_seed)
    return Splits(train=train, val=val, test=test, num_classes=NUM_CLASSES)


def split_train_val(full: Split, val_split: float, seed: int) -> tuple[Split, Split]:
    """Hold out ``round(N * val_split)`` samples chosen by ``torch.randperm`` seeded with ``seed``.

    Both parts keep the original sample order (indices sorted), so the split is a pure
    function of ``(N, val_split, seed)``.
    """
    n = len(full)
    n_val = round(n * val_split)
    if not 1 <= n_val <= n - 1:
        raise UserError(f"data.val_split={val_split} holds out {n_val} of {n} training samples; it must leave at least one for train and val")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_index, _ = perm[:n_val].sort()
    train_index, _ = perm[n_val:].sort()
    return full.take(train_index), full.take(val_index)


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or plain) into a native-endian array of its stored shape.

    Layout: two zero bytes, a type byte, the number of dimensions ``d``, ``d`` big-endian
    uint32 sizes, then the data in C order, big-endian.
    """
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise UserError(f"{path}: corrupt IDX header ({ndim} dimensions, {len(data)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise UserError(f"{path}: IDX file {what}: shape {shape} needs {expected} bytes, file has {len(data)}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(f"{path}: corrupt or truncated gzip data ({err})") from None


def _idx_dirs(dataset: str, root: Path) -> list[Path]:
    if dataset == "mnist":
        return [root / "MNIST" / "raw"]
    return [root / "FashionMNIST" / "raw", *FASHION_MNIST_SYSTEM_DIRS]


def _find_idx_files(directory: Path) -> list[Path] | None:
    """The four IDX files in ``directory`` (plain preferred over ``.gz``), or None if any is missing."""
    found = []
    for name in IDX_FILES:
        candidates = [directory / name, directory / f"{name}.gz"]
        existing = [p for p in candidates if p.is_file()]
        if not existing:
            return None
        found.append(existing[0])
    return found


def _load_idx_dataset(dataset: str, root: Path) -> tuple[Split, Split]:
    def locate() -> list[Path] | None:
        for directory in _idx_dirs(dataset, root):
            files = _find_idx_files(directory)
            if files is not None:
                return files
        return None

    files = locate()
    if files is None:
        failure = _download_with_torchvision(dataset, root)
        files = locate()
        if files is None:
            names = ", ".join(f"{n}.gz" for n in IDX_FILES)
            where = f"{_idx_dirs(dataset, root)[0]}/"
            if dataset == "fashion-mnist":
                system = FASHION_MNIST_SYSTEM_DIRS[0] if FASHION_MNIST_SYSTEM_DIRS else None
                where += f" (or install the Debian package dataset-fashion-mnist{f', {system}/' if system else ''})"
            raise UserError(f"{dataset}: dataset files not found; put {names} (gzipped or not) in {where}; automatic download not possible: {failure}")
    train_x, train_y, test_x, test_y = files
    return _idx_split(train_x, train_y), _idx_split(test_x, test_y)


def _idx_split(images_path: Path, labels_path: Path) -> Split:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise UserError(f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise UserError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}")
    _check_labels(labels, labels_path)
    return Split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def _check_labels(labels: np.ndarray, source: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise UserError(f"{source}: labels must be in 0..{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}")


# ---------------------------------------------------------------- download

def _download_with_torchvision(dataset: str, root: Path) -> str:
    """Try torchvision's downloader into ``root`` (its standard layout); return why it failed.

    torchvision is optional and may even fail to import (a build that does not match
    torch), so any exception is reported rather than raised.
    """
    try:
        import torchvision
    except ModuleNotFoundError:
        return "torchvision, the optional downloader, is not installed (pip install torchvision)"
    except Exception as err:  # noqa: BLE001 - any import failure means "no downloader"
        return f"torchvision could not be imported ({brief(err)})"
    classes = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
    try:
        dataset_class = getattr(torchvision.datasets, classes[dataset])
        for train in (True, False):
            dataset_class(str(root), train=train, download=True)
    except Exception as err:  # noqa: BLE001 - network, disk or checksum errors alike
        return f"download through torchvision failed ({brief(err)})"
    return "the torchvision download did not produce these files"


# ---------------------------------------------------------------- CIFAR-10

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so a bad file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.zeros(0).__reduce__()[0],
        # Protocol-2 pickles written by Python 3 encode bytes objects through this.
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> Split:
    """One CIFAR-10 batch pickle: ``{b"data": uint8 (N, 3072), b"labels": [N ints]}``."""
    try:
        with path.open("rb") as handle:
            batch = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    except Exception as err:  # noqa: BLE001 - unpickling raises many types on corrupt input
        raise UserError(f"{path}: not a CIFAR-10 batch pickle ({brief(err)})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UserError(f"{path}: not a CIFAR-10 batch (needs keys b'data' and b'labels')")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: b'labels' must be {len(data)} integers, got {labels.dtype} {labels.shape}")
    _check_labels(labels, path)
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return Split(images, torch.from_numpy(labels.astype(np.int64)))


def _load_cifar10(root: Path) -> tuple[Split, Split]:
    directory = root / CIFAR10_DIR

    def missing() -> list[str]:
        return [name for name in CIFAR10_FILES if not (directory / name).is_file()]

    if missing():
        failure = _download_with_torchvision("cifar10", root)
        absent = missing()
        if absent:
            raise UserError(
                f"cifar10: dataset files not found; put {', '.join(absent)} in {directory}/ "
                f"(extract cifar-10-python.tar.gz into {root}/); automatic download not possible: {failure}"
            )
    batches = [_read_cifar_batch(directory / name) for name in CIFAR10_FILES]
    train = Split(torch.cat([b.images for b in batches[:-1]]), torch.cat([b.labels for b in batches[:-1]]))
    return train, batches[-1]


# ---------------------------------------------------------------- bundled MNIST subset

def _load_mnist5k(root: Path) -> Splits:
    """The bundled subset: ``<root>/mnist-5k.npz`` if present, else the repository's copy.

    The file holds ``{train,val,test}_{images,labels}`` (uint8 ``(N, 1, 28, 28)``, int64
    ``(N,)``); its fixed split replaces ``val_split``/``split_seed``.
    """
    candidates = [root / MNIST5K_FILE, BUNDLED_DATA_DIR / MNIST5K_FILE]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise UserError(
            f"mnist-5k: {candidates[1]} is missing (it ships with the repository; "
            f"regenerate it with scripts/make_mnist5k.py)"
        )
    rebuild = "rebuild it with python3 scripts/make_mnist5k.py"
    try:
        # Opened here, not by np.load, which leaves the file open when the zip is corrupt.
        with path.open("rb") as handle, np.load(handle, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path}: not a valid dataset file: not a readable .npz archive ({brief(err)}); {rebuild}") from None
    except Exception:  # noqa: BLE001 - numpy's message for pickled content advises allow_pickle=True; not repeated
        raise UserError(f"{path}: not a valid dataset file: it holds pickled Python objects or data "
                        f"other than plain arrays, which are not loaded; {rebuild}") from None
    splits = {name: _npz_split(arrays, name, path) for name in SPLIT_NAMES}
    return Splits(**splits, num_classes=NUM_CLASSES)


def _npz_split(arrays: dict[str, np.ndarray], name: str, path: Path) -> Split:
    images, labels = arrays.get(f"{name}_images"), arrays.get(f"{name}_labels")
    if images is None or labels is None:
        raise UserError(f"{path}: missing arrays {name}_images/{name}_labels")
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"{path}: {name}_images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{path}: {name}_labels must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    _check_labels(labels, path)
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
