"""A node's own private data: image folders, saved Hugging Face datasets, Parquet and CSV tables (docs/data.md)."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, kdledger
from PIL import Image

from chain.errors import DataError
from node.config import DataConfig, LocalData
from node.data import SPECS, DatasetError, Split, node_splits
from node.local_data import local_splits, write_image_folder

DIGITS, FASHION = SPECS["digits"], SPECS["fashion-mnist"]


def tiny_split(spec, n=36, seed=0) -> Split:
    """n random images of the spec's shape, whole-number pixels, every class present."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, spec.pixel_max + 1, size=(n, *spec.input_shape))
    return Split(torch.from_numpy(spec.scale(raw)), torch.arange(n) % spec.num_classes)


def folder(tmp_path, spec=DIGITS, n=36, name="train", seed=0):
    root = tmp_path / name
    write_image_folder(tiny_split(spec, n, seed), spec, root)
    return root


def read(source: dict, spec=DIGITS, seed=0):
    return local_splits(LocalData(**source), spec, seed, 0.25)


def same(a: Split, b: Split) -> bool:
    return torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


# -- the formats ----------------------------------------------------------------------------------


def test_an_exported_partition_reads_back_bit_for_bit(tmp_path):
    """Pixels scaled exactly as the built-in loader scales them, classes and order kept: the same tensors."""
    train, test = node_splits(DataConfig(), 1, 3, seed=0)
    write_image_folder(train, DIGITS, tmp_path / "train")
    write_image_folder(test, DIGITS, tmp_path / "test")
    own_train, own_test = read({"format": "imagefolder", "path": tmp_path / "train", "test_path": tmp_path / "test"})
    assert same(own_train, train) and same(own_test, test)
    assert torch.equal(own_train.x.view(torch.int32), train.x.view(torch.int32))  # every bit, the zeros' signs too
    assert own_train.x.stride() == train.x.stride()  # the layout picks the convolution kernel: the same teacher
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [str(i) for i in range(10)]


def test_an_exported_partition_trains_the_very_teacher_its_partition_trains(tmp_path):
    from node.models import build_model
    from node.training import train_classifier

    train, test = node_splits(DataConfig(), 0, 3, seed=0)
    write_image_folder(train, DIGITS, tmp_path / "train")
    write_image_folder(test, DIGITS, tmp_path / "test")
    own, _ = read({"format": "imagefolder", "path": tmp_path / "train", "test_path": tmp_path / "test"})
    weights = []
    for split in (train, own):
        torch.manual_seed(0)
        model = build_model("digits-cnn-bn", DIGITS.input_shape, DIGITS.num_classes)
        train_classifier(model, split, epochs=1, lr=1e-3, batch_size=32, seed=1)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(*weights)


def test_a_held_out_fraction_is_seeded(tmp_path):
    root = folder(tmp_path, n=40)
    train, test = read({"format": "imagefolder", "path": root, "test_fraction": 0.3})
    assert (len(train), len(test)) == (28, 12)
    again, _ = read({"format": "imagefolder", "path": root, "test_fraction": 0.3})
    other, _ = read({"format": "imagefolder", "path": root, "test_fraction": 0.3}, seed=1)
    assert same(train, again) and not same(train, other)
    default_train, default_test = read({"format": "imagefolder", "path": root})  # the scenario's test_fraction
    assert (len(default_train), len(default_test)) == (30, 10)
    whole = torch.cat([train.x, test.x])
    assert torch.equal(whole.sort(dim=0).values, tiny_split(DIGITS, 40).x.sort(dim=0).values)


def test_folders_match_classes_by_name_or_id(tmp_path):
    """Fashion-MNIST's names as people spell them ("T-shirt_top", "Ankle boot") or the class id."""
    raw = np.full((28, 28), 200, dtype=np.uint8)
    for name in ("T-shirt_top", "Ankle boot", "3"):
        (tmp_path / name).mkdir()
        Image.fromarray(raw).save(tmp_path / name / f"{name[0]}.png")
    own, _ = local_splits(LocalData(format="imagefolder", path=tmp_path, test_path=tmp_path), FASHION, 0, 0.2)
    assert sorted(own.y.tolist()) == [0, 3, 9]
    assert torch.all(own.x == torch.tensor(200 / 255 * 2 - 1, dtype=torch.float32))


