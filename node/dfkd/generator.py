"""The image generator of DAFL, DFAD (and so of the Minkowski method) and of `fast` for teachers without BN.

z -> Linear -> 128 x (s/4)^2 -> two upsample-conv blocks with batch norm -> conv -> tanh, scaled
onto the data's range. The reference implementations end in a non-affine BatchNorm after the tanh
instead, which normalises every image to zero mean and unit variance: the outputs then leave the
range the teacher was trained on (17-25% of pixels outside [-1, 1] measured here, and the data's
white, +1 with mean -0.43 on Fashion-MNIST, never produced). The range is a fact about the data, so
the output is mapped onto it and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    def __init__(
        self,
        latent: int,
        shape: tuple[int, int, int],
        *,
        low: float = -1.0,
        high: float = 1.0,
        width: int = 128,
        bn_eps: float = 1e-5,
    ):
        super().__init__()
        channels, height, w = shape
        self.latent, self.init, self.width = latent, (max(1, height // 4), max(1, w // 4)), width
        self.low, self.high = low, high
        self.project = nn.Linear(latent, width * self.init[0] * self.init[1])
        self.body = nn.Sequential(
            nn.BatchNorm2d(width, eps=bn_eps),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width, eps=bn_eps),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2, eps=bn_eps),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, channels, 3, padding=1),
            nn.Tanh(),
        )
        self.size = (height, w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(self.project(z).view(len(z), self.width, *self.init))
        if x.shape[-2:] != self.size:  # sizes not divisible by 4
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return self.low + (x + 1) * (self.high - self.low) / 2
