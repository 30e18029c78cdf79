"""The `kdledger` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from functools import wraps
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated, blockchain-anchored data-free distillation.")
console = Console()
err_console = Console(stderr=True)

def _user_errors() -> tuple[type[BaseException], ...]:
    """The user's mistakes and the world's refusals: reported in one line, without a traceback."""
    from chain.backends import ChainUnreachable
    from chain.registry import RegistryError
    from node.artifacts import TamperedArtifact
    from node.data import DatasetError
    from node.dfkd import MethodError
    from simulations.runner import RunFailed
    from simulations.scenario import ScenarioError

    return (ScenarioError, RunFailed, ChainUnreachable, TamperedArtifact, MethodError, DatasetError, RegistryError)


def one_line_errors(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, _user_errors()) else exc
            err_console.print(f"[bold red]error:[/] {cause}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _quiet_logs(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("flwr").propagate = False  # it has its own handler: don't print twice


@app.command()
@one_line_errors
def run(
    scenario: Path = typer.Argument(..., help="scenario YAML, e.g. simulations/scenarios/quickstart.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<name>)"),
    as_json: bool = typer.Option(False, "--json", help="print metrics.json instead of the table"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Flower's and Ray's logs"),
) -> None:
    """Run a scenario end to end and write its run directory."""
    from simulations.report import node_rows, short, weighted_mean
    from simulations.runner import run_scenario
    from simulations.scenario import load_scenario

    spec = load_scenario(scenario)
    _quiet_logs(verbose)
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=as_json, disable=as_json) as bar:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total or None)
            bar.update(tasks[phase], completed=done, total=total or None)

        result = run_scenario(spec, out, progress=progress, verbose=verbose)
    if as_json:
        console.print_json((result.out_dir / "metrics.json").read_text())
        return
    rows = node_rows(result)
    table = Table(title=f"{spec.name}: {spec.distill.method} student from {len(rows)} data nodes")
    for col, justify in (("node", "left"), ("train", "right"), ("test", "right"), ("teacher acc %", "right"),
                         ("student acc %", "right"), ("teacher tx", "left"), ("attest tx", "left")):
        table.add_column(col, justify=justify)

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}"

    for r in rows:
        node = short(r["node"], 12) + (f" [red]{r['error']}[/]" if r["error"] else "")
        table.add_row(node, str(r["train"]), str(r["test"]), pct(r["teacher_accuracy"]), pct(r["student_accuracy"]),
                      short(r["teacher_tx"]), short(r["student_attest_tx"]))
    table.add_row("[bold]weighted mean", "", "", pct(weighted_mean(rows, "teacher_accuracy")),
                  pct(weighted_mean(rows, "student_accuracy")), "", "")
    console.print(table)
    chain = result.chain
    console.print(f"student 0x{result.ledger.student_hash.hex()}  on {chain['backend']} (chain {chain['chain_id']}) "
                  f"at {chain['contract']}", highlight=False)
    console.print(f"{len(result.events)} events, {len(chain['transactions'])} transactions; run directory "
                  f"[bold]{result.out_dir}[/] ({result.wall_s:.0f} s)", highlight=False)


@app.command()
@one_line_errors
def events(
    run_dir: Path = typer.Option(..., "--run", help="a run directory written by `kdledger run`"),
    as_json: bool = typer.Option(False, "--json", help="print the events as JSON"),
) -> None:
    """List every contract event of a run: name, block, transaction and decoded arguments."""
    from chain.backends import connect
    from chain.events import fetch_events, read_export
    from simulations.report import short
    from simulations.runner import RunFailed, load_chain_info

    info = load_chain_info(run_dir)
    if info.get("rpc_url"):  # a live chain: read it, not a copy
        found = fetch_events(connect(info["rpc_url"]), info["contract"], info["from_block"], info["to_block"])
    else:  # the embedded chain lived in the run's process: its events were exported
        export = Path(run_dir) / "events.json"
        if not export.exists():
            raise RunFailed(f"--run {run_dir}: no events.json export there")
        found = read_export(export)
    if as_json:
        print(json.dumps(found, indent=1))
        return
    table = Table(title=f"{len(found)} events of {info['contract']} (chain {info['chain_id']})")
    for col in ("block", "event", "tx", "arguments"):
        table.add_column(col)
    for e in found:
        args = ", ".join(f"{k}={short(v, 14) if isinstance(v, str) and v.startswith('0x') and len(v) > 20 else v}"
                         for k, v in e["args"].items())
        table.add_row(str(e["block"]), e["event"], e["tx"][:12] + "…", args)
    console.print(table)


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    app()


if __name__ == "__main__":
    sys.exit(main())
