"""The floor: a transfer set of uniform noise over the input range, labelled by the teacher."""

from __future__ import annotations

from node.dfkd.base import Synthesizer, register_method


@register_method("noise")
class NoiseTransfer(Synthesizer):
    def synthesize(self):
        for start in range(0, self.samples, 256):
            yield self.noise(min(256, self.samples - start))
