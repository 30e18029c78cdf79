"""The `kdledger` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Federated, blockchain-anchored data-free distillation.",
    pretty_exceptions_show_locals=False,  # a bug's traceback must not print what is in memory (keys among it)
)
# Rich wraps at 80 columns when output is not a terminal: piped to a file or a script, no line is wrapped or cut.
console = Console(width=None if sys.stdout.isatty() else 100_000)
err_console = Console(stderr=True)


def one_line_errors(fn):
    """Exit codes scripts can use: 2 for bad input (an argument, a scenario, a file that cannot be read),
    1 for everything else that failed (a run, the chain, a file that is not what it should be)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from chain.errors import ConfigError, DataError, reported_errors

        try:
            return fn(*args, **kwargs)
        except reported_errors() as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, reported_errors()) else exc
            err_console.print(f"[bold red]error:[/] {cause}", highlight=False, soft_wrap=True)
            raise typer.Exit(2 if isinstance(cause, (ConfigError, DataError)) else 1) from None

    return wrapper


def _quiet_logs(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("flwr").propagate = False  # it has its own handler: don't print twice


@contextlib.contextmanager
def phase_bars(*, width: int = 22, quiet: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """A progress callback (phase, done, total) that keeps one bar per phase on stderr (none when quiet)."""
    columns = (TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=quiet, disable=quiet) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total or None)
            bar.update(tasks[phase], completed=done, total=total or None)

        yield progress


@app.command()
@one_line_errors
def run(
    scenario: Path = typer.Argument(..., help="scenario YAML, e.g. simulations/scenarios/quickstart.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<name>)"),
    as_json: bool = typer.Option(False, "--json", help="print metrics.json instead of the table"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Flower's and Ray's logs"),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        help="override a scenario key, e.g. --set distill.method=softtarget "
        "--set distill.options={} (repeatable; value read as YAML)",
    ),
) -> None:
    """Run a scenario end to end and write its run directory."""
    from simulations.privacy import epsilon_text
    from simulations.report import accuracy_columns, has_privacy, node_rows, short, weighted_mean
    from simulations.runner import run_scenario
    from simulations.scenario import load_scenario

    spec = load_scenario(scenario, overrides)
    _quiet_logs(verbose)
    with phase_bars(quiet=as_json) as progress:
        result = run_scenario(spec, out, progress=progress, verbose=verbose)
    if as_json:
        console.print_json((result.out_dir / "metrics.json").read_text())
        return
    rows = node_rows(result)
    cols = accuracy_columns(rows)
    table = Table(title=f"{spec.name}: {spec.distill.method} student from {len(rows)} data nodes (accuracy %)")
    private = has_privacy(rows)
    right = ["train", "test"] + [t for _, t in cols] + (["teacher ε"] if private else [])
    for col in ["node", *right, "teacher tx", "attest tx"]:
        table.add_column(col, justify="right" if col in right else "left")

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}"

    for r in rows:
        node = short(r["node"], 12) + (f" [red]{r['error']}[/]" if r["error"] else "")
        table.add_row(
            node,
            str(r["train"]),
            str(r["test"]),
            *(pct(r.get(k)) for k, _ in cols),
            *([epsilon_text(r["teacher_privacy"])] if private else []),
            short(r["teacher_tx"]),
            short(r["student_attest_tx"]),
        )
    table.add_row(
        "[bold]weighted mean",
        "",
        "",
        *(pct(weighted_mean(rows, k)) for k, _ in cols),
        *([""] if private else []),
        "",
        "",
    )
    console.print(table)
    chain = result.chain
    console.print(
        f"student 0x{(result.ledger.student_hash or b'').hex()}  on {chain['backend']} (chain {chain['chain_id']}) "
        f"at {chain['contract']}",
        highlight=False,
    )
    console.print(
        f"{len(result.events)} events, {result.transaction_count} transactions; run directory "
        f"[bold]{result.out_dir}[/] ({result.wall_s:.0f} s)",
        highlight=False,
    )


RUN_OPT = typer.Option(None, "--run", help="a run directory written by `kdledger run`")
RPC_OPT = typer.Option(None, "--rpc", help="JSON-RPC URL of a chain (with --address)")
ADDRESS_OPT = typer.Option(None, "--address", help="ModelRegistry's address (with --rpc)")
JSON_OPT = typer.Option(False, "--json", help="print JSON for scripts")


