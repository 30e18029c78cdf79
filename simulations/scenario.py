"""The scenario file: one YAML document, validated into these models (docs/configuration.md).

Unknown keys and wrong types are errors that name the field; so are unknown datasets, models and
methods, and a dataset path that does not exist, all before anything starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from chain.errors import ConfigError
from chain.registry import checksummed
from chain.safejson import nesting_depth
from node.config import (
    DataConfig,
    DistillConfig,
    FaultConfig,
    FederationConfig,
    PrivacyConfig,
    Strict,
    TeacherConfig,
    config_digest,
)
from node.data import LOADERS, PATH_DATASETS
from node.dfkd import METHODS, MethodError
from node.models import MODELS, has_batch_norm


class ScenarioError(ConfigError):
    """A mistake in a scenario file; the message names the file and the field."""


class ChainConfig(Strict):
    rpc_url: str | None = Field(None, description="JSON-RPC endpoint; empty runs the embedded py-evm chain")
    registry: str | None = Field(None, description="address of an existing ModelRegistry to reuse (rpc_url only)")
    admin_key: Path | None = Field(
        None, description="key file of the existing registry's admin (with `registry`, unless dev_keys)"
    )
    data_nodes: list[str] | None = Field(
        None,
        description="the data nodes' own addresses, when each node holds its own key (Flower's Deployment "
        "Engine: a SuperNode's `key-file`); the admin grants them DATA_NODE and the run makes no node keys",
    )
    batch_size: int = Field(
        100,
        ge=1,
        le=200,
        description="signed records per transaction: a phase's publications go in registerTeachers, its "
        "attestations in attestBatch, and the admin's grants in one multicall, this many at a time (1: each "
        "alone); every signature is still checked on-chain",
    )
    merkle_leaves: int = Field(
        0,
        ge=0,
        le=4096,
        description="0: every publication is its own on-chain record, its signature checked by the contract; N: "
        "a phase's publications are committed as Merkle roots of up to N leaves each (a few hundred gas per "
        "record), their proofs in the run's merkle/ folder, each checked by whoever reads it and on-chain when "
        "its node attests (docs/contracts.md)",
    )
    dev_keys: bool = Field(
        False,
        description="on a JSON-RPC chain, derive every party's key from the seed (reproducible, and anyone who "
        "reads the scenario can sign as any party: a warning goes in the report); the embedded chain always "
        "does, elsewhere every party gets a fresh random key",
    )


class SimulationConfig(Strict):
    cpus_per_node: float = Field(1.0, gt=0, description="Ray CPUs per simulated node")
    num_cpus: int | None = Field(None, ge=1, description="CPUs Ray may use (default: all)")


class Scenario(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="names the run directory")
    seed: int = 0
    nodes: int = Field(4, ge=1, le=1000)
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    distill: DistillConfig = DistillConfig()
    federation: FederationConfig = FederationConfig()
    faults: FaultConfig = FaultConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    chain: ChainConfig = ChainConfig()
    simulation: SimulationConfig = SimulationConfig()

    @model_validator(mode="after")
    def _names_exist(self):
        if self.data.dataset not in LOADERS:
            raise ValueError(
                f"data.dataset: unknown dataset {self.data.dataset!r} (known: {', '.join(sorted(LOADERS))})"
            )
        self._check_local_data()
        partition_nodes = self.nodes - len(self.data.local)
        if self.data.dataset in PATH_DATASETS and partition_nodes:
            path = self.data.path or PATH_DATASETS[self.data.dataset]
            if not Path(path).is_dir():
                raise ValueError(
                    f"data.path: {path} does not exist (dataset {self.data.dataset!r} is read from a local folder)"
                )
        for field, name in (("teacher.model", self.teacher.model), ("distill.student", self.distill.student)):
            if name not in MODELS:
                raise ValueError(f"{field}: unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
        if self.distill.method not in METHODS:
            raise ValueError(
                f"distill.method: unknown method {self.distill.method!r} (known: {', '.join(sorted(METHODS))})"
            )
        if self.distill.method == "kd":
            raise ValueError(
                "distill.method: kd distils on real data, which no distiller has; it is for benchmarks only"
            )
        try:
            METHODS[self.distill.method].Options(**self.distill.options)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"distill.options.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        if self.federation.seal_artifacts and self.federation.mode == "fedavg":
            raise ValueError(
                "federation.seal_artifacts: fedavg aggregates plaintext updates; sealing is for one-shot runs"
            )
        if self.distill.init == "fedavg-once":
            self._check_fedavg_start()
        if self.distill.method == "deepinversion" and not has_batch_norm(self.teacher.model):
            raise ValueError(
                f"distill.method: deepinversion matches BatchNorm statistics, and {self.teacher.model} has none"
            )
        if self.privacy.enabled:
            self._check_private()
        if self.federation.min_nodes > self.nodes:
            raise ValueError(f"federation.min_nodes: {self.federation.min_nodes} is more than the {self.nodes} nodes")
        for phase in ("train", "evaluate"):
            bad = [p for p in getattr(self.faults, phase) if not 0 <= p < self.nodes]
            if bad:
                raise ValueError(f"faults.{phase}: partitions {bad} do not exist (0..{self.nodes - 1})")
        if self.chain.data_nodes is not None:
            if len(self.chain.data_nodes) != self.nodes:
                raise ValueError(f"chain.data_nodes: {len(self.chain.data_nodes)} addresses for {self.nodes} nodes")
            if not self.chain.rpc_url:
                raise ValueError("chain.data_nodes: nodes with their own keys need chain.rpc_url (a deployment)")
            for address in self.chain.data_nodes:
                checksummed(address, "chain.data_nodes:")
        if self.chain.registry and not self.chain.rpc_url:
            raise ValueError("chain.registry: reusing a registry needs chain.rpc_url (the embedded chain starts empty)")
        return self

    def _check_fedavg_start(self) -> None:
        """A student started from the teachers' average needs that average, in its own architecture."""
        if self.federation.mode != "one-shot" or self.nodes < 2 or not self.federation.evaluate_fedavg_once:
            raise ValueError(
                "distill.init: fedavg-once starts from the teachers averaged once, which needs a one-shot run of "
                "two or more nodes with federation.evaluate_fedavg_once"
            )
        if self.distill.student != self.teacher.model:
            raise ValueError(
                f"distill.init: fedavg-once averages {self.teacher.model} teachers, so distill.student must be "
                f"{self.teacher.model}, not {self.distill.student}"
            )

    def _check_private(self) -> None:
        """DP-SGD as configured, or one line saying why not: never a silent substitution."""
        if self.federation.mode == "fedavg":
            raise ValueError("privacy.epsilon: DP teachers are one-shot only for now (fedavg is not supported yet)")
        if has_batch_norm(self.teacher.model):
            alternative = self.teacher.model.replace("-bn", "-gn")
            hint = (
                f"; use {alternative} (GroupNorm)"
                if alternative in MODELS and alternative != self.teacher.model
                else ""
            )
            raise ValueError(
                f"teacher.model: {self.teacher.model} has BatchNorm, which mixes a batch's examples: DP-SGD needs "
                f"per-sample gradients{hint}"
            )
        if getattr(METHODS[self.distill.method].Options(**self.distill.options), "node_ebm", False):
            raise ValueError(
                f"distill.options.node_ebm: {self.distill.method}'s node-side EBM is trained on private data "
                "without DP; set it to false with privacy.epsilon"
            )

    def _check_local_data(self) -> None:
        """Nodes with their own files: indices that exist, paths that exist (their contents are the node's to read)."""
        for index, source in self.data.local.items():
            if not 0 <= index < self.nodes:
                raise ValueError(f"data.local: node {index} does not exist (0..{self.nodes - 1})")
            for field, path in (("path", source.path), ("test_path", source.test_path)):
                if path is not None and not _exists(path):
                    raise ValueError(f"data.local.{index}.{field}: {path} does not exist{self._export_hint(path)}")

    def _export_hint(self, path: Path) -> str:
        """The command that writes a missing folder laid out as `kdledger data export-folders` lays them out."""
        parts = Path(path).parts
        if len(parts) < 2 or parts[-1] not in ("train", "test") or not re.fullmatch(r"node-\d+", parts[-2]):
            return ""
        data = self.data
        split = {"dirichlet": f" --alpha {data.alpha}", "pathological": f" --classes-per-node {data.classes_per_node}"}
        return (
            f"; `kdledger data export-folders --dataset {data.dataset} --nodes {self.nodes} "
            f"--out {Path(*parts[:-2])} --partitioner {data.partitioner}{split.get(data.partitioner, '')} "
            f"--seed {self.seed}` writes it"
        )

    def decisive(self) -> dict:
        """Everything that decides the result (not where the chain runs or how many CPUs); `privacy` only when
        DP is on, so that the configuration hash of a run without DP is what it was before the section existed."""
        sections = {"seed", "nodes", "data", "teacher", "distill", "federation"}
        return self.model_dump(mode="json", include=sections | ({"privacy"} if self.privacy.enabled else set()))

    def config_hash(self) -> bytes:
        return config_digest(self.decisive())


