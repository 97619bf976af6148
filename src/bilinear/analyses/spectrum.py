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
from bilinear.report import Results, Row, claim


def important_count(values: torch.Tensor, frac: float = 0.1) -> tuple[int, int]:
    """Number of positive and negative eigenvalues with |lambda| >= frac * max |lambda| (C4's "about 10")."""
    thresh = frac * values.abs().max()
    return int((values >= thresh).sum()), int((values <= -thresh).sum())


def draw_class(eig, c: int, classes, shape, n_vec: int, n_bars: int, rank: float, path: Path) -> dict:
    """Fig 3 for class c: top n_vec positive (top row) and negative (bottom row) eigenvectors and the bars."""
    pos_idx, pos_val = eig.positive(n_vec)
    neg_idx, neg_val = eig.negative(n_vec)
    fig = plt.figure(figsize=(2.2 * n_vec + 3.6, 3.6))
    grid = fig.add_gridspec(2, n_vec + 2)
    for j in range(n_vec):
        plots.vector_image(fig.add_subplot(grid[0, j]), eig.input_vectors[c, pos_idx[c, j]], shape, f"+{j + 1}: {pos_val[c, j]:.3g}")
        plots.vector_image(fig.add_subplot(grid[1, j]), eig.input_vectors[c, neg_idx[c, j]], shape, f"-{j + 1}: {neg_val[c, j]:.3g}")
    plots.eigenvalue_bars(fig.add_subplot(grid[:, n_vec:]), eig.values[c], n_bars, f"class {classes[c]}: effective rank {rank:.1f}")
    fig.suptitle(f"Top positive (top row) and negative (bottom row) eigenvectors of class {classes[c]}", fontsize=10)
    plots.save(fig, path)
    _, top_pos = eig.positive(n_bars)
    _, top_neg = eig.negative(n_bars)
    return {"largest_positive": top_pos[c].tolist(), "largest_negative": top_neg[c].tolist(), "figure": path.name}


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
    checkpoint.write_json(out / "spectrum.json", summary)
    return summary


@claim("C4")
def spectrum_claim(res: Results) -> Row | None:
    paper = "effective rank well below d_hidden; about 10 important eigenvalues per sign (Fig 3, digit 5)"
    parts, figs, ok = [], [], []
    for exp in ("mnist", "fmnist"):
        m = (res.analysis(exp) or {}).get("spectrum")
        if not m:
            continue
        pos = sorted(m["n_important_positive"].values())
        neg = sorted(m["n_important_negative"].values())
        med = lambda v: v[len(v) // 2]  # noqa: E731
        parts.append(f"{exp} (d {m['d_hidden']}): effective rank mean {m['effective_rank_mean']:.1f} "
                     f"(range {min(m['effective_rank'].values()):.1f}–{max(m['effective_rank'].values()):.1f}); eigenvalues "
                     f"with |λ| ≥ 0.1 max per class, median +{med(pos)} / −{med(neg)}")
        ok.append(m["effective_rank_mean"] < 0.2 * m["d_hidden"] and 3 <= med(pos) <= 30 and 3 <= med(neg) <= 30)
        for name in m.get("shown", {}).values():
            f = res.figure(exp, "main", "analysis", "spectrum", name["figure"])
            if f:
                figs.append(f)
    if not parts:
        return None
    ref = "5-seed study (d_hidden 256), effective rank none/wd/noise/both: MNIST 38.5/15.5/82.2/26.0, FMNIST 47.2/11.8/87.7/20.1"
    return Row("C4", paper, "; ".join(parts), "reproduced" if all(ok) else "partly" if any(ok) else "NOT reproduced",
               reference=ref, figures=figs,
               notes="'Important' = |λ| at least 10% of the class's largest |λ|; effective rank = (‖λ‖₁/‖λ‖₂)².")
