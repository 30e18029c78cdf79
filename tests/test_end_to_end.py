"""A reduced quickstart through the real stack: py-evm, Flower on Ray, DFKD, attestations, the CLI."""

import hashlib
import json
import stat

import pytest
from conftest import QUICKSTART_NODES, kdledger

from node.artifacts import ArtifactStore, Expected, TamperedArtifact

NODES = QUICKSTART_NODES
TEACHER = Expected(("digits-cnn-bn",), (1, 8, 8), 10)  # the quickstart's teacher architecture


@pytest.fixture(scope="module")
def runs(quickstart_runs):
    """The same scenario twice (for determinism); the first run is inspected."""
    return quickstart_runs


def test_cli_prints_the_per_node_table(runs):
    _, done = runs[0]
    for column in ("own teacher", "ensemble", "FedAvg once", "student", "weighted mean"):
        assert column in done.stdout
    for name in ("report.md", "metrics.json", "chain.json", "events.json", "scenario.yaml"):
        assert (runs[0][0] / name).exists()
    # piped, nothing is wrapped or cut: the student's whole hash and every column header on one line each
    student = json.loads((runs[0][0] / "metrics.json").read_text())["student_hash"]
    assert any(line.startswith(f"student {student} ") for line in done.stdout.splitlines())
    assert any("own teacher" in line and "attest tx" in line for line in done.stdout.splitlines())
    tree = kdledger("lineage", student, "--run", str(runs[0][0]), "--files", str(runs[0][0]))
    assert tree.returncode == 0 and all(
        f"file {runs[0][0]}" in line or "file" not in line for line in tree.stdout.splitlines()
    )


def test_events_record_every_teacher_the_student_and_each_attestation(runs):
    run_dir, _ = runs[0]
    done = kdledger("events", "--run", str(run_dir), "--json")
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout)
    by_name = {}
    for e in events:
        by_name.setdefault(e["event"], []).append(e)
    assert len(by_name["TeacherRegistered"]) == NODES
    (student,) = by_name["StudentCommitted"]
    # per node: the student, its own teacher, the teachers' ensemble and their weights averaged once
    assert len(by_name["AccuracyAttested"]) == 4 * NODES
    assert sorted(e["args"]["method"] for e in by_name["AggregateRegistered"]) == ["FedAvg (one-shot)", "ensemble"]
    teachers = {e["args"]["modelHash"] for e in by_name["TeacherRegistered"]}
    assert set(student["args"]["teacherHashes"]) == teachers
    assert student["args"]["method"] == "fast"
    nodes = {e["args"]["node"] for e in by_name["TeacherRegistered"]}
    assert {e["args"]["node"] for e in by_name["AccuracyAttested"]} == nodes
    chain = json.loads((run_dir / "chain.json").read_text())
    assert {e["tx"] for e in events} <= {t["tx"] for t in chain["transactions"]}
    assert student["args"]["configHash"] == chain["config_hash"]
    # anyone holding config.json can check it is the configuration the chain vouches for
    document = (run_dir / "config.json").read_bytes()
    assert "0x" + hashlib.sha256(document).hexdigest() == student["args"]["configHash"]
    assert json.loads(document)["distill"]["method"] == "fast"
    # the run id is derivable from run.json and config.json (docs/contracts.md)
    from eth_utils import keccak

    run = json.loads((run_dir / "run.json").read_text())
    asked = {k: v for k, v in json.loads(document).items() if k != "as_run"}
    asked_hash = hashlib.sha256(json.dumps(asked, sort_keys=True, separators=(",", ":")).encode()).digest()
    run_id = keccak(text=f"{run['name']}@{run['started_at']}")[:16] + asked_hash[:16]
    assert "0x" + run_id.hex() == run["run_id"] == chain["run_id"] == student["args"]["runId"]
    # ... and it says what ran, defaults filled in, not only what the scenario wrote
    as_run = json.loads(document)["as_run"]
    assert as_run["options"]["iterations"] == 10 and as_run["options"]["lr"] == 0.1  # lr: fast's default
    assert (as_run["variant"], as_run["device"], as_run["threads"]) == ("bn-inversion", "cpu", 1)


