"""The DFKD library's shared parts: the loop, the bank, augmentation, BN statistics, losses, and every
method through the registry with one teacher and with an ensemble."""

import copy
import time

import pytest
import torch

from node.dfkd import METHODS, InputSpace, MethodError, StudentLoop, build_synthesizer, distill, kd_loss
from node.dfkd.augment import Augment
from node.dfkd.bank import MemoryBank
from node.dfkd.criterions import agreement_disagreement, negative_entropy_of_mean
from node.dfkd.generator import Generator
from node.dfkd.hooks import BNStatistics
from node.models import Ensemble, MaxPool2x2, build_model

CPU = torch.device("cpu")
DIGITS = InputSpace((1, 8, 8))
FMNIST = InputSpace((1, 28, 28), flip=True)


def nets(seed=0, arch="digits-cnn", shape=(1, 8, 8)):
    torch.manual_seed(seed)
    return build_model(arch, shape, 10).eval(), build_model(
        arch.replace("-bn", "") + "-half" if "lenet" not in arch else "lenet5-half-bn", shape, 10
    )


def lenet_bn(seed=0):
    """A LeNet-5-BN teacher whose BN layers hold statistics that are not the defaults."""
    torch.manual_seed(seed)
    t = build_model("lenet5-bn", (1, 28, 28), 10)
    with torch.no_grad():
        t.train()
        for _ in range(5):
            t(torch.rand(32, 1, 28, 28) * 0.8 - 0.6)
    return t.eval()


# -- losses ---------------------------------------------------------------------------------------
def test_kd_loss_is_zero_only_when_student_matches_and_moves_only_the_student():
    t = torch.randn(8, 10)
    assert kd_loss(t.clone(), t, 4.0).abs() < 1e-6
    s = torch.randn(8, 10, requires_grad=True)
    loss = kd_loss(s, t, 4.0)
    assert loss > 0
    loss.backward()
    assert s.grad.abs().sum() > 0


def test_adversarial_term_counts_only_samples_where_teacher_and_student_agree():
    t = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    s = torch.tensor([[1.0, 0.0], [2.0, 0.0]], requires_grad=True)  # agrees on the first, not the second
    loss = agreement_disagreement(t, s)
    assert loss < 0  # minimising it raises the disagreement
    loss.backward()
    assert s.grad[0].abs().sum() > 0 and s.grad[1].abs().sum() == 0  # the flipped sample is masked out
    assert agreement_disagreement(t, t.clone()).abs() < 1e-7


def test_class_balance_term_is_smallest_for_a_balanced_batch():
    balanced = torch.eye(10) * 20
    skewed = torch.zeros(10, 10)
    skewed[:, 0] = 20
    assert negative_entropy_of_mean(balanced, base=10) == pytest.approx(-1.0, abs=1e-4)  # log10(10) = 1
    assert negative_entropy_of_mean(skewed, base=10) > -0.01


# -- shared parts ---------------------------------------------------------------------------------
def test_bank_keeps_everything_and_balanced_draws_even_out_the_teachers_classes():
    bank = MemoryBank()
    bank.add(torch.zeros(90, 1), torch.zeros(90, dtype=torch.long))
    bank.add(torch.ones(10, 1), torch.ones(10, dtype=torch.long))
    assert len(bank) == 100 and bank.class_counts(3) == [90, 10, 0]
    g = torch.Generator().manual_seed(0)
    share_of_ones = bank.sample(4000, g, balanced=True).mean().item()
    assert 0.45 < share_of_ones < 0.55  # 10% of the bank, half the draws
    assert bank.sample(4000, g, balanced=False).mean().item() < 0.15
    grown = MemoryBank()
    for start in range(0, 1000, 7):  # many small batches: storage doubles, order and labels are kept
        stop = min(start + 7, 1000)
        grown.add(torch.arange(start, stop, dtype=torch.float)[:, None], torch.arange(start, stop) % 3)
    assert torch.equal(grown.x[:, 0], torch.arange(1000.0)) and torch.equal(grown.labels, torch.arange(1000) % 3)
    assert grown.class_counts(3) == [334, 333, 333]


