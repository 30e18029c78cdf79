"""The floor: the transfer set is uniform noise over the input range, labelled by the teacher."""

from __future__ import annotations

import torch

from node.dfkd.base import Synthesizer, register_method


@register_method("noise")
class NoiseTransfer(Synthesizer):
    def step(self, n: int) -> torch.Tensor:
        return self.noise(n)
