"""Provenance from events alone: what a hash is, who registered it, and a student's lineage.

Works the same on a live chain's events and on an embedded run's export, because every fact the
registry records is also in an event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chain.identity import KIND_NAMES, KIND_STUDENT


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
    sample_count: int | None = None
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
                sample_count=a["sampleCount"],
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


def lineage(events: list[dict], model_hash: str) -> dict | None:
    """The tree model -> the models it came from -> ..., each with its registration and accuracies."""
    models = index_events(events)

    def tree(h: str, seen: frozenset) -> dict:
        reg = models.get(h)
        if reg is None:
            return {"model_hash": h, "registered": False}
        node = {"model_hash": h, "registered": True, **{k: v for k, v in vars(reg).items() if k != "teachers"}}
        if reg.teachers and h not in seen:
            node["teachers"] = [tree(t, seen | {h}) for t in reg.teachers]
        return node

    h = _norm(model_hash)
    return tree(h, frozenset()) if h in models else None
