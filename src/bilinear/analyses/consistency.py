"""E4 / Fig 5A and Appendix F: eigenvectors are consistent across seeds and sizes (claim C7).

For every pair of runs of the same d_hidden with DIFFERENT seeds (never a run with itself: the authors'
script included self-pairs, which inflated the result, PAPER.md §5), the i-th eigenvectors (by |lambda|,
in pixel space) of each class are compared with the sign-invariant ``decompose.abs_cosine``, for
i = 1..n_vectors, then averaged over classes. The band is a bootstrap confidence interval of the mean
over seed pairs. Across sizes, the top eigenvectors are compared between every pair of runs of two sizes.

Beside it, the number the paper reports is computed the way the authors' figure script computes it
(:func:`authors_metric`; read from their public script, no code copied): their ``decompose()`` returns
``torch.linalg.eigh``'s ascending order and the script keeps its first 20, so "eigenvector i" is the i-th MOST
NEGATIVE eigenvalue's vector; the seed pairs are ``triu_indices(5, 5)``, the diagonal included, so 5 of the 15
pairs are a run with itself (|cos| = 1); the mean is over pairs x classes with a 90% t-interval over those
samples. And the order swaps that an index-matched comparison by |lambda| suffers are counted, not guessed
(:func:`swap_stats`).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from statistics import NormalDist
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from bilinear import plots
from bilinear.analyses import register, write_json
from bilinear.decompose import abs_cosine, abs_cosine_matrix
from bilinear.errors import ConfigError

EXPERIMENT = "consistency"


def pair_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|cos| of the i-th eigenvectors of two runs, averaged over classes: (C, r, n) x (C, r, n) -> (r,)."""
    return abs_cosine(a, b).mean(0)


