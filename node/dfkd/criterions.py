"""The losses the methods share. Each returns a scalar to be minimised unless its name says otherwise."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, times T^2 so gradients keep their scale (Hinton 2015)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)


def kl_per_sample(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of each sample at temperature T (not rescaled)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1), log_target=True, reduction="none"
    ).sum(1)


def agreement_disagreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """The adversarial term of Fast-DataFree and DENSE's boundary support, to be minimised by the synthesiser.

    Minus the teacher-student KL, counted only on samples where the two still agree on the class:
    the synthesiser is pushed towards inputs the student gets subtly wrong, not towards inputs
    whose label flips (those would teach the student the teacher's own mistakes near a boundary).
    """
    agree = (teacher_logits.argmax(1) == student_logits.argmax(1)).float()
    return -(kl_per_sample(student_logits, teacher_logits) * agree).mean()


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Jensen-Shannon divergence of two softmaxes at temperature T (ADI's competition term)."""
    p, q = F.softmax(p_logits / temperature, 1), F.softmax(q_logits / temperature, 1)
    m = (0.5 * (p + q)).clamp_min(1e-12).log()
    return 0.5 * (F.kl_div(m, p, reduction="batchmean") + F.kl_div(m, q, reduction="batchmean"))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (an image prior: natural images are piecewise smooth)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def negative_entropy_of_mean(logits: torch.Tensor, base: float = math.e) -> torch.Tensor:
    """-H(mean prediction over the batch) in log base `base`: smallest when the batch covers every class equally."""
    mean = F.softmax(logits, 1).mean(0)
    return (mean * mean.clamp_min(1e-12).log()).sum() / math.log(base)


def minkowski_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, p: float) -> torch.Tensor:
    """Mean over the batch of (sum_i |t_i - s_i|^p)^(1/p) / C (paper 004's distance; p = 1 is DFAD's MAE)."""
    diff = (teacher_logits - student_logits).abs()
    return ((diff**p).sum(1).clamp_min(1e-12) ** (1.0 / p)).mean() / teacher_logits.shape[1]
