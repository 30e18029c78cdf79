"""Augmentation of synthetic (and real) batches: random shifts and, where the domain allows, mirroring.

Differentiable in the inputs, so a synthesiser can optimise images through it (DeepInversion's
jitter), and driven by an explicit torch.Generator so that runs repeat exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Augment:
    """Shift every image by up to `shift` pixels each way (padding with `fill`) and mirror half of them if `flip`."""

    def __init__(self, shift: int, flip: bool, fill: float, generator: torch.Generator):
        self.shift, self.flip, self.fill, self.generator = shift, flip, fill, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.shift
        if s:
            padded = F.pad(x, (s, s, s, s), value=self.fill)
            dy = torch.randint(0, 2 * s + 1, (n,), generator=self.generator).to(x.device)
            dx = torch.randint(0, 2 * s + 1, (n,), generator=self.generator).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            x = padded[
                torch.arange(n, device=x.device)[:, None, None, None],
                torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                rows,
                cols,
            ]
        if self.flip:
            mirror = (torch.rand(n, generator=self.generator) < 0.5).to(x.device)[:, None, None, None]
            x = torch.where(mirror, x.flip(3), x)
        return x
