"""`kdledger explore`: its JSON API against a reduced quickstart run, checked against the chain's own records, and
the page itself in a real headless Chromium driven through Playwright (skipped where either is missing)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, free_port, kdledger

from chain import provenance
from simulations.explore.app import create_app
from simulations.explore.server import bind, load_sources, make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def run_dir(quickstart_runs):
    return quickstart_runs[0][0]


@pytest.fixture(scope="module")
def chain_records(run_dir):
    """What the chain says, read the way `kdledger events --json` reads it."""
    done = kdledger("events", "--run", str(run_dir), "--json")
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout)
    by = {}
    for e in events:
        by.setdefault(e["event"], []).append(e)
    (student,) = by["StudentCommitted"]
    return {"events": events, "by": by, "student": student["args"]["modelHash"]}


@contextlib.contextmanager
def serving(app):
    """`app` on a free port of 127.0.0.1, in a thread, stopped through should_exit."""
    sock = bind(0)
    srv = make_server(app, sock)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(15)
        sock.close()
    assert not thread.is_alive()


@pytest.fixture(scope="module")
def server(run_dir):
    with serving(create_app(lambda: load_sources([run_dir], None, None))) as url:
        yield url


def get(url: str, headers: dict | None = None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
        return json.loads(r.read()) if r.headers.get("content-type", "").startswith("application/json") else r


def status_of(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


# ---- the JSON API ---------------------------------------------------------------------------------------------


def test_api_events_are_what_kdledger_events_reports(server, chain_records):
    assert get(f"{server}/api/events") == chain_records["events"]
    (source,) = get(f"{server}/api/sources")
    assert source["students"] == [chain_records["student"]]
    assert source["events"] == len(chain_records["events"])


def test_api_student_record_lineage_and_configuration(server, run_dir, chain_records):
    events = chain_records["events"]
    (student,) = get(f"{server}/api/students")
    reg = provenance.find(events, chain_records["student"])
    assert {k: student[k] for k in vars(reg)} == json.loads(json.dumps(vars(reg)))
    # the graph: the student, its teachers, and the data nodes that published them, with every edge
    teachers = {e["args"]["modelHash"]: e["args"]["node"] for e in chain_records["by"]["TeacherRegistered"]}
    graph = student["graph"]
    ids = {n["id"].lower() for n in graph["nodes"]}
    assert ids == {chain_records["student"]} | set(teachers) | {a.lower() for a in teachers.values()}
    edges = {(e["source"].lower(), e["target"].lower()) for e in graph["edges"]}
    assert edges == {(t, chain_records["student"]) for t in teachers} | {(a.lower(), t) for t, a in teachers.items()}
    assert graph["hidden"] == {}
    # the configuration from the run directory, checked against the on-chain hash
    assert student["config"]["matches_chain"] is True
    assert student["config"]["document"] == json.loads((run_dir / "config.json").read_text())


def test_api_accuracies_are_the_attestations(server, run_dir, chain_records):
    (table,) = get(f"{server}/api/accuracies")
    assert [c["label"] for c in table["columns"]] == ["own teacher", "ensemble", "FedAvg (one-shot)", "student"]
    cells = {
        (n.lower(), c["model"].lower(), c["accuracy_bps"]) for n, row in table["cells"].items() for c in row.values()
    }
    attested = {
        (e["args"]["node"].lower(), e["args"]["modelHash"], e["args"]["accuracyBps"])
        for e in chain_records["by"]["AccuracyAttested"]
    }
    assert cells == attested and len(attested) == len(chain_records["by"]["AccuracyAttested"])
    own = {n.lower(): row["own-teacher"]["model"] for n, row in table["cells"].items()}
    assert own == {e["args"]["node"].lower(): e["args"]["modelHash"] for e in chain_records["by"]["TeacherRegistered"]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    student_column = next(c for c in table["columns"] if c["label"] == "student")
    assert student_column["weighted_mean_bps"] == round(10_000 * metrics["weighted_mean"]["student_accuracy"])


def test_api_model_verify_and_bad_input(server, run_dir, chain_records):
    student = chain_records["student"]
    teacher = chain_records["by"]["TeacherRegistered"][0]["args"]["modelHash"]
    record = get(f"{server}/api/models/{teacher}")
    assert record["students"] == [student] and Path(record["file"]).is_file()
    assert {u["method"] for u in record["used_by"] if u["kind"] == "aggregate"} == {"ensemble", "FedAvg (one-shot)"}
    found = get(f"{server}/api/verify/{student}")
    assert found["registered"] and found["matches"][0]["kind"] == "student"
    commit = chain_records["by"]["StudentCommitted"][0]
    assert (found["matches"][0]["block"], found["matches"][0]["tx"]) == (commit["block"], commit["tx"])
    assert get(f"{server}/api/verify/{teacher}")["matches"][0]["students"] == [student]
    assert get(f"{server}/api/verify/0x{'ab' * 32}") == {"sha256": f"0x{'ab' * 32}", "registered": False, "matches": []}
    assert status_of(f"{server}/api/verify/not-a-hash") == 404
    assert status_of(f"{server}/api/models/0x{'ab' * 32}") == 404
    # only this machine's names: a page elsewhere whose name resolves here is refused
    assert status_of(f"{server}/api/sources", {"Host": "attacker.example"}) == 400
    page = get(f"{server}/")
    assert "default-src 'self'" in page.headers["content-security-policy"]


# ---- the command ----------------------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_non_zero(tmp_path):
    done = kdledger("explore", str(tmp_path / "nowhere"), "--no-open")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "not a directory" in done.stderr
    done = kdledger("explore", str(tmp_path), "--no-open")
    assert done.returncode == 2 and "no chain.json" in done.stderr and "Traceback" not in done.stderr
    unreachable = f"http://127.0.0.1:{free_port()}"
    done = kdledger("explore", "--rpc", unreachable, "--address", "0x" + "11" * 20, "--no-open")
    assert done.returncode == 1 and "unreachable" in done.stderr and done.stderr.strip().count("\n") == 0


def test_the_command_serves_on_localhost_and_stops_on_ctrl_c(run_dir):
    env = {**os.environ, "KDLEDGER_KEY_PASSWORD": "unused"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", "explore", str(run_dir), "--port", "0", "--no-open"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "explorer on http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split("explorer on ")[1].split()[0]
        assert get(f"{url}api/sources")[0]["label"] == str(run_dir)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "explorer stopped" in out and "Traceback" not in err


# ---- the page, in a real browser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make setup installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    pg.goto(server + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
    yield pg
    context.close()
    assert errors == []


def test_page_draws_the_lineage_graph_from_the_chain(page, chain_records, tmp_path):
    student = chain_records["student"]
    teachers = {e["args"]["modelHash"]: e["args"]["node"].lower() for e in chain_records["by"]["TeacherRegistered"]}
    graph = page.locator(f"svg.lineage[data-root='{student}']")
    nodes = graph.locator(".gnode").evaluate_all("els => els.map(e => [e.dataset.id, e.dataset.kind])")
    assert dict(nodes) == {student: "student"} | dict.fromkeys(teachers, "teacher") | dict.fromkeys(
        teachers.values(), "data node"
    )
    edges = graph.locator(".gedge").evaluate_all("els => els.map(e => [e.dataset.source, e.dataset.target])")
    assert {tuple(e) for e in edges} == {(t, student) for t in teachers} | {(a, t) for t, a in teachers.items()}
    assert page.locator("[data-config='match']").count() == 1  # config.json is the one the chain vouches for
    # a box opens its record, and the record links to its transaction
    teacher = next(iter(teachers))
    graph.locator(f".gnode[data-id='{teacher}']").click()
    panel = page.locator("#panel")
    panel.wait_for(state="visible")
    assert teacher in panel.inner_text() and teachers[teacher] in panel.inner_text().lower()
    tx = next(e["tx"] for e in chain_records["by"]["TeacherRegistered"] if e["args"]["modelHash"] == teacher)
    panel.locator(f"a[data-tx='{tx}']").first.click()
    # a locator wait, not wait_for_function: a string predicate is eval'd in the page, and the page's CSP forbids eval
    page.locator(f"#panel[data-showing='tx={tx}']").wait_for(state="attached")
    assert "TeacherRegistered" in panel.inner_text()
    assert page.locator(f"#event-table tr.hl[data-tx='{tx}']").count() == len(chain_records["by"]["TeacherRegistered"])
    page.screenshot(path=str(tmp_path / "explore-record.png"))


def test_page_accuracy_table_and_chart_are_the_attestations(page, chain_records):
    attested = sorted(
        (e["args"]["node"].lower(), e["args"]["modelHash"], e["args"]["accuracyBps"])
        for e in chain_records["by"]["AccuracyAttested"]
    )
    cells = page.locator("table.acc tbody tr[data-node] td[data-bps]").evaluate_all(
        "els => els.map(td => [td.closest('tr').dataset.node, td.querySelector('a[data-model]').dataset.model,"
        " Number(td.dataset.bps)])"
    )
    assert sorted(tuple(c) for c in cells) == attested
    bars = page.locator("svg.chart rect.bar").evaluate_all(
        "els => els.map(r => [r.dataset.node, r.dataset.column, Number(r.dataset.bps)])"
    )
    per_node = sorted((n, bps) for n, _, bps in bars if n != "mean")
    assert per_node == sorted((n, bps) for n, _, bps in attested)
    assert {c for n, c, _ in bars if n == "mean"} == {c for n, c, _ in bars if n != "mean"}  # one mean per column
    headers = page.locator("table.acc thead th").all_inner_texts()
    assert headers == ["data node", "own teacher", "ensemble", "FedAvg (one-shot)", "student"]


def test_page_verifies_a_dropped_file(page, run_dir, chain_records, tmp_path):
    student = chain_records["student"]
    path = run_dir / provenance.store_path(bytes.fromhex(student[2:]))
    result = page.locator("#verify-result")
    page.set_input_files("#file", str(path))
    page.wait_for_selector("#verify-result[data-status='registered']")
    assert result.get_attribute("data-sha256") == student
    text = result.inner_text()
    assert "Registered" in text and "student" in text and "Not registered" not in text
    commit = chain_records["by"]["StudentCommitted"][0]
    assert result.locator(f"a[data-tx='{commit['tx']}']").count() == 1
    page.screenshot(path=str(tmp_path / "explore.png"), full_page=True)

    tampered = tmp_path / "tampered.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    page.set_input_files("#file", str(tampered))
    page.wait_for_selector("#verify-result[data-status='not-registered']")
    assert "Not registered" in result.inner_text()
    page.screenshot(path=str(tmp_path / "explore-tampered.png"))
    assert (tmp_path / "explore.png").stat().st_size > 10_000


def test_teacher_file_is_in_the_students_lineage(page, run_dir, chain_records, tmp_path):
    teacher = chain_records["by"]["TeacherRegistered"][0]["args"]["modelHash"]
    copy = tmp_path / "teacher.safetensors"
    shutil.copy(run_dir / provenance.store_path(bytes.fromhex(teacher[2:])), copy)
    page.set_input_files("#file", str(copy))
    page.wait_for_selector("#verify-result[data-status='registered']")
    result = page.locator("#verify-result")
    assert "teacher" in result.inner_text() and result.locator(f"a[data-model='{chain_records['student']}']").count()


# ---- the helpers, on events made up for the purpose ----------------------------------------------------------


def _h(i: int) -> str:
    return "0x" + f"{i:064x}"


def _addr(i: int) -> str:
    return "0x" + f"{i:040x}"


def _fedavg_events(nodes: int, rounds: int) -> list[dict]:
    """A FedAvg run: each round's teachers, their aggregate, the student of the last one, every attestation."""
    run, events, tx = _h(999), [], iter(range(1, 10**6))

    def ev(name, block, **args):
        events.append({"event": name, "block": block, "tx": _h(next(tx)), "log_index": 0, "args": args})

    for r in range(1, rounds + 1):
        teachers = [_h(1000 * r + n) for n in range(nodes)]
        for n, t in enumerate(teachers):
            ev("TeacherRegistered", 2 * r, modelHash=t, node=_addr(n + 1), runId=run, kind=1, round=r, uri="")
        sources = teachers + ([_h(100_000 + r - 1)] if r > 1 else [])
        ev("AggregateRegistered", 2 * r + 1, modelHash=_h(100_000 + r), coordinator=_addr(500), runId=run, round=r,
           sourceHashes=sources, method="FedAvg", exampleCount=10 * nodes, uri="")  # fmt: skip
    ev("StudentCommitted", 99, modelHash=_h(7), distiller=_addr(600), runId=run, teacherHashes=[_h(100_000 + rounds)],
       method="fast", configHash=_h(8), sampleCount=64, uri="")  # fmt: skip
    for n in range(nodes):
        for m, bps in ((_h(100_000 + rounds - 1), 8000), (_h(100_000 + rounds), 9000), (_h(7), 8500 + n)):
            ev("AccuracyAttested", 100, modelHash=m, node=_addr(n + 1), runId=run, accuracyBps=bps, numExamples=10)
    return events


