"""The distiller's own work, apart from Flower: verified teachers in, a student's bytes out."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from node.artifacts import serialize
from node.config import DataConfig, DistillConfig
from node.data import DatasetError, DatasetSpec, load_dataset
from node.dfkd import DistillResult, InputSpace, build_synthesizer, distill, resolve_device
from node.models import Teacher, build_model


def public_inputs(options, spec: DatasetSpec) -> torch.Tensor:
    """The `public` method's unlabeled images, checked against the scenario's input shape."""
    x, _, public_spec = load_dataset(DataConfig(dataset=options.dataset, path=options.path), options.split)
    if tuple(public_spec.input_shape) != tuple(spec.input_shape) or public_spec.bounds != spec.bounds:
        raise DatasetError(
            f"distill.options.dataset: {options.dataset} images are {public_spec.input_shape}, the "
            f"scenario's are {spec.input_shape}"
        )
    return torch.from_numpy(x)


@contextmanager
def reproducible(device: torch.device, threads: int) -> Iterator[None]:
    """Pin what changes a student's bits for the same seed: torch's CPU thread count (a reduction is split
    between threads, and float addition is not associative) and, on CUDA, cuDNN's choice of algorithm.
    Restored afterwards: the distiller shares its process with the simulation."""
    saved = torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]


def distill_student(
    node_models: Sequence[Mapping[str, torch.nn.Module]],
    teacher: Teacher,
    shares: list[float],
    cfg: DistillConfig,
    spec: DatasetSpec,
    *,
    seed: int,
    progress: Callable[[str, int, int], None] | None = None,
    signing_key: str | None = None,
    start: torch.nn.Module | None = None,
) -> tuple[bytes, DistillResult, dict]:
    """The student's bytes, the run's record, and what ran: the method's variant (e.g. GenKD with published
    EBMs), its options with every default filled in, the device, the thread count and torch's version:
    what the configuration hash covers besides the scenario.

    `node_models` holds, per node, its verified teacher and whatever else it published for the method;
    `teacher` is what the student learns from (one node's teacher, the global one, or the nodes' ensemble);
    `shares` are the nodes' shares of the data, for methods that synthesise per node;
    `signing_key`: the fingerprint of the distiller's signing key, written into the student's file (node/signing.py);
    `start`: a model of the student's architecture whose weights the student starts from (`distill.init`).
    """
    device = resolve_device(cfg.device)
    with reproducible(device, cfg.threads):
        torch.manual_seed(seed)
        teacher = teacher.to(device)
        student = build_model(cfg.student, spec.input_shape, spec.num_classes).to(device)
        if start is not None:
            student.load_state_dict(start.state_dict())
        space = InputSpace(spec.input_shape, *spec.bounds, flip=spec.flip)
        synthesizer = build_synthesizer(cfg.method, teacher, student, space, cfg.options, seed=seed, device=device)
        if cfg.method == "public":  # FedDF's baseline: the distiller's own unlabeled set
            synthesizer.use_real_data(public_inputs(synthesizer.options, spec))
        extras = [{k: v for k, v in m.items() if k != "teacher"} for m in node_models]
        as_run = {
            "variant": synthesizer.use_node_models(extras, shares),
            "options": synthesizer.options.model_dump(mode="json"),
            "device": str(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "torch": torch.__version__,
        }
        result = distill(synthesizer, cfg, seed=seed, progress=progress)
        blob = serialize(result.student, cfg.student, spec.input_shape, spec.num_classes, signing_key=signing_key)
        return blob, result, as_run
