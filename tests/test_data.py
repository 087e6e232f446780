import gzip
import struct

import numpy as np
import pytest
from conftest import SHARED_MNIST

from robustfl.data import load_cifar10, load_digits, load_mnist, load_synthetic, read_idx
from robustfl.errors import ConfigError, DataError


def test_digits_is_a_stratified_standardized_split():
    data = load_digits(test_fraction=0.2, seed=0)
    assert data.input_shape == (1, 8, 8)
    assert len(data.y_train) + len(data.y_test) == 1797
    assert abs(len(data.y_test) / 1797 - 0.2) < 0.01
    train_share = np.bincount(data.y_train.numpy(), minlength=10) / len(data.y_train)
    test_share = np.bincount(data.y_test.numpy(), minlength=10) / len(data.y_test)
    assert np.abs(train_share - test_share).max() < 0.01
    assert abs(float(data.x_train.mean())) < 1e-4 and abs(float(data.x_train.std()) - 1) < 1e-3


def test_synthetic_is_seeded_balanced_and_sized():
    a = load_synthetic(num_samples=1000, num_features=12, num_classes=4, seed=3)
    b = load_synthetic(num_samples=1000, num_features=12, num_classes=4, seed=3)
    c = load_synthetic(num_samples=1000, num_features=12, num_classes=4, seed=4)
    assert a.input_shape == (12,) and a.num_classes == 4
    assert len(a.y_train) + len(a.y_test) == 1000
    assert np.array_equal(a.x_train.numpy(), b.x_train.numpy())
    assert not np.array_equal(a.x_train.numpy(), c.x_train.numpy())
    assert set(np.bincount(np.concatenate([a.y_train, a.y_test]))) == {250}
    with pytest.raises(ConfigError, match="dataset.num_classes"):
        load_synthetic(num_classes=1)


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_and_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28))
    labels = np.arange(40) % 10
    write_idx(raw / "t10k-images-idx3-ubyte.gz", images)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels)
    assert np.array_equal(read_idx(raw / "t10k-images-idx3-ubyte.gz"), images)
    data = load_mnist(tmp_path, test_fraction=0.25, seed=0)
    assert data.input_shape == (1, 28, 28)
    assert (len(data.y_train), len(data.y_test)) == (30, 10)
    assert "training files absent" in data.notes[0]


def test_missing_files_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)) as error:
        load_mnist(tmp_path)
    assert "dataset.root" in str(error.value)
    with pytest.raises(DataError, match="cifar-10-python"):
        load_cifar10(tmp_path)


MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.skipif(
    not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="the shared folder's official MNIST training files are not present",
)
def test_real_mnist_official_split():
    data = load_mnist(SHARED_MNIST, seed=0)
    assert (len(data.y_train), len(data.y_test)) == (60000, 10000)
    assert np.bincount(data.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(data.y_test).tolist() == MNIST_TEST_COUNTS
    assert data.x_train.shape[1:] == (1, 28, 28)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST test files not present")
def test_real_mnist_test_set_split(tmp_path):
    """With only the two test files, a stratified 8,000 / 2,000 split of the test set."""
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes((SHARED_MNIST / name).read_bytes())
    data = load_mnist(tmp_path, test_fraction=0.2, seed=0)
    assert (len(data.y_train), len(data.y_test)) == (8000, 2000)
    counts = np.bincount(np.concatenate([data.y_train, data.y_test]))
    assert counts.tolist() == MNIST_TEST_COUNTS
