"""E11 / Fig 8, claim C12: the negation AND-circuit, found from the weights and checked against the planted rule.

Among the ``top_ranked`` output features by top-2 |lambda| of Q~_a (analysis ``interactions``), the pair whose
output-SAE decoders have the most negative cosine is taken (the paper's "not-good" / "not-bad", nearly opposite decoders).
For the pair it draws Fig 8's four panels: the top-interaction submatrix over the input features with the
largest interactions (labelled by their top-activating contexts), the spectrum of Q~_a against a random
symmetric matrix of equal entry std, the input features projected on the top-2 eigenvectors, and the top-2
approximation ``sum_{i<=2} lambda_i (v_i . x)^2`` (eigenpairs of Q_a on mlp_in) against the SAE activation.

On the ``stories`` corpus the rule is known (``dataio.stories``): every feature also gets its **cell profile**,
its mean activation at the positions where the model predicts the outcome verb, per cell (adjective polarity
x negated). A negation feature is active in the two negated cells, a sentiment feature in the two cells of its
polarity; the rule's AND-circuit pairs the output features of the two negated cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bilinear import plots
from bilinear.analyses import register, write_json
from bilinear.claims_table import paper
from bilinear.analyses.interactions import cached_stats, feature_matrices, output_feature_form
from bilinear.analyses.lm_exactness import heldout_batch
from bilinear.analyses.sae_context import decode_tokens, layer_activations, top_contexts
from bilinear.dataio import stories as story_rule
from bilinear.dataio.tokenizer import word_id
from bilinear.decompose import eigendecompose, interaction_matrices, reconstruct, symmetrize
from bilinear.features import feature_eigen, pearson

CELLS = story_rule.CELLS  # ("pos", "pos_neg", "neg", "neg_neg")
TYPES = {frozenset({"pos_neg", "neg_neg"}): "negation", frozenset({"pos", "pos_neg"}): "positive adjective",
         frozenset({"neg", "neg_neg"}): "negative adjective", frozenset(CELLS): "any feeling clause",
         frozenset({"neg", "pos_neg"}): "negative-verb cells", frozenset({"pos", "neg_neg"}): "positive-verb cells"}
# the outcome verb's polarity that a feature of each type predicts (the rule: adjective polarity XOR negated)
VERB_SIGN = {"pos_neg only": -1, "neg only": -1, "negative-verb cells": -1,
             "neg_neg only": 1, "pos only": 1, "positive-verb cells": 1}


def rule_positions(tokenizer, tokens: torch.Tensor) -> dict[str, list[tuple[int, int]]]:
    """{cell: [(sequence, position)]} of the positions that predict an outcome verb (story_rule.rule_sites)."""
    out: dict[str, list] = {c: [] for c in CELLS}
    for s in range(tokens.shape[0]):
        words = [w.strip() for w in decode_tokens(tokenizer, tokens[s].tolist())]
        for pos, cell, _ in story_rule.rule_sites(words):
            if pos >= 1:
                out[cell].append((s, pos))
    return out


def cell_profiles(acts: torch.Tensor, sites: dict[str, list[tuple[int, int]]]) -> torch.Tensor:
    """Mean activation per cell at the rule positions: acts (S, T, n) -> (4, n), NaN for an empty cell."""
    rows = []
    for c in CELLS:
        idx = sites[c]
        if not idx:
            rows.append(torch.full((acts.shape[-1],), float("nan")))
            continue
        s, t = torch.tensor(idx).T
        rows.append(acts[s, t].double().mean(0).cpu())
    return torch.stack(rows)


def profile_type(profile: torch.Tensor) -> str:
    """'negation', 'positive adjective', ..., '<cell> only' or 'mixed' from a feature's (4,) cell profile."""
    p = torch.nan_to_num(profile, nan=0.0)
    if float(p.max()) <= 0:
        return "silent at rule positions"
    on = frozenset(c for c, v in zip(CELLS, p) if v > 0.5 * p.max())
    if len(on) == 1:
        return f"{next(iter(on))} only"
    return TYPES.get(on, "mixed (" + "+".join(sorted(on)) + ")")


