"""What makes each baseline that method, on tiny models."""

import copy

import pytest
import torch
import torch.nn.functional as F

from node.dfkd import InputSpace, MethodError, build_synthesizer
from node.dfkd.criterions import js_divergence, minkowski_loss
from node.dfkd.dafl import dafl_losses
from node.dfkd.generator import Generator
from node.dfkd.zskd import dirichlet_concentration
from node.models import Ensemble, build_model

CPU = torch.device("cpu")
SHAPE = (1, 28, 28)


def lenets(bn=True, seed=0):
    torch.manual_seed(seed)
    suffix = "-bn" if bn else ""
    return build_model("lenet5" + suffix, SHAPE, 10).eval(), build_model("lenet5-half" + suffix, SHAPE, 10).eval()


def make(method, teacher, student, options):
    return build_synthesizer(method, teacher, student, InputSpace(SHAPE), options, seed=0, device=CPU)


def test_minkowski_p1_is_mae_and_the_raw_distance_is_c_times_mae():
    t, s = torch.randn(8, 10), torch.randn(8, 10)
    mae = (t - s).abs().mean()
    assert torch.allclose(minkowski_loss(t, s, 1.0), mae)
    assert torch.allclose(minkowski_loss(t, s, 1.0) * 10, (t - s).abs().sum(1).mean())  # Manhattan = C x MAE
    assert torch.allclose(minkowski_loss(t, s, 2.0), (t - s).norm(dim=1).mean() / 10)


def test_minkowski_generator_objective_contains_the_student():
    teacher, student = lenets()
    gen = Generator(16, SHAPE)
    z = torch.randn(8, 16)

    def generator_grad(s):
        gen.zero_grad()
        x = gen(z)
        (-minkowski_loss(teacher(x), s(x), 1.5)).backward()
        return sum(p.grad.abs().sum() for p in gen.parameters() if p.grad is not None)

    assert generator_grad(student) > 0
    # with a student that is the teacher's twin there is nothing to disagree on: the objective is flat.
    # Passing the teacher as the student would silently do this; the interface refuses it.
    assert generator_grad(copy.deepcopy(teacher)) < 1e-6
    for method in ("minkowski", "dafl", "genkd", "deepinversion"):
        with pytest.raises(MethodError, match="different network"):
            make(method, teacher, teacher, {})


def test_adi_competition_term_depends_on_the_student():
    teacher, student = lenets()
    x = torch.randn(4, *SHAPE)
    other = build_model("lenet5-half-bn", SHAPE, 10).eval()
    a = js_divergence(teacher(x), student(x), 3.0)
    b = js_divergence(teacher(x), other(x), 3.0)
    assert a != b and a >= 0
    assert js_divergence(teacher(x), teacher(x), 3.0).abs() < 1e-6


def test_deepinversion_refuses_a_teacher_without_batch_norm():
    teacher, student = lenets(bn=False)
    with pytest.raises(MethodError, match="no batch-norm"):
        make("deepinversion", teacher, student, {})


def test_zskd_labels_follow_the_similarity_rows():
    teacher, student = lenets()
    syn = make("zskd", teacher, student, {"betas": [1.0]})
    labels = torch.cat([syn.targets(500) for _ in range(20)])  # drawn across steps: classes keep taking turns
    alpha = dirichlet_concentration(teacher.head[-1].weight, 1.0)
    for k in range(10):
        mean = labels[k::10].mean(0)  # class k's draws: the Dirichlet mean is alpha_k / sum(alpha_k)
        assert torch.allclose(mean, alpha[k] / alpha[k].sum(), atol=0.03)
        assert mean.argmax() == k


def test_dafl_losses_as_the_reference_has_them_and_on_an_ensemble():
    teacher, _ = lenets()
    x = torch.randn(16, *SHAPE, requires_grad=True)
    one_hot, activation, info = dafl_losses(teacher, x)
    logits = teacher(x)
    assert torch.allclose(one_hot, F.cross_entropy(logits, logits.argmax(1)))
    assert activation <= 0
    mean = F.softmax(logits, 1).mean(0)
    assert torch.allclose(info, (mean * mean.log10()).sum(), atol=1e-6)  # log base 10, as DAFL's code
    assert info >= -1 - 1e-6  # -H(mean) is smallest for balanced classes: -log10(10)
    (one_hot + activation + info).backward()
    assert x.grad.abs().sum() > 0
    ensemble = Ensemble([teacher, lenets(seed=1)[0]])
    one_hot, activation, info = dafl_losses(ensemble, x)  # no crash: the ensemble offers the same interface
    assert torch.allclose(one_hot, F.cross_entropy(ensemble(x), ensemble(x).argmax(1)))


def test_generator_methods_output_in_the_data_range():
    teacher, student = lenets()
    for method in ("dafl", "minkowski"):
        x = make(method, teacher, student, {"batch_size": 16}).step(16)
        assert x.shape == (16, *SHAPE) and x.min() >= -1 and x.max() <= 1
