"""Weights as files: deterministic safetensors, SHA-256 content ids, a store keyed by hash.

Weights from another party are never unpickled: safetensors only, and a file's hash is checked
against the one on-chain before a byte of it is parsed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load as st_load

from node.models import Classifier, Ensemble, build_model


class TamperedArtifact(RuntimeError):
    pass


DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on the tensors and metadata.

    The library's writer orders the JSON header through a hash map seeded per process, so the same
    weights give different bytes (and hashes) in different processes. The format is simple enough
    to write canonically: 8-byte little-endian header length, the JSON header with sorted keys and
    no spaces, padded with spaces to 8 bytes, then the tensors' bytes in name order.
    """
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def serialize(model: torch.nn.Module, architecture: str, input_shape, num_classes: int) -> bytes:
    """Same weights, same bytes, in any process. An Ensemble of `architecture` members is one file too."""
    meta = {"architecture": architecture, "input_shape": json.dumps(list(input_shape)), "num_classes": str(num_classes)}
    if isinstance(model, Ensemble):
        meta |= {"architecture": f"ensemble:{architecture}", "members": str(len(model.members))}
    return canonical_safetensors(model.state_dict(), meta)


def average_weights(models: list[torch.nn.Module], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of several models' parameters and BN statistics (FedAvg); counters from the first."""
    total = sum(weights)
    states = [m.state_dict() for m in models]
    averaged = {}
    for name, first in states[0].items():
        if first.is_floating_point():
            averaged[name] = sum(w / total * s[name] for w, s in zip(weights, states))
        else:
            averaged[name] = first.clone()
    return averaged


def sha256(blob: bytes) -> bytes:
    return hashlib.sha256(blob).digest()


def read_metadata(blob: bytes) -> dict:
    """The safetensors header's metadata, read as JSON without touching tensor data."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    return header.get("__metadata__", {})


def deserialize(blob: bytes, expected_hash: bytes, *, owner: str = "?") -> Classifier:
    """Rebuild a model from verified bytes; refuse them if they are not what the chain says."""
    actual = sha256(blob)
    if actual != expected_hash:
        raise TamperedArtifact(
            f"artifact from {owner} does not match its on-chain hash 0x{expected_hash.hex()} (file hashes to 0x{actual.hex()})"
        )
    meta = read_metadata(blob)
    shape, classes, arch = tuple(json.loads(meta["input_shape"])), int(meta["num_classes"]), meta["architecture"]
    if arch.startswith("ensemble:"):
        model = Ensemble([build_model(arch.split(":", 1)[1], shape, classes) for _ in range(int(meta["members"]))])
    else:
        model = build_model(arch, shape, classes)
    model.load_state_dict(st_load(blob), strict=True)
    return model.eval()


class ArtifactStore:
    """A directory of weights files keyed by their SHA-256: store/ab/cd/<hash>.safetensors."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, model_hash: bytes) -> Path:
        h = model_hash.hex()
        return self.root / h[:2] / h[2:4] / f"{h}.safetensors"

    def put(self, blob: bytes) -> bytes:
        model_hash = sha256(blob)
        path = self.path(model_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(blob)
            tmp.replace(path)
        return model_hash

    def get(self, model_hash: bytes, *, owner: str = "?") -> bytes:
        path = self.path(model_hash)
        if not path.exists():
            raise TamperedArtifact(f"artifact 0x{model_hash.hex()} from {owner} is missing from the store at {path}")
        return path.read_bytes()

    def load(self, model_hash: bytes, *, owner: str = "?") -> Classifier:
        return deserialize(self.get(model_hash, owner=owner), model_hash, owner=owner)
