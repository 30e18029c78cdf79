"""Weights as files: deterministic safetensors, SHA-256 content ids, a store keyed by hash.

Weights from another party are never unpickled: safetensors only, and a file's hash is checked
against the one on-chain before a byte of it is parsed. At rest, a node's files can be sealed for
the distiller (X25519 key agreement, HKDF-SHA256, AES-256-GCM); the on-chain hash is of the
plaintext: decrypt, then verify, then load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load as st_load

from chain.errors import ArtifactError
from chain.identity import write_private
from chain.safejson import bounded_json
from node.models import Ensemble, Teacher, build_model


class TamperedArtifact(ArtifactError):
    pass


# -- sealing: artifacts encrypted at rest for the distiller ------------------------------------
SEAL_MAGIC = b"KDLSEAL1"
SEAL_INFO = b"kdledger artifact seal v1"


def new_seal_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _seal_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=SEAL_INFO).derive(shared)


def seal(blob: bytes, recipient_public: bytes, model_hash: bytes) -> bytes:
    """Encrypt a weights file for one recipient: ephemeral X25519, HKDF-SHA256, AES-256-GCM.

    The model hash is the associated data, so a sealed file cannot be passed off under another hash.
    """
    ephemeral = X25519PrivateKey.generate()
    eph_public = public_bytes(ephemeral)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    nonce = os.urandom(12)
    ciphertext = AESGCM(_seal_key(shared, eph_public, recipient_public)).encrypt(nonce, blob, model_hash)
    return SEAL_MAGIC + eph_public + nonce + ciphertext


def unseal(sealed: bytes, recipient: X25519PrivateKey, model_hash: bytes, *, owner: str = "?") -> bytes:
    if not sealed.startswith(SEAL_MAGIC) or len(sealed) < len(SEAL_MAGIC) + 32 + 12 + 16:
        raise TamperedArtifact(f"sealed artifact 0x{model_hash.hex()} from {owner} is not a kdledger seal")
    eph_public = sealed[8:40]
    nonce, ciphertext = sealed[40:52], sealed[52:]
    shared = recipient.exchange(X25519PublicKey.from_public_bytes(eph_public))
    try:
        return AESGCM(_seal_key(shared, eph_public, public_bytes(recipient))).decrypt(nonce, ciphertext, model_hash)
    except InvalidTag:
        raise TamperedArtifact(
            f"sealed artifact 0x{model_hash.hex()} from {owner} fails authentication (tampered, or not sealed for this "
            "distiller)"
        ) from None


def save_seal_key(key: X25519PrivateKey, path: Path) -> None:
    write_private(path, key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))


def load_seal_key(path: Path) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(Path(path).read_bytes())


DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


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


class PrivacySpent(BaseModel):
    """The differential privacy a teacher's training spent, as its node's accountant measured it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epsilon: float = Field(gt=0, allow_inf_nan=False)
    delta: float = Field(gt=0, lt=1)
    accountant: str = Field(max_length=16, pattern=r"^[a-z]+$")


def serialize(
    model: torch.nn.Module,
    architecture: str,
    input_shape,
    num_classes: int,
    *,
    label_counts: list[int] | None = None,
    signing_key: str | None = None,
    privacy: PrivacySpent | None = None,
) -> bytes:
    """Same weights, same bytes, in any process. An Ensemble of `architecture` members is one file too.

    A teacher's file can carry the class histogram of the data it was trained on: inside the file,
    it is covered by the hash its node signs, so the distiller can weigh the teacher per class by
    what it saw without trusting anyone's word for it. Likewise a DP teacher's spent (epsilon, delta): the
    node's signature over the file's hash covers its privacy claim.

    `signing_key`: the SHA-256 (hex) of the DER SubjectPublicKeyInfo of the key that signs the file's OpenSSF
    model-signing bundle (node/signing.py); inside the file, the on-chain hash binds that key to its registrant.
    """
    meta = {"architecture": architecture, "input_shape": json.dumps(list(input_shape)), "num_classes": str(num_classes)}
    if label_counts is not None:
        meta["label_counts"] = json.dumps([int(c) for c in label_counts])
    if privacy is not None:
        meta["privacy"] = privacy.model_dump_json()
    if signing_key is not None:
        meta["signing_key_sha256"] = signing_key
    if isinstance(model, Ensemble):
        meta |= {"architecture": f"ensemble:{architecture}", "members": str(len(model.members))}
    return canonical_safetensors(model.state_dict(), meta)


