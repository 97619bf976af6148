"""E12 / Fig 9, claim C13: output SAE features are low rank in the MLP's input space.

For each output-SAE feature a (encoder row e_a), Q_a = e_a . B on mlp_in is eigendecomposed; the top-k
eigenpairs by |lambda| predict ``sum_{i<=k} lambda_i (v_i . x)^2`` from real mlp_in activations x, which is
compared (Pearson) with the SAE's activation of a, **only where a is active**, without the first position,
for features active more than ``min_active`` times (PAPER.md E12). At full rank the prediction is
``e_a . MLP(x)`` exactly; that identity is checked and its error recorded (claim C1).

    python -m analyze ckpt=<lm run> saes=[<mlp_out SAE run>] analyses=[lowrank]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bilinear import checkpoint, plots
from bilinear.analyses import register, write_json
from bilinear.analyses.lm_exactness import heldout_batch
from bilinear.analyses.sae_context import layer_activations, require_saes, sae_pair
from bilinear.claims_table import paper, reference
from bilinear.decompose import eigen_activations, exactness, reconstruct
from bilinear.errors import ExactnessError
from bilinear.features import feature_eigen, pearson



def decomposition_dtype(d: int) -> torch.dtype:
    """float64 where it is cheap; float32 at the paper's d_model, where float64 eigh would cost twice the time."""
    return torch.float64 if d <= 256 else torch.float32


@torch.no_grad()
def lowrank_correlations(model, sae, tokens: torch.Tensor, layer: int, ks: list[int], min_active: int = 10,
                         chunk: int = 16, n_check: int = 4096) -> dict:
    """Per-feature correlations of the top-k approximation with the SAE activation, and the full-rank check.

    tokens (S, T) held-out sequences. Returns ``corr`` (n_features, len(ks)) float (NaN for dropped features),
    ``n_active`` (n_features,), ``ks`` (capped at d_model), and ``exactness``: all d eigenpairs against
    ``e_a . MLP(x)`` on the first ``n_check`` positions (memory stays O(chunk * max(ks)) per position).
    """
    acts = layer_activations(model, tokens, layer)
    d = acts.mlp_in.shape[-1]
    dtype = decomposition_dtype(d)
    ks = sorted({min(int(k), d) for k in ks})
    x = acts.mlp_in[:, 1:].flatten(0, 1).to(dtype)  # (N, d) without the first position
    mlp_out = acts.mlp_out[:, 1:].flatten(0, 1)
    z = sae.encode(mlp_out).to(dtype)  # (N, n_features): the SAE's own activations
    n_feat = z.shape[1]
    form = model.bilinear_form(layer).to(dtype=dtype, device=x.device)
    rows = sae.W_enc.detach().to(dtype)
    active = z > 0
    n_active = active.sum(0)
    corr = torch.full((n_feat, len(ks)), float("nan"), dtype=torch.float64)
    xc = x[:n_check]
    full_pred, full_actual = [], []
    kidx = torch.tensor([k - 1 for k in ks])
    for start in range(0, n_feat, chunk):
        sl = slice(start, min(start + chunk, n_feat))
        eig = feature_eigen(form, rows[sl])  # all d eigenpairs of each Q_a
        full_pred.append(reconstruct(eig, xc))
        full_actual.append(mlp_out[:n_check].to(dtype) @ rows[sl].T)
        cum = eigen_activations(eig, x, ks[-1]).cumsum(-1)  # (N, c, k_max)
        pred_k = cum[..., kidx]  # (N, c, n_k)
        for j, a in enumerate(range(sl.start, sl.stop)):
            if int(n_active[a]) <= min_active:
                continue
            m = active[:, a]
            corr[a] = pearson(pred_k[m, j], z[m, a].unsqueeze(1)).double().cpu()
    err = exactness(torch.cat(full_pred, 1), torch.cat(full_actual, 1))
    return {"corr": corr, "n_active": n_active.cpu(), "ks": ks, "exactness": err, "n_positions": int(x.shape[0]),
            "n_exactness_positions": int(xc.shape[0])}


