"""The run directory: report.md, metrics.json, chain.json, the scenario as run, and the table."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def short(value: str | None, keep: int = 10) -> str:
    return "-" if not value else value[:keep] + "…"


SHARED = ("ensemble", "fedavg-once", "global")  # teachers every node measures, when the run has them


def node_rows(result) -> list[dict]:
    """One row per data node: sizes, what it measured, its teacher's published privacy, and the transactions
    that recorded it."""
    from simulations.privacy import teacher_privacy

    ledger = result.ledger
    student = ledger.student_hash.hex() if ledger.student_hash else None
    txs = ledger.transactions
    rows = []
    for r in ledger.nodes:
        teacher = r.teacher_hash.hex() if r.teacher_hash else None

        def tx_of(what, model, node=r.address):
            return next(
                (t["tx"] for t in txs if t["what"] == what and t.get("model") == model and t.get("node") == node), None
            )

        def committed_in(model_hash):  # Merkle mode: the transaction that committed the root it is in
            root = ledger.in_root.get(model_hash) if model_hash else None
            return tx_of("PublicationsCommitted", root[0].hex(), node=None) if root else None

        def acc(model, r=r):
            bps = r.accuracy_bps.get(model) if model else None
            return None if bps is None else bps / 10_000

        rows.append(
            {
                "node": r.address,
                "partition": r.partition_id,
                "train": r.num_train,
                "test": r.num_test,
                "label_histogram": r.label_histogram,
                "teacher_hash": teacher,
                "teacher_accuracy": acc(teacher) if result.scenario.federation.mode == "one-shot" else None,
                "teacher_privacy": _dump(teacher_privacy(result.out_dir, teacher)),
                **{
                    f"{name}_accuracy": acc(ledger.aggregates[name].hex())
                    for name in SHARED
                    if name in ledger.aggregates
                },
                "student_accuracy": acc(student),
                "teacher_tx": tx_of("TeacherRegistered", teacher) or committed_in(r.teacher_hash),
                "student_attest_tx": tx_of("AccuracyAttested", student),
                "error": r.error,
            }
        )
    return rows


def _dump(privacy) -> dict | None:
    return None if privacy is None else privacy.model_dump()


def has_privacy(rows: list[dict]) -> bool:
    """Whether any teacher was trained with DP (then tables show each teacher's epsilon)."""
    return any(row.get("teacher_privacy") for row in rows)


def accuracy_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """(key, title) of the accuracy columns this run has."""
    titles = {
        "teacher_accuracy": "own teacher",
        "ensemble_accuracy": "ensemble",
        "fedavg-once_accuracy": "FedAvg once",
        "global_accuracy": "global teacher",
        "student_accuracy": "student",
    }
    return [(k, t) for k, t in titles.items() if any(row.get(k) is not None for row in rows)]


def weighted_mean(rows: list[dict], key: str) -> float | None:
    pairs = [(row[key], row["test"]) for row in rows if row.get(key) is not None]
    total = sum(n for _, n in pairs)
    return sum(a * n for a, n in pairs) / total if total else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def write_run_dir(result, transfer=None) -> None:
    out = result.out_dir
    rows = node_rows(result)
    ledger = result.ledger
    metrics = {
        "scenario": result.scenario.name,
        "wall_seconds": result.wall_s,
        "phase_seconds": ledger.phase_seconds,
        "student_hash": "0x" + ledger.student_hash.hex() if ledger.student_hash else None,
        "distill": ledger.distill,
        "nodes": rows,
        "aggregates": {name: "0x" + h.hex() for name, h in ledger.aggregates.items()},
        "weighted_mean": {key: weighted_mean(rows, key) for key, _ in accuracy_columns(rows)},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "chain.json").write_text(json.dumps(result.chain, indent=1) + "\n")
    (out / "scenario.yaml").write_text(yaml.safe_dump(result.scenario.model_dump(mode="json"), sort_keys=False))
    from simulations.plots import write_plots
    from simulations.privacy import save_synthetic

    save_synthetic(transfer, out)  # for the leakage meter (kdledger privacy)
    plots = write_plots(out, rows, accuracy_columns(rows), transfer, ledger.distill.get("losses", []))
    (out / "report.md").write_text(render_report(result, rows, metrics, plots))


def data_sources(s) -> str:
    """Where the nodes' data comes from: partitions of the public dataset, their own files, or both."""
    partitions = f"{s.data.partitioner}, alpha {s.data.alpha}"
    if not s.data.local:
        return partitions
    own = ", ".join(f"node {i}: {src.format} {src.path}" for i, src in sorted(s.data.local.items()))
    rest = s.nodes - len(s.data.local)
    return f"own files, {own}" + (f"; {rest} partitions, {partitions}" if rest else "")


def _partition_cell(data: dict, nodes: int) -> str:
    split = {"dirichlet": f"dirichlet {data['alpha']}", "pathological": f"{data['classes_per_node']} classes/node"}
    partitions = split.get(data["partitioner"], data["partitioner"])
    own = len(data.get("local", {}))
    return partitions if not own else "own files" if own == nodes else f"own files ({own} nodes), {partitions}"


def render_report(result, rows, metrics, plots=()) -> str:
    s, chain, d = result.scenario, result.chain, result.ledger.distill
    from simulations.privacy import epsilon_text

    cols = accuracy_columns(rows)
    private = has_privacy(rows)
    fed = s.federation
    mode = (
        f"{fed.strategy} over {fed.rounds} rounds builds one global teacher"
        if fed.mode == "fedavg"
        else "every node trains its own teacher once (one-shot)"
    )
    lines = [
        f"# kdledger run `{s.name}`",
        "",
        f"{s.nodes} data nodes on `{s.data.dataset}` ({data_sources(s)}); {mode}; "
        f"teachers `{s.teacher.model}`; student `{s.distill.student}` by `{s.distill.method}` "
        f"({d.get('variant', '')}) from {d.get('samples', 0)} synthetic samples on {d.get('device', '?')}.",
        "",
        "Accuracies (%) are each node's own measurement on its private test split, signed by the node and "
        "attested on-chain.",
        "",
        *(
            [
                "**Warning:** every party's key on this JSON-RPC chain was derived from the scenario's seed "
                "(`chain.dev_keys`): anyone who reads the scenario can sign as any node, the relayer or the admin.",
                "",
            ]
            if chain.get("rpc_url") and chain.get("keys") == "seed-derived"
            else []
        ),
        "| node | train | test | "
        + " | ".join(t for _, t in cols)
        + (" | teacher ε" if private else "")
        + " | label histogram | teacher tx | student attestation tx |",
        "|---|---:|---:|" + "---:|" * len(cols) + ("---:|" if private else "") + "---|---|---|",
    ]
    for r in rows:
        note = f" ({r['error']})" if r["error"] else ""
        lines.append(
            f"| `{r['node']}`{note} | {r['train']} | {r['test']} | "
            + " | ".join(_pct(r.get(k)) for k, _ in cols)
            + (f" | {epsilon_text(r['teacher_privacy'])}" if private else "")
            + f" | {r['label_histogram']} | `{short(r['teacher_tx'], 18)}` | `{short(r['student_attest_tx'], 18)}` |"
        )
    wm = metrics["weighted_mean"]
    lines += [
        "| weighted mean |  |  | "
        + " | ".join(_pct(wm.get(k)) for k, _ in cols)
        + (" | " if private else "")
        + " |  |  |  |",
        "",
    ]
    if private:
        lines += [
            f"Teachers trained with DP-SGD (Opacus, clipping norm {s.privacy.max_grad_norm}, {s.privacy.accountant} "
            f"accountant) to ε {s.privacy.epsilon:g} at δ {s.privacy.delta:g}; each ε above is what the node's "
            "accountant spent, read from the teacher's file, which the node's signed hash covers "
            "(docs/privacy.md). `kdledger privacy` measures the leakage.",
            "",
        ]
    lines += [
        "## Chain",
        "",
        f"- backend: {chain['backend']}, chain id {chain['chain_id']}",
        f"- ModelRegistry: `{chain['contract']}`",
        f"- run id: `{chain['run_id']}`; configuration hash: `{chain['config_hash']}`",
        f"- student: `{metrics['student_hash']}`",
        f"- blocks {chain['from_block']}..{chain['to_block']}, {result.transaction_count} transactions, "
        f"{len(result.events)} events (`kdledger events --run {result.out_dir}`)",
        "",
        "## Plots",
        "",
        *(f"![{p.stem}](plots/{p.name})" for p in plots),
        "",
        "## Timing",
        "",
        *(f"- {phase}: {sec:.1f} s" for phase, sec in metrics["phase_seconds"].items()),
        f"- synthesis {d.get('synthesis_s', 0):.1f} s, student training {d.get('training_s', 0):.1f} s",
        f"- whole run: {metrics['wall_seconds']:.1f} s",
        "",
    ]
    return "\n".join(lines)


def teacher_epsilon(rows: list[dict]) -> str:
    """The largest epsilon any teacher's file holds; ∞ when a teacher was trained without DP."""
    spent = [row.get("teacher_privacy") for row in rows if row.get("teacher_hash")]
    epsilons = [p["epsilon"] for p in spent if p]
    return f"{max(epsilons):.2f}" if spent and len(epsilons) == len(spent) else "∞"


def compare_runs(run_dirs: list) -> str:
    """A markdown table of several run directories' weighted-mean accuracies, one row per run.

    Reads only what each run wrote (metrics.json, config.json); the accuracies are the ones the nodes
    attested on-chain, weighted by the size of each node's test split.
    """
    from chain.errors import ConfigError
    from node.dfkd import METHODS

    rows = []
    for run_dir in map(Path, run_dirs):
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            config = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError):
            raise ConfigError(
                f"{run_dir}: no readable metrics.json and config.json (not a kdledger run directory)"
            ) from None
        data, mean = config["data"], metrics["weighted_mean"]
        distill = metrics["distill"]
        method = distill["method"] + ("" if distill.get("variant") in (None, "default") else f" ({distill['variant']})")
        fields = METHODS[distill["method"]].Options.model_fields  # a required option (public's dataset) has none
        defaults = {k: f.get_default(call_default_factory=True) for k, f in fields.items() if not f.is_required()}
        options = (
            ", ".join(f"{k}={v}" for k, v in sorted(config["distill"]["options"].items()) if defaults.get(k) != v)
            or "defaults"
        )  # only what differs from the paper's defaults
        rows.append(
            f"| `{run_dir.name}` | {data['dataset']} | {_partition_cell(data, config['nodes'])} "
            f"| {config['nodes']} | {method} | {options} | "
            + " | ".join(
                _pct(mean.get(k))
                for k in (
                    "teacher_accuracy",
                    "ensemble_accuracy",
                    "global_accuracy",
                    "fedavg-once_accuracy",
                    "student_accuracy",
                )
            )
            + f" | {teacher_epsilon(metrics['nodes'])} | `{short(metrics['student_hash'], 12)}` "
            f"| {metrics['wall_seconds']:.0f} |"
        )
    header = (
        "| run | dataset | partition | nodes | method | options (not default) | own teacher | ensemble "
        "| global teacher "
        "| FedAvg once | student | teacher ε (max) | student hash | wall s |\n"
        "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|"
    )
    return header + "\n" + "\n".join(rows) + "\n"
