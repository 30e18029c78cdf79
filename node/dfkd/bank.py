"""The memory bank: everything a synthesiser made, kept for the student to learn from again and again.

Fast-DataFree and CMI train the student on the whole growing pool, not only the newest batch, so
early samples keep teaching and the student does not chase the synthesiser. The bank remembers
which class the teacher gave each sample when it came in, so that a student batch can be drawn
class-balanced: a synthesiser rarely hits every class equally, and an unbalanced transfer set
teaches an unbalanced student.
"""

from __future__ import annotations

import torch


class MemoryBank:
    def __init__(self, capacity: int | None = None):
        self.capacity = capacity
        self.x: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.x is None else len(self.x)

    def add(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Append a batch and the teacher's classes for it; past `capacity`, the oldest samples go."""
        x, labels = x.detach(), labels.detach()
        self.x = x if self.x is None else torch.cat([self.x, x])
        self.labels = labels if self.labels is None else torch.cat([self.labels, labels])
        if self.capacity is not None and len(self.x) > self.capacity:
            self.x, self.labels = self.x[-self.capacity :], self.labels[-self.capacity :]

    def sample(self, n: int, generator: torch.Generator, *, balanced: bool) -> torch.Tensor:
        """n samples with replacement: uniformly, or with every class (as the teacher sees it) equally likely."""
        assert self.x is not None and self.labels is not None, "sample() from an empty bank"
        if balanced:
            counts = torch.bincount(self.labels.cpu())
            weights = (1.0 / counts.clamp_min(1).float())[self.labels.cpu()]
            idx = torch.multinomial(weights, n, replacement=True, generator=generator)
        else:
            idx = torch.randint(len(self.x), (n,), generator=generator)
        return self.x[idx.to(self.x.device)]

    def class_counts(self, num_classes: int) -> list[int]:
        return [] if self.labels is None else torch.bincount(self.labels.cpu(), minlength=num_classes).tolist()
