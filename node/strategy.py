"""The coordinator's Flower strategy: one of flwr.serverapp.strategy (FedAvg by default) whose rounds are
signed, checked and registered on-chain.

Two of Strategy's documented hooks are overridden, nothing else:
- configure_train: the parent strategy picks the round's nodes and config as usual; every message to a
  node that identified itself with the DATA_NODE role also carries the run's Task, with that node's
  nonce on the registry and the round's deadline, which its signatures must use;
- aggregate_train: each reply's files are rebuilt canonically from the arrays it sent (with the fingerprint
  of the node's signing key), hashed, compared with what the node signed and stored, each with the node's
  OpenSSF model-signing bundle beside it, checked; then the round's publications are registered (the nodes'
  signatures relayed to ModelRegistry, `chain.batch_size` per transaction). A node whose files or
  publication are refused drops out; the others go on. The parent then aggregates the replies
  that were accepted, and the aggregate is registered with them as its sources.
One-shot mode is one round, published as round 0 (DENSE's setting): every node trains its own teacher
from the same start, and the round's aggregates are the teachers' weights averaged once (DENSE's
baseline) and their ensemble, built from the verified files (which may be sealed for the distiller).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp import strategy as strategies

from chain.errors import ArtifactError, ConfigError, RunFailed
from chain.identity import KIND_BY_NAME, PUBLISHED_KINDS, Publication
from chain.provenance import uri_of
from node.artifacts import average_weights
from node.messages import MessageError, Publications, Task, published_arrays, sealed_blob
from node.relay import SignedPublication
from node.signing import fingerprint, load_public_key

if TYPE_CHECKING:
    from node.server_app import Coordinator, NodeRecord

log = logging.getLogger(__name__)


class RegisteringFedAvg(strategies.FedAvg):
    """FedAvg, every round signed and on-chain; mixed in before any FedAvg-derived strategy of Flower's
    (FedProx, FedAdam, FedMedian, ...) by `registering_strategy`, so its aggregation is the one that runs."""

    def __init__(self, coordinator: Coordinator, **kwargs):
        super().__init__(**kwargs)
        self.coordinator = coordinator
        self.sent: dict[int, Task] = {}  # this round's task per node: the nonces and deadline it signs with

    @property
    def one_shot(self) -> bool:
        return self.coordinator.federation.mode == "one-shot"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        c = self.coordinator
        nodes = {r.node_id: r for r in c.active}
        deadline = c.registry.deadline()
        round_ = 0 if self.one_shot else server_round
        messages, self.sent = [], {}
        nonces = dict(zip(c.addresses, c.registry.nonces(c.addresses)))
        for message in super().configure_train(server_round, arrays, config, grid):
            record = nodes.get(message.metadata.dst_node_id)
            if record is None:  # not identified, or without the DATA_NODE role: no part in the run
                continue
            task = self.sent[record.node_id] = c.task(nonce=nonces[record.address], deadline=deadline, round=round_)
            content = RecordDict(dict(message.content.items()))
            messages.append(
                Message(task.put(content), dst_node_id=record.node_id, message_type=message.metadata.message_type)
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        c = self.coordinator
        replies = list(replies)
        by_node = {reply.metadata.src_node_id: reply for reply in replies}
        round_ = 0 if self.one_shot else server_round
        phase = "teachers" if self.one_shot else f"round {server_round}"
        asked = [r for r in c.active if r.node_id in self.sent]
        checked: list[tuple[NodeRecord, Message]] = []
        signed: list[SignedPublication] = []
        for done, record in enumerate(asked, 1):
            reply = by_node.get(record.node_id)
            if c.audit is not None and reply is not None:
                c.audit("train", reply)
            if c.failed(record, reply, "train") or reply is None:
                continue
            try:
                signed += self.check_files(record, reply)
            except (ArtifactError, MessageError) as exc:  # this node is refused; the others go on
                record.error = f"register: {exc}"
                log.warning("node %s: %s", record.address, record.error)
                continue
            checked.append((record, reply))
            c.progress(phase, done, len(asked))
        c.register_publications(signed)  # in batches; a node whose publication the contract refuses drops out
        accepted = [(record, reply) for record, reply in checked if record.error is None]
        if len(accepted) < c.federation.min_nodes:
            raise RunFailed(
                f"only {len(accepted)} of {len(asked)} nodes completed training in {phase}; "
                f"federation.min_nodes is {c.federation.min_nodes}"
            )
        records = [record for record, _ in accepted]
        if self.one_shot:
            return self.register_one_shot_aggregates(records), None
        arrays, metrics = super().aggregate_train(server_round, [reply for _, reply in accepted])
        if arrays is None:
            raise RunFailed(f"{type(self).__name__} returned no model in {phase}")
        model = c.teacher_model(arrays.to_torch_state_dict())
        sources = [r.teacher_hash for r in records if r.teacher_hash is not None]
        c.register_aggregate("global", model, round_, sources, c.federation.strategy, sum(r.num_train for r in records))
        return arrays, metrics

    def check_files(self, record: NodeRecord, reply: Message) -> list[SignedPublication]:
        """The node's files in the order it signed them (teacher first, then what the method asked of nodes,
        nonces consecutive): each rebuilt canonically, hash-checked against the signature and stored; the
        publications to relay, with the node's signatures."""
        c = self.coordinator
        sender = f"node {record.address}"
        signed = Publications.read(reply.content, sender)
        pem = signed.signing_key.encode()
        key_id = fingerprint(load_public_key(pem, f"{sender}'s signing key"))
        task = self.sent[record.node_id]
        publications = []
        files = zip(signed.kinds, signed.model_hashes, signed.signatures, signed.bundles)
        for i, (kind, model_hash, signature, bundle) in enumerate(files):
            if kind not in PUBLISHED_KINDS:
                raise MessageError(f"{sender}: published an unknown kind {kind!r}")
            arrays = published_arrays(reply.content, kind, sender)
            ciphertext = sealed_blob(arrays)
            if ciphertext is not None:  # only the distiller can check it: after decrypting, before loading
                c.store.put_sealed(model_hash, ciphertext)
            else:
                counts = record.label_histogram if kind == "teacher" else None
                privacy = signed.privacy_spent(sender) if kind == "teacher" else None
                blob, actual = c.canonical(arrays.to_torch_state_dict(), counts, key_id, privacy)
                if actual != model_hash:
                    raise ArtifactError(f"{kind} file hashes to 0x{actual.hex()}, the node signed 0x{model_hash.hex()}")
                c.store.put(blob)
            c.keep_node_bundle(record.address, pem, model_hash, bundle.encode(), sealed=ciphertext is not None)
            publication = Publication(
                node=record.address,
                model_hash=model_hash,
                kind=KIND_BY_NAME[kind],
                round=task.round,
                run_id=task.run_id,
                uri=uri_of(task.run_id),
                nonce=task.nonce + i,
                deadline=task.deadline,
            )
            publications.append(SignedPublication(record, kind, publication, signature))
        return publications

    def register_one_shot_aggregates(self, records: list[NodeRecord]) -> ArrayRecord | None:
        """The verified teachers' ensemble (the nodes attest it, up to 10 nodes by default) and their weights
        averaged once by train size; the latter is what this round aggregates to."""
        c = self.coordinator
        nodes = [(r, r.teacher_hash) for r in records if r.teacher_hash is not None]
        teachers = [c.store.load(h, c.expected, owner=f"node {r.address}") for r, h in nodes]
        counts = [float(r.num_train) for r, _ in nodes]
        hashes, examples = [h for _, h in nodes], int(sum(counts))
        evaluate_ensemble = c.federation.evaluate_ensemble
        if evaluate_ensemble if evaluate_ensemble is not None else len(nodes) <= 10:
            c.register_aggregate("ensemble", c.ensemble(teachers), 0, hashes, "ensemble", examples)
        if not (c.federation.evaluate_fedavg_once and len(teachers) > 1):
            return None
        averaged = c.teacher_model(average_weights(teachers, counts))
        c.register_aggregate("fedavg-once", averaged, 0, hashes, "FedAvg (one-shot)", examples)
        return ArrayRecord(averaged.state_dict())


def registering_strategy(coordinator: Coordinator) -> RegisteringFedAvg:
    """The scenario's Flower strategy (`federation.strategy`, by name) with registration mixed in."""
    name = coordinator.federation.strategy
    base = getattr(strategies, name, None)
    if not (isinstance(base, type) and issubclass(base, strategies.FedAvg)):
        raise ConfigError(
            f"federation.strategy: {name!r} is not FedAvg or a strategy derived from it in flwr.serverapp.strategy"
        )
    cls = RegisteringFedAvg if base is strategies.FedAvg else type(f"Registering{name}", (RegisteringFedAvg, base), {})
    return cls(
        coordinator,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
    )
