"""Forward hooks that read a teacher's insides: the batch-norm statistics its training data left behind."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class BNStatistics:
    """How far a batch's per-channel statistics are from the running ones, summed over BN layers.

    Each BN layer adds ||mu_batch - mu_running||_2 + ||var_batch - var_running||_2 (DeepInversion's
    feature-distribution regulariser; an ensemble's layers all count, as in DENSE). With `momentum`
    m > 0 the batch is judged as part of a moving average of earlier batches, m * avg + (1 - m) *
    batch, as Fast-DataFree does: a small batch then only has to move the running mixture towards
    the teacher's statistics instead of matching them alone, which leaves its images free to differ.
    `commit()` folds the last batch into the average. Only forward passes inside `recording()`
    count, so the teacher can label batches for the student meanwhile.
    """

    def __init__(self, model: nn.Module, *, momentum: float = 0.0, first_weight: float = 1.0):
        layers = batch_norm_layers(model)
        self.momentum = momentum
        self.losses: list[torch.Tensor] = []
        self.weights = {id(m): (first_weight if i == 0 else 1.0) for i, m in enumerate(layers)}
        self.recording_now = False
        self.average: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.last: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [m.register_forward_hook(self._hook) for m in layers]

    def __bool__(self) -> bool:
        return bool(self.handles)

    @contextmanager
    def recording(self):
        self.losses, self.recording_now = [], True
        try:
            yield self
        finally:
            self.recording_now = False

    def _hook(self, module, inputs, _output) -> None:
        if not self.recording_now:
            return
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        key = id(module)
        self.last[key] = (mean.detach(), var.detach())
        if self.momentum and key in self.average:
            avg_mean, avg_var = self.average[key]
            mean = self.momentum * avg_mean + (1 - self.momentum) * mean
            var = self.momentum * avg_var + (1 - self.momentum) * var
        distance = torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2)
        self.losses.append(self.weights[key] * distance)

    def take(self) -> torch.Tensor:
        """The summed distance of every BN layer the recorded forward passes went through; resets."""
        total, self.losses = sum(self.losses), []
        return total if isinstance(total, torch.Tensor) else torch.zeros(())

    def commit(self) -> None:
        """Fold the last batch's statistics into the moving average (once per synthesised batch)."""
        for key, (mean, var) in self.last.items():
            if key in self.average:
                avg_mean, avg_var = self.average[key]
                m = self.momentum
                self.average[key] = (m * avg_mean + (1 - m) * mean, m * avg_var + (1 - m) * var)
            else:
                self.average[key] = (mean, var)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
