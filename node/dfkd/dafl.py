"""DAFL: data-free learning of student networks (Chen et al., ICCV 2019).

A generator is trained against the fixed teacher with three losses on its images: one-hot (the
teacher's cross-entropy against its own argmax), activation (minus the L1 norm of the teacher's
features before its classifier) and information entropy (minus the entropy of the teacher's mean
prediction over the batch, in log base 10 as the reference computes it, so that classes stay
balanced). Each step takes `generator_steps` generator updates and hands the generator's next
batch to the shared loop, which trains the student by KD on the bank. Defaults are DAFL's MNIST
settings: alpha 0.1, beta 5, batch 512, latent 100, generator Adam 0.2, generator BN eps 0.8. The
reference trains its student with Adam 2e-3 on each batch once; here the shared loop does.
On two CPU cores one update at those settings takes seconds (the generator's 128-channel
convolutions at 28x28 cost 35 teacher passes); `width` 64 and `batch_size` 128 took 0.17-0.22 s an
update against 5.4 s, which is what a two-minute budget needs (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from node.dfkd.base import Options, Synthesizer, register_method
from node.dfkd.criterions import negative_entropy_of_mean
from node.dfkd.generator import Generator


class DAFLOptions(Options):
    generator_steps: int = Field(1, ge=1, description="generator updates per step (DAFL: one per student update)")
    batch_size: int = Field(512, ge=1, description="inputs synthesised per step, each step one batch for the bank")
    latent: int = Field(100, ge=1, description="generator input dimension")
    width: int = Field(
        128,
        ge=2,
        description="generator channels (DAFL: 128); its convolutions' cost grows as the square, so 32 is "
        "16 times cheaper on a CPU",
    )
    alpha: float = Field(0.1, ge=0, description="weight of the activation loss")
    beta: float = Field(5.0, ge=0, description="weight of the information-entropy loss")
    generator_lr: float = Field(0.2, gt=0, description="Adam learning rate of the generator")


def dafl_losses(teacher, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(one-hot, activation, information entropy), each to be minimised; the teacher may be an ensemble."""
    logits, features = teacher.logits_and_features(x)
    one_hot = F.cross_entropy(logits, logits.argmax(1))
    activation = -features.abs().mean()
    return one_hot, activation, negative_entropy_of_mean(logits, base=10.0)


@register_method("dafl")
class DAFL(Synthesizer):
    Options = DAFLOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.options
        self.net = Generator(
            o.latent, self.space.shape, low=self.space.low, high=self.space.high, width=o.width, bn_eps=0.8
        ).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=o.generator_lr)

    def latent(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.options.latent), generator=self.generator).to(self.device)

    def step(self, n: int) -> torch.Tensor:
        o = self.options
        self.net.train()
        for _ in range(o.generator_steps):
            one_hot, activation, info = dafl_losses(self.teacher, self.net(self.latent(o.batch_size)))
            loss = one_hot + o.alpha * activation + o.beta * info
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.net.eval()
        with torch.no_grad():
            return self.net(self.latent(n))
