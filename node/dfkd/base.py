"""The interface every data-free method implements, and the registry that names them.

A method is a `Synthesizer`: the shared loop (node/dfkd/distill.py) asks it for one batch of
inputs at a time (`step`), puts the batch in the memory bank and trains the student from the bank
between batches. So every method may look at the student it is making (adversarial methods do),
and none of them trains the student itself. Everything else a method may do is one of the hooks
declared here, with the default most methods want.
"""

from __future__ import annotations

import json
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from chain.errors import ConfigError
from node.dfkd.criterions import kd_loss

if TYPE_CHECKING:
    from node.models import Teacher

METHODS: dict[str, type[Synthesizer]] = {}


class MethodError(ConfigError):
    pass


@dataclass(frozen=True)
class InputSpace:
    """Where inputs live: their shape, the range the data was scaled into, and whether mirroring keeps a class."""

    shape: tuple[int, ...]
    low: float = -1.0
    high: float = 1.0
    flip: bool = False


class Options(BaseModel):
    """A method's own settings; unknown keys are errors that name the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    batch_size: int = Field(128, ge=1, description="inputs synthesised per step, each step one batch for the bank")


class Synthesizer(ABC):
    """Makes the inputs a student is distilled on, from the teacher (a classifier or an ensemble) alone.

    The teacher offers `forward`, `logits_and_features` and `classifier_weight` (node/models.py),
    whether it is one network or an `Ensemble`. The student is the network being distilled; a
    method that reads it (for an adversarial term) must never be handed the teacher as its student.
    """

    name: ClassVar[str]
    Options: ClassVar[type[Options]] = Options

    def __init__(
        self,
        teacher: Teacher,
        student: nn.Module,
        space: InputSpace,
        options: dict,
        *,
        seed: int,
        device: torch.device,
    ):
        if teacher is student:
            raise MethodError(f"{self.name}: the student must be a different network from the teacher")
        self.options = self.parse_options(options)
        self.teacher, self.student, self.space, self.device = teacher, student, space, device
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            self.num_classes = int(teacher(torch.zeros((1, *space.shape), device=device)).shape[1])

    @classmethod
    def parse_options(cls, options: dict):
        try:
            return cls.Options(**options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise MethodError(f"distill.options.{where}: {err['msg']} (method {cls.name})") from None

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    @abstractmethod
    def step(self, n: int) -> torch.Tensor:
        """The next n synthetic inputs in `space`, on `device` (the student may be read, never trained)."""

    # -- hooks, with the defaults most methods want ------------------------------------------------
    @classmethod
    def node_side(
        cls,
        teacher: Teacher,
        student: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        options: dict,
        *,
        seed: int,
        space: InputSpace,
    ) -> dict[str, nn.Module]:
        """What a data node publishes besides its teacher for this method, trained on its private data.

        Keys are registry kinds ("ebm", "generator"). Most methods need nothing from the nodes.
        """
        return {}

    def use_node_models(self, models: list[dict[str, nn.Module]], weights: list[float]) -> str:
        """Receive what the nodes published (one dict per teacher, in order, with each node's data share);
        return the variant that will run."""
        return "default"

    def use_real_data(self, x: torch.Tensor) -> None:
        """Only the benchmark's real-data ceiling (kd) takes data; a data-free method refuses it."""
        raise MethodError(f"{self.name} is data-free: it takes no real data")

    def student_loss(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """The distance the student minimises to the teacher on a bank batch (Hinton KD unless a method has its own)."""
        return kd_loss(student_logits, teacher_logits, temperature)

    def close(self) -> None:  # noqa: B027 - a hook with nothing to do by default
        """Release what the method attached to the networks (hooks)."""

    # -- helpers -----------------------------------------------------------------------------------
    def noise(self, n: int) -> torch.Tensor:
        """Uniform noise over the input range, from this method's own seeded generator."""
        u = torch.rand((n, *self.space.shape), generator=self.generator)
        return (self.space.low + (self.space.high - self.space.low) * u).to(self.device)

    def balanced_labels(self, n: int) -> torch.Tensor:
        """n class ids, every class (nearly) equally often, in a random order."""
        labels = torch.arange(n) % self.num_classes
        return labels[torch.randperm(n, generator=self.generator)].to(self.device)

    def clamp_(self, x: torch.Tensor) -> torch.Tensor:
        """Project onto the input range: synthetic inputs stay where real ones could be."""
        return x.clamp_(self.space.low, self.space.high)

    def optimise_inputs(self, x: torch.Tensor, loss_fn, iterations: int, lr: float) -> torch.Tensor:
        """Adam on the inputs themselves for `iterations` steps of `loss_fn(x)`, projected onto the range."""
        x = x.detach().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(iterations):
            loss = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                self.clamp_(x)
        return x.detach()


def register_method(name: str):
    def add(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def method_class(name: str) -> type[Synthesizer]:
    if name not in METHODS:
        raise MethodError(f"distill.method: unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def build_synthesizer(name: str, teacher, student, space: InputSpace, options: dict, **kw) -> Synthesizer:
    return method_class(name)(teacher, student, space, options, **kw)


def options_markdown(name: str) -> str:
    """One method's options as a markdown table (key, default, meaning), read from its `Options` model, so the
    documentation cannot drift from the code (docs/configuration.md holds every method's, tests compare)."""
    cls = method_class(name)
    summary = cls.__doc__ if "__doc__" in vars(cls) and cls.__doc__ else sys.modules[cls.__module__].__doc__ or ""
    summary = " ".join(summary.strip().split("\n\n")[0].split())
    lines = [f"### `{name}`", "", summary, "", "| key | default | meaning |", "|---|---|---|"]
    for key, field in cls.Options.model_fields.items():
        default = "(required)" if field.is_required() else json.dumps(field.get_default(call_default_factory=True))
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{key}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"
