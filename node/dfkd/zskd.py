"""ZSKD: zero-shot knowledge distillation (Nayak et al., ICML 2019).

The class-similarity matrix comes from the teacher's last layer (cosine of its weight rows); a
class's soft labels are drawn from a Dirichlet whose concentration is that class's similarity row,
min-max scaled and times beta (two scales, 1.0 and 0.1, half the samples each); noise inputs are
then optimised until the teacher's tempered softmax matches them (cross-entropy at temperature 20,
Adam 0.01, 1500 iterations: the paper's settings). Classes get equal shares of the samples.

Not in the paper: where the teacher has batch norm, its BN statistics are matched too
(`bn_weight`, 0 for the paper's method). Matching a near-uniform tempered softmax alone leaves the
inputs close to their starting noise; the BN statistics are the only image prior a teacher carries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from node.dfkd.base import Options, Synthesizer, register_method
from node.dfkd.hooks import BNStatistics
from node.dfkd.sampling import seeded_gamma


def dirichlet_concentration(last_weight: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """ZSKD's class-similarity concentrations: row k is beta * minmax(cos(w_k, w_j))_j, floored at 1e-3."""
    w = F.normalize(last_weight.detach().float(), dim=1)
    sim = w @ w.T
    lo, hi = sim.min(dim=1, keepdim=True).values, sim.max(dim=1, keepdim=True).values
    return (beta * (sim - lo) / (hi - lo).clamp_min(1e-12)).clamp_min(1e-3)


class ZSKDOptions(Options):
    betas: list[float] = Field([1.0, 0.1], description="concentration scales; the samples are split evenly")
    temperature: float = Field(20.0, gt=0, description="temperature of the sampled soft targets' cross-entropy")
    iterations: int = Field(1500, ge=1, description="Adam steps per batch")
    lr: float = Field(0.01, gt=0, description="Adam learning rate on the inputs")
    batch_size: int = Field(100, ge=1, description="inputs synthesised per step, each step one batch for the bank")
    bn_weight: float = Field(
        10.0, ge=0, description="image prior where the teacher has BN (not in the paper; 0 for the paper's method)"
    )


@register_method("zskd")
class ZSKD(Synthesizer):
    Options = ZSKDOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drawn = 0  # soft labels drawn so far: classes and betas go in turn across steps
        self.stats = BNStatistics(self.teacher)

    def targets(self, n: int) -> torch.Tensor:
        """n soft labels: classes in turn, betas in turn, each a Dirichlet draw of its class's row."""
        o = self.options
        alpha = dirichlet_concentration(self.teacher.classifier_weight(), 1.0).clamp_min(1e-3).cpu()
        i = torch.arange(self.drawn, self.drawn + n)
        self.drawn += n
        classes = i % alpha.shape[0]
        betas = torch.tensor(o.betas)[(i // alpha.shape[0]) % len(o.betas)]
        g = seeded_gamma(betas[:, None] * alpha[classes], self.generator)  # one Dirichlet draw per row
        return g / g.sum(1, keepdim=True)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        o = self.options
        with self.stats.recording():
            logits = self.teacher(x)
        loss = -(y * F.log_softmax(logits / o.temperature, 1)).sum(1).mean()
        return loss + o.bn_weight * self.stats.take() if self.stats else loss

    def step(self, n: int) -> torch.Tensor:
        y = self.targets(n).to(self.device)
        return self.optimise_inputs(self.noise(n), lambda x: self.loss(x, y), self.options.iterations, self.options.lr)

    def close(self) -> None:
        self.stats.remove()