def test_onchain_accuracies_are_what_the_nodes_measured(runs):
    run_dir, _ = runs[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    events = json.loads((run_dir / "events.json").read_text())
    attested = {
        (e["args"]["node"], e["args"]["modelHash"]): e["args"]["accuracyBps"]
        for e in events
        if e["event"] == "AccuracyAttested"
    }
    for row in metrics["nodes"]:
        assert attested[(row["node"], metrics["student_hash"])] == round(row["student_accuracy"] * 10_000)
        assert attested[(row["node"], "0x" + row["teacher_hash"])] == round(row["teacher_accuracy"] * 10_000)
        assert row["student_accuracy"] > 0.3  # well above chance (10 classes) after a CI-sized distillation


def test_store_holds_exactly_the_registered_bytes_and_keys_are_private(runs):
    run_dir, _ = runs[0]
    events = json.loads((run_dir / "events.json").read_text())
    store = ArtifactStore(run_dir / "store")
    for e in events:
        if e["event"] in ("TeacherRegistered", "StudentCommitted"):
            model_hash = bytes.fromhex(e["args"]["modelHash"][2:])
            assert hashlib.sha256(store.get(model_hash)).digest() == model_hash
    for key in (run_dir / "keys").iterdir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_each_teacher_file_carries_its_nodes_class_histogram_under_the_signed_hash(runs):
    run_dir, _ = runs[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    store = ArtifactStore(run_dir / "store")
    for row in metrics["nodes"]:
        teacher = store.load(bytes.fromhex(row["teacher_hash"]), TEACHER, owner=f"node {row['node']}")
        assert teacher.label_counts == row["label_histogram"] and sum(teacher.label_counts) == row["train"]


def test_tampered_teacher_is_refused_naming_node_and_hash(runs):
    run_dir, _ = runs[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row = metrics["nodes"][0]
    store = ArtifactStore(run_dir / "store")
    model_hash = bytes.fromhex(row["teacher_hash"])
    path = store.path(model_hash)
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-4] + b"\x00\x00\x00\x00")
        with pytest.raises(TamperedArtifact) as err:
            store.load(model_hash, TEACHER, owner=f"node {row['node']}")
        assert row["node"] in str(err.value) and row["teacher_hash"] in str(err.value)
    finally:
        path.write_bytes(original)


def test_same_scenario_gives_the_same_hashes(runs):
    first, second = (json.loads((d / "metrics.json").read_text()) for d, _ in runs)
    assert first["student_hash"] == second["student_hash"]
    assert [r["teacher_hash"] for r in first["nodes"]] == [r["teacher_hash"] for r in second["nodes"]]


def test_one_shot_teachers_start_from_the_coordinators_common_weights(runs):
    """Averaging teachers once (the FedAvg baseline) only means something if they share a start."""
    import torch

    run_dir, _ = runs[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    store = ArtifactStore(run_dir / "store")
    first_layers = []
    for row in metrics["nodes"]:
        teacher = store.load(bytes.fromhex(row["teacher_hash"]), TEACHER, owner=f"node {row['node']}")
        first_layers.append(next(p for p in teacher.parameters() if p.dim() == 4).detach().flatten())
    # trained on different private data, yet still aligned with the shared initialisation; networks
    # initialised independently have cosine near 0 here (tens of weights, random signs)
    for other in first_layers[1:]:
        assert torch.nn.functional.cosine_similarity(first_layers[0], other, dim=0) > 0.5


def test_compare_tabulates_runs_from_what_they_wrote(runs, tmp_path):
    done = kdledger("compare", *(str(d) for d, _ in runs))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 + len(runs)
    metrics = json.loads((runs[0][0] / "metrics.json").read_text())
    row = lines[2].split(" | ")
    assert f"{100 * metrics['weighted_mean']['student_accuracy']:.2f}" in row
    assert metrics["student_hash"][:12] in lines[2] and metrics["student_hash"][:12] in lines[3]
    bad = kdledger("compare", str(tmp_path))
    assert bad.returncode == 2 and "not a kdledger run directory" in bad.stderr and "Traceback" not in bad.stderr


def test_compare_shows_only_options_that_differ_even_when_one_is_required(runs, tmp_path):
    """`public` has a required option (its dataset): compare reads defaults only where there are some."""
    from simulations.report import compare_runs

    run = tmp_path / "public-run"
    run.mkdir()
    config = json.loads((runs[0][0] / "config.json").read_text())
    metrics = json.loads((runs[0][0] / "metrics.json").read_text())
    config["distill"]["method"], metrics["distill"]["method"] = "public", "public"
    metrics["distill"]["variant"] = "default"
    config["distill"]["options"] = {"dataset": "digits", "split": "test"}  # split is public's default
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps(metrics))
    row = compare_runs([run]).strip().splitlines()[-1]
    assert "| public | dataset=digits |" in row


def test_every_record_points_at_its_file_and_any_copy_resolves_it(runs, tmp_path):
    """The on-chain uri is kdledger://<run id>/store/ab/cd/<hash>.safetensors: a copy of the published run
    directory (here only its store) resolves every file of the lineage; a tampered copy does not."""
    import shutil

    from chain.provenance import lineage, uri_of

    run_dir, _ = runs[0]
    events = json.loads((run_dir / "events.json").read_text())
    run_id = bytes.fromhex(json.loads((run_dir / "run.json").read_text())["run_id"][2:])
    for e in events:
        if "uri" in e["args"]:
            assert e["args"]["uri"] == uri_of(run_id)
    shutil.copytree(run_dir / "store", tmp_path / "published" / "store")
    student = json.loads((run_dir / "metrics.json").read_text())["student_hash"]

    def files(tree):
        yield tree["model_hash"], tree.get("file")
        for child in tree.get("teachers", []):
            yield from files(child)

    found = dict(files(lineage(events, student, [tmp_path / "published"])))
    assert len(found) == 1 + NODES and all(found.values())
    for model_hash, path in found.items():
        assert "0x" + hashlib.sha256(open(path, "rb").read()).hexdigest() == model_hash
    victim = found[student]
    open(victim, "ab").write(b"\0")
    assert dict(files(lineage(events, student, [tmp_path / "published"])))[student] is None


def test_runs_exported_before_kdledger_uris_still_read(runs):
    """events.json of earlier versions: aggregates counted `sampleCount`, every uri was "file:store"."""
    from chain.provenance import lineage

    run_dir, _ = runs[0]
    events = json.loads((run_dir / "events.json").read_text())
    for e in events:
        if "uri" in e["args"]:
            e["args"]["uri"] = "file:store"
        if e["event"] == "AggregateRegistered":
            e["args"]["sampleCount"] = e["args"].pop("exampleCount")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    tree = lineage(events, metrics["student_hash"], [run_dir])
    assert tree["file"] and all(t["file"] for t in tree["teachers"])
    assert lineage(events, metrics["aggregates"]["ensemble"], [run_dir])["example_count"] > 0


# -- OpenSSF model-signing bundles (node/signing.py; unit tests in tests/test_signing.py) -------------------
def _student_file(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return ArtifactStore(run_dir / "store").path(bytes.fromhex(metrics["student_hash"][2:])), metrics


def test_every_published_file_has_a_bundle_by_its_registrant_bound_in_the_file(runs):
    """Teachers by their nodes, aggregates by the relayer that registered them, the student by the distiller:
    each bundle verifies with its registrant's public key, which the file's own metadata names."""
    from chain.provenance import index_events
    from node.signing import bundle_path, public_key_path, verify_bundle

    run_dir, _ = runs[0]
    store = ArtifactStore(run_dir / "store")
    models = index_events(json.loads((run_dir / "events.json").read_text()))
    assert {m.kind for m in models.values()} == {"teacher", "aggregate", "student"}
    for model_hash, reg in models.items():
        path = store.path(bytes.fromhex(model_hash[2:]))
        check = verify_bundle(path, bundle_path(path), public_key_path(run_dir, reg.owner))
        assert "0x" + check.signed_sha256 == model_hash
    signers = {p.stem for p in (run_dir / "public-keys").iterdir()}
    assert signers == {reg.owner for reg in models.values()} and len(signers) == NODES + 2


def test_the_student_verifies_with_kdledger_and_with_the_standard_model_signing_cli(runs):
    import subprocess
    import sys
    from pathlib import Path

    run_dir, _ = runs[0]
    student, metrics = _student_file(run_dir)
    done = kdledger("verify", str(student), "--run", str(run_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registered" in done.stdout and "signed" in done.stdout and "the key the file names" in done.stdout
    done = kdledger("verify", str(student), "--run", str(run_dir), "--json")
    (result,) = json.loads(done.stdout)
    sig = result["signature"]
    assert result["verified"] and sig["verified"] and sig["signed_sha256"] == metrics["student_hash"]
    assert sig["signer"] == result["by"] and sig["public_key"].endswith(f"public-keys/{result['by']}.pub")
    # the README's command: the ecosystem's own verifier, knowing nothing of kdledger
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("model_signing")),
            "verify",
            "key",
            str(student),
            "--signature",
            f"{student}.sig",
            "--public_key",
            str(run_dir / "public-keys" / f"{result['by']}.pub"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "Verification succeeded" in done.stdout + done.stderr


def test_kdledger_verify_refuses_a_tampered_file_another_keys_bundle_and_another_nodes_key(runs, tmp_path):
    from chain.identity import load_key
    from node.signing import derive_signing_key, sign_file

    run_dir, _ = runs[0]
    student, metrics = _student_file(run_dir)
    tampered = tmp_path / "student.safetensors"
    tampered.write_bytes(student.read_bytes()[:-1] + b"\x01")
    distiller_key = [
        "--public-key",
        str(run_dir / "public-keys" / f"{load_key(run_dir / 'keys/distiller.json').address}.pub"),
    ]
    done = kdledger("verify", str(tampered), "--run", str(run_dir), "--bundle", f"{student}.sig", *distiller_key)
    assert done.returncode == 1 and "not registered" in done.stdout
    assert "signature refused" in done.stdout and "is not the file it signed" in done.stdout
    # a bundle made by another key (node 0's, over its own teacher) passed off as the student's
    teacher0 = ArtifactStore(run_dir / "store").path(bytes.fromhex(metrics["nodes"][0]["teacher_hash"]))
    done = kdledger("verify", str(student), "--run", str(run_dir), "--bundle", f"{teacher0}.sig")
    assert done.returncode == 1 and "made by another key" in done.stdout
    # node 0's key, and a bundle node 0 really made, over node 1's teacher: node 1's file names node 1's key
    node0 = load_key(run_dir / "keys" / "node-0.json")
    teacher1 = ArtifactStore(run_dir / "store").path(bytes.fromhex(metrics["nodes"][1]["teacher_hash"]))
    forged = tmp_path / "teacher1-by-node0.sig"
    sign_file(derive_signing_key(bytes(node0.key)), teacher1, forged)
    node0_pub = run_dir / "public-keys" / f"{node0.address}.pub"
    done = kdledger(
        "verify", str(teacher1), "--run", str(run_dir), "--bundle", str(forged), "--public-key", str(node0_pub)
    )
    assert done.returncode == 1 and "not bound to the party that registered" in done.stdout
    assert "Traceback" not in done.stderr
    # without a bundle beside it: refused, unless only the chain record is asked for
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(student.read_bytes())
    done = kdledger("verify", str(copy), "--run", str(run_dir))
    assert done.returncode == 1 and "no bundle at" in done.stdout
    assert kdledger("verify", str(copy), "--run", str(run_dir), "--chain-only").returncode == 0


def test_transfer_realism_places_real_images_nearer_the_teachers_than_noise(runs, tmp_path):
    """examples/transfer_realism.py (BENCHMARKS.md, why GenKD trails): real held-out images sit nearer the
    teachers' batch-norm statistics and are smoother than uniform noise; a non-run is one line, non-zero."""
    import subprocess
    import sys

    script = [sys.executable, "examples/transfer_realism.py"]
    done = subprocess.run([*script, str(runs[0][0])], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r.split("|")[1].strip(): [float(c) for c in r.split("|")[2:-1]] for r in done.stdout.splitlines()[2:]}
    teachers = f"teachers of {runs[0][0]}"
    real, noise, run = (
        rows[f"real images (held out), {teachers}"],
        rows[f"uniform noise, {teachers}"],
        rows[str(runs[0][0])],
    )
    assert real[0] == noise[0] == min(run[0], 359) > 0  # as many as the run kept, up to digits' held-out 359
    assert real[1] < noise[1] and real[2] < noise[2]  # pixel TV, BN distance
    bad = subprocess.run([*script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
