"""A node's own private data: a folder of images per class, a Hugging Face dataset saved on disk, or a
Parquet or CSV table, read instead of a partition of a public dataset (docs/data.md).

Every example is checked against the scenario's dataset spec before a node trains on it: its size and
channels, its pixels (whole numbers 0..pixel_max, scaled exactly as the built-in loaders scale theirs) and
its class, matched by name or by id to the spec's classes, so that class 3 means the same at every node.
Nothing is resized, converted or guessed: what does not fit is a DatasetError naming the file and the fault.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from node.config import LocalData
from node.data import DatasetError, DatasetSpec, Split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")  # Pillow parses only these: a node's files are data, not an attack surface


def local_splits(source: LocalData, spec: DatasetSpec, seed: int, test_fraction: float) -> tuple[Split, Split]:
    """A node's train and test split from its own files: `source.test_path`, or a seeded share held out."""
    x, y = _scaled(*read_source(source, source.path, spec), spec)
    if source.test_path is not None:
        test_x, test_y = _scaled(*read_source(source, source.test_path, spec), spec)
        return _split(x, y, np.arange(len(y))), _split(test_x, test_y, np.arange(len(test_y)))
    fraction = source.test_fraction if source.test_fraction is not None else test_fraction
    n_test = math.ceil(fraction * len(y))  # as the partitions' train_test_split rounds
    if n_test >= len(y):
        raise DatasetError(f"{source.path}: {len(y)} examples are too few to hold out {fraction} as a test split")
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])  # each split keeps the files' order
    return _split(x, y, train), _split(x, y, test)


