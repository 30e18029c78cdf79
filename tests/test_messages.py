"""The wire protocol (node/messages.py): every record round-trips, and a bad one is a MessageError naming
its sender and key."""

import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from node.config import DataConfig, DistillConfig, FaultConfig, TeacherConfig
from node.messages import (
    Identity,
    Measurements,
    MessageError,
    Publications,
    Task,
    array_to_blob,
    blob_to_array,
    published_arrays,
    remote_reason,
    sealed_blob,
)

H1, H2 = b"\x01" * 32, b"\x02" * 32


def task(**extra) -> Task:
    return Task(
        seed=3,
        data=DataConfig(alpha=0.3),
        teacher=TeacherConfig(epochs=2),
        distill=DistillConfig(method="noise", samples=64, options={"iterations": 5}),
        faults=FaultConfig(train=[1]),
        keys_dir="/tmp/keys",
        run_id=b"\x07" * 32,
        seal_to=b"",
        chain_id=31337,
        contract="0x" + "ab" * 20,
        **extra,
    )


RECORDS = [
    task(),
    task(nonce=4, deadline=99, round=2, attest=[H1, H2]),
    Identity("0x" + "cd" * 20, 1, 120, 30, [12] * 10),
    Publications(
        "0x" + "cd" * 20, ["teacher", "ebm"], [H1, H2], [b"s" * 65, b"t" * 65], "PEM", ["{bundle}", "{bundle}"]
    ),
    Measurements("0x" + "cd" * 20, [H1, H2], [9000, 8123], 30, [H2], [b"s" * 65], 7),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips_through_a_record_dict(record):
    content = record.put(RecordDict())
    assert list(content.keys()) == [record.key]
    assert type(record).read(content, "node 5") == record


def test_task_sections_arrive_as_validated_configuration():
    got = Task.read(task().put(RecordDict()), "the coordinator")
    assert got.data.alpha == 0.3 and got.distill.options == {"iterations": 5} and got.faults.train == [1]
    assert got.domain().chain_id == 31337


def content_with(record, **changes) -> RecordDict:
    values = dict(record.to_record().items())
    for key, value in changes.items():
        if value is None:
            del values[key]
        else:
            values[key] = value
    return RecordDict({record.key: ConfigRecord(values)})


BAD = [
    (RECORDS[2], {"num-train": None}, "identity.num-train is missing"),
    (RECORDS[2], {"num-train": "120"}, "identity.num-train: expected int, got str"),
    (RECORDS[2], {"num-train": True}, "identity.num-train: expected int, got bool"),
    (RECORDS[2], {"label-histogram": 5}, "identity.label-histogram: expected a list"),
    (RECORDS[3], {"model-hashes": ["0x01", "0x02"]}, "publication.model-hashes: expected bytes, got str"),
    (RECORDS[3], {"kinds": ["teacher"]}, "publication lists of different lengths"),
    (RECORDS[3], {"bundles": ["{bundle}"]}, "publication lists of different lengths"),
    (RECORDS[3], {"signing-key": None}, "publication.signing-key is missing"),
    (RECORDS[4], {"signed-hashes": [b"\x09" * 32]}, "signed a model it did not measure"),
    (RECORDS[4], {"nonce": 1.5}, "attestations.nonce: expected int, got float"),
    (RECORDS[0], {"data": '{"alpha": -1}'}, "task.data: "),
    (RECORDS[0], {"distill": 3}, "task.distill: expected a JSON document"),
]


@pytest.mark.parametrize(("record", "changes", "message"), BAD, ids=[m for _, _, m in BAD])
def test_a_bad_record_is_a_message_error_naming_sender_and_key(record, changes, message):
    with pytest.raises(MessageError, match="^node 5: ") as caught:
        type(record).read(content_with(record, **changes), "node 5")
    assert message in str(caught.value)


def test_a_missing_or_mistyped_record_is_named():
    with pytest.raises(MessageError, match="node 5: the message carries no 'publication' config record"):
        Publications.read(RecordDict(), "node 5")
    wrong = RecordDict({"identity": ArrayRecord({})})
    with pytest.raises(MessageError, match="no 'identity' config record"):
        Identity.read(wrong, "node 5")
    with pytest.raises(MessageError, match="no 'ebm' array record for its ebm"):
        published_arrays(RecordDict(), "ebm", "node 5")


def test_files_travel_as_bytes_and_sealed_files_are_told_apart():
    blob = bytes(range(256)) * 3
    assert array_to_blob(blob_to_array(blob)) == blob
    assert sealed_blob(ArrayRecord({"sealed": blob_to_array(blob)})) == blob
    assert sealed_blob(ArrayRecord({"w": blob_to_array(blob)})) is None


def test_a_node_error_is_reported_as_one_bounded_line_in_the_nodes_own_words():
    flower = "<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. "
    flower += "Message: "
    assert remote_reason(flower + "partition 3: cifar file refused'>") == "partition 3: cifar file refused"
    assert remote_reason("Traceback (most recent call last):\n  File x\nDataError: bad file\n") == "DataError: bad file"
    assert remote_reason(None) == remote_reason("  ") == "an error with no reason"
    long = remote_reason("x" * 10_000)
    assert len(long) == 300 and long.endswith("…") and "\n" not in long
