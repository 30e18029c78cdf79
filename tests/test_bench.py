"""The DFKD benchmark: method specs, a tiny real run, and what it writes."""

import json

import pytest
from conftest import kdledger

from node.dfkd import MethodError
from simulations.bench import parse_method, split_methods


def test_method_specs_split_and_parse():
    assert split_methods("noise, genkd:k=10,conditional=false ,kd") == ["noise", "genkd:k=10,conditional=false", "kd"]
    assert parse_method("genkd:k=10,conditional=false") == ("genkd", {"k": 10, "conditional": False})
    with pytest.raises(MethodError, match="unknown method 'nope'"):
        parse_method("nope")
    with pytest.raises(Exception, match="kk"):
        parse_method("genkd:kk=1")


def test_tiny_bench_on_digits_writes_markdown_and_json(tmp_path):
    done = kdledger(
        "bench",
        "dfkd",
        "--dataset",
        "digits",
        "--teacher",
        "digits-cnn-bn",
        "--student",
        "digits-cnn-half-bn",
        "--methods",
        "noise,genkd:node_iterations=3,sgld_steps=4,k=2,fast:iterations=3,kd",
        "--loop",
        "samples=256",
        "--loop",
        "steps=40",
        "--seeds",
        "0,1",
        "--teacher-epochs",
        "2",
        "--out",
        str(tmp_path / "out"),
        "--cache",
        str(tmp_path / "cache"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "bench.json").read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods == ["noise", "genkd:node_iterations=3,sgld_steps=4,k=2", "fast:iterations=3", "kd"]
    assert all(r["samples"] == 256 and r["student_steps"] == 40 for r in result["rows"])
    assert all(len(r["accuracies"]) == 2 and r["seeds"] == [0, 1] for r in result["rows"])  # mean and spread
    kd = result["rows"][-1]
    assert kd["gap_to_kd"] == 0
    genkd = result["rows"][1]
    assert genkd["variant"] == "published-ebm" and genkd["node_s"] > 0
    for r in result["rows"]:
        assert r["cpu_s"] > 0 and r["wall_s"] >= r["synthesis_s"] + r["training_s"]
    table = (tmp_path / "out" / "bench.md").read_text()
    assert "kdledger bench dfkd" in table and " ± " in table and "CPU s" in table
    assert result["pending_rows"] == 0 and "Partial" not in table
    assert (tmp_path / "out" / "samples" / "fast_iterations_3.png").stat().st_size > 1000
    # the teacher is cached under its configuration's hash and reused
    assert len(list((tmp_path / "cache").glob("teacher-*.json"))) == 1
    # a second run never overwrites the first one's table
    before = (tmp_path / "out" / "bench.json").read_bytes()
    again = kdledger("bench", "dfkd", "--dataset", "digits", "--methods", "noise", "--out", str(tmp_path / "out"))
    assert again.returncode == 2 and "earlier bench.json" in again.stderr and "Traceback" not in again.stderr
    assert (tmp_path / "out" / "bench.json").read_bytes() == before
    bad = kdledger("bench", "dfkd", "--dataset", "digits", "--loop", "stepz=3", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--loop stepz" in bad.stderr and "Traceback" not in bad.stderr
    unpaced = kdledger("bench", "dfkd", "--dataset", "digits", "--student-share", "0.5", "--out", str(tmp_path / "sh"))
    assert unpaced.returncode == 2 and "--student-share" in unpaced.stderr and "Traceback" not in unpaced.stderr


def test_bench_keeps_each_row_as_it_finishes_and_a_budget_follows_the_clock(tmp_path):
    from functools import partial

    from node.dfkd import StudentLoop
    from simulations.bench import bench_dfkd, to_markdown

    tiny = partial(  # the digits teacher is trained once and cached in tmp_path
        bench_dfkd,
        dataset="digits",
        data_path=None,
        teacher_name="digits-cnn",
        student_name="digits-cnn-half",
        teacher_epochs=1,
        seeds=[0],
        device="cpu",
        cache=tmp_path,
    )
    seen = []
    final = tiny(
        methods=["noise", "kd"],
        loop=StudentLoop(samples=64, steps=10, batch_size=32),
        minutes=[None],
        on_row=seen.append,
    )
    assert [len(r["rows"]) for r in seen] == [1, 2] and [r["pending_rows"] for r in seen] == [1, 0]
    assert seen[0]["rows"][0]["gap_to_kd"] is None  # kd has not run yet when noise's row is written
    assert final["rows"] == seen[-1]["rows"]
    timed = tiny(
        methods=["noise"],
        loop=StudentLoop(samples=10**6, steps=10**6, batch_size=32),
        minutes=[0.02],
        evaluate_on="validation",
    )
    row = timed["rows"][0]
    assert row["budget_min"] == 0.02 and row["samples"] < 10**6 and timed["evaluated_on"] == "validation"
    shared = tiny(
        methods=["kd"], loop=StudentLoop(samples=256, steps=10**6, batch_size=32), minutes=[0.02], student_share=0.5
    )
    row = shared["rows"][0]  # real images are cheap: the bank fills at once and the student has the rest
    assert row["samples"] == 256 and row["training_s"] > row["synthesis_s"] and row["student_steps"] > 8
    assert "the student trains 50% of each budget's time" in to_markdown(shared, "cmd")


def test_kd_is_refused_in_a_scenario(tmp_path):
    path = tmp_path / "kd.yaml"
    path.write_text("name: kd\ndistill:\n  method: kd\n")
    done = kdledger("run", str(path))
    assert done.returncode == 2 and "benchmarks only" in done.stderr


@pytest.mark.slow  # a minute: two scales on two chains; `make test-all` runs it
def test_bench_scale_times_each_node_count_and_the_chain_share(tmp_path):
    import yaml
    from conftest import ROOT

    spec = yaml.safe_load((ROOT / "simulations/scenarios/quickstart.yaml").read_text())
    spec["teacher"]["epochs"] = 2
    spec["distill"].update(samples=200, steps=20)
    spec["distill"]["options"].update(iterations=5)
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(yaml.safe_dump(spec))
    done = kdledger("bench", "scale", "--scenario", str(scenario), "--nodes", "2,3", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "out" / "scale.json").read_text())["rows"]
    assert [r["nodes"] for r in rows] == [2, 3]
    for r in rows:
        assert 0 < r["chain_s"] < r["wall_s"] and r["chain_share"] == r["chain_s"] / r["wall_s"]
        assert {"identify", "teachers", "distill", "evaluate"} <= set(r["phases"])
    assert rows[1]["transactions"] == rows[0]["transactions"]  # a phase's records share one batch
    assert all(r["gas_per_registration"] > 0 and r["peak_rss_mib"] > 100 for r in rows)
    assert "| 3 |" in (tmp_path / "out" / "scale.md").read_text()
    again = kdledger("bench", "scale", "--scenario", str(scenario), "--nodes", "2", "--out", str(tmp_path / "out"))
    assert again.returncode == 2 and "not empty" in again.stderr
    # the same bench against a devnet: every transaction goes to that chain
    from conftest import free_port
    from web3 import Web3

    from chain.devnet import Devnet

    net = Devnet(port=free_port(), state=tmp_path / "state.json").start()
    try:
        done = kdledger(
            "bench",
            "scale",
            "--scenario",
            str(scenario),
            "--nodes",
            "2",
            "--rpc",
            net.rpc_url,
            "--out",
            str(tmp_path / "rpc"),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads((tmp_path / "rpc" / "scale.json").read_text())
        assert result["chain"] == net.rpc_url
        assert Web3(Web3.HTTPProvider(net.rpc_url)).eth.block_number >= result["rows"][0]["transactions"]
    finally:
        net.stop()


def test_bench_distils_from_the_node_teachers_of_a_run(quickstart_runs, tmp_path):
    """--teachers-from: the run's verified node teachers as its ensemble; a node-side method trains on each
    node's own split; a teacher file that is not what the run recorded is refused with one line."""
    import shutil

    from conftest import QUICKSTART_NODES

    from node.dfkd import StudentLoop
    from simulations.bench import bench_dfkd, to_markdown

    run = tmp_path / "run"
    shutil.copytree(quickstart_runs[0][0], run)
    result = bench_dfkd(
        dataset="fashion-mnist",  # the run's dataset (digits) wins
        data_path=None,
        teacher_name="lenet5-bn",
        student_name="",  # the run's
        methods=["fast:iterations=2", "genkd:node_iterations=2,sgld_steps=2,k=2,burn_in=2"],
        loop=StudentLoop(samples=64, steps=8, batch_size=32),
        teacher_epochs=1,
        seeds=[0],
        minutes=[None],
        device="cpu",
        cache=tmp_path / "cache",
        teachers_from=run,
    )
    assert result["dataset"] == "digits" and result["teacher"] == f"{QUICKSTART_NODES} digits-cnn-bn"
    assert result["student"] == "digits-cnn-half-bn"
    assert 0.5 < result["teacher_accuracy"] <= 1
    fast, genkd = result["rows"]
    assert fast["variant"] == "bn-inversion" and fast["samples"] == 64 and fast["student_steps"] == 8
    assert genkd["variant"] == "published-ebm" and genkd["node_s"] > 0  # every node trained its EBM
    assert "the ensemble of the node teachers of" in to_markdown(result, "cmd")
    assert not list((tmp_path / "cache").glob("teacher-*.json"))  # no teacher of its own was trained
    metrics = json.loads((run / "metrics.json").read_text())
    victim = next(run.glob(f"store/*/*/{metrics['nodes'][0]['teacher_hash']}.safetensors"))
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    done = kdledger("bench", "dfkd", "--teachers-from", str(run), "--methods", "noise", "--out", str(tmp_path / "o"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert f"artifact from node {metrics['nodes'][0]['node']} does not match its on-chain hash" in done.stderr
