"""Soft targeted transfer set synthesis (Wang, AAAI 2021; ../shared/papers/003).

Soft targets come from a multivariate normal over the teacher's FC-2 output space (or its softmax
space), whose correlation is read off the layer's weights (Eq. 5); noise inputs are optimised so
that the teacher's tempered softmax matches them (KL, Eq. 8) while the last conv layer's
activations grow (Eq. 9), the total being Eq. 10.

Choices where the paper is silent, written down:
- Sigma = sigma * R with R = W_hat W_hat^T (rows of the layer's weight matrix, normalised; for the
  softmax space, the last layer's): sampling
  s = sqrt(sigma) * W_hat z, z ~ N(0, I) gives exactly this covariance without factorising R,
  which is only positive semi-definite (rank <= fan-in). `sigma` is the common variance (D^2).
- s is the FC-2 layer's output before its activation; "the rest of the layers" (Eq. 7) are then
  the activation and the last FC layer, at temperature tau.
- The two terms of Eq. 10 are put on one scale: the KL is multiplied by tau^2 (as in Hinton's KD,
  else its gradient shrinks as 1/tau^2 and at tau = 20 the activation term alone decides the
  inputs, which then saturate), and L_a is the mean, not the sum, of the absolute activations,
  so lambda_a does not depend on the layer's width. Without this, lambda_a = 0.05 drives every
  input to the range's bounds whatever its target (measured on digits: 99.8% of pixels).
- Synthetic inputs start from uniform noise over the data range and are projected back onto it
  after every step.
- With an ensemble of teachers, each member synthesises an equal share from its own FC-2 space;
  the student then learns from the ensemble's averaged logits.
- Not in the paper: where the teacher has batch norm, its BN statistics are matched too
  (`bn_weight`; 0 for the paper's method). At tau = 20 the soft targets are nearly uniform (mean
  max-probability 0.12 measured on Fashion-MNIST), so matching them alone leaves the inputs close
  to their starting noise (std 0.585 against 0.577 for the noise); the paper's MNIST result leans on
  heavy augmentation and 2 000 epochs instead.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from node.dfkd.base import MethodError, Options, Synthesizer, register_method
from node.dfkd.hooks import BNStatistics
from node.models import Ensemble


class SoftTargetOptions(Options):
    space: Literal["fc2", "softmax"] = Field(
        "fc2", description="model the FC-2 output space (the paper's choice) or the softmax"
    )
    sigma: float = Field(
        1.5, gt=0, description="variance of every FC-2 element (1.5 for LeNet-5 on MNIST in the paper)"
    )
    activation_weight: float = Field(0.05, ge=0, description="lambda_a of Eq. 10")
    temperature: float = Field(20.0, gt=0, description="tau of Eq. 6-8")
    iterations: int = Field(1500, ge=1, description="Adam steps per batch of noise inputs")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate on the inputs")
    batch_size: int = Field(100, ge=1, description="inputs synthesised per step, each step one batch for the bank")
    bn_weight: float = Field(
        10.0, ge=0, description="image prior where the teacher has BN (not in the paper; 0 for the paper's method)"
    )


def correlation_from_weights(weight: torch.Tensor) -> torch.Tensor:
    """R(i, j) = cosine of the weight vectors of elements i and j (Eq. 5)."""
    w_hat = F.normalize(weight, dim=1)
    return w_hat @ w_hat.T


def sample_feature_space(weight: torch.Tensor, n: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """n draws of s ~ N(0, sigma R), R from `weight` (Eq. 3, 5), as s = sqrt(sigma) W_hat z."""
    w_hat = F.normalize(weight, dim=1)
    z = torch.randn((n, w_hat.shape[1]), generator=generator).to(w_hat.device)
    return (sigma**0.5) * z @ w_hat.T


@register_method("softtarget")
class SoftTarget(Synthesizer):
    Options = SoftTargetOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.members = list(self.teacher.members) if isinstance(self.teacher, Ensemble) else [self.teacher]
        if self.options.space == "fc2" and not all(isinstance(m.fc_penult, torch.nn.Linear) for m in self.members):
            raise MethodError(
                "softtarget: space fc2 models the second-to-last FC layer, and this teacher has a single "
                "FC layer; use distill.options.space: softmax"
            )
        self.steps_taken = 0
        self.stats: dict[int, BNStatistics] = {}

    def soft_targets(self, teacher, n: int) -> torch.Tensor:
        """n soft labels: s ~ N(0, sigma R) through the rest of the teacher, at temperature tau (Eq. 6-7)."""
        o = self.options
        with torch.no_grad():
            layer = teacher.fc_penult if o.space == "fc2" else teacher.head[-1]
            s = sample_feature_space(layer.weight, n, o.sigma, self.generator)
            logits = teacher.head(s) if o.space == "fc2" else s
            return F.softmax(logits / o.temperature, dim=1)

    def generation_loss(self, teacher, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Eq. 10: tau^2 KL(y_soft || teacher(x) at tau) + lambda_a * (-mean |last conv activation|) (+ BN prior)."""
        o = self.options
        stats = self.stats.get(id(teacher))
        if stats is None:
            stats = self.stats[id(teacher)] = BNStatistics(teacher)
        with stats.recording():
            logits, feats = teacher.logits_and_features(x)
        t = o.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), targets, reduction="batchmean") * (t * t)
        loss = kl + o.activation_weight * -feats.abs().mean()
        return loss + o.bn_weight * stats.take() if stats else loss

    def step(self, n: int) -> torch.Tensor:
        """Members take turns: with an ensemble, each synthesises from its own FC-2 space in equal shares."""
        teacher = self.members[self.steps_taken % len(self.members)]
        self.steps_taken += 1
        targets = self.soft_targets(teacher, n)
        return self.optimise_inputs(
            self.noise(n), lambda x: self.generation_loss(teacher, x, targets), self.options.iterations, self.options.lr
        )

    def close(self) -> None:
        for stats in self.stats.values():
            stats.remove()
