"""Data-free knowledge distillation: one module per method behind `Synthesizer`, one KD loop.

A plain PyTorch library: it never imports flwr or web3, so a benchmark or a notebook can use it
alone. Methods register themselves by name; `node.dfkd.build_synthesizer` finds them.
"""

from node.dfkd.base import METHODS, InputSpace, MethodError, Synthesizer, build_synthesizer, register_method
from node.dfkd.distill import DistillResult, distill, kd_loss, resolve_device

# importing the method modules fills the registry
from node.dfkd import dafl, deepinversion, genkd, kd, minkowski, noise, softtarget, zskd  # noqa: E402,F401  isort:skip

__all__ = [
    "METHODS", "DistillResult", "InputSpace", "MethodError", "Synthesizer", "build_synthesizer", "distill",
    "kd_loss", "register_method", "resolve_device",
]
