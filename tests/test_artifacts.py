"""Weights files: same weights give the same bytes in any process; tampered bytes are never parsed."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load as st_load

import node.artifacts as artifacts
from node.artifacts import ArtifactStore, Expected, TamperedArtifact, deserialize, serialize, sha256
from node.models import build_model

HASH_IN_CHILD = (
    "import torch; torch.manual_seed(3); from node.models import build_model; "
    "from node.artifacts import serialize, sha256; m = build_model('digits-cnn', (1, 8, 8), 10); "
    "print(sha256(serialize(m, 'digits-cnn', (1, 8, 8), 10)).hex())"
)


DIGITS = Expected(("digits-cnn",), (1, 8, 8), 10)


def model_and_blob(seed=3):
    torch.manual_seed(seed)
    model = build_model("digits-cnn", (1, 8, 8), 10)
    return model, serialize(model, "digits-cnn", (1, 8, 8), 10)


def test_same_weights_same_hash_across_processes():
    # the safetensors library's own writer fails this: its header order is seeded per process
    hashes = {
        subprocess.run([sys.executable, "-c", HASH_IN_CHILD], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    }
    assert len(hashes) == 1
    assert hashes == {sha256(model_and_blob()[1]).hex()}


def test_file_is_standard_safetensors_and_round_trips():
    model, blob = model_and_blob()
    tensors = st_load(blob)  # the reference reader accepts our writer's output
    assert set(tensors) == set(model.state_dict())
    again = deserialize(blob, sha256(blob), DIGITS)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name])


def test_tampered_bytes_are_refused_before_parsing(tmp_path, monkeypatch):
    _, blob = model_and_blob()
    store = ArtifactStore(tmp_path)
    model_hash = store.put(blob)
    path = store.path(model_hash)
    assert path == tmp_path / model_hash.hex()[:2] / model_hash.hex()[2:4] / f"{model_hash.hex()}.safetensors"
    tampered = bytearray(blob)
    tampered[-1] ^= 0xFF
    path.write_bytes(bytes(tampered))

    def must_not_parse(*_):
        raise AssertionError("tampered bytes reached the parser")

    monkeypatch.setattr(artifacts, "st_load", must_not_parse)
    with pytest.raises(TamperedArtifact) as err:
        store.load(model_hash, DIGITS, owner="node 0xABC")
    assert "node 0xABC" in str(err.value) and model_hash.hex() in str(err.value)


def test_missing_artifact_names_the_hash(tmp_path):
    with pytest.raises(TamperedArtifact, match="ab" * 32):
        ArtifactStore(tmp_path).get(bytes.fromhex("ab" * 32), owner="node 1")