def best_match_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each of a's eigenvectors, the best |cos| with any of b's top ones, averaged over classes: -> (r,).

    A diagnostic beside the paper's index-matched number: it tells a near-degenerate swap of order
    (same vectors, different |lambda| rank) apart from vectors that really differ.
    """
    return abs_cosine_matrix(a, b).amax(-1).mean(0)


def bootstrap_band(values: np.ndarray, confidence: float, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap CI of the mean over the first axis: values (pairs, r) -> (lo (r,), hi (r,))."""
    if len(values) < 2:
        return values[0], values[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(1)  # (n_boot, r)
    a = (1 - confidence) / 2
    return np.quantile(means, a, axis=0), np.quantile(means, 1 - a, axis=0)


def run_pairs(runs: list[dict], same_size: bool) -> list[tuple[int, int]]:
    """Index pairs of distinct runs; within one size only pairs of different seeds count as seed pairs."""
    pairs = []
    for i, j in itertools.combinations(range(len(runs)), 2):
        if runs[i]["dir"] == runs[j]["dir"]:
            continue  # the same run given twice is a self-pair
        if same_size and runs[i]["seed"] == runs[j]["seed"]:
            continue
        pairs.append((i, j))
    return pairs


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile by the Cornish-Fisher expansion around the normal (< 0.3% off for df >= 5)."""
    if df <= 0:
        return float("nan")
    z = NormalDist().inv_cdf(p)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + (
        3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)


def authors_metric(group: list[dict], r: int, confidence: float) -> dict:
    """Fig 5A's number as the authors' script computes it, for the runs of one size.

    The i-th vectors in eigh's ascending order (``ascending``: i = 1 is the most negative eigenvalue's), |cos| for
    every pair a <= b of runs (self-pairs included), samples = pairs x classes; mean and a t-interval at
    ``confidence`` over the samples (their ``conf_interval``). Returns the curve (r,) and its i = 1 value.
    """
    pairs = list(itertools.combinations_with_replacement(range(len(group)), 2))
    samples = np.concatenate([abs_cosine(group[i]["ascending"][:, :r], group[j]["ascending"][:, :r]).numpy()
                              for i, j in pairs])  # (pairs * classes, r)
    n = len(samples)
    mean = samples.mean(0)
    half = t_quantile(0.5 + confidence / 2, n - 1) * samples.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros_like(mean)
    return {"mean": mean.tolist(), "lo": (mean - half).tolist(), "hi": (mean + half).tolist(), "top1": float(mean[0]),
            "n_pairs": len(pairs), "n_self_pairs": sum(i == j for i, j in pairs), "n_samples": n, "confidence": confidence}


def swap_stats(group: list[dict], pairs: list[tuple[int, int]], near_equal: float) -> dict:
    """How often the top eigenvector by |lambda| of one seed is found at ANOTHER rank in the other seed.

    Per distinct seed pair, class and direction (a -> b and b -> a): the |cos| of a's top vector with each of b's
    top-r; a swap is when the best match is not b's rank 1. Also counted: opposite signs of the two top
    eigenvalues (a + and a - eigenvalue of nearly equal |lambda| trading places) and runs/classes whose second
    |lambda| is within ``near_equal`` of the first. The index-matched mean against the best-match mean says how much
    of the shortfall undoing the swaps would recover.
    """
    swapped, sign_flip, matched, best = [], [], [], []
    for i, j in pairs:
        for a, b in ((group[i], group[j]), (group[j], group[i])):
            cos = abs_cosine_matrix(a["vectors"][:, :1], b["vectors"])[:, 0]  # (C, r)
            swapped += (cos.argmax(-1) != 0).tolist()
            sign_flip += (torch.sign(a["values"][:, 0]) != torch.sign(b["values"][:, 0])).tolist()
            matched += cos[:, 0].tolist()
            best += cos.amax(-1).tolist()
    sw, flip, m = np.array(swapped), np.array(sign_flip), np.array(matched)
    ratio = torch.cat([x["values"][:, 1].abs() / x["values"][:, 0].abs() for x in group])
    return {"n_cases": len(sw), "swap_fraction": float(sw.mean()), "sign_disagree_fraction": float(flip.mean()),
            "sign_disagree_given_swap": float(flip[sw].mean()) if sw.any() else None,
            "near_equal_ratio": near_equal, "near_equal_fraction": float((ratio >= near_equal).double().mean()),
            "cos_no_swap": float(m[~sw].mean()) if (~sw).any() else None, "cos_swap": float(m[sw].mean()) if sw.any() else None,
            "index_matched": float(m.mean()), "best_match": float(np.mean(best))}


def collect_vectors(contexts, n_vectors: int) -> list[dict]:
    """Per run: size, seed and its top-n pixel-space eigenvectors by |lambda|, (C, n, n_pix) float64, their
    eigenvalues (C, n), and the first n in eigh's ascending order (``ascending``, for :func:`authors_metric`)."""
    runs = []
    for ctx in contexts:
        eig = ctx.class_eigen
        n_pix = ctx.image_data.train_x.shape[1]
        ascending = eig.values.argsort(dim=-1)[:, :n_vectors]  # torch.linalg.eigh's order: most negative first
        runs.append({"dir": str(ctx.run_dir.resolve()), "name": ctx.run_dir.name, "seed": int(ctx.run_cfg.seed),
                     "size": int(ctx.run_cfg.model.d_hidden),
                     "vectors": eig.input_vectors[:, :n_vectors, :n_pix].double().cpu(),
                     "values": eig.values[:, :n_vectors].double().cpu(),
                     "ascending": torch.stack([eig.input_vectors[c, ascending[c], :n_pix] for c in range(len(ascending))])
                     .double().cpu(),
                     # the most positive eigenvector per class (C, 1, n): immune to a +/- swap of near-equal |lambda|
                     "top_positive": torch.stack([eig.input_vectors[c, i, :n_pix] for c, i in
                                                  enumerate(eig.positive(1)[0][:, 0].tolist())])[:, None].double().cpu()})
        ctx.__dict__.pop("image_data", None)
    return runs


