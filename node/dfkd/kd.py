"""The ceiling: Hinton KD on the real training data (benchmarks only, never in a federated run)."""

from __future__ import annotations

import torch

from node.dfkd.base import MethodError, Synthesizer, register_method


@register_method("kd")
class RealDataKD(Synthesizer):
    real_data: torch.Tensor | None = None

    def use_real_data(self, x: torch.Tensor) -> None:
        self.real_data = x

    def synthesize(self):
        if self.real_data is None:
            raise MethodError("kd distils on real data: it is a benchmark's upper bound, not a data-free method")
        order = torch.randperm(len(self.real_data), generator=self.generator)[: self.samples]
        for start in range(0, len(order), 256):
            yield self.real_data[order[start : start + 256]].to(self.device)
