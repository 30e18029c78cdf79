"""Check a kdledger student from the chain alone: web3.py and the committed ABI, no kdledger code.

    python examples/audit_student.py RPC_URL REGISTRY_ADDRESS 0xSTUDENT_HASH [PUBLISHED_RUN_DIR]

Prints the student's lineage down to the data nodes, every attested accuracy, and, given the
published run directory, checks each file's SHA-256 and that config.json is the configHash on-chain.
Exits 1 if anything does not match. docs/auditing.md walks through it.
"""

import hashlib
import json
import sys
from pathlib import Path

from web3 import Web3

rpc, address, student = sys.argv[1:4]
run_dir = Path(sys.argv[4]) if len(sys.argv) > 4 else None
abi = json.loads((Path(__file__).parents[1] / "contracts/build/ModelRegistry.json").read_text())["abi"]
registry = Web3(Web3.HTTPProvider(rpc)).eth.contract(address=Web3.to_checksum_address(address), abi=abi)
KINDS = {1: "teacher", 2: "ebm", 3: "generator", 4: "student", 5: "aggregate"}
problems = []


def audit(model_hash: bytes) -> dict:
    owner, kind, round_, block = registry.functions.modelOf(model_hash).call()
    if kind == 0:
        problems.append(f"0x{model_hash.hex()} is not registered")
        return {"model": "0x" + model_hash.hex(), "registered": False}
    config_hash, samples, method, sources = registry.functions.lineageOf(model_hash).call()
    record = {"model": "0x" + model_hash.hex(), "kind": KINDS[kind], "owner": owner, "block": block}
    if sources:
        record |= {"method": method, "count": samples, "sources": [audit(s) for s in sources]}
    if kind == 4:
        record["config_hash"] = "0x" + config_hash.hex()
    record["accuracies"] = {
        node: registry.functions.accuracyOf(model_hash, node).call()[0] / 100
        for node in registry.functions.attestersOf(model_hash).call()
    }
    if run_dir is not None:  # the file, where its uri says: store/ab/cd/<hash>.safetensors
        h = model_hash.hex()
        path = run_dir / "store" / h[:2] / h[2:4] / f"{h}.safetensors"
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != h:
            problems.append(f"{path}: missing or not the registered bytes")
    return record


tree = audit(bytes.fromhex(student.removeprefix("0x")))
if run_dir is not None and tree.get("config_hash"):
    if "0x" + hashlib.sha256((run_dir / "config.json").read_bytes()).hexdigest() != tree["config_hash"]:
        problems.append("config.json is not the configuration the chain vouches for")
print(json.dumps({"lineage": tree, "problems": problems}, indent=1))
sys.exit(1 if problems else 0)
