"""A bad scenario ends in one short line naming the field, a non-zero exit, and no traceback."""

import pytest

from conftest import kdledger

QUICK = "name: q\nnodes: 2\n"


@pytest.mark.parametrize(
    "text, names",
    [
        (QUICK + "data:\n  alpah: 0.5\n", "data.alpah: unknown key"),
        (QUICK.replace("nodes: 2", "nodes: four"), "nodes"),
        (QUICK + "data:\n  dataset: fashion-mnist\n  path: /nonexistent/fmnist\n", "data.path"),
        (QUICK + "distill:\n  method: softtarget\n  options:\n    sigmaa: 2\n", "distill.options.sigmaa"),
        (QUICK + "distill:\n  student: resnet-9000\n", "distill.student"),
        ("name: q\nnodes: [1\n", "not valid YAML"),
    ],
)
def test_bad_scenario_short_error(tmp_path, text, names):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    done = kdledger("run", str(path), "--out", str(tmp_path / "run"))
    assert done.returncode == 1
    assert names in done.stderr
    assert str(path) in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) <= 3
    assert not (tmp_path / "run").exists()  # nothing started


def test_missing_scenario_file(tmp_path):
    done = kdledger("run", str(tmp_path / "absent.yaml"))
    assert done.returncode == 1 and "cannot read" in done.stderr and "Traceback" not in done.stderr


def test_events_of_a_directory_that_is_no_run(tmp_path):
    done = kdledger("events", "--run", str(tmp_path))
    assert done.returncode == 1 and "chain.json" in done.stderr and "Traceback" not in done.stderr
