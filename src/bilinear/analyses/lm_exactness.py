"""Claim C1 for language models: ``u . MLP_l(x) = x^T Q_u x = sum_i lambda_i (v_i . x)^2`` on real mlp_in activations.

For every layer, held-out sequences are run through the model with mlp_in and mlp_out cached. Output
directions are random unit vectors and the unembedding's rows of the most frequent held-out tokens (the
"head directions"). Q_u comes from ``decompose.interaction_matrices`` on ``model.bilinear_form(l)``, never
from the (d, d, d) tensor; its eigendecomposition then reconstructs the projection. The error is recorded,
and the analysis fails (non-zero exit) when it exceeds ``exactness_tol`` (relative to max |u . MLP(x)|).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bilinear.analyses import register, write_json
from bilinear.decompose import decompose_outputs, exactness, reconstruct
from bilinear.errors import ExactnessError
from bilinear.models.transformer import site_name
from bilinear.tasks.lm import windows


def heldout_windows(val: np.ndarray, n_ctx: int, n_seqs: int) -> torch.Tensor:
    """The first ``n_seqs`` non-overlapping windows of a held-out token split, (n_seqs, n_ctx) token ids."""
    n = max(1, min(n_seqs, (len(val) - 1) // n_ctx))
    return windows(val, np.arange(n) * n_ctx, n_ctx)


def heldout_batch(ctx, n_seqs: int) -> torch.Tensor:
    """``heldout_windows`` of an LM run's validation split, on the analysis device."""
    return heldout_windows(ctx.token_data.val, ctx.model.n_ctx, n_seqs).to(ctx.device)


def directions(ctx, tokens: torch.Tensor, n_random: int, n_head: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """(n_random + n_head, d_model) unit output directions in float64, with labels."""
    d = ctx.model.head.weight.shape[1]
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(n_random, d, generator=g, dtype=torch.float64)
    counts = torch.bincount(tokens.flatten().cpu(), minlength=ctx.model.vocab_size)
    top = counts.topk(min(n_head, int((counts > 0).sum()))).indices
    head = ctx.model.head.weight.detach().cpu().double()[top]
    U = torch.cat([rand, head])
    labels = [f"random{i}" for i in range(n_random)] + [f"head:{ctx.tokenizer.id_to_token(int(t))}" for t in top]
    return U / U.norm(dim=1, keepdim=True), labels


@torch.no_grad()
def layer_exactness(model, layer: int, tokens: torch.Tensor, U: torch.Tensor) -> dict[str, float]:
    """Max error of ``sum_i lambda_i (v_i . x)^2`` against ``u . mlp_out`` over all positions of ``tokens``."""
    sites = [site_name(layer, "mlp_in"), site_name(layer, "mlp_out")]
    _, cache = model.run_with_cache(tokens, sites, stop_at_layer=layer)
    z = cache[sites[0]].flatten(0, 1).double().cpu()  # (N, d)
    actual = cache[sites[1]].flatten(0, 1).double().cpu() @ U.T  # (N, k)
    form = model.bilinear_form(layer).to(dtype=torch.float64, device="cpu")
    pred = reconstruct(decompose_outputs(form, U), form.to_z(z))
    return {**exactness(pred, actual), "n_positions": z.shape[0]}


@register("lm_exactness", kinds=("lm",))
def lm_exactness(ctx, out: Path) -> dict:
    model = ctx.model
    if not all(b.mlp.bilinear.is_bilinear for b in model.blocks):
        result = {"applicable": False, "reason": f"{model.mlp_kind} MLPs are not quadratic forms"}
        write_json(out / "lm_exactness.json", result)
        return result
    tokens = heldout_batch(ctx, int(ctx.cfg.get("lm_sequences", 16)))
    U, labels = directions(ctx, tokens, n_random=32, n_head=32)
    what = "u.MLP(x) on real mlp_in activations"
    try:
        per_layer = {str(l): layer_exactness(model, l, tokens, U) for l in range(model.n_layer)}
    except ExactnessError as e:  # non-finite weights or eigenvalues: recorded for C1, then a one-line error
        ctx.record_failure(what, e)
    worst = max(per_layer.values(), key=lambda r: r["rel_error"])
    result = {"applicable": True, "per_layer": per_layer, "rel_error": worst["rel_error"],
              "max_abs_error": max(r["max_abs_error"] for r in per_layer.values()),
              "n_directions": len(labels), "directions": "32 random unit vectors + head rows of the 32 most frequent tokens",
              "n_sequences": int(tokens.shape[0]), "dtype": "float64 decomposition of float32 activations"}
    write_json(out / "lm_exactness.json", result)
    ctx.require_exact(result, what)
    return result
