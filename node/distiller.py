"""The distiller's own work, apart from Flower: verified teachers in, a student's bytes out."""

from __future__ import annotations

from collections.abc import Callable

import torch

from node.artifacts import serialize
from node.config import DataConfig, DistillConfig
from node.data import DatasetError, DatasetSpec, load_dataset
from node.dfkd import DistillResult, InputSpace, build_synthesizer, distill, resolve_device
from node.models import build_model


def public_inputs(options, spec: DatasetSpec) -> torch.Tensor:
    """The `public` method's unlabeled images, checked against the scenario's input shape."""
    x, _, public_spec = load_dataset(DataConfig(dataset=options.dataset, path=options.path), options.split)
    if tuple(public_spec.input_shape) != tuple(spec.input_shape) or public_spec.bounds != spec.bounds:
        raise DatasetError(
            f"distill.options.dataset: {options.dataset} images are {public_spec.input_shape}, the "
            f"scenario's are {spec.input_shape}"
        )
    return torch.from_numpy(x)


def distill_student(
    node_models: list[dict[str, torch.nn.Module]],
    teacher: torch.nn.Module,
    shares: list[float],
    cfg: DistillConfig,
    spec: DatasetSpec,
    *,
    seed: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[bytes, DistillResult, str]:
    """The student's bytes, the run's record, and the method's variant (e.g. GenKD with published EBMs).

    `node_models` holds, per node, its verified teacher and whatever else it published for the method;
    `teacher` is what the student learns from (one node's teacher, the global one, or the nodes' ensemble);
    `shares` are the nodes' shares of the data, for methods that synthesise per node.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(seed)
    teacher = teacher.to(device)
    student = build_model(cfg.student, spec.input_shape, spec.num_classes).to(device)
    space = InputSpace(spec.input_shape, *spec.bounds, flip=spec.flip)
    synthesizer = build_synthesizer(cfg.method, teacher, student, space, cfg.options, seed=seed, device=device)
    if cfg.method == "public":  # FedDF's baseline: the distiller's own unlabeled set
        synthesizer.use_real_data(public_inputs(synthesizer.options, spec))
    variant = synthesizer.use_node_models([{k: v for k, v in m.items() if k != "teacher"} for m in node_models], shares)
    result = distill(synthesizer, cfg, seed=seed, progress=progress)
    return serialize(result.student, cfg.student, spec.input_shape, spec.num_classes), result, variant
