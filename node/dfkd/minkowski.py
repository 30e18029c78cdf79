"""Adversarial DFKD with the Minkowski-p distance (Heo, Im, Cho; ../shared/papers/004).

A generator and the student play DFAD's game: the student minimises the distance between teacher
and student logits on generated images, the generator maximises it. The distance is
(sum_i |t_i - s_i|^p)^(1/p) / C (the paper's Minkowski loss); p = 1 is DFAD's MAE. Each step takes
`generator_steps` generator updates against the student as it is now and hands the next batch to
the shared loop, whose student steps use the same distance (the `student_loss` hook); DFAD's five
student steps per generator step are `distill.steps` = 5 x the rounds. Defaults are the paper's:
batch 128, generator Adam 1e-3, p = 1.5 (its best in Table II). DFAD's student is SGD (momentum
0.9, weight decay 5e-4) at lr 0.1 (0.01 in its MNIST setting): the shared loop's optimizer.
"""

from __future__ import annotations

import torch
from pydantic import Field

from node.dfkd.base import Options, Synthesizer, register_method
from node.dfkd.criterions import minkowski_loss
from node.dfkd.generator import Generator


class MinkowskiOptions(Options):
    p: float = Field(1.5, gt=0, description="distance order; 1 is DFAD's MAE")
    generator_steps: int = Field(1, ge=1, description="generator updates per step")
    batch_size: int = Field(128, ge=1, description="inputs synthesised per step, each step one batch for the bank")
    latent: int = Field(256, ge=1, description="generator input dimension")
    generator_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the generator")


@register_method("minkowski")
class Minkowski(Synthesizer):
    Options = MinkowskiOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.options
        self.net = Generator(o.latent, self.space.shape, low=self.space.low, high=self.space.high).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=o.generator_lr)

    def latent(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.options.latent), generator=self.generator).to(self.device)

    def student_loss(self, student_logits, teacher_logits, temperature):
        return minkowski_loss(teacher_logits, student_logits, self.options.p)

    def step(self, n: int) -> torch.Tensor:
        o = self.options
        self.net.train()
        for _ in range(o.generator_steps):
            x = self.net(self.latent(o.batch_size))
            loss = -minkowski_loss(self.teacher(x), self.student(x), o.p)  # the generator looks for disagreement
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.net.eval()
        with torch.no_grad():
            return self.net(self.latent(n))
