"""GenKD's parts on tiny networks: each test checks one claim of node/dfkd/genkd.py's docstring."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from node.dfkd import InputSpace, StudentLoop, build_synthesizer, distill
from node.dfkd.genkd import (
    GenKDOptions,
    LabelPrior,
    Langevin,
    PolicyGradient,
    ReplayBuffer,
    balanced_backward,
    dirichlet_concentration,
    downstream_loss,
    ebm_training_loss,
    energy,
    seeded_gamma,
    train_ebm,
)
from node.models import build_model

SHAPE = (1, 8, 8)


def nets(seed=0):
    torch.manual_seed(seed)
    return build_model("digits-cnn", SHAPE, 10).eval(), build_model("digits-cnn-half", SHAPE, 10).eval()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_dirichlet_alpha_is_minmax_scaled_cosine_of_last_layer_rows():
    w = torch.randn(5, 7)
    alpha = dirichlet_concentration(w, beta=2.0)
    cos = F.normalize(w, dim=1) @ F.normalize(w, dim=1).T
    for k in range(5):
        row = (cos[k] - cos[k].min()) / (cos[k].max() - cos[k].min())
        assert torch.allclose(alpha[k], (2.0 * row).clamp_min(1e-3), atol=1e-6)
    assert torch.allclose(alpha.diagonal(), torch.full((5,), 2.0))  # a class is most similar to itself


def test_seeded_gamma_has_the_right_mean_and_prior_labels_are_distributions():
    alpha = torch.tensor([0.3, 1.0, 4.0])
    draws = seeded_gamma(alpha.expand(40_000, 3), gen())
    assert torch.allclose(draws.mean(0), alpha, rtol=0.05)
    teacher, _ = nets()
    prior = LabelPrior(teacher.head[-1].weight, "dirichlet")
    k, soft = prior.sample(500, gen())
    assert torch.allclose(soft.sum(1), torch.ones(500), atol=1e-5)
    # a soft label puts more mass on its own class than on average: row k of alpha peaks at k
    assert soft.gather(1, k.view(-1, 1)).mean() > soft.mean()
    k2, soft2 = prior.sample(500, gen())
    assert torch.equal(k, k2) and torch.equal(soft, soft2)  # reproducible from the generator


def test_replay_buffer_reinitialises_a_fraction_near_mu():
    teacher, _ = nets()
    buf = ReplayBuffer(1000, SHAPE, LabelPrior(teacher.head[-1].weight), gen())
    assert buf.x.min() >= -1 and buf.x.max() <= 1
    fresh = torch.cat([buf.sample(500, 0.05)[4] for _ in range(40)]).float().mean()
    assert 0.04 < fresh < 0.06


def test_burn_in_banks_only_chains_that_have_taken_enough_steps(monkeypatch):
    teacher, student = nets()
    options = {"sgld_steps": 2, "burn_in": 6, "batch_size": 16, "buffer_size": 16, "reinit": 0.0}
    syn = build_synthesizer("genkd", teacher, student, InputSpace(SHAPE), options, seed=0, device=torch.device("cpu"))
    syn.use_node_models([{}], [1.0])  # the teacher is its own EBM
    chained, chain = [], type(syn.langevin).chain
    monkeypatch.setattr(
        type(syn.langevin), "chain", lambda self, ebm, x, *rest: chained.append(len(x)) or chain(self, ebm, x, *rest)
    )
    first = syn.step(16)
    assert chained == [16, 16, 16]  # 2 + 2 + 2 SGLD steps reach the burn-in of 6 before the batch is banked
    assert (syn._state(0)[1].age == 6).all()
    chained.clear()
    syn.step(16)  # the same chains (none restarts, reinit 0), now past burn-in: one segment
    assert chained == [16] and (syn._state(0)[1].age == 8).all()
    assert first.min() >= -1 and first.max() <= 1


def test_buffer_samples_distinct_chains_and_synthesis_repeats_exactly():
    teacher, student = nets()
    buf = ReplayBuffer(100, SHAPE, LabelPrior(teacher.head[-1].weight), gen())
    idx = buf.sample(64, 0.05)[0]
    assert len(idx.unique()) == 64

    def transfer():
        t, s = nets()
        syn = build_synthesizer(
            "genkd",
            t,
            s,
            InputSpace(SHAPE),
            {"sgld_steps": 3, "k": 2, "batch_size": 16},
            seed=0,
            device=torch.device("cpu"),
        )
        return distill(syn, StudentLoop(samples=48, steps=6, batch_size=16), seed=0).transfer

    assert torch.equal(transfer(), transfer())


def test_sgld_step_matches_the_formula():
    teacher, _ = nets()
    lp = torch.zeros(10)
    x0, labels = torch.rand(4, *SHAPE) * 2 - 1, torch.tensor([0, 1, 2, 3])
    lang = Langevin(step=0.5, noise=0.01)
    states = lang.chain(teacher, x0, labels, lp, 1, gen(3))
    xr = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(teacher(xr).gather(1, labels.view(-1, 1)).sum(), xr)
    eps = torch.randn(x0.shape, generator=gen(3))
    assert torch.allclose(states[1], (x0 + 0.5 * grad + 0.01 * eps).clamp(-1, 1), atol=1e-6)  # clamped as taken
    paper = Langevin.from_options(GenKDOptions(parameterization="paper", noise=0.1))
    assert (paper.step, paper.noise) == pytest.approx((0.005, 0.1))  # sigma^2 / 2 and sigma


def test_log_m_scores_the_step_actually_taken_inside_and_at_the_bounds():
    teacher, _ = nets()
    lp = torch.zeros(10)
    lang = Langevin(step=0.5, noise=0.1)
    x, labels = torch.zeros(2, *SHAPE), torch.tensor([0, 1])
    mean = x + lang.drift(teacher, x, labels, lp)
    inside = (mean + 0.05).clamp(-0.99, 0.99)
    logp = lang.log_prob(teacher, x, inside, labels, lp)
    assert torch.allclose(logp, (-((inside - mean) ** 2) / (2 * 0.01)).flatten(1).sum(1), atol=1e-4)
    at_top = torch.ones_like(x)  # every coordinate clamped at +1: the mass of N(mean, sigma^2) beyond 1
    logp = lang.log_prob(teacher, x, at_top, labels, lp)
    expected = torch.special.log_ndtr((mean - 1.0) / 0.1).flatten(1).sum(1)
    assert torch.allclose(logp, expected, atol=1e-4)
    # states of a long chain never leave the range, and every transition scores finitely
    states = Langevin(step=5.0, noise=0.3).chain(teacher, torch.rand(8, *SHAPE) * 2 - 1, None, lp, 6, gen(0))
    assert all(s.min() >= -1 and s.max() <= 1 for s in states)
    big = Langevin(step=5.0, noise=0.3)
    scores = torch.stack([big.log_prob(teacher, a, b, None, lp) for a, b in zip(states, states[1:])])
    assert torch.isfinite(scores).all()


def test_balanced_backward_gives_the_policy_gradient_lambda_a_times_the_mle_gradients_norm():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    mle, l_b = (w**2).sum(), 1000.0 * w.sum()  # l_b's raw gradient is 250-500 times larger
    scale = balanced_backward([w], mle, l_b, 0.1)
    g_mle, g_pg = 2 * torch.tensor([1.0, 2.0]), torch.tensor([1000.0, 1000.0])
    assert scale == pytest.approx(0.1 * g_mle.norm().item() / g_pg.norm().item(), rel=1e-5)
    assert torch.allclose(w.grad, g_mle + scale * g_pg)
    assert (scale * g_pg).norm() == pytest.approx(0.1 * g_mle.norm().item(), rel=1e-5)


def test_marginal_energy_is_logsumexp_with_the_prior():
    teacher, _ = nets()
    x, lp = torch.randn(3, *SHAPE), torch.log(torch.full((10,), 0.1))
    assert torch.allclose(energy(teacher, x, None, lp), torch.logsumexp(teacher(x) + lp, 1))


def test_contrastive_divergence_sign_raises_f_on_data_relative_to_samples():
    teacher, student = nets()
    ebm = copy.deepcopy(teacher)
    o = GenKDOptions(policy_gradient=False, lambda_cls=0.0, sgld_steps=3)
    prior = LabelPrior(teacher.head[-1].weight)
    x_pos, y_pos = torch.rand(16, *SHAPE) * 2 - 1, torch.randint(10, (16,))
    x_neg, labels = torch.rand(16, *SHAPE) * 2 - 1, torch.randint(10, (16,))
    states = [x_neg]

    def gap():
        with torch.no_grad():
            return (
                energy(ebm, x_pos, y_pos, prior.log_marginal).mean()
                - energy(ebm, x_neg, labels, prior.log_marginal).mean()
            ).item()

    before = gap()
    loss = ebm_training_loss(
        ebm,
        teacher,
        student,
        prior,
        Langevin(1.0, 0.01),
        PolicyGradient(),
        o,
        x_pos,
        y_pos,
        states,
        labels,
        None,
        gen(),
    )
    assert torch.allclose(loss.l_a, -torch.tensor(before), atol=1e-5)
    loss.total.backward()
    with torch.no_grad():
        for p in ebm.parameters():
            p -= 1e-3 * p.grad
    assert gap() > before


def _pg_setup():
    teacher, student = nets()
    ebm = copy.deepcopy(teacher)
    lp = torch.zeros(10)
    lang = Langevin(step=1.0, noise=0.05)
    x0, labels = torch.rand(32, *SHAPE) * 2 - 1, torch.randint(10, (32,))
    states = lang.chain(ebm, x0, labels, lp, 4, gen(1))
    return teacher, student, ebm, lp, lang, labels, states


def test_policy_gradient_reaches_theta_through_grad_x_f():
    teacher, student, ebm, lp, lang, labels, states = _pg_setup()
    soft = F.one_hot(labels, 10).float()

    def reward_fn(x):
        return downstream_loss(
            teacher, student, x, soft, torch.full((10,), 0.1), lambda_kl=1, lambda_cls=1, temperature=4
        )

    l_b, rewards = PolicyGradient().loss(ebm, lang, states, 0, 3, labels, lp, reward_fn)
    assert not rewards.requires_grad  # the reward is a number, not a path for gradients
    l_b.backward()
    no_grad = [name for name, p in ebm.named_parameters() if p.grad is None]
    assert no_grad == ["head.1.bias"]  # grad_x f does not depend on the last bias, so neither does L_b
    assert sum(p.grad.abs().sum() for p in ebm.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in student.parameters())


def test_a_step_along_minus_grad_lb_raises_log_prob_of_rewarded_transitions():
    teacher, student, ebm, lp, lang, labels, states = _pg_setup()
    # a reward that is positive for the first half of the batch and negative for the second
    sign = torch.cat([torch.ones(16), -torch.ones(16)])
    calls = iter(range(100))
    reward_fn = lambda x: -sign * next(calls)  # noqa: E731 - costs fall for the first half at every step
    pg = PolicyGradient()
    l_b, rewards = pg.loss(ebm, lang, states, 0, 1, labels, lp, reward_fn)
    assert (rewards[0, :16] > 0).all() and (rewards[0, 16:] < 0).all()
    before = lang.log_prob(ebm, states[0], states[1], labels, lp).detach()
    l_b.backward()
    with torch.no_grad():
        for p in ebm.parameters():
            if p.grad is not None:
                p -= 1e-4 * p.grad
    after = lang.log_prob(ebm, states[0], states[1], labels, lp).detach()
    change = after - before
    # what -grad L_b guarantees to first order: the advantage-weighted log-probability goes up
    assert (sign * change).sum() > 0
    assert change[:16].mean() > 0  # the rewarded transitions became more likely


def test_genkd_n_differs_from_genkd_only_by_lambda_a_lb():
    teacher, student, ebm, lp, lang, labels, states = _pg_setup()
    prior = LabelPrior(teacher.head[-1].weight)
    x_pos, y_pos = torch.rand(32, *SHAPE) * 2 - 1, torch.randint(10, (32,))
    soft = F.one_hot(labels, 10).float()
    common = dict(sgld_steps=4, k=2, lambda_a=0.7)
    with_pg = ebm_training_loss(
        ebm,
        teacher,
        student,
        prior,
        lang,
        PolicyGradient(),
        GenKDOptions(**common),
        x_pos,
        y_pos,
        states,
        labels,
        soft,
        gen(5),
    )
    without = ebm_training_loss(
        ebm,
        teacher,
        student,
        prior,
        lang,
        PolicyGradient(),
        GenKDOptions(**common, policy_gradient=False),
        x_pos,
        y_pos,
        states,
        labels,
        soft,
        gen(5),
    )
    assert without.l_b == 0 and with_pg.l_b != 0
    assert torch.allclose(with_pg.total - without.total, 0.7 * with_pg.l_b, atol=1e-5)
    assert torch.allclose(with_pg.l_a, without.l_a) and torch.allclose(with_pg.l_cls, without.l_cls)


def test_data_node_ebm_training_runs_and_keeps_the_teacher_unchanged():
    teacher, student = nets()
    before = copy.deepcopy(teacher.state_dict())
    x, y = torch.rand(64, *SHAPE) * 2 - 1, torch.randint(10, (64,))
    ebm, history = train_ebm(
        teacher,
        student,
        x,
        y,
        {"node_iterations": 3, "sgld_steps": 4, "k": 2, "buffer_size": 50, "batch_size": 16},
        seed=0,
    )
    assert len(history["l_b"]) == 3 and all(v != 0 for v in history["l_b"])
    assert all(0 < scale for scale in history["pg_scale"])  # L_b was rescaled, not dropped
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in ebm.state_dict().items())


def test_genkd_steps_share_the_samples_between_node_ebms_by_their_data():
    teachers = [nets(0)[0], nets(1)[0]]
    from node.models import Ensemble

    _, student = nets(2)
    syn = build_synthesizer(
        "genkd",
        Ensemble(teachers, [3.0, 1.0]),
        student,
        InputSpace(SHAPE),
        {"sgld_steps": 2, "k": 1, "batch_size": 8},
        seed=0,
        device=torch.device("cpu"),
    )
    assert syn.variant == "teacher-as-ebm"
    ebms = [{"ebm": copy.deepcopy(t)} for t in teachers]
    assert syn.use_node_models(ebms, [3.0, 1.0]) == "published-ebm"
    for _ in range(8):
        x = syn.step(8)
        assert x.shape == (8, *SHAPE) and x.min() >= -1 and x.max() <= 1
    assert syn.made == [48, 16]  # 3:1, as the nodes' data


@pytest.mark.parametrize("classes", ["nodes", "prior"])
def test_each_node_ebm_is_asked_only_for_the_classes_its_node_saw(classes):
    from node.models import Ensemble

    teachers = [nets(0)[0], nets(1)[0]]
    teachers[0].label_counts = [30, 10] + [0] * 8  # as loaded from a teacher's file (node/artifacts.py)
    teachers[1].label_counts = [0] * 7 + [5, 5, 5]
    _, student = nets(2)
    options = {"sgld_steps": 1, "burn_in": 0, "batch_size": 8, "buffer_size": 400, "reinit": 0.5, "classes": classes}
    syn = build_synthesizer(
        "genkd", Ensemble(teachers), student, InputSpace(SHAPE), options, seed=0, device=torch.device("cpu")
    )
    syn.use_node_models([{"ebm": copy.deepcopy(t)} for t in teachers], [40.0, 15.0])
    for _ in range(6):
        syn.step(8)
    drawn = [torch.bincount(syn._state(i)[1].labels, minlength=10) for i in range(2)]
    if classes == "prior":  # every EBM is asked for every class
        assert (drawn[0] > 0).all() and (drawn[1] > 0).all()
    else:  # the node's own histogram: its classes only, in its proportions
        assert drawn[0][2:].sum() == 0 and drawn[1][:7].sum() == 0
        assert 2.4 < drawn[0][0] / drawn[0][1] < 3.6
        assert drawn[1][7:].min() > 100


def test_distiller_finetunes_the_ebm_only_when_asked():
    """finetune: false keeps L_b on the data nodes and samples the published EBM as it is."""
    teacher, student = nets()
    moved = {}
    for finetune in (True, False):
        syn = build_synthesizer(
            "genkd",
            teacher,
            copy.deepcopy(student),
            InputSpace(SHAPE),
            {"sgld_steps": 3, "k": 2, "batch_size": 8, "finetune": finetune},
            seed=0,
            device=torch.device("cpu"),
        )
        before = copy.deepcopy(syn.ebms[0].state_dict())
        for _ in range(2):
            syn.step(8)
        moved[finetune] = any(not torch.equal(before[k], v) for k, v in syn.ebms[0].state_dict().items())
    assert moved == {True: True, False: False}


def test_kl_to_the_published_ebm_is_zero_at_the_start_and_pulls_back_after_a_move():
    teacher, _ = nets()
    moved = copy.deepcopy(teacher)
    lang = Langevin(step=1.0, noise=0.01)
    x, labels = torch.rand(4, *SHAPE) * 2 - 1, torch.randint(10, (4,))
    log_prior = torch.full((10,), -math.log(10))
    assert torch.allclose(lang.kl(moved, teacher, x, labels, log_prior), torch.zeros(4), atol=1e-6)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.01 * torch.randn_like(p))
    kl = lang.kl(moved, teacher, x, labels, log_prior)
    assert (kl > 0).all()
    kl.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in moved.parameters())
    assert all(p.grad is None for p in teacher.parameters())  # the anchor never moves


def test_genkd_student_beats_the_noise_floor_on_digits():
    """CI-sized: the same two digits teachers, the same budget, noise transfer set vs GenKD's buffer."""
    from node.config import DataConfig
    from node.data import node_splits
    from node.models import Ensemble
    from node.training import accuracy, train_classifier

    torch.set_num_threads(1)
    teachers, tests = [], []
    for pid in range(2):
        train, test = node_splits(DataConfig(alpha=1.0), pid, 2, seed=0)
        torch.manual_seed(pid)
        t = build_model("digits-cnn", SHAPE, 10)
        train_classifier(t, train, epochs=10, lr=1e-3, batch_size=32, seed=pid)
        teachers.append(t)
        tests.append(test)
    scores = {}
    for method, options in (("noise", {}), ("genkd", {"sgld_steps": 10, "k": 3, "batch_size": 64})):
        torch.manual_seed(0)
        student = build_model("digits-cnn-half", SHAPE, 10)
        syn = build_synthesizer(
            method, Ensemble(teachers), student, InputSpace(SHAPE), options, seed=0, device=torch.device("cpu")
        )
        result = distill(syn, StudentLoop(samples=1280, steps=600, batch_size=64), seed=0)
        scores[method] = sum(accuracy(result.student, t) * len(t) for t in tests) / sum(len(t) for t in tests)
    assert scores["genkd"] > scores["noise"] + 0.03, scores
