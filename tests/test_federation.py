"""Federated modes, failures and privacy, through real Flower simulations on digits."""

import json

import numpy as np
import pytest
import torch
from conftest import kdledger

from node.artifacts import ArtifactStore, Expected
from node.config import DataConfig
from node.data import Split, load_dataset
from node.models import Ensemble
from node.training import accuracy
from simulations.bench import heldout_accuracies
from simulations.runner import run_scenario
from simulations.scenario import Scenario

SMALL = {
    "seed": 3,
    "teacher": {"epochs": 3},
    "distill": {"method": "softtarget", "samples": 200, "steps": 40, "options": {"iterations": 10, "lr": 0.05}},
}


def scenario(name, nodes, **extra) -> Scenario:
    return Scenario.model_validate({"name": name, "nodes": nodes, **SMALL, **extra})


def test_fedavg_rounds_register_updates_and_aggregates_and_replies_carry_no_data(tmp_path):
    data_shape, seen = (1, 8, 8), []

    def audit(kind, reply):
        """Every reply of every data node: weight arrays, signatures, hashes and small numbers only."""
        seen.append(kind)
        for record in reply.content.array_records.values():
            for name, array in record.items():
                shape = tuple(array.shape)
                assert shape[-3:] != data_shape and shape[1:] != (64,), f"{kind}: {name} has the data's shape"
                assert array.dtype != "uint8" or name == "sealed"  # bytes leave a node only sealed
        for record in reply.content.config_records.values():
            for key, value in record.items():
                values = value if isinstance(value, list) else [value]
                for v in values:
                    assert isinstance(v, (int, str)) or (isinstance(v, bytes) and len(v) in (32, 65)), (kind, key)
        for record in reply.content.metric_records.values():
            for key, value in record.items():
                assert np.size(value) <= 10, (kind, key)  # scalars, and the 10-class label histogram

    spec = scenario("fedavg-ci", 3, federation={"mode": "fedavg", "rounds": 2, "strategy": "FedAvg"})
    result = run_scenario(spec, tmp_path / "run", audit=audit)
    assert set(seen) == {"query", "train", "evaluate"}
    events = result.events
    updates = [e for e in events if e["event"] == "TeacherRegistered"]
    assert sorted(e["args"]["round"] for e in updates) == [1, 1, 1, 2, 2, 2]
    aggregates = [e for e in events if e["event"] == "AggregateRegistered"]
    assert [e["args"]["round"] for e in aggregates] == [1, 2]
    for agg in aggregates:
        round_updates = {e["args"]["modelHash"] for e in updates if e["args"]["round"] == agg["args"]["round"]}
        assert set(agg["args"]["sourceHashes"]) == round_updates and agg["args"]["method"] == "FedAvg"
    (student,) = [e for e in events if e["event"] == "StudentCommitted"]
    assert student["args"]["teacherHashes"] == [aggregates[-1]["args"]["modelHash"]]
    attested = [e for e in events if e["event"] == "AccuracyAttested"]
    assert len(attested) == 3 * 2  # each node: the student and the global teacher
    # on-chain there are hashes, addresses and numbers (and the run's uri), never tensors
    uri = "kdledger://" + result.chain["run_id"]
    for e in events:
        for name, value in e["args"].items():
            assert isinstance(value, (int, str, list))
            if name == "uri":
                assert value == uri
            else:
                assert not isinstance(value, str) or len(value) <= 66 or e["event"] == "RoleGranted"
    # lineage walks student -> aggregate -> the nodes' updates
    done = kdledger("lineage", student["args"]["modelHash"], "--run", str(tmp_path / "run"), "--json")
    (tree,) = json.loads(done.stdout)
    (agg,) = tree["teachers"]
    assert agg["kind"] == "aggregate" and {t["round"] for t in agg["teachers"]} == {2}


def test_a_student_started_from_the_average_names_it_in_its_lineage(tmp_path):
    distill = {**SMALL["distill"], "student": "digits-cnn", "init": "fedavg-once"}
    result = run_scenario(scenario("init-ci", 2, distill=distill), tmp_path / "run")
    events = result.events
    aggregates = [e["args"] for e in events if e["event"] == "AggregateRegistered"]
    (average,) = [a["modelHash"] for a in aggregates if a["method"] == "FedAvg (one-shot)"]
    (student,) = [e for e in events if e["event"] == "StudentCommitted"]
    teachers = [e["args"]["modelHash"] for e in events if e["event"] == "TeacherRegistered"]
    assert student["args"]["teacherHashes"] == [*teachers, average]
    done = kdledger("lineage", student["args"]["modelHash"], "--run", str(tmp_path / "run"), "--json")
    (tree,) = json.loads(done.stdout)
    assert [t["kind"] for t in tree["teachers"]].count("aggregate") == 1
    # `kdledger bench heldout`: the run's stored models scored afresh (digits has no split outside the nodes')
    done = kdledger("bench", "heldout", str(tmp_path / "run"))
    assert done.returncode == 2 and "digits has no test split" in done.stderr and "Traceback" not in done.stderr
    x, y, _ = load_dataset(DataConfig(dataset="digits"), "train")
    images = Split(torch.from_numpy(x), torch.from_numpy(y))
    scored = heldout_accuracies(tmp_path / "run", images)
    nodes = json.loads((tmp_path / "run" / "metrics.json").read_text())["nodes"]
    store, expected = ArtifactStore(tmp_path / "run" / "store"), Expected(("digits-cnn",), (1, 8, 8), 10)
    teachers = [store.load(bytes.fromhex(n["teacher_hash"]), expected, owner="node") for n in nodes]
    averaged = store.load(bytes.fromhex(average[2:]), expected, owner="coordinator")
    made = store.load(bytes.fromhex(student["args"]["modelHash"][2:]), expected, owner="distiller")
    with torch.no_grad():
        assert scored["ensemble"] == accuracy(Ensemble.weighted(teachers, "samples"), images)
        assert scored["teachers_mean"] == sum(accuracy(t, images) for t in teachers) / 2
        assert scored["fedavg_once"] == accuracy(averaged, images) and scored["student"] == accuracy(made, images)
    assert len({scored["ensemble"], scored["fedavg_once"], scored["student"]}) == 3  # three different models


