"""E8 / Appendix C: explain one prediction from the weights.

For one input x (a test index, or an image file), ``logit_c(x) = sum_i lambda_ci (v_ci . z)^2`` exactly, so
each of the highest classes is explained by its sorted eigenvector activations. Shown per class:
    - the largest positive and negative activations lambda_i (v_i . z)^2, sorted;
    - the top positive and top negative eigenvector of the class (by lambda);
    - the eigenvectors that contribute most positively and most negatively for THIS input;
and the input with all logits.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from bilinear import plots
from bilinear.analyses import register, write_json
from bilinear.decompose import eigen_activations
from bilinear.errors import ConfigError


def load_image_file(path: str, n_values: int) -> torch.Tensor:
    """An image file as a flat (n_values,) float tensor in [0, 1]: .npy / .pt arrays, or a picture (.png ...)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config: explain.image {path!r} is not a file")
    if p.suffix == ".npy":
        arr = np.load(p).astype(np.float64)
    elif p.suffix == ".pt":
        arr = torch.load(p, map_location="cpu", weights_only=True).double().numpy()
    else:
        import matplotlib.image as mpimg

        arr = np.asarray(mpimg.imread(p), dtype=np.float64)
        if arr.ndim == 3 and n_values != arr.shape[0] * arr.shape[1] * arr.shape[2]:
            arr = arr[..., :3].mean(-1)  # colour picture for a grayscale model: average the channels
        elif arr.ndim == 3:
            arr = arr.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W), the model's flattening order
    if arr.max() > 1.0:
        arr = arr / 255.0  # 8-bit pixel values
    if arr.size != n_values:
        raise ConfigError(f"config: explain.image {path!r} has {arr.size} values; the model takes {n_values}")
    return torch.from_numpy(np.ascontiguousarray(arr.reshape(-1)))


@register("explain", kinds=("image",))
@torch.no_grad()
def explain(ctx, out: Path) -> dict:
    ecfg, data, eig, form = ctx.cfg.explain, ctx.image_data, ctx.class_eigen, ctx.form
    n_pix = data.test_x.shape[1]
    label = None
    if ecfg.image:
        x = load_image_file(str(ecfg.image), n_pix).to(device=data.test_x.device, dtype=data.test_x.dtype)
        source = f"image {ecfg.image}"
    else:
        if ecfg.index is None:  # the least certain test prediction: the smallest gap between the top two logits
            logits_all = torch.cat([ctx.model(data.test_x[i : i + 4096]) for i in range(0, len(data.test_x), 4096)])
            top2 = logits_all.topk(2, dim=-1).values
            index = int((top2[:, 0] - top2[:, 1]).argmin())
            source = f"test image {index} (smallest top-2 logit margin)"
        else:
            index = int(ecfg.index)
            if not 0 <= index < len(data.test_x):
                raise ConfigError(f"config: explain.index must be in 0..{len(data.test_x) - 1}, got {index}")
            source = f"test image {index}"
        x, label = data.test_x[index], int(data.test_y[index])

    logits = ctx.model(x[None])[0].double()
    acts = eigen_activations(eig, form.to_z(x[None]))[0]  # (C, r): lambda_ci (v_ci . z)^2
    recon_err = (acts.sum(-1) - logits).abs().max().item()
    n_cls = min(int(ecfg.n_classes), len(data.classes))
    top = logits.topk(n_cls).indices.tolist()
    pos_idx, _ = eig.positive(1)
    neg_idx, _ = eig.negative(1)

    nb = int(ecfg.n_bars)
    fig = plt.figure(figsize=(15, 2.8 * (n_cls + 1)))
    grid = fig.add_gridspec(n_cls + 1, 5, width_ratios=[2.2, 1, 1, 1, 1])
    plots.vector_image(fig.add_subplot(grid[0, 1]), x, data.image_shape,
                       f"input: {source}" + ("" if label is None else f"\nlabel {data.classes[label]}"))
    ax = fig.add_subplot(grid[0, 2:])
    ax.bar(range(len(logits)), logits.cpu().numpy(), color=["tab:orange" if c in top else "tab:gray" for c in range(len(logits))])
    ax.set_xticks(range(len(logits)), data.classes, fontsize=7, rotation=30)
    ax.set_ylabel("logit")
    ax.axhline(0, color="k", lw=0.5)
    classes = []
    for row, c in enumerate(top, start=1):
        a = acts[c]
        order = a.argsort(descending=True)
        shown = torch.cat([order[:nb], order[-nb:]]) if len(order) > 2 * nb else order
        ax = fig.add_subplot(grid[row, 0])
        vals = a[shown].cpu().numpy()
        ax.bar(range(len(vals)), vals, color=np.where(vals >= 0, "tab:red", "tab:blue"))
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks([])
        ax.set_title(f"class {data.classes[c]}: logit {logits[c]:.2f} = Σ λ(v·x)²; sorted activations "
                     f"(top {nb} and bottom {nb})", fontsize=8)
        ip, ineg, amax, amin = int(pos_idx[c, 0]), int(neg_idx[c, 0]), int(order[0]), int(order[-1])
        for col, (i, what) in enumerate([(ip, "top + by λ"), (ineg, "top − by λ"), (amax, "most + for x"), (amin, "most − for x")],
                                        start=1):
            plots.vector_image(fig.add_subplot(grid[row, col]), eig.input_vectors[c, i], data.image_shape,
                               f"{what}: #{i + 1}\nλ={eig.values[c, i]:.3g}, act {a[i]:.3g}")
        classes.append({
            "class": data.classes[c], "logit": logits[c].item(),
            "sum_positive_activations": a.clamp_min(0).sum().item(), "sum_negative_activations": a.clamp_max(0).sum().item(),
            "top_activations": [{"index": int(i), "eigenvalue": eig.values[c, i].item(), "activation": a[i].item()}
                                for i in a.abs().argsort(descending=True)[:nb].tolist()],
            "top_positive_eigenvector": ip, "top_negative_eigenvector": ineg,
        })
    fig.suptitle(f"{ctx.run_cfg.task.name}: why the model predicts {data.classes[top[0]]} for {source}", fontsize=10)
    fig.tight_layout()
    name = "explain_" + (Path(str(ecfg.image)).stem if ecfg.image else f"test{index}")
    plots.save(fig, out / f"{name}.png")
    result = {"source": source, "label": None if label is None else data.classes[label],
              "prediction": data.classes[top[0]], "logits": dict(zip(data.classes, logits.tolist())),
              "activation_sum_error": recon_err, "classes": classes, "figure": f"{name}.png"}
    write_json(out / f"{name}.json", result)
    return result