def average_weights(models: Sequence[torch.nn.Module], weights: list[float]) -> dict[str, torch.Tensor]:
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


JSON_METADATA = ("input_shape", "label_counts", "privacy")  # metadata values that are JSON documents
MAX_HEADER_BYTES = 1 << 20  # a header lists names, dtypes, shapes: ours are a few kB, even for a ResNet ensemble


class Metadata(BaseModel):
    """A weights file's `__metadata__`, as serialize() writes it; JSON strings inside are decoded."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    architecture: str = Field(max_length=96, pattern=r"^(ensemble:)?[a-z0-9][a-z0-9-]*$")
    input_shape: tuple[int, int, int]
    num_classes: int = Field(ge=1, le=100_000)
    members: int | None = Field(None, ge=1, le=10_000)
    label_counts: list[int] | None = Field(None, max_length=100_000)
    signing_key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # node/signing.py
    privacy: PrivacySpent | None = None


@dataclass(frozen=True)
class Expected:
    """What a file must be before any of its tensors is allocated: one of `architectures` (or an ensemble of
    the first, with up to `max_members` members) for this input shape and number of classes."""

    architectures: tuple[str, ...]
    input_shape: tuple[int, ...]
    num_classes: int
    max_members: int = 0


def read_header(blob: bytes, *, owner: str = "?") -> tuple[Metadata, dict[str, dict]]:
    """The file's metadata and tensor table, parsed within fixed bounds and checked for form only."""
    where = f"artifact from {owner}"
    if len(blob) < 8:
        raise ArtifactError(f"{where}: {len(blob)} bytes is not a safetensors file")
    size = int.from_bytes(blob[:8], "little")
    if size > MAX_HEADER_BYTES or 8 + size > len(blob):
        raise ArtifactError(f"{where}: header of {size} bytes (limit {MAX_HEADER_BYTES}, file {len(blob)} bytes)")
    try:
        header = bounded_json(blob[8 : 8 + size], "header")
        raw = header.pop("__metadata__") if isinstance(header, dict) else None
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise ValueError("no __metadata__ of strings")
        decoded = {k: bounded_json(v, k) if k in JSON_METADATA else v for k, v in raw.items()}
        meta = Metadata.model_validate(decoded)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        raise ArtifactError(f"{where}: metadata {field}: {error['msg']}") from None
    except (ValueError, UnicodeDecodeError, RecursionError, KeyError, AttributeError) as exc:
        raise ArtifactError(f"{where}: unreadable header ({type(exc).__name__}: {str(exc)[:80]})") from None
    for name, entry in header.items():
        if not (
            isinstance(entry, dict)
            and set(entry) == {"dtype", "shape", "data_offsets"}
            and isinstance(entry["shape"], list)
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            and isinstance(entry["data_offsets"], list)
            and len(entry["data_offsets"]) == 2
            and all(isinstance(o, int) for o in entry["data_offsets"])
        ):
            raise ArtifactError(f"{where}: malformed entry for tensor {name[:80]!r}")
    return meta, header


def _expected_tensors(meta: Metadata, expected: Expected, where: str) -> tuple[list[str], dict[str, tuple]]:
    """The architecture to build and the (dtype, shape) of every tensor it holds, from a model on the meta
    device (shapes only, no memory), after the metadata is checked against what the caller expects."""
    if tuple(meta.input_shape) != tuple(expected.input_shape) or meta.num_classes != expected.num_classes:
        raise ArtifactError(
            f"{where}: made for inputs {list(meta.input_shape)} and {meta.num_classes} classes, "
            f"expected {list(expected.input_shape)} and {expected.num_classes}"
        )
    if meta.label_counts is not None and len(meta.label_counts) != meta.num_classes:
        raise ArtifactError(
            f"{where}: label_counts has {len(meta.label_counts)} entries for {meta.num_classes} classes"
        )
    ensemble = meta.architecture.startswith("ensemble:")
    arch = meta.architecture.removeprefix("ensemble:")
    members = meta.members or 0
    if ensemble and (arch != expected.architectures[0] or not 1 <= members <= expected.max_members):
        raise ArtifactError(
            f"{where}: an ensemble of {members} {arch}, expected up to {expected.max_members} "
            f"{expected.architectures[0]}"
        )
    if not ensemble and (arch not in expected.architectures or meta.members is not None):
        raise ArtifactError(f"{where}: architecture {arch}, expected {' or '.join(expected.architectures)}")
    with torch.device("meta"):
        state = build_model(arch, meta.input_shape, meta.num_classes).state_dict()
    one = {name: (DTYPES[t.dtype], list(t.shape)) for name, t in state.items()}
    if not ensemble:
        return [arch], one
    tensors = {f"members.{i}.{name}": spec for i in range(members) for name, spec in one.items()}
    tensors["weights"] = ("F32", [members, meta.num_classes])
    return [arch] * members, tensors


