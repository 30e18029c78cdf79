"""The DFKD library on tiny models: the interface, the KD loss, and what makes soft-target synthesis itself."""

import pytest
import torch
import torch.nn.functional as F

from node.dfkd import InputSpace, MethodError, build_synthesizer, distill, kd_loss
from node.dfkd.softtarget import correlation_from_weights, sample_feature_space
from node.models import Ensemble, build_model

SPACE = InputSpace((1, 8, 8))
CPU = torch.device("cpu")


def nets(seed=0):
    torch.manual_seed(seed)
    return build_model("digits-cnn", (1, 8, 8), 10), build_model("digits-cnn-half", (1, 8, 8), 10)


def test_correlation_is_the_cosine_matrix_and_psd():
    w = torch.randn(12, 30)
    r = correlation_from_weights(w)
    cos = torch.stack([torch.stack([F.cosine_similarity(a, b, dim=0) for b in w]) for a in w])
    assert torch.allclose(r, cos, atol=1e-6)
    assert torch.allclose(torch.diag(r), torch.ones(12), atol=1e-6)
    assert torch.linalg.eigvalsh(r).min() > -1e-5  # Sigma = sigma R is a covariance


def test_feature_samples_have_covariance_sigma_r():
    w = torch.randn(6, 20)
    s = sample_feature_space(w, 200_000, 1.5, torch.Generator().manual_seed(0))
    empirical = torch.cov(s.T)
    assert torch.allclose(empirical, 1.5 * correlation_from_weights(w), atol=0.03)
    assert s.mean(0).abs().max() < 0.02  # mu = 0


def test_kd_loss_is_zero_only_when_student_matches_and_moves_only_the_student():
    t = torch.randn(8, 10)
    assert kd_loss(t.clone(), t, 4.0).abs() < 1e-6
    s = torch.randn(8, 10, requires_grad=True)
    loss = kd_loss(s, t, 4.0)
    assert loss > 0
    loss.backward()
    assert s.grad.abs().sum() > 0


def test_teacher_passed_as_student_is_refused():
    teacher, _ = nets()
    with pytest.raises(MethodError, match="different network"):
        build_synthesizer("softtarget", teacher, teacher, SPACE, {}, samples=10, seed=0, device=CPU)


def test_unknown_method_and_option_name_the_field():
    teacher, student = nets()
    with pytest.raises(MethodError, match="distill.method"):
        build_synthesizer("nope", teacher, student, SPACE, {}, samples=10, seed=0, device=CPU)
    with pytest.raises(MethodError, match="distill.options.sigmaa"):
        build_synthesizer("softtarget", teacher, student, SPACE, {"sigmaa": 1}, samples=10, seed=0, device=CPU)


def test_softtarget_optimises_inputs_towards_their_soft_targets():
    teacher, student = nets()
    syn = build_synthesizer("softtarget", teacher, student, SPACE, {"iterations": 1}, samples=64, seed=0, device=CPU)
    targets = syn.soft_targets(teacher, 64)
    assert torch.allclose(targets.sum(1), torch.ones(64))
    x = syn.noise(64).requires_grad_(True)
    before = syn.generation_loss(teacher, x, targets)
    before.backward()
    assert x.grad.abs().sum() > 0  # gradients reach the inputs
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(60):
        loss = syn.generation_loss(teacher, x, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert syn.generation_loss(teacher, x, targets) < before


def test_softtarget_yields_the_budget_within_bounds_and_leaves_teacher_trainable():
    teacher, student = nets()
    syn = build_synthesizer("softtarget", Ensemble([teacher, nets(1)[0]]), student, SPACE,
                            {"iterations": 3, "batch_size": 16}, samples=50, seed=0, device=CPU)
    batches = list(syn.synthesize())
    x = torch.cat(batches)
    assert x.shape == (50, 1, 8, 8)
    assert x.min() >= -1 and x.max() <= 1
    assert all(p.requires_grad for p in teacher.parameters())


def test_distill_trains_the_student_towards_the_teacher_and_is_deterministic():
    def run():
        teacher, student = nets()
        syn = build_synthesizer("noise", teacher, student, SPACE, {}, samples=512, seed=0, device=CPU)
        x = syn.noise(256)
        with torch.no_grad():
            before = kd_loss(student(x), teacher(x), 4.0).item()
        result = distill(syn, epochs=15, lr=1e-3, batch_size=64, temperature=4.0, seed=0)
        with torch.no_grad():
            after = kd_loss(result.student(x), teacher(x), 4.0).item()
        return before, after, result

    before, after, result = run()
    assert after < before / 2
    assert result.losses[-1] < result.losses[0]
    _, _, again = run()
    for name, tensor in result.student.state_dict().items():
        assert torch.equal(tensor, again.student.state_dict()[name])
