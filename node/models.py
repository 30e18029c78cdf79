"""Classifiers by name.

Every model is a `Classifier`: a convolutional trunk `features` (flattened output of its last
conv layer), the second-to-last fully connected layer `fc_penult` (FC-2 in paper 003), and `head`,
the layers after it. Data-free methods reach into exactly these three pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, cast

import torch
from torch import nn

from chain.errors import ConfigError

MODELS: dict[str, Callable[..., Classifier]] = {}


def register_model(name: str):
    def add(factory):
        MODELS[name] = factory
        return factory

    return add


class Classifier(nn.Module):
    """A teacher or student. Data-free methods see a teacher only through `forward`,
    `logits_and_features` and `classifier_weight`, which an `Ensemble` of classifiers offers too."""

    features: nn.Module
    fc_penult: nn.Module  # nn.Identity where the network has a single FC layer (ResNets, WRN)
    head: nn.Sequential  # ends in the nn.Linear whose rows are the classes
    label_counts: list[int]  # a teacher loaded from its file: its node's class histogram (node/artifacts.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_penult(self.features(x)))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the flattened output of the last conv layer (DAFL's and paper 003's activations)."""
        features = self.features(x)
        return self.head(self.fc_penult(features)), features

    def classifier_weight(self) -> torch.Tensor:
        """The last layer's weight rows, one per class (ZSKD's and GenKD's class similarities)."""
        last = self.head[-1]
        assert isinstance(last, nn.Linear)
        return last.weight


Norm = Literal["bn", "gn"] | None


