"""Weights files built by an attacker who controls the bytes (so the hash matches what they registered):
each is refused with an ArtifactError naming the sender, before anything the file asks for is allocated."""

import json
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chain.errors import ArtifactError
from node.artifacts import MAX_HEADER_BYTES, Expected, deserialize, serialize, sha256
from node.models import Ensemble, build_model

SHAPE = (1, 8, 8)
EXPECTED = Expected(("digits-cnn-bn", "digits-cnn-half-bn"), SHAPE, 10, max_members=4)


def valid(arch="digits-cnn-bn") -> bytes:
    torch.manual_seed(0)
    return serialize(build_model(arch, SHAPE, 10), arch, SHAPE, 10, label_counts=list(range(10)))


def parts(blob: bytes) -> tuple[dict, bytes]:
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + size]), blob[8 + size :]


def craft(header, data: bytes = b"", *, raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def with_header(change) -> bytes:
    header, data = parts(valid())
    change(header)
    return craft(header, data)


def refused(blob: bytes, match: str = "") -> str:
    with pytest.raises(ArtifactError) as caught:
        deserialize(blob, sha256(blob), EXPECTED, owner="node 0xEVE")
    message = str(caught.value)
    assert "node 0xEVE" in message and match in message, message
    return message


def first_tensor(header: dict) -> str:
    return sorted(k for k in header if k != "__metadata__")[0]


def test_a_valid_file_and_a_valid_ensemble_load():
    model = deserialize(valid(), sha256(valid()), EXPECTED)
    assert model.label_counts == list(range(10))
    members = [build_model("digits-cnn-bn", SHAPE, 10) for _ in range(3)]
    blob = serialize(Ensemble(members), "digits-cnn-bn", SHAPE, 10)
    assert isinstance(deserialize(blob, sha256(blob), EXPECTED), Ensemble)
    student = valid("digits-cnn-half-bn")
    assert deserialize(student, sha256(student), EXPECTED) is not None


def test_a_16_gb_tensor_is_refused_before_any_allocation():
    header, data = parts(valid())
    name = first_tensor(header)
    header[name] = {"dtype": "F32", "shape": [4, 1024, 1024, 1024], "data_offsets": [0, 16 * 1024**3]}
    start = time.perf_counter()
    refused(craft(header, data), f"tensor {name!r}")
    assert time.perf_counter() - start < 1.0


CASES = {
    "shorter than a length field": (b"\x01\x02", "is not a safetensors file"),
    "header length of 2^60": ((1 << 60).to_bytes(8, "little") + b"{}", "header of"),
    "header longer than the limit": (craft(None, raw=b" " * (MAX_HEADER_BYTES + 8)), "limit"),
    "header longer than the file": (len(b"{}").to_bytes(8, "little") + b"{", "header of 2 bytes"),
    "header not JSON": (craft(None, raw=b"{not json"), "unreadable header"),
    "header not UTF-8": (craft(None, raw=b'{"\xff\xfe": 1}'), "unreadable header"),
    "header a list": (craft([1, 2, 3]), "unreadable header"),
    "header nested 100 000 deep": (craft(None, raw=b"[" * 100_000 + b"]" * 100_000), "unreadable header"),
    "no metadata": (craft({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "metadata"),
    "metadata not strings": (with_header(lambda h: h["__metadata__"].update(num_classes=10)), "metadata"),
    "unknown metadata key": (with_header(lambda h: h["__metadata__"].update(evil="1")), "metadata evil"),
    "input shape of 10^10 pixels": (
        with_header(lambda h: h["__metadata__"].update(input_shape="[1, 100000, 100000]")),
        "made for inputs",
    ),
    "input shape not three numbers": (
        with_header(lambda h: h["__metadata__"].update(input_shape="[1, 8]")),
        "metadata input_shape",
    ),
    "other class count": (with_header(lambda h: h["__metadata__"].update(num_classes="1000")), "1000 classes"),
    "architecture nobody expects": (
        with_header(lambda h: h["__metadata__"].update(architecture="resnet34")),
        "architecture resnet34",
    ),
    "architecture with odd characters": (
        with_header(lambda h: h["__metadata__"].update(architecture="../../etc/passwd")),
        "metadata architecture",
    ),
    "ensemble of a million members": (
        with_header(lambda h: h["__metadata__"].update(architecture="ensemble:digits-cnn-bn", members="1000000")),
        "metadata members",
    ),
    "ensemble larger than the federation": (
        with_header(lambda h: h["__metadata__"].update(architecture="ensemble:digits-cnn-bn", members="5")),
        "up to 4",
    ),
    "ensemble of the student architecture": (
        with_header(lambda h: h["__metadata__"].update(architecture="ensemble:digits-cnn-half-bn", members="2")),
        "an ensemble of 2 digits-cnn-half-bn",
    ),
    "label counts of another length": (
        with_header(lambda h: h["__metadata__"].update(label_counts="[1, 2]")),
        "label_counts has 2 entries",
    ),
    "negative label count nested": (
        with_header(lambda h: h["__metadata__"].update(label_counts="[[1]]")),
        "metadata label_counts",
    ),
    "float64 instead of float32": (
        with_header(lambda h: h[first_tensor(h)].update(dtype="F64")),
        "expected ('F32'",
    ),
    "a tensor missing": (with_header(lambda h: h.pop(first_tensor(h))), "expected ("),
    "an extra tensor": (
        with_header(lambda h: h.update(extra={"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})),
        "tensor 'extra'",
    ),
    "malformed tensor entry": (with_header(lambda h: h[first_tensor(h)].update(shape="big")), "malformed entry"),
    "negative dimension": (with_header(lambda h: h[first_tensor(h)].update(shape=[-1, 3])), "malformed entry"),
}


@pytest.mark.parametrize("blob, match", CASES.values(), ids=CASES.keys())
def test_hostile_header_is_refused(blob, match):
    refused(blob, match)


def test_offsets_that_overlap_or_leave_bytes_out_are_refused():
    header, data = parts(valid())
    names = sorted((k for k in header if k != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])
    first, second = header[names[0]], header[names[1]]
    second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + 1]
    refused(craft(header, data), "offsets")
    header, data = parts(valid())
    refused(craft(header, data + b"\0" * 8), "account for a different size")
    refused(craft(header, data[:-4]), "")


# -- fuzzing ------------------------------------------------------------------------------------
BASE = valid()
BASE_HEADER, BASE_DATA = parts(BASE)


def loads_or_refuses(blob: bytes) -> None:
    try:
        deserialize(blob, sha256(blob), EXPECTED, owner="fuzz")
    except ArtifactError:
        pass  # the only way to fail


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64), st.integers(0, len(BASE) - 1))
def test_fuzz_bytes_spliced_into_a_valid_file(junk, at):
    loads_or_refuses(BASE[:at] + junk + BASE[at + len(junk) :])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(BASE_HEADER)), JSON)
def test_fuzz_header_entries(key, value):
    header = json.loads(json.dumps(BASE_HEADER))
    header[key] = value
    loads_or_refuses(craft(header, BASE_DATA))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(BASE_HEADER["__metadata__"])), JSON)
def test_fuzz_metadata_values(key, value):
    header = json.loads(json.dumps(BASE_HEADER))
    header["__metadata__"][key] = json.dumps(value)
    loads_or_refuses(craft(header, BASE_DATA))
