"""The data node: a Flower ClientApp. Its data never leaves it.

- query: who am I (address) and how much data I hold;
- train: train a teacher on my private train split (with DP-SGD when the scenario asks), publish only
  its weights, my signature over their hash and an OpenSSF model-signing bundle of the file by my
  signing key (node/signing.py); a DP teacher's file holds the epsilon its training spent;
- evaluate: measure the models I am sent on my private test split and sign what I measured.

The node's key is its own: from the node config's `key-file` (deployment), or, in a simulation,
the key file the runner provisioned for this partition. On a JSON-RPC chain the node reads the chain
itself (the node config's `rpc-url`, else the run's) to check that every file it is asked to measure is
registered before it parses a byte of it; the embedded chain lives inside the coordinator's process, so
there a node can only hash what it measures and sign that hash.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from pydantic import ValidationError

from chain.backends import connect
from chain.errors import ArtifactError, DataError
from chain.identity import KIND_BY_NAME, Attestation, Publication, load_key, sign
from chain.provenance import uri_of
from chain.registry import Registry
from node.artifacts import Expected, deserialize, seal, serialize, sha256
from node.config import DataConfig, LocalData
from node.data import Split, node_splits, spec_of
from node.dfkd import InputSpace, method_class
from node.dfkd.augment import Augment
from node.messages import (
    ARRAYS,
    METRICS,
    MODELS,
    SEALED,
    Identity,
    Measurements,
    Publications,
    Task,
    array_to_blob,
    blob_to_array,
    train_metrics,
)
from node.models import build_model
from node.signing import derive_signing_key, fingerprint, public_pem, sign_blob
from node.training import PrivacyError, accuracy, train_classifier, train_private

app = ClientApp()


@functools.lru_cache(maxsize=4)
def _splits(
    data: DataConfig, partition_id: int, num_partitions: int, seed: int, own: LocalData | None
) -> tuple[Split, Split]:
    return node_splits(data, partition_id, num_partitions, seed, own)


# A deployed node's own files, named in its node config (`data-format`, `data-path`, ...): the coordinator
# never sees where they are. Each key is a LocalData field, '-' for '_', after "data-".
NODE_CONFIG_DATA = {f"data-{name.replace('_', '-')}": name for name in LocalData.model_fields}


def own_data(node_config: Mapping, data: DataConfig, partition_id: int) -> LocalData | None:
    """The node's own data source from its node config, if it names one."""
    given = {NODE_CONFIG_DATA[k]: v for k, v in node_config.items() if k in NODE_CONFIG_DATA}
    if not given:
        return None
    if partition_id in data.local:
        raise DataError(f"node {partition_id}: its node config and the scenario's data.local both name its data")
    try:
        return LocalData.model_validate(given)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = "data-" + "-".join(str(p) for p in err["loc"]).replace("_", "-") if err["loc"] else "data-*"
        raise DataError(f"node config {key}: {err['msg'].removeprefix('Value error, ')}") from None


class DataNode:
    """One node's view of a message: its identity, its data, and the task's settings."""

    def __init__(self, msg: Message, context: Context):
        self.task = task = Task.read(msg.content, "the coordinator")
        self.partition_id = int(context.node_config["partition-id"])
        self.num_partitions = int(context.node_config["num-partitions"])
        key_file = context.node_config.get("key-file") or Path(task.keys_dir) / f"node-{self.partition_id}.json"
        self.account = load_key(Path(str(key_file)))
        self.rpc_url = str(context.node_config.get("rpc-url") or task.rpc_url)
        self.own_data = own_data(context.node_config, task.data, self.partition_id)

    @property
    def splits(self) -> tuple[Split, Split]:
        return _splits(self.task.data, self.partition_id, self.num_partitions, self.task.seed, self.own_data)


@functools.lru_cache(maxsize=2)
def _registry(rpc_url: str, contract: str, chain_id: int) -> Registry:
    registry = Registry(connect(rpc_url), contract)
    if registry.w3.eth.chain_id != chain_id:
        raise ArtifactError(f"the chain at {rpc_url} is chain {registry.w3.eth.chain_id}, the run's is {chain_id}")
    return registry


def check_registered(registry: Registry, model_hash: bytes, sender: str) -> None:
    """Refuse a file whose hash the registry does not hold: a node measures and signs only registered models."""
    if not registry.model(model_hash).registered:
        raise ArtifactError(
            f"0x{model_hash.hex()} from {sender} is not registered at {registry.address}: refused before parsing"
        )


def label_counts(split: Split, num_classes: int) -> list[int]:
    """The class histogram of a node's train split: reported when it identifies, and inside its teacher's file."""
    return np.bincount(split.y.numpy(), minlength=num_classes).tolist()


def _reply(msg: Message, content: RecordDict) -> Message:
    return Message(content, reply_to=msg)


@app.query()
def identify(msg: Message, context: Context) -> Message:
    node = DataNode(msg, context)
    train, test = node.splits
    histogram = label_counts(train, spec_of(node.task.data.dataset).num_classes)
    identity = Identity(node.account.address, node.partition_id, len(train), len(test), histogram)
    return _reply(msg, identity.put(RecordDict()))


