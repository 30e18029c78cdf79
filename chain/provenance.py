"""Provenance from events alone: what a hash is, who registered it, and a student's lineage.

Works the same on a live chain's events and on an embedded run's export, because every fact the
registry records is also in an event. A Merkle root of publications (PublicationsCommitted) names only
its root and count; given the run directories (`roots`), its leaves are read from the run's proofs file,
each proven in the root (and, given the chain's EIP-712 domain, signed by its node) before it is believed.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chain.errors import ArtifactError
from chain.identity import KIND_BATCH, KIND_NAMES, KIND_STUDENT, Domain
from chain.merkle import proofs_path, read_proofs
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
    accuracies: list[dict] = field(default_factory=list)  # {node, accuracy_bps, num_examples, block, tx, run_id}
    leaf_count: int | None = None  # a Merkle root's publications
    merkle_root: str | None = None  # a publication proven in this committed root (block and tx are the root's)


def index_events(
    events: list[dict], roots: Sequence[Path] = (), domain: Domain | None = None
) -> dict[str, Registration]:
    """Every registered model by hash, with its attestations attached; with `roots` (run directories), every
    publication a committed Merkle root holds too, from its run's proofs file (see `expand_merkle_roots`)."""
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
        elif e["event"] == "PublicationsCommitted":
            models[_norm(a["root"])] = Registration(
                _norm(a["root"]),
                KIND_NAMES[KIND_BATCH],
                a["relayer"],
                e["block"],
                e["tx"],
                a["runId"],
                a["round"],
                a["uri"],
                leaf_count=a["count"],
            )
    if roots:
        expand_merkle_roots(models, roots, domain)
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
                        "run_id": a.get("runId", model.run_id),
                    }
                )
    return models


def expand_merkle_roots(models: dict[str, Registration], roots: Sequence[Path], domain: Domain | None) -> None:
    """Each committed Merkle root in `models` whose run directory is among `roots` gets its publications as
    sources, and each publication its own registration (its node, kind and round; the root's block and tx).
    Every leaf of the proofs file is proven in the root, names the root's run and round, and (with `domain`)
    is signed by its node; the file's leaves are exactly the root's tree, as many as the chain says; and no leaf
    names a hash registered otherwise. Anything else is an ArtifactError: a forged, reordered, repeated or
    missing leaf is refused, never skipped. A root whose run directory or proofs file is not among `roots`
    stays unexpanded: its count is known, its publications are not."""
    for reg in [r for r in models.values() if r.kind == KIND_NAMES[KIND_BATCH]]:
        run = run_root(reg.run_id, roots)
        if run is None or not proofs_path(run, bytes.fromhex(reg.model_hash[2:])).is_file():
            continue
        path = proofs_path(run, bytes.fromhex(reg.model_hash[2:]))
        proven = read_proofs(path, bytes.fromhex(reg.model_hash[2:]), domain)
        if len(proven) != reg.leaf_count:
            raise ArtifactError(f"{path}: {len(proven)} leaves, the chain committed {reg.leaf_count}")
        for p in proven:
            pub = p.publication
            if _norm(pub.run_id.hex()) != _norm(reg.run_id) or pub.round != reg.round:
                raise ArtifactError(f"{path}: the leaf of node {pub.node} names another run or round than its root")
            h = _norm(pub.model_hash.hex())
            known = models.get(h)
            if known is not None and (known.owner, known.merkle_root) != (pub.node, reg.model_hash):
                raise ArtifactError(f"{path}: the leaf of node {pub.node} names {h}, registered otherwise")
            reg.teachers.append(h)
            models.setdefault(
                h,
                Registration(
                    h,
                    KIND_NAMES.get(pub.kind, str(pub.kind)),
                    pub.node,
                    reg.block,
                    reg.tx,
                    reg.run_id,
                    pub.round,
                    pub.uri,
                    merkle_root=reg.model_hash,
                ),
            )