def deserialize(blob: bytes, expected_hash: bytes, expected: Expected, *, owner: str = "?") -> Teacher:
    """Rebuild a model from verified bytes; refuse them if they are not what the chain says (the hash) or not
    what the caller expects (architecture, shapes, dtypes), before allocating anything the file asks for."""
    actual = sha256(blob)
    if actual != expected_hash:
        raise TamperedArtifact(
            f"artifact from {owner} does not match its on-chain hash 0x{expected_hash.hex()} "
            f"(file hashes to 0x{actual.hex()})"
        )
    where = f"artifact 0x{expected_hash.hex()[:16]}… from {owner}"
    meta, header = read_header(blob, owner=owner)
    archs, wanted = _expected_tensors(meta, expected, where)
    found = {name: (entry["dtype"], entry["shape"]) for name, entry in header.items()}
    if found != wanted:
        bad = next((n for n in sorted(set(found) | set(wanted)) if found.get(n) != wanted.get(n)), "?")
        raise ArtifactError(f"{where}: tensor {bad[:80]!r} is {found.get(bad)}, expected {wanted.get(bad)}")
    end = 0
    for name in sorted(header, key=lambda n: header[n]["data_offsets"][0]):
        start, stop = header[name]["data_offsets"]
        dtype, shape = wanted[name]
        if start != end or stop - start != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise ArtifactError(f"{where}: tensor {name!r} has offsets {start}..{stop}")
        end = stop
    if 8 + int.from_bytes(blob[:8], "little") + end != len(blob):
        raise ArtifactError(f"{where}: {len(blob)} bytes, the tensors account for a different size")
    model: Teacher
    if meta.architecture.startswith("ensemble:"):
        members = [build_model(a, meta.input_shape, meta.num_classes) for a in archs]
        model = Ensemble(members, num_classes=meta.num_classes)
    else:
        model = build_model(archs[0], meta.input_shape, meta.num_classes)
    model.load_state_dict(st_load(blob), strict=True)
    if meta.label_counts is not None:
        model.label_counts = list(meta.label_counts)
    return model.eval()


class ArtifactStore:
    """A directory of weights files keyed by their SHA-256: store/ab/cd/<hash>.safetensors[.enc].

    A sealed file (`.enc`) is opened with `seal_key`, the distiller's X25519 key; its plaintext's hash
    is then checked like any other file's before it is parsed.
    """

    def __init__(self, root: Path, seal_key: X25519PrivateKey | None = None):
        self.root, self.seal_key = Path(root), seal_key

    def path(self, model_hash: bytes, sealed: bool = False) -> Path:
        h = model_hash.hex()
        return self.root / h[:2] / h[2:4] / (f"{h}.safetensors" + (".enc" if sealed else ""))

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)

    def put(self, blob: bytes) -> bytes:
        model_hash = sha256(blob)
        self._write(self.path(model_hash), blob)
        return model_hash

    def put_sealed(self, model_hash: bytes, sealed: bytes) -> None:
        """Keep a sealed file under the hash its owner signed (only the distiller can check it)."""
        self._write(self.path(model_hash, sealed=True), sealed)

    def get(self, model_hash: bytes, *, owner: str = "?") -> bytes:
        path = self.path(model_hash)
        if path.exists():
            return path.read_bytes()
        sealed = self.path(model_hash, sealed=True)
        if sealed.exists():
            if self.seal_key is None:
                raise TamperedArtifact(
                    f"artifact 0x{model_hash.hex()} from {owner} is sealed and this store has no key"
                )
            return unseal(sealed.read_bytes(), self.seal_key, model_hash, owner=owner)
        raise TamperedArtifact(f"artifact 0x{model_hash.hex()} from {owner} is missing from the store at {path}")

    def load(self, model_hash: bytes, expected: Expected, *, owner: str = "?") -> Teacher:
        return deserialize(self.get(model_hash, owner=owner), model_hash, expected, owner=owner)
