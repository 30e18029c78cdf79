"""Privacy you can measure, over a run directory: each teacher's published (epsilon, delta), the leakage meter
(`kdledger privacy RUN_DIR`) and the privacy-utility benchmark (`kdledger bench privacy`).

In a simulation every node's private splits are recomputed from the scenario, exactly as the node computed
them in the run; a deployed node would run node/privacy.py's meters on its own data the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from safetensors.torch import load as st_load

from chain.errors import ConfigError
from node.artifacts import (
    ArtifactStore,
    Expected,
    PrivacySpent,
    canonical_safetensors,
    deserialize,
    load_seal_key,
    read_header,
    sha256,
)
from node.data import node_splits, spec_of
from node.models import Classifier
from node.privacy import inversion_closeness, membership_inference

if TYPE_CHECKING:
    from simulations.scenario import Scenario

SYNTHETIC_FILE = "synthetic.safetensors"
MAX_SYNTHETIC = 2048  # bounded: enough for nearest-neighbour statistics, a few MB at 28x28
SEAL_KEY = Path("keys") / "distiller-x25519.key"


def save_synthetic(transfer: torch.Tensor | None, out_dir: Path) -> Path | None:
    """Up to MAX_SYNTHETIC of the distiller's synthetic inputs, evenly spread over the run, as safetensors."""
    if transfer is None or not len(transfer):
        return None
    keep = torch.linspace(0, len(transfer) - 1, min(len(transfer), MAX_SYNTHETIC)).round().long()
    path = out_dir / SYNTHETIC_FILE
    path.write_bytes(canonical_safetensors({"x": transfer[keep].float()}, {"made": str(len(transfer))}))
    return path


def load_synthetic(run_dir: Path) -> torch.Tensor:
    path = Path(run_dir) / SYNTHETIC_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {SYNTHETIC_FILE} (a run directory written before the leakage meter)")
    return st_load(path.read_bytes())["x"]


def run_store(run_dir: Path) -> ArtifactStore:
    """The run's store, opened with the distiller's seal key when the run sealed its files and kept the key."""
    key = Path(run_dir) / SEAL_KEY
    return ArtifactStore(Path(run_dir) / "store", load_seal_key(key) if key.is_file() else None)


def published_privacy(blob: bytes, model_hash: bytes) -> PrivacySpent | None:
    """The (epsilon, delta) inside a teacher's file, read only once the file hashes to `model_hash`."""
    if sha256(blob) != model_hash:
        return None
    return read_header(blob)[0].privacy


def teacher_privacy(run_dir: Path, teacher_hash: str | None) -> PrivacySpent | None:
    if not teacher_hash:
        return None
    model_hash = bytes.fromhex(teacher_hash.removeprefix("0x"))
    return published_privacy(run_store(run_dir).get(model_hash), model_hash)


def epsilon_text(privacy: PrivacySpent | dict | None) -> str:
    """'2.97 (δ 1e-05)', or '∞' for a teacher trained without DP."""
    if privacy is None:
        return "∞"
    p = privacy if isinstance(privacy, dict) else privacy.model_dump()
    return f"{p['epsilon']:.2f} (δ {p['delta']:g})"


def load_run(run_dir: Path) -> tuple[Scenario, dict]:
    """The scenario as it ran and its metrics.json."""
    from simulations.scenario import Scenario

    run_dir = Path(run_dir)
    try:
        scenario = Scenario.model_validate(yaml.safe_load((run_dir / "scenario.yaml").read_text()))
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run_dir}: not a readable kdledger run directory ({type(exc).__name__})") from None
    return scenario, metrics


def node_teachers(run_dir: Path) -> tuple[Scenario, list[tuple[dict, bytes, Classifier]]]:
    """A run's scenario and, per node that published one: its metrics row, its teacher file's
    bytes and the teacher, each file checked against the hash the run recorded before it is parsed."""
    scenario, metrics = load_run(run_dir)
    spec = spec_of(scenario.data.dataset)
    expected = Expected((scenario.teacher.model,), spec.input_shape, spec.num_classes)
    store = run_store(run_dir)
    teachers = []
    for row in metrics["nodes"]:
        if row.get("teacher_hash"):
            model_hash = bytes.fromhex(row["teacher_hash"])
            blob = store.get(model_hash, owner=f"node {row['node']}")
            teacher = deserialize(blob, model_hash, expected, owner=f"node {row['node']}")
            assert isinstance(teacher, Classifier)
            teachers.append((row, blob, teacher))
    return scenario, teachers