def profile_text(profile: torch.Tensor) -> str:
    return ", ".join(f"{c} {float(v):.2f}" for c, v in zip(CELLS, profile))


def most_anti_aligned(decoder: torch.Tensor, candidates: list[int]) -> tuple[int, int, float]:
    """The pair of candidate columns of decoder (d, n) with the most negative cosine: (a, b, cos)."""
    D = decoder[:, candidates].double()
    D = D / D.norm(dim=0, keepdim=True)
    C = D.T @ D
    C.fill_diagonal_(float("inf"))
    i, j = divmod(int(C.argmin()), C.shape[1])
    return candidates[i], candidates[j], float(C[i, j])


@register("negation", kinds=("lm",), default=False)
def negation(ctx, out: Path) -> dict:
    cfg = ctx.cfg.negation
    sae_in, sae_out, st = cached_stats(ctx)
    model, tok = ctx.model, ctx.tokenizer
    ranked = st.top2.argsort(descending=True)[: int(cfg.top_ranked)].tolist()
    a, b, _ = most_anti_aligned(sae_out.model.W_dec.detach(), ranked)

    tokens = heldout_batch(ctx, int(ctx.cfg.interactions.n_sequences))
    acts = layer_activations(model, tokens, sae_out.layer)
    data = PairData(model, tok, sae_in, sae_out, st, tokens.cpu(), acts, sae_in.model.encode(acts.mlp_in),
                    sae_out.model.encode(acts.mlp_out), rule_positions(tok, tokens.cpu()), cfg,
                    float(ctx.cfg.interactions.outlier_sigma))
    result = describe_pair(data, [a, b], out / "negation.png", "found by the paper's recipe")
    result.update({"ranked_among": len(ranked), "n_rule_positions": {c: len(v) for c, v in data.sites.items()},
                   "paper": paper("C12")})
    if data.scan is not None:
        # the known answer: negation and sentiment directions probed at the rule's positions, read in every Q_a
        result["probe_scan"] = probe_summary(data.scan)
        pair = probe_pair(data.scan)
        result["probe_pair"] = describe_pair(data, pair, out / "negation_probe_pair.png",
                                             "the strongest negation x sentiment AND by concept probes")
        _plot_scan(out / "negation_probe_scan.png", data.scan, [a, b], pair)
    write_json(out / "negation.json", result)
    return result


class PairData:
    """What describing a pair of output features needs: the LM, both SAEs, their interaction statistics, and
    held-out activations with the features' cell profiles (mean activation per rule cell, (4, n))."""

    def __init__(self, model, tok, sae_in, sae_out, st, tokens, acts, f_in, f_out, sites, cfg, outlier_sigma: float):
        self.model, self.tok, self.sae_in, self.sae_out, self.st = model, tok, sae_in, sae_out, st
        self.tokens, self.acts, self.f_in, self.f_out, self.sites, self.cfg = tokens, acts, f_in, f_out, sites, cfg
        self.prof_in, self.prof_out = cell_profiles(f_in, sites), cell_profiles(f_out, sites)
        self.directions = concept_directions(acts, sites)
        self.scan = None if self.directions is None else probe_scan(model, sae_out, *self.directions)
        order_top2 = st.top2.argsort(descending=True)
        order_out = st.n_outliers(outlier_sigma).argsort(descending=True, stable=True)
        self.rank_top2 = {int(f): r for r, f in enumerate(order_top2)}
        self.rank_outliers = {int(f): r for r, f in enumerate(order_out)}


