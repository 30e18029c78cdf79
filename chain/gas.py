"""Measure the gas of every ModelRegistry write, on py-evm and (if running) anvil.

python -m chain.gas [--rpc URL]    prints the markdown table kept in docs/contracts.md
"""

from __future__ import annotations

import argparse
import hashlib

from eth_typing import HexStr

from chain.backends import connect
from chain.identity import KIND_TEACHER, Attestation, Publication, derive_account, sign
from chain.provenance import uri_of
from chain.registry import Registry, fund

URI = uri_of(b"\x11" * 32)  # the length of what kdledger runs register (77 bytes)


def _h(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def measure(rpc_url: str | None = None) -> dict[str, int]:
    w3 = connect(rpc_url)
    admin, relayer, distiller, node = (derive_account(99, n) for n in ("admin", "relayer", "distiller", "node"))
    fund(w3, [admin.address, relayer.address, distiller.address])
    registry, _ = Registry.deploy(w3, admin)
    receipt = w3.eth.get_transaction_receipt(HexStr(_))
    gas = {"deploy": receipt["gasUsed"]}
    for role, who in (("RELAYER", relayer), ("DISTILLER", distiller), ("DATA_NODE", node)):
        tx = registry.grant(role, who.address, admin)
        gas["grantRole"] = w3.eth.get_transaction_receipt(HexStr(tx))["gasUsed"]
    run_id = _h("run")

    def publish(model: bytes) -> int:
        pub = Publication(
            node.address, model, KIND_TEACHER, 0, run_id, URI, registry.nonce(node.address), registry.deadline()
        )
        return registry.register_teacher(pub, sign(node, pub, registry.domain()), relayer)["gasUsed"]

    gas["registerTeacher (node's first)"] = publish(_h("t1"))
    gas["registerTeacher (later)"] = publish(_h("t2"))
    for n in (1, 5):
        teachers = [_h("t1"), _h("t2")] + [_h(f"x{i}") for i in range(max(0, n - 2))]
        for t in teachers[2:]:
            publish(t)
        gas[f"commitStudent ({n} teacher{'s' if n > 1 else ''})"] = registry.commit_student(
            _h(f"s{n}"), run_id, teachers[:n], "softtarget", _h("cfg"), 2000, URI, distiller
        )["gasUsed"]

    gas["registerAggregate (2 sources)"] = registry.register_aggregate(
        _h("agg"), run_id, 1, [_h("t1"), _h("t2")], "FedAvg", 900, URI, relayer
    )["gasUsed"]

    def attest(model: bytes) -> int:
        att = Attestation(node.address, model, run_id, 9123, 134, registry.nonce(node.address), registry.deadline())
        return registry.attest(att, sign(node, att, registry.domain()), relayer, [0])["gasUsed"]  # its teacher 0

    gas["attestAccuracy (model's first)"] = attest(_h("s1"))
    gas["attestAccuracy (later)"] = attest(_h("s5"))
    gas |= measure_batches(registry, admin, relayer, distiller, run_id)
    return gas


def measure_batches(registry: Registry, admin, relayer, distiller, run_id: bytes) -> dict[str, int]:
    """Per record, in batches of 1, 10 and 100 fresh nodes: their grants (one multicall), their first
    teachers (registerTeachers), and their attestations of a student of all of them (attestBatch, a
    one-step path each)."""
    gas = {}
    for n in (1, 10, 100):
        nodes = [derive_account(99, f"batch-{n}-{i}") for i in range(n)]
        receipt = registry.w3.eth.get_transaction_receipt(
            HexStr(registry.grant_many([("DATA_NODE", a.address) for a in nodes], admin, batch_size=n)[0])
        )
        gas[f"grantRole, batch of {n} in a multicall (per grant)"] = receipt["gasUsed"] // n
        deadline, domain = registry.deadline(), registry.domain()
        teachers = [_h(f"batch-{n}-teacher-{i}") for i in range(n)]
        pubs = [Publication(a.address, t, KIND_TEACHER, 0, run_id, URI, 0, deadline) for a, t in zip(nodes, teachers)]
        sigs = [sign(a, p, domain) for a, p in zip(nodes, pubs)]
        gas[f"registerTeachers, batch of {n}, each node's first (per record)"] = (
            registry.register_teachers(pubs, sigs, relayer)["gasUsed"] // n
        )
        student = _h(f"batch-{n}-student")
        registry.commit_student(student, run_id, teachers, "fast", _h("cfg"), 2000, URI, distiller)
        atts = [Attestation(a.address, student, run_id, 9123, 134, 1, deadline) for a in nodes]
        sigs = [sign(a, att, domain) for a, att in zip(nodes, atts)]
        receipt = registry.attest_batch(atts, sigs, [[i] for i in range(n)], relayer)
        gas[f"attestBatch, batch of {n} (per record)"] = receipt["gasUsed"] // n
    gas |= measure_merkle(registry, admin, relayer, distiller, run_id)
    return gas


def measure_merkle(registry: Registry, admin, relayer, distiller, run_id: bytes) -> dict[str, int]:
    """Merkle mode, per record: one root of 1, 10, 100 and 1 000 fresh nodes' signed publications
    (commitPublications), and, for up to 100, their attestations of a student of the root (attestBatchThroughRoots,
    each with its leaf and proof)."""
    import tempfile
    from pathlib import Path

    from chain.merkle import PublicationLeaf, write_proofs

    gas = {}
    deadline, domain = registry.deadline(), registry.domain()
    for n in (1, 10, 100, 1000):
        nodes = [derive_account(99, f"merkle-{n}-{i}") for i in range(n)]
        registry.grant_many([("DATA_NODE", a.address) for a in nodes], admin, batch_size=100)
        pubs = [
            Publication(a.address, _h(f"merkle-{n}-teacher-{i}"), KIND_TEACHER, 0, run_id, URI, 0, deadline)
            for i, a in enumerate(nodes)
        ]
        leaves = [PublicationLeaf(p, sign(a, p, domain)) for a, p in zip(nodes, pubs)]
        with tempfile.TemporaryDirectory() as tmp:
            root, _, proven = write_proofs(Path(tmp), leaves)
        receipt = registry.commit_publications(root, run_id, 0, n, URI, relayer)
        gas[f"commitPublications, root of {n} (per record)"] = receipt["gasUsed"] // n
        if n > 100:
            continue
        student = _h(f"merkle-{n}-student")
        registry.commit_student(student, run_id, [root], "fast", _h("cfg"), 2000, URI, distiller)
        atts = [Attestation(a.address, student, run_id, 9123, 134, 0, deadline) for a in nodes]
        sigs = [sign(a, att, domain) for a, att in zip(nodes, atts)]
        receipt = registry.attest_batch_through_roots(
            atts, sigs, [[0]] * n, [p.leaf for p in proven], [p.proof for p in proven], relayer
        )
        gas[f"attestBatchThroughRoots, batch of {n} (per record)"] = receipt["gasUsed"] // n
        if n == 100:  # half the nodes attest two more students each, in a row: a leaf proven once for both
            more = [_h(f"merkle-{n}-student-{k}") for k in (2, 3)]
            for model in more:
                registry.commit_student(model, run_id, [root], "fast", _h("cfg"), 2000, URI, distiller)
            pairs = [
                (a, p, Attestation(a.address, m, run_id, 9123, 134, 1 + k, deadline))
                for a, p in zip(nodes[:50], proven[:50])
                for k, m in enumerate(more)
            ]
            receipt = registry.attest_batch_through_roots(
                [att for _, _, att in pairs],
                [sign(a, att, domain) for a, _, att in pairs],
                [[0]] * len(pairs),
                [p.leaf for _, p, _ in pairs],
                [p.proof for _, p, _ in pairs],
                relayer,
            )
            name = "attestBatchThroughRoots, batch of 100, two models per node in a row (per record)"
            gas[name] = receipt["gasUsed"] // len(pairs)
    return gas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpc", help="also measure on this JSON-RPC chain (e.g. a devnet)")
    args = parser.parse_args()
    columns = {"py-evm": measure()}
    if args.rpc:
        columns["anvil" if "127.0.0.1" in args.rpc else args.rpc] = measure(args.rpc)
    names = list(next(iter(columns.values())))
    print("| function | " + " | ".join(f"gas ({c})" for c in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{col[name]:,}" for col in columns.values()) + " |")


if __name__ == "__main__":
    main()
