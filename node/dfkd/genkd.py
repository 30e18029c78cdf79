"""GenKD: deep generative KD by likelihood finetuning (Li et al., IEEE Access 2023; ../shared/papers/000).

A conditional energy-based model f_theta(x, y) is the logit vector of a classifier (JEM view):
p(x|y) is proportional to exp f(x, y), the marginal is f(x) = logsumexp_y (f(x, y) + log p(y)), and
the classifier's logits are l_i = f(x, y_i) + log p(y_i). Samples come from SGLD (Eq. 12) started
from a persistent replay buffer. Two places use it:

- a data node trains the EBM on its private data (Algorithm 1): contrastive divergence L_a, a
  classification term, and the K-step Langevin policy gradient L_b on the downstream loss L_c;
- the distiller, with no data, samples from a published EBM (or from the teacher used as the EBM)
  and keeps finetuning it with L_b against the teacher and the student being distilled; the final
  replay buffer is the transfer set (Sec. VI-B).

Where the paper is vague or wrong, the choices made here (each one tested in tests/test_genkd.py):

1. Signs. Algorithm 1 line 14 writes L_a = f(x+) - f(x-) and then minimises L; that lowers the
   likelihood of data. Here L_a = mean f(x-) - mean f(x+), whose minimisation is the maximum
   likelihood gradient of Eq. 11. Likewise L_b = -A log M (Algorithm 2 writes +r log M), so that
   minimising it follows Eq. 18 and raises the probability of transitions that lowered L_c.
2. The policy gradient is live. log M_theta(x_{i+1} | x_i) is the Gaussian log-density with mean
   x_i + step * grad_x f_theta(x_i), the gradient built with create_graph=True, so d L_b / d theta
   flows through grad_x f (double backprop). The authors' code rebuilt the mean from x_{i+1} and
   the noise without the graph, which made L_b exactly zero for theta.
3. Rewards are per sample and per step, r_i = L_c(x_i) - L_c(x_{i+1}) (Eq. 17-18), detached. The
   advantage is r minus a running-mean baseline, divided by the batch's reward spread, so that
   lambda_a does not depend on the scale of L_c.
4. L_c (Eq. 8) = lambda_kl (L_kl - L_kd) + lambda_cls L_cls, per sample. L_kd is the KL from the
   teacher to the student (maximised: hard samples). L_kl compares the teacher's class marginal on
   the samples with a reference: on a data node, its marginal on the real batch; on the distiller,
   which has no data, the label prior. (Eq. 6 pairs unpaired x- and x+ sample by sample; the
   marginal is what can be matched.) L_cls is the teacher's cross-entropy against the label the
   sample was drawn for (Eq. 7); for p(x) sampling, against the teacher's own prediction.
5. The label prior is a Dirichlet per class built from the teacher's last layer as in ZSKD: the
   cosine similarity of the normalised weight rows, min-max scaled per row, times beta (floored at
   1e-3 so that every concentration is positive). A class k is drawn from the prior's marginal and
   a soft label from Dir(alpha_k); `prior: uniform` draws k uniformly with a one-hot label.
6. The student inside L_kd is real: on a data node a proxy student trained by KD alongside the EBM,
   on the distiller the student being distilled (trained on each fresh batch as generation runs).
7. The EBM runs in eval mode throughout (batch-norm statistics frozen), so that an SGLD chain
   does not change the model it samples from.
8. Chains stay in the data range inside every step (x_{t+1} = clamp(mean + noise)), and log M is
   the log-likelihood of the step actually taken: a Gaussian density where the proposal landed
   inside the range, the Gaussian's tail mass where it was clamped to a bound (a censored
   Gaussian). Clamping after the chain, as before, scored transitions that never happened: their
   squared residuals were 200-376 times the Langevin noise's.
9. The policy gradient is balanced against what trains the EBM. log M's gradient scales with
   step / noise (100 with the decoupled defaults) times the input's dimension, so on a data node
   lambda_a L_b outweighed L_a by 1e3-1e4 and the EBM stopped learning from the data. Here the
   gradient of L_b is rescaled to lambda_a times the norm of the gradient of L_a + lambda_cls L_cls
   before the two are added: lambda_a is the policy gradient's share, whatever the scales. On the
   distiller L_b is the only loss and Adam's step is scale-free.
10. The distiller has no data to anchor its finetuning, and L_b alone drives the EBM wherever L_c is
    lowest (measured: its own accuracy fell from 90.13% to 84.63%, its samples taught less). Eq. 9
    defines the target as p_theta0(x) exp(-L_c(x)), and that tilted density is exactly the optimum
    of E_p[-L_c] - KL(p || p_theta0). So on the distiller the policy gradient is taken in L_c's own
    units (advantage not divided by the reward spread) and a KL term is added: the chain's
    transitions are Gaussians with the same noise, so the KL between the finetuned and the
    published kernels at a visited state is |mean_theta - mean_theta0|^2 / (2 sigma^2), summed over
    the K steps of the window (the path KL, which bounds the marginal one), weighted by `kl_weight`
    (1: Eq. 9 as written; 0: the unanchored finetuning). Measured (BENCHMARKS.md, validation split):
    anchored finetuning is level with none (59.83 against 60.00) at 40% fewer samples in the same
    time, so `finetune` is off by default and L_b acts where data anchors it, on the data nodes.
11. lambda_a, L_b's share of the MLE gradient's norm on a data node, is 0.1: at 1.0 the policy
    gradient cost 8 points of student accuracy against GenKD(N) (60.00 against 68.42); at 0.1 it
    is level with or above it (69.12), chosen on the validation split.
12. On the distiller, each step continues chains of one EBM; with several nodes' EBMs, each gets a
    share of the steps in proportion to its node's data (a node with more data is a larger part of
    the population being sampled), and every sample is labelled by the teachers' ensemble.
13. Burn-in on the distiller. The nodes' replay buffers hold their data's likeness and are never
    published, so the distiller's chains start from uniform noise; JEM's 20 steps from a buffer are
    short-run sampling from chains that are already mixed, and from noise they are not: with a
    10 000-chain buffer most banked states were 20 steps out of noise. A chain's state goes to the
    bank only once the chain has taken `burn_in` steps since it started (100 chosen on the
    validation split at 2 minutes: 74.03% against 67.46 for none and 70.80 for 200, which makes too
    few samples; BENCHMARKS.md). A smaller buffer instead (1 000 chains, each visited more often)
    was worse (58.24): fewer distinct chains, a less diverse bank.
14. Which classes a node's EBM is asked for (choice 12 generalised). A node's EBM learns p(x|y) only
    for the classes in its data; asked for another, it returns whatever its untrained energy
    favours. The pooled data of all nodes is p(x, y) = sum_i (n_i / n) p_i(y) p_i(x|y), so
    `classes: nodes` picks EBM i by its node's share n_i / n (choice 12) and draws y from p_i(y),
    the node's label histogram from its signed teacher file. That is the pooled distribution, but
    it teaches less: on held-out images (BENCHMARKS.md) it is level with the label prior's draw at
    alpha 0.3 (83.99 against 83.93) and 2.9 points under it at alpha 0.1 (76.72 against 79.66),
    where each node holds one or two classes and its EBM then makes only those. The prior's draw,
    which also asks an EBM for classes its node never had, gives the ensemble inputs between its
    classes to label. So the default stays `classes: prior`. Soft labels come from the prior's
    Dirichlet of the drawn class either way; a single teacher always uses the prior.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from node.dfkd.base import Options, Synthesizer, register_method
from node.dfkd.criterions import kd_loss
from node.dfkd.sampling import seeded_gamma
from node.dfkd.zskd import dirichlet_concentration
from node.models import Ensemble, Teacher


class GenKDOptions(Options):
    sgld_steps: int = Field(20, ge=1, description="T: Langevin steps per iteration")
    step_size: float = Field(1.0, gt=0, description="SGLD step on grad_x f (JEM's decoupled form)")
    noise: float = Field(0.01, ge=0, description="SGLD noise standard deviation")
    parameterization: Literal["decoupled", "paper"] = Field(
        "decoupled", description="'paper': Eq. 12 with step = sigma^2 / 2 and noise = sigma = `noise`"
    )
    buffer_size: int = Field(10_000, ge=1, description="replay buffer (persistent chains), per EBM")
    burn_in: int = Field(
        100,
        ge=0,
        description="distiller: SGLD steps a chain must have taken since it started from noise before its state "
        "goes to the bank (MCMC burn-in); 0: every state",
    )
    reinit: float = Field(0.05, ge=0, le=1, description="mu: chance that a chain restarts from U(-1, 1)")
    k: int = Field(5, ge=1, description="K: consecutive Langevin steps in the policy gradient")
    t_policy: Literal["uniform", "last"] = Field("uniform", description="where the K steps start")
    policy_gradient: bool = Field(True, description="false: GenKD(N), no L_b")
    finetune: bool = Field(
        False, description="the distiller also finetunes the EBMs with L_b (Algorithm 2); false: L_b on data nodes only"
    )
    kl_weight: float = Field(
        1.0, ge=0, description="distiller: weight of the KL from the finetuned to the published EBM's chain (Eq. 9)"
    )
    lambda_a: float = Field(
        0.1, ge=0, description="weight of L_b: on a data node its gradient's norm as a share of the MLE gradient's"
    )
    lambda_cls: float = Field(1.0, ge=0, description="weight of the classification terms")
    lambda_kl: float = Field(1.0, ge=0, description="weight of L_kl - L_kd inside L_c")
    prior: Literal["dirichlet", "uniform"] = Field(
        "dirichlet", description="label prior: ZSKD's Dirichlet from the teacher's last layer, or uniform"
    )
    prior_beta: float = Field(1.0, gt=0, description="ZSKD's beta scaling of the concentrations")
    conditional: bool = Field(True, description="sample p(x|y) (true) or p(x) (false)")
    batch_size: int = Field(64, ge=1, description="chains continued per step")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate of the EBM")
    kd_temperature: float = Field(4.0, gt=0, description="temperature of L_kd and of the student's steps")
    student_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the (proxy) student during generation")
    energy_l2: float = Field(0.0, ge=0, description="optional penalty on f(x+)^2 + f(x-)^2 for stability")
    node_ebm: bool = Field(True, description="data nodes train and publish an EBM; false: each teacher is its own EBM")
    node_iterations: int = Field(200, ge=0, description="EBM training iterations on a data node")
    classes: Literal["prior", "nodes"] = Field(
        "prior",
        description="distiller: 'prior' draws every EBM's classes from the label prior; 'nodes' each node EBM's "
        "from its node's label histogram where the teacher's file has one (the pooled data's p(y))",
    )


class LabelPrior:
    """p(y): which class a chain samples for, and a soft label for it."""

    def __init__(self, last_weight: torch.Tensor, kind: str = "dirichlet", beta: float = 1.0):
        self.kind = kind
        self.alpha = dirichlet_concentration(last_weight, beta)
        k = self.alpha.shape[0]
        # the marginal of "draw class k, then a label from Dir(alpha_k)": the mean label over classes
        mean_labels = self.alpha / self.alpha.sum(1, keepdim=True)
        self.marginal = mean_labels.mean(0) if kind == "dirichlet" else torch.full((k,), 1.0 / k)
        self.log_marginal = self.marginal.log()

    @property
    def num_classes(self) -> int:
        return self.alpha.shape[0]

    def with_classes(self, shares: torch.Tensor) -> LabelPrior:
        """This prior with its classes drawn by `shares` (e.g. one node's label histogram); soft labels as before."""
        prior = copy.copy(self)
        prior.marginal = shares.to(self.marginal) / shares.sum()
        prior.log_marginal = prior.marginal.clamp_min(1e-12).log()  # a class never drawn, finite for p(x)'s sum
        return prior

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n (class, soft label) pairs, from `generator` (torch's Dirichlet sampler takes none)."""
        k = torch.multinomial(self.marginal, n, replacement=True, generator=generator)
        if self.kind == "uniform":
            return k, F.one_hot(k, self.num_classes).float()
        gammas = seeded_gamma(self.alpha[k], generator)  # Dirichlet = normalised Gammas
        return k, gammas / gammas.sum(1, keepdim=True)


class ReplayBuffer:
    """Persistent SGLD chains with the labels they were drawn for and their age in SGLD steps; U(-1, 1) at the
    start."""

    def __init__(
        self,
        size: int,
        shape: tuple[int, ...],
        prior: LabelPrior,
        generator: torch.Generator,
        low: float = -1.0,
        high: float = 1.0,
    ):
        self.shape, self.prior, self.generator, self.low, self.high = shape, prior, generator, low, high
        self.x = self._uniform(size)
        self.labels, self.soft = prior.sample(size, generator)
        self.age = torch.zeros(size, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.x)

    def _uniform(self, n: int) -> torch.Tensor:
        return self.low + (self.high - self.low) * torch.rand((n, *self.shape), generator=self.generator)

    def sample(self, n: int, reinit: float):
        """n distinct chains to continue (index, state, label, soft label, restarted?, age); each restarts from
        U(-1, 1) with a fresh label and age 0 with chance `reinit`.

        Distinct, so that writing them back is well defined: with repeated indices, which copy lands
        in the buffer would depend on thread scheduling, and runs would not repeat.
        """
        idx = torch.randperm(len(self), generator=self.generator)[: min(n, len(self))]
        n = len(idx)
        x, labels, soft = self.x[idx].clone(), self.labels[idx].clone(), self.soft[idx].clone()
        fresh = torch.rand(n, generator=self.generator) < reinit
        if fresh.any():
            m = int(fresh.sum())
            x[fresh] = self._uniform(m)
            labels[fresh], soft[fresh] = self.prior.sample(m, self.generator)
        return idx, x, labels, soft, fresh, torch.where(fresh, 0, self.age[idx])

    def update(
        self, idx: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor, age: torch.Tensor
    ) -> None:
        self.x[idx], self.labels[idx], self.soft[idx] = x.detach().cpu(), labels.cpu(), soft.cpu()
        self.age[idx] = age.cpu()


def energy(ebm: nn.Module, x: torch.Tensor, labels: torch.Tensor | None, log_prior: torch.Tensor) -> torch.Tensor:
    """f(x, y) for the given labels (p(x|y)), or the marginal logsumexp_y f(x, y) + log p(y) (labels None)."""
    logits = ebm(x)
    if labels is None:
        return torch.logsumexp(logits + log_prior.to(logits.device), dim=1)
    return logits.gather(1, labels.view(-1, 1)).squeeze(1)


@dataclass(frozen=True)
class Langevin:
    step: float
    noise: float
    low: float = -1.0
    high: float = 1.0

    @classmethod
    def from_options(cls, o: GenKDOptions, low: float = -1.0, high: float = 1.0) -> Langevin:
        if o.parameterization == "paper":  # Eq. 12: x + sigma^2/2 grad f + N(0, sigma^2)
            return cls(step=o.noise**2 / 2, noise=o.noise, low=low, high=high)
        return cls(step=o.step_size, noise=o.noise, low=low, high=high)

    def drift(self, ebm, x, labels, log_prior, *, create_graph: bool = False) -> torch.Tensor:
        """step * grad_x f(x, y); with create_graph it stays a function of theta (for L_b)."""
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        f = energy(ebm, x, labels, log_prior)
        (grad,) = torch.autograd.grad(f.sum(), x, create_graph=create_graph)
        return self.step * grad

    def chain(self, ebm, x0, labels, log_prior, steps: int, generator: torch.Generator):
        """T SGLD steps (Eq. 12), each clamped to the range as it is taken; every state x_0..x_T, detached."""
        states = [x0.detach()]
        x = x0.detach()
        for _ in range(steps):
            eps = torch.randn(x.shape, generator=generator).to(x.device)
            x = (x + self.drift(ebm, x, labels, log_prior) + self.noise * eps).clamp(self.low, self.high).detach()
            states.append(x)
        return states

    def kl(self, ebm, anchor, x, labels, log_prior) -> torch.Tensor:
        """KL(M_theta(.|x) || M_anchor(.|x)) per sample: Gaussian kernels with one noise, so the squared distance
        of their means over 2 sigma^2 (the clamp at the range's bounds is left out); differentiable in theta."""
        mean = self.drift(ebm, x.detach().requires_grad_(True), labels, log_prior, create_graph=True)
        ref = self.drift(anchor, x.detach().requires_grad_(True), labels, log_prior).detach()
        return ((mean - ref) ** 2).flatten(1).sum(1) / (2 * max(self.noise, 1e-8) ** 2)

    def log_prob(self, ebm, x, x_next, labels, log_prior) -> torch.Tensor:
        """log M_theta(x_next | x) per sample, up to a constant: a Gaussian around x + step grad_x f(x) censored
        at the range's bounds (a clamped coordinate scores the probability of landing beyond its bound)."""
        mean = x.detach() + self.drift(ebm, x.detach().requires_grad_(True), labels, log_prior, create_graph=True)
        sigma = max(self.noise, 1e-8)
        x_next = x_next.detach()
        inside = -((x_next - mean) ** 2) / (2 * sigma**2)
        at_low = torch.special.log_ndtr((self.low - mean) / sigma)
        at_high = torch.special.log_ndtr((mean - self.high) / sigma)
        per_dim = torch.where(x_next <= self.low, at_low, torch.where(x_next >= self.high, at_high, inside))
        return per_dim.flatten(1).sum(1)


def downstream_loss(
    teacher, student, x, soft_labels, reference_marginal, *, lambda_kl: float, lambda_cls: float, temperature: float
) -> torch.Tensor:
    """L_c (Eq. 8) per sample: lambda_kl (L_kl - L_kd) + lambda_cls L_cls, without gradients."""
    with torch.no_grad():
        t_logits = teacher(x)
        t_prob = F.softmax(t_logits, dim=1)
        tau = temperature
        l_kd = (
            F.kl_div(
                F.log_softmax(student(x) / tau, 1), F.log_softmax(t_logits / tau, 1), log_target=True, reduction="none"
            ).sum(1)
            * tau
            * tau
        )
        marginal = t_prob.mean(0).clamp_min(1e-12)
        ref = reference_marginal.to(x.device).clamp_min(1e-12)
        l_kl = (marginal * (marginal.log() - ref.log())).sum()  # batch-level: the same for every sample
        target = soft_labels if soft_labels is not None else F.one_hot(t_logits.argmax(1), t_logits.shape[1]).float()
        l_cls = -(target * F.log_softmax(t_logits, 1)).sum(1)
        return lambda_kl * (l_kl - l_kd) + lambda_cls * l_cls


class PolicyGradient:
    """L_b over K consecutive Langevin steps (Eq. 16-18, Algorithm 2) with a running-mean baseline."""

    def __init__(self, momentum: float = 0.9):
        self.baseline, self.momentum = 0.0, momentum

    def loss(
        self, ebm, langevin: Langevin, states, start: int, k: int, labels, log_prior, reward_fn, *, normalise=True
    ) -> tuple:
        """(L_b, rewards): rewards r_i = L_c(x_i) - L_c(x_{i+1}) are detached numbers, log M carries theta.
        `normalise` divides the advantage by the rewards' spread; without it L_b is in L_c's units."""
        window = states[start : start + k + 1]
        with torch.no_grad():
            costs = [reward_fn(x) for x in window]
            rewards = torch.stack([costs[i] - costs[i + 1] for i in range(len(window) - 1)])  # (K, batch)
        advantage = rewards - self.baseline
        if normalise:
            advantage = advantage / (rewards.std() + 1e-8)
        self.baseline = self.momentum * self.baseline + (1 - self.momentum) * rewards.mean().item()
        log_m = torch.stack(
            [langevin.log_prob(ebm, window[i], window[i + 1], labels, log_prior) for i in range(len(window) - 1)]
        )
        return -(advantage.detach() * log_m).mean(), rewards


def _start(o: GenKDOptions, generator: torch.Generator) -> int:
    k = min(o.k, o.sgld_steps)
    if o.t_policy == "last":
        return o.sgld_steps - k
    return int(torch.randint(o.sgld_steps - k + 1, (1,), generator=generator))


def _student_step(student, teacher, opt, x, temperature) -> float:
    """The data node's proxy student takes one KD step (it only serves L_kd inside L_c)."""
    student.train()
    with torch.no_grad():
        target = teacher(x)
    loss = kd_loss(student(x), target, temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    student.eval()
    return loss.item()


@dataclass
class EBMStepLosses:
    total: torch.Tensor  # L_a + lambda_cls L_cls + lambda_a L_b, unbalanced (for the record)
    l_a: torch.Tensor
    l_cls: torch.Tensor
    l_b: torch.Tensor


def ebm_training_loss(
    ebm,
    teacher,
    student,
    prior: LabelPrior,
    langevin: Langevin,
    pg: PolicyGradient,
    o: GenKDOptions,
    x_pos,
    y_pos,
    states,
    labels,
    soft,
    generator,
) -> EBMStepLosses:
    """Algorithm 1's terms on one batch (data node): L_a, L_cls and L_b."""
    log_prior = prior.log_marginal.to(x_pos.device)
    cond = labels if o.conditional else None
    x_neg = states[-1]
    f_pos = energy(ebm, x_pos, y_pos if o.conditional else None, log_prior)
    f_neg = energy(ebm, x_neg, cond, log_prior)
    l_a = f_neg.mean() - f_pos.mean()  # minimising raises f on data relative to samples (Eq. 11)
    if o.energy_l2:
        l_a = l_a + o.energy_l2 * (f_pos**2 + f_neg**2).mean()
    l_cls = F.cross_entropy(ebm(x_pos) + log_prior, y_pos)  # p_theta(y|x) with l_i = f(x, y_i) + log p(y_i)
    l_b = torch.zeros((), device=x_pos.device)
    if o.policy_gradient:
        with torch.no_grad():
            reference = F.softmax(teacher(x_pos), 1).mean(0)
        reward_fn = lambda x: downstream_loss(  # noqa: E731
            teacher,
            student,
            x,
            soft if o.conditional else None,
            reference,
            lambda_kl=o.lambda_kl,
            lambda_cls=o.lambda_cls,
            temperature=o.kd_temperature,
        )
        l_b, _ = pg.loss(
            ebm, langevin, states, _start(o, generator), min(o.k, o.sgld_steps), cond, log_prior, reward_fn
        )
    return EBMStepLosses(l_a + o.lambda_cls * l_cls + o.lambda_a * l_b, l_a, l_cls, l_b)


def balanced_backward(params: list[torch.nn.Parameter], mle: torch.Tensor, l_b: torch.Tensor, share: float) -> float:
    """Set p.grad = grad(mle) + share * |grad(mle)| / |grad(l_b)| * grad(l_b); returns the scale applied to L_b."""
    g_mle = torch.autograd.grad(mle, params, allow_unused=True, retain_graph=True)
    g_pg = torch.autograd.grad(l_b, params, allow_unused=True) if l_b.requires_grad else [None] * len(params)
    norm = lambda gs: torch.sqrt(sum((g**2).sum() for g in gs if g is not None) + 1e-24)  # noqa: E731
    scale = (share * norm(g_mle) / norm(g_pg)).item() if any(g is not None for g in g_pg) else 0.0
    for p, a, b in zip(params, g_mle, g_pg):
        grad = torch.zeros_like(p) if a is None else a.clone()
        if b is not None:
            grad += scale * b
        p.grad = grad
    return scale


def train_ebm(
    teacher: Teacher,
    student: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    options: dict,
    *,
    seed: int,
    bounds=(-1.0, 1.0),
    progress=None,
) -> tuple[nn.Module, dict]:
    """A data node's EBM (Algorithm 1), warm-started from its teacher, with a proxy student trained alongside."""
    o = GenKDOptions(**options)
    gen = torch.Generator().manual_seed(seed)
    device = next(teacher.parameters()).device
    teacher = teacher.eval()  # only ever evaluated under no_grad: its weights cannot move
    ebm = copy.deepcopy(teacher).eval()
    params = list(ebm.parameters())
    for p in params:
        p.requires_grad_(True)
    prior = LabelPrior(teacher.classifier_weight(), o.prior, o.prior_beta)
    langevin, pg = Langevin.from_options(o, *bounds), PolicyGradient()
    buffer = ReplayBuffer(o.buffer_size, tuple(x.shape[1:]), prior, gen, *bounds)
    opt = torch.optim.Adam(params, lr=o.lr)
    student_opt = torch.optim.Adam(student.parameters(), lr=o.student_lr)
    history: dict[str, list[float]] = {"l_a": [], "l_cls": [], "l_b": [], "pg_scale": []}
    for it in range(o.node_iterations):
        batch = torch.randint(len(y), (o.batch_size,), generator=gen)
        idx, x0, labels, soft, _, age = buffer.sample(o.batch_size, o.reinit)
        x0, labels, soft = x0.to(device), labels.to(device), soft.to(device)
        states = langevin.chain(ebm, x0, labels if o.conditional else None, prior.log_marginal, o.sgld_steps, gen)
        batch = batch.to(x.device)
        losses = ebm_training_loss(
            ebm,
            teacher,
            student,
            prior,
            langevin,
            pg,
            o,
            x[batch].to(device),
            y[batch].to(device),
            states,
            labels,
            soft,
            gen,
        )
        opt.zero_grad(set_to_none=True)
        scale = balanced_backward(params, losses.l_a + o.lambda_cls * losses.l_cls, losses.l_b, o.lambda_a)
        opt.step()
        buffer.update(idx, states[-1], labels, soft, age + o.sgld_steps)
        _student_step(student, teacher, student_opt, states[-1], o.kd_temperature)
        for name in ("l_a", "l_cls", "l_b"):
            history[name].append(getattr(losses, name).item())
        history["pg_scale"].append(scale)
        if progress:
            progress("ebm", it + 1, o.node_iterations)
    return ebm.eval(), history


@register_method("genkd")
class GenKD(Synthesizer):
    """The distiller's side: SGLD from the EBMs with policy-gradient finetuning; each step's chains go to the bank."""

    Options = GenKDOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.options
        members = list(self.teacher.members) if isinstance(self.teacher, Ensemble) else [self.teacher]
        self.ebms: list[nn.Module] = [copy.deepcopy(m) for m in members]  # until nodes publish their own
        self.shares = [1.0] * len(self.ebms)
        self.published = False
        self.langevin = Langevin.from_options(o, self.space.low, self.space.high)
        self.prior = LabelPrior(self.teacher.classifier_weight().detach().cpu(), o.prior, o.prior_beta)
        self.pg = PolicyGradient()
        self._chains: dict[int, tuple] = {}  # per EBM: (optimizer, replay buffer)
        self._anchors: dict[int, nn.Module] = {}  # per EBM: a frozen copy from before any finetuning
        self.made = [0] * len(self.ebms)

    @property
    def variant(self) -> str:
        return "published-ebm" if self.published else "teacher-as-ebm"

    @classmethod
    def node_side(cls, teacher, student, x, y, options, *, seed, space):
        o = cls.Options(**options)
        if not o.node_ebm:
            return {}
        ebm, _ = train_ebm(teacher, student, x, y, options, seed=seed, bounds=(space.low, space.high))
        return {"ebm": ebm}

    def use_node_models(self, models, weights):
        """Use the nodes' EBMs when every node published one (else every teacher is its own EBM); each EBM
        gets a share of the samples in proportion to its node's data."""
        ebms = [m.get("ebm") for m in models]
        if ebms and all(e is not None for e in ebms):
            self.ebms, self.published = [e.to(self.device) for e in ebms], True
        if len(weights) == len(self.ebms):
            self.shares = [float(w) for w in weights]
        self.made = [0] * len(self.ebms)
        return self.variant

    def _prior_of(self, i: int) -> LabelPrior:
        """The classes EBM i's chains are drawn for: the label prior, or with `classes: nodes` the histogram of
        the node whose EBM it is (choice 14; EBMs that are not one per ensemble member have none)."""
        members = list(self.teacher.members) if isinstance(self.teacher, Ensemble) else [self.teacher]
        counts = getattr(members[i], "label_counts", None) if len(members) == len(self.ebms) > 1 else None
        if self.options.classes == "prior" or counts is None or not sum(counts):
            return self.prior
        return self.prior.with_classes(torch.tensor(counts, dtype=torch.float32))

    def _next_ebm(self) -> int:
        """The EBM furthest behind its share of the samples made so far (deterministic, proportional)."""
        total, share_sum = sum(self.made) + 1, sum(self.shares)
        return max(range(len(self.ebms)), key=lambda i: self.shares[i] / share_sum * total - self.made[i])

    def _anchor(self, i: int) -> nn.Module:
        """EBM i as published (or as the teacher it started from), frozen: what the KL term keeps close."""
        if i not in self._anchors:
            self._anchors[i] = copy.deepcopy(self.ebms[i]).eval().requires_grad_(False)
        return self._anchors[i]

    def _state(self, i: int):
        if i not in self._chains:
            ebm = self.ebms[i].to(self.device).eval()
            for p in ebm.parameters():
                p.requires_grad_(True)
            buffer = ReplayBuffer(
                self.options.buffer_size,
                self.space.shape,
                self._prior_of(i),
                self.generator,
                self.space.low,
                self.space.high,
            )
            self._chains[i] = (torch.optim.Adam(ebm.parameters(), lr=self.options.lr), buffer)
        return self._chains[i]

    def step(self, n: int) -> torch.Tensor:
        o = self.options
        i = self._next_ebm()
        ebm, (opt, buffer) = self.ebms[i], self._state(i)
        prior = buffer.prior
        log_prior = prior.log_marginal.to(self.device)
        idx, x0, labels, soft, _, age = buffer.sample(n, o.reinit)
        x0, labels, soft = x0.to(self.device), labels.to(self.device), soft.to(self.device)
        cond = labels if o.conditional else None
        states = self.langevin.chain(ebm, x0, cond, log_prior, o.sgld_steps, self.generator)
        age = age.to(self.device) + o.sgld_steps
        if o.policy_gradient and o.finetune:  # no data here: L_b against the teacher, the student and the prior
            reward_fn = lambda x: downstream_loss(  # noqa: E731
                self.teacher,
                self.student,
                x,
                soft if o.conditional else None,
                prior.marginal,
                lambda_kl=o.lambda_kl,
                lambda_cls=o.lambda_cls,
                temperature=o.kd_temperature,
            )
            start, k = _start(o, self.generator), min(o.k, o.sgld_steps)
            anchored = o.kl_weight > 0
            l_b, _ = self.pg.loss(
                ebm, self.langevin, states, start, k, cond, log_prior, reward_fn, normalise=not anchored
            )
            loss = o.lambda_a * l_b
            if anchored:
                anchor = self._anchor(i)
                kl = torch.stack([self.langevin.kl(ebm, anchor, x, cond, log_prior) for x in states[start : start + k]])
                loss = loss + o.kl_weight * kl.sum(0).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        x = states[-1].detach()
        while (young := age < o.burn_in).any():  # burn-in: only chains that have mixed go to the bank
            more = self.langevin.chain(
                ebm, x[young], cond[young] if cond is not None else None, log_prior, o.sgld_steps, self.generator
            )
            x[young], age[young] = more[-1], age[young] + o.sgld_steps
        buffer.update(idx, x, labels, soft, age)
        self.made[i] += len(idx)
        return x