def _exists(path: Path) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: no such file either
        return False


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {msg}" if where and not msg.startswith(where) else msg)
    return "; ".join(lines)


MAX_SCENARIO_BYTES = 1 << 20
MAX_FLOW_DEPTH = 32  # PyYAML's scanner is quadratic in [ { nesting: 50 000 deep took 68 s before it failed
_QUOTED_OR_COMMENT = re.compile(rb'"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*')


class _PlainYAML(yaml.SafeLoader):
    """YAML without aliases: a scenario never needs them, and nested aliases expand exponentially
    (the "billion laughs") once the document is copied, validated or hashed."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.MarkedYAMLError(problem="aliases (*name) are not allowed in a scenario", problem_mark=mark)
        return super().compose_node(parent, index)


MAX_EXTENDS = 8  # files in one `extends` chain


def load_scenario(path: Path, overrides: Sequence[str] = ()) -> Scenario:
    """Read and validate a scenario; `overrides` are 'dotted.key=yaml-value' edits applied first."""
    path = Path(path)
    raw = _read_extended(path, ())
    for item in overrides:
        apply_override(raw, item)
    where = f"{path} (with --set {' '.join(overrides)})" if overrides else f"{path}"
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(f"{where}: {_format(exc)}") from None


def _read_extended(path: Path, seen: tuple[Path, ...]) -> dict:
    """The file's keys over those of the scenario it `extends` (a path relative to it), section by section."""
    raw = _read(path)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ScenarioError(f"{path}: extends: expected the path of another scenario file, relative to this one")
    seen = (*seen, path.resolve())
    parent = path.parent / base
    if parent.resolve() in seen:
        raise ScenarioError(f"{path}: extends: {base} extends this file again (a cycle)")
    if len(seen) >= MAX_EXTENDS:
        raise ScenarioError(f"{path}: extends: more than {MAX_EXTENDS} files in one chain")
    return _merged(_read_extended(parent, seen), raw)


