"""The coordinator and distiller: a Flower ServerApp.

One run, in four phases (docs/architecture.md has the picture):
1. identify: every data node reports its address and split sizes; only DATA_NODE addresses take part;
2. teachers: the scenario's Flower strategy (FedAvg by default) with registration mixed in
   (node/strategy.py). One-shot, one round in which every node trains its own teacher (and their
   ensemble and their weights averaged once are registered as baselines); fedavg, R rounds that
   build one global teacher, every node's update and every round's aggregate registered. A node
   replies with weight arrays and signatures; each canonical file is rebuilt, checked to hash to what
   the node signed, stored, and the signature relayed to ModelRegistry;
3. distill: the teacher files are checked against their on-chain hashes, then a data-free method
   makes the student, which the distiller commits with its lineage;
4. evaluate: the student, the node's own teacher and the shared teachers go back to every node,
   which measures them on its private test split and signs; the coordinator relays each attestation.
Every record on the wire is defined once, in node/messages.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from eth_account.signers.local import LocalAccount
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from chain.errors import ArtifactError, RunFailed
from chain.identity import Attestation, recover
from chain.merkle import ProvenLeaf, PublicationLeaf, write_proofs
from chain.provenance import uri_of
from chain.registry import Registry, lineage_path
from node.artifacts import ArtifactStore, Expected, PrivacySpent, serialize, sha256
from node.config import (
    DataConfig,
    DistillConfig,
    FaultConfig,
    FederationConfig,
    PrivacyConfig,
    TeacherConfig,
    config_digest,
)
from node.data import spec_of
from node.distiller import distill_student
from node.messages import MODELS, Identity, Measurements, MessageError, Task, blob_to_array, remote_reason
from node.models import Ensemble, Teacher, build_model
from node.relay import SignedAttestation, SignedPublication, relay
from node.signing import (
    PUBLIC_KEYS,
    SignatureRefused,
    bundle_path,
    derive_signing_key,
    fingerprint,
    public_pem,
    sign_file,
    verify_bundle,
    write_public_key,
)
from node.strategy import registering_strategy

log = logging.getLogger(__name__)


@dataclass
class NodeRecord:
    node_id: int
    partition_id: int
    address: str
    num_train: int = 0
    num_test: int = 0
    label_histogram: list[int] = field(default_factory=list)
    published: dict[str, bytes] = field(default_factory=dict)  # kind ("teacher", "ebm") -> latest hash
    owned: set[bytes] = field(default_factory=set)  # every hash the node registered, in every round
    accuracy_bps: dict[str, int] = field(default_factory=dict)  # model hash (hex) -> what the node measured
    error: str | None = None

    @property
    def teacher_hash(self) -> bytes | None:
        return self.published.get("teacher")


@dataclass
class RunLedger:
    """What happened, for the report: nodes, models, every transaction."""

    nodes: list[NodeRecord] = field(default_factory=list)
    student_hash: bytes | None = None
    aggregates: dict[str, bytes] = field(default_factory=dict)  # "ensemble", "fedavg-once", "global" -> hash
    sources: dict[bytes, list[bytes]] = field(default_factory=dict)  # a derived model's registered lineage
    in_root: dict[bytes, tuple[bytes, ProvenLeaf]] = field(default_factory=dict)  # Merkle mode: hash -> root, leaf
    transactions: list[dict] = field(default_factory=list)
    distill: dict = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def tx(self, what: str, receipt: Mapping[str, Any], records: int = 1, **extra) -> str:
        """One record and the transaction it went in; `records` > 1: a batch, whose gas each of its records
        lists whole (gas per record is gas / records)."""
        tx_hash = receipt["transactionHash"].to_0x_hex()
        entry = {"what": what, "tx": tx_hash, "block": receipt["blockNumber"], "gas": receipt["gasUsed"]}
        self.transactions.append(entry | ({"records": records} if records > 1 else {}) | extra)
        return tx_hash


@dataclass
class Coordinator:
    """The coordinator's state and its dealings with the chain and the store; `run` is a run's phases in order."""

    registry: Registry
    relayer: LocalAccount
    distiller: LocalAccount
    store: ArtifactStore
    run_id: bytes
    config: dict  # the decisive configuration; its hash, with what ran (as_run), goes on-chain
    seed: int
    num_nodes: int
    data: DataConfig
    teacher: TeacherConfig
    distill: DistillConfig
    keys_dir: Path
    batch_size: int = 100  # signed records per transaction (registerTeachers, attestBatch)
    merkle_leaves: int = 0  # N > 0: publications committed as Merkle roots of up to N leaves (chain/merkle.py)
    rpc_url: str = ""  # where nodes read the chain themselves; empty on the embedded chain
    federation: FederationConfig = field(default_factory=FederationConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    progress: Callable[[str, int, int], None] = lambda phase, done, total: None
    audit: Callable[[str, Message], None] | None = None  # sees every reply a data node sends (privacy tests)
    seal_to: bytes = b""  # the distiller's X25519 public key when nodes seal their files
    ledger: RunLedger = field(default_factory=RunLedger)
    transfer: object = None  # the distiller's synthetic inputs, for the report's sample grid
    config_document: dict | None = None
    error: BaseException | None = None

    def run(self, grid: Grid) -> None:
        """Every phase of a run, in order."""
        for name, phase in (
            ("identify", lambda: self.identify(grid)),
            ("teachers", lambda: self.train_teachers(grid)),
            ("distill", self.distill_student),
            ("evaluate", lambda: self.evaluate(grid)),
        ):
            start = time.perf_counter()
            phase()
            self.ledger.phase_seconds[name] = time.perf_counter() - start

    # -- phases ------------------------------------------------------------------------------
    def identify(self, grid: Grid) -> None:
        """Every node that answers says who it is; only DATA_NODE addresses take part."""
        deadline = time.monotonic() + 120
        node_ids = list(grid.get_node_ids())
        while len(node_ids) < self.num_nodes and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = list(grid.get_node_ids())
        task = self.task()
        replies = self._exchange(grid, MessageType.QUERY, {nid: task.put(RecordDict()) for nid in node_ids})
        self.progress("identify", len(replies), len(node_ids))
        for nid, reply in sorted(replies.items(), key=lambda kv: kv[0]):
            if reply.has_error():
                log.warning("node %s did not identify itself: %s", nid, remote_reason(reply.error.reason))
                continue
            try:
                ident = Identity.read(reply.content, f"node {nid}")
            except MessageError as exc:
                log.warning("%s", exc)
                continue
            record = NodeRecord(
                nid, ident.partition_id, ident.address, ident.num_train, ident.num_test, ident.label_histogram
            )
            self.ledger.nodes.append(record)
        self.ledger.nodes.sort(key=lambda r: r.partition_id)
        for record, granted in zip(self.ledger.nodes, self.registry.have_role("DATA_NODE", self.addresses)):
            if not granted:
                record.error = "identify: address lacks the DATA_NODE role"
        if not self.active:
            raise RunFailed("no data node with the DATA_NODE role answered")

    def train_teachers(self, grid: Grid) -> None:
        """One-shot: one round in which every node trains its own teacher; fedavg: the strategy's rounds.
        Every file a node publishes is checked and registered by the strategy (node/strategy.py)."""
        strategy = registering_strategy(self)
        rounds = 1 if self.federation.mode == "one-shot" else self.federation.rounds
        strategy.start(grid, ArrayRecord(self.initial_model().state_dict()), num_rounds=rounds)

    def ensemble(self, teachers: Sequence[Teacher]) -> Ensemble:
        """The teachers as one model, weighted as the scenario says (Ensemble.weighted)."""
        return Ensemble.weighted(teachers, self.federation.ensemble_weights)

    def initial_model(self) -> torch.nn.Module:
        """The common starting point every node's teacher trains from (the scenario's seed)."""
        torch.manual_seed(self.seed)
        return self.teacher_model()

    def distill_student(self) -> None:
        if self.federation.mode == "fedavg":  # one global teacher, owned by the coordinator
            sources = [self.ledger.aggregates["global"]]
            loaded = [{"teacher": self.store.load(sources[0], self.expected, owner="the coordinator's aggregate")}]
            teacher, shares = loaded[0]["teacher"], [1.0]
        else:
            nodes = [r for r in self.active if r.teacher_hash is not None]
            if not nodes:
                raise RunFailed("no teacher was registered: nothing to distil from")
            self.check_published(nodes)
            loaded = [
                {kind: self.store.load(h, self.expected, owner=f"node {r.address}") for kind, h in r.published.items()}
                for r in nodes
            ]
            sources = self.on_chain([h for r in nodes for h in r.published.values()])
            teacher = self.ensemble([m["teacher"] for m in loaded]) if len(loaded) > 1 else loaded[0]["teacher"]
            shares = [float(r.num_train) for r in nodes]
        start = None
        if self.distill.init == "fedavg-once":  # FedDF's start: the average, which then joins the lineage
            if "fedavg-once" not in self.ledger.aggregates:
                raise RunFailed("distill.init: fedavg-once needs two or more teachers to average; one was registered")
            average = self.ledger.aggregates["fedavg-once"]
            start = self.store.load(average, self.expected, owner="the coordinator's aggregate")
            sources = self.on_chain([*sources, average])
        blob, result, as_run = distill_student(
            loaded,
            teacher,
            shares,
            self.distill,
            self._spec(),
            seed=self.seed,
            progress=lambda stage, done, total: self.progress(f"distill:{stage}", done, total),
            signing_key=self.key_id(self.distiller),
            start=start,
        )
        # the configuration as it ran (variant, effective options, device, threads) is what the chain's hash covers
        self.config_document = {**self.config, "as_run": as_run}
        config_hash = config_digest(self.config_document)
        student_hash = self.store.put(blob)
        self.sign_stored(student_hash, self.distiller)
        if not self.registry.model(student_hash).registered:
            receipt = self.registry.commit_student(
                student_hash,
                self.run_id,
                sources,
                self.distill.method,
                config_hash,
                len(result.transfer),
                uri_of(self.run_id),
                self.distiller,
            )
            self.ledger.tx("StudentCommitted", receipt, model=student_hash.hex())
        self.ledger.student_hash = student_hash
        self.ledger.sources[student_hash] = list(sources)
        self.ledger.distill = {
            "method": self.distill.method,
            "variant": as_run["variant"],
            "samples": len(result.transfer),
            "synthesis_s": result.synthesis_s,
            "training_s": result.training_s,
            "cpu_s": result.cpu_s,
            "losses": result.losses,
            "student_steps": result.student_steps,
            "class_counts": result.class_counts,
            "device": str(next(result.student.parameters()).device),
            "config_hash": "0x" + config_hash.hex(),
        }
        self.transfer = result.transfer

    def evaluate(self, grid: Grid) -> None:
        """Every node measures the student, its own teacher and the shared teachers, and signs each."""
        student = self.ledger.student_hash
        if student is None:
            raise RunFailed("no student was committed: nothing to evaluate")
        deadline = self.registry.deadline()
        contents, sent, sent_paths, sent_leaves = {}, {}, {}, {}
        # a node's own teacher is measured where it is an on-chain record: in Merkle mode it is a leaf, which a
        # node reading the chain would refuse as unregistered
        sent_models = {
            r.node_id: [student]
            + (
                [r.teacher_hash]
                if self.federation.mode == "one-shot" and r.teacher_hash and r.teacher_hash not in self.ledger.in_root
                else []
            )
            + list(self.ledger.aggregates.values())
            for r in self.active
        }
        pairs = [(h, r.address) for r in self.active for h in sent_models[r.node_id]]
        attested = {pair for pair, (_, _, block) in zip(pairs, self.registry.accuracies(pairs)) if block != 0}
        nonces = dict(zip(self.addresses, self.registry.nonces(self.addresses)))
        for r in self.active:
            models = sent_models[r.node_id]
            # only models the node's data went into, each with the path the contract checks; not twice
            owned, leaves = self.owned_on_chain(r)
            paths = {h: lineage_path(h, owned, self.ledger.sources) for h in models}
            sent_leaves[r.node_id] = {h: leaves.get(self.reached(h, p)) for h, p in paths.items() if p is not None}
            attest = [h for h in models if paths[h] is not None and (h, r.address) not in attested]
            sent_paths[r.node_id] = paths
            task = sent[r.node_id] = self.task(nonce=nonces[r.address], deadline=deadline, attest=attest)
            files = ArrayRecord({h.hex(): blob_to_array(self.store.get(h)) for h in models})
            contents[r.node_id] = task.put(RecordDict({MODELS: files}))
        replies = self._exchange(grid, MessageType.EVALUATE, contents)
        signed: list[SignedAttestation] = []
        for done, record in enumerate(self.active, 1):
            reply = replies.get(record.node_id)
            if self.failed(record, reply, "evaluate") or reply is None:
                continue
            try:
                result = Measurements.read(reply.content, f"node {record.address}")
            except MessageError as exc:
                record.error = f"evaluate: {exc}"
                continue
            measured = dict(zip(result.model_hashes, result.accuracy_bps))
            record.accuracy_bps = {h.hex(): b for h, b in measured.items()}
            task, paths = sent[record.node_id], sent_paths[record.node_id]
            for i, (model_hash, signature) in enumerate(zip(result.signed_hashes, result.signatures)):
                att = Attestation(
                    node=record.address,
                    model_hash=model_hash,
                    run_id=self.run_id,
                    accuracy_bps=measured[model_hash],
                    num_examples=result.num_examples,
                    nonce=task.nonce + i,
                    deadline=task.deadline,
                )
                leaf = sent_leaves[record.node_id].get(model_hash)
                signed.append(SignedAttestation(record, att, signature, paths[model_hash] or [], leaf))
            self.progress("evaluate", done, len(contents))
        for item, receipt, records in relay(self.registry, self.relayer, signed, self.batch_size):
            model = item.attestation.model_hash.hex()
            self.ledger.tx("AccuracyAttested", receipt, records, node=item.record.address, model=model)

    # -- messages ----------------------------------------------------------------------------
    def task(self, **extra) -> Task:
        """The Task every message to a node carries (node/messages.py); `extra`: nonce, deadline, round, attest."""
        return Task(
            seed=self.seed,
            data=self.data,
            teacher=self.teacher,
            distill=self.distill,
            faults=self.faults,
            privacy=self.privacy,
            keys_dir=str(self.keys_dir),
            run_id=self.run_id,
            seal_to=self.seal_to,
            chain_id=self.registry.domain().chain_id,
            contract=self.registry.address,
            rpc_url=self.rpc_url,
            **extra,
        )

    def _exchange(self, grid: Grid, kind: str, contents: dict[int, RecordDict]) -> dict[int, Message]:
        messages = [Message(content, dst_node_id=nid, message_type=kind) for nid, content in contents.items()]
        replies = {}
        for reply in grid.send_and_receive(messages):
            if self.audit is not None:
                self.audit(kind, reply)
            replies[reply.metadata.src_node_id] = reply
        return replies

    def failed(self, record: NodeRecord, reply: Message | None, phase: str) -> bool:
        """Whether the node's reply is missing or an error; if so the node is marked failed and drops out."""
        if reply is None or reply.has_error():
            reason = "no reply" if reply is None else remote_reason(reply.error.reason)
            record.error = f"{phase}: {reason}"
            log.warning("node %s failed in %s: %s", record.address, phase, reason)
            return True
        return False

    @property
    def active(self) -> list[NodeRecord]:
        return [r for r in self.ledger.nodes if r.error is None]

    @property
    def addresses(self) -> list[str]:
        """Every identified node's address, in partition order (what the chain is asked about in bulk)."""
        return [r.address for r in self.ledger.nodes]

    # -- models and the chain ----------------------------------------------------------------
    def _spec(self):
        return spec_of(self.data.dataset)

    @property
    def expected(self) -> Expected:
        """What every file the coordinator loads must be: the teacher architecture (or an ensemble of it)."""
        spec = self._spec()
        return Expected((self.teacher.model,), spec.input_shape, spec.num_classes, max_members=self.num_nodes)

    def teacher_model(self, state: Mapping[str, torch.Tensor] | None = None) -> torch.nn.Module:
        """A model of the teacher architecture, holding `state` if given (no reseeding: the global RNG is left
        alone)."""
        spec = self._spec()
        model = build_model(self.teacher.model, spec.input_shape, spec.num_classes)
        if state is not None:
            model.load_state_dict(state)
        return model

    def canonical(
        self,
        state: dict,
        label_counts: list[int] | None = None,
        signing_key: str | None = None,
        privacy: PrivacySpent | None = None,
    ) -> tuple[bytes, bytes]:
        """The canonical file of a teacher-architecture state dict (a teacher's with the class histogram and the
        privacy claim its node reported, and its node's signing-key fingerprint), and its hash: it only matches
        what the node signed if the node reported truly."""
        spec = self._spec()
        model = self.teacher_model(state)
        blob = serialize(
            model,
            self.teacher.model,
            spec.input_shape,
            spec.num_classes,
            label_counts=label_counts,
            signing_key=signing_key,
            privacy=privacy,
        )
        return blob, sha256(blob)

    # -- OpenSSF model-signing bundles (node/signing.py) ---------------------------------------
    @property
    def public_keys(self) -> Path:
        """The run directory's public-keys/ (beside keys/, which holds secrets): every signer's PEM."""
        return self.run_dir / PUBLIC_KEYS

    @staticmethod
    def key_id(account: LocalAccount) -> str:
        """The fingerprint of `account`'s signing key, which every file it registers names."""
        return fingerprint(derive_signing_key(bytes(account.key)))

    def sign_stored(self, model_hash: bytes, account: LocalAccount) -> None:
        """The bundle of a stored file, by the signing key of `account` (the distiller for the student, the
        relayer for what the coordinator registers), beside the file; its public key in public-keys/."""
        key = derive_signing_key(bytes(account.key))
        write_public_key(self.public_keys, account.address, public_pem(key))
        path = self.store.path(model_hash)
        sign_file(key, path, bundle_path(path))

    def keep_node_bundle(self, address: str, pem: bytes, model_hash: bytes, bundle: bytes, sealed: bool) -> None:
        """A node's bundle of its file, beside the file; checked first unless the file is sealed (then only the
        distiller could read it). A bundle that does not verify is an ArtifactError: the node is refused."""
        key_path = write_public_key(self.public_keys, address, pem)
        path = self.store.path(model_hash)
        target = bundle_path(path)
        target.write_bytes(bundle)
        if not sealed:
            try:
                verify_bundle(path, target, key_path)
            except SignatureRefused as exc:
                target.unlink()
                raise ArtifactError(f"its bundle of 0x{model_hash.hex()}: {exc}") from None

    def register_publications(self, signed: Sequence[SignedPublication]) -> None:
        """Relay nodes' signed publications to ModelRegistry in batches (node/relay.py); a rerun on a persistent
        chain finds some there already. A node whose publication is refused drops out. In Merkle mode, committed
        as roots instead (commit_publications)."""
        if self.merkle_leaves:
            self.commit_publications(signed)
        else:
            self.relay_publications(signed)
        for item in signed:
            if item.record.error is None:
                item.record.published[item.kind] = item.publication.model_hash
                item.record.owned.add(item.publication.model_hash)

    def relay_publications(self, signed: Sequence[SignedPublication]) -> None:
        """Each publication its own on-chain record, its signature checked by the contract (node/relay.py)."""
        todo = []
        for item, existing in zip(signed, self.registry.models([i.publication.model_hash for i in signed])):
            pub = item.publication
            if existing.registered and existing.owner == item.record.address:
                log.info("%s 0x%s is already on-chain (block %d)", item.kind, pub.model_hash.hex(), existing.block)
            else:
                todo.append(item)
        for item, receipt, records in relay(self.registry, self.relayer, todo, self.batch_size):
            pub, address = item.publication, item.record.address
            extra = {"node": address, "model": pub.model_hash.hex(), "kind": item.kind, "round": pub.round}
            self.ledger.tx("TeacherRegistered", receipt, records, **extra)

    def commit_publications(self, signed: Sequence[SignedPublication]) -> None:
        """Merkle mode: each node's signature checked here (the contract checks none when a root is committed),
        then the round's publications committed as roots of up to `merkle_leaves` leaves, each root's proofs
        written to the run directory's merkle/. A node whose signature does not recover to it drops out."""
        domain = self.registry.domain()
        for item in signed:
            if item.record.error is None and not _signed_by(item, domain):
                item.record.error = "register: its publication's signature is malformed or not its own"
                log.warning("node %s: %s", item.record.address, item.record.error)
        good = [item for item in signed if item.record.error is None]
        for round_ in sorted({item.publication.round for item in good}):
            in_round = [item for item in good if item.publication.round == round_]
            for start in range(0, len(in_round), self.merkle_leaves):
                chunk = in_round[start : start + self.merkle_leaves]
                leaves = [PublicationLeaf(item.publication, item.signature) for item in chunk]
                root, _, proven = write_proofs(self.run_dir, leaves)
                if not self.registry.model(root).registered:  # a rerun on a persistent chain finds it there
                    receipt = self.registry.commit_publications(
                        root, self.run_id, round_, len(chunk), uri_of(self.run_id), self.relayer
                    )
                    self.ledger.tx("PublicationsCommitted", receipt, len(chunk), model=root.hex(), round=round_)
                for item, leaf in zip(chunk, proven):
                    self.ledger.in_root[item.publication.model_hash] = (root, leaf)

    def on_chain(self, hashes: Sequence[bytes]) -> list[bytes]:
        """What names `hashes` on-chain as a lineage: each hash, or the root it was committed in (once)."""
        return list(dict.fromkeys(self.ledger.in_root[h][0] if h in self.ledger.in_root else h for h in hashes))

    def owned_on_chain(self, record: NodeRecord) -> tuple[set[bytes], dict[bytes, ProvenLeaf]]:
        """The records through which `record`'s node reaches a model on-chain: the hashes it registered and the
        roots its publications are in, with its leaf in each root."""
        leaves = {
            self.ledger.in_root[h][0]: self.ledger.in_root[h][1] for h in record.owned if h in self.ledger.in_root
        }
        return {h for h in record.owned if h not in self.ledger.in_root} | set(leaves), leaves

    def reached(self, model: bytes, path: Sequence[int]) -> bytes:
        """The record a lineage path leads to from `model`."""
        for i in path:
            model = self.ledger.sources[model][i]
        return model

    def check_published(self, nodes: Sequence[NodeRecord]) -> None:
        """The chain, not the store, says whose each published file is: registered to its node, or (Merkle mode)
        a leaf of a committed root that the contract finds there, signed by its node."""
        published = [(r, kind, h) for r in nodes for kind, h in r.published.items()]
        records = [(r, kind, h) for r, kind, h in published if h not in self.ledger.in_root]
        for (r, kind, model_hash), record in zip(records, self.registry.models([h for _, _, h in records])):
            if not record.registered or record.owner != r.address:
                raise RunFailed(f"{kind} 0x{model_hash.hex()} of node {r.address} is not registered to it")
        by_root: dict[bytes, list[tuple[NodeRecord, str, bytes]]] = {}
        for r, kind, h in published:
            if h in self.ledger.in_root:
                by_root.setdefault(self.ledger.in_root[h][0], []).append((r, kind, h))
        for root, items in by_root.items():
            proven = [self.ledger.in_root[h][1] for _, _, h in items]
            included = self.registry.publications_included(root, [(p.leaf, p.proof) for p in proven])
            for (r, kind, model_hash), p, ok in zip(items, proven, included):
                if not ok or p.publication.node != r.address:
                    raise RunFailed(f"{kind} 0x{model_hash.hex()} of node {r.address} is not in root 0x{root.hex()}")

    @property
    def run_dir(self) -> Path:
        return Path(self.keys_dir).parent

    def register_aggregate(
        self, name: str, model: torch.nn.Module, round_: int, sources: list[bytes], method: str, examples: int
    ) -> bytes:
        """Store and register a model the coordinator built from registered ones (an ensemble, an average); a
        source committed in a Merkle root is named by its root."""
        sources = self.on_chain(sources)
        spec = self._spec()
        blob = serialize(
            model, self.teacher.model, spec.input_shape, spec.num_classes, signing_key=self.key_id(self.relayer)
        )
        model_hash = self.store.put(blob)
        self.sign_stored(model_hash, self.relayer)  # its registrant on-chain is the relayer
        if not self.registry.model(model_hash).registered:
            receipt = self.registry.register_aggregate(
                model_hash,
                self.run_id,
                round_,
                sources,
                method,
                examples,
                uri_of(self.run_id),
                self.relayer,
            )
            self.ledger.tx("AggregateRegistered", receipt, model=model_hash.hex(), kind=name, round=round_)
        self.ledger.aggregates[name] = model_hash
        self.ledger.sources[model_hash] = list(sources)
        return model_hash


def _signed_by(item: SignedPublication, domain) -> bool:
    """Whether the publication's signature is a well-formed one (65 bytes, low s, v 27 or 28: what a leaf
    carries) that recovers to the node's address."""
    try:
        PublicationLeaf(item.publication, item.signature).as_struct()
        return recover(item.publication, domain, item.signature) == item.record.address
    except Exception:  # eth-keys raises its own BadSignature, compact a ValueError: either way not the node's
        return False


def make_server_app(coordinator: Coordinator) -> ServerApp:
    """A ServerApp that runs `coordinator`; an error is kept on it for the caller, not lost in a thread."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            coordinator.run(grid)
        except Exception as exc:  # we run in the simulation's thread: hand the error to the caller
            coordinator.error = exc

    return app
