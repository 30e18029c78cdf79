"""`flwr run .` runs the same ClientApp and a ServerApp that plays a scenario, against a devnet."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, free_port
from test_end_to_end import reduced_quickstart

from chain.devnet import Devnet, DevnetError, foundry_tool


def stop_by_pid(pattern: str) -> None:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    for pid in found:
        if int(pid) != os.getpid():
            os.kill(int(pid), signal.SIGTERM)


def test_flwr_run_against_a_devnet(tmp_path):
    try:
        foundry_tool("anvil")
    except DevnetError as exc:
        pytest.skip(str(exc))
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\noptions.num-supernodes = 3\n'
    )
    scenario, out = reduced_quickstart(tmp_path), tmp_path / "run"
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "KDLEDGER_KEY_PASSWORD": "a test password",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    with Devnet(port=free_port()) as net:
        spec = yaml.safe_load(scenario.read_text())
        spec["chain"] = {"rpc_url": net.rpc_url}
        scenario.write_text(yaml.safe_dump(spec))
        try:
            submit = subprocess.run(
                ["flwr", "run", ".", "local", "--run-config", f'scenario="{scenario}" out="{out}"'],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
            deadline = time.monotonic() + 600
            while not (out / "report.md").exists() and time.monotonic() < deadline:
                time.sleep(2)
        finally:
            stop_by_pid(str(flwr_home))  # the local SuperLink the CLI started, and its simulation
        assert (out / "report.md").exists(), "the ServerApp did not finish the run"
        events = json.loads((out / "events.json").read_text())
        assert sum(e["event"] == "TeacherRegistered" for e in events) == 3
        assert sum(e["event"] == "StudentCommitted" for e in events) == 1
        chain = json.loads((out / "chain.json").read_text())
        assert chain["rpc_url"] == net.rpc_url
    assert (ROOT / "pyproject.toml").read_text().count("[tool.flwr.federations]") == 0
