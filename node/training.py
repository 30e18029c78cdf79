"""Supervised training and evaluation of a classifier on one node's private split."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
    steps = epochs * -(-len(data) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(steps, 1))) if cosine else 1.0
    )
    model.train()
    loss_sum = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        loss_sum = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = data.x[idx] if augment is None else augment(data.x[idx])
            loss = F.cross_entropy(model(x), data.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            loss_sum += loss.item() * len(idx)
    model.eval()
    return loss_sum / max(len(data), 1)


@torch.no_grad()
def accuracy(model: nn.Module, data: Split, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        correct += (model(data.x[i : i + batch_size]).argmax(1) == data.y[i : i + batch_size]).sum().item()
    return correct / max(len(data), 1)
