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
