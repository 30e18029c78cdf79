"""Every message between the coordinator (node/server_app.py) and a data node (node/client_app.py).

A Flower message carries a RecordDict; below, each record it may hold, under the key it travels by.

coordinator -> node (every message type)
    "task"          Task          the run's settings, the chain's domain, and this node's nonce
    TRAIN           "arrays"      ArrayRecord: the model to start from
                    "config"      ConfigRecord: what the Flower strategy adds ("server-round", ...)
    EVALUATE        "models"      ArrayRecord: model hash (hex) -> the file's bytes (uint8)
node -> coordinator
    QUERY reply     "identity"    Identity      who the node is and how much data it holds
    TRAIN reply     "arrays"      ArrayRecord: the teacher's weights, or {"sealed": ciphertext}
                    "<kind>"      ArrayRecord per other kind the method asked of nodes (e.g. "ebm")
                    "publication" Publications  one signature and one bundle per published file, teacher
                                                first, the node's signing key (and a DP teacher's privacy
                                                claim, which its file holds)
                    "metrics"     MetricRecord: "train-loss", "num-examples" (what FedAvg weighs by)
    EVALUATE reply  "attestations" Measurements what the node measured, and signed

Each typed record is a frozen dataclass: `to_record()` on the sending side, `read(content, sender)`
on the receiving side. A field travels under its name with '-' for '_'; a configuration section as
its JSON. A reply that lacks a record or a key, or carries a value of the wrong type, is a
`MessageError` that names the sender and the key.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from pydantic import BaseModel, ValidationError

from chain.errors import KdledgerError
from chain.identity import Domain
from node.artifacts import PrivacySpent
from node.config import DataConfig, DistillConfig, FaultConfig, PrivacyConfig, TeacherConfig

ARRAYS = "arrays"  # the model a TRAIN message starts from; a TRAIN reply's teacher
MODELS = "models"  # the files an EVALUATE message asks a node to measure
METRICS = "metrics"  # a TRAIN reply's MetricRecord
NUM_EXAMPLES = "num-examples"  # FedAvg's weight, in METRICS
TRAIN_LOSS = "train-loss"
SEALED = "sealed"  # the one array of a sealed file


class MessageError(KdledgerError):
    """A message without a record or key it must carry, or with a value of the wrong type."""


R = TypeVar("R", bound="Record")


@dataclass(frozen=True)
class Record:
    """One ConfigRecord of a message, typed; subclasses name the key it travels under."""

    key: ClassVar[str]

    def to_record(self) -> ConfigRecord:
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name.replace("_", "-")] = value.model_dump_json() if isinstance(value, BaseModel) else value
        return ConfigRecord(values)

    @classmethod
    def read(cls: type[R], content: RecordDict, sender: str) -> R:
        record = content.get(cls.key) if cls.key in content else None
        if not isinstance(record, ConfigRecord):
            raise MessageError(f"{sender}: the message carries no {cls.key!r} config record")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in record:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise MessageError(f"{sender}: {cls.key}.{key} is missing")
                continue
            values[f.name] = _typed(record[key], hints[f.name], f"{sender}: {cls.key}.{key}")
        read = cls(**values)
        read.check(sender)
        return read

    def check(self, sender: str) -> None:
        """What a well-typed record must also satisfy to be read (lists that go together, ...)."""

    def put(self, content: RecordDict) -> RecordDict:
        content[self.key] = self.to_record()
        return content


def _typed(value, hint, where: str):
    """`value` as `hint` says (bool is not an int; an int is a float), or a MessageError naming `where`."""
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise MessageError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_typed(v, item, where) for v in value]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"{where}: unions are not part of the protocol")
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        if not isinstance(value, str):
            raise MessageError(f"{where}: expected a JSON document, got {type(value).__name__}")
        try:
            return hint.model_validate_json(value)
        except ValidationError as exc:
            raise MessageError(f"{where}: {exc.errors()[0]['msg']}") from None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if hint is float else None
    if ok is None:
        ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if not ok:
        raise MessageError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    return float(value) if hint is float else value


@dataclass(frozen=True)
class Task(Record):
    """What every message from the coordinator carries: the run's settings and the chain's domain; in TRAIN
    and EVALUATE also the node's next nonce on the registry and the deadline of what it signs."""

    key: ClassVar[str] = "task"
    seed: int
    data: DataConfig
    teacher: TeacherConfig
    distill: DistillConfig
    faults: FaultConfig
    keys_dir: str  # where a simulated node finds its key file (a deployed node has its own)
    run_id: bytes  # also names every file: chain.provenance.uri_of(run_id) is its on-chain uri
    seal_to: bytes  # the distiller's X25519 public key when files travel sealed, else empty
    chain_id: int
    contract: str
    rpc_url: str = ""  # the chain's JSON-RPC endpoint; empty for the embedded chain, which nodes cannot reach
    nonce: int = 0
    deadline: int = 0
    round: int = 0  # 0: the one-shot round; fedavg rounds count from 1
    attest: list[bytes] = field(default_factory=list)  # EVALUATE: the hashes the coordinator will relay
    privacy: PrivacyConfig = PrivacyConfig()  # TRAIN: DP-SGD for the teacher when epsilon is set

    def domain(self) -> Domain:
        return Domain(chain_id=self.chain_id, contract=self.contract)


