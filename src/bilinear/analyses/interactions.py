"""E11 (PAPER.md §3, Appendices N, O): feature interactions of a bilinear MLP through its input and output SAEs.

For each output-SAE feature a: Q_a = e_a . B (e_a the output SAE's encoder row), re-expressed in the input
SAE's decoder basis, Q~_a = sym(D_in^T Q_a D_in). Self-interactions are its diagonal; the cross-interaction
of input features b, c is 2 Q~_bc. Output features are ranked by the sum of the top-2 |lambda| of Q~_a and by
their number of outlier cross-interactions (|2 Q~_bc| above ``outlier_sigma`` stds of all cross-interactions).
Matrices are built chunk by chunk from W, V, P and the SAE rows; neither the (d_out, d, d) tensor nor all
Q~ at once are ever held.

    python -m analyze ckpt=<lm run> saes=[<mlp_in SAE>,<mlp_out SAE>] analyses=[interactions]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bilinear import checkpoint, plots
from bilinear.analyses import register, write_json
from bilinear.claims_table import paper
from bilinear.analyses.lowrank import decomposition_dtype
from bilinear.analyses.sae_context import SAERun, require_saes, sae_pair
from bilinear.decompose import interaction_matrices
from bilinear.features import BasisMap, cross_interactions, sae_basis_eigvals, sae_basis_matrices

KEEP_TOP_CROSS = 256  # largest |cross-interactions| kept per output feature (outlier counts saturate here)
HIST_SAMPLE = 4096  # cross-interactions sampled per output feature for the histogram


@dataclass
class InteractionStats:
    """Per output feature (m,): top-2 |lambda| sum, extreme eigenvalues, largest |self| and |cross|, outliers."""

    top2: torch.Tensor
    lam_max: torch.Tensor
    lam_min: torch.Tensor
    max_self: torch.Tensor
    max_cross: torch.Tensor
    top_cross: torch.Tensor  # (m, KEEP_TOP_CROSS) sorted |2 Q~_bc| values
    self_sample: torch.Tensor  # all self-interactions (m * n_in,)
    cross_sample: torch.Tensor  # sampled cross-interactions
    cross_std: float  # std of every cross-interaction of every output feature
    self_std: float

    def n_outliers(self, sigma: float) -> torch.Tensor:
        return (self.top_cross > sigma * self.cross_std).sum(1)


def output_feature_form(model, layer: int):
    d = model.embed.weight.shape[1]
    return model.bilinear_form(layer).to(dtype=decomposition_dtype(d))


def feature_matrices(model, sae_in: SAERun, sae_out: SAERun, features) -> torch.Tensor:
    """Q~_a (len(features), n_in, n_in) for the given output features."""
    form = output_feature_form(model, sae_out.layer)
    rows = sae_out.model.W_enc.detach()[features].to(form.W.dtype)
    return sae_basis_matrices(interaction_matrices(form, rows), sae_in.model.W_dec.detach())


@torch.no_grad()
def interaction_stats(model, sae_in: SAERun, sae_out: SAERun, chunk: int = 16, seed: int = 0) -> InteractionStats:
    form = output_feature_form(model, sae_out.layer)
    D = sae_in.model.W_dec.detach().to(form.W.dtype)
    basis = BasisMap.of(D)
    rows = sae_out.model.W_enc.detach().to(form.W.dtype)
    gen = torch.Generator().manual_seed(seed)
    parts: dict[str, list] = {k: [] for k in ("top2", "lam_max", "lam_min", "max_self", "max_cross", "top_cross",
                                               "self", "cross")}
    ssq_cross = ssq_self = 0.0
    n_cross = n_self = 0
    for start in range(0, rows.shape[0], chunk):
        Q = interaction_matrices(form, rows[start : start + chunk])  # (c, d, d)
        lam = sae_basis_eigvals(Q, basis)  # the spectrum of Q~ that can be non-zero
        mag = lam.abs().sort(-1, descending=True).values
        Qt = sae_basis_matrices(Q, D)
        self_i, cross = cross_interactions(Qt)
        parts["top2"].append(mag[:, :2].sum(-1))
        parts["lam_max"].append(lam[:, -1])
        parts["lam_min"].append(lam[:, 0])
        parts["max_self"].append(self_i.abs().max(-1).values)
        parts["max_cross"].append(cross.abs().max(-1).values)
        parts["top_cross"].append(cross.abs().topk(min(KEEP_TOP_CROSS, cross.shape[1]), dim=-1).values)
        parts["self"].append(self_i.flatten())
        pick = torch.randint(0, cross.shape[1], (min(HIST_SAMPLE, cross.shape[1]),), generator=gen)
        parts["cross"].append(cross[:, pick].flatten())
        ssq_cross += float(cross.double().square().sum())
        n_cross += cross.numel()
        ssq_self += float(self_i.double().square().sum())
        n_self += self_i.numel()
    cat = {k: torch.cat(v).double().cpu() for k, v in parts.items()}
    return InteractionStats(cat["top2"], cat["lam_max"], cat["lam_min"], cat["max_self"], cat["max_cross"],
                            cat["top_cross"], cat["self"], cat["cross"],
                            cross_std=(ssq_cross / n_cross) ** 0.5, self_std=(ssq_self / n_self) ** 0.5)


def cached_stats(ctx) -> tuple[SAERun, SAERun, InteractionStats]:
    """The pair of SAEs and their interaction statistics, computed once per analyze call."""
    store = ctx.__dict__.setdefault("_interaction_stats", {})
    if "v" not in store:
        sae_in, sae_out = sae_pair(require_saes(ctx))
        store["v"] = (sae_in, sae_out, interaction_stats(ctx.model, sae_in, sae_out))
    return store["v"]


@register("interactions", kinds=("lm",), default=False)
def interactions(ctx, out: Path) -> dict:
    cfg = ctx.cfg.interactions
    sae_in, sae_out, st = cached_stats(ctx)
    n_out = st.n_outliers(float(cfg.outlier_sigma))
    top = int(cfg.top_ranked)
    by_top2 = st.top2.argsort(descending=True)[:top].tolist()
    by_outliers = n_out.argsort(descending=True, stable=True)[:top].tolist()
    rows = [{"feature": a, "top2_abs_lambda": float(st.top2[a]), "lambda_max": float(st.lam_max[a]),
             "lambda_min": float(st.lam_min[a]), "max_abs_self": float(st.max_self[a]),
             "max_abs_cross": float(st.max_cross[a]), "n_outliers": int(n_out[a])} for a in range(len(st.top2))]
    checkpoint.write_csv(out / "output_features.csv", rows)
    result = {"layer": sae_out.layer, "input_sae": str(sae_in.dir), "output_sae": str(sae_out.dir),
              "n_input_features": int(sae_in.model.n_latents), "n_output_features": int(sae_out.model.n_latents),
              "cross_std": st.cross_std, "self_std": st.self_std, "outlier_sigma": float(cfg.outlier_sigma),
              "outlier_threshold": float(cfg.outlier_sigma) * st.cross_std,
              "top_by_top2": [rows[a] for a in by_top2], "top_by_outliers": [rows[a] for a in by_outliers],
              "median_top2": float(st.top2.median()), "paper_cross_std": paper("C12")["cross_std"]}
    _plot(out, st, n_out, result)
    write_json(out / "interactions.json", result)
    return result


def _plot(out: Path, st: InteractionStats, n_out: torch.Tensor, result: dict) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    lim = float(max(st.self_sample.abs().max(), st.cross_sample.abs().max()))
    bins = np.linspace(-lim, lim, 101)
    axes[0].hist(st.cross_sample.numpy(), bins=bins, alpha=0.6, label=f"cross 2Q~_bc (sampled; std {st.cross_std:.2g})")
    axes[0].hist(st.self_sample.numpy(), bins=bins, alpha=0.6, label=f"self Q~_bb (std {st.self_std:.2g})")
    axes[0].set(yscale="log", xlabel="interaction", ylabel="count", title="E11: self vs cross interactions")
    axes[0].legend(fontsize=7)
    axes[1].scatter(st.top2.numpy(), n_out.numpy(), s=6)
    for r in result["top_by_top2"][:5]:
        axes[1].annotate(str(r["feature"]), (r["top2_abs_lambda"], r["n_outliers"]), fontsize=7)
    axes[1].set(xlabel="top-2 |λ| of Q~_a", ylabel=f"outlier interactions (> {result['outlier_sigma']:g} std)",
                title="output-feature rankings")
    plots.save(fig, out / "interactions.png")
