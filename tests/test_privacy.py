"""Privacy you can measure: DP teachers, their signed epsilon, the leakage meter and the privacy bench."""

import json

import pytest
import torch
import yaml
from conftest import ROOT, kdledger

from chain.errors import ArtifactError
from node.artifacts import (
    ArtifactStore,
    Expected,
    PrivacySpent,
    deserialize,
    new_seal_key,
    public_bytes,
    read_header,
    save_seal_key,
    seal,
    serialize,
    sha256,
)
from node.config import DataConfig, PrivacyConfig
from node.data import PATH_DATASETS, Split, node_splits
from node.dfkd import InputSpace, build_synthesizer
from node.models import build_model, has_batch_norm
from node.privacy import inversion_closeness, membership_inference
from node.training import train_classifier, train_private
from simulations.scenario import ScenarioError, load_scenario

DIGITS = InputSpace((1, 8, 8), -1.0, 1.0)


@pytest.fixture(scope="module")
def digits_node():
    return node_splits(DataConfig(), 0, 3, 0)


def test_dp_sgd_spends_at_most_the_requested_epsilon_and_learns(digits_node):
    train, test = digits_node
    torch.manual_seed(0)
    model = build_model("digits-cnn-gn", (1, 8, 8), 10)
    before = model.state_dict()["head.1.weight"].clone()
    privacy = PrivacyConfig(epsilon=3.0, delta=1e-5)
    loss, spent = train_private(model, train, privacy=privacy, epochs=2, lr=3e-3, batch_size=64, seed=1)
    assert 0 < spent.epsilon <= 3.0 and spent.delta == 1e-5 and spent.accountant == "prv"
    assert spent.epsilon > 2.5  # the noise is solved for the target, not far below it
    assert loss > 0 and not torch.equal(before, model.state_dict()["head.1.weight"])
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # Opacus' hooks are gone


def test_noise_repeats_with_the_seed_and_not_without_it(digits_node):
    train, _ = digits_node
    small = Split(train.x[:128], train.y[:128])

    def weights(**privacy):
        torch.manual_seed(0)
        model = build_model("digits-cnn-gn", (1, 8, 8), 10)
        train_private(
            model, small, privacy=PrivacyConfig(epsilon=8, **privacy), epochs=1, lr=1e-3, batch_size=32, seed=1
        )
        return model.state_dict()["head.1.weight"]

    assert torch.equal(weights(), weights())
    assert not torch.equal(weights(seeded_noise=False), weights(seeded_noise=False))


def test_group_norm_variants_have_no_batch_norm_and_the_bn_ones_do():
    assert has_batch_norm("lenet5-bn") and has_batch_norm("digits-cnn-bn")
    assert not has_batch_norm("lenet5-gn") and not has_batch_norm("digits-cnn-gn")
    assert build_model("lenet5-half-gn", (1, 28, 28), 10)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_the_epsilon_is_inside_the_file_its_node_signs():
    model = build_model("digits-cnn-gn", (1, 8, 8), 10)
    spent = PrivacySpent(epsilon=2.97, delta=1e-5, accountant="prv")
    blob = serialize(model, "digits-cnn-gn", (1, 8, 8), 10, label_counts=[1] * 10, privacy=spent)
    assert read_header(blob)[0].privacy == spent
    plain = serialize(model, "digits-cnn-gn", (1, 8, 8), 10, label_counts=[1] * 10)
    assert read_header(plain)[0].privacy is None and sha256(plain) != sha256(blob)
    boasting = blob.replace(b"2.97", b"0.10")  # a smaller claim, same length: the signed hash no longer matches
    expected = Expected(("digits-cnn-gn",), (1, 8, 8), 10)
    with pytest.raises(ArtifactError, match="does not match its on-chain hash"):
        deserialize(boasting, sha256(blob), expected)


