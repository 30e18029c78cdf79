"""DeepInversion (Yin et al., CVPR 2020), with its adaptive variant ADI.

Inputs are optimised so that the teacher classifies them as chosen targets while the batch
statistics they induce in every batch-norm layer match the running statistics the teacher kept
from its training data, under image priors (total variation, l2). ADI adds a competition term
that rewards images on which the student disagrees with the teacher (1 - Jensen-Shannon). It needs
a teacher with batch norm and says so when the teacher has none. Defaults follow the paper's
CIFAR-10 setting: 2000 Adam iterations, batch 256, feature-matching weight 10; every BN layer
weighs the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from node.dfkd.base import MethodError, Options, Synthesizer, register_method


class DeepInversionOptions(Options):
    iterations: int = Field(2000, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.05, gt=0)
    bn_weight: float = Field(10.0, ge=0, description="weight of the batch-norm statistics loss")
    tv_weight: float = Field(1e-4, ge=0, description="total variation prior")
    l2_weight: float = Field(1e-5, ge=0, description="l2 prior on the inputs")
    adaptive: float = Field(0.0, ge=0, description="ADI competition weight; 0 is plain DeepInversion")
    temperature: float = Field(3.0, gt=0, description="temperature of the competition's JS divergence")


class BNStatistics:
    """Forward hooks on every BN layer: the distance of the batch's statistics to the running ones."""

    def __init__(self, model: nn.Module):
        self.losses: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _hook(self, module, inputs, _output):
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        self.losses.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    def take(self) -> torch.Tensor:
        total, self.losses = sum(self.losses), []
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    p, q = F.softmax(p_logits / temperature, 1), F.softmax(q_logits / temperature, 1)
    m = 0.5 * (p + q)
    return 0.5 * (F.kl_div(m.log(), p, reduction="batchmean") + F.kl_div(m.log(), q, reduction="batchmean"))


@register_method("deepinversion")
class DeepInversion(Synthesizer):
    Options = DeepInversionOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.teacher.modules()):
            raise MethodError("deepinversion matches batch-norm statistics, and this teacher has no batch-norm "
                              "layers (use a -bn model, e.g. lenet5-bn)")

    def synthesize(self):
        o, teacher, student = self.options, self.teacher.eval(), self.student.eval()
        stats = BNStatistics(teacher)
        try:
            for start in range(0, self.samples, o.batch_size):
                n = min(o.batch_size, self.samples - start)
                targets = torch.randint(self._classes(), (n,), generator=self.generator).to(self.device)

                def loss_fn(x, targets=targets):
                    stats.losses = []
                    logits = teacher(x)
                    loss = (F.cross_entropy(logits, targets) + o.bn_weight * stats.take()
                            + o.tv_weight * total_variation(x) + o.l2_weight * x.pow(2).mean())
                    if o.adaptive:
                        loss = loss + o.adaptive * (1 - js_divergence(logits, student(x), o.temperature))
                    return loss

                start_x = torch.randn((n, *self.space.shape), generator=self.generator).to(self.device)
                yield self.optimise_inputs(start_x, loss_fn, o.iterations, o.lr)
        finally:
            stats.remove()

    def _classes(self) -> int:
        with torch.no_grad():
            return self.teacher(torch.zeros((1, *self.space.shape), device=self.device)).shape[1]
