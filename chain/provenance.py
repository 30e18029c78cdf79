"""Provenance from events alone: what a hash is, who registered it, and a student's lineage.

Works the same on a live chain's events and on an embedded run's export, because every fact the
registry records is also in an event.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chain.identity import KIND_NAMES, KIND_STUDENT
from chain.safejson import bounded_json

URI_SCHEME = "kdledger://"
_URI = re.compile(r"^kdledger://0x([0-9a-f]{64})$")


def store_path(model_hash: bytes) -> str:
    """Where a file lives in a run directory (and in any ArtifactStore under it): store/ab/cd/<hash>.safetensors."""
    h = model_hash.hex()
    return f"store/{h[:2]}/{h[2:4]}/{h}.safetensors"


def uri_of(run_id: bytes) -> str:
    """The on-chain `uri` of every file a run registers: kdledger://0x<run id>, the run directory whose run.json
    holds that run id. Within it a record's file is at store_path(modelHash): the event already carries the
    hash, so the uri does not repeat it (a full path would cost about 2 000 gas more per record)."""
    return f"{URI_SCHEME}0x{run_id.hex()}"


def resolve(uri: str, model_hash: str, roots: Sequence[Path]) -> Path | None:
    """The file of the record (`uri`, `model_hash`) under `roots` (published copies of run directories): at
    store_path(model_hash) under a root whose run.json names the uri's run, or under any root if none does,
    and only if it hashes to `model_hash`; a sealed copy (.enc) is found but not opened. None otherwise."""
    match = _URI.match(uri)  # runs before kdledger:// registered "file:store": any root may hold those
    digest = _norm(model_hash)[2:]
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        return None
    relative, expected = store_path(bytes.fromhex(digest)), digest
    same_run = [r for r in roots if match and _run_id_in(str(r)) == "0x" + match.group(1)]
    for root in same_run or roots:
        for candidate in (Path(root) / relative, Path(root) / (relative + ".enc")):
            if candidate.is_file() and (
                candidate.suffix == ".enc" or hashlib.sha256(candidate.read_bytes()).hexdigest() == expected
            ):
                return candidate
    return None


@functools.lru_cache(maxsize=64)  # read once per root, not once per record of a lineage
def _run_id_in(root: str) -> str | None:
    try:
        run = bounded_json((Path(root) / "run.json").read_bytes(), "run.json")
        return str(run["run_id"]).lower() if isinstance(run, dict) else None
    except (OSError, ValueError, KeyError):
        return None


def _norm(model_hash: str) -> str:
    h = model_hash.lower()
    return h if h.startswith("0x") else "0x" + h


@dataclass
class Registration:
    model_hash: str
    kind: str
    owner: str
    block: int
    tx: str
    run_id: str
    round: int = 0
    uri: str = ""
    method: str | None = None
    config_hash: str | None = None
    sample_count: int | None = None  # a student's synthetic samples
    example_count: int | None = None  # an aggregate's training examples behind its sources
    teachers: list[str] = field(default_factory=list)
    accuracies: list[dict] = field(default_factory=list)  # {node, accuracy_bps, num_examples, block, tx}


def index_events(events: list[dict]) -> dict[str, Registration]:
    """Every registered model by hash, with its attestations attached."""
    models: dict[str, Registration] = {}
    for e in events:
        a = e["args"]
        if e["event"] == "TeacherRegistered":
            models[_norm(a["modelHash"])] = Registration(
                _norm(a["modelHash"]),
                KIND_NAMES.get(a["kind"], str(a["kind"])),
                a["node"],
                e["block"],
                e["tx"],
                a["runId"],
                a["round"],
                a["uri"],
            )
        elif e["event"] == "AggregateRegistered":
            models[_norm(a["modelHash"])] = Registration(
                _norm(a["modelHash"]),
                "aggregate",
                a["coordinator"],
                e["block"],
                e["tx"],
                a["runId"],
                a["round"],
                a["uri"],
                method=a["method"],
                example_count=a.get("exampleCount", a.get("sampleCount")),  # the name before kind 5
                teachers=[_norm(t) for t in a["sourceHashes"]],
            )
        elif e["event"] == "StudentCommitted":
            models[_norm(a["modelHash"])] = Registration(
                _norm(a["modelHash"]),
                KIND_NAMES[KIND_STUDENT],
                a["distiller"],
                e["block"],
                e["tx"],
                a["runId"],
                uri=a["uri"],
                method=a["method"],
                config_hash=a["configHash"],
                sample_count=a["sampleCount"],
                teachers=[_norm(t) for t in a["teacherHashes"]],
            )
    for e in events:
        if e["event"] == "AccuracyAttested":
            a = e["args"]
            model = models.get(_norm(a["modelHash"]))
            if model is not None:
                model.accuracies.append(
                    {
                        "node": a["node"],
                        "accuracy_bps": a["accuracyBps"],
                        "num_examples": a["numExamples"],
                        "block": e["block"],
                        "tx": e["tx"],
                    }
                )
    return models


def find(events: list[dict], model_hash: str) -> Registration | None:
    return index_events(events).get(_norm(model_hash))


def lineage(events: list[dict], model_hash: str, roots: Sequence[Path] = ()) -> dict | None:
    """The tree model -> the models it came from -> ..., each with its registration and accuracies; with
    `roots`, each record's file as its uri resolves there ("file": a path, or None when none matches)."""
    models = index_events(events)

    def tree(h: str, seen: frozenset) -> dict:
        reg = models.get(h)
        if reg is None:
            return {"model_hash": h, "registered": False}
        node = {"model_hash": h, "registered": True, **{k: v for k, v in vars(reg).items() if k != "teachers"}}
        if roots:
            found = resolve(reg.uri, h, roots)
            node["file"] = str(found) if found is not None else None
        if reg.teachers and h not in seen:
            node["teachers"] = [tree(t, seen | {h}) for t in reg.teachers]
        return node

    h = _norm(model_hash)
    return tree(h, frozenset()) if h in models else None