def test_loss_threshold_attack_finds_the_members_of_an_overfitted_model(digits_node):
    train, test = digits_node
    gen = torch.Generator().manual_seed(0)
    # random labels: nothing to generalise, so what the model gets right it has memorised
    members = Split(train.x[:40], torch.randint(0, 10, (40,), generator=gen))
    non_members = Split(test.x[:40], torch.randint(0, 10, (40,), generator=gen))
    torch.manual_seed(0)
    model = build_model("digits-cnn", (1, 8, 8), 10)
    train_classifier(model, members, epochs=150, lr=3e-3, batch_size=40, seed=0)
    attack = membership_inference(model, members, non_members)
    assert attack["auc"] > 0.9 and attack["members"] == attack["non_members"] == 40
    assert 0 <= attack["tpr_at_1pct_fpr"] <= 1
    fresh = membership_inference(build_model("digits-cnn", (1, 8, 8), 10), members, non_members)
    assert fresh["auc"] < attack["auc"] - 0.2  # an untrained model has nothing to give away


def test_inversion_closeness_tells_copies_of_training_images_from_held_out_ones(digits_node):
    train, test = digits_node
    model = build_model("digits-cnn-gn", (1, 8, 8), 10)
    n = len(test)
    members = Split(train.x[:n], train.y[:n])  # as many as the non-members: all of them are the reference
    copies = inversion_closeness(model, members.x, members, test)
    held_out = inversion_closeness(model, test.x, members, test)
    assert copies["reference"] == n and copies["synthetic"] == n
    for space in ("pixels", "features"):
        assert copies[space]["median_to_train"] < 1e-2 < copies[space]["median_to_held_out"]
        assert copies[space]["closer_to_train"] == 1 and held_out[space]["closer_to_train"] == 0


def test_fast_distils_group_norm_teachers_through_its_generator():
    """No BN statistics to invert: `fast` says so (variant "generator") and still makes inputs in range."""
    torch.manual_seed(0)
    teacher, student = build_model("digits-cnn-gn", (1, 8, 8), 10), build_model("digits-cnn-half-bn", (1, 8, 8), 10)
    syn = build_synthesizer("fast", teacher.eval(), student, DIGITS, {"iterations": 2}, seed=0, device="cpu")
    assert syn.variant == "generator"
    x = syn.step(16)
    assert x.shape == (16, 1, 8, 8) and x.min() >= -1 and x.max() <= 1


def test_a_sealed_teachers_epsilon_is_read_with_the_runs_key_else_reported_sealed(tmp_path):
    from simulations.cli import _file_privacy

    key, spent = new_seal_key(), PrivacySpent(epsilon=2.97, delta=1e-5, accountant="prv")
    blob = serialize(build_model("digits-cnn-gn", (1, 8, 8), 10), "digits-cnn-gn", (1, 8, 8), 10, privacy=spent)
    model_hash = sha256(blob)
    ArtifactStore(tmp_path / "store").put_sealed(model_hash, seal(blob, public_bytes(key), model_hash))
    uri, digest = "kdledger://0x" + "00" * 32, "0x" + model_hash.hex()
    assert _file_privacy(uri, digest, [tmp_path]) == "sealed"
    (tmp_path / "keys").mkdir()
    save_seal_key(key, tmp_path / "keys" / "distiller-x25519.key")
    assert _file_privacy(uri, digest, [tmp_path]) == spent.model_dump()
    assert _file_privacy(uri, "0x" + "11" * 32, [tmp_path]) == "no file"


def scenario_file(tmp_path, **changes):
    spec = yaml.safe_load((ROOT / "simulations/scenarios/quickstart-dp.yaml").read_text())
    for section, values in changes.items():
        spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_dp_with_batch_norm_fedavg_or_node_side_ebms_is_one_line_error(tmp_path):
    with pytest.raises(ScenarioError, match="BatchNorm.*use digits-cnn-gn"):
        load_scenario(scenario_file(tmp_path, teacher={"model": "digits-cnn-bn"}))
    with pytest.raises(ScenarioError, match="fedavg is not supported yet"):
        load_scenario(scenario_file(tmp_path, federation={"mode": "fedavg"}))
    with pytest.raises(ScenarioError, match="node_ebm"):
        load_scenario(scenario_file(tmp_path, distill={"method": "genkd", "options": {}}))
    with pytest.raises(ScenarioError, match="deepinversion matches BatchNorm statistics, and digits-cnn-gn"):
        load_scenario(scenario_file(tmp_path, distill={"method": "deepinversion", "options": {}}))
    with pytest.raises(ScenarioError, match="privacy.epsilon"):
        load_scenario(scenario_file(tmp_path), ["privacy.epsilon=0"])
    without = load_scenario(scenario_file(tmp_path), ["privacy.epsilon=null"])
    assert "privacy" not in without.decisive()  # a run without DP keeps the configuration hash it had
    assert load_scenario(scenario_file(tmp_path)).decisive()["privacy"]["epsilon"] == 3


