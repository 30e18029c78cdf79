import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from chain.backends import connect
from chain.identity import derive_account
from chain.registry import Registry, fund

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Deployed:
    w3: object
    registry: Registry
    admin: object
    relayer: object
    distiller: object
    node: object
    other_node: object
    outsider: object


@pytest.fixture()
def deployed() -> Deployed:
    """A fresh embedded chain with ModelRegistry and every role handed out."""
    w3 = connect()
    admin, relayer, distiller, node, other, outsider = (
        derive_account(7, label) for label in ("admin", "relayer", "distiller", "node-0", "node-1", "outsider")
    )
    fund(w3, [admin.address, relayer.address, distiller.address, outsider.address])
    registry, _ = Registry.deploy(w3, admin)
    registry.grant("RELAYER", relayer.address, admin)
    registry.grant("DISTILLER", distiller.address, admin)
    registry.grant("DATA_NODE", node.address, admin)
    registry.grant("DATA_NODE", other.address, admin)
    return Deployed(w3, registry, admin, relayer, distiller, node, other, outsider)


def kdledger(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a child process."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
