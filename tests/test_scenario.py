"""A bad scenario ends in one short line naming the field, a non-zero exit, and no traceback."""

import pytest
from conftest import kdledger

QUICK = "name: q\nnodes: 2\n"


@pytest.mark.parametrize(
    "text, names",
    [
        (QUICK + "data:\n  alpah: 0.5\n", "data.alpah: unknown key"),
        (QUICK.replace("nodes: 2", "nodes: four"), "nodes"),
        (QUICK + "data:\n  dataset: fashion-mnist\n  path: /nonexistent/fmnist\n", "data.path"),
        (QUICK + "distill:\n  method: softtarget\n  options:\n    sigmaa: 2\n", "distill.options.sigmaa"),
        (QUICK + "distill:\n  student: resnet-9000\n", "distill.student"),
        ("name: q\nnodes: [1\n", "not valid YAML"),
        (QUICK + "chain: {batch_size: 0}\n", "chain.batch_size"),
        (QUICK + "chain: {rpc_url: 'http://127.0.0.1:1', data_nodes: ['0x" + "11" * 20 + "']}\n", "2 nodes"),
        (QUICK + "chain: {data_nodes: ['0x" + "11" * 20 + "', '0x" + "22" * 20 + "']}\n", "need chain.rpc_url"),
        (QUICK + "chain: {rpc_url: 'http://127.0.0.1:1', data_nodes: ['0x12', '0x34']}\n", "not an Ethereum address"),
        (QUICK + "distill: {init: fedavg-once}\n", "distill.student must be digits-cnn"),
        (QUICK + "federation: {mode: fedavg}\ndistill: {init: fedavg-once, student: digits-cnn}\n", "distill.init"),
        (QUICK.replace("nodes: 2", "nodes: 1") + "distill: {init: fedavg-once, student: digits-cnn}\n", "two or more"),
        (QUICK + "distill: {init: average}\n", "distill.init"),
    ],
)
def test_bad_scenario_short_error(tmp_path, text, names):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    done = kdledger("run", str(path), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert names in done.stderr
    assert str(path) in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) <= 3
    assert not (tmp_path / "run").exists()  # nothing started


def test_missing_scenario_file(tmp_path):
    done = kdledger("run", str(tmp_path / "absent.yaml"))
    assert done.returncode == 2 and "cannot read" in done.stderr and "Traceback" not in done.stderr