class MaxPool2x2(nn.MaxPool2d):
    """A 2x2 max-pool, stride 2. Without gradients (a teacher labelling a batch, an evaluation) it is the
    elementwise maximum of the four strided views: the same numbers, but half of a LeNet-5's forward time
    on CPU goes to `max_pool2d_with_indices`, which computes indices nobody reads. With gradients it is
    torch's own pool, so training is unchanged to the bit."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # an odd last row or column: dropped, as by torch
        top = torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2])
        return torch.maximum(top, torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


def norm_layer(norm: Norm, channels: int) -> list[nn.Module]:
    """After a conv: batch norm (whose statistics BN inversion matches), group norm (per-example, so DP-SGD's
    per-sample gradients exist: BN mixes a batch's examples), or nothing. Groups of up to 4 that divide the
    channels."""
    if norm == "bn":
        return [nn.BatchNorm2d(channels)]
    if norm == "gn":
        return [nn.GroupNorm(math.gcd(4, channels), channels)]
    return []


class SmallCNN(Classifier):
    """Two 3x3 conv layers, a max-pool and two FC layers: sized for 8x8 digits; `norm` adds batch norm
    (what BN-statistics inversion needs) or group norm (what DP-SGD needs) after each conv."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int, hidden: int, norm: Norm = None):
        super().__init__()
        channels, height, width_px = input_shape

        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1), *norm_layer(norm, cout), nn.ReLU()]

        self.features = nn.Sequential(*conv(channels, width), *conv(width, 2 * width), MaxPool2x2(), nn.Flatten())
        self.fc_penult = nn.Linear(2 * width * (height // 2) * (width_px // 2), hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))


@register_model("digits-cnn")
def digits_cnn(input_shape, num_classes):
    return SmallCNN(input_shape, num_classes, width=16, hidden=128)


@register_model("digits-cnn-half")
def digits_cnn_half(input_shape, num_classes):
    return SmallCNN(input_shape, num_classes, width=8, hidden=64)


for _norm in ("bn", "gn"):
    register_model(f"digits-cnn-{_norm}")(
        lambda shape, classes, norm=_norm: SmallCNN(shape, classes, width=16, hidden=128, norm=norm)
    )
    register_model(f"digits-cnn-half-{_norm}")(
        lambda shape, classes, norm=_norm: SmallCNN(shape, classes, width=8, hidden=64, norm=norm)
    )


class LeNet5(Classifier):
    """LeNet-5 as in the DFKD papers (DAFL, paper 003): conv 6-16-120, FC 84, FC classes.

    28x28 inputs are padded to LeNet's 32x32 by the first conv's padding. `half` halves every
    width (3-8-60, 42), the usual student. `norm` adds batch norm after each conv (DeepInversion
    needs BN statistics to match), or group norm (DP-SGD needs per-example normalisation).
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, half: bool = False, norm: Norm = None):
        super().__init__()
        channels, height, _ = input_shape
        c1, c2, c3, hidden = (3, 8, 60, 42) if half else (6, 16, 120, 84)
        pad = (32 - height) // 2 if height < 32 else 0

        def conv(cin, cout, padding=0):
            return [nn.Conv2d(cin, cout, 5, padding=padding), *norm_layer(norm, cout), nn.ReLU()]

        self.features = nn.Sequential(
            *conv(channels, c1, pad),
            MaxPool2x2(),
            *conv(c1, c2),
            MaxPool2x2(),
            *conv(c2, c3),
            nn.Flatten(),
        )
        side = ((height + 2 * pad - 4) // 2 - 4) // 2 - 4  # after conv-pool-conv-pool-conv: 1 for 32x32
        self.fc_penult = nn.Linear(c3 * side * side, hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, num_classes))


for _half in (False, True):
    for _lenet_norm in (None, "bn", "gn"):
        _name = "lenet5" + ("-half" if _half else "") + (f"-{_lenet_norm}" if _lenet_norm else "")
        register_model(_name)(
            lambda shape, classes, half=_half, norm=_lenet_norm: LeNet5(shape, classes, half=half, norm=norm)
        )


class AlexNetCIFAR(Classifier):
    """An AlexNet for 32x32 images: five convs (48-128-192-192-128, BN) and FC 512-256; `half` halves them."""

    def __init__(self, input_shape, num_classes, half: bool = False):
        super().__init__()
        channels, height, _ = input_shape
        w = [c // 2 for c in (48, 128, 192, 192, 128, 512, 256)] if half else [48, 128, 192, 192, 128, 512, 256]

        def block(cin, cout, k, pool):
            return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU()] + (
                [MaxPool2x2()] if pool else []
            )

        self.features = nn.Sequential(
            *block(channels, w[0], 5, True),
            *block(w[0], w[1], 5, True),
            *block(w[1], w[2], 3, False),
            *block(w[2], w[3], 3, False),
            *block(w[3], w[4], 3, True),
            nn.Flatten(),
            nn.Linear(w[4] * (height // 8) ** 2, w[5]),
            nn.ReLU(),
        )
        self.fc_penult = nn.Linear(w[5], w[6])
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(w[6], num_classes))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(Classifier):
    """CIFAR ResNets: a 3x3 stem, stages of basic blocks, global pooling, one FC layer."""

    def __init__(self, input_shape, num_classes, stem: int, widths: list[int], blocks: list[int]):
        super().__init__()
        layers, cin = [nn.Conv2d(input_shape[0], stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU()], stem
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, width, 2 if j == 0 and i > 0 else 1))
                cin = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc_penult = nn.Identity()
        self.head = nn.Sequential(nn.Linear(cin, num_classes))


class WideBlock(nn.Module):
    """Pre-activation block of wide ResNets (Zagoruyko and Komodakis 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        )
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = self.pre(x)
        return self.body(out) + (x if self.shortcut is None else self.shortcut(out))


class WideResNet(Classifier):
    def __init__(self, input_shape, num_classes, depth: int, widen: int):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)]
        cin = widths[0]
        for i, width in enumerate(widths[1:]):
            for j in range(n):
                layers.append(WideBlock(cin, width, 2 if j == 0 and i > 0 else 1))
                cin = width
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc_penult = nn.Identity()
        self.head = nn.Sequential(nn.Linear(cin, num_classes))


