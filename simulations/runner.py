"""Plays a scenario: chain up, identities provisioned, a Flower simulation, the run directory written."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from chain.backends import connect, is_embedded
from chain.errors import ConfigError, RunFailed
from chain.events import fetch_events, write_export
from chain.identity import KEY_PASSWORD_ENV, derive_account, key_password, load_key, run_id_of, save_key
from chain.registry import ROLES, Registry, checksummed, fund
from node.artifacts import ArtifactStore, new_seal_key, public_bytes, save_seal_key
from node.data import node_splits
from node.server_app import Coordinator, RunLedger
from simulations.report import write_run_dir
from simulations.scenario import Scenario

log = logging.getLogger(__name__)

QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


@dataclass
class RunResult:
    out_dir: Path
    scenario: Scenario
    ledger: RunLedger
    chain: dict
    events: list[dict]
    wall_s: float

    @property
    def transaction_count(self) -> int:
        """Transactions sent, not records: a batch carries many records in one."""
        return len({t["tx"] for t in self.chain["transactions"]})


def choose_run_dir(out: Path | None, name: str, runs_root: Path = Path("runs")) -> Path:
    """`out` if given (it must be new or empty); else runs/<name>, or runs/<name>-2, ... if taken."""
    if out is not None:
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"--out {out}: directory exists and is not empty (nothing is overwritten)")
        return out
    candidate, n = runs_root / name, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = runs_root / f"{name}-{n}"
    return candidate


def dev_keys(scenario: Scenario, w3: Web3) -> bool:
    """Whether every party's key is derived from the seed: always on the embedded chain (byte-reproducible
    runs, nothing of value), on a JSON-RPC chain only when the scenario says so."""
    return is_embedded(w3) or scenario.chain.dev_keys


def provision(scenario: Scenario, w3: Web3, out_dir: Path, setup_txs: list[dict]):
    """Parties and roles: every party's key (a 0600 file in keys/), the registry, its roles.

    On a JSON-RPC chain every key is fresh and random unless `chain.dev_keys` (a seed-derived key is
    anyone's who reads the scenario), and kept as an encrypted keystore (KDLEDGER_KEY_PASSWORD). With an
    existing registry its admin's key comes from `chain.admin_key`."""
    derived = dev_keys(scenario, w3)
    password = None if derived else key_password()
    if not derived and password is None:
        raise ConfigError(
            f"chain.rpc_url: a run's keys on a JSON-RPC chain are kept encrypted; set {KEY_PASSWORD_ENV} to "
            "their password (or chain.dev_keys: true for throwaway keys)"
        )
    own_keys = scenario.chain.data_nodes  # a deployment: each node holds its key, the run never sees it
    labels = ["admin", "relayer", "distiller"] + ([] if own_keys else [f"node-{i}" for i in range(scenario.nodes)])
    accounts = {label: derive_account(scenario.seed, label) if derived else Account.create() for label in labels}
    if scenario.chain.registry and not derived:
        if scenario.chain.admin_key is None:
            raise ConfigError("chain.registry: name the registry admin's key file in chain.admin_key (or dev_keys)")
        accounts["admin"] = load_key(scenario.chain.admin_key)
    for label, account in accounts.items():
        if label != "admin" or not scenario.chain.registry:
            save_key(account, out_dir / "keys" / f"{label}.json", password)
    admin, relayer, distiller = accounts["admin"], accounts["relayer"], accounts["distiller"]
    nodes = (
        [checksummed(a, "chain.data_nodes:") for a in own_keys]
        if own_keys
        else [accounts[f"node-{i}"].address for i in range(scenario.nodes)]
    )
    fund(w3, [admin.address, relayer.address, distiller.address])
    if scenario.chain.registry:
        registry = Registry(w3, checksummed(scenario.chain.registry, "chain.registry"))
        if not registry.is_model_registry():
            raise ConfigError(
                f"chain.registry: no kdledger ModelRegistry at {registry.address} on {scenario.chain.rpc_url}"
            )
        if not registry.has_batches():
            raise ConfigError(
                f"chain.registry: the ModelRegistry at {registry.address} predates batched records "
                "(registerTeachers, attestBatch, multicall); deploy a new one (leave chain.registry out)"
            )
    else:
        registry, tx = Registry.deploy(w3, admin)
        setup_txs.append({"what": "deploy ModelRegistry", "tx": tx})
    grants = [("RELAYER", relayer.address), ("DISTILLER", distiller.address)] + [
        ("DATA_NODE", address) for address in nodes
    ]
    granted = registry.read_many("hasRole", [(ROLES[role], address) for role, address in grants])
    grants = [grant for grant, done in zip(grants, granted) if not done]
    for (role, address), tx in zip(grants, registry.grant_many(grants, admin, scenario.chain.batch_size)):
        setup_txs.append({"what": f"grant {role}", "account": address, "tx": tx})
    return registry, admin, relayer, distiller


@dataclass
class PreparedRun:
    """A run with its chain, identities and coordinator set up, before any node is contacted."""

    scenario: Scenario
    out_dir: Path
    w3: Web3
    first_block: int
    setup_txs: list[dict]
    coordinator: Coordinator
    started: float
    started_at: str  # UTC, ISO 8601: with the scenario's name, the first half of the run id


def prepare_run(scenario: Scenario, out: Path | None = None, *, progress=None, audit=None) -> PreparedRun:
    started = time.perf_counter()
    out_dir = choose_run_dir(out, scenario.name)
    w3 = connect(scenario.chain.rpc_url)  # before anything is written: a chain that is down leaves no trace
    out_dir.mkdir(parents=True, exist_ok=True)
    first_block = w3.eth.block_number + 1
    setup_txs: list[dict] = []
    registry, _, relayer, distiller = provision(scenario, w3, out_dir, setup_txs)
    started_at = datetime.now(timezone.utc).isoformat()
    run_id = run_id_of(f"{scenario.name}@{started_at}", scenario.config_hash())
    seal_key = None
    if scenario.federation.seal_artifacts:  # the distiller's decryption key, kept like the nodes' keys (0600)
        seal_key = new_seal_key()
        save_seal_key(seal_key, out_dir / "keys" / "distiller-x25519.key")
    coordinator = Coordinator(
        registry=registry,
        relayer=relayer,
        distiller=distiller,
        store=ArtifactStore(out_dir / "store", seal_key),
        seal_to=public_bytes(seal_key) if seal_key else b"",
        run_id=run_id,
        config=scenario.decisive(),
        seed=scenario.seed,
        num_nodes=scenario.nodes,
        data=scenario.data,
        teacher=scenario.teacher,
        distill=scenario.distill,
        keys_dir=(out_dir / "keys").resolve(),
        batch_size=scenario.chain.batch_size,
        merkle_leaves=scenario.chain.merkle_leaves,
        rpc_url=scenario.chain.rpc_url or "",
        federation=scenario.federation,
        faults=scenario.faults,
        privacy=scenario.privacy,
        audit=audit,
        progress=progress or (lambda phase, done, total: None),
    )
    return PreparedRun(scenario, out_dir, w3, first_block, setup_txs, coordinator, started, started_at)


def finish_run(run: PreparedRun) -> RunResult:
    """After the coordinator ran: read the events back and write the run directory."""
    scenario, coordinator, w3 = run.scenario, run.coordinator, run.w3
    if coordinator.error is not None:
        raise RunFailed(f"run {scenario.name}: {coordinator.error}") from coordinator.error
    registry = coordinator.registry
    coordinator.ledger.phase_seconds["chain (within phases)"] = registry.chain_seconds
    events = fetch_events(w3, registry.address, run.first_block)
    chain = {
        "backend": "embedded py-evm (eth-tester)" if is_embedded(w3) else scenario.chain.rpc_url,
        "rpc_url": scenario.chain.rpc_url,
        "keys": "seed-derived" if dev_keys(scenario, w3) else "random",
        "chain_id": w3.eth.chain_id,
        "contract": registry.address,
        "run_id": "0x" + coordinator.run_id.hex(),
        "config_hash": coordinator.ledger.distill["config_hash"],
        "from_block": run.first_block,
        "to_block": w3.eth.block_number,
        "transactions": run.setup_txs + coordinator.ledger.transactions,
    }
    result = RunResult(run.out_dir, scenario, coordinator.ledger, chain, events, time.perf_counter() - run.started)
    write_export(events, run.out_dir / "events.json")
    (run.out_dir / "config.json").write_text(  # exactly the bytes whose SHA-256 is the on-chain configHash
        json.dumps(coordinator.config_document, sort_keys=True, separators=(",", ":"))
    )
    (run.out_dir / "run.json").write_text(  # the run id's inputs (docs/contracts.md, "Run id and config hash")
        json.dumps(
            {"run_id": "0x" + coordinator.run_id.hex(), "name": scenario.name, "started_at": run.started_at}, indent=1
        )
        + "\n"
    )
    write_run_dir(result, transfer=coordinator.transfer)
    return result


def check_local_data(scenario: Scenario) -> None:
    """In a simulation the nodes' files are on this machine: read each node's as it will, so that a bad file ends
    the run in one line before the chain starts (a node that failed inside the federation would only drop out).
    Under the Deployment Engine the coordinator never reads them: each node checks its own."""
    for index in sorted(scenario.data.local):
        node_splits(scenario.data, index, scenario.nodes, scenario.seed)


def run_scenario(
    scenario: Scenario,
    out: Path | None = None,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    verbose: bool = False,
    audit=None,
) -> RunResult:
    """Play `scenario` in a local Flower simulation; `audit(message_type, reply)` sees every node's reply."""
    from flwr.simulation import run_simulation

    from node.client_app import app as client_app
    from node.server_app import make_server_app

    check_local_data(scenario)
    run = prepare_run(scenario, out, progress=progress, audit=audit)
    os.environ.update(QUIET_ENV)
    os.environ["FLWR_HOME"] = str((run.out_dir / ".flwr").resolve())
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": scenario.simulation.cpus_per_node, "num_gpus": 0.0},
        "init_args": {
            "include_dashboard": False,
            "logging_level": "INFO" if verbose else "ERROR",
            "log_to_driver": verbose,  # a node's failure is reported per node, not as a worker's traceback
            **({"num_cpus": scenario.simulation.num_cpus} if scenario.simulation.num_cpus else {}),
        },
    }
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    if not verbose:  # run_simulation warns that it is deprecated on every call, and a failing node's
        flwr_log.setLevel(logging.CRITICAL)  # traceback is Flower's log: the run reports it per node instead
    try:
        run_simulation(
            make_server_app(run.coordinator),
            client_app,
            scenario.nodes,
            backend_config=backend_config,
            verbose_logging=verbose,
        )
    finally:
        flwr_log.setLevel(level)
    return finish_run(run)
