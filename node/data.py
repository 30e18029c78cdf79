"""Datasets by name and their partition into private per-node train and test splits.

Partitions come from flwr-datasets partitioners over an in-memory `datasets.Dataset`, so every
node computes its own share from the shared seed, and nobody ships data to anyone.
"""

from __future__ import annotations

import functools
import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

from chain.errors import DataError
from node.config import DataConfig, LocalData


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    bounds: tuple[float, float] = (-1.0, 1.0)  # inputs are scaled into this range
    flip: bool = False  # a mirrored example is still an example of its class (clothes, objects; not digits)
    classes: tuple[str, ...] = ()  # what each class id means, so that every node's files agree (default "0", "1", ...)
    pixel_max: int = 255  # raw pixels are whole numbers 0..pixel_max, scaled linearly into `bounds`

    def __post_init__(self):
        if not self.classes:
            object.__setattr__(self, "classes", tuple(str(i) for i in range(self.num_classes)))
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes")

    def scale(self, raw: np.ndarray) -> np.ndarray:
        """Raw pixels into the input range, as every loader does (x / 255 * 2 - 1 for 8-bit images)."""
        low, high = self.bounds
        return raw.astype(np.float32) / float(self.pixel_max) * (high - low) + low


@dataclass(frozen=True)
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


class DatasetError(DataError):
    pass


def _digits() -> tuple[np.ndarray, np.ndarray, DatasetSpec]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0) * 2.0 - 1.0
    return x[:, None], bunch.target.astype(np.int64), SPECS["digits"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise DatasetError(f"{path}: not an unsigned-byte IDX file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape} but the file holds {data.size} values")
    return data.reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).exists():
            return folder / name
    raise DatasetError(f"data.path: {folder} has no {stem}[.gz]")


def _idx_dataset(name: str, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, DatasetSpec]:
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    x = (images.astype(np.float32) / 255.0) * 2.0 - 1.0
    return x[:, None], labels.astype(np.int64), SPECS[name]


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's python batches are pickles: allow exactly what they hold (dicts of bytes, lists, arrays)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("copyreg", "_reconstructor"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise DatasetError(f"refusing to load {module}.{name} from a CIFAR batch (only arrays are expected)")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> dict:
    if not path.exists():
        raise DatasetError(f"data.path: {path.parent} has no {path.name}")
    with open(path, "rb") as f:
        return _ArraysOnly(f, encoding="bytes").load()


def _cifar(name: str, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, DatasetSpec]:
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        key = b"labels"
    else:
        files, key = (["train"] if split == "train" else ["test"]), b"fine_labels"
    batches = [_cifar_batch(folder / f) for f in files]
    raw = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
    x = raw.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0 * 2.0 - 1.0
    return x, labels, SPECS[name]


def _svhn(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, DatasetSpec]:
    from scipy.io import loadmat

    path = folder / f"{split}_32x32.mat"
    if not path.exists():
        raise DatasetError(f"data.path: {folder} has no {path.name}")
    mat = loadmat(path)
    x = np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.float32) / 255.0 * 2.0 - 1.0  # (32, 32, 3, N) -> NCHW
    y = mat["y"].reshape(-1).astype(np.int64) % 10  # SVHN labels the digit 0 as 10
    return x, y, SPECS["svhn"]


# Class names as the datasets' authors give them, spelt to be folder names (docs/data.md says how files match them).
FASHION_MNIST_CLASSES = (
    "t-shirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"
)  # fmt: skip
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
    elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
    man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
    pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
    tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)  # CIFAR-100's fine labels, in id order (alphabetical, as its meta file lists them)
