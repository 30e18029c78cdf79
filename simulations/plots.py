"""The run directory's plots/: accuracy per node, the partition, the synthetic samples, the KD curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def accuracy_bars(rows: list[dict], columns: list[tuple[str, str]], path: Path) -> None:
    nodes = [f"{r['partition']}\n{r['node'][:8]}…" for r in rows]
    width = 0.8 / max(len(columns), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 3), 4))
    for i, (key, title) in enumerate(columns):
        values = [100 * r[key] if r.get(key) is not None else np.nan for r in rows]
        ax.bar(np.arange(len(rows)) + (i - (len(columns) - 1) / 2) * width, values, width, label=title)
    ax.set_xticks(np.arange(len(rows)), nodes, fontsize=7)
    ax.set_ylabel("accuracy on the node's private test split (%)")
    ax.set_ylim(0, 118)  # headroom for the legend above the 100% bars
    ax.set_yticks(range(0, 101, 20))
    if columns:  # no model measured (every node failed): an empty chart, not a crash
        ax.legend(fontsize=8, ncol=len(columns), loc="upper center")
    ax.set_title("Attested accuracy per data node")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def label_histogram(rows: list[dict], path: Path) -> None:
    counts = np.array([r["label_histogram"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 3), 4))
    bottom = np.zeros(len(rows))
    for c in range(counts.shape[1]):
        ax.bar(np.arange(len(rows)), counts[:, c], bottom=bottom, label=str(c))
        bottom += counts[:, c]
    ax.set_xticks(np.arange(len(rows)), [str(r["partition"]) for r in rows], fontsize=7)
    ax.set_xlabel("node (partition)")
    ax.set_ylabel("training examples")
    ax.set_title("Label histogram of each node's private train split")
    if counts.shape[1] <= 20:
        ax.legend(title="class", fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_grid(transfer, path: Path, n: int = 64, low: float = -1.0, high: float = 1.0) -> None:
    """The last n synthetic inputs (what the synthesiser made at the end of the run)."""
    x = np.asarray(transfer[-n:], dtype=np.float32)
    x = np.clip((x - low) / (high - low), 0, 1)
    side = int(np.ceil(np.sqrt(len(x))))
    fig, axes = plt.subplots(side, side, figsize=(side * 0.8, side * 0.8))
    for ax, img in zip(np.ravel(axes), list(x) + [None] * (side * side - len(x))):
        ax.axis("off")
        if img is not None:
            ax.imshow(img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0)), cmap="gray", vmin=0, vmax=1)
    fig.suptitle(f"The last {len(x)} of {len(transfer)} synthetic samples", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def distillation_curve(losses: list[float], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(np.arange(1, len(losses) + 1), losses)
    ax.set_xlabel("synthesis round (the student's steps after each batch)")
    ax.set_ylabel("KD loss")
    ax.set_title("Distillation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def privacy_utility(rows: list[dict], path: Path) -> None:
    """`kdledger bench privacy`: utility (accuracies) and leakage (the membership attack's AUC, the synthetic
    inputs' closeness to training images) at each target epsilon, in the order the bench ran them."""
    labels = ["∞" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}" for r in rows]
    x = np.arange(len(rows))

    def series(key: str) -> list[float]:
        return [np.nan if r.get(key) is None else r[key] for r in rows]

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for key, title in (("teacher_accuracy", "node teachers (mean)"), ("student_accuracy", "student")):
        left.plot(x, [100 * v for v in series(key)], marker="o", label=title)
    left.set_ylabel("accuracy on private test splits (%)")
    left.set_title("Utility")
    for key, title in (
        ("mia_auc", "membership attack AUC"),
        ("closer_to_train_pixels", "synthetic closer to train (pixels)"),
        ("closer_to_train_features", "synthetic closer to train (features)"),
    ):
        right.plot(x, series(key), marker="o", label=title)
    right.axhline(0.5, color="grey", linestyle=":", linewidth=1)  # no leakage: a coin flip
    right.set_ylim(0, 1)
    right.set_title("Leakage (0.5: none measured)")
    for ax in (left, right):
        ax.set_xticks(x, labels)
        ax.set_xlabel("target epsilon per node (δ fixed)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(
    out: Path, rows: list[dict], columns: list[tuple[str, str]], transfer, losses: list[float]
) -> list[Path]:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    made = [plots / "accuracy_per_node.png", plots / "label_histogram.png"]
    accuracy_bars(rows, columns, made[0])
    label_histogram(rows, made[1])
    if transfer is not None and len(transfer):
        made.append(plots / "synthetic_samples.png")
        sample_grid(transfer.numpy() if hasattr(transfer, "numpy") else transfer, made[-1])
    if losses:
        made.append(plots / "distillation_curve.png")
        distillation_curve(losses, made[-1])
    return made