def test_augmentation_shifts_and_mirrors_only_where_allowed_and_passes_gradients():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3, 3] = 1.0
    shifted = Augment(2, False, 0.0, torch.Generator().manual_seed(0))(x)
    where = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = where // 8, where % 8
    assert rows.min() >= 1 and rows.max() <= 5 and cols.min() >= 1 and cols.max() <= 5 and len(set(where.tolist())) > 5
    asym = torch.zeros(256, 1, 4, 4)
    asym[:, :, :, 0] = 1.0
    mirrored = Augment(0, True, 0.0, torch.Generator().manual_seed(0))(asym)
    flipped = (mirrored[:, 0, :, 3] == 1).all(1).float().mean()
    assert 0.4 < flipped < 0.6
    assert torch.equal(Augment(0, False, 0.0, torch.Generator())(asym), asym)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    Augment(2, True, -1.0, torch.Generator().manual_seed(1))(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_bn_statistics_fall_as_inputs_are_optimised_and_count_only_while_recording():
    teacher = lenet_bn()
    stats = BNStatistics(teacher)
    x = (torch.rand(32, 1, 28, 28) * 2 - 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    losses = []
    for _ in range(60):
        with stats.recording():
            teacher(x)
        loss = stats.take()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        teacher(x)  # outside recording(): labelling a batch for the student adds nothing
    assert stats.take().item() == 0
    stats.remove()
    assert not stats


def test_bn_momentum_judges_a_batch_as_part_of_the_running_mixture():
    teacher = lenet_bn()
    plain, mixed = BNStatistics(teacher), BNStatistics(teacher, momentum=0.9)
    a, b = torch.rand(16, 1, 28, 28), -torch.rand(16, 1, 28, 28)
    with plain.recording(), mixed.recording():
        teacher(a)
    assert torch.isclose(plain.take(), mixed.take())  # no history yet: the same distance
    mixed.commit()
    with plain.recording(), mixed.recording():
        teacher(b)
    assert not torch.isclose(plain.take(), mixed.take())
    plain.remove(), mixed.remove()


def test_generator_outputs_lie_in_the_data_range_and_reach_both_ends():
    torch.manual_seed(0)
    gen = Generator(16, (1, 28, 28), low=-1.0, high=1.0)
    with torch.no_grad():
        gen.body[-2].bias.fill_(0.0)
        gen.body[-2].weight.mul_(50)  # saturate the tanh both ways
        x = gen(torch.randn(64, 16))
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.99 and x.max() > 0.99
    assert Generator(8, (1, 8, 8), low=0.0, high=1.0)(torch.randn(4, 8)).min() >= 0


def test_ensemble_weights_per_class_let_the_nodes_that_saw_a_class_speak_for_it():
    a, b = nets(0)[0], nets(1)[0]
    x = torch.randn(5, 1, 8, 8)
    weights = torch.ones(2, 10)
    weights[1, 3] = 0.0  # node b never saw class 3
    ens = Ensemble([a, b], weights)
    assert torch.allclose(ens.weights.sum(0), torch.ones(10))
    out = ens(x)
    assert torch.allclose(out[:, 3], a(x)[:, 3], atol=1e-6)
    assert torch.allclose(out[:, 0], 0.5 * (a(x)[:, 0] + b(x)[:, 0]), atol=1e-6)
    assert torch.allclose(Ensemble([a, b], [3.0, 1.0])(x), 0.75 * a(x) + 0.25 * b(x), atol=1e-6)
    logits, features = ens.logits_and_features(x)
    assert torch.allclose(logits, out) and features.shape[1] == 2 * a.features(x).shape[1]
    # a subset's weights renormalised over its members: a alone speaks for every class; b alone for those it saw
    assert torch.allclose(ens.subset([0])(x), a(x), atol=1e-6) and torch.allclose(ens.subset([0, 1])(x), out)
    only_b = ens.subset([1])(x)
    assert torch.allclose(only_b[:, :3], b(x)[:, :3], atol=1e-6) and torch.equal(only_b[:, 3], torch.zeros(5))


def test_the_pool_without_gradients_gives_torch_s_numbers_and_with_them_is_torch_s_pool():
    pool, reference = MaxPool2x2(), torch.nn.MaxPool2d(2)
    for shape in [(4, 3, 28, 28), (2, 5, 7, 9), (1, 1, 2, 3)]:  # odd sides drop the last row or column
        x = torch.randn(shape)
        x[0, 0, 0, 0] = float("nan")
        with torch.no_grad():
            assert torch.equal(pool(x).isnan(), reference(x).isnan())
            assert torch.equal(pool(x).nan_to_num(), reference(x).nan_to_num())
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = pool(x)
    assert out.grad_fn is not None and out.grad_fn.name() == reference(x).grad_fn.name()
    out.sum().backward()
    assert x.grad is not None and x.grad.sum() == out.numel()  # one input per window takes the gradient
    teacher = build_model("lenet5-bn", (1, 28, 28), 10).eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        fast = teacher(x)
    assert torch.equal(fast, teacher(x.requires_grad_()))  # a labelling pass gives what a gradient pass does


# -- every method, through the registry ----------------------------------------------------------------
OPTIONS = {
    "noise": {},
    "kd": {},
    "fast": {"iterations": 2},
    "deepinversion": {"iterations": 2},
    "dafl": {"batch_size": 8, "width": 16},
    "minkowski": {"batch_size": 8},
    "zskd": {"iterations": 2},
    "softtarget": {"iterations": 2},
    "genkd": {"sgld_steps": 3, "k": 2, "batch_size": 8},
    "public": {"dataset": "fashion-mnist"},
}


def test_every_registered_method_is_tested_here():
    assert set(OPTIONS) == set(METHODS)


@pytest.mark.parametrize("method", sorted(OPTIONS))
@pytest.mark.parametrize("members", [1, 2])
def test_every_method_makes_batches_in_range_for_a_teacher_and_an_ensemble(method, members):
    teachers = [lenet_bn(seed) for seed in range(members)]
    teacher = teachers[0] if members == 1 else Ensemble(teachers)
    before = copy.deepcopy(teacher.state_dict())
    torch.manual_seed(5)
    student = build_model("lenet5-half-bn", (1, 28, 28), 10)
    syn = build_synthesizer(method, teacher, student, FMNIST, OPTIONS[method], seed=0, device=CPU)
    with pytest.raises(MethodError, match="different network"):
        build_synthesizer(method, teacher, teacher, FMNIST, OPTIONS[method], seed=0, device=CPU)
    syn.use_node_models([{} for _ in teachers], [1.0] * members)
    if method in ("kd", "public"):
        syn.use_real_data(torch.rand(64, 1, 28, 28) * 2 - 1)
    else:
        with pytest.raises(MethodError, match="data-free"):
            syn.use_real_data(torch.zeros(1, 1, 28, 28))
    result = distill(syn, StudentLoop(samples=20, steps=4, batch_size=8), seed=0)
    assert result.transfer.shape == (20, 1, 28, 28) and torch.isfinite(result.transfer).all()
    assert result.transfer.min() >= -1 and result.transfer.max() <= 1
    assert result.student_steps == 4 and sum(result.class_counts) == 20
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher never moves
    assert all(p.requires_grad for p in teacher.parameters())  # and is handed back as it came


def test_unknown_method_and_option_name_the_field():
    teacher, student = nets()
    with pytest.raises(MethodError, match="distill.method"):
        build_synthesizer("nope", teacher, student, DIGITS, {}, seed=0, device=CPU)
    with pytest.raises(MethodError, match="distill.options.sigmaa"):
        build_synthesizer("softtarget", teacher, student, DIGITS, {"sigmaa": 1}, seed=0, device=CPU)


def test_the_documented_options_are_the_code_s_and_every_option_is_explained():
    """docs/configuration.md holds `kdledger methods`' output: a default changed in code shows up as a failure here."""
    from pathlib import Path

    from node.dfkd.base import options_markdown

    tables = [options_markdown(name) for name in sorted(METHODS)]
    docs = Path(__file__).parents[1].joinpath("docs", "configuration.md").read_text()
    begin, end = "<!-- kdledger methods: begin -->\n", "<!-- kdledger methods: end -->"
    assert docs[docs.index(begin) + len(begin) : docs.index(end)] == "\n".join(tables)
    for name in METHODS:
        undocumented = [k for k, f in METHODS[name].Options.model_fields.items() if not f.description]
        assert not undocumented, f"{name}: options without a description: {undocumented}"


def test_fast_reads_the_student_and_balances_its_targets():
    teacher = lenet_bn()
    torch.manual_seed(1)
    student_a, student_b = copy.deepcopy(teacher), copy.deepcopy(teacher)  # students that still agree with it
    with torch.no_grad():
        for a, b in zip(student_a.parameters(), student_b.parameters()):
            a.add_(0.05 * torch.randn_like(a))
            b.add_(0.05 * torch.randn_like(b))
    syn = build_synthesizer("fast", teacher, student_a, FMNIST, {"iterations": 1}, seed=0, device=CPU)
    labels = syn.balanced_labels(50)
    assert torch.bincount(labels, minlength=10).tolist() == [5] * 10
    x = (torch.rand(8, 1, 28, 28) * 2 - 1).requires_grad_(True)
    targets = labels[:8]
    grads = []
    for student in (student_a, student_b):
        syn.student = student.eval()
        syn.jitter.generator.manual_seed(3)
        (g,) = torch.autograd.grad(syn.objective(x, targets), x)
        grads.append(g)
    assert not torch.allclose(grads[0], grads[1])  # the adversarial term is really the student's
    assert syn.variant == "bn-inversion"
    plain, student = nets()
    assert build_synthesizer("fast", plain, student, DIGITS, {}, seed=0, device=CPU).variant == "generator"


def test_fast_adversarial_members_read_a_fresh_subset_of_the_ensemble_each_batch():
    members = [lenet_bn(seed) for seed in range(4)]
    ensemble = Ensemble(members)
    torch.manual_seed(5)
    student = build_model("lenet5-half-bn", (1, 28, 28), 10)
    every = build_synthesizer("fast", ensemble, student, FMNIST, {"iterations": 1}, seed=0, device=CPU)
    every.step(8)
    assert every.taught is ensemble
    some = build_synthesizer(
        "fast", ensemble, student, FMNIST, {"iterations": 1, "adversarial_members": 2}, seed=0, device=CPU
    )
    drawn = []
    for _ in range(6):
        some.step(8)
        assert len(some.taught.members) == 2
        drawn.append(frozenset(id(m) for m in some.taught.members))
    assert len(set(drawn)) > 1 and set().union(*drawn) <= {id(m) for m in members}
    x = (torch.rand(8, 1, 28, 28) * 2 - 1).requires_grad_(True)
    some.jitter.generator.manual_seed(3)
    (g_some,) = torch.autograd.grad(some.objective(x, some.balanced_labels(8)), x)
    every.jitter.generator.manual_seed(3)
    (g_every,) = torch.autograd.grad(every.objective(x, every.balanced_labels(8)), x)
    assert not torch.allclose(g_some, g_every)  # the subset, not the whole ensemble, is what the term read


def test_distill_trains_the_student_towards_the_teacher_and_repeats_exactly():
    def run():
        teacher, student = nets()
        syn = build_synthesizer("noise", teacher, student, DIGITS, {"batch_size": 64}, seed=0, device=CPU)
        x = syn.noise(256)
        with torch.no_grad():
            before = kd_loss(student(x), teacher(x), 4.0).item()
        result = distill(syn, StudentLoop(samples=512, steps=300, batch_size=64, lr=0.05), seed=0)
        with torch.no_grad():
            after = kd_loss(result.student(x), teacher(x), 4.0).item()
        return before, after, result

    before, after, result = run()
    assert after < before / 2
    assert result.losses[-1] < result.losses[0]
    _, _, again = run()
    for name, tensor in result.student.state_dict().items():
        assert torch.equal(tensor, again.student.state_dict()[name])


def test_warmup_synthesises_before_the_student_moves_and_ema_returns_an_average():
    teacher, student = nets()
    seen = []

    class Spy(type(build_synthesizer("noise", teacher, student, DIGITS, {}, seed=0, device=CPU))):
        def step(self, n):
            seen.append(self.student.fc_penult.weight.detach().clone())
            return super().step(n)

    syn = Spy(teacher, student, DIGITS, {"batch_size": 10}, seed=0, device=CPU)
    result = distill(syn, StudentLoop(samples=100, steps=50, batch_size=10, warmup=0.5, ema=0.9), seed=0)
    assert all(torch.equal(seen[0], w) for w in seen[:6])  # rounds 1-5 synthesise only
    assert not torch.equal(seen[0], seen[-1])
    assert result.student is not student  # the averaged copy comes out
    assert not torch.equal(result.student.fc_penult.weight, student.fc_penult.weight)


def test_a_time_budget_stops_the_run_and_the_curve_records_it():
    teacher, student = nets()
    syn = build_synthesizer("noise", teacher, student, DIGITS, {"batch_size": 16}, seed=0, device=CPU)
    calls = []
    result = distill(
        syn,
        StudentLoop(samples=10**6, steps=10**7, batch_size=16),
        seed=0,
        budget_s=1.0,
        checkpoints=[0.2],
        evaluate=lambda model: calls.append(1) or 0.5,
    )
    assert len(result.transfer) < 10**6 and result.student_steps < 10**7  # stopped by the clock, not the plan
    assert result.curve[-1]["seconds"] >= 1.0 and len(calls) == len(result.curve) <= 2
    assert [c["seconds"] for c in result.curve] == sorted(c["seconds"] for c in result.curve)
    assert result.cpu_s > 0


def test_a_student_share_splits_the_clock_and_a_full_bank_leaves_the_rest_to_the_student(monkeypatch):
    """On a simulated clock (a synthesiser batch costs 20 ms, a student forward 4 ms), so that a loaded machine
    cannot change what is measured."""
    import importlib

    distill_module = importlib.import_module("node.dfkd.distill")  # the module: node.dfkd.distill is the function

    class Clock:
        now = 0.0

        def perf_counter(self):
            return self.now

        def process_time(self):
            return time.process_time()

        def advance(self, seconds):
            self.now += seconds

    clock = Clock()
    monkeypatch.setattr(distill_module, "time", clock)
    noise = type(build_synthesizer("noise", *nets(), DIGITS, {}, seed=0, device=CPU))

    class Slow(noise):  # a synthesiser whose batches cost time, as an inversion's do
        def step(self, n):
            clock.advance(0.02)
            return super().step(n)

    def timed(student):
        forward = student.forward
        student.forward = lambda x: (clock.advance(0.004), forward(x))[1]
        return student

    loop = StudentLoop(samples=10**6, steps=10**7, batch_size=16)
    teacher, student = nets()
    paced = distill(
        Slow(teacher, timed(student), DIGITS, {"batch_size": 8}, seed=0, device=CPU),
        loop,
        seed=0,
        budget_s=1.0,
        student_share=0.5,
    )
    assert 0.4 < paced.training_s / (paced.training_s + paced.synthesis_s) < 0.6
    teacher, student = nets()
    full = distill(
        Slow(teacher, timed(student), DIGITS, {"batch_size": 8}, seed=0, device=CPU),
        loop.model_copy(update={"samples": 80}),
        seed=0,
        budget_s=1.0,
        student_share=0.5,
    )
    assert len(full.transfer) == 80 and full.training_s > 2 * full.synthesis_s  # ten batches, then the student
    with pytest.raises(MethodError, match="needs one"):
        distill(Slow(teacher, student, DIGITS, {}, seed=0, device=CPU), loop, seed=0, student_share=0.5)
