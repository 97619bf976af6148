"""E2 / Fig 3 and Appendix A: the spectrum of one class, and the effective rank of every class (claim C4)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch
from safetensors.torch import save_file

from bilinear import checkpoint, plots
from bilinear.analyses import register
from bilinear.decompose import effective_rank
from bilinear.errors import ConfigError


def important_count(values: torch.Tensor, frac: float = 0.1) -> tuple[int, int]:
    """Number of positive and negative eigenvalues with |lambda| >= frac * max |lambda| (C4's "about 10")."""
    thresh = frac * values.abs().max()
    return int((values >= thresh).sum()), int((values <= -thresh).sum())


@register("spectrum", kinds=("image",))
def spectrum(ctx, out: Path) -> dict:
    eig = ctx.class_eigen
    values = eig.values  # (classes, d) ordered by |lambda|
    classes = ctx.image_data.classes
    c = int(ctx.cfg.class_id)
    if not 0 <= c < len(classes):
        raise ConfigError(f"config: class_id must be in 0..{len(classes) - 1}, got {c}")

    with checkpoint.atomic_path(out / "spectra.safetensors") as tmp:
        save_file({"values": values.contiguous().cpu()}, str(tmp))
    ranks = effective_rank(values).tolist()
    counts = [important_count(v) for v in values]

    shape = ctx.image_data.image_shape
    pos_idx, pos_val = eig.positive(4)
    neg_idx, neg_val = eig.negative(4)
    fig = plt.figure(figsize=(11, 3.6))
    grid = fig.add_gridspec(2, 6)
    for j in range(4):
        plots.vector_image(fig.add_subplot(grid[0, j]), eig.input_vectors[c, pos_idx[c, j]], shape, f"+{j + 1}: {pos_val[c, j]:.3g}")
        plots.vector_image(fig.add_subplot(grid[1, j]), eig.input_vectors[c, neg_idx[c, j]], shape, f"-{j + 1}: {neg_val[c, j]:.3g}")
    plots.eigenvalue_bars(fig.add_subplot(grid[:, 4:]), values[c], 20, f"class {classes[c]}: effective rank {ranks[c]:.1f}")
    fig.suptitle(f"Top positive (top row) and negative (bottom row) eigenvectors of class {classes[c]}", fontsize=10)
    plots.save(fig, out / f"spectrum_class{c}.png")

    summary = {
        "class_id": c,
        "effective_rank": dict(zip(classes, ranks)),
        "effective_rank_mean": sum(ranks) / len(ranks),
        "n_important_positive": dict(zip(classes, [p for p, _ in counts])),
        "n_important_negative": dict(zip(classes, [n for _, n in counts])),
        "important_threshold": "|lambda| >= 0.1 max|lambda| of the class",
        "d_hidden": values.shape[1],
    }
    checkpoint.write_json(out / "spectrum.json", summary)
    return summary