def _scaled(raw: np.ndarray, y: np.ndarray, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Inputs as the built-in loaders make them, values and layout: a grayscale set is scaled as (N, H, W) and
    then given its channel axis. The layout (its strides) decides which convolution kernel runs, hence a
    teacher's last bits: so a node's exported partition trains the very teacher its partition trains."""
    x = spec.scale(raw[:, 0])[:, None] if raw.shape[1] == 1 else spec.scale(raw)
    return x, y.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray, index: np.ndarray) -> Split:
    return Split(torch.from_numpy(x[index]), torch.from_numpy(y[index]))  # a copy by index, as a partition's


def read_source(source: LocalData, path: Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels (N, C, H, W), whole numbers 0..pixel_max, and class ids (N,) of one split."""
    path = Path(path)
    try:
        found = path.exists()
    except OSError as exc:  # e.g. a name too long for the file system
        raise DatasetError(f"{path}: cannot be read ({exc.strerror})") from None
    if not found:
        raise DatasetError(f"{path}: no such file or folder")
    if source.format == "imagefolder":
        return read_image_folder(path, spec)
    table, label_names = _arrow_table(source.format, path)
    return read_table(table, label_names, source, spec, str(path))


# -- classes -----------------------------------------------------------------------------------------


def _key(name: str) -> str:
    """How a class name is matched, case and punctuation aside: "T-shirt/top" is t-shirt-top."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


class ClassIds:
    """Class names and ids to the spec's ids: a spec name, or an integer id in range; anything else is an error."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.by_key = {_key(name): i for i, name in enumerate(spec.classes)}
        assert len(self.by_key) == spec.num_classes, f"{spec.name}: class names that match alike"

    def known(self) -> str:
        names = self.spec.classes
        listed = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        return f"{self.spec.name}'s classes are {listed} (or ids 0..{len(names) - 1})"

    def __call__(self, label: object, where: str) -> int:
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if 0 <= label < self.spec.num_classes:
                return int(label)
        elif isinstance(label, str):
            text = label.strip()
            if text.isdecimal() and int(text) < self.spec.num_classes:
                return int(text)
            if not text.isdecimal() and _key(text) in self.by_key:
                return self.by_key[_key(text)]
        raise DatasetError(f"{where}: class {label!r} is unknown to the federation; {self.known()}")


# -- images ------------------------------------------------------------------------------------------


def image_pixels(image: Image.Image, spec: DatasetSpec, where: str) -> np.ndarray:
    """An image's pixels as (C, H, W), if it is exactly the spec's size and kind of image.

    Lossless readings only: a palette image is its palette's colours; a black-and-white one 0 and 255; an
    RGB image whose three channels are equal everywhere is the grayscale image it holds (tools often save
    grayscale as RGB, and the numbers are the same). Anything else that differs from the spec is refused.
    """
    channels, height, width = spec.input_shape
    if image.size != (width, height):
        raise DatasetError(
            f"{where}: {image.width}x{image.height} pixels, but {spec.name} images are {width}x{height} "
            "(nothing is resized)"
        )
    mode = image.mode
    if mode == "P" and "transparency" not in image.info:
        image = image.convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    if image.mode not in ("L", "RGB"):
        raise DatasetError(f"{where}: a {mode} image; 8-bit grayscale (L) or colour (RGB) images are read")
    pixels = np.asarray(image)
    if channels == 1 and pixels.ndim == 3:
        if not ((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()):
            raise DatasetError(f"{where}: a colour image, but {spec.name} images are grayscale (nothing is converted)")
        pixels = pixels[..., 0]
    if channels == 3 and pixels.ndim == 2:
        raise DatasetError(f"{where}: a grayscale image, but {spec.name} images are colour (nothing is converted)")
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return check_pixels(chw, spec, where)


def check_pixels(pixels: np.ndarray, spec: DatasetSpec, where: str) -> np.ndarray:
    """Whole numbers 0..pixel_max, the range every loader scales from."""
    if pixels.dtype.kind not in "uif":
        raise DatasetError(f"{where}: pixels of type {pixels.dtype}, numbers expected")
    if pixels.dtype.kind == "f" and not (np.isfinite(pixels).all() and (pixels == np.round(pixels)).all()):
        raise DatasetError(f"{where}: pixels must be whole numbers 0..{spec.pixel_max} (found fractions or NaN)")
    if pixels.size and (pixels.min() < 0 or pixels.max() > spec.pixel_max):
        raise DatasetError(
            f"{where}: pixel values {pixels.min():g}..{pixels.max():g}, but {spec.name} pixels are 0..{spec.pixel_max}"
        )
    return pixels


def open_image(data: Path | bytes, spec: DatasetSpec, where: str) -> np.ndarray:
    """An encoded PNG or JPEG (a file, or bytes from a table) as checked pixels."""
    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            return image_pixels(image, spec, where)  # the size is checked from the header, before decoding
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{where}: not a readable PNG or JPEG image ({exc})") from None


def read_image_folder(root: Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """root/<class>/*.png|jpg|jpeg, the class folder named by a class name or id; names starting with '.' are
    skipped (.DS_Store, .ipynb_checkpoints). Images are read in the order of their file names, so that a
    partition written by `kdledger data export-folders` reads back in its own order."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (an image folder is root/<class>/*.png)")
    classes = ClassIds(spec)
    files: list[tuple[str, str, Path, int]] = []
    folder_of: dict[int, Path] = {}
    for folder in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: a file where class folders are expected ({root}/<class>/*.png)")
        label = classes(folder.name, str(folder))
        if label in folder_of:
            raise DatasetError(f"{folder}: class {label} again (also {folder_of[label].name})")
        folder_of[label] = folder
        for file in folder.iterdir():
            if file.name.startswith("."):
                continue
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(f"{file}: not a .png, .jpg or .jpeg file")
            files.append((file.name, folder.name, file, label))
    if not files:
        raise DatasetError(f"{root}: no images (expected {root}/<class>/*.png|jpg|jpeg)")
    files.sort(key=lambda f: (f[0], f[1]))
    pixels = np.stack([open_image(path, spec, str(path)) for _, _, path, _ in files])
    return pixels, np.array([label for *_, label in files], dtype=np.int64)


# -- tables and Hugging Face datasets -----------------------------------------------------------------


def _arrow_table(fmt: str, path: Path):
    """The split as an Arrow table, and the label's class names where the file declares them (a ClassLabel)."""
    import pyarrow as pa

    try:
        if fmt == "huggingface":
            from datasets import ClassLabel, Dataset, load_from_disk

            dataset = load_from_disk(str(path))
            if not isinstance(dataset, Dataset):
                splits = ", ".join(f"{path}/{name}" for name in dataset)
                raise DatasetError(f"{path}: holds several splits; name one as path and one as test_path ({splits})")
            features = {name: f for name, f in dataset.features.items() if isinstance(f, ClassLabel)}
            table = dataset.with_format("arrow")[:]  # the rows as the dataset orders them
            return table, {name: list(f.names) for name, f in features.items()}
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
    except DatasetError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:  # FileNotFoundError: not a saved dataset
        kind = {"huggingface": "a Hugging Face dataset saved with save_to_disk", "parquet": "a Parquet file"}
        raise DatasetError(f"{path}: not {kind.get(fmt, 'a CSV file')} ({str(exc).splitlines()[0]})") from None
    return table, _declared_class_names(table)


def _declared_class_names(table) -> dict[str, list[str]]:
    """A Parquet file that `datasets` wrote keeps its features in the schema's metadata: its ClassLabel ids
    index its own names, which need not be in the federation's order."""
    meta = (table.schema.metadata or {}).get(b"huggingface")
    if not meta:
        return {}
    try:
        features = json.loads(meta).get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    return {
        name: list(f["names"])
        for name, f in features.items()
        if isinstance(f, dict) and f.get("_type") == "ClassLabel" and "names" in f
    }


def read_table(
    table, label_names: dict[str, list[str]], source: LocalData, spec: DatasetSpec, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Labels from `source.label_column`; pixels from the image column, else from every other column."""
    columns = table.column_names
    if source.label_column not in columns:
        raise DatasetError(f"{where}: no label column {source.label_column!r} (columns: {', '.join(columns[:12])})")
    if table.num_rows == 0:
        raise DatasetError(f"{where}: no rows")
    labels = _class_ids(
        table.column(source.label_column).to_pylist(), label_names.get(source.label_column), spec, where
    )
    image_column = source.image_column or ("image" if "image" in columns else None)
    if image_column is not None:
        if image_column not in columns:
            raise DatasetError(f"{where}: no image column {image_column!r} (columns: {', '.join(columns[:12])})")
        cells = table.column(image_column).to_pylist()
        pixels = np.stack([_cell_pixels(c, spec, f"{where}: row {i}, {image_column}") for i, c in enumerate(cells)])
    else:
        pixels = _feature_pixels(table, [c for c in columns if c != source.label_column], spec, where)
    return pixels, labels


def _class_ids(labels: Sequence, names: list[str] | None, spec: DatasetSpec, where: str) -> np.ndarray:
    classes = ClassIds(spec)
    ids = []
    for row, label in enumerate(labels):
        if label is None:
            raise DatasetError(f"{where}: row {row} has no label")
        if names is not None:  # a ClassLabel: the id indexes the file's own names
            if not (isinstance(label, int) and 0 <= label < len(names)):
                raise DatasetError(f"{where}: row {row}: label {label!r} is not one of the file's {len(names)} classes")
            label = names[label]
        ids.append(classes(label, f"{where}: row {row}"))
    return np.array(ids, dtype=np.int64)


def _cell_pixels(cell: object, spec: DatasetSpec, where: str) -> np.ndarray:
    """One image cell: encoded bytes, a `datasets` Image ({"bytes", "path"}), or an array of pixels laid out
    (H, W), (H, W, C) or flat in that order."""
    if isinstance(cell, dict) and "bytes" in cell:
        if cell["bytes"] is None:
            raise DatasetError(f"{where}: the image is stored as a path only ({cell.get('path')}); embed the images")
        cell = cell["bytes"]
    if isinstance(cell, bytes):
        return open_image(cell, spec, where)
    if cell is None:
        raise DatasetError(f"{where}: no image")
    channels, height, width = spec.input_shape
    try:
        array = np.asarray(cell)
    except ValueError:
        array = np.asarray([], dtype=object)  # ragged: reported below as a shape that does not fit
    shapes = {(height, width, channels), (height * width * channels,)} | ({(height, width)} if channels == 1 else set())
    if array.shape not in shapes or array.dtype == object:
        raise DatasetError(
            f"{where}: an array of shape {array.shape}, but {spec.name} images are {height}x{width}x{channels} "
            "(H, W, C; or flat)"
        )
    return check_pixels(array.reshape(height, width, channels).transpose(2, 0, 1), spec, where)


def _feature_pixels(table, features: list[str], spec: DatasetSpec, where: str) -> np.ndarray:
    """One column per pixel, in (H, W, C) order, as in CSV exports of MNIST-like datasets."""
    channels, height, width = spec.input_shape
    need = channels * height * width
    if len(features) != need:
        raise DatasetError(
            f"{where}: {len(features)} pixel columns besides the label, but {spec.name} images have "
            f"{height}x{width}x{channels} = {need} pixels (or name an image column with image_column)"
        )
    for name in features:
        if table.column(name).null_count:
            raise DatasetError(f"{where}: column {name!r} has empty cells")
    try:
        matrix = np.stack([table.column(name).to_numpy() for name in features], axis=1)
    except Exception as exc:  # noqa: BLE001 - arrow says which type it could not convert
        raise DatasetError(f"{where}: pixel columns that are not numbers ({exc})") from None
    pixels = check_pixels(matrix, spec, where)
    return pixels.reshape(-1, height, width, channels).transpose(0, 3, 1, 2)


# -- writing a partition as image folders (`kdledger data export-folders`) ----------------------------


def raw_pixels(split: Split, spec: DatasetSpec) -> np.ndarray:
    """A split's inputs back as whole-number pixels: the inverse of `DatasetSpec.scale`, exact for its values."""
    low, high = spec.bounds
    return np.rint((split.x.numpy().astype(np.float64) - low) / (high - low) * spec.pixel_max).astype(np.uint8)


def write_image_folder(split: Split, spec: DatasetSpec, root: Path) -> None:
    """root/<class name>/<index>.png, one PNG per example, numbered in the split's order (which
    `read_image_folder` keeps); digits keep their 0..16 grey levels, so every pixel reads back as it was."""
    pixels = raw_pixels(split, spec)
    width = max(5, len(str(len(split) - 1)))
    for name in spec.classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(pixels, split.y.tolist())):
        hwc = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        Image.fromarray(hwc, "L" if hwc.ndim == 2 else "RGB").save(root / spec.classes[label] / f"{i:0{width}d}.png")
