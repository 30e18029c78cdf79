"""The data node: a Flower ClientApp. Its data never leaves it.

- query: who am I (address) and how much data I hold;
- train: train a teacher on my private train split, publish only its weights and my signature
  over their hash;
- evaluate: measure the models I am sent on my private test split and sign what I measured.

The node's key is its own: from the node config's `key-file` (deployment), or, in a simulation,
the key file the runner provisioned for this partition.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from chain.identity import KIND_BY_NAME, Attestation, Domain, Publication, load_key, sign
from node.artifacts import deserialize, seal, serialize, sha256
from node.config import DataConfig, DistillConfig, FaultConfig, TeacherConfig
from node.data import Split, node_splits, spec_of
from node.dfkd import InputSpace, method_class
from node.dfkd.augment import Augment
from node.models import build_model
from node.training import accuracy, train_classifier

app = ClientApp()


def blob_to_array(blob: bytes) -> Array:
    return Array(np.frombuffer(blob, dtype=np.uint8))


def array_to_blob(array: Array) -> bytes:
    return array.numpy().tobytes()


@functools.lru_cache(maxsize=4)
def _splits(data: DataConfig, partition_id: int, num_partitions: int, seed: int) -> tuple[Split, Split]:
    return node_splits(data, partition_id, num_partitions, seed)


class DataNode:
    """One node's view of a message: its identity, its data, and the task's settings."""

    def __init__(self, msg: Message, context: Context):
        task = msg.content["task"]
        self.task = task
        self.partition_id = int(context.node_config["partition-id"])
        self.num_partitions = int(context.node_config["num-partitions"])
        self.seed = int(task["seed"])
        self.data_cfg = DataConfig.model_validate_json(task["data"])
        key_file = context.node_config.get("key-file") or Path(task["keys-dir"]) / f"node-{self.partition_id}.json"
        self.account = load_key(Path(key_file))

    @property
    def splits(self) -> tuple[Split, Split]:
        return _splits(self.data_cfg, self.partition_id, self.num_partitions, self.seed)

    def domain(self) -> Domain:
        return Domain(chain_id=int(self.task["chain-id"]), contract=str(self.task["contract"]))


def label_counts(split: Split, num_classes: int) -> list[int]:
    """The class histogram of a node's train split: reported when it identifies, and inside its teacher's file."""
    return np.bincount(split.y.numpy(), minlength=num_classes).tolist()


def _reply(msg: Message, **records) -> Message:
    return Message(RecordDict(records), reply_to=msg)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    node = DataNode(msg, context)
    train, test = node.splits
    histogram = label_counts(train, spec_of(node.data_cfg.dataset).num_classes)
    identity = ConfigRecord({"address": node.account.address, "partition-id": node.partition_id})
    metrics = MetricRecord({"num-train": len(train), "num-test": len(test), "label-histogram": histogram})
    return _reply(msg, identity=identity, metrics=metrics)


def _inject_fault(node: DataNode, phase: str) -> None:
    faults = FaultConfig.model_validate_json(node.task["faults"])
    if node.partition_id in getattr(faults, phase):
        raise RuntimeError(f"injected fault: partition {node.partition_id} fails in {phase}")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train a teacher from the global weights if sent (FedAvg) or from scratch (one-shot), plus what the
    distillation method needs from nodes (e.g. GenKD's EBM, one-shot only); reply with weight arrays and a
    signature over each one's canonical file hash."""
    node = DataNode(msg, context)
    _inject_fault(node, "train")
    torch.set_num_threads(1)  # one core per simulated node; also keeps float reductions in one order
    cfg = TeacherConfig.model_validate_json(node.task["teacher"])
    distill = DistillConfig.model_validate_json(node.task["distill"])
    spec = spec_of(node.data_cfg.dataset)
    train_split, _ = node.splits
    round_ = int(node.task["round"])
    node_seed = node.seed * 1000 + node.partition_id
    torch.manual_seed(node_seed)
    model = build_model(cfg.model, spec.input_shape, spec.num_classes)
    if "arrays" in msg.content.array_records:  # start from the coordinator's model (every mode sends one)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    batch_seed = node.seed + node.partition_id + 7919 * round_
    augment = Augment(2, spec.flip, spec.bounds[0], torch.Generator().manual_seed(batch_seed)) if cfg.augment else None
    loss = train_classifier(
        model,
        train_split,
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=batch_seed,
        augment=augment,
        cosine=cfg.cosine,
    )
    published = {"teacher": model}
    if round_ == 0:  # one-shot: the method may want more from the data's owner
        proxy_student = build_model(distill.student, spec.input_shape, spec.num_classes)
        published |= method_class(distill.method).node_side(
            model,
            proxy_student,
            train_split.x,
            train_split.y,
            distill.options,
            seed=node_seed,
            space=InputSpace(spec.input_shape, *spec.bounds, flip=spec.flip),
        )
    seal_to = bytes(node.task["seal-to"])  # the distiller's X25519 key when files travel sealed
    counts = label_counts(train_split, spec.num_classes)
    records, hashes, signatures = {}, [], []
    for i, (kind, published_model) in enumerate(published.items()):
        blob = serialize(
            published_model,
            cfg.model,
            spec.input_shape,
            spec.num_classes,
            label_counts=counts if kind == "teacher" else None,
        )
        publication = Publication(
            node=node.account.address,
            model_hash=sha256(blob),
            kind=KIND_BY_NAME[kind],
            round=round_,
            run_id=node.task["run-id"],
            uri=str(node.task["uri"]),
            nonce=int(node.task["nonce"]) + i,
            deadline=int(node.task["deadline"]),
        )
        key = "arrays" if kind == "teacher" else kind
        if seal_to:  # only the distiller can open it; the coordinator relays ciphertext
            records[key] = ArrayRecord({"sealed": blob_to_array(seal(blob, seal_to, publication.model_hash))})
        else:
            records[key] = ArrayRecord(published_model.state_dict())
        hashes.append(publication.model_hash)
        signatures.append(sign(node.account, publication, node.domain()))
    signed = ConfigRecord(
        {"address": node.account.address, "kinds": list(published), "model-hashes": hashes, "signatures": signatures}
    )
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(train_split)})
    return _reply(msg, **records, publication=signed, metrics=metrics)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Measure every model sent on the private test split; sign those the coordinator will relay."""
    node = DataNode(msg, context)
    _inject_fault(node, "evaluate")
    torch.set_num_threads(1)
    _, test_split = node.splits
    models = msg.content["models"]
    to_attest = list(node.task["attest"])
    nonce, deadline = int(node.task["nonce"]), int(node.task["deadline"])
    hashes, bps, signatures = [], [], []
    for name in models.keys():
        blob = array_to_blob(models[name])
        model_hash = sha256(blob)  # the node signs what it measured, not what it was told
        acc = accuracy(deserialize(blob, model_hash, owner="the coordinator"), test_split)
        hashes.append(model_hash)
        bps.append(round(acc * 10_000))
    signed_hashes = [h for h in hashes if h in to_attest]
    for i, model_hash in enumerate(signed_hashes):
        att = Attestation(
            node=node.account.address,
            model_hash=model_hash,
            run_id=node.task["run-id"],
            accuracy_bps=bps[hashes.index(model_hash)],
            num_examples=len(test_split),
            nonce=nonce + i,
            deadline=deadline,
        )
        signatures.append(sign(node.account, att, node.domain()))
    result = ConfigRecord(
        {
            "address": node.account.address,
            "model-hashes": hashes,
            "accuracy-bps": bps,
            "num-examples": len(test_split),
            "signed-hashes": signed_hashes,
            "signatures": signatures,
            "nonce": nonce,
        }
    )
    return _reply(msg, attestations=result)
