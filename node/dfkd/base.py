"""The interface every data-free method implements, and the registry that names them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

METHODS: dict[str, type["Synthesizer"]] = {}


class MethodError(ValueError):
    pass


@dataclass(frozen=True)
class InputSpace:
    """Where inputs live: their shape and the range the data was scaled into."""

    shape: tuple[int, ...]
    low: float = -1.0
    high: float = 1.0


class Options(BaseModel):
    """A method's own settings; unknown keys are errors that name the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Synthesizer(ABC):
    """Makes the inputs a student is distilled on, from the teacher alone.

    An offline method (`online = False`) yields its whole transfer set once from `synthesize()`;
    an online one yields fresh batches during student training and may look at the student (which
    is why the student is given here, and must never be the teacher).
    """

    name: ClassVar[str]
    online: ClassVar[bool] = False
    Options: ClassVar[type[Options]] = Options

    def __init__(self, teacher: nn.Module, student: nn.Module, space: InputSpace, options: dict,
                 *, samples: int, seed: int, device: torch.device):
        if teacher is student:
            raise MethodError(f"{self.name}: the student must be a different network from the teacher")
        try:
            self.options = self.Options(**options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise MethodError(f"distill.options.{where}: {err['msg']} (method {self.name})") from None
        self.teacher, self.student, self.space = teacher, student, space
        self.samples, self.device = samples, device
        self.student_steps = 0  # optimizer steps an online method gave the student while generating
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    @abstractmethod
    def synthesize(self) -> Iterator[torch.Tensor]:
        """Yield batches of synthetic inputs in `space` (on `device`)."""

    @classmethod
    def node_side(cls, teacher: nn.Module, student: nn.Module, x: torch.Tensor, y: torch.Tensor, options: dict,
                  *, seed: int, space: InputSpace) -> dict[str, nn.Module]:
        """What a data node publishes besides its teacher for this method, trained on its private data.

        Keys are registry kinds ("ebm", "generator"). Most methods need nothing from the nodes.
        """
        return {}

    def use_node_models(self, models: list[dict[str, nn.Module]]) -> str:
        """Receive what the nodes published (one dict per teacher, in order); return the variant run."""
        return "default"

    def noise(self, n: int) -> torch.Tensor:
        """Uniform noise over the input range, from this method's own seeded generator."""
        u = torch.rand((n, *self.space.shape), generator=self.generator)
        return (self.space.low + (self.space.high - self.space.low) * u).to(self.device)

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


def build_synthesizer(name: str, teacher, student, space: InputSpace, options: dict, **kw) -> Synthesizer:
    if name not in METHODS:
        raise MethodError(f"distill.method: unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name](teacher, student, space, options, **kw)
