"""Pictures of a search: softmax(α) over the steps, how decided α is, and the derived genotype.

All three read plain data (the snapshots a search writes to ``alpha_history.json``, a genotype dict), so
they can be redrawn from a finished run's files. Each figure is written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from ..model.genotype import Genotype
from ..utils.atomic import atomic_savefig

# α-node names are "<side>.p<position>.s<split>"; the side picks the op list of that node.
Snapshot = dict[str, Any]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def normalised_entropy(probs: Sequence[float]) -> float:
    """Entropy of one softmax(α) as a fraction of the uniform distribution's (1 = uniform, 0 = one-hot)."""
    if len(probs) < 2:
        return 0.0
    return -sum(p * math.log(max(p, 1e-12)) for p in probs) / math.log(len(probs))


def plot_heatmap(history: Sequence[Snapshot], op_names: dict[str, Sequence[str]], path: str | os.PathLike) -> None:
    """softmax(α) over the search: one panel per α node (ops × evaluation steps), every panel on one
    absolute colour scale from 0 to the largest weight of any node at any step, so that panels compare."""
    import numpy as np

    plt = _pyplot()
    names = list(history[0]["softmax"])
    steps = [h["step"] for h in history]
    data = {n: np.array([h["softmax"][n] for h in history]).T for n in names}
    vmax = max(float(d.max()) for d in data.values())
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False, constrained_layout=True)
    image = None
    for ax, name in zip(axes.flat, names):
        ops = op_names[name.split(".")[0]]
        image = ax.imshow(data[name], aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0, vmax=vmax)
        ax.set_yticks(range(len(ops)), ops, fontsize=6)
        ticks = np.linspace(0, len(steps) - 1, min(5, len(steps))).astype(int)
        ax.set_xticks(ticks, [steps[t] for t in ticks], fontsize=6)
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.025, pad=0.01)
    bar.set_label("softmax(α), one scale for all panels", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle("softmax(α) over search steps (x: step, one panel per node)")
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_decisiveness(history: Sequence[Snapshot], path: str | os.PathLike) -> None:
    """How far α is from uniform over the search: the mean normalised entropy of softmax(α) over nodes
    (1 = uniform), and the top softmax weight of each node (dashed: the uniform weight 1/ops)."""
    plt = _pyplot()
    names = list(history[0]["softmax"])
    steps = [h["step"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    per_node = {n: [normalised_entropy(h["softmax"][n]) for h in history] for n in names}
    mean = [sum(per_node[n][i] for n in names) / len(names) for i in range(len(steps))]
    for n in names:
        left.plot(steps, per_node[n], color="#bbbbbb", linewidth=0.7)
    left.plot(steps, mean, color="#1f4e99", linewidth=2.0, label="mean over nodes")
    left.set_ylim(min(0.0, min(mean)), 1.02)
    left.set_xlabel("step")
    left.set_ylabel("normalised entropy (1 = uniform)")
    left.legend(fontsize=7, loc="lower left")
    left.set_title("entropy of softmax(α)", fontsize=9)
    for n in names:
        right.plot(steps, [max(h["softmax"][n]) for h in history], linewidth=1.0, label=n)
    for width in sorted({len(history[0]["softmax"][n]) for n in names}):
        right.axhline(1.0 / width, color="#888888", linestyle="--", linewidth=0.8)
    right.set_ylim(0.0, 1.02)
    right.set_xlabel("step")
    right.set_ylabel("top softmax weight")
    right.set_title("top weight per node (dashed: uniform)", fontsize=9)
    right.legend(fontsize=6, ncol=2 if len(names) > 8 else 1, loc="upper left")
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_genotype(genotype: Genotype, path: str | os.PathLike) -> None:
    """The derived layers as boxes: encoder left, decoder right (with its fixed cross-attention split)."""
    plt = _pyplot()
    genotype = Genotype.from_dict(genotype)
    enc, dec = [list(row) for row in genotype.encoder], [list(row) + ["cross_attn*"] for row in genotype.decoder]
    height = max(len(enc), len(dec))
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.7 * height))
    for x0, side, rows in ((0.0, "encoder", enc), (4.5, "decoder", dec)):
        ax.text(x0 + 1.6, height + 0.2, side, ha="center", fontsize=11, weight="bold")
        for i, row in enumerate(rows):
            w = 3.4 / len(row)
            for k, name in enumerate(row):
                if name.startswith("cross"):
                    color = "#dddddd"
                else:
                    color = "#f4a6a6" if name in ("zero", "identity") else "#a6c8f4"
                ax.add_patch(plt.Rectangle((x0 + k * w, i), w * 0.95, 0.8, color=color))
                ax.text(x0 + k * w + w * 0.47, i + 0.4, name, ha="center", va="center", fontsize=7)
            ax.text(x0 - 0.1, i + 0.4, f"L{i}", ha="right", va="center", fontsize=7)
    ax.set_xlim(-0.6, 8.2)
    ax.set_ylim(-0.2, height + 0.6)
    ax.axis("off")
    ax.set_title("derived genotype (bottom = first layer; * fixed)", fontsize=9)
    atomic_savefig(fig, path)
    plt.close(fig)
