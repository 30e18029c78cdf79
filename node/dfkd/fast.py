"""`fast`: the default method. Short inversions against the teacher's BN statistics, fed to the bank.

Each step makes a fresh batch whose target classes are balanced, and optimises its pixels for a
few tens of Adam steps (through random shifts and mirroring, as DeepInversion's jitter) so that
- the batch's statistics in every BN layer of the teacher match the running ones the teacher kept
  from its training data (DeepInversion; with `bn_momentum`, Fast-DataFree's moving average),
- the teacher puts each input in its target class (cross-entropy),
- and the student, as it is now, disagrees with the teacher while still agreeing on the class
  (Fast-DataFree's masked adversarial term: hard samples, not mislabelled ones).
The shared loop banks every batch and trains the student from the whole bank between steps.

Choices, written down:
- Pixels, not a generator. Fast-DataFree and NAYER amortise synthesis in a generator of ~2M
  weights whose forward pass costs about 280 times a LeNet-5's: on a GPU with a ResNet teacher the
  generator is cheap next to the teacher, on two CPU cores with a LeNet it is everything. Pixel
  inversion with few steps and a bank gave the best student per minute here (BENCHMARKS.md).
- Balanced targets and a balanced bank: with a strong BN term the teacher's labels of unbalanced
  batches skew 3-4x between classes; targets in equal shares plus class-balanced student batches
  keep every class taught.
- An ensemble of node teachers is inverted one node at a time: each step picks the node furthest
  behind its share of the data, draws the batch's classes from the class histogram inside that
  node's (signed) teacher file, and matches that node's BN statistics with its own classifier's
  cross-entropy. Every node's statistics describe its own data, and no single batch can match five
  skewed histograms at once (summing every member's BN distances, as DENSE does, asks for exactly
  that); node by node, the bank becomes the union of the nodes' data, as a pooled dataset would be.
  The adversarial term uses the whole ensemble, which is what the student is taught; with many
  nodes (`adversarial_members`) a random subset of it, drawn for each batch: that term reads every
  member it uses at each of a batch's optimisation steps, which at 100 nodes is nearly all of the
  synthesis time, while the subset's renormalised mean estimates the ensemble's logits (exactly in
  expectation when the weights are uniform) and the student is still relabelled by every member.
- A teacher without BN has no statistics to match: then a conditional generator (latent + class,
  output mapped onto the data range) persists across steps and is trained with the cross-entropy,
  the adversarial term and DAFL's batch class-balance entropy, as DAFL/DFAD do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from node.dfkd.augment import Augment
from node.dfkd.base import Options, Synthesizer, register_method
from node.dfkd.criterions import agreement_disagreement, negative_entropy_of_mean, total_variation
from node.dfkd.generator import Generator
from node.dfkd.hooks import BNStatistics
from node.models import Ensemble


class FastOptions(Options):
    iterations: int = Field(
        60,
        ge=1,
        description="optimisation steps per synthesised batch (60 beat 30 on a validation split at the same "
        "wall-clock budget, BENCHMARKS.md)",
    )
    lr: float = Field(0.1, gt=0, description="Adam learning rate on the pixels (betas 0.5, 0.99)")
    init_std: float = Field(0.5, gt=0, description="the free parameters start from N(0, init_std^2)")
    downscale: int | None = Field(
        None,
        ge=1,
        description="the image is optimised at 1/downscale of its size and "
        "upsampled (bilinear): a smoothness prior that costs nothing; 1: every pixel free; "
        "default 2 for images 16 pixels or more across, else 1",
    )
    bn_weight: float = Field(10.0, ge=0, description="weight of the BN statistics distance")
    bn_momentum: float = Field(0.0, ge=0, lt=1, description="Fast-DataFree's moving average of batch statistics")
    first_bn_weight: float = Field(
        10.0,
        ge=0,
        description="weight of the first BN layer relative to the others: its "
        "statistics are what tie the synthetic pixels to the data's",
    )
    ce_weight: float = Field(1.0, ge=0, description="weight of the teacher's cross-entropy to the target class")
    adversarial: float = Field(0.5, ge=0, description="weight of the masked teacher-student disagreement")
    adversarial_members: int = Field(
        0,
        ge=0,
        description="members of an ensemble the adversarial term reads, drawn afresh for each synthesised "
        "batch (their weights renormalised); 0: every member",
    )
    tv_weight: float = Field(0.0, ge=0, description="total variation prior")
    jitter: bool = Field(True, description="random shifts (and mirroring where the data allows) while optimising")
    meta: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Reptile rate of a per-class starting image (0: every batch starts from noise alone)",
    )
    # teachers without batch norm: a conditional generator instead of pixels
    latent: int = Field(64, ge=1, description="generator input dimension (generator fallback)")
    generator_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the generator (generator fallback)")
    entropy_weight: float = Field(5.0, ge=0, description="DAFL's class-balance term (generator fallback)")


@register_method("fast")
class FastInversion(Synthesizer):
    Options = FastOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        o = self.options
        self.members = list(self.teacher.members) if isinstance(self.teacher, Ensemble) else [self.teacher]
        self.stats = [BNStatistics(m, momentum=o.bn_momentum, first_weight=o.first_bn_weight) for m in self.members]
        self.shares = [1.0] * len(self.members)
        self.made = [0] * len(self.members)
        self.jitter = Augment(2 if o.jitter else 0, o.jitter and self.space.flip, self.space.low, self.generator)
        self.taught = self.teacher  # what the adversarial term reads (a subset of an ensemble, if asked)
        self.conditional = None
        channels, height, width = self.space.shape
        downscale = o.downscale or (2 if min(height, width) >= 16 else 1)
        size = (channels, max(1, height // downscale), max(1, width // downscale))
        self.templates = torch.zeros((self.num_classes, *size), device=self.device)  # Reptile starts, per class
        if not all(self.stats):  # a member without BN layers: no statistics to invert against
            self.close()
            self.conditional = Generator(
                o.latent + self.num_classes, self.space.shape, low=self.space.low, high=self.space.high
            ).to(self.device)
            self.generator_opt = torch.optim.Adam(self.conditional.parameters(), lr=o.generator_lr, betas=(0.5, 0.999))

    @property
    def variant(self) -> str:
        return "bn-inversion" if self.conditional is None else "generator"

    def use_node_models(self, models, shares) -> str:
        if len(shares) == len(self.members):
            self.shares = [float(s) for s in shares]
        return self.variant

    def _next_member(self) -> int:
        """The member furthest behind its node's share of the data (deterministic, proportional)."""
        total, share_sum = sum(self.made) + 1, sum(self.shares)
        return max(range(len(self.members)), key=lambda i: self.shares[i] / share_sum * total - self.made[i])

    def _targets(self, i: int, n: int) -> torch.Tensor:
        """Classes in proportion to the member's training data where its file says what that was, else balanced."""
        counts = getattr(self.members[i], "label_counts", None)
        if counts is None or len(self.members) == 1:
            return self.balanced_labels(n)
        quota = torch.tensor(counts, dtype=torch.float64) / sum(counts) * n
        labels = torch.repeat_interleave(torch.arange(len(counts)), quota.floor().long())
        rest = n - len(labels)  # the remainder goes to the largest fractional parts, in order
        labels = torch.cat([labels, torch.argsort(quota - quota.floor(), descending=True)[:rest]])
        return labels[torch.randperm(n, generator=self.generator)].to(self.device)

    def objective(self, x: torch.Tensor, targets: torch.Tensor, i: int = 0) -> torch.Tensor:
        """Member i's BN statistics and cross-entropy; the adversarial term against what the student is taught."""
        o = self.options
        seen = self.jitter(x)
        if self.conditional is None:
            with self.stats[i].recording():
                logits = self.members[i](seen)
            loss = o.ce_weight * F.cross_entropy(logits, targets) + o.bn_weight * self.stats[i].take()
        else:
            logits = self.teacher(seen)
            loss = o.ce_weight * F.cross_entropy(logits, targets) + o.entropy_weight * negative_entropy_of_mean(logits)
        if o.adversarial:
            taught = logits if len(self.members) == 1 or self.conditional is not None else self.taught(seen)
            loss = loss + o.adversarial * agreement_disagreement(taught, self.student(seen))
        if o.tv_weight:
            loss = loss + o.tv_weight * total_variation(x)
        return loss

    def step(self, n: int) -> torch.Tensor:
        o = self.options
        if self.conditional is not None:
            return self._generate(self.balanced_labels(n))
        i = self._next_member()
        self.made[i] += n
        targets = self._targets(i, n)
        if isinstance(self.teacher, Ensemble) and 0 < o.adversarial_members < len(self.members):
            drawn = torch.randperm(len(self.members), generator=self.generator)[: o.adversarial_members]
            self.taught = self.teacher.subset(drawn.tolist())
        start = (o.init_std * torch.randn((n, *self.templates.shape[1:]), generator=self.generator)).to(self.device)
        if o.meta:
            start = start + self.templates[targets]
        free = start.requires_grad_(True)
        opt = torch.optim.Adam([free], lr=o.lr, betas=(0.5, 0.99))
        for _ in range(o.iterations):
            loss = self.objective(self.image(free), targets, i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.stats[i].commit()
        if o.meta:  # Reptile: each class's start moves towards where its inputs ended up
            with torch.no_grad():
                for c in targets.unique():
                    self.templates[c] += o.meta * (free[targets == c].mean(0) - self.templates[c])
        with torch.no_grad():
            return self.image(free)

    def image(self, free: torch.Tensor) -> torch.Tensor:
        """Free parameters -> an image in the data range: bilinear upsampling, then a tanh onto [low, high]
        (bounded without clamping, so a pixel at a bound still has a gradient)."""
        if free.shape[-2:] != self.space.shape[-2:]:
            free = F.interpolate(free, size=self.space.shape[-2:], mode="bilinear", align_corners=False)
        mid, half = (self.space.high + self.space.low) / 2, (self.space.high - self.space.low) / 2
        return mid + half * torch.tanh(free)

    def _generate(self, targets: torch.Tensor) -> torch.Tensor:
        def code() -> torch.Tensor:
            noise = torch.randn((len(targets), self.options.latent), generator=self.generator).to(self.device)
            return torch.cat([noise, F.one_hot(targets, self.num_classes).float()], 1)

        self.conditional.train()
        for _ in range(self.options.iterations):
            loss = self.objective(self.conditional(code()), targets)
            self.generator_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.generator_opt.step()
        self.conditional.eval()
        with torch.no_grad():
            return self.conditional(code())

    def close(self) -> None:
        for stats in self.stats:
            stats.remove()
