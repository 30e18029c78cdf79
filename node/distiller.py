"""The distiller's own work, apart from Flower: verified teachers in, a student's bytes out."""

from __future__ import annotations

from collections.abc import Callable

import torch

from node.artifacts import ArtifactStore, serialize
from node.config import DistillConfig
from node.data import DatasetSpec
from node.dfkd import DistillResult, InputSpace, build_synthesizer, distill, resolve_device
from node.models import Ensemble, build_model


def load_teachers(store: ArtifactStore, hashes_and_owners: list[tuple[bytes, str]]) -> list[torch.nn.Module]:
    """Each teacher's bytes, hash-checked against the on-chain hash before they are parsed."""
    return [store.load(h, owner=owner) for h, owner in hashes_and_owners]


def distill_student(
    teachers: list[torch.nn.Module], weights: list[float], cfg: DistillConfig, spec: DatasetSpec, *, seed: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[bytes, DistillResult]:
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    teacher = Ensemble(teachers, weights).to(device) if len(teachers) > 1 else teachers[0].to(device)
    student = build_model(cfg.student, spec.input_shape, spec.num_classes).to(device)
    space = InputSpace(spec.input_shape, *spec.bounds)
    synthesizer = build_synthesizer(
        cfg.method, teacher, student, space, cfg.options, samples=cfg.samples, seed=seed, device=device
    )
    result = distill(
        synthesizer, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, temperature=cfg.temperature,
        seed=seed, progress=progress,
    )
    return serialize(result.student, cfg.student, spec.input_shape, spec.num_classes), result
