"""Dataset readers on small files written here in each format (nothing is downloaded)."""

import gzip
import pickle

import numpy as np
import pytest

from node.config import DataConfig
from node.data import DatasetError, load_dataset, node_splits


def write_idx(path, array):
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([1, 2, 3]))
    x, y, spec = load_dataset(DataConfig(dataset="mnist", path=tmp_path))
    assert x.shape == (3, 1, 28, 28) and list(y) == [1, 2, 3] and spec.num_classes == 10
    assert x.min() == -1.0 and np.isclose(x.max(), 1.0)
    assert np.allclose((x[0, 0] + 1) / 2 * 255, images[0])


def test_cifar_batches_and_the_restricted_unpickler(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [i % 10] * 4}
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    x, y, spec = load_dataset(DataConfig(dataset="cifar10", path=tmp_path))
    assert x.shape == (20, 3, 32, 32) and spec.input_shape == (3, 32, 32) and list(y[:4]) == [1] * 4

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        load_dataset(DataConfig(dataset="cifar10", path=tmp_path), "test")


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    X = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": X, "y": np.array([[10], [1], [2], [3], [4]])})
    x, y, _ = load_dataset(DataConfig(dataset="svhn", path=tmp_path))
    assert x.shape == (5, 3, 32, 32) and list(y) == [0, 1, 2, 3, 4]  # SVHN's 10 is the digit 0
    assert np.allclose((x[2, :, 4, 7] + 1) / 2 * 255, X[4, 7, :, 2])


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path)):
        load_dataset(DataConfig(dataset="cifar100", path=tmp_path))


def test_partitions_are_disjoint_and_cover_the_data():
    cfg = DataConfig(alpha=0.3)
    seen = []
    for pid in range(4):
        train, test = node_splits(cfg, pid, 4, seed=1)
        seen += [bytes(x.numpy().tobytes()) for x in train.x] + [bytes(x.numpy().tobytes()) for x in test.x]
        assert len(test) > 0 and len(train) >= 4 * len(test) - 4
    x, _, _ = load_dataset(cfg)
    assert len(seen) == len(x)  # every example on exactly one node (digits has a few exact duplicates)