def find(
    events: list[dict], model_hash: str, roots: Sequence[Path] = (), domain: Domain | None = None
) -> Registration | None:
    return index_events(events, roots, domain).get(_norm(model_hash))


def lineage(
    events: list[dict],
    model_hash: str,
    roots: Sequence[Path] = (),
    domain: Domain | None = None,
    merkle: bool = True,
) -> dict | None:
    """The tree model -> the models it came from -> ..., each with its registration and accuracies; with
    `roots`, each record's file as its uri resolves there ("file": a path, or None when none matches), and
    (unless not `merkle`) each Merkle root's publications from its proofs file."""
    models = index_events(events, roots if merkle else (), domain)

    def tree(h: str, seen: frozenset) -> dict:
        reg = models.get(h)
        if reg is None:
            return {"model_hash": h, "registered": False}
        node = {"model_hash": h, "registered": True, **{k: v for k, v in vars(reg).items() if k != "teachers"}}
        if roots:
            found = resolve(reg.uri, h, roots)
            node["file"] = str(found) if found is not None else None
        if reg.kind == KIND_NAMES[KIND_BATCH]:
            node.pop("file", None)  # a root names no file: its proofs are in the run's merkle/
        if reg.teachers and h not in seen:
            node["teachers"] = [tree(t, seen | {h}) for t in reg.teachers]
        return node

    h = _norm(model_hash)
    return tree(h, frozenset()) if h in models else None


def run_root(run_id: str, roots: Sequence[Path]) -> Path | None:
    """The run directory among `roots` whose run.json names `run_id` (a record's runId), or None."""
    return next((Path(r) for r in roots if _run_id_in(str(r)) == _norm(run_id)), None)


def used_by(events: list[dict], model_hash: str, roots: Sequence[Path] = (), domain: Domain | None = None) -> list[str]:
    """The models whose lineage holds `model_hash`, directly or through others, in registration order."""
    models = index_events(events, roots, domain)
    h, found = _norm(model_hash), set()
    grew = True
    while grew:  # a few passes: a lineage is a handful of levels deep
        grew = False
        for m, reg in models.items():
            if m not in found and any(t == h or t in found for t in reg.teachers):
                found.add(m)
                grew = True
    return [m for m in models if m in found]


_PUBLISHED = ("teacher", "ebm", "generator")  # what a data node signs; its owner is that node


def lineage_graph(
    events: list[dict],
    model_hash: str,
    limit: int = 60,
    roots: Sequence[Path] = (),
    domain: Domain | None = None,
) -> dict | None:
    """A model's lineage as a layered graph for drawing: the model in layer 0, what it came from in the layers
    after (a record sits one layer past the deepest model that names it), and the data nodes that published
    the teachers, EBMs and generators in the last layer. Nodes: {id, type: model|data-node, layer, kind, owner,
    registered}; edges: {source, target}, the source flowing into the target. A layer of more than `limit`
    nodes keeps its first `limit` and counts the rest in `hidden` (a 1 000-node federation stays drawable).
    None if the model is not registered. `roots` and `domain` as for index_events."""
    models = index_events(events, roots, domain)
    root = _norm(model_hash)
    if root not in models:
        return None
    layer = {root: 0}
    order = [root]
    frontier = [root]
    while frontier:  # longest path from the root, by relaxation; lineages are acyclic (sources exist first)
        nxt = []
        for h in frontier:
            reg = models.get(h)
            for t in reg.teachers if reg else []:
                if t not in layer:
                    order.append(t)
                if layer.get(t, -1) < layer[h] + 1:
                    layer[t] = layer[h] + 1
                    nxt.append(t)
        frontier = nxt
    last = max(layer.values()) + 1
    nodes: list[dict] = []
    edges: list[dict] = []
    for h in order:
        reg = models.get(h)
        nodes.append(
            {
                "id": h,
                "type": "model",
                "layer": layer[h],
                "registered": reg is not None,
                "kind": reg.kind if reg else None,
                "owner": reg.owner if reg else None,
                "method": reg.method if reg else None,
            }
        )
        for t in reg.teachers if reg else []:
            edges.append({"source": t, "target": h})
    data_nodes: list[str] = []
    for h in order:
        reg = models.get(h)
        if reg is not None and reg.kind in _PUBLISHED:
            if reg.owner not in data_nodes:
                data_nodes.append(reg.owner)
            edges.append({"source": reg.owner, "target": h})
    nodes += [
        {"id": a, "type": "data-node", "layer": last, "registered": True, "kind": "data node"} for a in data_nodes
    ]
    kept: list[dict] = []
    shown: dict[int, int] = {}
    hidden: dict[int, int] = {}
    for n in nodes:
        at = int(n["layer"])
        if shown.get(at, 0) < limit:
            kept.append(n)
            shown[at] = shown.get(at, 0) + 1
        else:
            hidden[at] = hidden.get(at, 0) + 1
    ids = {n["id"] for n in kept}
    edges = [e for e in edges if e["source"] in ids and e["target"] in ids]
    return {"root": root, "nodes": kept, "edges": edges, "hidden": hidden}