@register("consistency", kinds=("image",), scope="cross")
def consistency(contexts, out: Path, cfg) -> dict:
    """Fig 5A and Appendix F: seed-pair similarity per size, the cross-size matrix, similarity to a reference size."""
    ccfg = cfg.consistency
    runs = collect_vectors(contexts, int(ccfg.n_vectors))
    r = min(x["vectors"].shape[1] for x in runs)
    by_size: dict[int, list[dict]] = defaultdict(list)
    for x in runs:
        by_size[x["size"]].append(x)
    sizes = sorted(by_size)

    per_size, curves = {}, {}
    for d in sizes:
        group = by_size[d]
        pairs = run_pairs(group, same_size=True)
        if not pairs:
            continue
        sims = np.stack([pair_similarity(group[i]["vectors"][:, :r], group[j]["vectors"][:, :r]).numpy() for i, j in pairs])
        best = np.stack([best_match_similarity(group[i]["vectors"][:, :r], group[j]["vectors"][:, :r]).numpy() for i, j in pairs])
        pos = np.array([pair_similarity(group[i]["top_positive"], group[j]["top_positive"]).item() for i, j in pairs])
        lo, hi = bootstrap_band(sims, float(ccfg.confidence), int(ccfg.n_bootstrap))
        curves[d] = (sims.mean(0), lo, hi)
        per_size[str(d)] = {"n_runs": len(group), "n_pairs": len(pairs), "seeds": sorted(x["seed"] for x in group),
                            "mean": sims.mean(0).tolist(), "lo": lo.tolist(), "hi": hi.tolist(),
                            "top1": float(sims[:, 0].mean()), "top1_lo": float(lo[0]), "top1_hi": float(hi[0]),
                            "top1_pairs": sims[:, 0].tolist(), "top1_best_match": float(best[:, 0].mean()),
                            "top_positive": float(pos.mean()),
                            "most_negative": {"top1": float(np.mean([pair_similarity(group[i]["ascending"][:, :1],
                                                                                     group[j]["ascending"][:, :1]).item()
                                                                     for i, j in pairs]))},
                            "paper_metric": authors_metric(group, r, float(ccfg.confidence)),
                            "swaps": swap_stats(group, pairs, float(ccfg.near_equal_ratio))}
    if not per_size:
        raise ConfigError("config: consistency needs at least two runs of the same d_hidden with different seeds")

    # Appendix F: top-eigenvector similarity between every pair of sizes (diagonal = seed pairs of one size)
    matrix = np.full((len(sizes), len(sizes)), np.nan)
    for a, b in itertools.combinations_with_replacement(range(len(sizes)), 2):
        A, B = by_size[sizes[a]], by_size[sizes[b]]
        if a == b:
            vals = [pair_similarity(A[i]["vectors"][:, :1], A[j]["vectors"][:, :1]).item() for i, j in run_pairs(A, True)]
        else:
            vals = [pair_similarity(x["vectors"][:, :1], y["vectors"][:, :1]).item() for x in A for y in B]
        if vals:
            matrix[a, b] = matrix[b, a] = float(np.mean(vals))
    ref = int(ccfg.reference_size)
    ref = min(sizes, key=lambda s: (abs(s - ref), s))  # nearest size when the reference was not trained
    to_ref = {}
    for d in sizes:
        if d == ref:
            continue
        sims = np.stack([pair_similarity(x["vectors"][:, :r], y["vectors"][:, :r]).numpy() for x in by_size[d] for y in by_size[ref]])
        to_ref[str(d)] = sims.mean(0).tolist()

    i = np.arange(1, r + 1)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for d, (mean, lo, hi) in curves.items():
        plots.line_band(axes[0], i, mean, lo, hi, label=f"d={d} ({per_size[str(d)]['n_pairs']} pairs)", marker="o", ms=3)
    axes[0].set_xlabel("eigenvector i (by |λ|)")
    axes[0].set_ylabel(f"|cos| between seeds (mean over classes)\nband: {100 * ccfg.confidence:.0f}% CI over seed pairs", fontsize=8)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    axes[0].set_title("Fig 5A: consistency across seeds (no self-pairs)", fontsize=9)
    plots.heatmap(axes[1], matrix, sizes, sizes, title="top-eigenvector |cos| between sizes", fmt="{:.2f}",
                  xlabel="d_hidden", ylabel="d_hidden", vmin=0.0, vmax=1.0)
    for d, curve in to_ref.items():
        axes[2].plot(i, curve, "o-", ms=3, label=f"d={d}")
    axes[2].set_ylim(0, 1)
    axes[2].set_xlabel("eigenvector i (by |λ|)")
    axes[2].set_ylabel(f"|cos| with size {ref}", fontsize=8)
    axes[2].set_title(f"Appendix F: similarity to d_hidden {ref}", fontsize=9)
    if to_ref:
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, out / "consistency.png")

    result = {"sizes": sizes, "n_vectors": r, "per_size": per_size, "size_matrix": matrix.tolist(), "reference_size": ref,
              "similarity_to_reference": to_ref, "confidence": float(ccfg.confidence),
              "top1_by_size": {d: v["top1"] for d, v in per_size.items()}}
    write_json(out / "consistency.json", result)
    return result
