"""E3 / Fig 4 and Appendix E: overfitting shows in the eigenvectors (claims C5 and C6).

Three analyses share one set of measurements per run (``eigenvector_stats``):
    overfitting     (one run)   the diagnostic a user runs on a model: per class, the effective pixel count
                                of its top eigenvectors, their mass on rarely-on pixels, and the train-test
                                gap, with a one-line verdict and a figure with the rarely-on pixels outlined.
    noise_sweep     (across)    Fig 4: one class's top eigenvector across noise levels, with accuracies.
    sparsity_grid   (across)    Appendix E: eigenvalue effective rank and eigenvector effective pixel count
                                over a weight decay x noise grid, as two heatmaps.

"Rarely-on" pixels are those whose mean training intensity is below ``overfitting.rare_threshold``
(0.01, PAPER.md E3): the border and corners MNIST almost never touches. Mass is the sum of squares of a
pixel-space eigenvector (``E^T v``), so the fraction is invariant to the eigenvector's sign and scale.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from bilinear import plots
from bilinear.analyses import register, write_json
from bilinear.decompose import Eigen, effective_rank
from bilinear.errors import ConfigError

EXPERIMENT = "overfitting"  # the reproduce experiment (wd x noise grid) that feeds C5 and C6


def pixel_means(train_x: Tensor) -> Tensor:
    """Mean training intensity per pixel, (N, n_pix) -> (n_pix,)."""
    return train_x.double().mean(0)


def eigenvector_stats(eig: Eigen, pixel_mean: Tensor, n_top: int, rare_threshold: float) -> dict[str, Tensor]:
    """Overfitting proxies of the top-``n_top`` eigenvectors (by |lambda|) of every class (PAPER.md E3).

    Args:
        eig: per-class eigendecomposition with pixel-space ``input_vectors`` (C, r, n >= n_pix).
        pixel_mean: (n_pix,) mean training intensity per pixel.
    Returns:
        effective_pixels: (C, n_top) ``(||v||_1/||v||_2)^2`` of each pixel-space eigenvector;
        rare_mass: (C, n_top) fraction of sum(v^2) on rarely-on pixels;
        rare_mask: (n_pix,) bool, the rarely-on pixels.
    """
    n_pix = pixel_mean.shape[0]
    v = eig.input_vectors[:, :n_top, :n_pix].double()  # homogeneous coordinate (biases) dropped
    rare = pixel_mean.to(v.device) < rare_threshold
    sq = v.square()
    return {"effective_pixels": effective_rank(v), "rare_mass": sq[..., rare].sum(-1) / sq.sum(-1).clamp_min(1e-300),
            "rare_mask": rare}


def _verdict(rare_mass: float, rare_fraction: float, gap: float, ocfg) -> tuple[bool, str]:
    """One line a user can act on, with the numbers that back it. The eigenvectors decide (E3's point: overfitting
    is visible in the weights); the train-test gap is reported beside them and flagged on its own when large."""
    mass = (f"{100 * rare_mass:.1f}% of the top eigenvectors' mass lies on rarely-on pixels (limit "
            f"{100 * ocfg.rare_mass_limit:.0f}%; they are {100 * rare_fraction:.0f}% of the pixels)")
    gap_s = f"clean train-test accuracy gap {100 * gap:.2f} points (limit {100 * ocfg.gap_limit:.1f})"
    if rare_mass > ocfg.rare_mass_limit:
        return True, f"OVERFITTING: {mass}; {gap_s}."
    if gap > ocfg.gap_limit:
        return False, f"GAP ONLY: {gap_s}, but the eigenvectors do not lean on outlying pixels: {mass}."
    return False, f"no sign of overfitting: {mass}; {gap_s}."


@register("overfitting", kinds=("image",))
def overfitting(ctx, out: Path) -> dict:
    """Per-class overfitting diagnostic of one run (E3): numbers, a verdict, and a figure."""
    ocfg, data = ctx.cfg.overfitting, ctx.image_data
    eig = ctx.class_eigen
    mean = pixel_means(data.train_x)
    st = eigenvector_stats(eig, mean, ocfg.n_top, ocfg.rare_threshold)
    rare_fraction = st["rare_mask"].double().mean().item()
    gap = ctx.metrics["train_acc"] - ctx.metrics["test_acc"]
    per_class_pix = st["effective_pixels"].mean(-1)
    per_class_mass = st["rare_mass"].mean(-1)
    overfits, verdict = _verdict(per_class_mass.mean().item(), rare_fraction, gap, ocfg)

    C, k = st["effective_pixels"].shape
    n_pix = mean.shape[0]
    vecs = eig.input_vectors[:, :k, :n_pix].reshape(C * k, n_pix)
    titles = [f"{data.classes[c]} #{i + 1} λ={eig.values[c, i]:.2g}\npix {st['effective_pixels'][c, i]:.0f}, "
              f"rare {100 * st['rare_mass'][c, i]:.0f}%" for c in range(C) for i in range(k)]
    _, h, w = data.image_shape
    outline = st["rare_mask"][: h * w].reshape(h, w) if data.image_shape[0] == 1 else None
    fig = plots.vector_grid(vecs, data.image_shape, titles, ncols=k, scale=1.5, outline=outline,
                            suptitle=f"Top {k} eigenvectors by |λ| per class; black contour: rarely-on pixels "
                                     f"(mean intensity < {ocfg.rare_threshold})\n{verdict}")
    plots.save(fig, out / "overfitting.png")

    result = {
        "verdict": verdict, "overfits": overfits,
        "effective_pixels": dict(zip(data.classes, per_class_pix.tolist())),
        "effective_pixels_mean": per_class_pix.mean().item(),
        "rare_mass": dict(zip(data.classes, per_class_mass.tolist())), "rare_mass_mean": per_class_mass.mean().item(),
        "rare_pixel_fraction": rare_fraction, "n_pixels": n_pix,
        "train_acc": ctx.metrics["train_acc"], "test_acc": ctx.metrics["test_acc"], "train_test_gap": gap,
        "n_top": k, "rare_threshold": ocfg.rare_threshold,
        "noise_std": float(ctx.run_cfg.train.noise_std), "weight_decay": float(ctx.run_cfg.train.weight_decay),
    }
    write_json(out / "overfitting.json", result)
    print(f"[overfitting] {ctx.run_dir}: {verdict}", flush=True)
    return result


# --- across runs ---------------------------------------------------------------------------------------


def run_summary(ctx, ocfg, class_id: int | None = None) -> dict:
    """The E3 numbers of one run, for sweeps; frees the run's dataset afterwards (sweeps hold many runs)."""
    eig = ctx.class_eigen
    mean = pixel_means(ctx.image_data.train_x)
    st = eigenvector_stats(eig, mean, ocfg.n_top, ocfg.rare_threshold)
    s = {
        "run": ctx.run_dir.name, "noise_std": float(ctx.run_cfg.train.noise_std),
        "weight_decay": float(ctx.run_cfg.train.weight_decay), "seed": int(ctx.run_cfg.seed),
        "d_hidden": int(ctx.run_cfg.model.d_hidden), "test_acc": ctx.metrics["test_acc"], "train_acc": ctx.metrics["train_acc"],
        "effective_rank": effective_rank(eig.values).mean().item(),
        "effective_pixels": st["effective_pixels"].mean().item(), "rare_mass": st["rare_mass"].mean().item(),
        "rare_mask": st["rare_mask"], "image_shape": ctx.image_data.image_shape, "classes": ctx.image_data.classes,
    }
    if class_id is not None:
        idx, vals = eig.positive(1)
        s["top_vector"] = eig.input_vectors[class_id, idx[class_id, 0], : mean.shape[0]].cpu()
        s["top_value"] = vals[class_id, 0].item()
    ctx.__dict__.pop("image_data", None)
    return s


