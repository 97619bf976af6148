"""E1 / Fig 2: the most positive eigenvector of every class, in pixel space (claim C3).

Proxies for "looks like the class" (absolute cosines, because an eigenvector's sign is arbitrary):
  - |cos| with the class-mean training image. Any mostly-positive blob scores high on this one, so also
  - |cos| with the CENTERED class mean (class mean minus the mean of all images), which is class-specific,
    and whether the eigenvector is closer to its own centered class mean than to any other class's.
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
    centered = means - data.train_x.mean(0).to(top.dtype)
    cos_all = torch.nn.functional.cosine_similarity(top[:, None], centered[None], dim=-1).abs()  # (eig class, mean class)
    cos_centered = cos_all.diagonal()
    own_best = (cos_all.argmax(-1) == torch.arange(len(idx), device=cos_all.device)).float()

    titles = [f"{name}  λ={vals[c, 0]:.2g}\n|cos| centered mean {cos_centered[c]:.2f}" for c, name in enumerate(data.classes)]
    fig = plots.vector_grid(top, data.image_shape, titles, ncols=5,
                            suptitle=f"{ctx.run_cfg.task.name}: top positive eigenvector per class")
    plots.save(fig, out / "top_eigenvectors.png")
    result = {"cos_class_mean": dict(zip(data.classes, cos.tolist())), "cos_class_mean_avg": cos.mean().item(),
              "cos_centered_class_mean": dict(zip(data.classes, cos_centered.tolist())),
              "cos_centered_class_mean_avg": cos_centered.mean().item(),
              "fraction_closest_to_own_class": own_best.mean().item(),
              "top_positive_eigenvalue": dict(zip(data.classes, vals[:, 0].tolist()))}
    checkpoint.write_json(out / "eigenvectors.json", result)
    return result