@app.command()
@one_line_errors
def events(
    run_dir: Optional[Path] = RUN_OPT,
    rpc: Optional[str] = RPC_OPT,
    address: Optional[str] = ADDRESS_OPT,
    event: Optional[str] = typer.Option(None, "--event", help="only this event (e.g. TeacherRegistered)"),
    node: Optional[str] = typer.Option(None, "--node", help="only events naming this address"),
    as_json: bool = JSON_OPT,
) -> None:
    """List contract events: name, block, transaction and decoded arguments."""
    from chain.events import read_events
    from simulations.report import short

    found, info = read_events(run_dir, rpc, address, whole_chain=False)
    if event:
        found = [e for e in found if e["event"] == event]
    if node:
        found = [e for e in found if any(isinstance(v, str) and v.lower() == node.lower() for v in e["args"].values())]
    if run_dir is not None:
        _add_file_privacy(found, [run_dir])
    if as_json:  # the chain's events as they are; a DP teacher's also carries its file's claim ("privacy")
        for e in found:
            if not isinstance(e.get("privacy", {}), dict):
                del e["privacy"]
        print(json.dumps(found, indent=1))
        return
    table = Table(title=f"{len(found)} events of {info['contract']} (chain {info['chain_id']})")
    for col in ("block", "event", "tx", "arguments"):
        table.add_column(col)
    for e in found:
        args = ", ".join(
            f"{k}={short(v, 14) if isinstance(v, str) and v.startswith('0x') and len(v) > 20 else v}"
            for k, v in e["args"].items()
        )
        if "privacy" in e:
            args += f", ε={_epsilon(e['privacy'])} (from the file)"
        table.add_row(str(e["block"]), e["event"], e["tx"][:12] + "…", args)
    console.print(table)


def _file_privacy(uri: str, model_hash: str, roots: list[Path]) -> dict | None | str:
    """A teacher's published (epsilon, delta) from its file under `roots` once the hash is checked: a dict, None
    (no DP), or a word saying why it is not known ("sealed", "no file")."""
    from chain import provenance
    from chain.errors import ArtifactError
    from simulations.privacy import SEAL_KEY, published_privacy, run_store

    path = provenance.resolve(uri, model_hash, roots)
    if path is None:
        return "no file"
    digest = bytes.fromhex(model_hash.removeprefix("0x"))
    try:
        if path.suffix != ".enc":
            blob = path.read_bytes()
        elif (path.parents[3] / SEAL_KEY).is_file():  # the run directory (store/ab/cd/...) keeps the distiller's key
            blob = run_store(path.parents[3]).get(digest)
        else:
            return "sealed"
        spent = published_privacy(blob, digest)
    except ArtifactError:
        return "unreadable"
    return None if spent is None else spent.model_dump()


def _epsilon(privacy: dict | None | str) -> str:
    from simulations.privacy import epsilon_text

    return privacy if isinstance(privacy, str) else epsilon_text(privacy)


def _add_file_privacy(found: list[dict], roots: list[Path]) -> None:
    """Each TeacherRegistered event of a teacher gets `privacy`: what its verified file says (None: no DP)."""
    from chain.identity import KIND_TEACHER

    for e in found:
        if e["event"] == "TeacherRegistered" and e["args"].get("kind") == KIND_TEACHER:
            e["privacy"] = _file_privacy(e["args"]["uri"], e["args"]["modelHash"], roots)


