"""The configuration a node acts on. simulations.scenario composes these into a scenario.

Every model forbids unknown keys, so a typo in YAML is an error that names the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    dataset: str = "digits"
    path: Path | None = Field(None, description="folder with the dataset's files (not needed for digits)")
    partitioner: Literal["dirichlet", "iid"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration: smaller is more heterogeneous")
    min_partition_size: int = Field(40, ge=1)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of each node's partition kept as its private test split")


class TeacherConfig(Strict):
    model: str = "digits-cnn"
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)


class DistillConfig(Strict):
    method: str = "softtarget"
    student: str = "digits-cnn-half"
    samples: int = Field(2000, ge=1, description="size of the synthetic transfer set")
    epochs: int = Field(60, ge=1, description="student epochs over the transfer set")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    temperature: float = Field(20.0, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    options: dict = Field(default_factory=dict, description="the method's own settings (see docs/configuration.md)")
