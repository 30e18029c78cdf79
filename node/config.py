"""The configuration a node acts on. simulations.scenario composes these into a scenario.

Every model forbids unknown keys, so a typo in YAML is an error that names the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from node.dfkd import DEFAULT_METHOD, StudentLoop


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalData(Strict):
    """A node's own files, read instead of a partition of the public dataset (docs/data.md)."""

    format: Literal["imagefolder", "huggingface", "parquet", "csv"] = Field(
        description="imagefolder: root/<class>/*.png|jpg|jpeg; huggingface: a dataset saved with save_to_disk; "
        "parquet, csv: a table"
    )
    path: Path = Field(description="the train split (a folder, a saved dataset or a table file)")
    test_path: Path | None = Field(None, description="the test split, in the same format")
    test_fraction: float | None = Field(
        None, gt=0, lt=1, description="without test_path: the share held out (default data.test_fraction)"
    )
    label_column: str = Field("label", description="tables and datasets: the class (an id, or a class name)")
    image_column: str | None = Field(
        None,
        description="tables and datasets: the column holding each image (encoded bytes, an image, or an array "
        "of pixels); default `image` where there is one, else every column but the label is a pixel",
    )

    @model_validator(mode="after")
    def _one_test_split(self):
        if self.test_path is not None and self.test_fraction is not None:
            raise ValueError("test_path and test_fraction: name one test split, not both")
        return self


class DataConfig(Strict):
    dataset: str = "digits"
    path: Path | None = Field(None, description="folder with the dataset's files (not needed for digits)")
    partitioner: Literal["dirichlet", "iid", "pathological"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: smaller is more heterogeneous")
    classes_per_node: int = Field(2, ge=1, description="pathological partitioner: classes each node holds")
    min_partition_size: int = Field(40, ge=1)
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="share of each node's partition kept as its private test split"
    )
    local: dict[int, LocalData] = Field(
        default_factory=dict,
        description="nodes that read their own files, by node index; the other nodes keep their partition",
    )

    @model_serializer(mode="wrap")
    def _without_empty_local(self, handler):
        # A scenario without local data dumps as it did before `local` existed: same config hash, same task.
        dumped = handler(self)
        if not self.local:
            dumped.pop("local", None)
        return dumped

    def __hash__(self) -> int:  # `local` is a dict: hash the canonical JSON (the splits are cached by config)
        return hash(self.model_dump_json())


class TeacherConfig(Strict):
    model: str = "digits-cnn"
    epochs: int = Field(20, ge=1, description="local epochs (per round in fedavg mode)")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    augment: bool = Field(False, description="shift every batch by up to 2 pixels (and mirror where the data allows)")
    cosine: bool = Field(False, description="cosine learning-rate schedule over the epochs (per round in fedavg mode)")


class DistillConfig(StudentLoop):
    """The distiller's work: which method makes the inputs, which student learns, and how (StudentLoop's fields)."""

    method: str = Field(DEFAULT_METHOD, description="a data-free method by name (node/dfkd)")
    student: str = "digits-cnn-half"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(
        1,
        ge=0,
        description="torch threads of the distiller on CPU: a float sum depends on how it is split between "
        "threads, so only a fixed count gives the same student hash on every machine; 0: every core "
        "(faster, the hash then depends on the core count)",
    )
    options: dict = Field(default_factory=dict, description="the method's own settings (see docs/configuration.md)")
    init: Literal["random", "fedavg-once"] = Field(
        "random",
        description="the student's starting weights: random, or the nodes' teachers averaged once (FedDF's start; "
        "one-shot, with the teachers' architecture as student); the average is then part of the student's lineage",
    )

    @model_serializer(mode="wrap")
    def _without_random_init(self, handler):
        # A scenario with a random start dumps as it did before `init` existed: same config hash, same task.
        dumped = handler(self)
        if self.init == "random":
            dumped.pop("init", None)
        return dumped


class FederationConfig(Strict):
    mode: Literal["one-shot", "fedavg"] = Field(
        "one-shot",
        description="one-shot: every node trains its own teacher once (DENSE's setting); "
        "fedavg: a Flower strategy builds one global teacher over `rounds`",
    )
    rounds: int = Field(3, ge=1, description="fedavg rounds")
    strategy: str = Field("FedAvg", description="a strategy of flwr.serverapp.strategy, by name")
    min_nodes: int = Field(1, ge=1, description="the run fails if fewer nodes complete training")
    ensemble_weights: Literal["samples", "uniform", "label-counts"] = Field(
        "samples",
        description="one-shot ensemble: logits weighted per node by its train size, uniformly, or per node "
        "and class by the class histogram signed inside each teacher's file",
    )
    evaluate_ensemble: bool | None = Field(
        None, description="nodes also attest the ensemble (default: 10 nodes or fewer)"
    )
    evaluate_fedavg_once: bool = Field(True, description="one-shot: also attest the teachers' weights averaged once")
    seal_artifacts: bool = Field(
        False,
        description="one-shot: nodes encrypt their files for the distiller (X25519, "
        "AES-GCM); the coordinator keeps and relays only ciphertext",
    )


class PrivacyConfig(Strict):
    """Differential privacy of the teachers: each node trains with DP-SGD (Opacus) to a target (epsilon, delta)
    over the teacher's epochs, and publishes what its accountant spent inside the teacher's signed file."""

    epsilon: float | None = Field(
        None, gt=0, description="target epsilon of each node's teacher (DP-SGD); null: no DP (the default)"
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="target delta; keep it below 1 / (a node's train examples)")
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient clipping norm")
    accountant: Literal["prv", "rdp"] = Field("prv", description="Opacus accountant: PRV (tighter) or RDP")
    seeded_noise: bool = Field(
        True,
        description="draw the noise and the batches from the scenario's seed: runs repeat, and whoever knows the "
        "seed knows the noise; false: from the operating system's randomness (runs no longer repeat; torch's "
        "generator, not a cryptographic one)",
    )

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None


class FaultConfig(Strict):
    """Fault injection, to see a federation survive: these partitions raise in that phase."""

    train: list[int] = Field(default_factory=list)
    evaluate: list[int] = Field(default_factory=list)


def config_digest(document: dict) -> bytes:
    """SHA-256 of a configuration's canonical JSON: what commitStudent records as configHash."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).digest()
