"""The distiller's own work, apart from Flower: verified teachers in, a student's bytes out."""

from __future__ import annotations

from collections.abc import Callable

import torch

from node.artifacts import serialize
from node.config import DistillConfig
from node.data import DatasetSpec
from node.dfkd import DistillResult, InputSpace, build_synthesizer, distill, resolve_device
from node.models import Ensemble, build_model


def distill_student(
    node_models: list[dict[str, torch.nn.Module]], weights: list[float], cfg: DistillConfig, spec: DatasetSpec, *,
    seed: int, progress: Callable[[str, int, int], None] | None = None,
) -> tuple[bytes, DistillResult, str]:
    """The student's bytes, the run's record, and the method's variant (e.g. GenKD with published EBMs).

    `node_models` holds, per node, its verified teacher and whatever else it published for the method.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    teachers = [m["teacher"] for m in node_models]
    teacher = Ensemble(teachers, weights).to(device) if len(teachers) > 1 else teachers[0].to(device)
    student = build_model(cfg.student, spec.input_shape, spec.num_classes).to(device)
    space = InputSpace(spec.input_shape, *spec.bounds)
    synthesizer = build_synthesizer(
        cfg.method, teacher, student, space, cfg.options, samples=cfg.samples, seed=seed, device=device
    )
    variant = synthesizer.use_node_models([{k: v for k, v in m.items() if k != "teacher"} for m in node_models])
    result = distill(
        synthesizer, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, temperature=cfg.temperature,
        seed=seed, progress=progress,
    )
    return serialize(result.student, cfg.student, spec.input_shape, spec.num_classes), result, variant