def _spearman(x, y) -> float:
    """Rank correlation (no ties correction needed for the grids here); nan when either is constant."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _plain(s: dict) -> dict:
    return {k: v for k, v in s.items() if k not in ("rare_mask", "image_shape", "classes", "top_vector")}


@register("noise_sweep", kinds=("image",), scope="cross")
def noise_sweep(contexts, out: Path, cfg) -> dict:
    """Fig 4: the top positive eigenvector of one class at each noise level (same wd), with accuracies."""
    ncfg, ocfg = cfg.noise_sweep, cfg.overfitting
    c = int(ncfg.class_id)
    wds = sorted({float(x.run_cfg.train.weight_decay) for x in contexts})
    wd = float(ncfg.weight_decay) if float(ncfg.weight_decay) in wds else wds[-1]
    chosen = [x for x in contexts if float(x.run_cfg.train.weight_decay) == wd]
    runs = sorted((run_summary(x, ocfg, c) for x in chosen), key=lambda s: (s["noise_std"], s["seed"]))
    if len(runs) < 2:
        raise ConfigError(f"config: noise_sweep needs at least two runs with weight decay {wd}, got {len(runs)}")
    first = runs[0]
    if not 0 <= c < len(first["classes"]):
        raise ConfigError(f"config: noise_sweep.class_id must be in 0..{len(first['classes']) - 1}, got {c}")
    noise = np.array([s["noise_std"] for s in runs])
    pix = np.array([s["effective_pixels"] for s in runs])
    mass = np.array([s["rare_mass"] for s in runs])

    n = len(runs)
    fig = plt.figure(figsize=(1.9 * n, 4.6))
    grid = fig.add_gridspec(2, n, height_ratios=[1.1, 1])
    _, h, w = first["image_shape"]
    outline = first["rare_mask"][: h * w].reshape(h, w).cpu() if first["image_shape"][0] == 1 else None
    for j, s in enumerate(runs):
        plots.vector_image(fig.add_subplot(grid[0, j]), s["top_vector"], s["image_shape"],
                           f"noise {s['noise_std']:g}\ntest {100 * s['test_acc']:.2f}%", outline=outline)
    ax = fig.add_subplot(grid[1, : max(1, n // 2)])
    ax.plot(noise, pix, "o-")
    ax.set_xlabel("input noise std (absolute)")
    ax.set_ylabel("effective pixel count\n(top-5 by |λ|, mean)", fontsize=8)
    ax2 = fig.add_subplot(grid[1, max(1, n // 2):]) if n > 1 else ax.twinx()
    ax2.plot(noise, 100 * mass, "o-", color="tab:red")
    ax2.set_xlabel("input noise std (absolute)")
    ax2.set_ylabel("% mass on rarely-on pixels", fontsize=8)
    fig.suptitle(f"Top positive eigenvector of class {first['classes'][c]} across noise (wd {wd:g}); "
                 f"contour: rarely-on pixels", fontsize=9)
    fig.tight_layout()
    plots.save(fig, out / "noise_sweep.png")

    result = {"class_id": c, "weight_decay": wd, "runs": [_plain(s) for s in runs],
              "noise_std": noise.tolist(), "effective_pixels": pix.tolist(), "rare_mass": mass.tolist(),
              "test_acc": [s["test_acc"] for s in runs], "train_acc": [s["train_acc"] for s in runs],
              "spearman_effective_pixels_vs_noise": _spearman(noise, pix),
              "spearman_rare_mass_vs_noise": _spearman(noise, mass)}
    write_json(out / "noise_sweep.json", result)
    return result


@register("sparsity_grid", kinds=("image",), scope="cross")
def sparsity_grid(contexts, out: Path, cfg) -> dict:
    """Appendix E: eigenvalue effective rank and eigenvector effective pixel count over wd x noise (mean over seeds)."""
    ocfg = cfg.overfitting
    runs = [run_summary(x, ocfg) for x in contexts]
    wds = sorted({s["weight_decay"] for s in runs})
    noises = sorted({s["noise_std"] for s in runs})
    cells: dict[tuple[float, float], list[dict]] = defaultdict(list)
    for s in runs:
        cells[(s["weight_decay"], s["noise_std"])].append(s)

    def grid_of(key: str) -> np.ndarray:
        g = np.full((len(wds), len(noises)), np.nan)
        for (wd, nz), ss in cells.items():
            g[wds.index(wd), noises.index(nz)] = np.mean([s[key] for s in ss])
        return g

    rank, pix, acc = grid_of("effective_rank"), grid_of("effective_pixels"), grid_of("test_acc")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    kw = dict(row_labels=[f"{v:g}" for v in wds], col_labels=[f"{v:g}" for v in noises], xlabel="input noise std",
              ylabel="weight decay")
    plots.heatmap(axes[0], rank, title="eigenvalue effective rank (mean over classes)", fmt="{:.1f}", **kw)
    plots.heatmap(axes[1], pix, title="eigenvector effective pixel count (top-5 by |λ|)", fmt="{:.0f}", **kw)
    plots.heatmap(axes[2], 100 * acc, title="test accuracy %", fmt="{:.2f}", **kw)
    fig.tight_layout()
    plots.save(fig, out / "sparsity_grid.png")

    def effect(g: np.ndarray, axis: int) -> float:
        """Range of the means along one factor: how much that factor moves the metric."""
        m = np.nanmean(g, axis=axis)
        return float(np.nanmax(m) - np.nanmin(m)) if m.size > 1 else 0.0

    flat = lambda key: np.array([s[key] for s in runs])  # noqa: E731
    result = {
        "weight_decay": wds, "noise_std": noises, "effective_rank": rank.tolist(), "effective_pixels": pix.tolist(),
        "test_acc": acc.tolist(), "n_runs": len(runs),
        # range of the row/column means: the main effect of each factor
        "effective_rank_effect_of_wd": effect(rank, 1), "effective_rank_effect_of_noise": effect(rank, 0),
        "effective_pixels_effect_of_wd": effect(pix, 1), "effective_pixels_effect_of_noise": effect(pix, 0),
        "spearman_rank_vs_wd": _spearman(flat("weight_decay"), flat("effective_rank")),
        "spearman_rank_vs_noise": _spearman(flat("noise_std"), flat("effective_rank")),
        "spearman_pixels_vs_wd": _spearman(flat("weight_decay"), flat("effective_pixels")),
        "spearman_pixels_vs_noise": _spearman(flat("noise_std"), flat("effective_pixels")),
        "runs": [_plain(s) for s in runs],
    }
    write_json(out / "sparsity_grid.json", result)
    return result


# --- claims ---------------------------------------------------------------------------------------------