@app.command()
@one_line_errors
def lineage(
    hashes: list[str] = typer.Argument(..., help="model hashes (0x…)"),
    run_dir: Optional[Path] = RUN_OPT,
    rpc: Optional[str] = RPC_OPT,
    address: Optional[str] = ADDRESS_OPT,
    files: list[Path] = typer.Option(
        [], "--files", help="a published run directory (or a copy of one) to find the files in; repeatable"
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """The tree student -> teachers -> data nodes, with method, configuration hash and attested accuracies,
    and, for each record, its file: the on-chain uri resolved in --run or --files, its hash checked."""
    from rich.tree import Tree

    from chain import provenance
    from chain.events import read_events

    found, info = read_events(run_dir, rpc, address, whole_chain=True)
    roots = ([run_dir] if run_dir else []) + list(files)
    trees = [provenance.lineage(found, h, roots, _domain(info)) for h in hashes]
    if roots:
        for t in trees:
            _add_tree_privacy(t, roots)
    if as_json:
        print(json.dumps(trees, indent=1))
    else:
        for h, t in zip(hashes, trees):
            if t is None:
                err_console.print(f"{h}: not registered")
                continue
            root = Tree(_describe(t))
            _grow(root, t)
            console.print(root)
    if any(t is None for t in trees):
        raise typer.Exit(1)


def _domain(info: dict):
    """The EIP-712 domain of the registry the events came from: what a Merkle leaf's signature is checked in."""
    from chain.identity import Domain

    return Domain(chain_id=int(info["chain_id"]), contract=info["contract"])


def _add_tree_privacy(t: dict | None, roots: list[Path]) -> None:
    """Every teacher in the tree gets `privacy`: the (epsilon, delta) inside its verified file."""
    if t is None:
        return
    if t.get("kind") == "teacher" and t.get("registered"):
        t["privacy"] = _file_privacy(t["uri"], t["model_hash"], roots)
    for child in t.get("teachers", []):
        _add_tree_privacy(child, roots)


def _describe(t: dict) -> str:
    if not t["registered"]:
        return f"[red]{t['model_hash']}: not registered[/]"
    if t["kind"] == "student":
        head = (
            f"[bold]student[/] {t['model_hash']}  by distiller {t['owner']}, method [bold]{t['method']}[/], "
            f"{t['sample_count']} synthetic samples, config {t['config_hash'][:18]}…, block {t['block']}"
        )
    elif t["kind"] == "merkle-root":
        head = (
            f"[bold]merkle root[/] {t['model_hash']}  of {t['leaf_count']} signed publications, committed by "
            f"relayer {t['owner']}, round {t['round']}, block {t['block']}"
        )
    elif t["kind"] == "aggregate":
        head = (
            f"[bold]aggregate[/] {t['model_hash']}  by coordinator {t['owner']}, {t['method']} of round {t['round']}, "
            f"{t['example_count']} examples, block {t['block']}"
        )
    else:
        head = (
            f"[bold]{t['kind']}[/] {t['model_hash']}  by data node {t['owner']}, round {t['round']}, block {t['block']}"
        )
        if t.get("merkle_root"):
            head += f", proven in merkle root {t['merkle_root'][:18]}…"
        if "privacy" in t:
            head += f", ε {_epsilon(t['privacy'])}"
    return head


def _grow(branch, t: dict) -> None:
    if "file" in t:
        branch.add(f"file {t['file']} (hash checked)" if t["file"] else f"[red]file not found[/] for {t['uri']}")
    for acc in t.get("accuracies", []):
        branch.add(
            f"accuracy {acc['accuracy_bps'] / 100:.2f}% on {acc['num_examples']} private examples of "
            f"{acc['node']} (block {acc['block']})"
        )
    for child in t.get("teachers", []):
        _grow(branch.add(_describe(child)), child)


@app.command()
@one_line_errors
def verify(
    files: list[Path] = typer.Argument(..., help="weights files (.safetensors)"),
    run_dir: Optional[Path] = RUN_OPT,
    rpc: Optional[str] = RPC_OPT,
    address: Optional[str] = ADDRESS_OPT,
    bundle: Optional[Path] = typer.Option(
        None, "--bundle", help="the file's OpenSSF model-signing bundle (default: FILE.sig beside it; one file only)"
    ),
    public_key: Optional[Path] = typer.Option(
        None,
        "--public-key",
        help="the signer's public key, PEM (default: the run's public-keys/<registrant>.pub; one file only)",
    ),
    chain_only: bool = typer.Option(False, "--chain-only", help="check the chain record alone, not the bundle"),
    as_json: bool = JSON_OPT,
) -> None:
    """Hash each file, say whether it is registered (as what, by whom, in which block), and check its OpenSSF
    model-signing bundle: it verifies with the public key, the file's metadata names that key, and the file's
    registrant on-chain is therefore the key's party.

    Exit 0: every file is registered and its bundle verifies; 1: one is not (or was changed, or its signature
    is refused); 2: bad input (a file that cannot be read, a bad argument)."""
    import hashlib

    from chain import provenance
    from chain.errors import ConfigError

    if len(files) > 1 and (bundle is not None or public_key is not None):
        raise ConfigError("--bundle and --public-key name one file's: verify one file with them")
    from chain.events import read_events

    found, info = read_events(run_dir, rpc, address, whole_chain=True)
    models = provenance.index_events(found, [run_dir] if run_dir else [], _domain(info))
    results: list[dict[str, Any]] = []
    for f in files:
        try:
            digest = "0x" + hashlib.sha256(Path(f).read_bytes()).hexdigest()
        except OSError as exc:
            raise ConfigError(f"{f}: cannot read: {exc.strerror}") from None
        reg = models.get(digest)
        result: dict[str, Any] = {
            "file": str(f),
            "sha256": digest,
            "registered": reg is not None,
            **({"kind": reg.kind, "by": reg.owner, "block": reg.block, "tx": reg.tx} if reg else {}),
            **({"merkle_root": reg.merkle_root} if reg and reg.merkle_root else {}),
        }
        if not chain_only:
            result["signature"] = _check_bundle(Path(f), bundle, public_key, run_dir, reg.owner if reg else None)
        result["verified"] = reg is not None and (chain_only or result["signature"]["verified"])
        results.append(result)
    if as_json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            if r["registered"]:
                console.print(
                    f"[green]registered[/] {r['file']}: {r['kind']} {r['sha256']} by {r['by']} in block "
                    f"{r['block']} (tx {r['tx']})"
                    + (
                        f", its signed publication proven in merkle root {r['merkle_root']}"
                        if "merkle_root" in r
                        else ""
                    ),
                    highlight=False,
                )
            else:
                console.print(f"[red]not registered[/] {r['file']}: {r['sha256']}", highlight=False)
            sig = r.get("signature")
            if sig is None:
                continue
            if sig["verified"]:
                console.print(
                    f"[green]signed[/] {r['file']}: bundle {sig['bundle']} verifies with {sig['public_key']} "
                    f"(key sha256 {sig['key_sha256'][:16]}…), the key the file names"
                    + (f", of its registrant {r['by']}" if r["registered"] else ""),
                    highlight=False,
                )
            else:
                console.print(f"[red]signature refused[/] {r['file']}: {sig['error']}", highlight=False)
    if not all(r["verified"] for r in results):
        raise typer.Exit(1)


def _check_bundle(
    file: Path, bundle: Optional[Path], public_key: Optional[Path], run_dir: Optional[Path], registrant: Optional[str]
) -> dict:
    """The bundle check of `kdledger verify`, as a JSON-ready dict with `verified` and, if refused, `error`."""
    from node.signing import SignatureRefused, bundle_path, public_key_path, verify_bundle

    bundle = bundle or bundle_path(file)
    if public_key is None:
        if registrant is None or run_dir is None:
            why = "the file is not registered" if registrant is None else "no --run directory to find it in"
            return {
                "verified": False,
                "bundle": str(bundle),
                "error": f"no public key to check with ({why}): pass --public-key",
            }
        public_key = public_key_path(run_dir, registrant)
    if not Path(bundle).exists():
        return {
            "verified": False,
            "bundle": str(bundle),
            "public_key": str(public_key),
            "error": f"no bundle at {bundle} (pass --bundle, or --chain-only to check the chain record alone)",
        }
    try:
        check = verify_bundle(file, Path(bundle), Path(public_key))
    except SignatureRefused as exc:
        return {"verified": False, "bundle": str(bundle), "public_key": str(public_key), "error": str(exc)}
    return {"verified": True, **check.as_json(), **({"signer": registrant} if registrant else {})}


@app.command()
@one_line_errors
def explore(
    run_dirs: Optional[list[Path]] = typer.Argument(None, help="run directories written by `kdledger run`"),
    rpc: Optional[str] = RPC_OPT,
    address: Optional[str] = ADDRESS_OPT,
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="port on 127.0.0.1 (0: any free port)"),
    open_browser: bool = typer.Option(True, "--open/--no-open", help="open the page in a browser"),
) -> None:
    """A local web page over the provenance records: each student's lineage graph, the accuracies every node
    attested, the event log, and a box that hashes a file in the browser and says whether it is registered.
    Listens on 127.0.0.1 only; Ctrl-C stops it."""
    from simulations.explore.app import create_app
    from simulations.explore.server import bind, load_sources, open_in_browser, serve

    dirs = list(run_dirs or [])
    app_ = create_app(lambda: load_sources(dirs, rpc, address))
    sock = bind(port)

    def ready(url: str) -> None:
        console.print(f"explorer on [bold]{url}[/] (Ctrl-C to stop)", highlight=False)
        if open_browser and not open_in_browser(url):
            console.print("no graphical browser here: open the address above yourself", highlight=False)

    serve(app_, sock, on_ready=ready)
    console.print("explorer stopped", highlight=False)


@app.command()
@one_line_errors
def devnet(
    port: int = typer.Option(8545, "--port", help="port on 127.0.0.1"),
    state: Path = typer.Option(Path("runs/devnet-state.json"), "--state", help="file the chain is kept in"),
) -> None:
    """Start a persistent local chain (anvil) on 127.0.0.1; Ctrl-C stops it and keeps its state."""
    import signal as signals
    import time

    from chain.devnet import Devnet

    net = Devnet(port=port, state=state)
    resumed = state.exists()
    net.start()
    console.print(
        f"devnet on [bold]{net.rpc_url}[/] (chain id {net.chain_id}), state "
        f"{'resumed from' if resumed else 'kept in'} {state}; Ctrl-C to stop",
        highlight=False,
    )
    console.print(f"use it from a scenario:  chain: {{rpc_url: {net.rpc_url}}}", highlight=False)
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signals.signal(signals.SIGINT, on_signal)
    signals.signal(signals.SIGTERM, on_signal)
    try:
        while not stop and net.process is not None and net.process.poll() is None:
            time.sleep(0.2)
        code = net.process.returncode if net.process is not None else None
    finally:
        net.stop()
    if not stop:
        from chain.devnet import DevnetError

        raise DevnetError(f"anvil exited on its own (code {code})")
    console.print(f"devnet stopped; state written to {state}", highlight=False)


@app.command()
@one_line_errors
def compare(run_dirs: list[Path] = typer.Argument(..., help="run directories written by kdledger run")) -> None:
    """One markdown row per run: the weighted-mean accuracies its nodes attested, and its student."""
    from simulations.report import compare_runs

    print(compare_runs(run_dirs), end="")


@app.command()
@one_line_errors
def privacy(
    run_dir: Path = typer.Argument(..., help="a run directory written by kdledger run"),
    as_json: bool = JSON_OPT,
) -> None:
    """The leakage meter, run where the data lives: per node, the teacher's published epsilon, a loss-threshold
    membership attack on it (AUC, TPR at 1% FPR) and how close the run's synthetic inputs come to its training
    images against held-out ones. Writes RUN_DIR/privacy.json."""
    from simulations.privacy import epsilon_text, measure_run
    from simulations.report import short

    _quiet_logs(False)
    with Progress(*_BAR, console=err_console, transient=True, disable=as_json) as bar:
        task = bar.add_task("measuring nodes", total=None)
        result = measure_run(run_dir, lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        print(json.dumps(result, indent=1))
        return
    table = Table(title=f"{result['scenario']}: leakage per node ({result['synthetic']} synthetic samples)")
    columns = [
        "node",
        "teacher ε",
        "teacher %",
        "MIA AUC",
        "TPR @1% FPR",
        "members / non",
        "closer to train px",
        "closer to train feat",
        "NN px train / held-out",
    ]
    for col in columns:
        table.add_column(col, justify="left" if col == "node" else "right")
    for r in result["nodes"]:
        m, px, ft = r["membership"], r["inversion"]["pixels"], r["inversion"]["features"]
        acc = r["teacher_accuracy"]
        table.add_row(
            short(r["node"], 12),
            epsilon_text(r["privacy"]),
            "-" if acc is None else f"{100 * acc:.2f}",
            f"{m['auc']:.3f}",
            f"{m['tpr_at_1pct_fpr']:.3f}",
            f"{m['members']} / {m['non_members']}",
            f"{px['closer_to_train']:.3f}",
            f"{ft['closer_to_train']:.3f}",
            f"{px['median_to_train']:.2f} / {px['median_to_held_out']:.2f}",
        )
    console.print(table)
    console.print(f"written to {Path(run_dir) / 'privacy.json'}", highlight=False)


_BAR = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


@app.command()
@one_line_errors
def methods(name: Optional[str] = typer.Argument(None, help="one method (default: every registered method)")) -> None:
    """The distillation methods and their `distill.options`: key, default and meaning (markdown)."""
    from node.dfkd import METHODS
    from node.dfkd.base import method_class, options_markdown

    names = [method_class(name).name] if name else sorted(METHODS)
    print("\n".join(options_markdown(n) for n in names), end="")


def _bench_command_line(name: str) -> str:
    """The command as typed, to be written next to its table."""
    import shlex

    return f"kdledger bench {name} " + " ".join(shlex.quote(a) for a in sys.argv[3:])


def _write_table(stem: Path, result: dict, command: str, to_markdown) -> None:
    """STEM.json (the result and its command) and STEM.md (the table)."""
    stem.with_suffix(".json").write_text(json.dumps({**result, "command": command}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(result, command))


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks, each writing markdown and JSON.")
app.add_typer(bench_app, name="bench")


@bench_app.command("dfkd")
@one_line_errors
def bench_dfkd_command(
    dataset: str = typer.Option("fashion-mnist", "--dataset"),
    data_path: Optional[Path] = typer.Option(None, "--data-path", help="folder of the dataset's files"),
    teacher: str = typer.Option("lenet5-bn", "--teacher"),
    student: Optional[str] = typer.Option(
        None, "--student", help="default: lenet5-half-bn, or with --teachers-from the run's student"
    ),
    methods: str = typer.Option(
        "noise,fast,kd",
        "--methods",
        help="comma list of methods, each with options after ':', e.g. 'noise,genkd:k=10,conditional=false,kd'",
    ),
    loop_settings: list[str] = typer.Option(
        [],
        "--loop",
        help="a student-loop setting for every method, e.g. "
        "--loop samples=6000 --loop steps=3000 (repeatable; see "
        "docs/configuration.md, distill)",
    ),
    teacher_epochs: int = typer.Option(5, "--teacher-epochs"),
    seeds: str = typer.Option("0", "--seeds", help="comma list; rows report the mean and spread over them"),
    minutes: str = typer.Option(
        "",
        "--minutes",
        help="comma list of wall-clock budgets: every method runs once per "
        "budget (its schedule follows the clock); empty: the loop's fixed samples and steps",
    ),
    checkpoints: str = typer.Option(
        "", "--checkpoints", help="comma list of minutes at which to also score the student along the way (first seed)"
    ),
    student_share: Optional[float] = typer.Option(
        None,
        "--student-share",
        help="with --minutes: the share of the time the student trains, the method synthesising the rest "
        "(instead of the loop's steps-to-samples ratio); the bank stops at --loop samples",
    ),
    evaluate_on: str = typer.Option(
        "test",
        "--evaluate-on",
        help="test, or validation (the last 10 000 training images: for choosing settings without the test split)",
    ),
    teachers_from: Optional[Path] = typer.Option(
        None,
        "--teachers-from",
        help="a finished kdledger run directory: distil from its node teachers' ensemble (weighted as its "
        "scenario says) instead of one teacher trained here; --dataset, --teacher and --teacher-epochs are "
        "then the run's",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    out: Path = typer.Option(Path("runs/bench-dfkd"), "--out", help="where bench.md, bench.json and samples/ go"),
    cache: Path = typer.Option(
        Path("runs/bench-cache"), "--cache", help="trained teachers, named by configuration hash"
    ),
) -> None:
    """Every DFKD method on one teacher, with the same student loop and budget, at one or more seeds."""
    from simulations.bench import bench_dfkd, split_methods, student_loop, to_markdown

    specs = split_methods(methods)
    loop = student_loop(loop_settings)
    if evaluate_on not in ("test", "validation"):
        raise typer.BadParameter("--evaluate-on: test or validation")
    if student_share is not None and not (minutes.strip() and 0 < student_share < 1):
        raise typer.BadParameter("--student-share: a number between 0 and 1, with --minutes (it splits a budget)")
    if (out / "bench.json").exists():
        from chain.errors import ConfigError

        raise ConfigError(f"--out {out}: holds an earlier bench.json (nothing is overwritten; pick another --out)")
    numbers = lambda text: [float(m) for m in text.split(",") if m.strip()]  # noqa: E731
    _quiet_logs(False)
    with phase_bars(width=48) as progress:
        cache.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        command = _bench_command_line("dfkd")

        def write(result: dict) -> None:  # after every row, so a stopped run keeps what it measured
            _write_table(out / "bench", result, command, to_markdown)

        write(
            bench_dfkd(
                dataset=dataset,
                data_path=data_path,
                teacher_name=teacher,
                student_name=student,
                methods=specs,
                loop=loop,
                teacher_epochs=teacher_epochs,
                seeds=[int(x) for x in numbers(seeds)] or [0],
                minutes=list[float | None](numbers(minutes)) or [None],
                device=device,
                cache=cache,
                evaluate_on=evaluate_on,
                checkpoints=numbers(checkpoints),
                student_share=student_share,
                samples_dir=out / "samples",
                teachers_from=teachers_from,
                progress=progress,
                on_row=write,
            )
        )
    console.print((out / "bench.md").read_text(), highlight=False, soft_wrap=True)


def _fresh_out(out: Path) -> None:
    """A bench's output directory, made empty-or-new: nothing a user made is overwritten."""
    from chain.errors import ConfigError

    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: directory exists and is not empty (nothing is overwritten)")
    out.mkdir(parents=True, exist_ok=True)


@bench_app.command("scale")
@one_line_errors
def bench_scale_command(
    scenario: Path = typer.Option(Path("simulations/scenarios/scale-100.yaml"), "--scenario"),
    nodes: str = typer.Option("10,30,100", "--nodes", help="comma list of node counts"),
    out: Path = typer.Option(Path("runs/bench-scale"), "--out"),
    rpc: Optional[str] = typer.Option(
        None, "--rpc", help="run against this chain (e.g. kdledger devnet's URL) instead of the scenario's"
    ),
    overrides: list[str] = typer.Option([], "--set", help="override a scenario key for every count (repeatable)"),
) -> None:
    """One scenario at several node counts: wall time, phases, and the chain's share."""
    from simulations.bench import bench_scale, scale_markdown

    _quiet_logs(False)
    counts = [int(n) for n in nodes.split(",") if n.strip()]
    _fresh_out(out)
    result = bench_scale(scenario, counts, out, rpc_url=rpc, overrides=overrides)
    _write_table(out / "scale", result, _bench_command_line("scale"), scale_markdown)
    console.print((out / "scale.md").read_text(), highlight=False, soft_wrap=True)


@bench_app.command("heldout")
@one_line_errors
def bench_heldout_command(
    runs: list[Path] = typer.Argument(..., help="finished run directories"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write OUT.md and OUT.json"),
) -> None:
    """Each run's stored teachers (their mean), ensemble, one-shot average and student on the dataset's test
    split, which no node holds: the ensemble's accuracy where the nodes did not attest it (100 nodes)."""
    from simulations.bench import heldout_accuracies, heldout_markdown

    _quiet_logs(False)
    rows = [heldout_accuracies(r) for r in runs]
    command = _bench_command_line("heldout")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_table(out, {"rows": rows}, command, lambda result, c: heldout_markdown(result["rows"], c))
    console.print(heldout_markdown(rows, command), highlight=False, soft_wrap=True)


@bench_app.command("privacy")
@one_line_errors
def bench_privacy_command(
    scenario: Path = typer.Option(Path("simulations/scenarios/fmnist-dp-eps3.yaml"), "--scenario"),
    epsilons: str = typer.Option("inf,8,3,1", "--epsilons", help="comma list of target epsilons; inf: no DP"),
    out: Path = typer.Option(Path("runs/bench-privacy"), "--out"),
    overrides: list[str] = typer.Option([], "--set", help="override a scenario key for every run (repeatable)"),
) -> None:
    """One scenario at several target epsilons: teachers' and student's accuracy, membership attack and
    inversion closeness in one table (privacy.md, privacy.json) and a privacy-utility plot (privacy.png)."""
    from chain.errors import ConfigError
    from simulations.plots import privacy_utility
    from simulations.privacy import bench_privacy, privacy_markdown

    try:
        targets = [None if e.strip() == "inf" else float(e) for e in epsilons.split(",") if e.strip()]
    except ValueError:
        raise ConfigError(f"--epsilons {epsilons!r}: numbers or inf, comma-separated") from None
    _fresh_out(out)
    _quiet_logs(False)
    command = _bench_command_line("privacy")

    def write(result: dict) -> None:  # after every epsilon, so a stopped bench keeps what it measured
        _write_table(out / "privacy", result, command, privacy_markdown)
        privacy_utility(result["rows"], out / "privacy.png")

    with phase_bars() as progress:
        bench_privacy(scenario, targets, out, overrides, progress=progress, on_row=write)
    console.print((out / "privacy.md").read_text(), highlight=False, soft_wrap=True)


data_app = typer.Typer(no_args_is_help=True, help="A node's own data: write and read image folders.")
app.add_typer(data_app, name="data")


@data_app.command("export-folders")
@one_line_errors
def export_folders_command(
    dataset: str = typer.Option(..., "--dataset", help="a dataset by name, e.g. fashion-mnist or digits"),
    nodes: int = typer.Option(..., "--nodes", min=1, help="how many nodes' partitions to write"),
    out: Path = typer.Option(..., "--out", help="where node-<i>/train/<class>/*.png and node-<i>/test/... go"),
    data_path: Optional[Path] = typer.Option(None, "--data-path", help="folder of the dataset's files"),
    partitioner: str = typer.Option("dirichlet", "--partitioner", help="dirichlet, iid or pathological"),
    alpha: float = typer.Option(0.5, "--alpha", help="Dirichlet concentration"),
    classes_per_node: int = typer.Option(2, "--classes-per-node", help="pathological: classes each node holds"),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="share of each partition written as test/"),
    seed: int = typer.Option(0, "--seed", help="the scenario seed the partitions are drawn with"),
    per_node: Optional[int] = typer.Option(
        None, "--per-node", min=1, help="at most this many train images per node (its test images in proportion)"
    ),
    force: bool = typer.Option(False, "--force", help="replace the node-<i> folders already in --out"),
) -> None:
    """Write each node's partition of a public dataset as PNG image folders, as a node's own files would be:
    a scenario's data.local then reads them (simulations/scenarios/fmnist-folders.yaml)."""
    import math
    import re
    import shutil

    from pydantic import ValidationError

    from chain.errors import ConfigError
    from node.config import DataConfig
    from node.data import Split, node_splits, spec_of
    from node.local_data import write_image_folder
    from simulations.scenario import Scenario

    try:  # the scenario's own checks: a known dataset, a folder that exists, valid partition settings
        scenario = Scenario.model_validate(
            {
                "name": "export",
                "seed": seed,
                "nodes": nodes,
                "data": {
                    "dataset": dataset,
                    "path": data_path,
                    "partitioner": partitioner,
                    "alpha": alpha,
                    "classes_per_node": classes_per_node,
                    "test_fraction": test_fraction,
                },
            }
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        option = f"--{str(err['loc'][-1]).replace('_', '-')}: " if err["loc"] else ""
        raise ConfigError(f"export-folders: {option}{err['msg'].removeprefix('Value error, ')}") from None
    data: DataConfig = scenario.data
    spec = spec_of(dataset)
    previous = [p for p in out.iterdir() if p.is_dir() and re.fullmatch(r"node-\d+", p.name)] if out.is_dir() else []
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"--out {out}: not empty (nothing is overwritten; --force replaces its node-<i> folders)")
        for folder in previous:  # only what an export writes: whatever else is in --out stays
            shutil.rmtree(folder)
    counts = []
    with Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), console=err_console) as bar:
        task = bar.add_task("nodes", total=nodes)
        for i in range(nodes):
            train, test = node_splits(data, i, nodes, seed)
            if per_node is not None:
                keep_test = math.ceil(per_node * test_fraction / (1 - test_fraction))
                train, test = (Split(s.x[:n], s.y[:n]) for s, n in ((train, per_node), (test, keep_test)))
            write_image_folder(train, spec, out / f"node-{i}" / "train")
            write_image_folder(test, spec, out / f"node-{i}" / "test")
            counts.append({"node": i, "train": len(train), "test": len(test)})
            bar.update(task, advance=1)
    settings = data.model_dump(mode="json", exclude={"path"})
    (out / "export.json").write_text(json.dumps({**settings, "seed": seed, "per_node": per_node, "nodes": counts}))
    for c in counts:
        console.print(f"{out}/node-{c['node']}: {c['train']} train, {c['test']} test images", highlight=False)


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    app()


if __name__ == "__main__":
    main()
