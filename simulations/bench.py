"""`kdledger bench dfkd`: every method on the same teacher, sample count and student budget.

The teacher is trained once on the dataset's train split and cached under a name that is the hash
of its configuration (and its file's SHA-256 is checked on load). Each method then makes its
transfer set; methods that need something from the data's owner (GenKD's EBM) get it trained on the
same train split, as a data node would, and that time is reported apart. Students are evaluated on
the test split, which no method and no choice here ever sees before.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from node.artifacts import ArtifactStore, serialize
from node.config import DataConfig
from node.data import Split, load_dataset
from node.dfkd import METHODS, InputSpace, MethodError, build_synthesizer, distill, resolve_device
from node.models import build_model
from node.training import accuracy, train_classifier


@dataclass
class BenchRow:
    method: str
    options: dict
    samples: int
    node_s: float
    synthesis_s: float
    training_s: float
    student_accuracy: float
    student_steps: int = 0
    gap_to_kd: float | None = None
    variant: str = ""


def split_methods(text: str) -> list[str]:
    """'noise,genkd:k=10,conditional=false,kd' -> ['noise', 'genkd:k=10,conditional=false', 'kd'].

    A method name never holds '=', so a piece with '=' and no ':' is one more option of the method before it.
    """
    specs: list[str] = []
    for piece in (p.strip() for p in text.replace(";", ",").split(",")):
        if not piece:
            continue
        if "=" in piece and ":" not in piece and specs:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def parse_method(spec: str) -> tuple[str, dict]:
    """'genkd:k=10,conditional=false' -> ('genkd', {'k': 10, 'conditional': False})."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise MethodError(f"--methods {spec!r}: expected key=value after ':', got {item!r}")
        options[key.strip()] = yaml.safe_load(value)
    if name not in METHODS:
        raise MethodError(f"--methods: unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    METHODS[name].Options(**options)  # unknown or ill-typed options fail before any training
    return name, options


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def cached_teacher(data: DataConfig, name: str, epochs: int, seed: int, train: Split, cache: Path,
                   device: torch.device, progress) -> torch.nn.Module:
    """Train the teacher once; later runs load it by the hash of its configuration."""
    key = hashlib.sha256(json.dumps({"data": data.model_dump(mode="json"), "teacher": name, "epochs": epochs,
                                     "seed": seed}, sort_keys=True).encode()).hexdigest()[:16]
    index, store = cache / f"teacher-{key}.json", ArtifactStore(cache / "store")
    spec_shape, classes = tuple(train.x.shape[1:]), int(train.y.max()) + 1
    if index.exists():
        model_hash = bytes.fromhex(json.loads(index.read_text())["sha256"])
        return store.load(model_hash, owner=f"the benchmark cache {cache}").to(device)
    torch.manual_seed(seed)
    model = build_model(name, spec_shape, classes)
    progress("teacher", 0, epochs)
    for epoch in range(epochs):
        train_classifier(model, train, epochs=1, lr=1e-3, batch_size=128, seed=seed + epoch)
        progress("teacher", epoch + 1, epochs)
    model_hash = store.put(serialize(model, name, spec_shape, classes))
    index.write_text(json.dumps({"sha256": model_hash.hex(), "teacher": name, "epochs": epochs}))
    return model.to(device)


def bench_dfkd(
    *, dataset: str, data_path: Path | None, teacher_name: str, student_name: str, methods: list[str], samples: int,
    teacher_epochs: int, student_epochs: int, lr: float, batch_size: int, temperature: float, seed: int,
    device: str, cache: Path, progress: Callable[[str, int, int], None] = lambda *a: None,
    on_row: Callable[[dict], None] = lambda result: None,
) -> dict:
    """Run every method; `on_row` gets the table so far after each one, so a stopped run keeps its rows."""
    parsed = [parse_method(m) for m in methods]
    torch.manual_seed(seed)
    data = DataConfig(dataset=dataset, path=data_path)
    x_train, y_train, spec = load_dataset(data, "train")
    x_test, y_test, _ = load_dataset(data, "test") if dataset != "digits" else (None, None, None)
    if x_test is None:  # digits has no official split: hold out a fixed fifth
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(12345)).numpy()
        cut = len(order) // 5
        x_test, y_test, x_train, y_train = x_train[order[:cut]], y_train[order[:cut]], x_train[order[cut:]], y_train[order[cut:]]
    train, test = Split(torch.from_numpy(x_train), torch.from_numpy(y_train)), Split(torch.from_numpy(x_test), torch.from_numpy(y_test))
    dev = resolve_device(device)
    teacher = cached_teacher(data, teacher_name, teacher_epochs, seed, train, cache, dev, progress).eval()
    teacher_acc = accuracy(teacher.cpu(), test)
    teacher.to(dev)
    space = InputSpace(spec.input_shape, *spec.bounds)
    def summarise(rows: list[BenchRow], pending: int) -> dict:
        kd = next((r.student_accuracy for r in rows if r.method == "kd"), None)
        for r in rows:
            r.gap_to_kd = None if kd is None else kd - r.student_accuracy
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(), "device": str(dev),
            "dataset": dataset, "teacher": teacher_name, "student": student_name, "teacher_accuracy": teacher_acc,
            "samples": samples, "teacher_epochs": teacher_epochs, "student_epochs": student_epochs, "lr": lr,
            "batch_size": batch_size, "temperature": temperature, "seed": seed, "train_size": len(train),
            "test_size": len(test), "rows": [asdict(r) for r in rows], "pending_methods": pending,
            "note": "student steps count the optimizer steps an online method (genkd) gave the student while generating",
        }

    rows: list[BenchRow] = []
    for name, options in parsed:
        label = name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")
        torch.manual_seed(seed)
        student = build_model(student_name, spec.input_shape, spec.num_classes).to(dev)
        syn = build_synthesizer(name, teacher, student, space, options, samples=samples, seed=seed, device=dev)
        t0 = time.perf_counter()
        node_models = METHODS[name].node_side(
            teacher, build_model(student_name, spec.input_shape, spec.num_classes).to(dev), train.x.to(dev),
            train.y.to(dev), options, seed=seed, space=space)
        node_s = time.perf_counter() - t0
        variant = syn.use_node_models([node_models])
        if name == "kd":
            syn.use_real_data(train.x)
        result = distill(syn, epochs=student_epochs, lr=lr, batch_size=batch_size, temperature=temperature, seed=seed,
                         progress=lambda stage, done, total, label=label: progress(f"{label} {stage}", done, total))
        rows.append(BenchRow(label, options, len(result.transfer), node_s, result.synthesis_s, result.training_s,
                             accuracy(result.student.cpu(), test), result.student_steps, variant=variant))
        on_row(summarise(rows, pending=len(parsed) - len(rows)))
    return summarise(rows, pending=0)