def test_the_shipped_dp_scenarios_validate():
    assert load_scenario(ROOT / "simulations/scenarios/quickstart-dp.yaml").privacy.epsilon == 3
    if not PATH_DATASETS["fashion-mnist"].is_dir():
        pytest.skip("Fashion-MNIST is not installed (make setup)")
    spec = load_scenario(ROOT / "simulations/scenarios/fmnist-dp-eps3.yaml")
    assert spec.privacy.epsilon == 3 and spec.nodes == 5 and spec.data.alpha == 0.5
    assert spec.federation.mode == "one-shot" and not has_batch_norm(spec.teacher.model)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """`kdledger bench privacy` at tiny scale on digits: the same scenario without DP and at epsilon 3."""
    tmp = tmp_path_factory.mktemp("privacy")
    spec = yaml.safe_load((ROOT / "simulations/scenarios/quickstart-dp.yaml").read_text())
    spec["teacher"]["epochs"] = 3
    spec["distill"].update(samples=256, steps=100, batch_size=64)
    spec["distill"]["options"] = {"iterations": 3}
    scenario = tmp / "tiny-dp.yaml"
    scenario.write_text(yaml.safe_dump(spec))
    done = kdledger("bench", "privacy", "--scenario", str(scenario), "--epsilons", "inf,3", "--out", str(tmp / "b"))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "b", done


def test_bench_writes_one_row_per_epsilon_a_table_and_a_plot(bench):
    out, done = bench
    result = json.loads((out / "privacy.json").read_text())
    assert [r["target_epsilon"] for r in result["rows"]] == [None, 3.0]
    no_dp, dp = result["rows"]
    assert no_dp["max_epsilon"] is None and 0 < dp["max_epsilon"] <= 3
    for row in result["rows"]:
        assert 0 <= row["mia_auc"] <= 1 and 0 <= row["mia_tpr_at_1pct_fpr"] <= 1
        assert 0 <= row["closer_to_train_pixels"] <= 1 and 0 <= row["student_accuracy"] <= 1
    assert (out / "privacy.png").stat().st_size > 0 and "| ∞ | ∞ |" in (out / "privacy.md").read_text()
    assert "target ε" in done.stdout


def test_events_lineage_and_compare_show_each_teachers_epsilon_from_its_file(bench):
    out, _ = bench
    run_dir = out / "eps-3"
    events = json.loads(kdledger("events", "--run", str(run_dir), "--event", "TeacherRegistered", "--json").stdout)
    assert len(events) == 3 and all(0 < e["privacy"]["epsilon"] <= 3 for e in events)
    student = json.loads((run_dir / "metrics.json").read_text())["student_hash"]
    tree = json.loads(kdledger("lineage", student, "--run", str(run_dir), "--json").stdout)[0]
    teachers = [t for t in tree["teachers"] if t["kind"] == "teacher"]
    assert len(teachers) == 3 and all(t["privacy"]["delta"] == 1e-5 for t in teachers)
    text = kdledger("lineage", student, "--run", str(run_dir)).stdout
    assert text.count("ε 3.00") + text.count("ε 2.99") + text.count("ε 2.98") == 3
    table = kdledger("compare", str(out / "eps-inf"), str(run_dir)).stdout
    assert "teacher ε (max)" in table and "| ∞ |" in table


def test_privacy_meter_json_and_table(bench):
    out, _ = bench
    done = kdledger("privacy", str(out / "eps-3"), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result == json.loads((out / "eps-3" / "privacy.json").read_text())
    for row in result["nodes"]:
        assert 0 < row["privacy"]["epsilon"] <= 3
        assert 0 <= row["membership"]["auc"] <= 1 and 0 <= row["membership"]["tpr_at_1pct_fpr"] <= 1
        for space in ("pixels", "features"):
            assert 0 <= row["inversion"][space]["closer_to_train"] <= 1
    table = kdledger("privacy", str(out / "eps-3"))
    assert table.returncode == 0 and "MIA AUC" in table.stdout and "closer to train" in table.stdout
    missing = kdledger("privacy", str(out))
    assert missing.returncode == 2 and "not a readable kdledger run directory" in missing.stderr