def test_lineage_graph_layers_and_its_limit():
    events = _fedavg_events(nodes=3, rounds=2)
    graph = provenance.lineage_graph(events, _h(7))
    layer = {n["id"]: n["layer"] for n in graph["nodes"]}
    assert layer[_h(7)] == 0 and layer[_h(100_002)] == 1
    assert layer[_h(100_001)] == 2  # round 1's aggregate, a source of round 2's
    assert layer[_h(1001)] == 3  # round 1's teachers: one past the deepest model naming them
    assert {n["id"] for n in graph["nodes"] if n["type"] == "data-node"} == {_addr(i) for i in (1, 2, 3)}
    assert {n["layer"] for n in graph["nodes"] if n["type"] == "data-node"} == {4}
    assert provenance.lineage_graph(events, _h(12345)) is None
    big = provenance.lineage_graph(_fedavg_events(nodes=80, rounds=1), _h(7), limit=60)
    teachers = [n for n in big["nodes"] if n["kind"] == "teacher"]
    assert len(teachers) == 60 and big["hidden"] == {2: 20, 3: 20}
    assert all(e["source"] in {n["id"] for n in big["nodes"]} for e in big["edges"])


def test_accuracy_tables_name_columns_from_the_chain():
    (table,) = provenance.accuracy_tables(_fedavg_events(nodes=3, rounds=2))
    assert [c["label"] for c in table["columns"]] == ["FedAvg round 1", "FedAvg round 2", "student"]
    assert table["nodes"] == [_addr(1), _addr(2), _addr(3)]
    assert table["columns"][-1]["weighted_mean_bps"] == 8501
    assert provenance.used_by(_fedavg_events(nodes=2, rounds=2), _h(1001)) == [_h(100_001), _h(100_002), _h(7)]


def test_a_live_chain_alone(anvil):
    """--rpc/--address: a chain with no run directory (anvil; skipped where it is not installed)."""
    from chain.backends import connect
    from chain.identity import derive_account
    from chain.registry import Registry, fund

    w3 = connect(anvil.rpc_url)
    admin, node = derive_account(11, "admin"), derive_account(11, "node-0")
    fund(w3, [admin.address])
    registry, _ = Registry.deploy(w3, admin)
    registry.grant("DATA_NODE", node.address, admin)
    (source,) = load_sources([], anvil.rpc_url, registry.address)
    assert source.label == anvil.rpc_url and source.roots == []
    assert [e["event"] for e in source.events][-1] == "RoleGranted"
    with serving(create_app(lambda: [source])) as url:
        assert get(f"{url}/api/students") == [] and get(f"{url}/api/accuracies") == []
        (summary,) = get(f"{url}/api/sources")
    assert summary["rpc_url"] == anvil.rpc_url and summary["roles"][source.events[-1]["args"]["role"]] == "DATA_NODE"