@dataclass(frozen=True)
class Identity(Record):
    """A QUERY reply: the node's address and the sizes of its private splits."""

    key: ClassVar[str] = "identity"
    address: str
    partition_id: int
    num_train: int
    num_test: int
    label_histogram: list[int]


@dataclass(frozen=True)
class Publications(Record):
    """A TRAIN reply's signatures: for each file, in order from the task's nonce, its kind and hash, and its
    OpenSSF model-signing bundle by the node's signing key (PEM; its fingerprint is in every file's metadata)."""

    key: ClassVar[str] = "publication"
    address: str
    kinds: list[str]
    model_hashes: list[bytes]
    signatures: list[bytes]
    signing_key: str
    bundles: list[str]  # Sigstore bundles are JSON text
    privacy: str = ""  # a DP teacher's PrivacySpent (JSON) as its file's metadata holds it; empty: no DP

    def check(self, sender: str) -> None:
        if not len(self.kinds) == len(self.model_hashes) == len(self.signatures) == len(self.bundles):
            raise MessageError(f"{sender}: publication lists of different lengths")

    def privacy_spent(self, sender: str) -> PrivacySpent | None:
        """The teacher's privacy claim, which the coordinator needs to rebuild the file the node signed."""
        try:
            return PrivacySpent.model_validate_json(self.privacy) if self.privacy else None
        except ValidationError as exc:
            raise MessageError(f"{sender}: {self.key}.privacy: {exc.errors()[0]['msg']}") from None


@dataclass(frozen=True)
class Measurements(Record):
    """An EVALUATE reply: every model's accuracy on the node's test split, and signatures over those it
    was asked to attest (in order from `nonce`)."""

    key: ClassVar[str] = "attestations"
    address: str
    model_hashes: list[bytes]
    accuracy_bps: list[int]
    num_examples: int
    signed_hashes: list[bytes]
    signatures: list[bytes]
    nonce: int

    def check(self, sender: str) -> None:
        if len(self.model_hashes) != len(self.accuracy_bps) or len(self.signed_hashes) != len(self.signatures):
            raise MessageError(f"{sender}: attestation lists of different lengths")
        if not set(self.signed_hashes) <= set(self.model_hashes):
            raise MessageError(f"{sender}: signed a model it did not measure")


def train_metrics(loss: float, examples: int) -> MetricRecord:
    return MetricRecord({TRAIN_LOSS: float(loss), NUM_EXAMPLES: int(examples)})


def blob_to_array(blob: bytes) -> Array:
    """A file's bytes as one uint8 array, as files travel in an ArrayRecord."""
    return Array(np.frombuffer(blob, dtype=np.uint8))


def array_to_blob(array: Array) -> bytes:
    return array.numpy().tobytes()


def published_arrays(content: RecordDict, kind: str, sender: str) -> ArrayRecord:
    """The weights a TRAIN reply sent for `kind` (the teacher's under "arrays")."""
    key = ARRAYS if kind == "teacher" else kind
    record = content.get(key) if key in content else None
    if not isinstance(record, ArrayRecord):
        raise MessageError(f"{sender}: the reply carries no {key!r} array record for its {kind}")
    return record


def sealed_blob(arrays: ArrayRecord) -> bytes | None:
    """The ciphertext of a sealed file, or None when the arrays are plain weights."""
    return array_to_blob(arrays[SEALED]) if SEALED in arrays else None


_FLOWER_WRAPPING = re.compile(r"^<class '[\w.]+'>:<'|'>$")


def remote_reason(reason: str | None, limit: int = 300) -> str:
    """One line from the reason Flower gives for a node's error reply: the node's own message, without the
    wrappers Flower adds (`<class '...ClientAppException'>:<'\\nException ClientAppException occurred.
    Message: ...'>`) and bounded, since a node chooses what it says."""
    text = _FLOWER_WRAPPING.sub("", (reason or "").strip()).strip()
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else "an error with no reason"
    return line if len(line) <= limit else line[: limit - 1] + "…"