def measure_run(run_dir: Path, progress: Callable[[int, int], None] = lambda done, total: None) -> dict:
    """Per node: its teacher's published privacy, the membership attack on it and the inversion closeness of
    the run's synthetic inputs to its data. Written to RUN_DIR/privacy.json."""
    run_dir = Path(run_dir)
    scenario, nodes = node_teachers(run_dir)
    synthetic = load_synthetic(run_dir)
    rows = []
    for done, (row, blob, teacher) in enumerate(nodes, 1):
        train, test = node_splits(scenario.data, row["partition"], scenario.nodes, scenario.seed)
        privacy = published_privacy(blob, bytes.fromhex(row["teacher_hash"]))
        rows.append(
            {
                "node": row["node"],
                "partition": row["partition"],
                "teacher_hash": "0x" + row["teacher_hash"],
                "privacy": privacy.model_dump() if privacy else None,
                "teacher_accuracy": row.get("teacher_accuracy"),
                "student_accuracy": row.get("student_accuracy"),
                "membership": membership_inference(teacher, train, test),
                "inversion": inversion_closeness(teacher, synthetic, train, test, seed=scenario.seed),
            }
        )
        progress(done, len(nodes))
    result = {"run": str(run_dir), "scenario": scenario.name, "synthetic": len(synthetic), "nodes": rows}
    (run_dir / "privacy.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def summary(result: dict) -> dict:
    """One run's means over its nodes (the bench's row)."""
    rows = result["nodes"]

    def mean(values: Sequence[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    epsilons = [r["privacy"]["epsilon"] for r in rows if r["privacy"]]
    return {
        "max_epsilon": max(epsilons) if rows and len(epsilons) == len(rows) else None,  # None: a teacher without DP
        "teacher_accuracy": mean([r["teacher_accuracy"] for r in rows]),
        "student_accuracy": mean([r["student_accuracy"] for r in rows]),
        "mia_auc": mean([r["membership"]["auc"] for r in rows]),
        "mia_tpr_at_1pct_fpr": mean([r["membership"]["tpr_at_1pct_fpr"] for r in rows]),
        "closer_to_train_pixels": mean([r["inversion"]["pixels"]["closer_to_train"] for r in rows]),
        "closer_to_train_features": mean([r["inversion"]["features"]["closer_to_train"] for r in rows]),
    }


def bench_privacy(
    scenario_path: Path,
    epsilons: Sequence[float | None],
    out: Path,
    overrides: Sequence[str] = (),
    progress=lambda *a: None,
    on_row: Callable[[dict], None] = lambda result: None,
) -> dict:
    """The scenario once per epsilon (None: no DP), each run measured: teachers', student's accuracy and
    leakage, one row per epsilon."""
    from simulations.runner import run_scenario
    from simulations.scenario import load_scenario

    result: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "scenario": str(scenario_path),
        "overrides": list(overrides),
        "rows": [],
    }
    for epsilon in epsilons:
        label = "inf" if epsilon is None else f"{epsilon:g}"
        spec = load_scenario(scenario_path, [*overrides, f"privacy.epsilon={'null' if epsilon is None else epsilon}"])
        run = run_scenario(spec, out / f"eps-{label}", progress=progress)
        measured = measure_run(run.out_dir)
        per_node = [
            {k: r[k] for k in ("partition", "privacy", "teacher_accuracy", "student_accuracy")}
            | {"mia_auc": r["membership"]["auc"], "closer_to_train_pixels": r["inversion"]["pixels"]["closer_to_train"]}
            for r in measured["nodes"]
        ]
        result["rows"].append(
            {
                "target_epsilon": epsilon,
                "run_dir": str(run.out_dir),
                "wall_s": run.wall_s,
                **summary(measured),
                "nodes": per_node,
            }
        )
        on_row(result)
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def privacy_markdown(result: dict, command: str) -> str:
    lines = [
        f"`{command}`",
        "",
        f"{result['date']}; scenario {result['scenario']}"
        + (f" with {' '.join(result['overrides'])}" if result["overrides"] else "")
        + ". Accuracies are node means of what each node measured on its private test split; epsilon is the "
        "largest any node's accountant spent (from the signed teacher files); MIA is the loss-threshold attack "
        "on each node's teacher (members: its train split, non-members: its test split); closer-to-train is the "
        "share of synthetic inputs nearer a training image than any held-out one (0.5: no closer).",
        "",
        "| target ε | spent ε (max) | teacher acc % | student acc % | MIA AUC | MIA TPR @1% FPR "
        "| closer to train (pixels) | closer to train (features) | wall s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        target = "∞" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
        spent = "∞" if r["max_epsilon"] is None else f"{r['max_epsilon']:.3f}"
        lines.append(
            f"| {target} | {spent} | {_pct(r['teacher_accuracy'])} | {_pct(r['student_accuracy'])} "
            f"| {_num(r['mia_auc'])} | {_num(r['mia_tpr_at_1pct_fpr'])} | {_num(r['closer_to_train_pixels'])} "
            f"| {_num(r['closer_to_train_features'])} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"
