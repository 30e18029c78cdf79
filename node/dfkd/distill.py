"""The loop every method shares: synthesise a batch, bank it, train the student from the whole bank.

Per round the method makes one batch (it may read the student as it is now), the teacher's class
for each new input is noted, and the batch joins the memory bank. The student then takes its share
of the optimizer steps on batches drawn from the whole bank (class-balanced if asked), each one
augmented afresh and labelled afresh by the teacher: the transfer set is never a fixed list of
(input, label) pairs, which is what lets a few thousand synthetic inputs teach for many epochs
without being memorised (Fast-DataFree, CMI). SGD with Nesterov momentum and a cosine schedule;
optionally an exponential moving average of the student's weights is what comes out.

With `budget_s`, the run stops when that much wall-clock time has gone and the schedule follows
elapsed time instead of steps: that is how "accuracy after N minutes" is measured. Without it, a
run is a fixed number of steps and repeats exactly for a seed.

Under a budget, the loop's steps-to-samples ratio decides how the clock is split between the method
and the student, and one ratio cannot suit every method: a pixel inversion spends a second on a
batch, a sampler or a generator step a few milliseconds, so a ratio that suits the first leaves the
second with a bank of a few thousand inputs (and DAFL's generator with a few dozen updates).
`student_share` splits the clock itself instead: after each batch the student trains until it has
had that share of the time so far, so every method gets the same seconds of student training and
spends the rest making as many inputs as its cost allows.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from node.dfkd.augment import Augment
from node.dfkd.bank import MemoryBank
from node.dfkd.base import MethodError, Synthesizer
from node.dfkd.sampling import seeded_beta


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MethodError("distill.device is 'cuda' but torch sees no CUDA device")
    return torch.device(device)


class StudentLoop(BaseModel):
    """How the student is trained from the bank, whatever the method (the scenario's `distill` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    samples: int = Field(6000, ge=1, description="synthetic inputs made in all (the bank's final size)")
    steps: int = Field(3000, ge=1, description="student optimizer steps in all, spread over the rounds")
    lr: float = Field(0.05, gt=0, description="peak SGD learning rate (Nesterov momentum 0.9), cosine to zero")
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1, description="student batch drawn from the bank")
    temperature: float = Field(4.0, gt=0, description="KD temperature")
    augment: bool = Field(
        True, description="shift every bank batch by up to 2 pixels (and mirror where the data allows)"
    )
    balanced: bool = Field(
        True, description="draw bank batches with every class (by the teacher's label) equally likely"
    )
    ema: float = Field(0.0, ge=0, lt=1, description="decay of an averaged student that is returned instead; 0: none")
    warmup: float = Field(0.0, ge=0, lt=1, description="share of the rounds synthesised before the student starts")
    mixup: float = Field(
        0.0,
        ge=0,
        description="Beta(a, a) of mixup between bank samples (relabelled by the teacher "
        "like any other input); 0: none",
    )


@dataclass
class DistillResult:
    student: nn.Module
    transfer: torch.Tensor  # every synthetic input, on CPU
    synthesis_s: float
    training_s: float
    student_steps: int
    losses: list[float] = field(default_factory=list)  # mean student loss per round that trained
    class_counts: list[int] = field(default_factory=list)  # the teacher's classes over the bank
    curve: list[dict] = field(default_factory=list)  # accuracy at the checkpoints asked for
    cpu_s: float = 0.0  # process CPU seconds (all threads) for synthesis and training


@contextmanager
def frozen(model: nn.Module):
    """The teacher's weights take no gradients while it is read (inputs still do); restored after."""
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model.eval()
    finally:
        for p, flag in zip(model.parameters(), saved):
            p.requires_grad_(flag)