SPECS = {
    "digits": DatasetSpec("digits", (1, 8, 8), 10, pixel_max=16),  # scikit-learn's digits: 17 grey levels
    "mnist": DatasetSpec("mnist", (1, 28, 28), 10),
    "fashion-mnist": DatasetSpec("fashion-mnist", (1, 28, 28), 10, flip=True, classes=FASHION_MNIST_CLASSES),
    "cifar10": DatasetSpec("cifar10", (3, 32, 32), 10, flip=True, classes=CIFAR10_CLASSES),
    "cifar100": DatasetSpec("cifar100", (3, 32, 32), 100, flip=True, classes=CIFAR100_CLASSES),
    "svhn": DatasetSpec("svhn", (3, 32, 32), 10),
}
# Datasets read from a local folder, with the folder used when data.path is not given.
PATH_DATASETS = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("data/mnist"),
    "cifar10": Path("data/cifar-10-batches-py"),
    "cifar100": Path("data/cifar-100-python"),
    "svhn": Path("data/svhn"),
}
LOADERS = {
    "digits": lambda folder, split: _digits(),
    "mnist": lambda folder, split: _idx_dataset("mnist", folder, split),
    "fashion-mnist": lambda folder, split: _idx_dataset("fashion-mnist", folder, split),
    "cifar10": lambda folder, split: _cifar("cifar10", folder, split),
    "cifar100": lambda folder, split: _cifar("cifar100", folder, split),
    "svhn": lambda folder, split: _svhn(folder, split),
}


def load_dataset(cfg: DataConfig, split: str = "train") -> tuple[np.ndarray, np.ndarray, DatasetSpec]:
    """A dataset's examples as arrays (x scaled to the spec's bounds, y class ids).

    Nodes partition the train split; the test split is for benchmarks only.
    """
    if cfg.dataset not in LOADERS:
        raise DatasetError(f"data.dataset: unknown dataset {cfg.dataset!r} (known: {', '.join(sorted(LOADERS))})")
    folder = Path(cfg.path) if cfg.path else PATH_DATASETS.get(cfg.dataset)
    return LOADERS[cfg.dataset](folder, split)


def spec_of(name: str) -> DatasetSpec:
    return SPECS[name]


def node_splits(
    cfg: DataConfig, partition_id: int, num_partitions: int, seed: int, own: LocalData | None = None
) -> tuple[Split, Split]:
    """The private train and test split of one node: its own files if it names some (`own`, from its node
    config, or the scenario's data.local), else its partition of the public dataset. A node with its own
    files leaves its partition unused, so the other nodes' partitions are the same whichever nodes have files."""
    source = own or cfg.local.get(partition_id)
    if source is not None:
        from node.local_data import local_splits  # it builds on this module's types

        return local_splits(source, spec_of(cfg.dataset), seed, cfg.test_fraction)
    x, y, partitioner = _partitioned(cfg, num_partitions, seed)
    part = partitioner.load_partition(partition_id)
    halves = part.train_test_split(test_size=cfg.test_fraction, seed=seed)

    def split(ds: Dataset) -> Split:
        idx = np.asarray(ds["index"])
        return Split(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))  # copies: the cached arrays stay as read

    return split(halves["train"]), split(halves["test"])


@functools.lru_cache(maxsize=2)
def _partitioned(cfg: DataConfig, num_partitions: int, seed: int):
    """The dataset and its partitioner, once per process: a simulated federation's worker serves many nodes,
    and reading and partitioning the whole dataset again for each of them (three times per node, once per
    message) dominated a 1 000-node run. The partitioner computes every partition on its first use."""
    x, y, _ = load_dataset(cfg)
    table = Dataset.from_dict({"index": np.arange(len(y)), "label": y})
    if cfg.partitioner == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions, "label", cfg.alpha, min_partition_size=cfg.min_partition_size, seed=seed
        )
    elif cfg.partitioner == "pathological":
        partitioner = PathologicalPartitioner(num_partitions, "label", cfg.classes_per_node, seed=seed)
    else:
        partitioner = IidPartitioner(num_partitions)
        table = table.shuffle(seed=seed)  # IidPartitioner shards in order
    partitioner.dataset = table
    return x, y, partitioner
