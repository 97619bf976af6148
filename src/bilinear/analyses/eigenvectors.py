"""E1 / Fig 2: the most positive eigenvector of every class, in pixel space (claim C3).

Proxies for "looks like the class" (absolute cosines, because an eigenvector's sign is arbitrary):
  - |cos| with the class-mean training image. Any mostly-positive blob scores high on this one, so also
  - |cos| with the CENTERED class mean (class mean minus the mean of all images), which is class-specific,
    and whether the eigenvector is closer to its own centered class mean than to any other class's.
  - selectivity: the eigenvector's activation (v . x)^2 averaged over the test images of each class. A
    top eigenvector that reads its own class responds most to that class. Sign-free, and fair to signed
    stroke detectors that no mean image resembles.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bilinear import plots
from bilinear.analyses import register, write_json
from bilinear.decompose import abs_cosine, abs_cosine_matrix


@register("eigenvectors", kinds=("image",))
def eigenvectors(ctx, out: Path) -> dict:
    eig, data = ctx.class_eigen, ctx.image_data
    n_pix = data.train_x.shape[1]
    idx, vals = eig.positive(1)  # (classes, 1): the most positive eigenvalue, not the largest |lambda|
    top = torch.stack([eig.input_vectors[c, idx[c, 0], :n_pix] for c in range(len(idx))])  # (classes, n_pix)
    means = torch.stack([data.train_x[data.train_y == c].mean(0) for c in range(len(idx))]).to(top.dtype)
    cos = abs_cosine(top, means)
    centered = means - data.train_x.mean(0).to(top.dtype)
    cos_all = abs_cosine_matrix(top, centered)  # (eig class, mean class)
    cos_centered = cos_all.diagonal()
    own_best = (cos_all.argmax(-1) == torch.arange(len(idx), device=cos_all.device)).float()

    # selectivity: mean (v_c . x)^2 over the test images of each class k -> (eig class c, image class k)
    tx, ty = data.test_x.to(top.dtype), data.test_y
    proj2 = (tx @ top.T).square()  # (N, classes)
    resp = torch.stack([proj2[ty == k].mean(0) for k in range(len(idx))], dim=1)  # (c, k)
    own_resp = (resp.argmax(-1) == torch.arange(len(idx), device=resp.device)).float()
    selectivity = resp.diagonal() / resp.mean(-1)

    titles = [f"{name}  λ={vals[c, 0]:.2g}\n|cos| centered mean {cos_centered[c]:.2f}" for c, name in enumerate(data.classes)]
    fig = plots.vector_grid(top, data.image_shape, titles, ncols=5,
                            suptitle=f"{ctx.run_cfg.task.name}: top positive eigenvector per class")
    plots.save(fig, out / "top_eigenvectors.png")
    result = {"cos_class_mean": dict(zip(data.classes, cos.tolist())), "cos_class_mean_avg": cos.mean().item(),
              "cos_centered_class_mean": dict(zip(data.classes, cos_centered.tolist())),
              "cos_centered_class_mean_avg": cos_centered.mean().item(),
              "fraction_closest_to_own_class": own_best.mean().item(),
              "top_positive_eigenvalue": dict(zip(data.classes, vals[:, 0].tolist())),
              "selectivity": dict(zip(data.classes, selectivity.tolist())), "selectivity_avg": selectivity.mean().item(),
              "fraction_most_active_on_own_class": own_resp.mean().item()}
    write_json(out / "eigenvectors.json", result)
    return result
