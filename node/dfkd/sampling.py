"""Draws from explicit torch.Generators (torch's Gamma, Beta and Dirichlet samplers take none), so runs repeat."""

from __future__ import annotations

import torch


def seeded_gamma(alpha: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gamma(alpha, 1) draws with Marsaglia-Tsang, from `generator` (torch's sampler takes none)."""
    boost = alpha < 1
    a = torch.where(boost, alpha + 1, alpha)
    d = a - 1.0 / 3
    c = 1.0 / torch.sqrt(9 * d)
    out = torch.empty_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while todo.any():
        z = torch.randn(a.shape, generator=generator)
        u = torch.rand(a.shape, generator=generator)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-30)) < 0.5 * z**2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        take = todo & ok
        out[take] = (d * v)[take]
        todo &= ~ok
    if boost.any():
        u = torch.rand(a.shape, generator=generator)
        out = torch.where(boost, out * u.clamp_min(1e-30) ** (1.0 / alpha), out)
    return out


def seeded_beta(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of Beta(alpha, alpha), as X / (X + Y) with X, Y ~ Gamma(alpha, 1)."""
    a = torch.full((n,), float(alpha))
    x, y = seeded_gamma(a, generator), seeded_gamma(a, generator)
    return x / (x + y)
