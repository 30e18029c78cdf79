"""A run against a persistent anvil devnet: events survive a restart, and cast reads them with the ABI alone."""

import hashlib
import json
import subprocess

import pytest
import yaml
from conftest import KEY_PASSWORD, ROOT, free_port, kdledger, reduced_quickstart
from conftest import QUICKSTART_NODES as NODES

from chain.compiler import load_artifact
from chain.devnet import Devnet, DevnetError, foundry_tool


@pytest.fixture(scope="module")
def devnet_run(tmp_path_factory):
    try:
        foundry_tool("anvil"), foundry_tool("cast")
    except DevnetError as exc:
        pytest.skip(str(exc))
    tmp = tmp_path_factory.mktemp("devnet")
    net = Devnet(port=free_port(), state=tmp / "chain-state.json")
    scenario = reduced_quickstart(tmp)
    spec = yaml.safe_load(scenario.read_text())
    spec["chain"] = {"rpc_url": net.rpc_url}
    scenario.write_text(yaml.safe_dump(spec))
    with net:
        done = kdledger("run", str(scenario), "--out", str(tmp / "run"))
        assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp / "chain-state.json").exists()  # written by anvil on SIGINT
    net = Devnet(port=net.port, state=tmp / "chain-state.json").start()  # a new process, from the file
    yield net, tmp / "run"
    net.stop()


def test_events_survive_a_restart_from_state(devnet_run):
    _, run_dir = devnet_run
    done = kdledger("events", "--run", str(run_dir), "--json")
    assert done.returncode == 0, done.stderr
    live = json.loads(done.stdout)
    assert live == json.loads((run_dir / "events.json").read_text())  # as the run saw them
    assert sum(e["event"] == "TeacherRegistered" for e in live) == NODES
    assert sum(e["event"] == "AccuracyAttested" for e in live) == 4 * NODES


