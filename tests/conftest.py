import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from chain.backends import connect
from chain.identity import derive_account
from chain.registry import Registry, fund

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_NODES = 3


def reduced_quickstart(tmp_path: Path) -> Path:
    """The quickstart made small for CI: 3 nodes, 8 teacher epochs, a short distillation."""
    import yaml

    spec = yaml.safe_load((ROOT / "simulations/scenarios/quickstart.yaml").read_text())
    spec["name"] = "quickstart-ci"
    spec["nodes"] = QUICKSTART_NODES
    spec["teacher"]["epochs"] = 8
    spec["distill"].update(samples=512, steps=300, batch_size=64)
    spec["distill"]["options"].update(iterations=10)
    path = tmp_path / "quickstart-ci.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="session")
def quickstart_runs(tmp_path_factory) -> list:
    """The reduced quickstart run twice (for determinism), shared by every test module that reads a run:
    [(run directory, the CLI's completed process)]. Tests may read them and must restore what they change."""
    tmp = tmp_path_factory.mktemp("quickstart")
    scenario = reduced_quickstart(tmp)
    out = []
    for i in range(2):
        done = kdledger("run", str(scenario), "--out", str(tmp / f"run{i}"))
        assert done.returncode == 0, done.stderr[-3000:]
        out.append((tmp / f"run{i}", done))
    return out


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def anvil(tmp_path_factory):
    """One anvil devnet for the session (skipped where anvil is not installed), stopped by PID."""
    from chain.devnet import Devnet, DevnetError, foundry_tool

    try:
        foundry_tool("anvil")
    except DevnetError as exc:
        pytest.skip(str(exc))
    net = Devnet(port=free_port(), state=tmp_path_factory.mktemp("anvil") / "state.json").start()
    yield net
    net.stop()


@pytest.fixture(params=["py-evm", "anvil"])
def deployed(request) -> Deployed:
    """A fresh ModelRegistry, every role handed out, on the embedded chain and on anvil."""
    w3 = connect() if request.param == "py-evm" else connect(request.getfixturevalue("anvil").rpc_url)
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


KEY_PASSWORD = "a test password"


def kdledger(*args: str, timeout: float = 600, key_password: str | None = KEY_PASSWORD) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a child process (with the password of a run's encrypted keys)."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("KDLEDGER_KEY_PASSWORD", None)
    if key_password is not None:
        env["KDLEDGER_KEY_PASSWORD"] = key_password
    return subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def flower_env(flwr_home: Path) -> dict:
    """The environment every Flower CLI and process of a test runs in: its own FLWR_HOME, nothing phoned home
    or installed, the run keys' password, and this venv's Flower commands first on PATH."""
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "KDLEDGER_KEY_PASSWORD": KEY_PASSWORD,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }


def flwr_run(superlink: str, scenario: Path, out: Path, env: dict) -> None:
    """`flwr run .` of a scenario on the named SuperLink, then wait (10 minutes at most) for its run directory."""
    # A SuperLink that was just started may not listen yet (slow on a loaded machine): submit again for a minute.
    give_up = time.monotonic() + 60
    while True:
        submit = subprocess.run(
            ["flwr", "run", ".", superlink, "--run-config", f'scenario="{scenario}" out="{out}"'],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        unavailable = "SuperLink is unavailable" in submit.stdout + submit.stderr
        if submit.returncode == 0 or not unavailable or time.monotonic() > give_up:
            break
        time.sleep(2)
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
    deadline = time.monotonic() + 600
    while not (out / "report.md").exists() and time.monotonic() < deadline:
        time.sleep(2)
