"""ZSKD: zero-shot knowledge distillation (Nayak et al., ICML 2019).

The class-similarity matrix comes from the teacher's last layer (cosine of its weight rows); a
class's soft labels are drawn from a Dirichlet whose concentration is that class's similarity row,
min-max scaled and times beta (two scales, 1.0 and 0.1, half the samples each); noise inputs are
then optimised until the teacher's tempered softmax matches them (cross-entropy at temperature 20,
Adam 0.01, 1500 iterations: the paper's settings). Classes get equal shares of the samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from node.dfkd.base import Options, Synthesizer, register_method
from node.models import Ensemble


def dirichlet_concentration(last_weight: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """ZSKD's class-similarity concentrations: row k is beta * minmax(cos(w_k, w_j))_j, floored at 1e-3."""
    w = F.normalize(last_weight.detach().float(), dim=1)
    sim = w @ w.T
    lo, hi = sim.min(dim=1, keepdim=True).values, sim.max(dim=1, keepdim=True).values
    return (beta * (sim - lo) / (hi - lo).clamp_min(1e-12)).clamp_min(1e-3)


def seeded_gamma(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma(alpha, 1) draws with Marsaglia-Tsang, from `generator` (torch's sampler takes none)."""
    boost = alpha < 1
    a = torch.where(boost, alpha + 1, alpha)
    d = a - 1.0 / 3
    c = 1.0 / torch.sqrt(9 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while todo.any():
        z = torch.randn(a.shape, generator=generator)
        u = torch.rand(a.shape, generator=generator)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-30)) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        take = todo & ok
        out[take] = (d * v)[take]
        todo &= ~ok
    if boost.any():
        u = torch.rand(a.shape, generator=generator)
        out = torch.where(boost, out * u.clamp_min(1e-30) ** (1.0 / alpha), out)
    return out



def last_layer_weight(teacher) -> torch.Tensor:
    """The classifier's weight rows; for an ensemble, the members' mean."""
    if isinstance(teacher, Ensemble):
        return torch.stack([last_layer_weight(m) for m in teacher.members]).mean(0)
    return teacher.head[-1].weight


class ZSKDOptions(Options):
    betas: list[float] = Field([1.0, 0.1], description="concentration scales; the samples are split evenly")
    temperature: float = Field(20.0, gt=0)
    iterations: int = Field(1500, ge=1)
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(100, ge=1)


@register_method("zskd")
class ZSKD(Synthesizer):
    Options = ZSKDOptions

    def targets(self, n: int) -> torch.Tensor:
        """n soft labels: classes in turn, betas in turn, each a Dirichlet draw of its class's row."""
        o = self.options
        alpha = dirichlet_concentration(last_layer_weight(self.teacher), 1.0).clamp_min(1e-3)
        classes = torch.arange(n) % alpha.shape[0]
        betas = torch.tensor(o.betas)[(torch.arange(n) // alpha.shape[0]) % len(o.betas)]
        g = seeded_gamma(betas[:, None] * alpha[classes], self.generator)  # one Dirichlet draw per row
        return g / g.sum(1, keepdim=True)

    def synthesize(self):
        o, teacher = self.options, self.teacher.eval()
        targets = self.targets(self.samples).to(self.device)
        for start in range(0, self.samples, o.batch_size):
            y = targets[start : start + o.batch_size]
            yield self.optimise_inputs(
                self.noise(len(y)), lambda x, y=y: -(y * F.log_softmax(teacher(x) / o.temperature, 1)).sum(1).mean(),
                o.iterations, o.lr)
