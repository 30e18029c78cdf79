"""Classifiers by name.

Every model is a `Classifier`: a convolutional trunk `features` (flattened output of its last
conv layer), the second-to-last fully connected layer `fc_penult` (FC-2 in paper 003), and `head`,
the layers after it. Data-free methods reach into exactly these three pieces.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

MODELS: dict[str, Callable[..., "Classifier"]] = {}


def register_model(name: str):
    def add(factory):
        MODELS[name] = factory
        return factory

    return add


class Classifier(nn.Module):
    features: nn.Module
    fc_penult: nn.Linear
    head: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_penult(self.features(x)))


class SmallCNN(Classifier):
    """Two 3x3 conv layers, a max-pool and two FC layers: sized for 8x8 digits."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int, hidden: int):
        super().__init__()
        channels, height, width_px = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
        )
        self.fc_penult = nn.Linear(2 * width * (height // 2) * (width_px // 2), hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))


@register_model("digits-cnn")
def digits_cnn(input_shape, num_classes):
    return SmallCNN(input_shape, num_classes, width=16, hidden=128)


@register_model("digits-cnn-half")
def digits_cnn_half(input_shape, num_classes):
    return SmallCNN(input_shape, num_classes, width=8, hidden=64)


class LeNet5(Classifier):
    """LeNet-5 as in the DFKD papers (DAFL, paper 003): conv 6-16-120, FC 84, FC classes.

    28x28 inputs are padded to LeNet's 32x32 by the first conv's padding. `half` halves every
    width (3-8-60, 42), the usual student. `bn` adds batch norm after each conv (DeepInversion
    needs BN statistics to match).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, half: bool = False, bn: bool = False):
        super().__init__()
        channels, height, _ = input_shape
        c1, c2, c3, hidden = (3, 8, 60, 42) if half else (6, 16, 120, 84)
        pad = (32 - height) // 2 if height < 32 else 0

        def conv(cin, cout, padding=0):
            layers = [nn.Conv2d(cin, cout, 5, padding=padding)]
            return layers + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.ReLU()]

        self.features = nn.Sequential(
            *conv(channels, c1, pad), nn.MaxPool2d(2),
            *conv(c1, c2), nn.MaxPool2d(2),
            *conv(c2, c3), nn.Flatten(),
        )
        side = ((height + 2 * pad - 4) // 2 - 4) // 2 - 4  # after conv-pool-conv-pool-conv: 1 for 32x32
        self.fc_penult = nn.Linear(c3 * side * side, hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))


for _half in (False, True):
    for _bn in (False, True):
        _name = "lenet5" + ("-half" if _half else "") + ("-bn" if _bn else "")
        register_model(_name)(lambda shape, classes, half=_half, bn=_bn: LeNet5(shape, classes, half=half, bn=bn))


class UnknownModel(ValueError):
    pass


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> Classifier:
    if name not in MODELS:
        raise UnknownModel(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[name](tuple(input_shape), num_classes)


class Ensemble(nn.Module):
    """The averaged logits of several teachers (weighted, e.g. by their nodes' sample counts)."""

    def __init__(self, members: list[nn.Module], weights: list[float] | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        w = torch.tensor(weights if weights is not None else [1.0] * len(members), dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(w * m(x) for w, m in zip(self.weights, self.members))
