"""The student-training loop every method shares: Hinton KD on the transfer inputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from node.dfkd.base import Synthesizer


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("distill.device is 'cuda' but torch sees no CUDA device")
    return torch.device(device)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, times T^2 so gradients keep their scale (Hinton 2015)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
        log_target=True, reduction="batchmean",
    ) * (t * t)


@dataclass
class DistillResult:
    student: nn.Module
    transfer: torch.Tensor  # the synthetic inputs (offline methods), on CPU
    synthesis_s: float
    training_s: float
    losses: list[float] = field(default_factory=list)  # mean KD loss per epoch
    student_steps: int = 0  # every optimizer step the student took, during synthesis and after


def distill(
    synthesizer: Synthesizer, *, epochs: int, lr: float, batch_size: int, temperature: float, seed: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> DistillResult:
    """Synthesise the transfer set, then train `synthesizer.student` on the teacher's soft outputs."""
    teacher, student, device = synthesizer.teacher, synthesizer.student, synthesizer.device
    teacher.eval()
    t0 = time.perf_counter()
    batches = []
    for x in synthesizer.synthesize():
        batches.append(x.detach())
        if progress:
            progress("synthesize", sum(len(b) for b in batches), synthesizer.samples)
    transfer = torch.cat(batches)
    with torch.no_grad():  # the teacher is fixed: its logits are computed once
        targets = torch.cat([teacher(transfer[i : i + 1024]) for i in range(0, len(transfer), 1024)])
    t1 = time.perf_counter()

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    loss_fn = getattr(synthesizer, "student_loss", kd_loss)  # a method may bring its own distance (minkowski)
    student.train()
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(transfer), generator=gen).to(device)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = loss_fn(student(transfer[idx]), targets[idx], temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(order))
        if progress:
            progress("train", epoch + 1, epochs)
    student.eval()
    steps = synthesizer.student_steps + epochs * -(-len(transfer) // batch_size)
    return DistillResult(student, transfer.cpu(), t1 - t0, time.perf_counter() - t1, losses, steps)