def test_rgb_with_equal_channels_is_the_grayscale_image_it_holds(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) % 17
    (tmp_path / "4").mkdir()
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "4" / "a.png")
    Image.fromarray(gray).save(tmp_path / "4" / "b.png")
    x = read({"format": "imagefolder", "path": tmp_path, "test_path": tmp_path})[0].x
    assert torch.equal(x[0], x[1]) and torch.equal(x[0, 0], torch.from_numpy(DIGITS.scale(gray)))


def test_huggingface_dataset_maps_its_own_class_names(tmp_path):
    """A ClassLabel's ids index the dataset's own names, here in another order than the federation's."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    names = ["Ankle boot", "T - shirt / top", "Trouser"]  # Hugging Face's fashion_mnist spelling
    raw = np.random.default_rng(0).integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    ds = Dataset.from_dict({"image": [Image.fromarray(r) for r in raw], "label": [i % 3 for i in range(12)]}, features)
    ds.save_to_disk(str(tmp_path / "train"))
    train, test = read({"format": "huggingface", "path": tmp_path / "train", "test_path": tmp_path / "train"}, FASHION)
    assert train.y.tolist() == [[9, 0, 1][i % 3] for i in range(12)]
    assert torch.equal(train.x[:, 0], torch.from_numpy(FASHION.scale(raw))) and same(train, test)
    DatasetDict(train=ds, test=ds).save_to_disk(str(tmp_path / "both"))
    with pytest.raises(DatasetError, match=r"both: holds several splits; name one as path .*both/train"):
        read({"format": "huggingface", "path": tmp_path / "both"}, FASHION)


def test_tables_with_pixel_columns_or_an_image_column(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    split = tiny_split(DIGITS, 20)
    raw = np.rint((split.x.numpy() + 1) / 2 * 16).astype(np.int64).reshape(20, 64)
    columns = {"label": [str(v) for v in split.y.tolist()]} | {f"pixel{i}": raw[:, i] for i in range(64)}
    pcsv.write_csv(pa.table(columns), tmp_path / "digits.csv")
    pq.write_table(pa.table(columns), tmp_path / "digits.parquet")
    for fmt in ("csv", "parquet"):
        own, _ = read({"format": fmt, "path": tmp_path / f"digits.{fmt}", "test_path": tmp_path / f"digits.{fmt}"})
        assert same(own, split), fmt

    def png(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels.reshape(8, 8).astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    table = pa.table({"img": [png(r) for r in raw], "digit": split.y.tolist(), "note": ["x"] * 20})
    pq.write_table(table, tmp_path / "images.parquet")
    source = {"format": "parquet", "image_column": "img", "label_column": "digit"}
    own, _ = read(source | {"path": tmp_path / "images.parquet", "test_path": tmp_path / "images.parquet"})
    assert same(own, split)


# -- what is refused, in one line naming the file and the fault ------------------------------------------


def _bad_folder(tmp_path, fault: str):
    root = folder(tmp_path, n=20)
    some = sorted((root / "3").iterdir())[0]
    if fault == "corrupt":
        some.write_bytes(some.read_bytes()[:30])
    elif fault == "size":
        Image.fromarray(np.zeros((9, 8), np.uint8)).save(some)
    elif fault == "colour":
        Image.fromarray(np.dstack([np.zeros((8, 8), np.uint8)] + [np.ones((8, 8), np.uint8)] * 2)).save(some)
    elif fault == "16-bit":
        Image.fromarray(np.zeros((8, 8), np.uint16)).save(some)
    elif fault == "pixel range":
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(some)
    elif fault == "unknown class":
        (root / "cat").mkdir()
        return root, root / "cat"
    elif fault == "class twice":
        (root / "03").mkdir()
        return root, root / "3"
    elif fault == "stray file":
        (root / "README.txt").write_text("x")
        return root, root / "README.txt"
    elif fault == "not an image":
        some = root / "3" / "notes.txt"
        some.write_text("x")
    return root, some


BAD = {
    "corrupt": "not a readable PNG or JPEG image",
    "size": "8x9 pixels, but digits images are 8x8 (nothing is resized)",
    "colour": "a colour image, but digits images are grayscale",
    "16-bit": "a I;16 image; 8-bit grayscale (L) or colour (RGB) images are read",
    "pixel range": "pixel values 255..255, but digits pixels are 0..16",
    "unknown class": "class 'cat' is unknown to the federation; digits's classes are 0, 1,",
    "class twice": "class 3 again",
    "stray file": "a file where class folders are expected",
    "not an image": "not a .png, .jpg or .jpeg file",
}


@pytest.mark.parametrize("fault", sorted(BAD))
def test_a_bad_folder_is_one_line_naming_the_file(tmp_path, fault):
    root, culprit = _bad_folder(tmp_path, fault)
    with pytest.raises(DataError) as err:
        read({"format": "imagefolder", "path": root})
    message = str(err.value)
    assert message.startswith(str(culprit)) and BAD[fault] in message and "\n" not in message


def test_colour_for_a_colour_dataset_and_grayscale_refused(tmp_path):
    cifar = SPECS["cifar10"]
    root = folder(tmp_path, cifar, n=10)
    own, _ = read({"format": "imagefolder", "path": root, "test_path": root}, cifar)
    assert own.x.shape == (10, 3, 32, 32)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "cat" / "gray.png")
    with pytest.raises(DataError, match=r"gray.png: a grayscale image, but cifar10 images are colour"):
        read({"format": "imagefolder", "path": root}, cifar)


def test_missing_and_empty_and_too_small(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path / 'nowhere'}: no such file or folder$"):
        read({"format": "imagefolder", "path": tmp_path / "nowhere"})
    (tmp_path / "empty" / "3").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no images \(expected .*/<class>/\*.png\|jpg\|jpeg\)"):
        read({"format": "imagefolder", "path": tmp_path / "empty"})
    root = folder(tmp_path, n=1)
    with pytest.raises(DataError, match="1 examples are too few to hold out 0.25"):
        read({"format": "imagefolder", "path": root})


def test_bad_tables(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    def table(name, columns):
        pcsv.write_csv(pa.table(columns), tmp_path / name)
        return {"format": "csv", "path": tmp_path / name}

    pixels = {f"p{i}": [0, 16] for i in range(64)}
    cases = [
        (table("unknown.csv", {"label": ["3", "ten"], **pixels}), "unknown.csv: row 1: class 'ten' is unknown"),
        (table("id.csv", {"label": [3, 10], **pixels}), "id.csv: row 1: class 10 is unknown"),
        (table("nolabel.csv", {"y": [3, 1], **pixels}), "nolabel.csv: no label column 'label' (columns: y, p0"),
        (table("short.csv", {"label": [3, 1], "p0": [0, 1]}), "1 pixel columns besides the label, but digits"),
        (table("half.csv", {"label": [3, 1], **pixels, "p5": [0.5, 1]}), "pixels must be whole numbers 0..16"),
        (table("range.csv", {"label": [3, 1], **pixels, "p5": [0, 200]}), "pixel values 0..200, but digits"),
    ]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    cases.append(({"format": "parquet", "path": tmp_path / "broken.parquet"}, "broken.parquet: not a Parquet file"))
    cases.append(({"format": "huggingface", "path": tmp_path}, "not a Hugging Face dataset saved with save_to_disk"))
    for source, expected in cases:
        with pytest.raises(DataError) as err:
            read(source | {"test_fraction": 0.5})
        assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


# -- configuration: scenarios mixing nodes, a deployed node's own config --------------------------------


def test_nodes_with_files_and_partition_nodes_mix(tmp_path):
    """A node with its own files leaves its partition unused: the others' partitions do not change."""
    root = folder(tmp_path, n=24)
    mixed = DataConfig(local={1: LocalData(format="imagefolder", path=root)})
    for i in (0, 2):
        assert all(same(a, b) for a, b in zip(node_splits(mixed, i, 3, 0), node_splits(DataConfig(), i, 3, 0)))
    train, test = node_splits(mixed, 1, 3, 0)
    assert len(train) + len(test) == 24 and len(test) == 5  # ceil(0.2 * 24)


