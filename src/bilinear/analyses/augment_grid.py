"""E7 / Appendix B: regularizers and augmentations compared by their top eigenvectors and accuracy.

Across runs (one per setting or grid point): the most positive eigenvector of a few classes per run, with
the run's test accuracy, plus two overfitting proxies of PAPER.md E3 averaged over all classes' top
positive eigenvectors: the fraction of the eigenvector's mass (sum of squares) on pixels whose mean
training intensity is below ``augment_grid.edge_threshold``, and the effective pixel count.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import torch

from bilinear import plots
from bilinear.analyses import register, write_json
from bilinear.decompose import effective_rank


def setting_label(ctx) -> str:
    """A short description of what a run changes: its directory name (reproduce names runs by setting)."""
    return ctx.run_dir.name


@register("augment_grid", kinds=("image",), scope="cross")
def augment_grid(runs: list, out: Path, cfg) -> dict:
    p = cfg.augment_grid
    classes = list(p.classes)
    data = runs[0].image_data
    n_pix = data.train_x.shape[1]
    rare = data.train_x.mean(0) < float(p.edge_threshold)
    table, vectors, titles = {}, [], []
    for ctx in runs:
        eig = ctx.class_eigen
        idx, vals = eig.positive(1)
        top = eig.input_vectors[torch.arange(len(idx), device=idx.device), idx[:, 0], :n_pix]  # (classes, n_pix)
        mass = top.square()
        edge = (mass[:, rare].sum(-1) / mass.sum(-1)).mean().item()
        label = setting_label(ctx)
        table[label] = {"test_acc": ctx.metrics.get("test_acc"), "edge_mass_top": edge,
                        "effective_pixels_top": effective_rank(top).mean().item(),
                        "effective_rank_eigenvalues": effective_rank(eig.values).mean().item()}
        for k, c in enumerate(classes):
            vectors.append(top[c])
            titles.append(f"{label}\nacc {100 * table[label]['test_acc']:.1f}%, edge {edge:.2f}" if k == 0
                          else f"class {data.classes[c]}")
    fig = plots.vector_grid(vectors, data.image_shape, titles, ncols=len(classes),
                            suptitle="E7: top positive eigenvector per setting (rows), with test accuracy and the "
                                     "eigenvectors' mass on rarely-on pixels", scale=1.5)
    plots.save(fig, out / "augment_grid.png")
    plt.close("all")
    result = {"runs": table, "classes": classes, "edge_threshold": float(p.edge_threshold)}
    write_json(out / "augment_grid.json", result)
    return result