class AveragedModel:
    """An exponential moving average of a network's weights (buffers such as BN statistics copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay = copy.deepcopy(model).eval(), decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for mine, theirs in zip(self.model.parameters(), model.parameters()):
            mine.lerp_(theirs.detach(), 1 - self.decay)
        for kept, current in zip(self.model.buffers(), model.buffers()):
            kept.copy_(current)


def mix(x: torch.Tensor, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Each input blended with another of the batch, lambda ~ Beta(alpha, alpha) per pair: inputs between
    the synthesised ones, which the teacher then labels (so the student also learns the space between classes)."""
    n = len(x)
    lam = seeded_beta(alpha, n, generator).to(x.device).view(n, *([1] * (x.dim() - 1)))
    partner = torch.randperm(n, generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[partner]


def distill(
    synthesizer: Synthesizer,
    loop: StudentLoop,
    *,
    seed: int,
    budget_s: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    checkpoints: Sequence[float] = (),
    evaluate: Callable[[nn.Module], float] | None = None,
    student_share: float | None = None,
) -> DistillResult:
    """Distil `synthesizer.teacher` into `synthesizer.student`; `evaluate` is called at `checkpoints` (seconds
    of distillation, the evaluation itself not counted) for a curve of accuracy against time. With a budget,
    `student_share` (0 to 1) paces the run by time rather than by the loop's steps-to-samples ratio, and once
    the bank holds `loop.samples` inputs the student has the rest of the budget."""
    if student_share is not None and not budget_s:
        raise MethodError("student_share splits a wall-clock budget; it needs one (kdledger bench dfkd --minutes)")
    if student_share is not None and not 0 < student_share < 1:
        raise MethodError(f"student_share: {student_share} is not between 0 and 1")
    teacher, student = synthesizer.teacher, synthesizer.student
    rounds = math.ceil(loop.samples / synthesizer.batch_size)
    warm = min(int(loop.warmup * rounds), rounds - 1)
    gen = torch.Generator().manual_seed(seed)
    space = synthesizer.space
    augment = Augment(2 if loop.augment else 0, loop.augment and space.flip, space.low, gen)
    opt = torch.optim.SGD(student.parameters(), lr=loop.lr, momentum=0.9, nesterov=True, weight_decay=loop.weight_decay)
    averaged = AveragedModel(student, loop.ema) if loop.ema else None
    bank = MemoryBank()
    result = DistillResult(student, torch.empty(0), 0.0, 0.0, 0)
    pending = sorted(checkpoints)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    paused = paused_cpu = 0.0  # time spent evaluating, left out of the clock

    def elapsed() -> float:
        return time.perf_counter() - wall0 - paused

    def trained_s(since: float, paused_then: float) -> float:
        """Student seconds so far, this round's (from `since`, evaluations left out) included."""
        return result.training_s + time.perf_counter() - since - (paused - paused_then)

    def out_of_time() -> bool:
        return budget_s is not None and elapsed() >= budget_s

    def score(final: bool) -> None:
        """Evaluate at every checkpoint that has come (and at the end), the evaluation's own time not counted."""
        nonlocal paused, paused_cpu, pending
        while evaluate and ((pending and elapsed() >= pending[0]) or final):
            e0, c0 = time.perf_counter(), time.process_time()
            result.curve.append(
                {
                    "seconds": elapsed(),
                    "cpu_s": time.process_time() - cpu0 - paused_cpu,
                    "steps": result.student_steps,
                    "samples": len(bank),
                    "accuracy": evaluate(averaged.model if averaged else student),
                }
            )
            paused += time.perf_counter() - e0
            paused_cpu += time.process_time() - c0
            pending = [p for p in pending if p > result.curve[-1]["seconds"]]
            if final:
                break

    def student_step() -> float:
        done = result.student_steps / loop.steps
        if budget_s:
            done = max(done, elapsed() / budget_s)
        for group in opt.param_groups:
            group["lr"] = loop.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        batch = augment(bank.sample(loop.batch_size, gen, balanced=loop.balanced))
        if loop.mixup:
            batch = mix(batch, loop.mixup, gen)
        with torch.no_grad():
            target = teacher(batch)
        loss = synthesizer.student_loss(student(batch), target, loop.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if averaged:
            averaged.update(student)
        result.student_steps += 1
        return loss.item()

    with frozen(teacher):
        student.eval()
        for r in range(rounds):
            n = min(synthesizer.batch_size, loop.samples - r * synthesizer.batch_size)
            t0 = time.perf_counter()
            x = synthesizer.step(n).detach()
            with torch.no_grad():
                bank.add(x, teacher(x).argmax(1))
            t1, mark = time.perf_counter(), paused
            result.synthesis_s += t1 - t0
            if r >= warm:
                paced = student_share is not None and r < rounds - 1
                goal = loop.steps if student_share else loop.steps * (r + 1 - warm) // (rounds - warm)
                losses = []
                student.train()
                while result.student_steps < goal and not out_of_time():
                    if paced and trained_s(t1, mark) >= student_share * elapsed():  # type: ignore[operator]
                        break
                    losses.append(student_step())
                    if pending:
                        student.eval()
                        score(final=False)
                        student.train()
                student.eval()
                if losses:
                    result.losses.append(sum(losses) / len(losses))
            result.training_s = trained_s(t1, mark)
            if progress:
                progress("distill", r + 1, rounds)
            stop = out_of_time() or r == rounds - 1
            score(final=stop)
            if stop:
                break
    synthesizer.close()
    result.cpu_s = time.process_time() - cpu0 - paused_cpu
    result.student = (averaged.model if averaged else student).eval()
    result.transfer = bank.x.cpu() if bank.x is not None else torch.empty(0)
    result.class_counts = bank.class_counts(synthesizer.num_classes)
    return result
