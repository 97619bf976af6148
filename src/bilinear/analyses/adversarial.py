"""E6 / Fig 7, Appendix M: adversarial masks built from the weights alone (claim C10).

Construction (no gradient and no forward pass):
  1. Stack the hidden-space eigenvectors v_ci of the ``n_stack`` most positive eigenvalues of every class
     (100 vectors for 10 classes x 10).
  2. Keys K = pseudoinverse of the stack (``decompose.pseudoinverse_keys``): K_ci . v_dj = delta, so a key
     activates its own eigenvector and leaves the other 99 at zero. Map each key to pixels through the
     embedding, m = E^T K (as eigenvectors are drawn). We tried the pseudoinverse of the pixel readouts E^T v
     instead: those readouts are nearly collinear across classes, so their keys are long and, at unit pixel
     std, barely move any activation (97.5% accuracy at s = 0.3 against 54% for this construction).
  3. Sign: the one for which the mask pushes the readout R_ci . x = (E^T v_ci) . x further from zero on the
     TRAINING images of the other classes (sign of their mean), so the squared activation, times lambda > 0, grows.
  4. dense: unit pixel std; edge: zeroed outside pixels of mean training intensity < ``edge_threshold``,
     then divided by the std of its positive entries.
Baselines: dense, the same mask with its pixels permuted; edge, Gaussian values on the same pixels, normalized
the same way. Evaluation is on the TEST set (the authors used the training set): accuracy and the
misclassified-as-target rate per strength, averaged over classes x their top ``top`` eigenvectors, 95% CIs.

Every model here is quadratic in its input, so logits(x + s m) = a + b s + c s^2 exactly; forward passes at
s = 0, 1, -1 give a, b, c, and the curve at every strength follows. A direct forward pass at the largest
strength checks this on real inputs and its error is recorded (DESIGN principle 3).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from bilinear import plots
from bilinear.analyses import register, write_json
from bilinear.decompose import pseudoinverse_keys
from bilinear.errors import ConfigError, ExactnessError

VARIANTS = ("dense", "edge")


def t_quantile_975(df: int) -> float:
    """Student-t 97.5% quantile (Cornish-Fisher expansion around the normal; < 0.3% off for df >= 5)."""
    z = 1.959963984540054
    if df <= 0:
        return float("nan")
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + (
        3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)


def mean_ci(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """values (n, ...) -> mean (...) and the 95% CI half-width (...) over the first dim (t-interval)."""
    n = values.shape[0]
    mean = values.mean(0)
    if n < 2:
        return mean, torch.zeros_like(mean)
    return mean, t_quantile_975(n - 1) * values.std(0) / math.sqrt(n)


def build_keys(hidden: torch.Tensor, embed: torch.Tensor, n_classes: int, n_stack: int, train_x: torch.Tensor,
               train_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed pixel masks (r, n_pix) from stacked hidden eigenvectors (r = n_classes * n_stack, d), class-major.

    embed: (d, n_pix) the embedding E. Returns (masks, gram) with gram = keys @ hidden^T, the identity up to
    numerical error (each key activates its own eigenvector only), keys signed like their masks.
    """
    keys = pseudoinverse_keys(hidden)  # (r, d)
    masks = keys @ embed  # (r, n_pix): E^T k
    readouts = hidden @ embed  # (r, n_pix): an eigenvector's activation on x is readout . x
    signs = []
    for c in range(n_classes):
        others = train_x[train_y != c].to(readouts.dtype)  # (N_other, n_pix)
        rows = slice(c * n_stack, (c + 1) * n_stack)
        mean_act = (others @ readouts[rows].T).mean(0)  # (n_stack,)
        shift = (masks[rows] * readouts[rows]).sum(-1)  # how the unsigned mask moves its own readout
        signs.append(torch.where(mean_act * shift >= 0, 1.0, -1.0).to(readouts.dtype))
    sign = torch.cat(signs)
    return masks * sign[:, None], (keys * sign[:, None]) @ hidden.T


def normalize(mask: torch.Tensor, variant: str) -> torch.Tensor:
    """dense: unit pixel std; edge: divided by the std of its positive entries (PAPER.md E6)."""
    if variant == "dense":
        return mask / mask.std().clamp_min(1e-12)
    pos = mask[mask > 0]
    scale = pos.std() if pos.numel() > 1 else mask.abs().max()
    return mask / scale.clamp_min(1e-12)


