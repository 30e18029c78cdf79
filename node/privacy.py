"""Leakage meters a data node runs where its data lives: membership inference against its teacher, and how
close a distiller's synthetic inputs come to its training images.

Both compare the node's train split (members) with its held-out test split (non-members, drawn from the
same distribution): what a model or a synthetic input reveals beyond the distribution shows as a gap
between the two.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import auc, roc_curve

from node.data import Split
from node.models import Classifier

LOW_FPR = 0.01  # the attack's operating point that matters (Carlini et al. 2022): few false accusations


@torch.no_grad()
def per_example_loss(model: Classifier, data: Split, batch_size: int = 512) -> np.ndarray:
    model.eval()
    losses = [
        F.cross_entropy(model(data.x[i : i + batch_size]), data.y[i : i + batch_size], reduction="none")
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(losses).numpy() if losses else np.zeros(0)


def membership_inference(model: Classifier, members: Split, non_members: Split) -> dict:
    """The loss-threshold attack (Yeom et al. 2018): an example is called a member when the model's loss on it
    is below a threshold. Over every threshold: the ROC's AUC (0.5: no better than a coin) and the true
    positive rate at 1% false positives (coarse when there are few non-members: one step is 1/their count)."""
    scores = -np.concatenate([per_example_loss(model, members), per_example_loss(model, non_members)])
    is_member = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    fpr, tpr, _ = roc_curve(is_member, scores)
    return {
        "auc": float(auc(fpr, tpr)),
        "tpr_at_1pct_fpr": float(tpr[fpr <= LOW_FPR].max()),
        "members": len(members),
        "non_members": len(non_members),
    }


@torch.no_grad()
def penultimate(model: Classifier, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The teacher's representation before its last layer: where inversion would copy what it memorised."""
    model.eval()
    return torch.cat([model.fc_penult(model.features(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


def inversion_closeness(
    model: Classifier, synthetic: torch.Tensor, members: Split, non_members: Split, *, seed: int = 0
) -> dict:
    """How close synthetic inputs come to the node's training images, against held-out ones, in pixels and in
    the teacher's penultimate features: per synthetic input, the distance to its nearest member and to its
    nearest non-member. Members are subsampled to as many as there are non-members, so that both reference
    sets are alike but for membership: `closer_to_train` near 0.5 says the inputs are no closer to the training
    images than to any others from the same distribution; near 1, they reproduce training images."""
    gen = torch.Generator().manual_seed(seed)
    n = min(len(members), len(non_members))
    train = members.x[torch.randperm(len(members), generator=gen)[:n]]
    held_out = non_members.x[torch.randperm(len(non_members), generator=gen)[:n]]
    spaces = {"pixels": lambda x: x.flatten(1), "features": lambda x: penultimate(model, x)}
    result: dict = {"synthetic": len(synthetic), "reference": n}
    for space, embed in spaces.items():
        queries = embed(synthetic)
        to_train = torch.cdist(queries, embed(train)).min(1).values
        to_held_out = torch.cdist(queries, embed(held_out)).min(1).values
        result[space] = {
            "median_to_train": float(to_train.median()),
            "median_to_held_out": float(to_held_out.median()),
            "closer_to_train": float((to_train < to_held_out).float().mean()),
        }
    return result
