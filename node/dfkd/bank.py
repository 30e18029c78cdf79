"""The memory bank: everything a synthesiser made, kept for the student to learn from again and again.

Fast-DataFree and CMI train the student on the whole growing pool, not only the newest batch, so
early samples keep teaching and the student does not chase the synthesiser. The bank remembers
which class the teacher gave each sample when it came in, so that a student batch can be drawn
class-balanced: a synthesiser rarely hits every class equally, and an unbalanced transfer set
teaches an unbalanced student.

Storage grows by doubling, so adding a batch costs the batch, not a copy of the whole bank (a cheap
synthesiser adds thousands of batches in a run).
"""

from __future__ import annotations

import torch


class MemoryBank:
    def __init__(self) -> None:
        self._x: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self.size = 0
        self._weights: torch.Tensor | None = None  # balanced-draw weights, until the bank changes

    @property
    def x(self) -> torch.Tensor | None:
        return None if self._x is None else self._x[: self.size]

    @property
    def labels(self) -> torch.Tensor | None:
        return None if self._labels is None else self._labels[: self.size]

    def __len__(self) -> int:
        return self.size

    def add(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Append a batch and the teacher's classes for it."""
        x, labels = x.detach(), labels.detach()
        self._weights = None
        if self._x is None or self._labels is None:
            self._x, self._labels = x.new_empty((0, *x.shape[1:])), labels.new_empty(0)
        need = self.size + len(x)
        if need > len(self._x):
            grown = max(need, 2 * len(self._x))
            self._x = torch.cat([self._x[: self.size], self._x.new_empty((grown - self.size, *x.shape[1:]))])
            self._labels = torch.cat([self._labels[: self.size], self._labels.new_empty(grown - self.size)])
        self._x[self.size : need] = x
        self._labels[self.size : need] = labels
        self.size = need

    def sample(self, n: int, generator: torch.Generator, *, balanced: bool) -> torch.Tensor:
        """n samples with replacement: uniformly, or with every class (as the teacher sees it) equally likely."""
        x, labels = self.x, self.labels
        assert x is not None and labels is not None and self.size, "sample() from an empty bank"
        if balanced:
            if self._weights is None:
                held = labels.cpu()
                self._weights = (1.0 / torch.bincount(held).clamp_min(1).float())[held]
            idx = torch.multinomial(self._weights, n, replacement=True, generator=generator)
        else:
            idx = torch.randint(self.size, (n,), generator=generator)
        return x[idx.to(x.device)]

    def class_counts(self, num_classes: int) -> list[int]:
        labels = self.labels
        return [] if labels is None else torch.bincount(labels.cpu(), minlength=num_classes).tolist()
