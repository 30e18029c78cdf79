"""Read ModelRegistry's events back, decoded, from a live chain or a run's export."""

from __future__ import annotations

import json
from pathlib import Path

from eth_utils import event_abi_to_log_topic
from web3 import Web3
from web3._utils.events import get_event_data

from chain.compiler import load_artifact
from chain.errors import ConfigError
from chain.safejson import bounded_json


def _jsonable(value):
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def fetch_events(w3: Web3, address: str, from_block: int = 0, to_block: int | None = None) -> list[dict]:
    """Every event `address` emitted in the block range, decoded with the committed ABI."""
    latest = w3.eth.block_number if to_block is None else to_block
    if from_block > latest:  # nothing was written (e.g. a rerun whose records all existed)
        return []
    abi = load_artifact()["abi"]
    by_topic = {event_abi_to_log_topic(e): e for e in abi if e["type"] == "event"}
    logs = w3.eth.get_logs({"address": Web3.to_checksum_address(address), "fromBlock": from_block, "toBlock": latest})
    events = []
    for log in logs:
        event_abi = by_topic.get(bytes(log["topics"][0]))
        if event_abi is None:
            continue
        decoded = get_event_data(w3.codec, event_abi, log)
        events.append(
            {
                "event": decoded["event"],
                "block": decoded["blockNumber"],
                "tx": decoded["transactionHash"].to_0x_hex(),
                "log_index": decoded["logIndex"],
                "args": _jsonable(dict(decoded["args"])),
            }
        )
    return events


def write_export(events: list[dict], path: Path) -> None:
    path.write_text(json.dumps(events, indent=1) + "\n")


def read_export(path: Path) -> list[dict]:
    """An events.json written by `write_export`; a file that is not one is a ConfigError naming it."""
    try:
        events = bounded_json(Path(path).read_bytes(), "events.json")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a readable events export ({type(exc).__name__})") from None
    keys = {"event", "block", "tx", "args"}
    if not isinstance(events, list) or not all(isinstance(e, dict) and keys <= e.keys() for e in events):
        raise ConfigError(f"{path}: not an events export (a list of events, each with {', '.join(sorted(keys))})")
    return events


def load_chain_info(run_dir: Path) -> dict:
    """A run directory's chain.json: where its records are (chain, contract, block range); ConfigError if absent
    or not one. Here, not in the runner, so that reading a run never imports torch."""
    path = Path(run_dir) / "chain.json"
    if not path.exists():
        raise ConfigError(f"--run {run_dir}: no chain.json there (is it a kdledger run directory?)")
    try:
        info = bounded_json(path.read_bytes(), "chain.json")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a readable chain.json ({type(exc).__name__})") from None
    if not isinstance(info, dict) or not {"contract", "chain_id"} <= info.keys():
        raise ConfigError(f"{path}: not a kdledger chain.json (no contract and chain_id)")
    return info


def read_events(run_dir: Path | None, rpc: str | None, address: str | None, *, whole_chain: bool):
    """Events and a description of where they came from: a run directory, or an RPC + address.

    A run on a live chain is read live (its own block range, or the whole chain for provenance,
    since a student may name teachers of earlier runs); an embedded run from its export.
    """
    from chain.backends import connect
    from chain.registry import Registry, checksummed

    if run_dir is not None:
        info = load_chain_info(run_dir)
        if info.get("rpc_url"):
            w3 = connect(info["rpc_url"])
            span = (0, None) if whole_chain else (info["from_block"], info["to_block"])
            return fetch_events(w3, info["contract"], *span), info
        export = Path(run_dir) / "events.json"
        if not export.exists():
            raise ConfigError(f"--run {run_dir}: no events.json export there")
        return read_export(export), info
    if rpc and address:
        contract = checksummed(address, "--address")
        w3 = connect(rpc)
        if not Registry(w3, contract).is_model_registry():
            raise ConfigError(f"--address {address}: no kdledger ModelRegistry there on {rpc}")
        return fetch_events(w3, contract), {"contract": contract, "chain_id": w3.eth.chain_id, "rpc_url": rpc}
    raise ConfigError("say where to read: --run DIR, or --rpc URL --address ADDR")