def accuracy_tables(events: list[dict], roots: Sequence[Path] = (), domain: Domain | None = None) -> list[dict]:
    """What each data node attested, one table per run: {run_id, nodes, columns, cells}. A column is a model
    the run's nodes measured, named from the chain alone: "own teacher" (each node's own teacher, one model per
    row), an aggregate by its method ("ensemble", "FedAvg (one-shot)"; with its round when several share a
    method), "student"; cells[node][column key] = {model, accuracy_bps, num_examples, block, tx}. Each column
    also carries the mean of its cells weighted by their examples (`weighted_mean_bps`)."""
    models = index_events(events, roots, domain)
    runs: dict[str, list[tuple[Registration, dict]]] = {}
    for reg in models.values():
        for acc in reg.accuracies:
            runs.setdefault(_norm(acc["run_id"]), []).append((reg, acc))
    tables = []
    for run_id, pairs in runs.items():
        publishers = [r.owner for r in models.values() if r.kind in _PUBLISHED and _norm(r.run_id) == run_id]
        attesters = [a["node"] for _, a in pairs]
        nodes = list(dict.fromkeys(publishers + attesters))
        nodes = [n for n in nodes if n in attesters]

        def rank(reg: Registration) -> int:  # own models first, then aggregates, then students
            return {"student": 2, "aggregate": 1}.get(reg.kind, 0)

        columns: dict[str, dict] = {}
        labels: dict[str, list[str]] = {}
        cells: dict[str, dict] = {n: {} for n in nodes}
        for reg, acc in sorted(pairs, key=lambda p: (rank(p[0]), p[0].block)):
            model: str | None
            if reg.kind in _PUBLISHED and reg.owner == acc["node"]:
                key, label, model = f"own-{reg.kind}", f"own {reg.kind}", None
            else:
                label = (reg.method if reg.kind == "aggregate" else None) or reg.kind
                key, model = reg.model_hash, reg.model_hash
            if key not in columns:
                columns[key] = {"key": key, "label": label, "model": model, "kind": reg.kind}
                labels.setdefault(columns[key]["label"], []).append(key)
            cells[acc["node"]][key] = {"model": reg.model_hash, **{k: acc[k] for k in acc if k != "node"}}
        for label, keys in labels.items():  # two models of one name: tell them apart
            if len(keys) > 1:
                for k in keys:
                    reg = models[k]
                    tell = f"round {reg.round}" if reg.kind == "aggregate" else f"{k[:8]}…"
                    columns[k]["label"] = f"{label} {tell}"
        for key, col in columns.items():
            got = [cells[n][key] for n in nodes if key in cells[n]]
            total = sum(c["num_examples"] for c in got)
            col["weighted_mean_bps"] = (
                round(sum(c["accuracy_bps"] * c["num_examples"] for c in got) / total) if total else None
            )
        tables.append({"run_id": run_id, "nodes": nodes, "columns": list(columns.values()), "cells": cells})
    return tables