def _inject_fault(node: DataNode, phase: str) -> None:
    if node.partition_id in getattr(node.task.faults, phase):
        raise RuntimeError(f"injected fault: partition {node.partition_id} fails in {phase}")


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train a teacher from the global weights if sent (FedAvg) or from scratch (one-shot), plus what the
    distillation method needs from nodes (e.g. GenKD's EBM, one-shot only); reply with weight arrays and a
    signature over each one's canonical file hash."""
    node = DataNode(msg, context)
    _inject_fault(node, "train")
    torch.set_num_threads(1)  # one core per simulated node; also keeps float reductions in one order
    task = node.task
    cfg, distill = task.teacher, task.distill
    spec = spec_of(task.data.dataset)
    train_split, _ = node.splits
    round_ = task.round
    node_seed = task.seed * 1000 + node.partition_id
    torch.manual_seed(node_seed)
    model = build_model(cfg.model, spec.input_shape, spec.num_classes)
    if ARRAYS in msg.content.array_records:  # start from the coordinator's model (every mode sends one)
        model.load_state_dict(msg.content.array_records[ARRAYS].to_torch_state_dict())
    batch_seed = task.seed + node.partition_id + 7919 * round_
    augment = Augment(2, spec.flip, spec.bounds[0], torch.Generator().manual_seed(batch_seed)) if cfg.augment else None
    privacy = None
    if task.privacy.enabled:  # DP-SGD; the scenario refused BN teachers, fedavg and node-side models for it
        loss, privacy = train_private(
            model,
            train_split,
            privacy=task.privacy,
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=batch_seed,
            augment=augment,
        )
    else:
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
    published: dict[str, torch.nn.Module] = {"teacher": model}
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
    if privacy is not None and len(published) > 1:  # the scenario refuses this; a node checks for itself
        raise PrivacyError(f"privacy: {distill.method} asks for {', '.join(list(published)[1:])} trained without DP")
    counts = label_counts(train_split, spec.num_classes)
    signer = derive_signing_key(bytes(node.account.key))  # the node's own: the coordinator never holds it
    content, hashes, signatures, bundles = RecordDict(), [], [], []
    for i, (kind, published_model) in enumerate(published.items()):
        blob = serialize(
            published_model,
            cfg.model,
            spec.input_shape,
            spec.num_classes,
            label_counts=counts if kind == "teacher" else None,
            signing_key=fingerprint(signer),
            privacy=privacy if kind == "teacher" else None,
        )
        bundles.append(sign_blob(signer, blob).decode())
        publication = Publication(
            node=node.account.address,
            model_hash=sha256(blob),
            kind=KIND_BY_NAME[kind],
            round=round_,
            run_id=task.run_id,
            uri=uri_of(task.run_id),
            nonce=task.nonce + i,
            deadline=task.deadline,
        )
        key = ARRAYS if kind == "teacher" else kind
        if task.seal_to:  # only the distiller can open it; the coordinator relays ciphertext
            content[key] = ArrayRecord({SEALED: blob_to_array(seal(blob, task.seal_to, publication.model_hash))})
        else:
            content[key] = ArrayRecord(published_model.state_dict())
        hashes.append(publication.model_hash)
        signatures.append(sign(node.account, publication, task.domain()))
    claim = privacy.model_dump_json() if privacy is not None else ""
    Publications(
        node.account.address, list(published), hashes, signatures, public_pem(signer).decode(), bundles, claim
    ).put(content)
    content[METRICS] = train_metrics(loss, len(train_split))
    return _reply(msg, content)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Measure every model sent on the private test split; sign those the coordinator will relay."""
    node = DataNode(msg, context)
    _inject_fault(node, "evaluate")
    torch.set_num_threads(1)
    _, test_split = node.splits
    models = msg.content.array_records[MODELS]
    spec = spec_of(node.task.data.dataset)  # a student, a teacher, or the nodes' ensemble: nothing else is loaded
    archs = (node.task.teacher.model, node.task.distill.student)
    expected = Expected(archs, spec.input_shape, spec.num_classes, max_members=node.num_partitions)
    to_attest, nonce, deadline = node.task.attest, node.task.nonce, node.task.deadline
    registry = _registry(node.rpc_url, node.task.contract, node.task.chain_id) if node.rpc_url else None
    hashes, bps, signatures = [], [], []
    for name in models.keys():
        blob = array_to_blob(models[name])
        model_hash = sha256(blob)  # the node signs what it measured, not what it was told
        if registry is not None:
            check_registered(registry, model_hash, "the coordinator")
        acc = accuracy(deserialize(blob, model_hash, expected, owner="the coordinator"), test_split)
        hashes.append(model_hash)
        bps.append(round(acc * 10_000))
    signed_hashes = [h for h in hashes if h in to_attest]
    for i, model_hash in enumerate(signed_hashes):
        att = Attestation(
            node=node.account.address,
            model_hash=model_hash,
            run_id=node.task.run_id,
            accuracy_bps=bps[hashes.index(model_hash)],
            num_examples=len(test_split),
            nonce=nonce + i,
            deadline=deadline,
        )
        signatures.append(sign(node.account, att, node.task.domain()))
    result = Measurements(node.account.address, hashes, bps, len(test_split), signed_hashes, signatures, nonce)
    return _reply(msg, result.put(RecordDict()))