def _merged(base: dict, over: dict) -> dict:
    """`over` on top of `base`: sections merge key by key, any other value replaces the base's."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read(path: Path) -> dict:
    """One scenario file as a mapping, bounded in size and nesting before it is parsed."""
    try:
        data = path.read_bytes()
        if len(data) > MAX_SCENARIO_BYTES:
            raise ScenarioError(f"{path}: {len(data)} bytes; a scenario is at most {MAX_SCENARIO_BYTES}")
        if nesting_depth(data, _QUOTED_OR_COMMENT) > MAX_FLOW_DEPTH:
            raise ScenarioError(f"{path}: brackets nested deeper than {MAX_FLOW_DEPTH}")
        raw = yaml.load(data, Loader=_PlainYAML)  # noqa: S506 - a SafeLoader subclass
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except RecursionError:
        raise ScenarioError(f"{path}: nested too deep") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ScenarioError(f"{path}:{where}: {problem if 'alias' in problem else 'not valid YAML'}") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: a scenario is a mapping of keys (name, nodes, data, ...)")
    return raw


def apply_override(raw: dict, item: str) -> None:
    """'distill.options.iterations=300' sets raw['distill']['options']['iterations'] = 300 (value read as YAML).

    Validation happens afterwards on the whole scenario, so a misspelt key fails there like one in the file.
    """
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ScenarioError(f"--set {item!r}: expected dotted.key=value, e.g. distill.method=softtarget")
    if nesting_depth(text, _QUOTED_OR_COMMENT) > MAX_FLOW_DEPTH:
        raise ScenarioError(f"--set {item[:60]!r}: brackets nested deeper than {MAX_FLOW_DEPTH}")
    try:
        value = yaml.load(text, Loader=_PlainYAML)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError):
        raise ScenarioError(f"--set {item!r}: the value is not valid YAML") from None
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ScenarioError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


__all__ = ["Scenario", "ScenarioError", "load_scenario", "MethodError"]