def test_failing_nodes_do_not_stop_the_run_and_get_nothing_registered(tmp_path):
    spec = scenario("faults-ci", 4, faults={"train": [1], "evaluate": [2]}, federation={"min_nodes": 2})
    result = run_scenario(spec, tmp_path / "run")
    by_partition = {r.partition_id: r for r in result.ledger.nodes}
    # one line, the node's own words, none of Flower's wrapping
    assert by_partition[1].error == "train: injected fault: partition 1 fails in train"
    assert by_partition[2].error == "evaluate: injected fault: partition 2 fails in evaluate"
    events = result.events
    registered = {e["args"]["node"] for e in events if e["event"] == "TeacherRegistered"}
    attesting = {e["args"]["node"] for e in events if e["event"] == "AccuracyAttested"}
    assert by_partition[1].address not in registered | attesting
    assert by_partition[2].address in registered and by_partition[2].address not in attesting
    assert {by_partition[0].address, by_partition[3].address} <= attesting
    report = (tmp_path / "run" / "report.md").read_text()
    assert "train: " in report and "evaluate: " in report


def test_too_few_nodes_is_a_one_line_failure(tmp_path):
    path = tmp_path / "few.yaml"
    path.write_text("name: few\nnodes: 2\nteacher: {epochs: 1}\nfaults: {train: [0, 1]}\n")
    done = kdledger("run", str(path), "--out", str(tmp_path / "run"))
    assert done.returncode == 1
    assert "only 0 of 2 nodes completed training" in done.stderr and "Traceback" not in done.stderr


def test_a_start_from_the_average_with_one_teacher_left_is_a_one_line_failure(tmp_path):
    path = tmp_path / "one-left.yaml"
    path.write_text(
        "name: one-left\nnodes: 2\nteacher: {epochs: 1}\nfaults: {train: [0]}\n"
        "distill: {init: fedavg-once, student: digits-cnn, samples: 64, steps: 4}\n"
    )
    done = kdledger("run", str(path), "--out", str(tmp_path / "run"))
    assert done.returncode == 1
    assert "fedavg-once needs two or more teachers" in done.stderr and "Traceback" not in done.stderr


def test_unknown_strategy_and_bad_faults_are_named(tmp_path):
    with pytest.raises(ValueError, match="faults.train"):
        scenario("x", 2, faults={"train": [5]})
    with pytest.raises(ValueError, match="federation.min_nodes"):
        scenario("x", 2, federation={"min_nodes": 3})


def test_sealed_artifacts_are_ciphertext_at_rest_and_checked_after_decryption(tmp_path):
    import stat

    from node.artifacts import TamperedArtifact, load_seal_key, sha256

    train_arrays = []

    def audit(kind, reply):
        if kind == "train":
            train_arrays.extend(name for record in reply.content.array_records.values() for name in record.keys())

    spec = scenario("sealed-ci", 2, federation={"seal_artifacts": True})
    result = run_scenario(spec, tmp_path / "run", audit=audit)
    assert set(train_arrays) == {"sealed"}  # no plaintext weights left a node
    store_root, key_file = tmp_path / "run" / "store", tmp_path / "run" / "keys" / "distiller-x25519.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    sealed = sorted(store_root.rglob("*.enc"))
    teachers = {r.teacher_hash.hex() for r in result.ledger.nodes}
    assert {p.name.split(".")[0] for p in sealed} == teachers
    assert not any((store_root / h[:2] / h[2:4] / f"{h}.safetensors").exists() for h in teachers)
    store = ArtifactStore(store_root, load_seal_key(key_file))
    h = bytes.fromhex(sealed[0].name.split(".")[0])
    assert sha256(store.get(h)) == h  # decrypts to exactly the registered bytes
    with pytest.raises(TamperedArtifact, match="sealed and this store has no key"):
        ArtifactStore(store_root).get(h)
    data = bytearray(sealed[0].read_bytes())
    data[-1] ^= 1
    sealed[0].write_bytes(bytes(data))
    with pytest.raises(TamperedArtifact, match="fails authentication"):
        store.load(h, Expected(("digits-cnn",), (1, 8, 8), 10), owner="node x")
    assert len(result.events) > 0 and result.ledger.student_hash is not None