register_model("alexnet-cifar")(lambda shape, classes: AlexNetCIFAR(shape, classes))
register_model("alexnet-cifar-half")(lambda shape, classes: AlexNetCIFAR(shape, classes, half=True))
register_model("resnet18")(lambda shape, classes: ResNet(shape, classes, 64, [64, 128, 256, 512], [2, 2, 2, 2]))
register_model("resnet34")(lambda shape, classes: ResNet(shape, classes, 64, [64, 128, 256, 512], [3, 4, 6, 3]))
# CRD's resnet8x4 / resnet32x4 (GenKD's Table 3-4 pair): stem 32, stages 64-128-256, (depth - 2) / 6 blocks each
register_model("resnet8x4")(lambda shape, classes: ResNet(shape, classes, 32, [64, 128, 256], [1, 1, 1]))
register_model("resnet32x4")(lambda shape, classes: ResNet(shape, classes, 32, [64, 128, 256], [5, 5, 5]))
for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    register_model(f"wrn-{_depth}-{_widen}")(
        lambda shape, classes, d=_depth, k=_widen: WideResNet(shape, classes, d, k)
    )


def has_batch_norm(name: str) -> bool:
    """Whether the architecture normalises over a batch (no per-sample gradients, so no DP-SGD)."""
    with torch.device("meta"):
        model = MODELS[name]((1, 32, 32), 10)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class UnknownArchitecture(ConfigError):
    """A model architecture name no one registered (the contract's `UnknownModel` is an unregistered hash)."""


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> Classifier:
    if name not in MODELS:
        raise UnknownArchitecture(f"unknown architecture {name!r} (known: {', '.join(sorted(MODELS))})")
    return MODELS[name](tuple(input_shape), num_classes)


class Ensemble(nn.Module):
    """The weighted mean of several teachers' logits, with one weight per member and class.

    `weights` is one number per member (e.g. its node's sample count: the same for every class) or
    a members x classes matrix (e.g. each node's label counts, so that for class c the members that
    saw c speak for it). Each class's column is normalised to sum to one.
    """

    weights: torch.Tensor
    label_counts: list[int]  # set when loaded from a teacher's file (node/artifacts.py)

    def __init__(self, members: Sequence[Classifier | Ensemble], weights=None, *, num_classes: int | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        w = torch.as_tensor(weights if weights is not None else [1.0] * len(members), dtype=torch.float32)
        if w.dim() == 1:
            classes = num_classes or int(members[0].classifier_weight().shape[0])
            w = w[:, None].expand(len(members), classes)
        if w.shape[0] != len(members) or (w < 0).any():
            raise ValueError(
                f"ensemble weights: expected non-negative weights for {len(members)} members, got {tuple(w.shape)}"
            )
        self.register_buffer("weights", w / w.sum(0, keepdim=True).clamp_min(1e-12))

    @classmethod
    def weighted(cls, teachers: Sequence[Classifier | Ensemble], mode: str) -> Ensemble:
        """Node teachers as one model, by a scenario's `federation.ensemble_weights`: per node and class by the
        class histogram inside each verified teacher file ("label-counts": for each class, the nodes that saw
        it speak for it), per node by its train size ("samples"), or uniformly."""
        if mode == "label-counts":
            return cls(teachers, [list(t.label_counts) for t in teachers])
        if mode == "samples":
            return cls(teachers, [float(sum(t.label_counts)) for t in teachers])
        return cls(teachers)

    def subset(self, indices: Sequence[int]) -> Ensemble:
        """The ensemble of some members, each class's weights renormalised over them (0 for a class none weighs)."""
        return Ensemble([self.teachers[i] for i in indices], self.weights[list(indices)])

    @property
    def teachers(self) -> list[Classifier | Ensemble]:
        return [cast(Classifier | Ensemble, m) for m in self.members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, sum(w * m(x) for w, m in zip(self.weights, self.members)))

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ensemble's logits and every member's features side by side."""
        outputs = [m.logits_and_features(x) for m in self.teachers]
        logits = cast(torch.Tensor, sum(w * out[0] for w, out in zip(self.weights, outputs)))
        return logits, torch.cat([out[1] for out in outputs], dim=1)

    def classifier_weight(self) -> torch.Tensor:
        """The members' last-layer rows, averaged (a class's similarity to the others, as the ensemble sees it)."""
        return torch.stack([m.classifier_weight() for m in self.teachers]).mean(0)


Teacher = Classifier | Ensemble  # what a data-free method distils from