def test_a_deployed_node_names_its_data_in_its_node_config(tmp_path):
    from node.client_app import own_data

    root = folder(tmp_path)
    config = {"partition-id": 0, "data-format": "imagefolder", "data-path": str(root), "data-test-fraction": 0.5}
    assert own_data(config, DataConfig(), 0) == LocalData(format="imagefolder", path=root, test_fraction=0.5)
    assert own_data({"partition-id": 0}, DataConfig(), 0) is None
    with pytest.raises(DataError, match="^node config data-format: Input should be 'imagefolder'"):
        own_data({"data-format": "zip", "data-path": str(root)}, DataConfig(), 0)
    scenario_too = DataConfig(local={0: LocalData(format="imagefolder", path=root)})
    with pytest.raises(DataError, match="node 0: its node config and the scenario's data.local both name its data"):
        own_data(config, scenario_too, 0)


def _scenario(tmp_path, data: dict, nodes=3):
    from simulations.scenario import load_scenario

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "nodes": nodes, "data": data}))
    return load_scenario(path)


def test_scenario_checks_local_data(tmp_path):
    from simulations.scenario import ScenarioError

    root = folder(tmp_path)
    local = {i: {"format": "imagefolder", "path": str(root)} for i in range(3)}
    # every node has its files: the public dataset's folder is not needed (mnist's data/mnist is absent)
    assert set(_scenario(tmp_path, {"dataset": "mnist", "local": local}).data.local) == {0, 1, 2}
    with pytest.raises(ScenarioError, match="data.path: data/mnist does not exist"):
        _scenario(tmp_path, {"dataset": "mnist", "local": {0: local[0]}})
    with pytest.raises(ScenarioError, match=r"data.local: node 3 does not exist \(0..2\)"):
        _scenario(tmp_path, {"local": {3: local[0]}})
    missing = {0: {"format": "imagefolder", "path": "runs/folders/node-0/train"}}
    with pytest.raises(ScenarioError) as err:
        _scenario(tmp_path, {"local": missing, "alpha": 0.3})
    assert (
        "data.local.0.path: runs/folders/node-0/train does not exist; `kdledger data export-folders --dataset digits "
        "--nodes 3 --out runs/folders --partitioner dirichlet --alpha 0.3 --seed 0` writes it"
    ) in str(err.value)
    with pytest.raises(ScenarioError, match="data.local.0.path: a+ does not exist$"):
        _scenario(tmp_path, {"local": {0: {"format": "csv", "path": "a" * 5000}}})
    with pytest.raises(ScenarioError, match="test_path and test_fraction: name one test split, not both"):
        _scenario(tmp_path, {"local": {0: local[0] | {"test_path": str(root), "test_fraction": 0.1}}})
    with pytest.raises(ScenarioError, match="data.local.0.format: Input should be"):
        _scenario(tmp_path, {"local": {0: {"format": "zip", "path": str(root)}}})


