"""E1 / Fig 2: the most positive eigenvector of every class, in pixel space (claim C3).

Proxy for "looks like the class": |cos| between that eigenvector and the class-mean training image
(absolute, because an eigenvector's sign is arbitrary).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bilinear import checkpoint, plots
from bilinear.analyses import register


@register("eigenvectors", kinds=("image",))
def eigenvectors(ctx, out: Path) -> dict:
    eig, data = ctx.class_eigen, ctx.image_data
    n_pix = data.train_x.shape[1]
    idx, vals = eig.positive(1)  # (classes, 1): the most positive eigenvalue, not the largest |lambda|
    top = torch.stack([eig.input_vectors[c, idx[c, 0], :n_pix] for c in range(len(idx))])  # (classes, n_pix)
    means = torch.stack([data.train_x[data.train_y == c].mean(0) for c in range(len(idx))]).to(top.dtype)
    cos = torch.nn.functional.cosine_similarity(top, means, dim=-1).abs()

    titles = [f"{name}  λ={vals[c, 0]:.2g}\n|cos| mean {cos[c]:.2f}" for c, name in enumerate(data.classes)]
    fig = plots.vector_grid(top, data.image_shape, titles, ncols=5,
                            suptitle=f"{ctx.run_cfg.task.name}: top positive eigenvector per class")
    plots.save(fig, out / "top_eigenvectors.png")
    result = {"cos_class_mean": dict(zip(data.classes, cos.tolist())), "cos_class_mean_avg": cos.mean().item(),
              "top_positive_eigenvalue": dict(zip(data.classes, vals[:, 0].tolist()))}
    checkpoint.write_json(out / "eigenvectors.json", result)
    return result
