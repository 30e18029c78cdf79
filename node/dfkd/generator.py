"""The image generator of DAFL and DFAD (and so of the Minkowski method): z -> an image in [-1, 1]."""

from __future__ import annotations

import torch
from torch import nn

from node.dfkd.base import Synthesizer


class Generator(nn.Module):
    """Linear to 128 x (s/4)^2, two upsample-conv blocks with batch norm, tanh, then a non-affine BN.

    The last BN (affine=False) is the reference implementations': it keeps the images' statistics
    normalised while the generator chases the teacher.
    """

    def __init__(self, latent: int, shape: tuple[int, int, int]):
        super().__init__()
        channels, height, width = shape
        self.latent, self.init = latent, (height // 4, width // 4)
        self.project = nn.Sequential(nn.Linear(latent, 128 * self.init[0] * self.init[1]))
        self.body = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(128, 64, 3, padding=1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
            nn.Conv2d(64, channels, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(channels, affine=False),
        )
        self.size = (height, width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(self.project(z).view(len(z), 128, *self.init))
        if x.shape[-2:] != self.size:  # sizes not divisible by 4 (e.g. 28 -> 7 -> 28 works; 30 would not)
            x = nn.functional.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x


class GeneratorMethod(Synthesizer):
    """A method that trains a generator (and the student, online): its transfer set is the generator's output."""

    online = True

    def latent(self, n: int) -> torch.Tensor:
        return torch.randn((n, self.options.latent), generator=self.generator).to(self.device)

    def transfer_from(self, gen: Generator):
        """After training: the student back in eval mode, and `samples` images from the final generator."""
        self.student.eval()
        gen.eval()
        with torch.no_grad():
            for start in range(0, self.samples, 256):
                yield gen(self.latent(min(256, self.samples - start)))
