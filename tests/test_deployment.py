"""Flower's Deployment Engine for real: a SuperLink, three SuperNodes (each with its own key file, which
the coordinator never reads, and its own chain endpoint), a devnet, and `flwr run .` against them."""

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import KEY_PASSWORD, flower_env, flwr_run, free_port, reduced_quickstart
from eth_account import Account

from chain.devnet import Devnet, DevnetError, foundry_tool
from chain.identity import save_key

NODES = 3


def start(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    """A Flower process in its own process group, so that stopping it by its PID also stops what it spawned
    (flower-superexec, flwr-clientapp, flwr-serverapp)."""
    return subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_a_federation_of_supernodes_with_their_own_keys_records_everything_on_chain(tmp_path):
    try:
        foundry_tool("anvil")
    except DevnetError as exc:
        pytest.skip(str(exc))
    flwr_home, out = tmp_path / "flwr-home", tmp_path / "run"
    flwr_home.mkdir()
    env = flower_env(flwr_home)
    link_port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    keys = []
    for i in range(NODES):  # each node's own key, made where the node lives; the coordinator gets addresses
        account = Account.create()
        save_key(account, tmp_path / f"node-{i}" / "key.json", KEY_PASSWORD)
        keys.append(account)
    processes: list[subprocess.Popen] = []
    with Devnet(port=free_port()) as net:
        scenario = reduced_quickstart(tmp_path)
        spec = yaml.safe_load(scenario.read_text())
        spec["chain"] = {"rpc_url": net.rpc_url, "data_nodes": [a.address for a in keys]}
        scenario.write_text(yaml.safe_dump(spec))
        try:
            link = ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port)]
            processes.append(start(link, tmp_path / "superlink.log", env))
            for i in range(NODES):
                config = (
                    f"partition-id={i} num-partitions={NODES} "
                    f"key-file='{tmp_path / f'node-{i}' / 'key.json'}' rpc-url='{net.rpc_url}'"
                )
                node = ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}"]
                node += ["--host", "127.0.0.1", "--port", str(free_port()), "--node-config", config]
                processes.append(start(node, tmp_path / f"supernode-{i}.log", env))
            flwr_run("lab", scenario, out, env)
        finally:
            stop(processes)
        assert (out / "report.md").exists(), (tmp_path / "superlink.log").read_text()[-3000:]
        assert all(process.poll() is not None for process in processes)
        events = json.loads((out / "events.json").read_text())
        counts = Counter(e["event"] for e in events)
        assert counts["TeacherRegistered"] == NODES and counts["StudentCommitted"] == 1
        attesters = {e["args"]["node"] for e in events if e["event"] == "AccuracyAttested"}
        assert attesters == {a.address for a in keys}  # signed with the keys only the nodes held
        assert not list((out / "keys").glob("node-*")), "the coordinator made or saw node keys"
        assert json.loads((out / "chain.json").read_text())["rpc_url"] == net.rpc_url