def test_events_by_address_in_any_case_and_only_from_a_model_registry(devnet_run):
    net, run_dir = devnet_run
    contract = json.loads((run_dir / "chain.json").read_text())["contract"]
    done = kdledger("events", "--rpc", net.rpc_url, "--address", contract.lower(), "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == len(json.loads((run_dir / "events.json").read_text()))
    for address, message in (
        (contract[:-2], "not an Ethereum address"),
        ("0x" + "11" * 20, "no kdledger ModelRegistry there"),  # no code at all
    ):
        done = kdledger("events", "--rpc", net.rpc_url, "--address", address)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_keys_on_an_rpc_chain_are_not_derivable_from_the_scenario(devnet_run, monkeypatch):
    from chain.identity import derive_account, load_key

    _, run_dir = devnet_run
    monkeypatch.setenv("KDLEDGER_KEY_PASSWORD", KEY_PASSWORD)
    chain = json.loads((run_dir / "chain.json").read_text())
    assert chain["keys"] == "random" and "Warning" not in (run_dir / "report.md").read_text()
    signers = {e["args"]["node"] for e in json.loads((run_dir / "events.json").read_text()) if "node" in e["args"]}
    seed = yaml.safe_load((run_dir / "scenario.yaml").read_text())["seed"]
    for i in range(NODES):
        key = load_key(run_dir / "keys" / f"node-{i}.json")
        assert key.address in signers and key.address != derive_account(seed, f"node-{i}").address
    for party in ("admin", "relayer", "distiller"):
        assert load_key(run_dir / "keys" / f"{party}.json").address != derive_account(seed, party).address


def test_keys_on_an_rpc_chain_are_encrypted_keystores(devnet_run, monkeypatch):
    """Web3 Secret Storage: no private key in clear, readable only with the password, a clean error otherwise."""
    import stat

    from chain.errors import ConfigError
    from chain.identity import load_key

    _, run_dir = devnet_run
    for path in (run_dir / "keys").glob("*.json"):
        text = path.read_text()
        keystore = json.loads(text)
        assert keystore["version"] == 3 and keystore["crypto"]["kdf"] == "scrypt" and "private_key" not in text
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path = run_dir / "keys" / "node-0.json"
    monkeypatch.delenv("KDLEDGER_KEY_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="node-0.json is encrypted: set KDLEDGER_KEY_PASSWORD"):
        load_key(path)
    monkeypatch.setenv("KDLEDGER_KEY_PASSWORD", "not " + KEY_PASSWORD)
    with pytest.raises(ConfigError, match="cannot decrypt key file .*node-0.json: wrong KDLEDGER_KEY_PASSWORD"):
        load_key(path)


def test_a_run_on_an_rpc_chain_without_a_key_password_stops_before_anything(devnet_run, tmp_path):
    net, _ = devnet_run
    scenario = reduced_quickstart(tmp_path)
    spec = yaml.safe_load(scenario.read_text())
    spec["chain"] = {"rpc_url": net.rpc_url}
    scenario.write_text(yaml.safe_dump(spec))
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(net.rpc_url))
    block = w3.eth.block_number
    done = kdledger("run", str(scenario), "--out", str(tmp_path / "run"), key_password=None)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "set KDLEDGER_KEY_PASSWORD" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert w3.eth.block_number == block  # nothing sent
    assert not list((tmp_path / "run").glob("keys/*.json"))  # no key written in clear


def test_an_auditor_checks_the_student_with_web3_and_the_abi_alone(devnet_run, tmp_path):
    """examples/audit_student.py (docs/auditing.md): no kdledger import, only web3.py and the ABI."""
    import shutil
    import sys

    net, run_dir = devnet_run
    script = ROOT / "examples" / "audit_student.py"
    assert "import chain" not in script.read_text() and "from node" not in script.read_text()
    contract = json.loads((run_dir / "chain.json").read_text())["contract"]
    metrics = json.loads((run_dir / "metrics.json").read_text())

    def audit(directory):
        args = [sys.executable, str(script), net.rpc_url, contract, metrics["student_hash"], str(directory)]
        return subprocess.run(args, capture_output=True, text=True, timeout=120)

    done = audit(run_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    tree = json.loads(done.stdout)["lineage"]
    assert tree["kind"] == "student" and tree["method"] == "fast" and tree["count"] == metrics["distill"]["samples"]
    assert {t["owner"] for t in tree["sources"]} == {row["node"] for row in metrics["nodes"]}
    for row in metrics["nodes"]:
        assert tree["accuracies"][row["node"]] == pytest.approx(100 * row["student_accuracy"], abs=0.01)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("keys"))
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"seed":', '"seed": 1, "x":'))
    done = audit(copy)
    assert done.returncode == 1 and "config.json is not the configuration" in done.stdout


def test_events_filters(devnet_run):
    _, run_dir = devnet_run
    found = json.loads(kdledger("events", "--run", str(run_dir), "--json", "--event", "StudentCommitted").stdout)
    assert [e["event"] for e in found] == ["StudentCommitted"]
    node = json.loads((run_dir / "metrics.json").read_text())["nodes"][0]["node"]
    mine = json.loads(kdledger("events", "--run", str(run_dir), "--json", "--node", node).stdout)
    assert {e["event"] for e in mine} == {"RoleGranted", "TeacherRegistered", "AccuracyAttested"}
    assert all(node in e["args"].values() for e in mine)


def test_cast_reads_the_events_with_the_committed_abi(devnet_run):
    net, run_dir = devnet_run
    contract = json.loads((run_dir / "chain.json").read_text())["contract"]
    ours = {
        e["args"]["modelHash"]: e
        for e in json.loads((run_dir / "events.json").read_text())
        if e["event"] == "TeacherRegistered"
    }
    (abi,) = [e for e in load_artifact()["abi"] if e.get("name") == "TeacherRegistered"]
    signature = f"TeacherRegistered({','.join(i['type'] for i in abi['inputs'])})"
    unindexed = f"TeacherRegistered({','.join(i['type'] for i in abi['inputs'] if not i['indexed'])})"
    cast = str(foundry_tool("cast"))
    logs = json.loads(
        subprocess.run(
            [cast, "logs", "--json", "--rpc-url", net.rpc_url, "--address", contract, "--from-block", "0", signature],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert len(logs) == NODES
    for log in logs:
        model_hash, node = log["topics"][1], "0x" + log["topics"][2][-40:]
        kind, rnd, uri = json.loads(
            subprocess.run(
                [cast, "decode-event", "--json", "--sig", unindexed, log["data"]],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        ours_event = ours[model_hash]
        assert ours_event["args"]["node"].lower() == node
        assert (int(kind), int(rnd), uri) == (
            ours_event["args"]["kind"],
            ours_event["args"]["round"],
            ours_event["args"]["uri"],
        )
        assert ours_event["tx"] == log["transactionHash"]


def test_lineage_and_verify_on_the_devnet(devnet_run):
    _, run_dir = devnet_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    done = kdledger("lineage", metrics["student_hash"], "--run", str(run_dir), "--json")
    assert done.returncode == 0, done.stderr
    (tree,) = json.loads(done.stdout)
    assert tree["kind"] == "student" and tree["method"] == "fast"
    assert {t["owner"] for t in tree["teachers"]} == {row["node"] for row in metrics["nodes"]}
    assert len(tree["accuracies"]) == NODES
    student_file = next((run_dir / "store").rglob(metrics["student_hash"][2:] + ".safetensors"))
    done = kdledger("verify", str(student_file), "--run", str(run_dir), "--json")
    assert done.returncode == 0
    (result,) = json.loads(done.stdout)
    assert result["kind"] == "student" and result["sha256"] == metrics["student_hash"]
    stranger = run_dir / "not-a-model.safetensors"
    stranger.write_bytes(b"\x00" * 64)
    done = kdledger("verify", str(stranger), "--run", str(run_dir))
    assert done.returncode == 1 and "not registered" in done.stdout
    assert hashlib.sha256(b"\x00" * 64).hexdigest() in done.stdout
    # exit codes scripts can tell apart: 1 not on the chain, 2 a file that cannot be read
    done = kdledger("verify", str(run_dir / "absent.safetensors"), "--run", str(run_dir))
    assert done.returncode == 2 and "cannot read" in done.stderr and "Traceback" not in done.stderr


def test_devnet_command_prints_the_url_and_stops_cleanly_on_ctrl_c(tmp_path):
    import os
    import signal
    import sys
    import time

    try:
        foundry_tool("anvil")
    except DevnetError as exc:
        pytest.skip(str(exc))
    port, state = free_port(), tmp_path / "state.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", "devnet", "--port", str(port), "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        from chain.backends import connect

        assert connect(f"http://127.0.0.1:{port}").eth.chain_id == 31337
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "state written" in out and state.exists()


def test_unreachable_chain_is_one_line(tmp_path):
    scenario = tmp_path / "down.yaml"
    scenario.write_text(f"name: down\nnodes: 2\nchain:\n  rpc_url: http://127.0.0.1:{free_port()}\n")
    done = kdledger("run", str(scenario), "--out", str(tmp_path / "run"))
    assert done.returncode == 1
    assert "unreachable" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "run").exists()


def test_a_data_node_refuses_to_measure_a_file_the_chain_does_not_hold(devnet_run):
    from chain.errors import ArtifactError
    from node.client_app import _registry, check_registered

    net, run_dir = devnet_run
    chain = json.loads((run_dir / "chain.json").read_text())
    student = bytes.fromhex(json.loads((run_dir / "metrics.json").read_text())["student_hash"][2:])
    registry = _registry(net.rpc_url, chain["contract"], chain["chain_id"])
    check_registered(registry, student, "the coordinator")  # what every node of the run checked, and passed
    stranger = hashlib.sha256(b"never registered").digest()
    with pytest.raises(ArtifactError, match=f"0x{stranger.hex()} from the coordinator is not registered at"):
        check_registered(registry, stranger, "the coordinator")
    with pytest.raises(ArtifactError, match="the run's is 1"):
        _registry(net.rpc_url, chain["contract"], 1)