def summarize(corr: torch.Tensor, ks: list[int], thresholds: list[float]) -> dict:
    """Mean / median correlation per k over kept features, and the fractions above each threshold at k = 2."""
    kept = ~torch.isnan(corr[:, 0])
    c = corr[kept]
    out = {"n_features_kept": int(kept.sum()), "n_features": int(corr.shape[0]), "ks": ks,
           "mean_corr": [float(v) for v in c.mean(0)] if len(c) else [],
           "median_corr": [float(v) for v in c.median(0).values] if len(c) else []}
    if 2 in ks and len(c):
        c2 = c[:, ks.index(2)]
        out["mean_corr_k2"] = float(c2.mean())
        out["fraction_above_k2"] = {str(t): float((c2 > t).float().mean()) for t in thresholds}
    if 1 in ks and len(c):
        out["mean_corr_k1"] = float(c[:, ks.index(1)].mean())
    return out


@register("lowrank", kinds=("lm",), default=False)
def lowrank(ctx, out: Path) -> dict:
    _, sae = sae_pair(require_saes(ctx), need_input=False)
    cfg = ctx.cfg.lowrank
    tokens = heldout_batch(ctx, int(ctx.cfg.interactions.n_sequences))
    what = f"e_a . MLP(x) for every output feature of {sae.name}"
    try:
        res = lowrank_correlations(ctx.model, sae.model, tokens, sae.layer, list(cfg.ks), int(cfg.min_active))
    except ExactnessError as e:  # non-finite weights or eigenvalues: recorded for C1, then a one-line error
        ctx.record_failure(what, e)
    summary = summarize(res["corr"], res["ks"], list(cfg.thresholds))
    err = res["exactness"]
    result = {**summary, "layer": sae.layer, "sae": str(sae.dir), "n_sequences": int(tokens.shape[0]),
              "n_positions": res["n_positions"], "full_rank_exactness": {**err, "n_positions": res["n_exactness_positions"]}, "min_active": int(cfg.min_active),
              "paper": paper("C13"), "reference": reference("C13")}
    ctx.require_exact(err, what)
    _write_table(out / "lowrank_features.csv", res)
    _plot(out, res, summary, list(cfg.thresholds))
    write_json(out / "lowrank.json", result)
    return result


def _write_table(path: Path, res: dict) -> None:
    rows = [{"feature": a, "n_active": int(res["n_active"][a]),
             **{f"corr_k{k}": (None if np.isnan(v) else round(float(v), 5)) for k, v in zip(res["ks"], res["corr"][a])}}
            for a in range(res["corr"].shape[0])]
    checkpoint.write_csv(path, rows)


def _plot(out: Path, res: dict, summary: dict, thresholds: list[float]) -> None:
    import matplotlib.pyplot as plt

    corr, ks = res["corr"], res["ks"]
    kept = corr[~torch.isnan(corr[:, 0])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if len(kept):
        q = kept.quantile(torch.tensor([0.25, 0.75], dtype=kept.dtype), dim=0)
        axes[0].plot(ks, kept.mean(0).numpy(), "o-", label="mean")
        axes[0].fill_between(ks, q[0].numpy(), q[1].numpy(), alpha=0.25, label="25-75%")
        k1 = paper("C13")["mean_corr_k1"]
        axes[0].axhline(k1, color="gray", ls=":", label=f"paper k=1: {k1}")
        c2 = kept[:, ks.index(2)] if 2 in ks else kept[:, 0]
        axes[1].hist(c2.numpy(), bins=40, range=(-0.2, 1.0))
        axes[1].axvline(0.75, color="k", ls=":")
        fr = [float((c2 > t).float().mean()) for t in thresholds]
        axes[2].plot(thresholds, fr, "o-")
        for t, f in zip(thresholds, fr):
            axes[2].annotate(f"{f:.0%}", (t, f), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    axes[0].set(xscale="log", xlabel="eigenpairs kept (k)", ylabel="Pearson r (active positions)",
                title="E12: correlation vs k")
    axes[0].set_xticks(ks, [str(k) for k in ks])
    axes[0].legend(fontsize=7)
    axes[1].set(xlabel="Pearson r at k = 2", ylabel="output features", title="k = 2")
    axes[2].set(xlabel="threshold", ylabel="fraction of features above", ylim=(0, 1.05), title="k = 2: threshold sensitivity")
    fig.suptitle(f"{summary['n_features_kept']} of {summary['n_features']} output features (> min activations)", fontsize=9)
    plots.save(fig, out / "lowrank.png")
