"""Distillation on real inputs: the benchmark's ceiling (`kd`) and FedDF's public unlabeled set (`public`).

Real images go through the same loop as synthetic ones (bank, augmentation, relabelling), so the
gap between a data-free method and these rows is the price of having no data, nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from node.dfkd.base import MethodError, Options, Synthesizer, register_method


@register_method("kd")
class RealDataKD(Synthesizer):
    """Hinton KD on the training data itself: for benchmarks only, never in a federated run."""

    real_data: torch.Tensor | None = None

    def use_real_data(self, x: torch.Tensor) -> None:
        self.real_data = x
        self.order = torch.randperm(len(x), generator=self.generator)
        self.cursor = 0

    def step(self, n: int) -> torch.Tensor:
        """The next n distinct images of a seeded permutation (a bank of `samples` real images)."""
        if self.real_data is None:
            raise MethodError(f"{self.name} distils on real data, and none was given")
        if self.cursor + n > len(self.order):
            raise MethodError(f"{self.name}: distill.samples asks for more than the {len(self.order)} images there are")
        idx = self.order[self.cursor : self.cursor + n]
        self.cursor += n
        return self.real_data[idx].to(self.device)


class PublicOptions(Options):
    dataset: str = Field(..., description="a dataset by name (data.dataset's names) that the distiller holds")
    split: Literal["train", "test"] = Field("test", description="which of its splits")
    path: Path | None = Field(None, description="its folder, if not the dataset's default")


@register_method("public")
class PublicData(RealDataKD):
    """FedDF (Lin et al., NeurIPS 2020): distil on an unlabeled public set the distiller holds, labelled by the
    teachers. Not data-free: the row that shows what having such a set is worth. The distiller loads the set
    (node/distiller.py) and hands it over; the images must have the scenario's shape."""

    Options = PublicOptions
