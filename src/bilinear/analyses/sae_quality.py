"""SAE quality across runs: C15 (loss added per layer and site, Fig 23) and E13 / Table 5 (C14, training length).

Both are cross-run analyses over SAE runs (task=sae):

    python -m analyze runs=[<sae run>,...] analyses=[sae_quality]          C15: one row per (layer, site)
    python -m analyze runs=[<sae run>,...] analyses=[sae_training_length]  E13: one row per token budget

``sae_training_length`` also needs each SAE's mean top-2 correlation (E12 at k = 2), computed on its own LM
(found through the SAE's lm.json) from held-out sequences.

C15 compares mlp_in with mlp_out at each layer. Their loss added can differ by less than its evaluation noise
(0.0021 against 0.0022 once turned a verdict around), so ``sae_quality`` also measures, per layer, the paired
difference on the same held-out sequences with its standard error over sequence chunks (:func:`paired_loss_added`);
the verdict (``bilinear.claims``) calls a difference inside that spread a tie.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bilinear import checkpoint, plots
from bilinear.analyses import register, write_json
from bilinear.analyses.lm_exactness import heldout_windows
from bilinear.analyses.lowrank import lowrank_correlations
from bilinear.claims_table import paper
from bilinear.tasks.lm import load_run_tokens
from bilinear.tasks.sae import open_lm_run, patched_losses

SUMMARY_KEYS = ("nmse", "loss_added", "loss_recovered", "dead_fraction", "l0", "tokens", "loss_clean", "loss_patched")


def sae_summary(ctx) -> dict:
    m = ctx.metrics
    return {"run": ctx.run_dir.name, "layer": int(ctx.run_cfg.sae.layer), "site": str(ctx.run_cfg.sae.site),
            "n_latents": int(ctx.model.n_latents), "k": int(ctx.model.k), **{k: m.get(k) for k in SUMMARY_KEYS}}


@torch.no_grad()
def paired_loss_added(sae_in, sae_out, lm, tokens: np.ndarray, layer: int, skip_first: bool, n_sequences: int, chunk: int,
                      device: torch.device) -> dict:
    """Loss added by the mlp_in SAE minus that of the mlp_out SAE of one layer, on the same held-out windows.

    The windows (n_ctx + 1 tokens, non-overlapping, from the start of ``tokens``) are split into chunks of ``chunk``
    sequences; ``tasks.sae.patched_losses`` gives each SAE's loss added per chunk. Returns the mean paired
    difference over chunks, its standard error (std over chunks / sqrt(chunks)), and both means.
    """
    n = max(2 * chunk, min(n_sequences, (len(tokens) - 1) // (lm.n_ctx + 1)))
    starts = np.arange(n) * (lm.n_ctx + 1)
    diffs, la = [], {"mlp_in": [], "mlp_out": []}
    for i in range(0, n - chunk + 1, chunk):
        part = starts[i : i + chunk]
        for site, sae in (("mlp_in", sae_in), ("mlp_out", sae_out)):
            la[site].append(patched_losses(lm, sae, tokens, part, layer, site, skip_first, chunk, device)["loss_added"])
        diffs.append(la["mlp_in"][-1] - la["mlp_out"][-1])
    d = np.array(diffs)
    return {"diff": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf"),
            "mlp_in": float(np.mean(la["mlp_in"])), "mlp_out": float(np.mean(la["mlp_out"])), "n_chunks": len(d),
            "n_sequences": len(d) * chunk}


def paired_by_layer(runs, cfg) -> dict[str, dict]:
    """:func:`paired_loss_added` for every layer that has an mlp_in and an mlp_out SAE of the same LM."""
    by = {(str(c.run_cfg.lm), int(c.run_cfg.sae.layer), str(c.run_cfg.sae.site)): c for c in runs}
    out, lms = {}, {}
    for (lm_path, layer, site), ctx in sorted(by.items()):
        other = by.get((lm_path, layer, "mlp_out"))
        if site != "mlp_in" or other is None:
            continue
        if lm_path not in lms:
            lm_dir, lm_cfg, lm = open_lm_run(lm_path, cfg.get("data_root") or ctx.run_cfg.data.root, ctx.device)
            lms[lm_path] = lm, load_run_tokens(lm_dir, lm_cfg).val
        lm, val = lms[lm_path]
        q = cfg.sae_quality
        out[str(layer)] = paired_loss_added(ctx.model, other.model, lm, val, layer, bool(ctx.run_cfg.data.skip_first),
                                            int(q.n_sequences), int(q.chunk), ctx.device)
    return out


@register("sae_quality", kinds=("sae",), scope="cross")
def sae_quality(runs, out: Path, cfg) -> dict:
    rows = sorted((sae_summary(c) for c in runs), key=lambda r: (r["site"], r["layer"]))
    checkpoint.write_csv(out / "sae_quality.csv", rows)
    fig23 = paper("C15")["loss_added"]
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for site, color in (("mlp_in", "C0"), ("mlp_out", "C1")):
        pts = [(r["layer"] + 1, r["loss_added"]) for r in rows if r["site"] == site and r["loss_added"] is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", color=color, label=f"ours {site}")
        ax.plot(range(1, len(fig23[site]) + 1), fig23[site], "x:", color=color, alpha=0.6,
                label=f"paper {site} (6-layer TinyStories)")
    ax.set(xlabel="layer (1-based)", ylabel="loss added (L_patched - L_clean) / L_clean", yscale="log",
           title="C15 / Fig 23: SAE loss added per layer")
    ax.legend(fontsize=7)
    plots.save(fig, out / "sae_quality.png")
    result = {"rows": rows, "paper_loss_added": fig23, "paired": paired_by_layer(runs, cfg)}
    write_json(out / "sae_quality.json", result)
    return result


@register("sae_training_length", kinds=("sae",), scope="cross")
def sae_training_length(runs, out: Path, cfg) -> dict:
    rows, corrs, lms = [], {}, {}
    for ctx in sorted(runs, key=lambda c: c.metrics.get("tokens") or 0):
        if ctx.run_cfg.sae.site != "mlp_out":
            continue  # the correlation reads output features (E12); an input SAE has none
        if ctx.run_cfg.lm not in lms:  # the SAEs of one table usually share their LM: load it and its tokens once
            lm_dir, lm_cfg, lm = open_lm_run(ctx.run_cfg.lm, cfg.get("data_root") or ctx.run_cfg.data.root, ctx.device)
            val = load_run_tokens(lm_dir, lm_cfg).val
            lms[ctx.run_cfg.lm] = lm, heldout_windows(val, lm.n_ctx, int(cfg.interactions.n_sequences)).to(ctx.device)
        lm, tokens = lms[ctx.run_cfg.lm]
        res = lowrank_correlations(lm, ctx.model, tokens, int(ctx.run_cfg.sae.layer), [2], int(cfg.lowrank.min_active))
        ctx.require_exact(res["exactness"], "e_a . MLP(x) for every output feature")  # C1 counts it; fails above tol
        c2 = res["corr"][:, 0]
        c2 = c2[~torch.isnan(c2)]
        corrs[ctx.run_dir.name] = c2
        rows.append({**sae_summary(ctx), "top2_corr_mean": float(c2.mean()) if len(c2) else None,
                     "top2_corr_median": float(c2.median()) if len(c2) else None, "n_features_kept": int(len(c2)),
                     "fraction_above_0.75": float((c2 > 0.75).float().mean()) if len(c2) else None})
    base = rows[0]["tokens"] if rows else 1
    for r in rows:
        r["tokens_multiple"] = round(r["tokens"] / base, 2) if base else None
    checkpoint.write_csv(out / "table5.csv", rows)
    checkpoint.write_text(out / "table5.md", _table_md(rows))
    _plot_length(out, rows, corrs)
    result = {"rows": rows, "paper": paper("C14")}
    write_json(out / "sae_training_length.json", result)
    return result


def _table_md(rows: list[dict]) -> str:
    lines = ["| tokens | × | NMSE | loss recovered | mean top-2 r | > 0.75 | dead |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['tokens']} | {r['tokens_multiple']} | {r['nmse']:.3f} | {r['loss_recovered']:.3f} | "
                     f"{r['top2_corr_mean']:.3f} | {r['fraction_above_0.75']:.0%} | {r['dead_fraction']:.1%} |")
    lines.append("")
    p = paper("C14")
    lines.append(f"Paper (Table 5, expansion 16): NMSE {p['nmse'][0]:g} -> {p['nmse'][1]:g}, loss recovered "
                 f"{p['loss_recovered'][0]:g} -> {p['loss_recovered'][1]:g}, mean top-2 r "
                 + " -> ".join(f"{x:g}" for x in p["top2_corr"]) + ".")
    return "\n".join(lines) + "\n"


def _plot_length(out: Path, rows: list[dict], corrs: dict) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    x = [r["tokens_multiple"] for r in rows]
    axes[0].plot(x, [r["top2_corr_mean"] for r in rows], "o-", label="ours: mean top-2 r")
    axes[0].plot(x, [r["nmse"] for r in rows], "s-", label="ours: NMSE")
    axes[0].plot(x, [r["loss_recovered"] for r in rows], "^-", label="ours: loss recovered")
    if len(x) == len(paper("C14")["top2_corr"]):
        axes[0].plot(x, paper("C14")["top2_corr"], "o:", color="gray", label="paper: mean top-2 r")
    axes[0].set(xscale="log", xlabel="training tokens (multiple of the first SAE)", title="E13 / Table 5")
    axes[0].set_xticks(x, [f"{v:g}×" for v in x])
    axes[0].legend(fontsize=7)
    for r in rows:
        c = corrs.get(r["run"])
        if c is not None and len(c):
            axes[1].hist(c.numpy(), bins=30, range=(-0.2, 1), histtype="step", label=f"{r['tokens_multiple']:g}×")
    axes[1].set(xlabel="top-2 r per output feature", ylabel="features", title="correlation distribution by training length")
    axes[1].legend(fontsize=7)
    plots.save(fig, out / "table5.png")
