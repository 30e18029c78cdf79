"""Federated modes, failures and privacy, through real Flower simulations on digits."""

import json

import numpy as np
import pytest

from conftest import kdledger
from simulations.runner import run_scenario
from simulations.scenario import Scenario

SMALL = {
    "seed": 3, "teacher": {"epochs": 3},
    "distill": {"method": "softtarget", "samples": 200, "epochs": 5, "options": {"iterations": 10, "lr": 0.05}},
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
                if array.dtype == "uint8":  # only the evaluate phase's model files travel as bytes, and only
                    assert kind == "evaluate"  # from the coordinator to the node, never back
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
    # on-chain there are hashes, addresses and numbers, never tensors
    for e in events:
        for value in e["args"].values():
            assert isinstance(value, (int, str, list))
            assert not isinstance(value, str) or len(value) <= 66 or e["event"] == "RoleGranted"
    # lineage walks student -> aggregate -> the nodes' updates
    done = kdledger("lineage", student["args"]["modelHash"], "--run", str(tmp_path / "run"), "--json")
    (tree,) = json.loads(done.stdout)
    (agg,) = tree["teachers"]
    assert agg["kind"] == "aggregate" and {t["round"] for t in agg["teachers"]} == {2}


def test_failing_nodes_do_not_stop_the_run_and_get_nothing_registered(tmp_path):
    spec = scenario("faults-ci", 4, faults={"train": [1], "evaluate": [2]}, federation={"min_nodes": 2})
    result = run_scenario(spec, tmp_path / "run")
    by_partition = {r.partition_id: r for r in result.ledger.nodes}
    assert "injected fault" in by_partition[1].error and by_partition[1].error.startswith("train")
    assert "injected fault" in by_partition[2].error and by_partition[2].error.startswith("evaluate")
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


def test_unknown_strategy_and_bad_faults_are_named(tmp_path):
    with pytest.raises(ValueError, match="faults.train"):
        scenario("x", 2, faults={"train": [5]})
    with pytest.raises(ValueError, match="federation.min_nodes"):
        scenario("x", 2, federation={"min_nodes": 3})
