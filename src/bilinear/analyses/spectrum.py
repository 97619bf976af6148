"""E2 / Fig 3 and Appendix A: the spectrum of one class, and the effective rank of every class (claim C4)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from safetensors.torch import save_file

from bilinear import checkpoint, plots
from bilinear.analyses import register, write_json
from bilinear.decompose import effective_rank
from bilinear.errors import ConfigError


def important_count(values: torch.Tensor, frac: float = 0.1) -> tuple[int, int]:
    """Number of positive and negative eigenvalues with |lambda| >= frac * max |lambda| (C4's "about 10")."""
    thresh = frac * values.abs().max()
    return int((values >= thresh).sum()), int((values <= -thresh).sum())


def draw_class(eig, c: int, classes, shape, n_vec: int, n_bars: int, rank: float, path: Path) -> dict:
    """Fig 3 for class c: top n_vec positive (top row) and negative (bottom row) eigenvectors and the bars.

    Each side only holds eigenvalues of its sign (``Eigen.positive_in`` / ``negative_in``): a class with fewer
    than n_vec of one sign leaves those panels empty rather than showing the other sign's vectors.
    """
    pos_idx, pos_val = eig.positive_in(c, n_vec)
    neg_idx, neg_val = eig.negative_in(c, n_vec)
    fig = plt.figure(figsize=(2.2 * n_vec + 3.6, 3.6))
    grid = fig.add_gridspec(2, n_vec + 2)
    for j in range(n_vec):
        for row, (idx, val, sign) in enumerate(((pos_idx, pos_val, "+"), (neg_idx, neg_val, "-"))):
            ax = fig.add_subplot(grid[row, j])
            if j < len(idx):
                plots.vector_image(ax, eig.input_vectors[c, idx[j]], shape, f"{sign}{j + 1}: {val[j]:.3g}")
            else:
                ax.axis("off")
    plots.eigenvalue_bars(fig.add_subplot(grid[:, n_vec:]), eig.values[c], n_bars, f"class {classes[c]}: effective rank {rank:.1f}")
    fig.suptitle(f"Top positive (top row) and negative (bottom row) eigenvectors of class {classes[c]}", fontsize=10)
    plots.save(fig, path)
    _, top_pos = eig.positive_in(c, n_bars)
    _, top_neg = eig.negative_in(c, n_bars)
    return {"largest_positive": top_pos.tolist(), "largest_negative": top_neg.tolist(), "figure": path.name}


@register("spectrum", kinds=("image",))
def spectrum(ctx, out: Path) -> dict:
    """E2 for class_id (plus spectrum.extra_classes, Appendix A): eigenvectors, eigenvalue bars, rank per class."""
    eig = ctx.class_eigen
    values = eig.values  # (classes, d) ordered by |lambda|
    classes = ctx.image_data.classes
    scfg = ctx.cfg.spectrum
    shown = list(dict.fromkeys([int(ctx.cfg.class_id), *(int(c) for c in scfg.extra_classes)]))
    for c in shown:
        if not 0 <= c < len(classes):
            raise ConfigError(f"config: class_id and spectrum.extra_classes must be in 0..{len(classes) - 1}, got {c}")

    with checkpoint.atomic_path(out / "spectra.safetensors") as tmp:
        save_file({"values": values.contiguous().cpu()}, str(tmp))
    ranks = effective_rank(values).tolist()
    counts = [important_count(v) for v in values]
    n_vec = min(int(scfg.n_vectors), values.shape[1])
    n_bars = min(int(scfg.n_bars), values.shape[1])
    per_class = {classes[c]: draw_class(eig, c, classes, ctx.image_data.image_shape, n_vec, n_bars, ranks[c],
                                        out / f"spectrum_class{c}.png") for c in shown}

    summary = {
        "class_id": int(ctx.cfg.class_id),
        "shown_classes": [classes[c] for c in shown],
        "shown": per_class,
        "effective_rank": dict(zip(classes, ranks)),
        "effective_rank_mean": sum(ranks) / len(ranks),
        "n_important_positive": dict(zip(classes, [p for p, _ in counts])),
        "n_important_negative": dict(zip(classes, [n for _, n in counts])),
        "important_threshold": "|lambda| >= 0.1 max|lambda| of the class",
        "d_hidden": values.shape[1],
    }
    write_json(out / "spectrum.json", summary)
    return summary