def concept_directions(acts, sites: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Unit negation and sentiment directions (d,) of mlp_in at the verb-predicting positions of the rule.

    n = mean(negated cells) - mean(plain cells), s = mean(positive-adjective cells) - mean(negative ones): the
    two concepts the rule ANDs, as difference-of-means probes. None when a cell has no position.
    """
    if any(len(v) == 0 for v in sites.values()):
        return None
    x = acts.mlp_in.double()
    m = {c: x[tuple(torch.tensor(v).T)].mean(0) for c, v in sites.items()}
    n = (m["pos_neg"] + m["neg_neg"] - m["pos"] - m["neg"]) / 2
    s = (m["pos"] + m["pos_neg"] - m["neg"] - m["neg_neg"]) / 2
    return (n / n.norm()).cpu(), (s / s.norm()).cpu()


@torch.no_grad()
def probe_scan(model, sae_out, n: torch.Tensor, s: torch.Tensor, chunk: int = 64, n_random: int = 128,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """Every output feature's Q_a read on the concept directions, from the weights (n_features,) each:

    cross = 2 n^T Q_a s (the AND's cross-interaction), self_n = n^T Q_a n, self_s = s^T Q_a s, and random_std:
    the std of 2 u^T Q_a w over random unit pairs (u, w), the scale of a typical cross-interaction of that Q_a.
    """
    form = output_feature_form(model, sae_out.layer)
    dt = form.W.dtype
    n, s = n.to(dt), s.to(dt)
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(2, n_random, form.d, generator=g, dtype=dt)
    R = R / R.norm(dim=-1, keepdim=True)
    rows = sae_out.model.W_enc.detach().to(dt)
    parts: dict[str, list] = {k: [] for k in ("cross", "self_n", "self_s", "random_std")}
    for start in range(0, rows.shape[0], chunk):
        Q = interaction_matrices(form, rows[start : start + chunk])
        parts["cross"].append(2 * torch.einsum("i,fij,j->f", n, Q, s))
        parts["self_n"].append(torch.einsum("i,fij,j->f", n, Q, n))
        parts["self_s"].append(torch.einsum("i,fij,j->f", s, Q, s))
        parts["random_std"].append((2 * torch.einsum("ri,fij,rj->fr", R[0], Q, R[1])).std(1))
    out = {k: torch.cat(v).double() for k, v in parts.items()}
    out["ratio"] = out["cross"].abs() / out["random_std"].clamp_min(1e-30)
    return out


def probe_and(scan: dict[str, torch.Tensor], f: int, min_ratio: float = 4.0) -> dict:
    """The AND signature of feature f on the concept directions: a cross-interaction far above its typical
    cross-interaction, and self-interactions of negation and sentiment below a quarter of it."""
    cross, sn, ss, rs = (float(scan[k][f]) for k in ("cross", "self_n", "self_s", "random_std"))
    ratio = abs(cross) / max(rs, 1e-30)
    return {"cross": cross, "self_negation": sn, "self_sentiment": ss, "random_cross_std": rs, "cross_over_random": ratio,
            "holds": bool(ratio >= min_ratio and max(abs(sn), abs(ss)) <= 0.25 * abs(cross))}


def probe_pair(scan: dict[str, torch.Tensor]) -> list[int]:
    """The strongest AND of each sign: the two verb polarities (or "not-good" and "not-bad") read it with
    opposite signs, since negation flips the sentiment's effect."""
    ratio = scan["ratio"]
    pos = torch.where(scan["cross"] > 0, ratio, torch.full_like(ratio, -1.0))
    neg = torch.where(scan["cross"] < 0, ratio, torch.full_like(ratio, -1.0))
    return [int(pos.argmax()), int(neg.argmax())]


def probe_summary(scan: dict[str, torch.Tensor], top: int = 10) -> dict:
    order = scan["ratio"].argsort(descending=True)[:top].tolist()
    return {"top_features": [{"feature": f, **{k: float(scan[k][f]) for k in ("cross", "self_n", "self_s", "random_std", "ratio")}}
                             for f in order],
            "median_ratio": float(scan["ratio"].median())}


def describe_pair(data: PairData, pair: list[int], figure: Path, title: str) -> dict:
    """Fig 8's measurements and panels for two output features."""
    model, tok, sae_out, cfg = data.model, data.tok, data.sae_out, data.cfg
    Qt = feature_matrices(model, data.sae_in, sae_out, pair)  # (2, n_in, n_in)
    strength = Qt.abs().amax(-1).amax(0)  # (n_in,) largest |interaction| of each input feature with the pair
    shown = strength.topk(min(int(cfg.n_inputs), strength.numel())).indices.tolist()
    nctx = int(cfg.n_contexts)
    inputs = [{"feature": i, "type": profile_type(data.prof_in[:, i]), "cell_profile": profile_text(data.prof_in[:, i]),
               "top_contexts": top_contexts(tok, data.tokens, data.f_in[..., i].cpu(), nctx)} for i in shown]
    vocab = story_rule.rule_vocabulary()
    pos_ids = [word_id(tok, w) for w in vocab["positive_verb"]]
    neg_ids = [word_id(tok, w) for w in vocab["negative_verb"]]
    outputs = []
    for k, f in enumerate(pair):
        # direct logit path, over the tokenizer's tokens (rows past it belong to a padded vocabulary, never trained)
        eff = model.head.weight.detach()[: tok.get_vocab_size()].double() @ sae_out.model.W_dec.detach()[:, f].double()
        verbs = (float(eff[pos_ids].mean() - eff[neg_ids].mean()) if None not in pos_ids + neg_ids else float("nan"))
        outputs.append({"feature": f, "type": profile_type(data.prof_out[:, f]), "cell_profile": profile_text(data.prof_out[:, f]),
                        "top_contexts": top_contexts(tok, data.tokens, data.f_out[..., f].cpu(), nctx),
                        "boosted_tokens": [t.strip() for t in decode_tokens(tok, eff.topk(8).indices.tolist())],
                        "positive_minus_negative_verb_logit": verbs,
                        "rank_by_top2": data.rank_top2[f], "rank_by_outliers": data.rank_outliers[f],
                        "and_structure": and_structure(Qt[k], data.prof_in, data.st.cross_std),
                        "probe_and": probe_and(data.scan, f) if data.scan is not None else None})
    D = sae_out.model.W_dec.detach()[:, pair].double()
    cos = float(torch.nn.functional.cosine_similarity(D[:, 0], D[:, 1], dim=0))
    spectra = [spectrum_vs_random(Qt[k], seed=k) for k in range(2)]
    pred, z, lam = top2_predictions(model, sae_out, pair, data.acts, data.f_out)
    approx = [top2_approximation(pred[:, k], z[:, k], lam[k], float(cfg.large_quantile)) for k in range(2)]
    result = {"pair": pair, "decoder_cosine": cos, "layer": sae_out.layer, "outputs": outputs, "inputs": inputs,
              "cross_std": data.st.cross_std, "top2_approximation": approx, "tied_to_rule": rule_tie(outputs),
              "spectra": [{k: v for k, v in s.items() if k not in ("values", "random")} for s in spectra]}
    _plot(figure, title, result, Qt, shown, inputs, spectra, pred, z, pair)
    return result


def and_structure(Qt: torch.Tensor, prof_in: torch.Tensor, cross_std: float) -> dict:
    """The largest cross-interaction of one output feature in the input SAE's basis, and the self-interactions
    of its two input features. Where the rule's positions are known, only input features active there compete
    (weights alone also pair latents that never fire where the output feature does)."""
    n = Qt.shape[0]
    off = 2 * Qt.clone()
    off.fill_diagonal_(0)
    live = torch.nan_to_num(prof_in).amax(0) > 0
    if int(live.sum()) >= 2:
        off = off * (live[:, None] & live[None, :]).to(off.dtype)
    i, j = divmod(int(off.abs().argmax()), n)
    cross = float(off[i, j])
    selfs = [float(Qt[i, i]), float(Qt[j, j])]
    types = sorted([profile_type(prof_in[:, i]), profile_type(prof_in[:, j])])
    neg_sent = "negation" in types and any("adjective" in t for t in types)
    negligible = max(abs(s) for s in selfs) < 0.25 * abs(cross)
    return {"inputs": [i, j], "input_types": types, "cross": cross, "self": selfs, "among_rule_active_inputs": int(live.sum()) >= 2,
            "cross_over_std": abs(cross) / max(cross_std, 1e-30), "negation_times_sentiment": neg_sent,
            "self_negligible": negligible, "holds": bool(neg_sent and negligible)}


def spectrum_vs_random(Qt: torch.Tensor, seed: int = 0) -> dict:
    """Eigenvalues of Q~ (ascending) and of a random symmetric matrix with the same off-diagonal entry std."""
    vals = torch.linalg.eigvalsh(symmetrize(Qt.double()))
    n = Qt.shape[0]
    off = Qt.double()[~torch.eye(n, dtype=torch.bool)]
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(n, n, generator=g, dtype=torch.float64) * off.std()
    R = torch.triu(R) + torch.triu(R, 1).T  # symmetric with entries of that std
    rvals = torch.linalg.eigvalsh(R)
    return {"values": vals, "random": rvals, "lambda_max": float(vals[-1]), "lambda_min": float(vals[0]),
            "random_abs_max": float(rvals.abs().max()), "entry_std": float(off.std()),
            "outlier_ratio": float(vals.abs().max() / rvals.abs().max())}


@torch.no_grad()
def top2_predictions(model, sae_out, pair: list[int], acts,
                     f_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sum_{i<=2} lambda_i (v_i . x)^2`` (eigenpairs of Q_a on mlp_in) and the SAE activation of each feature of
    ``pair``, at every position but the first: two (N, len(pair)) tensors, and the eigenvalues (len(pair), 2)."""
    form = output_feature_form(model, sae_out.layer)
    eig = feature_eigen(form, sae_out.model.W_enc.detach()[pair].to(form.W.dtype), keep=2)
    x = acts.mlp_in[:, 1:].flatten(0, 1).to(form.W.dtype)
    pred = reconstruct(eig, x)
    return pred, f_out[:, 1:, pair].flatten(0, 1).to(pred.dtype), eig.values


def top2_approximation(pred: torch.Tensor, z: torch.Tensor, eigenvalues: torch.Tensor, large_quantile: float) -> dict:
    """Pearson r of one feature's top-2 approximation (N,) with its SAE activation (N,), where it is active and
    for its large activations (above ``large_quantile`` of the active values)."""
    m = z > 0
    out = {"n_active": int(m.sum()), "eigenvalues": [float(v) for v in eigenvalues]}
    if int(m.sum()) > 2:
        out["corr_active"] = float(pearson(pred[m], z[m]))
        big = m & (z >= z[m].quantile(large_quantile))
        out["corr_large"] = float(pearson(pred[big], z[big])) if int(big.sum()) > 2 else float("nan")
        out["large_threshold"] = float(z[m].quantile(large_quantile))
    return out


def rule_tie(outputs: list[dict]) -> dict:
    """Are the two output features the rule's AND? Opposite verb polarities (by cell profile) and, on the concept
    probes, each an AND of negation and sentiment with negligible self-interactions.

    ``negated_cells``: the paper's form, one feature per negated cell ("not-good" / "not-bad"); a pair of whole
    verb-polarity features also implements the rule. Verb boosts read the decoder through the unembedding
    directly, which is only the whole story for the last layer.
    """
    types = [o["type"] for o in outputs]
    signs = [VERB_SIGN.get(t) for t in types]
    opposite = None not in signs and signs[0] == -signs[1]
    boosts_ok = opposite and all((o["positive_minus_negative_verb_logit"] > 0) == (sg > 0) for o, sg in zip(outputs, signs))
    probe = [bool(o["probe_and"] and o["probe_and"]["holds"]) for o in outputs]
    return {"output_types": types, "negated_cells": sorted(types) == ["neg_neg only", "pos_neg only"],
            "opposite_verb_polarity": bool(opposite), "verb_boosts_match": bool(boosts_ok),
            "and_structure_holds": [o["and_structure"]["holds"] for o in outputs], "probe_and_holds": probe,
            "tied": bool(opposite and all(probe))}


def _label(inp: dict) -> str:
    ctx = inp["top_contexts"][0] if inp["top_contexts"] else ""
    return f"{inp['feature']}: {inp['type']}\n{ctx[-28:]}"


def _plot(path, title, result, Qt, shown, inputs, spectra, pred, z, pair) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    labels = [_label(i) for i in inputs]
    for k in range(2):
        sub = Qt[k][shown][:, shown].double()
        sub = 2 * sub - torch.diag(torch.diagonal(sub))  # off-diagonal: cross-interactions 2 Q~_bc; diagonal: self
        v = float(sub.abs().max())
        ax = axes[0, k]
        im = ax.imshow(sub.numpy(), cmap="RdBu_r", vmin=-v, vmax=v)
        ax.set_xticks(range(len(shown)), [str(i) for i in shown], fontsize=7)
        ax.set_yticks(range(len(shown)), labels, fontsize=6)
        o = result["outputs"][k]
        ax.set_title(f"output feature {o['feature']} ({o['type']}): interactions", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    s = spectra[0]
    ax = axes[0, 2]
    ax.plot(np.sort(s["values"].numpy()), ".", label=f"Q~ of feature {pair[0]}")
    ax.plot(np.sort(s["random"].numpy()), ".", alpha=0.5, label="random symmetric, same entry std")
    ax.set(xlabel="index", ylabel="eigenvalue", title="spectrum vs random")
    ax.legend(fontsize=7)
    for k in range(2):
        eig = eigendecompose(Qt[k : k + 1].double())
        ip, im_ = int(eig.values[0].argmax()), int(eig.values[0].argmin())
        w_pos, w_neg = eig.vectors[0, ip], eig.vectors[0, im_]
        ax = axes[1, k]
        ax.scatter(w_pos.numpy(), w_neg.numpy(), s=4, alpha=0.4, color="gray")
        for inp in inputs:
            i = inp["feature"]
            ax.scatter([float(w_pos[i])], [float(w_neg[i])], s=14)
            ax.annotate(f"{i} {inp['type']}", (float(w_pos[i]), float(w_neg[i])), fontsize=6)
        ax.set(xlabel=f"top positive eigenvector (λ={float(eig.values[0, ip]):.3g})",
               ylabel=f"top negative eigenvector (λ={float(eig.values[0, im_]):.3g})",
               title=f"feature {pair[k]}: input features on the top-2 eigenvectors")
    ax = axes[1, 2]
    for k, f in enumerate(pair):
        m = z[:, k] > 0
        r = result["top2_approximation"][k]
        ax.scatter(pred[m, k].numpy(), z[m, k].numpy(), s=3, alpha=0.5,
                   label=f"feature {f}: r={r.get('corr_active', float('nan')):.2f} active, "
                         f"{r.get('corr_large', float('nan')):.2f} large")
    ax.set(xlabel="top-2 approximation Σ λ_i (v_i·x)²", ylabel="SAE activation", title="top-2 approximation (active positions)")
    ax.legend(fontsize=7)
    fig.suptitle(f"E11 / Fig 8: output features {pair[0]} and {pair[1]}, {title} (decoder cosine "
                 f"{result['decoder_cosine']:.3f}), layer {result['layer']}", fontsize=10)
    fig.tight_layout()
    plots.save(fig, path)


def _plot_scan(path: Path, scan: dict, recipe: list[int], probe: list[int]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    cross, ratio = scan["cross"].numpy(), scan["ratio"].numpy()
    ax.scatter(cross, ratio, s=6, color="gray", alpha=0.6, label="output features")
    for feats, marker, label in ((recipe, "s", "paper's recipe pair"), (probe, "o", "strongest AND of each sign")):
        ax.scatter(cross[feats], ratio[feats], s=40, marker=marker, facecolors="none", edgecolors="C3" if marker == "o" else "C0",
                   label=label)
        for f in feats:
            ax.annotate(str(f), (cross[f], ratio[f]), fontsize=7)
    ax.set(xlabel="2 nᵀ Q_a s (negation × sentiment cross-interaction)", ylabel="|cross| / std of random cross-interactions",
           title="E11 on stories: every output feature read on the concept probes")
    ax.legend(fontsize=7)
    plots.save(fig, path)
