"""E9 / Appendix D: HOSVD of the output tensor (claim C11).

B (classes, d, d) flattened to (classes, d*d) = U diag(S) Vh (decompose.hosvd). Each right singular
vector reshaped to (d, d) is a symmetric interaction matrix shared by all classes; column r of U says
how each class uses it. The top directions' matrices are eigendecomposed (decompose.eigendecompose) and
their eigenvectors shown in pixel space through the embedding.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from bilinear import plots
from bilinear.analyses import register, write_json
from bilinear.decompose import eigendecompose, hosvd, output_tensor


@register("hosvd", kinds=("image",))
@torch.no_grad()
def hosvd_analysis(ctx, out: Path) -> dict:
    hcfg, data = ctx.cfg.hosvd, ctx.image_data
    B = output_tensor(ctx.form)  # (C, d, d), symmetric; small for image models (10 x 512 x 512 float64 = 20 MB)
    f = hosvd(B)
    recon_err = ((f.reconstruct() - B).norm() / B.norm()).item()
    n_dir = min(int(hcfg.n_directions), len(f.S))
    eig = eigendecompose(f.Q[:n_dir], ctx.form.embed)  # (n_dir, d) values, pixel-space vectors
    nv = int(hcfg.n_vectors)
    pos_idx, _ = eig.positive(nv)
    neg_idx, _ = eig.negative(nv)
    S = f.S.cpu().numpy()
    U = f.U[:, :n_dir].cpu().numpy()  # (C, n_dir)

    fig = plt.figure(figsize=(4 + 1.6 * 2 * nv, 2.6 * (n_dir + 1)))
    grid = fig.add_gridspec(n_dir + 1, 1 + 2 * nv, width_ratios=[2.5] + [1] * (2 * nv))
    ax = fig.add_subplot(grid[0, :])
    ax.bar(np.arange(1, len(S) + 1), S, color="tab:gray")
    ax.set_xlabel("singular direction")
    ax.set_ylabel("singular value")
    ax.set_title(f"HOSVD of the output tensor: {100 * S[0] ** 2 / (S ** 2).sum():.0f}% of the squared norm in direction 1",
                 fontsize=9)
    directions = []
    for r in range(n_dir):
        ax = fig.add_subplot(grid[r + 1, 0])
        ax.bar(range(len(data.classes)), U[:, r], color=np.where(U[:, r] >= 0, "tab:red", "tab:blue"))
        ax.set_xticks(range(len(data.classes)), data.classes, fontsize=7, rotation=30)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"direction {r + 1} (σ={S[r]:.3g}): class contributions", fontsize=8)
        for j in range(nv):
            for k, (idx, sign) in enumerate(((pos_idx, "+"), (neg_idx, "−"))):
                i = int(idx[r, j])
                plots.vector_image(fig.add_subplot(grid[r + 1, 1 + k * nv + j]), eig.input_vectors[r, i], data.image_shape,
                                   f"dir {r + 1} {sign}{j + 1}: λ={eig.values[r, i]:.2g}")
        order = np.argsort(-U[:, r])
        directions.append({"singular_value": float(S[r]), "class_contributions": dict(zip(data.classes, U[:, r].tolist())),
                           "classes_by_contribution": [data.classes[i] for i in order],
                           "top_eigenvalues": eig.values[r, :10].tolist()})
    fig.tight_layout()
    plots.save(fig, out / "hosvd.png")
    result = {"singular_values": S.tolist(), "energy_fraction": (S ** 2 / (S ** 2).sum()).tolist(),
              "reconstruction_rel_error": recon_err, "directions": directions}
    write_json(out / "hosvd.json", result)
    return result
