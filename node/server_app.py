"""The coordinator and distiller: a Flower ServerApp.

One run, in four phases (docs/architecture.md has the picture):
1. identify: every data node reports its address and split sizes; only DATA_NODE addresses take part;
2. teachers: one-shot, every node trains its own teacher once (and the coordinator registers their
   ensemble and their weights averaged once, as baselines); fedavg, a Flower strategy builds one
   global teacher over R rounds, every node's update and every round's aggregate registered. A
   node replies with weight arrays and signatures; the coordinator rebuilds each canonical file,
   checks it hashes to what the node signed, stores it and relays the signature to ModelRegistry;
3. distill: the teacher files are checked against their on-chain hashes, then a data-free method
   makes the student, which the distiller commits with its lineage;
4. evaluate: the student, the node's own teacher and the shared teachers go back to every node,
   which measures them on its private test split and signs; the coordinator relays each attestation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from eth_account.signers.local import LocalAccount
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from chain.errors import ArtifactError, ConfigError, RunFailed
from chain.identity import KIND_BY_NAME, Attestation, Publication
from chain.registry import Registry, RegistryError
from node.artifacts import ArtifactStore, average_weights, serialize, sha256
from node.client_app import array_to_blob, blob_to_array
from node.config import DataConfig, DistillConfig, FaultConfig, FederationConfig, TeacherConfig, config_digest
from node.data import spec_of
from node.distiller import distill_student
from node.models import Ensemble, build_model

log = logging.getLogger(__name__)


@dataclass
class NodeRecord:
    node_id: int
    partition_id: int
    address: str
    num_train: int = 0
    num_test: int = 0
    label_histogram: list[int] = field(default_factory=list)
    published: dict[str, bytes] = field(default_factory=dict)  # kind ("teacher", "ebm") -> hash
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
    transactions: list[dict] = field(default_factory=list)
    distill: dict = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def tx(self, what: str, receipt: dict, **extra) -> str:
        tx_hash = receipt["transactionHash"].to_0x_hex()
        self.transactions.append(
            {"what": what, "tx": tx_hash, "block": receipt["blockNumber"], "gas": receipt["gasUsed"], **extra}
        )
        return tx_hash


@dataclass
class Coordinator:
    registry: Registry
    relayer: LocalAccount
    distiller: LocalAccount
    store: ArtifactStore
    run_id: bytes
    config: dict  # the decisive configuration; its hash, with the variant run, goes on-chain
    seed: int
    num_nodes: int
    data: DataConfig
    teacher: TeacherConfig
    distill: DistillConfig
    keys_dir: Path
    federation: FederationConfig = field(default_factory=FederationConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    uri: str = "file:store"
    progress: Callable[[str, int, int], None] = lambda phase, done, total: None
    audit: Callable[[str, Message], None] | None = None  # sees every reply a data node sends (privacy tests)
    seal_to: bytes = b""  # the distiller's X25519 public key when nodes seal their files
    ledger: RunLedger = field(default_factory=RunLedger)
    transfer: object = None  # the distiller's synthetic inputs, for the report's sample grid
    config_document: dict | None = None
    error: BaseException | None = None

    # -- messages ----------------------------------------------------------------------------
    def _task(self, **extra) -> ConfigRecord:
        return ConfigRecord(
            {
                "seed": self.seed,
                "data": self.data.model_dump_json(),
                "teacher": self.teacher.model_dump_json(),
                "distill": self.distill.model_dump_json(),
                "faults": self.faults.model_dump_json(),
                "keys-dir": str(self.keys_dir),
                "run-id": self.run_id,
                "uri": self.uri,
                "seal-to": self.seal_to,
                "chain-id": self.registry.domain().chain_id,
                "contract": self.registry.address,
                **extra,
            }
        )

    def _exchange(self, grid: Grid, kind: str, contents: dict[int, RecordDict]) -> dict[int, Message]:
        messages = [Message(content, dst_node_id=nid, message_type=kind) for nid, content in contents.items()]
        replies = {}
        for reply in grid.send_and_receive(messages):
            if self.audit is not None:
                self.audit(kind, reply)
            replies[reply.metadata.src_node_id] = reply
        return replies

    def _failed(self, record: NodeRecord, reply: Message | None, phase: str) -> bool:
        if reply is None or reply.has_error():
            reason = "no reply" if reply is None else reply.error.reason.strip().splitlines()[-1]
            record.error = f"{phase}: {reason}"
            log.warning("node %s failed in %s: %s", record.address, phase, reason)
            return True
        return False

    @property
    def active(self) -> list[NodeRecord]:
        return [r for r in self.ledger.nodes if r.error is None]

    def _spec(self):
        return spec_of(self.data.dataset)

    def _canonical(self, state: dict, label_counts: list[int] | None = None) -> tuple[bytes, bytes]:
        """The canonical file of a teacher-architecture state dict (a teacher's with the class histogram its
        node reported), and its hash: it only matches what the node signed if the node reported truly."""
        spec = self._spec()
        model = build_model(self.teacher.model, spec.input_shape, spec.num_classes)
        model.load_state_dict(state)
        blob = serialize(model, self.teacher.model, spec.input_shape, spec.num_classes, label_counts=label_counts)
        return blob, sha256(blob)

    # -- phases ------------------------------------------------------------------------------
    def identify(self, grid: Grid) -> None:
        deadline = time.monotonic() + 120
        node_ids = list(grid.get_node_ids())
        while len(node_ids) < self.num_nodes and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = list(grid.get_node_ids())
        replies = self._exchange(grid, MessageType.QUERY, {nid: RecordDict({"task": self._task()}) for nid in node_ids})
        self.progress("identify", len(replies), len(node_ids))
        for nid, reply in sorted(replies.items(), key=lambda kv: kv[0]):
            if reply.has_error():
                log.warning("node %s did not identify itself: %s", nid, reply.error.reason)
                continue
            ident, metrics = reply.content["identity"], reply.content["metrics"]
            record = NodeRecord(
                nid,
                int(ident["partition-id"]),
                str(ident["address"]),
                int(metrics["num-train"]),
                int(metrics["num-test"]),
                list(metrics["label-histogram"]),
            )
            if not self.registry.has_role("DATA_NODE", record.address):
                record.error = "identify: address lacks the DATA_NODE role"
            self.ledger.nodes.append(record)
        self.ledger.nodes.sort(key=lambda r: r.partition_id)
        if not self.active:
            raise RunFailed("no data node with the DATA_NODE role answered")

    def train_round(
        self, grid: Grid, round_: int, global_arrays: ArrayRecord | None
    ) -> list[tuple[NodeRecord, Message]]:
        """One training round: every node trains, signs; each file is rebuilt, hash-checked and registered."""
        deadline = self.registry.deadline()
        contents = {}
        for r in self.active:
            content = RecordDict(
                {"task": self._task(nonce=self.registry.nonce(r.address), deadline=deadline, round=round_)}
            )
            if global_arrays is not None:
                content["arrays"] = global_arrays
            contents[r.node_id] = content
        replies = self._exchange(grid, MessageType.TRAIN, contents)
        accepted = []
        phase = "teachers" if round_ == 0 else f"round {round_}"
        for done, record in enumerate(self.active, 1):
            reply = replies.get(record.node_id)
            if self._failed(record, reply, "train"):
                continue
            signed, task = reply.content["publication"], contents[record.node_id]["task"]
            try:  # the teacher first, then what the method asked of nodes (GenKD's EBM), nonces in order
                for i, (kind, model_hash, signature) in enumerate(
                    zip(signed["kinds"], signed["model-hashes"], signed["signatures"])
                ):
                    arrays = reply.content["arrays" if kind == "teacher" else kind]
                    if "sealed" in arrays:  # only the distiller can check it: after decrypting, before loading
                        actual = bytes(model_hash)
                        self.store.put_sealed(actual, array_to_blob(arrays["sealed"]))
                    else:
                        counts = record.label_histogram if kind == "teacher" else None
                        blob, actual = self._canonical(arrays.to_torch_state_dict(), counts)
                        if actual != bytes(model_hash):
                            raise ArtifactError(
                                f"{kind} file hashes to 0x{actual.hex()}, the node signed 0x{bytes(model_hash).hex()}"
                            )
                        self.store.put(blob)
                    publication = Publication(
                        node=record.address,
                        model_hash=actual,
                        kind=KIND_BY_NAME[kind],
                        round=round_,
                        run_id=self.run_id,
                        uri=self.uri,
                        nonce=int(task["nonce"]) + i,
                        deadline=int(task["deadline"]),
                    )
                    self._register(record, kind, publication, bytes(signature))
            except (RegistryError, ArtifactError) as exc:  # this node's publication is refused; the others go on
                record.error = f"register: {exc}"
                continue
            accepted.append((record, reply))
            self.progress(phase, done, len(contents))
        if len(accepted) < self.federation.min_nodes:
            raise RunFailed(
                f"only {len(accepted)} of {len(contents)} nodes completed training in {phase}; "
                f"federation.min_nodes is {self.federation.min_nodes}"
            )
        return accepted

    def _register(self, record: NodeRecord, kind: str, publication: Publication, signature: bytes) -> None:
        existing = self.registry.model(publication.model_hash)
        if existing.registered and existing.owner == record.address:  # a rerun on a persistent chain
            log.info(
                "%s 0x%s of %s is already on-chain (block %d)",
                kind,
                publication.model_hash.hex(),
                record.address,
                existing.block,
            )
        else:
            receipt = self.registry.register_teacher(publication, signature, self.relayer)
            self.ledger.tx(
                "TeacherRegistered",
                receipt,
                node=record.address,
                model=publication.model_hash.hex(),
                kind=kind,
                round=publication.round,
            )
        record.published[kind] = publication.model_hash

    def _register_aggregate(
        self, name: str, model: torch.nn.Module, round_: int, sources: list[bytes], method: str, examples: int
    ) -> bytes:
        spec = self._spec()
        blob = serialize(model, self.teacher.model, spec.input_shape, spec.num_classes)
        model_hash = self.store.put(blob)
        if not self.registry.model(model_hash).registered:
            receipt = self.registry.register_aggregate(
                model_hash, self.run_id, round_, sources, method, examples, self.uri, self.relayer
            )
            self.ledger.tx("AggregateRegistered", receipt, model=model_hash.hex(), kind=name, round=round_)
        self.ledger.aggregates[name] = model_hash
        return model_hash

    def ensemble(self, teachers: list[torch.nn.Module]) -> Ensemble:
        """The teachers as one model: logits weighted per node (train size, or uniform), or per node and class
        by the class histogram inside each verified teacher file: for each class, the nodes that saw it speak for it."""
        mode = self.federation.ensemble_weights
        if mode == "label-counts":
            return Ensemble(teachers, [list(t.label_counts) for t in teachers])
        if mode == "samples":
            return Ensemble(teachers, [float(sum(t.label_counts)) for t in teachers])
        return Ensemble(teachers)

    def initial_model(self) -> torch.nn.Module:
        """The common starting point every node's teacher trains from (the scenario's seed)."""
        spec = self._spec()
        torch.manual_seed(self.seed)
        return build_model(self.teacher.model, spec.input_shape, spec.num_classes)

    def teachers_one_shot(self, grid: Grid) -> None:
        # One round of FedAvg, as DENSE's baseline: every node starts from the same weights, so that
        # averaging them once is meaningful (averaging independently initialised networks is not).
        accepted = self.train_round(grid, 0, ArrayRecord(self.initial_model().state_dict()))
        teachers = [self.store.load(r.teacher_hash, owner=f"node {r.address}") for r, _ in accepted]
        counts = [float(r.num_train) for r, _ in accepted]
        hashes, examples = [r.teacher_hash for r, _ in accepted], int(sum(counts))
        evaluate_ensemble = self.federation.evaluate_ensemble
        if evaluate_ensemble if evaluate_ensemble is not None else len(accepted) <= 10:
            self._register_aggregate("ensemble", self.ensemble(teachers), 0, hashes, "ensemble", examples)
        if self.federation.evaluate_fedavg_once and len(teachers) > 1:
            spec = self._spec()
            averaged = build_model(self.teacher.model, spec.input_shape, spec.num_classes)
            averaged.load_state_dict(average_weights(teachers, counts))
            self._register_aggregate("fedavg-once", averaged, 0, hashes, "FedAvg (one-shot)", examples)

    def teachers_fedavg(self, grid: Grid) -> None:
        from flwr.serverapp import strategy as strategies

        cls = getattr(strategies, self.federation.strategy, None)
        if cls is None:
            raise ConfigError(f"federation.strategy: flwr.serverapp.strategy has no {self.federation.strategy!r}")
        strategy = cls(
            fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1
        )
        global_model = self.initial_model()
        arrays = ArrayRecord(global_model.state_dict())
        if hasattr(strategy, "current_arrays"):  # adaptive strategies (FedAdam, FedYogi, ...) keep the server model
            strategy.current_arrays = {k: a.numpy() for k, a in arrays.items()}
        for round_ in range(1, self.federation.rounds + 1):
            accepted = self.train_round(grid, round_, arrays)
            arrays, _ = strategy.aggregate_train(round_, [reply for _, reply in accepted])
            global_model.load_state_dict(arrays.to_torch_state_dict())
            self._register_aggregate(
                "global",
                global_model,
                round_,
                [r.teacher_hash for r, _ in accepted],
                self.federation.strategy,
                sum(r.num_train for r, _ in accepted),
            )

    def distill_student(self) -> None:
        if self.federation.mode == "fedavg":  # one global teacher, owned by the coordinator
            sources = [self.ledger.aggregates["global"]]
            loaded = [{"teacher": self.store.load(sources[0], owner="the coordinator's aggregate")}]
            teacher, shares = loaded[0]["teacher"], [1.0]
        else:
            nodes = [r for r in self.active if r.teacher_hash is not None]
            if not nodes:
                raise RunFailed("no teacher was registered: nothing to distil from")
            for r in nodes:  # the chain, not the store, says what each artifact is and whose
                for kind, model_hash in r.published.items():
                    on_chain = self.registry.model(model_hash)
                    if not on_chain.registered or on_chain.owner != r.address:
                        raise RunFailed(f"{kind} 0x{model_hash.hex()} of node {r.address} is not registered to it")
            loaded = [
                {kind: self.store.load(h, owner=f"node {r.address}") for kind, h in r.published.items()} for r in nodes
            ]
            sources = [h for r in nodes for h in r.published.values()]
            teacher = self.ensemble([m["teacher"] for m in loaded]) if len(loaded) > 1 else loaded[0]["teacher"]
            shares = [float(r.num_train) for r in nodes]
        blob, result, variant = distill_student(
            loaded,
            teacher,
            shares,
            self.distill,
            self._spec(),
            seed=self.seed,
            progress=lambda stage, done, total: self.progress(f"distill:{stage}", done, total),
        )
        # the configuration as run, facts included (which variant ran), is what the chain's hash covers
        self.config_document = {**self.config, "variant": variant}
        config_hash = config_digest(self.config_document)
        student_hash = self.store.put(blob)
        if not self.registry.model(student_hash).registered:
            receipt = self.registry.commit_student(
                student_hash,
                self.run_id,
                sources,
                self.distill.method,
                config_hash,
                len(result.transfer),
                self.uri,
                self.distiller,
            )
            self.ledger.tx("StudentCommitted", receipt, model=student_hash.hex())
        self.ledger.student_hash = student_hash
        self.ledger.distill = {
            "method": self.distill.method,
            "variant": variant,
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
        deadline = self.registry.deadline()
        contents = {}
        for r in self.active:
            models = [student] + ([r.teacher_hash] if self.federation.mode == "one-shot" and r.teacher_hash else [])
            models += list(self.ledger.aggregates.values())
            attest = [h for h in models if self.registry.accuracy(h, r.address)[2] == 0]
            contents[r.node_id] = RecordDict(
                {
                    "task": self._task(nonce=self.registry.nonce(r.address), deadline=deadline, attest=attest),
                    "models": ArrayRecord({h.hex(): blob_to_array(self.store.get(h)) for h in models}),
                }
            )
        replies = self._exchange(grid, MessageType.EVALUATE, contents)
        for done, record in enumerate(self.active, 1):
            reply = replies.get(record.node_id)
            if self._failed(record, reply, "evaluate"):
                continue
            result = reply.content["attestations"]
            measured = dict(zip((bytes(h) for h in result["model-hashes"]), result["accuracy-bps"]))
            record.accuracy_bps = {h.hex(): int(b) for h, b in measured.items()}
            for i, (model_hash, signature) in enumerate(zip(result["signed-hashes"], result["signatures"])):
                model_hash = bytes(model_hash)
                att = Attestation(
                    node=record.address,
                    model_hash=model_hash,
                    run_id=self.run_id,
                    accuracy_bps=int(measured[model_hash]),
                    num_examples=int(result["num-examples"]),
                    nonce=int(result["nonce"]) + i,
                    deadline=deadline,
                )
                receipt = self.registry.attest(att, bytes(signature), self.relayer)
                self.ledger.tx("AccuracyAttested", receipt, node=record.address, model=model_hash.hex())
            self.progress("evaluate", done, len(contents))

    def run(self, grid: Grid) -> None:
        teachers = self.teachers_fedavg if self.federation.mode == "fedavg" else self.teachers_one_shot
        for name, phase in (
            ("identify", lambda: self.identify(grid)),
            ("teachers", lambda: teachers(grid)),
            ("distill", self.distill_student),
            ("evaluate", lambda: self.evaluate(grid)),
        ):
            start = time.perf_counter()
            phase()
            self.ledger.phase_seconds[name] = time.perf_counter() - start


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
