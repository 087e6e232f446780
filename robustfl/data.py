"""Data sets as in-memory tensors.

Each loader returns a :class:`Dataset` with float32 inputs, already normalized, and int64
labels. Image data keeps its ``(C, H, W)`` shape (models flatten as they need); tabular data is
``(F,)``. Nothing is downloaded: files are read from a local folder, and a missing file raises
:class:`~robustfl.errors.DataError` naming the path and where to get it.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robustfl.errors import ConfigError, DataError
from robustfl.seeding import numpy_generator


@dataclass
class Dataset:
    """A classification data set split into train and test.

    Attributes:
        x_train: ``(N, *input_shape)`` float32.
        y_train: ``(N,)`` int64 in ``[0, num_classes)``.
        x_test, y_test: the same for the held-out test set.
        num_classes: number of classes.
        name: short name, e.g. ``"digits"``.
        notes: how the split was made, for reports.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    name: str
    notes: list[str] = field(default_factory=list)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` with every class split in the proportion ``test_fraction``.

    Deterministic for a given ``seed``. Each class contributes ``round(count * test_fraction)``
    test samples, so class frequencies are the same in both parts up to rounding.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(
            f"dataset.test_fraction={test_fraction} is invalid: it must be in (0, 1)."
        )
    rng = numpy_generator(seed, "split")
    train, test = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        cut = round(len(members) * test_fraction)
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    num_classes: int,
    name: str,
    notes: list[str],
) -> Dataset:
    return Dataset(
        x_train=torch.as_tensor(x[train], dtype=torch.float32),
        y_train=torch.as_tensor(y[train], dtype=torch.int64),
        x_test=torch.as_tensor(x[test], dtype=torch.float32),
        y_test=torch.as_tensor(y[test], dtype=torch.int64),
        num_classes=num_classes,
        name=name,
        notes=notes,
    )


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, shape ``(1, 8, 8)``, pixels scaled to [0, 1] then standardized.

    The split is a seeded stratified ``test_fraction`` hold-out of the 1,797 images.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    train, test = stratified_split(y, test_fraction, seed)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    notes = [f"digits: {len(train)} train / {len(test)} test, stratified split, seed {seed}"]
    return _from_arrays(x, y, train, test, 10, "digits", notes)


def load_synthetic(
    num_samples: int = 20000,
    num_features: int = 64,
    num_classes: int = 10,
    separation: float = 2.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_shape: Sequence[int] | None = None,
) -> Dataset:
    """A Gaussian mixture: class ``k`` is ``N(separation * u_k, I)`` in ``num_features`` dimensions.

    The ``u_k`` are random unit vectors, so two class means lie about ``separation * sqrt(2)``
    noise standard deviations apart whatever the dimension; labels are balanced. Deterministic
    for a given ``seed``. With ``image_shape`` (e.g. ``[3, 32, 32]``, CIFAR's) the inputs have
    that shape and ``num_features`` is its product, and each ``u_k`` is a random pattern on a
    4 x 4 grid of each channel, enlarged to the image: data shaped like images, for image
    models when no image files are at hand.
    """
    if image_shape is not None:
        image_shape = tuple(int(v) for v in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ConfigError(
                f"dataset.image_shape={list(image_shape)} is invalid: use [channels, height, "
                "width] with positive entries, or null for flat features."
            )
        num_features = math.prod(image_shape)
    for key, value, low in (
        ("num_samples", num_samples, 2),
        ("num_features", num_features, 1),
        ("num_classes", num_classes, 2),
    ):
        if value < low:
            raise ConfigError(f"dataset.{key}={value} is invalid: it must be >= {low}.")
    if separation <= 0:
        raise ConfigError(f"dataset.separation={separation} is invalid: it must be > 0.")
    rng = numpy_generator(seed, "synthetic")
    if image_shape is None:
        directions = rng.standard_normal((num_classes, num_features))
    else:  # patterns on a coarse grid, enlarged: learnable by convolutions and pooling
        channels, height, width = image_shape
        coarse = rng.standard_normal((num_classes, channels, min(height, 4), min(width, 4)))
        rows = np.arange(height) * coarse.shape[2] // height
        cols = np.arange(width) * coarse.shape[3] // width
        directions = coarse[:, :, rows][:, :, :, cols].reshape(num_classes, num_features)
    means = separation * directions / np.linalg.norm(directions, axis=1, keepdims=True)
    y = np.arange(num_samples) % num_classes
    y = y[rng.permutation(num_samples)]
    x = (means[y] + rng.standard_normal((num_samples, num_features))).astype(np.float32)
    if image_shape is not None:
        x = x.reshape(num_samples, *image_shape)
    train, test = stratified_split(y, test_fraction, seed)
    shape = list(image_shape) if image_shape is not None else num_features
    notes = [f"synthetic: {num_samples} samples of shape {shape}, {num_classes} classes"]
    return _from_arrays(x, y.astype(np.int64), train, test, num_classes, "synthetic", notes)


# ----------------------------------------------------------------------------- IDX (MNIST family)

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array of the shape in its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (header {data[:4].hex()}).")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DataError(
            f"{path} is truncated: header says shape {shape}, found {array.size} bytes."
        )
    return array.reshape(shape)


def _find_idx(root: Path, stem: str, subfolders: tuple[str, ...]) -> Path | None:
    for folder in (root, *(root / sub for sub in subfolders)):
        for suffix in (".gz", ""):
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _load_idx_dataset(
    root: str | Path,
    name: str,
    torchvision_folder: str,
    mean: float,
    std: float,
    test_fraction: float,
    seed: int,
    source: str,
) -> Dataset:
    root = Path(root).expanduser()
    subfolders = (f"{torchvision_folder}/raw", "raw")
    paths = {key: _find_idx(root, stem, subfolders) for key, stem in _IDX_FILES.items()}
    if paths["test_images"] is None or paths["test_labels"] is None:
        raise DataError(
            f"dataset={name}: no {_IDX_FILES['test_images']}[.gz] / {_IDX_FILES['test_labels']}[.gz] "
            f"in {root} (also looked in {root}/{torchvision_folder}/raw). Download the four IDX "
            f"files from {source} into that folder, or point dataset.root (or the ROBUSTFL_DATA "
            "environment variable) at the folder that holds them."
        )

    def images(key: str) -> np.ndarray:
        return ((read_idx(paths[key]).astype(np.float32) / 255.0 - mean) / std)[:, None]

    x_test, y_test = images("test_images"), read_idx(paths["test_labels"]).astype(np.int64)
    if paths["train_images"] is not None and paths["train_labels"] is not None:
        x_train = images("train_images")
        y_train = read_idx(paths["train_labels"]).astype(np.int64)
        x = np.concatenate([x_train, x_test])
        y = np.concatenate([y_train, y_test])
        train = np.arange(len(x_train))
        test = np.arange(len(x_train), len(x))
        notes = [f"{name}: official split, {len(train)} train / {len(test)} test"]
    else:
        # Only the official test set is present: split it, stratified and seeded.
        x, y = x_test, y_test
        train, test = stratified_split(y, test_fraction, seed)
        notes = [
            f"{name}: training files absent; the official test set ({len(y)} images) is split "
            f"stratified into {len(train)} train / {len(test)} test (seed {seed})"
        ]
    return _from_arrays(x, y, train, test, 10, name, notes)


def load_mnist(
    root: str | Path = "data/mnist", test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """MNIST (LeCun et al. 1998) from the IDX files in ``root``; shape ``(1, 28, 28)``."""
    return _load_idx_dataset(
        root,
        "mnist",
        "MNIST",
        0.1307,
        0.3081,
        test_fraction,
        seed,
        "http://yann.lecun.com/exdb/mnist/",
    )


def load_fashion_mnist(
    root: str | Path = "data/fashion_mnist", test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017) from the IDX files in ``root``; shape ``(1, 28, 28)``."""
    return _load_idx_dataset(
        root,
        "fashion_mnist",
        "FashionMNIST",
        0.2860,
        0.3530,
        test_fraction,
        seed,
        "https://github.com/zalandoresearch/fashion-mnist",
    )


# ----------------------------------------------------------------------------- CIFAR-10

_CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)[:, None, None]
_CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)[:, None, None]


def load_cifar10(root: str | Path = "data/cifar10", seed: int = 0) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009) from the python pickle batches; shape ``(3, 32, 32)``.

    ``root`` may be the ``cifar-10-batches-py`` folder itself or its parent.
    """
    root = Path(root).expanduser()
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"dataset=cifar10: missing {', '.join(missing)} in {folder}. Download "
            "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it "
            "there, or point dataset.root (or ROBUSTFL_DATA) at the folder that holds it."
        )

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(folder / name, "rb") as handle:
            entry = pickle.load(handle, encoding="bytes")
        x = entry[b"data"].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        return (x - _CIFAR_MEAN) / _CIFAR_STD, np.asarray(entry[b"labels"], dtype=np.int64)

    parts = [batch(name) for name in names]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    train, test = np.arange(50000), np.arange(50000, len(x))
    return _from_arrays(x, y, train, test, 10, "cifar10", ["cifar10: official split 50000/10000"])
