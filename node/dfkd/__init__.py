"""Data-free knowledge distillation: one module per method behind `Synthesizer`, one student loop.

A plain PyTorch library: it never imports flwr or web3, so a benchmark or a notebook can use it
alone. Methods register themselves by name; `node.dfkd.build_synthesizer` finds them. Shared maths
lives in criterions.py (losses), hooks.py (BN statistics), augment.py and bank.py.
"""

from node.dfkd.base import (
    METHODS,
    InputSpace,
    MethodError,
    Synthesizer,
    build_synthesizer,
    method_class,
    register_method,
)
from node.dfkd.criterions import kd_loss
from node.dfkd.distill import DistillResult, StudentLoop, distill, resolve_device

# importing the method modules fills the registry
from node.dfkd import dafl, deepinversion, fast, genkd, kd, minkowski, noise, softtarget, zskd  # noqa: E402,F401  isort:skip

DEFAULT_METHOD = "fast"

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "DistillResult",
    "InputSpace",
    "MethodError",
    "StudentLoop",
    "Synthesizer",
    "build_synthesizer",
    "distill",
    "kd_loss",
    "method_class",
    "register_method",
    "resolve_device",
]