def test_events_of_a_directory_that_is_no_run(tmp_path):
    done = kdledger("events", "--run", str(tmp_path))
    assert done.returncode == 2 and "chain.json" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "chain_json, events_json, message",
    [
        ("{not json", None, "not a readable chain.json"),
        ("[" * 100_000, None, "not a readable chain.json"),
        ('["a", "list"]', None, "not a kdledger chain.json"),
        ('{"contract": "0x", "chain_id": 1}', "[{]", "not a readable events export"),
        ('{"contract": "0x", "chain_id": 1}', '[{"event": "X"}]', "not an events export"),
        ('{"contract": "0x", "chain_id": 1}', "\xff\xfe", "not a readable events export"),
    ],
)
def test_a_corrupt_run_directory_is_one_line(tmp_path, chain_json, events_json, message):
    (tmp_path / "chain.json").write_text(chain_json)
    if events_json is not None:
        (tmp_path / "events.json").write_bytes(events_json.encode("latin-1"))
    done = kdledger("events", "--run", str(tmp_path))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_huge_scenario_name_is_refused_without_echoing_it(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("name: " + "a" * 100_000 + "\nnodes: 2\n")
    done = kdledger("run", str(path), "--out", str(tmp_path / "run"))
    assert done.returncode == 2 and "name" in done.stderr and len(done.stderr) < 2000


def test_set_overrides_a_scenario_key_before_validation():
    from simulations.scenario import ScenarioError, load_scenario

    base = load_scenario("simulations/scenarios/fmnist-oneshot-a0.1.yaml")
    spec = load_scenario(
        "simulations/scenarios/fmnist-oneshot-a0.1.yaml",
        ["distill.method=softtarget", "distill.options={iterations: 50}", "data.alpha=0.5"],
    )
    assert (spec.distill.method, spec.distill.options, spec.data.alpha) == ("softtarget", {"iterations": 50}, 0.5)
    assert spec.config_hash() != base.config_hash()  # the on-chain config hash follows what actually runs
    with pytest.raises(ScenarioError, match="expected dotted.key=value"):
        load_scenario("simulations/scenarios/quickstart.yaml", ["distill.method"])
    with pytest.raises(ScenarioError, match="seed is a value, not a section"):
        load_scenario("simulations/scenarios/quickstart.yaml", ["seed.x=1"])
    # a misspelt key fails like one in the file, naming the override
    with pytest.raises(ScenarioError, match=r"with --set distill\.metod=kd.*metod"):
        load_scenario("simulations/scenarios/quickstart.yaml", ["distill.metod=kd"])


def test_extends_merges_sections_key_by_key_and_refuses_cycles(tmp_path):
    from simulations.scenario import ScenarioError, load_scenario

    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(QUICK + "data: {dataset: digits, alpha: 0.3, min_partition_size: 20}\n")
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("extends: ../base.yaml\nname: c\ndata: {alpha: 0.1}\n")
    spec = load_scenario(child, ["data.alpha=0.2"])
    assert (spec.name, spec.nodes, spec.data.dataset, spec.data.alpha, spec.data.min_partition_size) == (
        "c",
        2,
        "digits",
        0.2,  # --set comes last, on the merged scenario
        20,
    )
    # the shipped files that extend another load as the same scenario they were when each was written out whole
    a01 = load_scenario("simulations/scenarios/fmnist-oneshot-a0.1.yaml")
    a03 = load_scenario("simulations/scenarios/fmnist-oneshot-a0.3.yaml")
    assert a01.model_dump() == a03.model_copy(update={"name": "fmnist-oneshot-a0.1", "data": a01.data}).model_dump()
    assert a01.data.model_dump() == a03.data.model_copy(update={"alpha": 0.1}).model_dump()
    (tmp_path / "base.yaml").write_text("extends: sub/child.yaml\n" + QUICK)
    with pytest.raises(ScenarioError, match="a cycle"):
        load_scenario(child)
    child.write_text("extends: [base.yaml]\n" + QUICK)
    with pytest.raises(ScenarioError, match="extends: expected the path"):
        load_scenario(child)
    child.write_text("extends: absent.yaml\n" + QUICK)
    with pytest.raises(ScenarioError, match=r"absent\.yaml: cannot read"):
        load_scenario(child)


def test_set_on_the_command_line_gives_a_one_line_error(tmp_path):
    done = kdledger("run", "simulations/scenarios/quickstart.yaml", "--set", "nodes=zero", "--out", str(tmp_path / "r"))
    assert done.returncode == 2 and "nodes" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_every_user_facing_error_shares_one_root_and_the_cli_catches_only_that_root():
    """One `except KdledgerError` in the CLI is enough: each layer's errors are branches of it."""
    from chain.backends import ChainUnreachable
    from chain.compiler import CompilerNotFound
    from chain.devnet import DevnetError
    from chain.errors import KdledgerError, RunFailed, reported_errors
    from chain.registry import RegistryError
    from node.artifacts import TamperedArtifact
    from node.data import DatasetError
    from node.dfkd import MethodError
    from node.models import UnknownArchitecture
    from simulations.scenario import ScenarioError

    for cls in (
        ChainUnreachable,
        CompilerNotFound,
        DevnetError,
        RegistryError,
        TamperedArtifact,
        DatasetError,
        MethodError,
        UnknownArchitecture,
        ScenarioError,
        RunFailed,
    ):
        assert issubclass(cls, KdledgerError), cls
    assert KdledgerError in reported_errors()


def test_reading_a_run_does_not_import_torch(tmp_path):
    """events, lineage and verify read JSON and the chain: they start in a second, not in torch's seven."""
    import subprocess
    import sys

    (tmp_path / "chain.json").write_text('{"contract": "0x", "chain_id": 1}')
    (tmp_path / "events.json").write_text("[]")
    probe = (
        "import sys; import simulations.cli; from chain.events import read_events; "
        f"read_events({str(tmp_path)!r}, None, None, whole_chain=True); print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# -- hostile scenario files ------------------------------------------------------------------------
def test_nested_aliases_are_refused_before_they_expand(tmp_path):
    from simulations.scenario import ScenarioError, load_scenario

    laughs = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    laughs += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("name: q\nnodes: 2\ndistill:\n  options:\n" + "".join(f"    {line}\n" for line in laughs))
    with pytest.raises(ScenarioError, match="aliases"):
        load_scenario(path)
    path.write_text("name: q\n" + "nodes: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ScenarioError, match="nested deeper than 32"):  # before PyYAML's quadratic scanner
        load_scenario(path)
    path.write_bytes(b"name: q\n#" + b"x" * (1 << 20))
    with pytest.raises(ScenarioError, match="at most"):
        load_scenario(path)


def test_fuzz_the_scenario_loader(tmp_path_factory):
    """1 000 generated scenarios (mutations of a valid one, and random documents): each loads or is a
    ScenarioError, never anything else."""
    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from simulations.scenario import ScenarioError, load_scenario

    base = yaml.safe_load(open("simulations/scenarios/quickstart.yaml").read())
    leaves = st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=20)
    values = st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    )
    keys = [(s,) for s in base] + [(s, k) for s, v in base.items() if isinstance(v, dict) for k in v]
    folder = tmp_path_factory.mktemp("fuzz")

    def check(document) -> None:
        path = folder / "s.yaml"
        path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
        try:
            load_scenario(path)
        except ScenarioError:
            pass

    @settings(max_examples=700, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(keys), values)
    def mutated(key, value):
        spec = yaml.safe_load(yaml.safe_dump(base))
        node = spec
        for part in key[:-1]:
            node = node[part]
        node[key[-1]] = value
        check(spec)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.text(max_size=200) | values)
    def random_documents(document):
        check(document)

    mutated()
    random_documents()