@torch.no_grad()
def quadratic_logits(model, x: torch.Tensor, m: torch.Tensor, base: torch.Tensor, chunk: int = 4096
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """For logits(x + s m) = base + b s + c s^2: (b, c), each (N, classes), from passes at s = +1 and -1."""
    plus = torch.cat([model(x[i : i + chunk] + m) for i in range(0, len(x), chunk)]).double()
    minus = torch.cat([model(x[i : i + chunk] - m) for i in range(0, len(x), chunk)]).double()
    return (plus - minus) / 2, (plus + minus) / 2 - base


@register("adversarial", kinds=("image",))
def adversarial(ctx, out: Path) -> dict:
    p = ctx.cfg.adversarial
    variants = list(p.variants)
    if not variants or any(v not in VARIANTS for v in variants):
        raise ConfigError(f"config: adversarial.variants must be a non-empty subset of {list(VARIANTS)}, got {variants}")
    eig, data, model = ctx.class_eigen, ctx.image_data, ctx.model
    n_classes, n_pix = len(data.classes), data.train_x.shape[1]
    n_stack, top = int(p.n_stack), int(p.top)
    d = ctx.form.d
    if not 1 <= top <= n_stack or n_classes * n_stack > d:
        raise ConfigError(f"config: need 1 <= adversarial.top <= adversarial.n_stack and n_classes*n_stack <= {d} (d_hidden)")
    strengths = torch.tensor([0.0] + list(p.strengths), dtype=torch.float64)

    # --- masks from the weights (plus training-image statistics for the sign and the edge pixels) ---
    idx, vals = eig.positive(n_stack)  # (classes, n_stack), most positive first
    if idx.shape[1] < n_stack:  # positive() never pads with negative eigenvalues
        raise ConfigError(f"config: some class has only {idx.shape[1]} positive eigenvalues, fewer than "
                          f"adversarial.n_stack={n_stack}; lower it")
    hidden = torch.stack([eig.vectors[c, idx[c]] for c in range(n_classes)]).reshape(n_classes * n_stack, -1)
    embed = ctx.form.embed[:, :n_pix] if ctx.form.embed is not None else torch.eye(hidden.shape[1], n_pix, dtype=hidden.dtype)
    keys, gram = build_keys(hidden, embed.to(hidden), n_classes, n_stack, data.train_x, data.train_y)
    readouts = hidden @ embed.to(hidden)
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    pinv_err = {"pinv_max_abs_offdiag": (gram.abs() * (1 - eye)).max().item(),
                "pinv_max_abs_diag_error": (gram.diagonal().abs() - 1).abs().max().item()}
    rare = data.train_x.mean(0) < float(p.edge_threshold)  # (n_pix,) pixels almost never on
    gen = torch.Generator(device="cpu").manual_seed(int(p.seed))

    n_eval = int(p.n_eval) if p.n_eval else len(data.test_x)
    x, y = data.test_x[:n_eval], data.test_y[:n_eval]
    with torch.no_grad():
        base = torch.cat([model(x[i : i + 4096]) for i in range(0, len(x), 4096)]).double()
    s = strengths.to(base.device)[:, None, None]  # (S, 1, 1)

    result: dict = {"eval_split": "test", "n_eval": n_eval, "strengths": strengths.tolist(), "n_stack": n_stack,
                    "top": top, "n_rare_pixels": int(rare.sum()), "clean_test_acc": (base.argmax(-1) == y).double().mean().item(),
                    **pinv_err}
    worst_quad_err = 0.0
    for variant in variants:
        curves = {"mask": {"acc": [], "target": []}, "baseline": {"acc": [], "target": []}}
        example = None
        for c in range(n_classes):
            for j in range(top):
                key = keys[c * n_stack + j]
                if variant == "dense":
                    mask = normalize(key, "dense")
                    baseline = mask[torch.randperm(n_pix, generator=gen).to(mask.device)]
                else:
                    mask = normalize(key * rare, "edge")
                    noise = torch.randn(n_pix, generator=gen, dtype=key.dtype).to(key.device) * rare
                    baseline = normalize(noise, "edge")
                for kind, m in (("mask", mask), ("baseline", baseline)):
                    m32 = m.to(x.dtype)
                    with torch.no_grad():
                        b, q = quadratic_logits(model, x, m32, base)
                    logits = base[None] + s * b[None] + s**2 * q[None]  # (S, N, classes)
                    pred = logits.argmax(-1)
                    curves[kind]["acc"].append((pred == y).double().mean(-1))
                    other = y != c
                    curves[kind]["target"].append((pred[:, other] == c).double().mean(-1))
                    if c == 0 and j == 0:  # exactness of the quadratic identity at the largest strength
                        with torch.no_grad():
                            direct = model(x[:512] + float(strengths[-1]) * m32).double()
                        err = (direct - logits[-1, :512]).abs().max().item() / max(direct.abs().max().item(), 1e-30)
                        worst_quad_err = max(worst_quad_err, err)
                        if example is None:
                            example = {"readout": readouts[c * n_stack + j], "lambda": vals[c, j].item(), "class": c}
                        example[kind] = m
        summary = {}
        for kind in ("mask", "baseline"):
            for metric in ("acc", "target"):
                mean, half = mean_ci(torch.stack(curves[kind][metric]))
                summary[f"{kind}_{metric}_mean"] = mean.tolist()
                summary[f"{kind}_{metric}_ci95"] = half.tolist()
        last = len(strengths) - 1
        summary["separated_at_max_strength"] = (summary["mask_acc_mean"][last] + summary["mask_acc_ci95"][last]
                                                < summary["baseline_acc_mean"][last] - summary["baseline_acc_ci95"][last])
        summary["baseline_name"] = "pixel-permuted mask" if variant == "dense" else "Gaussian values on the same pixels"
        summary["n_masks"] = len(curves["mask"]["acc"])
        result[variant] = summary
        _figure(out / f"adversarial_{variant}.png", variant, example, summary, strengths, x, y, data, ctx)
    result["quadratic_identity_rel_error"] = worst_quad_err
    if worst_quad_err > 1e-3:
        raise ExactnessError(f"{ctx.run_dir}: logits are not quadratic in the mask strength (relative error "
                             f"{worst_quad_err:.1e}); the model is not a pure bilinear form")
    write_json(out / "adversarial.json", result)
    return result


def _figure(path: Path, variant: str, ex: dict, summary: dict, strengths: torch.Tensor, x, y, data, ctx) -> None:
    """Fig 7 style: eigenvector, mask, perturbed and random-mask examples; accuracy and target-rate curves."""
    c, shape, s_max = ex["class"], data.image_shape, float(strengths[-1])
    sample = x[(y != c).nonzero()[0, 0]]  # the first test image of another class
    fig = plt.figure(figsize=(13, 3.2))
    grid = fig.add_gridspec(1, 6, width_ratios=[1, 1, 1, 1, 1.7, 1.7])
    plots.vector_image(fig.add_subplot(grid[0, 0]), ex["readout"], shape, f"class {data.classes[c]} eigvec 1\nλ={ex['lambda']:.3g}")
    plots.vector_image(fig.add_subplot(grid[0, 1]), ex["mask"], shape, f"{variant} mask")
    for k, (name, m) in enumerate((("masked", ex["mask"]), ("random mask", ex["baseline"]))):
        ax = fig.add_subplot(grid[0, 2 + k])
        img = (sample.double() + s_max * m.double()).to(ctx.device)
        with torch.no_grad():
            pred = ctx.model(img[None].float()).argmax(-1).item()
        arr = img[: int(np.prod(shape))].cpu().numpy().reshape(shape)
        ax.imshow(arr[0] if shape[0] == 1 else np.clip(arr.transpose(1, 2, 0), 0, 1), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{name}, s={s_max:g}\npredicted {data.classes[pred]}", fontsize=8)
    s = strengths.numpy()
    for k, (metric, label) in enumerate((("acc", "accuracy"), ("target", "misclassified as target"))):
        ax = fig.add_subplot(grid[0, 4 + k])
        for kind, color in (("mask", "tab:red"), ("baseline", "tab:gray")):
            mean, half = np.array(summary[f"{kind}_{metric}_mean"]), np.array(summary[f"{kind}_{metric}_ci95"])
            ax.plot(s, mean, color=color, label="eigenvector mask" if kind == "mask" else summary["baseline_name"])
            ax.fill_between(s, mean - half, mean + half, color=color, alpha=0.25)
        ax.set_xlabel("strength s")
        ax.set_ylabel(label)
        ax.legend(fontsize=6)
    fig.suptitle(f"E6 {variant} masks on {ctx.run_dir.name}: mean over {summary['n_masks']} masks (classes × top eigenvectors), "
                 "95% CI, test set", fontsize=9)
    fig.tight_layout()
    plots.save(fig, path)
