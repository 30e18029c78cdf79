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
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError

from chain.errors import ConfigError
from node.artifacts import ArtifactStore, Expected, serialize
from node.config import DataConfig
from node.data import Split, load_dataset, node_splits, spec_of
from node.dfkd import (
    METHODS,
    InputSpace,
    MethodError,
    StudentLoop,
    build_synthesizer,
    distill,
    method_class,
    resolve_device,
)
from node.models import Ensemble, Teacher, build_model
from node.training import accuracy, train_classifier
from simulations.plots import sample_grid
from simulations.privacy import load_run, node_teachers, run_store


@dataclass
class BenchRow:
    method: str
    options: dict
    budget_min: float | None  # wall-clock budget of the distillation, None: the fixed steps and samples
    seeds: list[int]
    accuracies: list[float]  # one per seed
    samples: int  # synthetic inputs made (seed mean)
    student_steps: int
    node_s: float  # seed means of the times below
    synthesis_s: float
    training_s: float
    wall_s: float  # node-side + synthesis + training
    cpu_s: float  # process CPU seconds of the same (all threads)
    variant: str = ""
    class_skew: float = 0.0  # most / least frequent teacher class in the bank
    curve: list[dict] = field(default_factory=list)  # the first seed's accuracy at the checkpoints
    gap_to_kd: float | None = None

    @property
    def accuracy(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def spread(self) -> float:
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


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
    METHODS[name].parse_options(options)  # unknown or ill-typed options fail before any training
    return name, options


def student_loop(settings: list[str]) -> StudentLoop:
    """--loop key=value pieces (values read as YAML) -> the validated student loop; errors name the key."""
    values = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep:
            raise MethodError(f"--loop {item!r}: expected key=value")
        values[key.strip()] = yaml.safe_load(value)
    try:
        return StudentLoop(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise MethodError(f"--loop {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def cached_teacher(
    data: DataConfig, name: str, epochs: int, seed: int, train: Split, cache: Path, device: torch.device, progress
) -> Teacher:
    """Train the teacher once; later runs load it by the hash of its configuration."""
    key = hashlib.sha256(
        json.dumps(
            {"data": data.model_dump(mode="json"), "teacher": name, "epochs": epochs, "seed": seed}, sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    index, store = cache / f"teacher-{key}.json", ArtifactStore(cache / "store")
    c, h, w = train.x.shape[1:]
    spec_shape, classes = (int(c), int(h), int(w)), int(train.y.max()) + 1
    if index.exists():
        model_hash = bytes.fromhex(json.loads(index.read_text())["sha256"])
        expected = Expected((name,), spec_shape, classes)
        return store.load(model_hash, expected, owner=f"the benchmark cache {cache}").to(device)
    torch.manual_seed(seed)
    model = build_model(name, spec_shape, classes)
    progress("teacher", 0, epochs)
    for epoch in range(epochs):
        train_classifier(model, train, epochs=1, lr=1e-3, batch_size=128, seed=seed + epoch)
        progress("teacher", epoch + 1, epochs)
    model_hash = store.put(serialize(model, name, spec_shape, classes))
    index.write_text(json.dumps({"sha256": model_hash.hex(), "teacher": name, "epochs": epochs}))
    return model.to(device)


def bench_splits(data: DataConfig, evaluate_on: str) -> tuple[Split, Split]:
    """The training images and the images students are scored on.

    `test`: the dataset's test split (what BENCHMARKS.md reports). `validation`: the last 10 000 training
    images (or a fifth of digits), for choosing settings without ever looking at the test split; the
    teacher has seen them, so validation accuracy is for comparing settings, not for reporting.
    """
    x_train, y_train, _ = load_dataset(data, "train")
    if data.dataset == "digits":  # no official split: hold out a fixed fifth as its test split
        order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(12345)).numpy()
        cut = len(order) // 5
        x_test, y_test, x_train, y_train = (
            x_train[order[:cut]],
            y_train[order[:cut]],
            x_train[order[cut:]],
            y_train[order[cut:]],
        )
    else:
        x_test, y_test, _ = load_dataset(data, "test")
    train = Split(torch.from_numpy(x_train), torch.from_numpy(y_train))
    if evaluate_on == "validation":
        held = min(10_000, len(train) // 5)
        return train, Split(train.x[-held:], train.y[-held:])
    return train, Split(torch.from_numpy(x_test), torch.from_numpy(y_test))


def bench_dfkd(
    *,
    dataset: str,
    data_path: Path | None,
    teacher_name: str,
    student_name: str | None,
    methods: list[str],
    loop: StudentLoop,
    teacher_epochs: int,
    seeds: list[int],
    minutes: list[float | None],
    device: str,
    cache: Path,
    evaluate_on: str = "test",
    checkpoints: Sequence[float] = (),
    student_share: float | None = None,
    samples_dir: Path | None = None,
    teachers_from: Path | None = None,
    progress: Callable[[str, int, int], None] = lambda *a: None,
    on_row: Callable[[dict], None] = lambda result: None,
) -> dict:
    """Every method at every budget and seed; `on_row` gets the table so far after each row, so a stopped run
    keeps its rows. `minutes` None means the loop's fixed samples and steps; a number, that wall-clock budget.

    `teachers_from`: a finished `kdledger run` directory whose node teachers, weighted as its scenario says,
    are the teacher instead of one trained here (dataset, teacher and epochs then come from the run, and the
    student too where `student_name` is not given). A
    method with a node side (GenKD's EBM) trains it on each node's own train split, recomputed from the
    scenario as the node computed it; its node-side time is the sum over the nodes."""
    parsed = [parse_method(m) for m in methods]
    nodes: list[tuple[Teacher, Split]] = []
    if teachers_from is not None:
        scenario, published = node_teachers(teachers_from)
        dataset, data_path = scenario.data.dataset, scenario.data.path
        teacher_name, teacher_epochs = f"{len(published)} {scenario.teacher.model}", scenario.teacher.epochs
        nodes = [
            (t, node_splits(scenario.data, row["partition"], scenario.nodes, scenario.seed)[0])
            for row, _, t in published
        ]
    student_name = student_name or (scenario.distill.student if teachers_from else "lenet5-half-bn")
    data = DataConfig(dataset=dataset, path=data_path)
    spec = spec_of(dataset)
    train, test = bench_splits(data, evaluate_on)
    dev = resolve_device(device)
    teacher: Teacher
    if nodes:
        teacher = Ensemble.weighted([t for t, _ in nodes], scenario.federation.ensemble_weights).eval()
    else:
        teacher = cached_teacher(data, teacher_name, teacher_epochs, seeds[0], train, cache, dev, progress).eval()
        nodes = [(teacher, train)]
    teacher_acc = accuracy(teacher.cpu(), test)
    teacher.to(dev)
    space = InputSpace(spec.input_shape, *spec.bounds, flip=spec.flip)

    def summarise(rows: list[BenchRow], pending: int) -> dict:
        kd = {r.budget_min: r.accuracy for r in rows if r.method == "kd"}
        for r in rows:
            r.gap_to_kd = None if r.budget_min not in kd else kd[r.budget_min] - r.accuracy
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "machine": machine(),
            "device": str(dev),
            "dataset": dataset,
            "teacher": teacher_name,
            "teachers_from": None if teachers_from is None else str(teachers_from),
            "student": student_name,
            "teacher_accuracy": teacher_acc,
            "teacher_epochs": teacher_epochs,
            "loop": loop.model_dump(),
            "student_share": student_share,
            "seeds": seeds,
            "evaluated_on": evaluate_on,
            "train_size": len(train),
            "test_size": len(test),
            "pending_rows": pending,
            "rows": [{**asdict(r), "accuracy": r.accuracy, "spread": r.spread} for r in rows],
        }

    rows: list[BenchRow] = []
    total = len(parsed) * len(minutes)
    for budget in minutes:
        for name, options in parsed:
            label = name + (":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else "")
            runs = []
            for seed in seeds:
                runs.append(
                    _one_run(
                        name,
                        options,
                        label,
                        teacher,
                        nodes,
                        train,
                        test,
                        spec,
                        space,
                        student_name,
                        loop,
                        seed,
                        budget,
                        dev,
                        checkpoints,
                        student_share,
                        progress,
                    )
                )
                if samples_dir is not None and seed == seeds[0]:
                    samples_dir.mkdir(parents=True, exist_ok=True)
                    sample_grid(
                        runs[0]["transfer"], samples_dir / f"{_slug(label)}.png", low=space.low, high=space.high
                    )
            mean = lambda key, runs=runs: statistics.fmean(r[key] for r in runs)  # noqa: E731
            counts = [c for c in runs[0]["class_counts"] if c] or [1]
            rows.append(
                BenchRow(
                    label,
                    options,
                    budget,
                    seeds,
                    [r["accuracy"] for r in runs],
                    round(mean("samples")),
                    round(mean("steps")),
                    mean("node_s"),
                    mean("synthesis_s"),
                    mean("training_s"),
                    mean("wall_s"),
                    mean("cpu_s"),
                    runs[0]["variant"],
                    max(counts) / min(counts),
                    runs[0]["curve"],
                )
            )
            on_row(summarise(rows, pending=total - len(rows)))
    return summarise(rows, pending=0)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:120]


def _one_run(
    name,
    options,
    label,
    teacher,
    nodes: list[tuple[Teacher, Split]],
    train: Split,
    test: Split,
    spec,
    space,
    student_name,
    loop,
    seed,
    budget,
    dev,
    checkpoints,
    student_share,
    progress,
) -> dict:
    torch.manual_seed(seed)
    student = build_model(student_name, spec.input_shape, spec.num_classes).to(dev)
    syn = build_synthesizer(name, teacher, student, space, options, seed=seed, device=dev)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    node_models = [
        method_class(name).node_side(
            own.to(dev),
            build_model(student_name, spec.input_shape, spec.num_classes).to(dev),
            data.x.to(dev),
            data.y.to(dev),
            options,
            seed=seed,
            space=space,
        )
        for own, data in nodes
    ]
    node_s, node_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    variant = syn.use_node_models(node_models, [float(len(data)) for _, data in nodes])
    if name == "kd":
        syn.use_real_data(train.x)
    tag = label + (f" {budget:g}min" if budget else "") + f" s{seed}"
    result = distill(
        syn,
        loop,
        seed=seed,
        budget_s=None if budget is None else 60 * budget,
        progress=lambda stage, done, total: progress(f"{tag} {stage}", done, total),
        checkpoints=[60 * c for c in checkpoints],
        evaluate=lambda model: accuracy(model, test),
        student_share=None if budget is None else student_share,  # the CLI asks for --minutes with it
    )
    final = result.curve[-1]["accuracy"]  # the loop scores the returned student at its end
    return {
        "accuracy": final,
        "samples": len(result.transfer),
        "steps": result.student_steps,
        "node_s": node_s,
        "synthesis_s": result.synthesis_s,
        "training_s": result.training_s,
        "wall_s": node_s + result.synthesis_s + result.training_s,
        "cpu_s": node_cpu + result.cpu_s,
        "variant": variant,
        "class_counts": result.class_counts,
        "curve": result.curve,
        "transfer": result.transfer,
    }


def to_markdown(result: dict, command: str) -> str:
    loop = result["loop"]
    seeds = result["seeds"]
    lines = [
        f"`{command}`",
        "",
        f"{result['date']}, {result['machine']}, device {result['device']}. {result['dataset']}: teacher "
        + (
            f"the ensemble of the node teachers of {result['teachers_from']} ({result['teacher']}, "
            if result.get("teachers_from")
            else f"{result['teacher']} ("
        )
        + f"{result['teacher_epochs']} epochs, {100 * result['teacher_accuracy']:.2f}% on the "
        f"{result['evaluated_on']} images), student {result['student']}. Student loop: up to {loop['samples']} "
        f"synthetic samples and {loop['steps']} SGD steps (lr {loop['lr']}, batch {loop['batch_size']}, T "
        f"{loop['temperature']}, augment {loop['augment']}, balanced {loop['balanced']}, EMA {loop['ema']}, "
        f"mixup {loop.get('mixup', 0.0)})"
        + (
            f", the student trains {100 * result['student_share']:g}% of each budget's time and the method "
            "synthesises the rest"
            if result.get("student_share")
            else ""
        )
        + "; "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; accuracy on the {result['test_size']} "
        f"{result['evaluated_on']} images"
        + (" (mean and population standard deviation over the seeds)" if len(seeds) > 1 else "")
        + "."
        + (f" **Partial: {result['pending_rows']} row(s) still to run.**" if result.get("pending_rows") else ""),
        "",
        "| method | budget | samples | student steps | node-side s | synthesis s | student s | wall s | CPU s "
        "| class skew | student acc % | gap to kd |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        gap = "-" if r["gap_to_kd"] is None else f"{100 * r['gap_to_kd']:.2f}"
        budget = "steps" if r["budget_min"] is None else f"{r['budget_min']:g} min"
        acc = f"{100 * r['accuracy']:.2f}" + (f" ± {100 * r['spread']:.2f}" if len(r["accuracies"]) > 1 else "")
        lines.append(
            f"| `{r['method']}` | {budget} | {r['samples']} | {r['student_steps']} | {r['node_s']:.1f} | "
            f"{r['synthesis_s']:.1f} | {r['training_s']:.1f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['class_skew']:.2f} | {acc} | {gap} |"
        )
    curves = [r for r in result["rows"] if len(r["curve"]) > 1]
    if curves:
        lines += [
            "",
            "Accuracy along the way (first seed; the schedule anneals to the run's own end):",
            "",
            "| method | budget | minutes | CPU s | steps | samples | acc % |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in curves:
            budget = "steps" if r["budget_min"] is None else f"{r['budget_min']:g} min"
            for c in r["curve"]:
                lines.append(
                    f"| `{r['method']}` | {budget} | {c['seconds'] / 60:.2f} | {c['cpu_s']:.0f} | {c['steps']} | "
                    f"{c['samples']} | {100 * c['accuracy']:.2f} |"
                )
    return "\n".join(lines) + "\n"


def bench_scale(
    scenario_path: Path,
    counts: list[int],
    out: Path,
    rpc_url: str | None = None,
    progress=lambda *a: None,
    overrides: Sequence[str] = (),
) -> dict:
    """One scenario at several node counts: wall time per phase and the share spent on chain work.

    `rpc_url` runs every count against that chain (e.g. `kdledger devnet`) instead of the scenario's;
    `overrides` (KEY=VALUE) change the scenario for every count. A publication's gas is its registration's
    share of its batch, or in Merkle mode of its root's commit.
    """
    import math

    from simulations.runner import run_scenario
    from simulations.scenario import load_scenario

    base = load_scenario(scenario_path, list(overrides))
    rows = []
    for n in counts:
        federation = base.federation.model_copy(update={"min_nodes": max(1, math.ceil(0.9 * n))})
        update = {"name": f"{base.name}-n{n}", "nodes": n, "federation": federation}
        if rpc_url:
            update["chain"] = base.chain.model_copy(update={"rpc_url": rpc_url, "registry": None})
        spec = base.model_copy(update=update)
        spec = type(base).model_validate(spec.model_dump())  # re-validate the changed scenario
        with PeakRss() as rss:
            result = run_scenario(spec, out / f"n{n}", progress=progress)
        phases = result.ledger.phase_seconds
        registrations = [
            t for t in result.ledger.transactions if t["what"] in ("TeacherRegistered", "PublicationsCommitted")
        ]
        chain_s = phases.get("chain (within phases)", 0.0)
        rows.append(
            {
                "nodes": n,
                "wall_s": result.wall_s,
                "chain_s": chain_s,
                "chain_share": chain_s / result.wall_s,
                "phases": {k: v for k, v in phases.items() if k != "chain (within phases)"},
                "transactions": result.transaction_count,
                "chain_ms_per_tx": 1000 * chain_s / max(1, len({t["tx"] for t in result.ledger.transactions})),
                "gas_per_registration": sum(t["gas"] / t.get("records", 1) for t in registrations)
                / max(1, len(registrations)),
                "peak_rss_mib": rss.peak / 2**20,
                "student_accuracy": weighted_student_accuracy(result),
            }
        )
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "scenario": str(scenario_path),
        "chain": rpc_url or base.chain.rpc_url or "embedded py-evm",
        "overrides": list(overrides),
        "rows": rows,
    }


class PeakRss:
    """The peak resident memory of this process and all its descendants (Ray's workers included), sampled
    from /proc twice a second while the block runs; 0 where there is no /proc."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss(os.getpid()))
            if self._stop.wait(self.interval):
                return


def tree_rss(root: int) -> int:
    """Bytes resident in `root` and its descendants, from /proc/<pid>/stat (parent) and statm (pages)."""
    parents, rss = {}, {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            rss[int(entry.name)] = int((entry / "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue  # a process that ended while we looked
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def weighted_student_accuracy(result) -> float | None:
    from simulations.report import node_rows, weighted_mean

    return weighted_mean(node_rows(result), "student_accuracy")


def scale_markdown(result: dict, command: str) -> str:
    rows = result["rows"]
    first = rows[0]
    lines = [
        f"`{command}`",
        "",
        f"{result['date']}, {result['machine']}; scenario {result['scenario']}"
        + (f" with {' '.join(result['overrides'])}" if result.get("overrides") else "")
        + f"; chain {result['chain']}.",
        "",
        "| nodes | wall s | per node s | x first row's per-node time | identify s | teachers s | distill s "
        "| evaluate s "
        "| chain s | chain share | transactions | chain ms per tx | gas per registration | peak RSS MiB "
        "| student acc % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = r["phases"]
        per_node = r["wall_s"] / r["nodes"]
        acc = "-" if r["student_accuracy"] is None else f"{100 * r['student_accuracy']:.2f}"
        lines.append(
            f"| {r['nodes']} | {r['wall_s']:.1f} | {per_node:.2f} "
            f"| {per_node / (first['wall_s'] / first['nodes']):.2f} "
            f"| {p.get('identify', 0):.1f} | {p.get('teachers', 0):.1f} | {p.get('distill', 0):.1f} "
            f"| {p.get('evaluate', 0):.1f} | {r['chain_s']:.1f} | {100 * r['chain_share']:.1f}% "
            f"| {r['transactions']} | {r['chain_ms_per_tx']:.0f} | {r['gas_per_registration']:,.0f} "
            f"| {r['peak_rss_mib']:,.0f} | {acc} |"
        )
    return "\n".join(lines) + "\n"


def heldout_accuracies(run_dir: Path, test: Split | None = None) -> dict:
    """A finished run's stored models on its dataset's test split, which no node holds (or on `test`): the
    nodes' teachers (their mean), their ensemble as the distiller weighed it, the teachers averaged once, and
    the student. For runs too large for the nodes to attest the ensemble; every file is checked against the
    hash the run recorded before it is parsed."""
    scenario, teachers = node_teachers(run_dir)
    _, metrics = load_run(run_dir)
    if len(teachers) < 2:
        raise ConfigError(f"{run_dir}: {len(teachers)} node teacher(s) in metrics.json; an ensemble needs two")
    if test is None:
        if scenario.data.dataset == "digits":
            raise ConfigError(f"{run_dir}: digits has no test split apart from what its nodes partition")
        _, test = bench_splits(scenario.data, "test")
    spec = spec_of(scenario.data.dataset)
    store = run_store(run_dir)

    def stored(h: str, arch: str, what: str):
        model_hash = bytes.fromhex(h.removeprefix("0x"))
        return store.load(model_hash, Expected((arch,), spec.input_shape, spec.num_classes), owner=f"{run_dir} {what}")

    models = [t for _, _, t in teachers]
    with torch.no_grad():
        each = [accuracy(t, test) for t in models]
        result = {
            "run": str(run_dir),
            "test_images": len(test),
            "teachers_mean": sum(each) / len(each),
            "ensemble": accuracy(Ensemble.weighted(models, scenario.federation.ensemble_weights), test),
        }
        average = metrics.get("aggregates", {}).get("fedavg-once")
        if average:
            result["fedavg_once"] = accuracy(stored(average, scenario.teacher.model, "average"), test)
        if metrics.get("student_hash"):
            result["student"] = accuracy(stored(metrics["student_hash"], scenario.distill.student, "student"), test)
    return result


def heldout_markdown(rows: list[dict], command: str) -> str:
    def pct(row: dict, key: str) -> str:
        return f"{100 * row[key]:.2f}" if key in row else "-"

    lines = [
        f"`{command}`",
        "",
        f"{machine()}; each run's models on its dataset's test split ({rows[0]['test_images']} images, "
        "held by no node).",
        "",
        "| run | teachers (mean) | ensemble | FedAvg once | student |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{Path(r['run']).name}` | {pct(r, 'teachers_mean')} | {pct(r, 'ensemble')} | "
            f"{pct(r, 'fedavg_once')} | {pct(r, 'student')} |"
        )
    return "\n".join(lines) + "\n"
