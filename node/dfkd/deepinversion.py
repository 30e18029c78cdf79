"""DeepInversion (Yin et al., CVPR 2020), with its adaptive variant ADI.

Each step optimises a fresh batch of inputs (balanced target classes, started from Gaussian noise
over the data range) with Adam so that the teacher classifies them as their targets while the
statistics they induce in every batch-norm layer match the teacher's running ones, under image
priors (total variation, l2), seen through random shifts of up to 2 pixels (and mirroring where
the data allows): the reference's jitter. The batch with the lowest loss along the way is kept.
ADI adds a competition term that rewards inputs on which the student disagrees with the teacher,
1 - JS(teacher || student) at T = 3. Defaults are the reference's CIFAR-10 script: 2000 Adam
steps at lr 0.1, batch 256, BN weight 100, TV (L2 of neighbour differences, four directions)
2.5e-5. It needs a teacher with batch norm and says so when the teacher has none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from node.dfkd.augment import Augment
from node.dfkd.base import MethodError, Options, Synthesizer, register_method
from node.dfkd.criterions import js_divergence
from node.dfkd.hooks import BNStatistics


class DeepInversionOptions(Options):
    iterations: int = Field(2000, ge=1, description="Adam steps per batch")
    batch_size: int = Field(256, ge=1, description="inputs synthesised per step, each step one batch for the bank")
    lr: float = Field(0.1, gt=0, description="Adam learning rate on the pixels")
    bn_weight: float = Field(100.0, ge=0, description="weight of the batch-norm statistics loss")
    tv_weight: float = Field(2.5e-5, ge=0, description="total variation prior (L2 norms of neighbour differences)")
    l2_weight: float = Field(0.0, ge=0, description="l2 prior on the inputs")
    adaptive: float = Field(0.0, ge=0, description="ADI competition weight; 0 is plain DeepInversion")
    temperature: float = Field(3.0, gt=0, description="temperature of the competition's JS divergence")


def total_variation_l2(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's prior: the L2 norms of horizontal, vertical and both diagonal neighbour differences."""
    return (
        (x[..., :, :-1] - x[..., :, 1:]).norm()
        + (x[..., :-1, :] - x[..., 1:, :]).norm()
        + (x[..., 1:, :-1] - x[..., :-1, 1:]).norm()
        + (x[..., :-1, :-1] - x[..., 1:, 1:]).norm()
    )


@register_method("deepinversion")
class DeepInversion(Synthesizer):
    Options = DeepInversionOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stats = BNStatistics(self.teacher)
        if not self.stats:
            raise MethodError(
                "deepinversion matches batch-norm statistics, and this teacher has no batch-norm "
                "layers (use a -bn model, e.g. lenet5-bn, or the default method)"
            )
        self.jitter = Augment(2, self.space.flip, self.space.low, self.generator)

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        o = self.options
        seen = self.jitter(x)
        with self.stats.recording():
            logits = self.teacher(seen)
        loss = (
            F.cross_entropy(logits, targets)
            + o.bn_weight * self.stats.take()
            + o.tv_weight * total_variation_l2(seen)
            + o.l2_weight * seen.norm()
        )
        if o.adaptive:
            loss = loss + o.adaptive * (1 - js_divergence(logits, self.student(seen), o.temperature).clamp(0, 1))
        return loss

    def step(self, n: int) -> torch.Tensor:
        o = self.options
        targets = self.balanced_labels(n)
        scale = (self.space.high - self.space.low) / 4  # N(0, 1) in the reference's normalised space
        x = (scale * torch.randn((n, *self.space.shape), generator=self.generator)).to(self.device)
        x = self.clamp_(x).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=o.lr)
        best, best_loss = x.detach().clone(), float("inf")
        for _ in range(o.iterations):
            loss = self.loss(x, targets)
            if loss.item() < best_loss:
                best, best_loss = x.detach().clone(), loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                self.clamp_(x)
        return best

    def close(self) -> None:
        self.stats.remove()
