"""DAFL: data-free learning of student networks (Chen et al., ICCV 2019).

A generator is trained against the fixed teacher with three losses on its images: one-hot (the
teacher's cross-entropy against its own argmax), activation (minus the L1 norm of the teacher's
features before its classifier) and information entropy (minus the entropy of the teacher's mean
prediction over the batch, so that classes stay balanced). The student learns from the teacher on
the same images by KD. Defaults are DAFL's MNIST settings: alpha 0.1, beta 5, batch 512, latent
100, generator Adam 0.2, student Adam 2e-3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from node.dfkd.base import Options, register_method
from node.dfkd.distill import kd_loss
from node.dfkd.generator import Generator, GeneratorMethod


class DAFLOptions(Options):
    iterations: int = Field(24_000, ge=1, description="generator steps (DAFL MNIST: 200 epochs x 120)")
    batch_size: int = Field(512, ge=1)
    latent: int = Field(100, ge=1)
    alpha: float = Field(0.1, ge=0, description="weight of the activation loss")
    beta: float = Field(5.0, ge=0, description="weight of the information-entropy loss")
    generator_lr: float = Field(0.2, gt=0)
    student_lr: float = Field(2e-3, gt=0)
    temperature: float = Field(1.0, gt=0, description="KD temperature of the student's steps")


def dafl_losses(teacher, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(one-hot, activation, information entropy), each to be minimised."""
    features = teacher.features(x)
    logits = teacher.head(teacher.fc_penult(features))
    one_hot = F.cross_entropy(logits, logits.argmax(1))
    activation = -features.abs().mean()
    mean_prob = F.softmax(logits, 1).mean(0)
    info_entropy = (mean_prob * mean_prob.clamp_min(1e-12).log()).sum()  # = -H(mean prediction)
    return one_hot, activation, info_entropy


@register_method("dafl")
class DAFL(GeneratorMethod):
    Options = DAFLOptions

    def synthesize(self):
        o, teacher, student = self.options, self.teacher.eval(), self.student
        gen = Generator(o.latent, self.space.shape).to(self.device)
        g_opt = torch.optim.Adam(gen.parameters(), lr=o.generator_lr)
        s_opt = torch.optim.Adam(student.parameters(), lr=o.student_lr)
        for _ in range(o.iterations):
            gen.train()
            x = gen(self.latent(o.batch_size))
            one_hot, activation, info = dafl_losses(teacher, x)
            g_loss = one_hot + o.alpha * activation + o.beta * info
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
            student.train()
            x = x.detach()
            with torch.no_grad():
                t = teacher(x)
            s_loss = kd_loss(student(x), t, o.temperature)
            s_opt.zero_grad(set_to_none=True)
            s_loss.backward()
            s_opt.step()
            self.student_steps += 1
        yield from self.transfer_from(gen)
