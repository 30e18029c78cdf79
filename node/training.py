"""Supervised training and evaluation of a classifier on one node's private split."""

from __future__ import annotations

import math
import secrets
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from chain.errors import KdledgerError
from node.artifacts import PrivacySpent
from node.config import PrivacyConfig
from node.data import Split
from node.dfkd.augment import Augment


def train_classifier(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    augment: Augment | None = None,
    cosine: bool = False,
) -> float:
    """Adam on cross-entropy, optionally on augmented batches and with a cosine learning rate; returns the last
    epoch's mean loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    starts = list(range(0, len(data), batch_size))
    if len(starts) > 1 and len(data) % batch_size == 1:
        starts.pop()  # a last batch of one example joins the one before it: batch norm cannot train on one
    ends = starts[1:] + [len(data)]
    steps = epochs * len(starts)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(steps, 1))) if cosine else 1.0
    )
    model.train()
    loss_sum = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        loss_sum = 0.0
        for start, end in zip(starts, ends):
            idx = order[start:end]
            x = data.x[idx] if augment is None else augment(data.x[idx])
            loss = F.cross_entropy(model(x), data.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
    model.eval()
    return loss_sum / max(len(data), 1)


class PrivacyError(KdledgerError):
    """A DP teacher that cannot be published as asked (over budget, or with models trained without DP)."""


def train_private(
    model: nn.Module,
    data: Split,
    *,
    privacy: PrivacyConfig,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    augment: Augment | None = None,
) -> tuple[float, PrivacySpent]:
    """DP-SGD (Opacus): Poisson-sampled batches, each example's gradient clipped to `max_grad_norm`, Gaussian
    noise whose scale is solved for the target (epsilon, delta) over `epochs`; Adam on the noised gradients.
    Returns the last epoch's mean loss and what the accountant spent (never more than the target)."""
    from opacus import PrivacyEngine  # imported only where DP is asked for

    assert privacy.epsilon is not None
    if not privacy.seeded_noise:
        seed = secrets.randbits(62)
    loader = DataLoader(
        TensorDataset(data.x, data.y), batch_size=batch_size, generator=torch.Generator().manual_seed(seed)
    )
    with warnings.catch_warnings():  # Opacus warns about secure RNG: a simulation wants reproducible noise
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant=privacy.accountant)
        private, opt, loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=torch.optim.Adam(model.parameters(), lr=lr),
            data_loader=loader,
            target_epsilon=privacy.epsilon,
            target_delta=privacy.delta,
            epochs=epochs,
            max_grad_norm=privacy.max_grad_norm,
            noise_generator=torch.Generator().manual_seed(seed + 1),
        )
    private.train()
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for x, y in loader:
            if not len(y):  # Poisson sampling may draw an empty batch
                continue
            loss = F.cross_entropy(private(x if augment is None else augment(x)), y)
            opt.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # the input needs no gradient: torch says so at every step
                warnings.simplefilter("ignore")
                loss.backward()
            opt.step()
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
    spent = engine.get_epsilon(privacy.delta)
    private._close()  # the hooks and per-sample gradients go; `model` holds the trained weights
    model.eval()
    if spent > privacy.epsilon:
        raise PrivacyError(f"privacy.epsilon: the accountant spent {spent:.4f}, over {privacy.epsilon}")
    return loss_sum / max(seen, 1), PrivacySpent(epsilon=spent, delta=privacy.delta, accountant=privacy.accountant)


@torch.no_grad()
def accuracy(model: nn.Module, data: Split, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        correct += (model(data.x[i : i + batch_size]).argmax(1) == data.y[i : i + batch_size]).sum().item()
    return correct / max(len(data), 1)
