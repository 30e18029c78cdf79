"""Adversarial DFKD with the Minkowski-p distance (Heo, Im, Cho; ../shared/papers/004).

A generator and the student play DFAD's game: the student minimises the distance between teacher
and student logits on generated images, the generator maximises it. The distance is
(sum_i |t_i - s_i|^p)^(1/p) / C (the paper's Minkowski loss); p = 1 is DFAD's MAE. Defaults are the
paper's: batch 128, student SGD (momentum 0.9, weight decay 5e-4), generator Adam, five student
steps per generator step, p = 1.5 (its best in Table II).
"""

from __future__ import annotations

import torch
from pydantic import Field

from node.dfkd.base import Options, register_method
from node.dfkd.generator import Generator, GeneratorMethod


def minkowski_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, p: float) -> torch.Tensor:
    """Mean over the batch of (sum_i |t_i - s_i|^p)^(1/p) / C."""
    diff = (teacher_logits - student_logits).abs()
    return ((diff**p).sum(1).clamp_min(1e-12) ** (1.0 / p)).mean() / teacher_logits.shape[1]


class MinkowskiOptions(Options):
    p: float = Field(1.5, gt=0, description="distance order; 1 is DFAD's MAE")
    iterations: int = Field(2000, ge=1, description="generator steps")
    student_steps: int = Field(5, ge=1, description="student steps per generator step")
    batch_size: int = Field(128, ge=1)
    latent: int = Field(256, ge=1)
    generator_lr: float = Field(1e-3, gt=0)
    student_lr: float = Field(0.1, gt=0, description="SGD, momentum 0.9, weight decay 5e-4")


@register_method("minkowski")
class Minkowski(GeneratorMethod):
    Options = MinkowskiOptions

    def student_loss(self, student_logits, teacher_logits, temperature):
        return minkowski_loss(teacher_logits, student_logits, self.options.p)

    def synthesize(self):
        o, teacher, student = self.options, self.teacher.eval(), self.student
        gen = Generator(o.latent, self.space.shape).to(self.device)
        g_opt = torch.optim.Adam(gen.parameters(), lr=o.generator_lr)
        s_opt = torch.optim.SGD(student.parameters(), lr=o.student_lr, momentum=0.9, weight_decay=5e-4)
        for _ in range(o.iterations):
            student.train()
            for _ in range(o.student_steps):
                with torch.no_grad():
                    x = gen(self.latent(o.batch_size))
                    t = teacher(x)
                loss = minkowski_loss(t, student(x), o.p)
                s_opt.zero_grad(set_to_none=True)
                loss.backward()
                s_opt.step()
                self.student_steps += 1
            x = gen(self.latent(o.batch_size))
            g_loss = -minkowski_loss(teacher(x), student(x), o.p)  # the generator looks for disagreement
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
        yield from self.transfer_from(gen)