def to_markdown(result: dict, command: str) -> str:
    lines = [
        f"`{command}`", "",
        f"{result['date']}, {result['machine']}, device {result['device']}. {result['dataset']}: teacher "
        f"{result['teacher']} ({result['teacher_epochs']} epochs, test accuracy {100 * result['teacher_accuracy']:.2f}%), "
        f"student {result['student']}; every method {result['samples']} synthetic samples and {result['student_epochs']} "
        f"student epochs (Adam {result['lr']}, batch {result['batch_size']}, T {result['temperature']}), seed {result['seed']}; "
        f"accuracy on the {result['test_size']} test images."
        + (f" **Partial: {result['pending_methods']} method(s) still to run.**" if result.get("pending_methods") else ""), "",
        "| method | samples | node-side s | synthesis s | student train s | student steps | student acc % | gap to kd (points) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        gap = "-" if r["gap_to_kd"] is None else f"{100 * r['gap_to_kd']:.2f}"
        lines.append(f"| `{r['method']}` | {r['samples']} | {r['node_s']:.1f} | {r['synthesis_s']:.1f} | "
                     f"{r['training_s']:.1f} | {r['student_steps']} | {100 * r['student_accuracy']:.2f} | {gap} |")
    return "\n".join(lines) + "\n"


def bench_scale(scenario_path: Path, counts: list[int], out: Path, rpc_url: str | None = None,
                progress=lambda *a: None) -> dict:
    """One scenario at several node counts: wall time per phase and the share spent on chain work.

    `rpc_url` runs every count against that chain (e.g. `kdledger devnet`) instead of the scenario's.
    """
    import math

    from simulations.runner import run_scenario
    from simulations.scenario import load_scenario

    base = load_scenario(scenario_path)
    rows = []
    for n in counts:
        federation = base.federation.model_copy(update={"min_nodes": max(1, math.ceil(0.9 * n))})
        update = {"name": f"{base.name}-n{n}", "nodes": n, "federation": federation}
        if rpc_url:
            update["chain"] = base.chain.model_copy(update={"rpc_url": rpc_url, "registry": None})
        spec = base.model_copy(update=update)
        spec = type(base).model_validate(spec.model_dump())  # re-validate the changed scenario
        result = run_scenario(spec, out / f"n{n}", progress=progress)
        phases = result.ledger.phase_seconds
        chain_s = phases.get("chain (within phases)", 0.0)
        rows.append({
            "nodes": n, "wall_s": result.wall_s, "chain_s": chain_s, "chain_share": chain_s / result.wall_s,
            "phases": {k: v for k, v in phases.items() if k != "chain (within phases)"},
            "transactions": len(result.chain["transactions"]),
            "student_accuracy": weighted_student_accuracy(result),
        })
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine(),
            "scenario": str(scenario_path), "chain": rpc_url or base.chain.rpc_url or "embedded py-evm", "rows": rows}


def weighted_student_accuracy(result) -> float | None:
    from simulations.report import node_rows, weighted_mean

    return weighted_mean(node_rows(result), "student_accuracy")


def scale_markdown(result: dict, command: str) -> str:
    rows = result["rows"]
    first = rows[0]
    lines = [
        f"`{command}`", "", f"{result['date']}, {result['machine']}; scenario {result['scenario']}; "
        f"chain {result['chain']}.", "",
        "| nodes | wall s | per node s | x first row's per-node time | identify s | teachers s | distill s | evaluate s "
        "| chain s | chain share | transactions | student acc % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = r["phases"]
        per_node = r["wall_s"] / r["nodes"]
        acc = "-" if r["student_accuracy"] is None else f"{100 * r['student_accuracy']:.2f}"
        lines.append(
            f"| {r['nodes']} | {r['wall_s']:.1f} | {per_node:.2f} | {per_node / (first['wall_s'] / first['nodes']):.2f} "
            f"| {p.get('identify', 0):.1f} | {p.get('teachers', 0):.1f} | {p.get('distill', 0):.1f} "
            f"| {p.get('evaluate', 0):.1f} | {r['chain_s']:.1f} | {100 * r['chain_share']:.1f}% | {r['transactions']} | {acc} |")
    return "\n".join(lines) + "\n"