def test_the_folders_scenario_names_the_command_that_writes_its_folders(tmp_path, monkeypatch):
    from simulations.scenario import ScenarioError, load_scenario

    monkeypatch.chdir(tmp_path)  # its folders are relative: none here
    with pytest.raises(ScenarioError) as err:
        load_scenario(ROOT / "simulations/scenarios/fmnist-folders.yaml")
    command = "kdledger data export-folders --dataset fashion-mnist --nodes 3 --out data/fmnist-folders"
    assert command in str(err.value)
    assert command in (ROOT / "simulations/scenarios/fmnist-folders.yaml").read_text()  # the same in its comment


def test_partition_scenarios_hash_as_before():
    """`local` is left out of a configuration that has none: the quickstart's config hash did not move."""
    from simulations.scenario import load_scenario

    spec = load_scenario(ROOT / "simulations/scenarios/quickstart.yaml")
    assert "local" not in spec.decisive()["data"]
    assert spec.config_hash().hex() == "6f6e33db12d97465a33d86a4fe8465a83522a9e25981e507990a287c30dfb77d"


# -- the export command and a federation on folders ------------------------------------------------------


def test_export_folders_never_overwrites_without_force(tmp_path):
    out = tmp_path / "folders"
    done = kdledger(
        "data", "export-folders", "--dataset", "digits", "--nodes", "2", "--out", str(out), "--per-node", "8"
    )
    assert done.returncode == 0, done.stderr
    assert len(list((out / "node-1" / "train").glob("*/*.png"))) == 8
    assert len(list((out / "node-1" / "test").glob("*/*.png"))) == 2
    assert json.loads((out / "export.json").read_text())["per_node"] == 8
    (out / "mine.txt").write_text("the user's")
    again = kdledger("data", "export-folders", "--dataset", "digits", "--nodes", "1", "--out", str(out))
    assert again.returncode == 2 and "not empty (nothing is overwritten; --force" in again.stderr
    forced = kdledger("data", "export-folders", "--dataset", "digits", "--nodes", "1", "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "mine.txt", "node-0"]


def test_kdledger_run_stops_at_a_bad_file_in_one_line_before_the_chain_starts(tmp_path):
    root, culprit = _bad_folder(tmp_path, "size")
    scenario = tmp_path / "bad.yaml"
    local = {i: {"format": "imagefolder", "path": str(root)} for i in range(2)}
    scenario.write_text(yaml.safe_dump({"name": "bad", "nodes": 2, "data": {"local": local}}))
    done = kdledger("run", str(scenario), "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == f"error: {culprit}: 8x9 pixels, but digits images are 8x8 (nothing is resized)"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a federation through Ray; `make test-all` runs it
def test_a_federation_on_its_own_folders_is_recorded_on_chain(tmp_path):
    folders = tmp_path / "folders"
    done = kdledger("data", "export-folders", "--dataset", "digits", "--nodes", "3", "--out", str(folders))
    assert done.returncode == 0, done.stderr
    spec = yaml.safe_load((ROOT / "simulations/scenarios/quickstart.yaml").read_text())
    spec.update(name="folders-ci", nodes=3)
    spec["data"] = {
        "dataset": "digits",
        "local": {
            i: {
                "format": "imagefolder",
                "path": str(folders / f"node-{i}/train"),
                "test_path": str(folders / f"node-{i}/test"),
            }
            for i in range(3)
        },
    }
    spec["teacher"]["epochs"] = 4
    spec["distill"].update(samples=256, steps=100, batch_size=64)
    spec["distill"]["options"].update(iterations=5)
    scenario = tmp_path / "folders-ci.yaml"
    scenario.write_text(yaml.safe_dump(spec))
    run = kdledger("run", str(scenario), "--out", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr[-3000:]
    events = kdledger("events", "--run", str(tmp_path / "run"), "--json")
    assert events.returncode == 0, events.stderr
    by_name: dict[str, list] = {}
    for e in json.loads(events.stdout):
        by_name.setdefault(e["event"], []).append(e)
    assert len(by_name["TeacherRegistered"]) == 3 and len(by_name["StudentCommitted"]) == 1
    assert len(by_name["AccuracyAttested"]) == 4 * 3  # student, own teacher, ensemble, FedAvg once; per node
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for row, i in zip(metrics["nodes"], range(3)):  # sizes and histograms are the folders'
        train, test = folders / f"node-{i}/train", folders / f"node-{i}/test"
        assert row["label_histogram"] == [len(list((train / str(c)).iterdir())) for c in range(10)]
        assert (row["train"], row["test"]) == (len(list(train.glob("*/*.png"))), len(list(test.glob("*/*.png"))))
        attested = [e for e in by_name["AccuracyAttested"] if e["args"]["node"] == row["node"]]
        assert {e["args"]["numExamples"] for e in attested} == {row["test"]}
    assert "own files" in (tmp_path / "run" / "report.md").read_text()
