"""`flwr run .` runs the same ClientApp and a ServerApp that plays a scenario, against a devnet."""

import json
import os
import signal
import subprocess

import pytest
import yaml
from conftest import ROOT, flower_env, flwr_run, free_port, reduced_quickstart

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
    env = flower_env(flwr_home)
    with Devnet(port=free_port()) as net:
        spec = yaml.safe_load(scenario.read_text())
        spec["chain"] = {"rpc_url": net.rpc_url}
        scenario.write_text(yaml.safe_dump(spec))
        try:
            flwr_run("local", scenario, out, env)
        finally:
            stop_by_pid(str(flwr_home))  # the local SuperLink the CLI started, and its simulation
        assert (out / "report.md").exists(), "the ServerApp did not finish the run"
        events = json.loads((out / "events.json").read_text())
        assert sum(e["event"] == "TeacherRegistered" for e in events) == 3
        assert sum(e["event"] == "StudentCommitted" for e in events) == 1
        chain = json.loads((out / "chain.json").read_text())
        assert chain["rpc_url"] == net.rpc_url
    assert (ROOT / "pyproject.toml").read_text().count("[tool.flwr.federations]") == 0
