"""How close a run's synthetic transfer set is to real data, measured with the run's own teachers.

    python examples/transfer_realism.py RUN_DIR [RUN_DIR ...]

For each finished `kdledger run` directory (its node teachers, hash-checked, and the synthetic
samples it kept, synthetic.safetensors), and for two references of the same size (or fewer, where
fewer real images are held out) under the same teachers, held-out real images of the run's dataset
(the official test images; digits: the bench's held-out fifth) and uniform noise, one markdown row:

- pixel TV: the mean absolute difference between neighbouring pixels (high-frequency content);
- BN distance: per node teacher, the set's per-channel mean and variance at every batch-norm layer
  against the running ones its training left (DeepInversion's feature statistic), summed over the
  layers and averaged over the teachers; real images are not at zero, since each teacher saw only
  its own node's part of the data;
- confidence: the mean top probability of the run's ensemble (weighted as its scenario says);
- class skew: the largest over the smallest class count among the ensemble's labels.

The references are measured again for each run whose teachers differ from the run before it.
BENCHMARKS.md uses it to say why GenKD's samples teach less than `fast`'s.
"""

import sys
from pathlib import Path

import torch

from chain.errors import ConfigError
from node.config import DataConfig
from node.data import spec_of
from node.dfkd.hooks import BNStatistics
from node.models import Ensemble
from simulations.bench import bench_splits
from simulations.privacy import load_synthetic, node_teachers


def bn_distance(teachers, x: torch.Tensor) -> float:
    total = 0.0
    for teacher in teachers:
        stats = BNStatistics(teacher)  # the inversion's own measure, on the whole set at once
        with torch.no_grad(), stats.recording():
            teacher(x)
        total += float(stats.take())
        stats.remove()
    return total / len(teachers)


def row(name: str, teachers, ensemble, x: torch.Tensor) -> str:
    x = x.float()
    tv = ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()) / 2
    with torch.no_grad():
        p = ensemble(x).softmax(1)
    counts = torch.bincount(p.argmax(1), minlength=p.shape[1]).float()
    skew = counts.max() / counts.clamp_min(1).min()
    confidence = p.max(1).values.mean()
    return f"| {name} | {len(x)} | {tv:.3f} | {bn_distance(teachers, x):.2f} | {confidence:.3f} | {skew:.2f} |"


def main(run_dirs: list[Path]) -> None:
    print("| transfer set | samples | pixel TV | BN distance | confidence | class skew |")
    print("|---|---:|---:|---:|---:|---:|")
    measured_with = None
    for run_dir in run_dirs:
        scenario, published = node_teachers(run_dir)
        teachers = [t.eval() for _, _, t in published]
        ensemble = Ensemble.weighted(teachers, scenario.federation.ensemble_weights).eval()
        synthetic = load_synthetic(run_dir)
        if measured_with != [r["teacher_hash"] for r, _, _ in published]:  # references for each set of teachers
            measured_with = [r["teacher_hash"] for r, _, _ in published]
            data = DataConfig(dataset=scenario.data.dataset, path=scenario.data.path)
            real = bench_splits(data, "test")[1].x[: len(synthetic)]
            low, high = spec_of(scenario.data.dataset).bounds
            noise = low + (high - low) * torch.rand(real.shape, generator=torch.Generator().manual_seed(0))
            print(row(f"real images (held out), teachers of {run_dir}", teachers, ensemble, real))
            print(row(f"uniform noise, teachers of {run_dir}", teachers, ensemble, noise))
        print(row(str(run_dir), teachers, ensemble, synthetic))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.split("\n\n")[1])
    try:
        main([Path(a) for a in sys.argv[1:]])
    except ConfigError as exc:
        sys.exit(f"transfer_realism: {exc}")
